"""The synchronous client."""

from __future__ import annotations

import json
import os
import threading
from typing import Any, BinaryIO, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import httpx
from websockets.sync.client import ClientConnection, connect, unix_connect

from ._common import (STDERR, STDOUT, Command, Endpoint, ExecOptions, ExecResult, KrunboxError,
                      PrivateServer, create_body, error_from, exit_from, resolve_endpoint,
                      sandbox_path)

CHUNK = 256 * 1024


class Krunbox:
    """A connection to `krunbox serve`.

    With no arguments (and neither $KRUNBOX_SOCKET nor $KRUNBOX_URL set) it starts a private
    server with the `krunbox` program, which ends with this client.
    """

    def __init__(self, socket_path: Optional[str] = None, url: Optional[str] = None,
                 token: Optional[str] = None, krunbox: str = "krunbox",
                 timeout: float = 300.0):
        self._server: Optional[PrivateServer] = None
        endpoint = resolve_endpoint(socket_path, url, token)
        if endpoint is None:
            self._server = PrivateServer(krunbox)
            endpoint = Endpoint(socket_path=self._server.socket_path)
        self.endpoint = endpoint
        transport = httpx.HTTPTransport(uds=endpoint.socket_path) if endpoint.socket_path else None
        self._http = httpx.Client(base_url=endpoint.base_url, transport=transport,
                                  headers=endpoint.headers(), timeout=timeout)

    # -- plumbing -------------------------------------------------------------------------
    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as err:
            raise KrunboxError(f"cannot reach krunbox serve: {err}") from err
        if response.status_code >= 400:
            raise error_from(response.status_code, response.content)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    def websocket(self, path: str) -> ClientConnection:
        endpoint = self.endpoint
        # No keepalive pings: a command whose stdin is backed up stops the server reading, and
        # an unanswered ping would end the exec.
        options = dict(additional_headers=endpoint.headers(), max_size=None, ping_interval=None)
        if endpoint.socket_path:
            return unix_connect(endpoint.socket_path, uri=endpoint.ws_url(path), **options)
        return connect(endpoint.ws_url(path), **options)

    def close(self) -> None:
        self._http.close()
        if self._server is not None:
            self._server.close()
            self._server = None

    def __enter__(self) -> "Krunbox":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- the API --------------------------------------------------------------------------
    def version(self) -> Dict[str, Any]:
        return self._json("GET", "/v1/version")

    def create(self, image: Optional[str] = None, **options: Any) -> "Sandbox":
        """Creates and (unless ``start=False``) starts a sandbox. Options are the API's:
        name, profile, cpus, memory_mib, workspace, volumes, network (mode, allow_hosts,
        allow_nets, publish, add_hosts), env, workdir, user, hostname, backend, ssh,
        host_ca, secrets (``[{"name": "API_KEY", "hosts": ["api.example.com"]}]``: the guest
        sees a placeholder, the value comes from the server's environment), boot_timeout_secs,
        start."""
        info = self._json("POST", "/v1/sandboxes", json=create_body(image, options))
        return Sandbox(self, info["name"])

    def sandbox(self, name: str) -> "Sandbox":
        """An existing sandbox (checked)."""
        info = self._json("GET", sandbox_path(name))
        return Sandbox(self, info["name"])

    def sandboxes(self) -> List[Dict[str, Any]]:
        return self._json("GET", "/v1/sandboxes")

    def images(self) -> List[Dict[str, Any]]:
        return self._json("GET", "/v1/images")

    def pull(self, reference: str, platform: Optional[str] = None,
             on_event: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
        """Pulls an image; ``on_event`` sees every progress event. Returns the last one
        (``pulled``), or raises with the ``error`` one."""
        body: Dict[str, Any] = {"reference": reference}
        if platform:
            body["platform"] = platform
        last: Dict[str, Any] = {}
        try:
            with self._http.stream("POST", "/v1/images/pull", json=body) as response:
                if response.status_code >= 400:
                    raise error_from(response.status_code, response.read())
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    last = json.loads(line)
                    if on_event:
                        on_event(last)
        except httpx.HTTPError as err:
            raise KrunboxError(f"cannot reach krunbox serve: {err}") from err
        if last.get("event") != "pulled":
            raise KrunboxError(last.get("message", "the pull ended early"), last.get("kind", "internal"))
        return last

    def remove_image(self, reference: str) -> Dict[str, Any]:
        return self._json("DELETE", "/v1/images", params={"reference": reference})

    def run(self, cmd: Command, image: Optional[str] = None, *, stdin: Union[bytes, str, None] = None,
            **options: Any) -> ExecResult:
        """One command in a sandbox of its own, removed afterwards."""
        sandbox = self.create(image, **options)
        try:
            return sandbox.exec(cmd, stdin=stdin)
        finally:
            sandbox.remove(force=True)


class Execution:
    """A running command: write its stdin, read its output as it comes, wait for its end."""

    def __init__(self, socket: ClientConnection):
        self._socket = socket
        started = json.loads(self._recv_text())
        if started.get("type") == "error":
            socket.close()
            raise KrunboxError(started["message"], started["kind"])
        self.pid: Optional[int] = started.get("pid")
        self.result: Optional[ExecResult] = None

    def _recv_text(self) -> str:
        message = self._socket.recv()
        if not isinstance(message, str):
            raise KrunboxError("the server broke the exec protocol")
        return message

    def write(self, data: Union[bytes, str]) -> None:
        self._socket.send(data.encode() if isinstance(data, str) else bytes(data))

    def close_stdin(self) -> None:
        self._socket.send(json.dumps({"type": "stdin_eof"}))

    def resize(self, rows: int, cols: int) -> None:
        self._socket.send(json.dumps({"type": "resize", "rows": rows, "cols": cols}))

    def kill(self, signal: Union[int, str] = "TERM") -> None:
        self._socket.send(json.dumps({"type": "signal", "signal": signal}))

    def output(self) -> Iterator[Tuple[int, bytes]]:
        """(stream, bytes) pairs, stream being STDOUT or STDERR, until the command ends;
        then ``result`` is set."""
        while self.result is None:
            try:
                message = self._socket.recv()
            except Exception as err:  # the connection ended without an exit message
                raise KrunboxError(f"the exec connection ended: {err}") from err
            if isinstance(message, bytes):
                if message:
                    yield message[0], message[1:]
                continue
            event = json.loads(message)
            if event.get("type") == "exit":
                self.result = exit_from(event)
            elif event.get("type") == "error":
                raise KrunboxError(event["message"], event["kind"])
        self._socket.close()

    def wait(self) -> ExecResult:
        """Collects the rest of the output and the exit."""
        out: List[bytes] = []
        err: List[bytes] = []
        for stream, data in self.output():
            (err if stream == STDERR else out).append(data)
        assert self.result is not None
        self.result.stdout, self.result.stderr = b"".join(out), b"".join(err)
        return self.result

    def close(self) -> None:
        """Leaves the command: the server kills it."""
        self._socket.close()

    def __enter__(self) -> "Execution":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._socket.close()


class Sandbox:
    """A sandbox on the server."""

    def __init__(self, client: Krunbox, name: str):
        self.client = client
        self.name = name

    def __repr__(self) -> str:
        return f"Sandbox({self.name!r})"

    def _post(self, action: str, **params: Any) -> Dict[str, Any]:
        return self.client._json("POST", sandbox_path(self.name, action), params=params)

    def info(self) -> Dict[str, Any]:
        return self.client._json("GET", sandbox_path(self.name))

    def status(self) -> str:
        return self.info()["status"]["status"]

    def start(self) -> Dict[str, Any]:
        return self._post("start")

    def stop(self, grace: int = 10) -> Dict[str, Any]:
        return self._post("stop", grace_secs=grace)

    def pause(self) -> Dict[str, Any]:
        return self._post("pause")

    def resume(self) -> Dict[str, Any]:
        return self._post("resume")

    def remove(self, force: bool = True) -> None:
        self.client.request("DELETE", sandbox_path(self.name), params={"force": str(force).lower()})

    def stats(self, interval_ms: int = 500) -> Dict[str, Any]:
        return self.client._json("GET", sandbox_path(self.name, "stats"), params={"interval_ms": interval_ms})

    def changes(self, patch: bool = False) -> List[Dict[str, Any]]:
        """What the guest changed in its copy of a ``workspace_mode="review"`` workspace."""
        params = {"patch": "true"} if patch else {}
        return self.client._json("GET", sandbox_path(self.name, "changes"), params=params)

    def accept(self, paths: Optional[List[str]] = None) -> List[Dict[str, Any]]:
        """Writes changes (all, or under ``paths``) into the workspace; a conflict raises."""
        done = self.client._json("POST", sandbox_path(self.name, "accept"), json={"paths": list(paths or [])})
        return done["accepted"]

    def reject(self, paths: Optional[List[str]] = None) -> List[Dict[str, Any]]:
        """Puts the copy back as the workspace has it (all, or under ``paths``)."""
        done = self.client._json("POST", sandbox_path(self.name, "reject"), json={"paths": list(paths or [])})
        return done["rejected"]

    def logs(self, kind: str = "console") -> str:
        return self.client.request("GET", sandbox_path(self.name, "logs"), params={"kind": kind}).text

    def stream(self, cmd: Command, *, env: Optional[Mapping[str, str]] = None, cwd: Optional[str] = None,
               user: Optional[str] = None, tty: bool = False, rows: int = 24, cols: int = 80,
               stdin: bool = True, timeout: Optional[float] = None,
               ulimits: Sequence[str] = (), group_add: Sequence[str] = (), cap_drop: Sequence[str] = (),
               cap_add: Sequence[str] = (), no_new_privileges: bool = False) -> Execution:
        """Starts a command and returns it running."""
        options = ExecOptions(env=env or {}, cwd=cwd, user=user, tty=tty, rows=rows, cols=cols,
                              stdin=stdin, timeout=timeout, ulimits=ulimits,
                              group_add=group_add, cap_drop=cap_drop, cap_add=cap_add,
                              no_new_privileges=no_new_privileges)
        try:
            socket = self.client.websocket(sandbox_path(self.name, "exec"))
        except Exception as err:
            raise KrunboxError(f"cannot open the exec stream: {err}") from err
        socket.send(options.start_message(cmd))
        return Execution(socket)

    def exec(self, cmd: Command, *, stdin: Union[bytes, str, None] = None, **options: Any) -> ExecResult:
        """Runs a command to its end (``stdin``: bytes to feed it) and returns its output."""
        execution = self.stream(cmd, stdin=stdin is not None, **options)
        if stdin is None:
            return execution.wait()
        data = stdin.encode() if isinstance(stdin, str) else stdin
        failed: List[BaseException] = []

        def feed() -> None:
            # Beside the reading: a command that echoes its input must have its output read
            # while it is fed.
            try:
                for at in range(0, len(data), CHUNK):
                    execution.write(data[at:at + CHUNK])
                execution.close_stdin()
            except Exception as err:  # the command ended, or the connection did
                failed.append(err)

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        result = execution.wait()
        feeder.join(timeout=5)
        return result

    def write_file(self, path: str, data: Union[bytes, str, BinaryIO], mode: int = 0o644) -> int:
        content = data.encode() if isinstance(data, str) else data
        answer = self.client._json("PUT", sandbox_path(self.name, "files"),
                                   params={"path": path, "mode": format(mode, "o")}, content=content)
        return int(answer["bytes"])

    def read_file(self, path: str) -> bytes:
        return self.client.request("GET", sandbox_path(self.name, "files"), params={"path": path}).content

    def upload(self, local: Union[str, "os.PathLike[str]"], remote: str, mode: Optional[int] = None) -> int:
        """Streams a local file into the sandbox (its mode kept unless given)."""
        mode = mode if mode is not None else os.stat(local).st_mode & 0o777
        with open(local, "rb") as source:
            return self.write_file(remote, _chunks(source), mode)  # type: ignore[arg-type]

    def download(self, remote: str, local: Union[str, "os.PathLike[str]"]) -> int:
        """Streams a file of the sandbox to a local file (written whole or not at all)."""
        temp = os.fspath(local) + ".part"
        total = 0
        try:
            with self.client._http.stream("GET", sandbox_path(self.name, "files"), params={"path": remote}) as response:
                if response.status_code >= 400:
                    raise error_from(response.status_code, response.read())
                expected = int(response.headers.get("content-length", "-1"))
                with open(temp, "wb") as sink:
                    for chunk in response.iter_bytes(CHUNK):
                        sink.write(chunk)
                        total += len(chunk)
            if expected >= 0 and total != expected:
                raise KrunboxError(f"{remote}: got {total} of {expected} bytes")
            os.replace(temp, local)
        except BaseException:
            if os.path.exists(temp):
                os.unlink(temp)
            raise
        return total


def _chunks(source: BinaryIO) -> Iterator[bytes]:
    while True:
        chunk = source.read(CHUNK)
        if not chunk:
            return
        yield chunk
