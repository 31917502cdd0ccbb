"""What the sync and the asyncio clients share: finding the server, request shapes, results."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union
from urllib.parse import quote

STDOUT = 1
STDERR = 2

Command = Union[str, Sequence[str]]


class KrunboxError(Exception):
    """An error the server answered with (or a failure to reach it).

    ``kind`` is the API's error kind (``bad_request``, ``not_found``, ``conflict``,
    ``unauthorized``, ``cross_origin``, ``internal``); ``status`` the HTTP status, if any.
    """

    def __init__(self, message: str, kind: str = "internal", status: Optional[int] = None):
        super().__init__(message)
        self.kind = kind
        self.status = status


@dataclass
class ExecResult:
    """How a command ended, and what it wrote."""

    exit_code: int
    stdout: bytes = b""
    stderr: bytes = b""
    signal: Optional[int] = None
    timed_out: bool = False
    spawn_error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@dataclass
class ExecOptions:
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Optional[str] = None
    user: Optional[str] = None
    tty: bool = False
    rows: int = 24
    cols: int = 80
    stdin: bool = True
    timeout: Optional[float] = None
    ulimits: Sequence[str] = ()
    group_add: Sequence[str] = ()
    cap_drop: Sequence[str] = ()
    cap_add: Sequence[str] = ()
    no_new_privileges: bool = False

    def start_message(self, cmd: Command) -> str:
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        message: Dict[str, Any] = {"cmd": argv, "env": dict(self.env), "tty": self.tty,
                                   "stdin": self.stdin}
        if self.cwd is not None:
            message["cwd"] = self.cwd
        if self.user is not None:
            message["user"] = self.user
        if self.tty:
            message["rows"], message["cols"] = self.rows, self.cols
        if self.timeout is not None:
            message["timeout_secs"] = max(1, int(self.timeout))
        if self.ulimits:
            # One limit given as a string is one limit, not one per character.
            ulimits = [self.ulimits] if isinstance(self.ulimits, str) else list(self.ulimits)
            message["ulimits"] = ulimits
        for key in ("group_add", "cap_drop", "cap_add"):
            names = getattr(self, key)
            if names:
                message[key] = [names] if isinstance(names, str) else list(names)
        if self.no_new_privileges:
            message["no_new_privileges"] = True
        return json.dumps(message)


def create_body(image: Optional[str], options: Mapping[str, Any]) -> Dict[str, Any]:
    """The create request: keyword arguments as the API's fields (None left out)."""
    body = {key: value for key, value in options.items() if value is not None}
    if image is not None:
        body["image"] = image
    for key in ("workspace",):
        if key in body:
            body[key] = os.path.abspath(os.fspath(body[key]))
    if "volumes" in body:
        body["volumes"] = list(body["volumes"])
    return body


def sandbox_path(name: str, *rest: str) -> str:
    return "/v1/sandboxes/" + quote(name, safe="") + "".join("/" + part for part in rest)


def error_from(status: int, body: bytes) -> KrunboxError:
    try:
        error = json.loads(body)["error"]
        return KrunboxError(error["message"], error["kind"], status)
    except (ValueError, KeyError, TypeError):
        return KrunboxError(f"HTTP {status}: {body[:200]!r}", "internal", status)


def exit_from(message: Mapping[str, Any], stdout: bytes = b"", stderr: bytes = b"") -> ExecResult:
    return ExecResult(
        exit_code=int(message["exit_code"]),
        stdout=stdout,
        stderr=stderr,
        signal=message.get("signal"),
        timed_out=bool(message.get("timed_out")),
        spawn_error=message.get("spawn_error"),
    )


@dataclass
class Endpoint:
    """Where the server is: a Unix socket, or a TCP URL with a token."""

    socket_path: Optional[str] = None
    url: Optional[str] = None
    token: Optional[str] = None

    @property
    def base_url(self) -> str:
        return (self.url or "http://krunbox").rstrip("/")

    def ws_url(self, path: str) -> str:
        base = self.base_url
        return "ws" + base[len("http"):] + path if base.startswith("http") else base + path

    def headers(self) -> Dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


class PrivateServer:
    """A `krunbox serve` of this client's own on a fresh socket; it ends when its stdin
    (held by this process) closes."""

    def __init__(self, krunbox: str = "krunbox", timeout: float = 15.0):
        program = shutil.which(krunbox) or krunbox
        self._dir = tempfile.mkdtemp(prefix="krunbox-sdk-")
        os.chmod(self._dir, 0o700)
        self.socket_path = os.path.join(self._dir, "api.sock")
        # Its messages go to a file (a pipe nobody reads would stall it once full).
        self.log_path = os.path.join(self._dir, "serve.log")
        try:
            with open(self.log_path, "wb") as log:
                self.process = subprocess.Popen(
                    [program, "serve", "--socket", self.socket_path, "--stdin-lifeline"],
                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log,
                )
        except OSError as err:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise KrunboxError(f"cannot run {program!r} (is krunbox installed?): {err}") from err
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.socket_path):
            if self.process.poll() is not None:
                with open(self.log_path, "rb") as log:
                    err = log.read(64 * 1024).decode(errors="replace")
                shutil.rmtree(self._dir, ignore_errors=True)
                raise KrunboxError(f"krunbox serve exited: {err.strip()}")
            if time.monotonic() > deadline:
                self.close()
                raise KrunboxError(f"krunbox serve did not listen within {timeout} s")
            time.sleep(0.02)

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self._dir, ignore_errors=True)


def resolve_endpoint(socket_path: Optional[str], url: Optional[str], token: Optional[str]) -> Optional[Endpoint]:
    """The endpoint given (arguments, then $KRUNBOX_SOCKET, $KRUNBOX_URL, $KRUNBOX_API_TOKEN);
    None when nothing names one (the client then starts a private server)."""
    if url is None:
        socket_path = socket_path or os.environ.get("KRUNBOX_SOCKET") or None
    url = url or (None if socket_path else os.environ.get("KRUNBOX_URL")) or None
    token = token or os.environ.get("KRUNBOX_API_TOKEN") or None
    if socket_path is None and url is None:
        return None
    return Endpoint(socket_path=socket_path, url=url if socket_path is None else None, token=token)


def pull_events(lines: List[bytes]) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in lines if line.strip()]
