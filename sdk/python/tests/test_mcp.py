"""`krunbox mcp` driven by the official MCP client library (the `mcp` package)."""

import json
import os

import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from conftest import unique


def payload(result):
    assert not result.is_error, result.content[0].text
    return result.content[0].text


@pytest.fixture
def server_params():
    program = os.environ.get("KRUNBOX_BIN")
    if not program:
        pytest.skip("KRUNBOX_BIN is not set")
    return StdioServerParameters(command=program, args=["mcp"], env=dict(os.environ))


async def test_an_agent_drives_a_sandbox_through_mcp(server_params):
    name = unique("sdkmcp")
    async with stdio_client(server_params) as (read, write):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            assert init.server_info.name == "krunbox"
            tools = {tool.name: tool for tool in (await session.list_tools()).tools}
            assert {"create_sandbox", "exec", "write_file", "read_file", "list_sandboxes", "stop_sandbox"} <= set(tools)
            assert "command" in tools["exec"].input_schema["properties"]

            created = json.loads(payload(await session.call_tool("create_sandbox", {"name": name, "memory_mib": 256})))
            assert created["name"] == name
            try:
                ran = json.loads(payload(await session.call_tool(
                    "exec", {"sandbox": name, "command": "echo $((6*7)); cat; echo oops >&2; exit 3", "stdin": "fed"})))
                assert (ran["exit_code"], ran["stdout"], ran["stderr"]) == (3, "42\nfed", "oops\n")
                payload(await session.call_tool("write_file", {"sandbox": name, "path": "/tmp/notes/a.txt", "content": "written by an agent"}))
                assert payload(await session.call_tool("read_file", {"sandbox": name, "path": "/tmp/notes/a.txt"})) == "written by an agent"
                listed = json.loads(payload(await session.call_tool("list_sandboxes", {})))
                assert any(s["name"] == name for s in listed)
                big = json.loads(payload(await session.call_tool("exec", {"sandbox": name, "command": "head -c 3000000 /dev/zero | tr '\\0' a"})))
                assert big["stdout"].startswith("a" * 1000) and "more bytes not shown" in big["stdout"]
                # Failures are the tool's result, with the reason, not a broken session.
                missing = await session.call_tool("read_file", {"sandbox": name, "path": "/no/such"})
                assert missing.is_error and "not_found" in missing.content[0].text
                nobody = await session.call_tool("exec", {"sandbox": "no-such-sandbox", "command": "true"})
                assert nobody.is_error and "no sandbox named" in nobody.content[0].text
            finally:
                stopped = await session.call_tool("stop_sandbox", {"sandbox": name})
            assert "removed" in payload(stopped)
            listed = json.loads(payload(await session.call_tool("list_sandboxes", {})))
            assert not any(s["name"] == name for s in listed)
