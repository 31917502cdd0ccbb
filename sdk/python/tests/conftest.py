"""Fixtures: the server (`$KRUNBOX_SOCKET`, started by tests/tests/sdk.rs with the suite's
environment), clients whose every response is checked against api/openapi.json, and
sandboxes removed after each test."""

import json
import os
import re
import uuid
from pathlib import Path
from urllib.parse import quote

import httpx
import jsonschema
import pytest
import referencing

import krunbox

ROOT = Path(__file__).resolve().parents[3]
OPENAPI = json.loads((ROOT / "api" / "openapi.json").read_text())
REGISTRY = referencing.Registry().with_resource(
    "openapi.json", referencing.Resource.from_contents(OPENAPI, referencing.jsonschema.DRAFT202012))


def operation(method: str, path: str):
    """The documented path template and operation for a request, or (None, None)."""
    for template, item in OPENAPI["paths"].items():
        pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
        if re.match(pattern, path) and method.lower() in item:
            return template, item[method.lower()]
    return None, None


def pointer(*parts: str) -> str:
    """A JSON pointer into the document, as a URI fragment."""
    escaped = (part.replace("~", "~0").replace("/", "~1") for part in parts)
    return quote("/" + "/".join(escaped), safe="/~")


def check_against_openapi(response: httpx.Response) -> None:
    request = response.request
    template, op = operation(request.method, request.url.path)
    assert op is not None, f"{request.method} {request.url.path} is not in api/openapi.json"
    documented = op["responses"].get(str(response.status_code))
    assert documented is not None, (
        f"{request.method} {request.url.path} answered {response.status_code}, "
        f"which api/openapi.json does not document")
    content_type = response.headers.get("content-type", "").split(";")[0]
    schema = documented.get("content", {}).get("application/json", {}).get("schema")
    if content_type == "application/json" and schema is not None:
        response.read()
        # By reference into the document, so the schema's own references resolve there.
        where = pointer("paths", template, request.method.lower(), "responses",
                        str(response.status_code), "content", "application/json", "schema")
        validator = jsonschema.Draft202012Validator({"$ref": "openapi.json#" + where},
                                                    registry=REGISTRY)
        validator.validate(response.json())


def checked(client):
    client._http.event_hooks["response"].append(check_against_openapi)
    return client


@pytest.fixture(scope="session")
def socket_path() -> str:
    path = os.environ.get("KRUNBOX_SOCKET")
    if not path:
        pytest.skip("KRUNBOX_SOCKET is not set (tests/tests/sdk.rs starts krunbox serve)")
    return path


@pytest.fixture(scope="session")
def kb(socket_path):
    with checked(krunbox.Krunbox(socket_path=socket_path)) as client:
        yield client


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def sandbox(kb):
    box = kb.create(name=unique("sdkpy"), memory_mib=256, env={"GREETING": "hello"})
    yield box
    box.remove(force=True)


@pytest.fixture
async def akb(socket_path):
    client = krunbox.AsyncKrunbox(socket_path=socket_path)
    client._http.event_hooks["response"].append(_async_check)
    yield client
    await client.aclose()


async def _async_check(response: httpx.Response) -> None:
    if response.headers.get("content-type", "").startswith("application/json"):
        await response.aread()
    check_against_openapi(response)
