"""The asyncio client: the same surface as the sync one, as coroutines."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any, AsyncIterator, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import httpx
from websockets.asyncio.client import ClientConnection, connect, unix_connect

from ._common import (STDERR, Command, Endpoint, ExecOptions, ExecResult, KrunboxError,
                      PrivateServer, create_body, error_from, exit_from, resolve_endpoint,
                      sandbox_path)

CHUNK = 256 * 1024


class AsyncKrunbox:
    """A connection to `krunbox serve` (see `Krunbox`)."""

    def __init__(self, socket_path: Optional[str] = None, url: Optional[str] = None,
                 token: Optional[str] = None, krunbox: str = "krunbox", timeout: float = 300.0):
        self._server: Optional[PrivateServer] = None
        endpoint = resolve_endpoint(socket_path, url, token)
        if endpoint is None:
            self._server = PrivateServer(krunbox)
            endpoint = Endpoint(socket_path=self._server.socket_path)
        self.endpoint = endpoint
        transport = httpx.AsyncHTTPTransport(uds=endpoint.socket_path) if endpoint.socket_path else None
        self._http = httpx.AsyncClient(base_url=endpoint.base_url, transport=transport,
                                       headers=endpoint.headers(), timeout=timeout)

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as err:
            raise KrunboxError(f"cannot reach krunbox serve: {err}") from err
        if response.status_code >= 400:
            raise error_from(response.status_code, response.content)
        return response

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return (await self.request(method, path, **kwargs)).json()

    async def websocket(self, path: str) -> ClientConnection:
        endpoint = self.endpoint
        options = dict(additional_headers=endpoint.headers(), max_size=None, ping_interval=None)
        try:
            if endpoint.socket_path:
                return await unix_connect(endpoint.socket_path, uri=endpoint.ws_url(path), **options)
            return await connect(endpoint.ws_url(path), **options)
        except Exception as err:
            raise KrunboxError(f"cannot open the exec stream: {err}") from err

    async def aclose(self) -> None:
        await self._http.aclose()
        if self._server is not None:
            self._server.close()
            self._server = None

    async def __aenter__(self) -> "AsyncKrunbox":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def version(self) -> Dict[str, Any]:
        return await self._json("GET", "/v1/version")

    async def create(self, image: Optional[str] = None, **options: Any) -> "AsyncSandbox":
        info = await self._json("POST", "/v1/sandboxes", json=create_body(image, options))
        return AsyncSandbox(self, info["name"])

    async def sandbox(self, name: str) -> "AsyncSandbox":
        info = await self._json("GET", sandbox_path(name))
        return AsyncSandbox(self, info["name"])

    async def sandboxes(self) -> List[Dict[str, Any]]:
        return await self._json("GET", "/v1/sandboxes")

    async def images(self) -> List[Dict[str, Any]]:
        return await self._json("GET", "/v1/images")

    async def pull(self, reference: str, platform: Optional[str] = None,
                   on_event: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
        body: Dict[str, Any] = {"reference": reference}
        if platform:
            body["platform"] = platform
        last: Dict[str, Any] = {}
        async with self._http.stream("POST", "/v1/images/pull", json=body) as response:
            if response.status_code >= 400:
                raise error_from(response.status_code, await response.aread())
            async for line in response.aiter_lines():
                if line.strip():
                    last = json.loads(line)
                    if on_event:
                        on_event(last)
        if last.get("event") != "pulled":
            raise KrunboxError(last.get("message", "the pull ended early"), last.get("kind", "internal"))
        return last

    async def remove_image(self, reference: str) -> Dict[str, Any]:
        return await self._json("DELETE", "/v1/images", params={"reference": reference})

    async def run(self, cmd: Command, image: Optional[str] = None, *,
                  stdin: Union[bytes, str, None] = None, **options: Any) -> ExecResult:
        sandbox = await self.create(image, **options)
        try:
            return await sandbox.exec(cmd, stdin=stdin)
        finally:
            await sandbox.remove(force=True)


class AsyncExecution:
    """A running command (see `Execution`)."""

    def __init__(self, socket: ClientConnection, pid: Optional[int]):
        self._socket = socket
        self.pid = pid
        self.result: Optional[ExecResult] = None

    @classmethod
    async def start(cls, socket: ClientConnection) -> "AsyncExecution":
        started = json.loads(await socket.recv())
        if started.get("type") == "error":
            await socket.close()
            raise KrunboxError(started["message"], started["kind"])
        return cls(socket, started.get("pid"))

    async def write(self, data: Union[bytes, str]) -> None:
        await self._socket.send(data.encode() if isinstance(data, str) else bytes(data))

    async def close_stdin(self) -> None:
        await self._socket.send(json.dumps({"type": "stdin_eof"}))

    async def resize(self, rows: int, cols: int) -> None:
        await self._socket.send(json.dumps({"type": "resize", "rows": rows, "cols": cols}))

    async def kill(self, signal: Union[int, str] = "TERM") -> None:
        await self._socket.send(json.dumps({"type": "signal", "signal": signal}))

    async def output(self) -> AsyncIterator[Tuple[int, bytes]]:
        while self.result is None:
            try:
                message = await self._socket.recv()
            except Exception as err:
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
        await self._socket.close()

    async def wait(self) -> ExecResult:
        out: List[bytes] = []
        err: List[bytes] = []
        async for stream, data in self.output():
            (err if stream == STDERR else out).append(data)
        assert self.result is not None
        self.result.stdout, self.result.stderr = b"".join(out), b"".join(err)
        return self.result

    async def close(self) -> None:
        await self._socket.close()


class AsyncSandbox:
    """A sandbox on the server (see `Sandbox`)."""

    def __init__(self, client: AsyncKrunbox, name: str):
        self.client = client
        self.name = name

    async def _post(self, action: str, **params: Any) -> Dict[str, Any]:
        return await self.client._json("POST", sandbox_path(self.name, action), params=params)

    async def info(self) -> Dict[str, Any]:
        return await self.client._json("GET", sandbox_path(self.name))

    async def status(self) -> str:
        return (await self.info())["status"]["status"]

    async def start(self) -> Dict[str, Any]:
        return await self._post("start")

    async def stop(self, grace: int = 10) -> Dict[str, Any]:
        return await self._post("stop", grace_secs=grace)

    async def pause(self) -> Dict[str, Any]:
        return await self._post("pause")

    async def resume(self) -> Dict[str, Any]:
        return await self._post("resume")

    async def remove(self, force: bool = True) -> None:
        await self.client.request("DELETE", sandbox_path(self.name), params={"force": str(force).lower()})

    async def stats(self, interval_ms: int = 500) -> Dict[str, Any]:
        return await self.client._json("GET", sandbox_path(self.name, "stats"), params={"interval_ms": interval_ms})

    async def changes(self, patch: bool = False) -> List[Dict[str, Any]]:
        """What the guest changed in its copy of a ``workspace_mode="review"`` workspace."""
        params = {"patch": "true"} if patch else {}
        return await self.client._json("GET", sandbox_path(self.name, "changes"), params=params)

    async def accept(self, paths: Optional[List[str]] = None) -> List[Dict[str, Any]]:
        """Writes changes (all, or under ``paths``) into the workspace; a conflict raises."""
        done = await self.client._json("POST", sandbox_path(self.name, "accept"), json={"paths": list(paths or [])})
        return done["accepted"]

    async def reject(self, paths: Optional[List[str]] = None) -> List[Dict[str, Any]]:
        """Puts the copy back as the workspace has it (all, or under ``paths``)."""
        done = await self.client._json("POST", sandbox_path(self.name, "reject"), json={"paths": list(paths or [])})
        return done["rejected"]

    async def logs(self, kind: str = "console") -> str:
        return (await self.client.request("GET", sandbox_path(self.name, "logs"), params={"kind": kind})).text

    async def stream(self, cmd: Command, *, env: Optional[Mapping[str, str]] = None, cwd: Optional[str] = None,
                     user: Optional[str] = None, tty: bool = False, rows: int = 24, cols: int = 80,
                     stdin: bool = True, timeout: Optional[float] = None,
                     ulimits: Sequence[str] = (), group_add: Sequence[str] = (), cap_drop: Sequence[str] = (),
                     cap_add: Sequence[str] = (), no_new_privileges: bool = False) -> AsyncExecution:
        options = ExecOptions(env=env or {}, cwd=cwd, user=user, tty=tty, rows=rows, cols=cols,
                              stdin=stdin, timeout=timeout, ulimits=ulimits,
                              group_add=group_add, cap_drop=cap_drop, cap_add=cap_add,
                              no_new_privileges=no_new_privileges)
        socket = await self.client.websocket(sandbox_path(self.name, "exec"))
        await socket.send(options.start_message(cmd))
        return await AsyncExecution.start(socket)

    async def exec(self, cmd: Command, *, stdin: Union[bytes, str, None] = None, **options: Any) -> ExecResult:
        execution = await self.stream(cmd, stdin=stdin is not None, **options)
        if stdin is None:
            return await execution.wait()
        data = stdin.encode() if isinstance(stdin, str) else stdin

        async def feed() -> None:
            try:
                for at in range(0, len(data), CHUNK):
                    await execution.write(data[at:at + CHUNK])
                await execution.close_stdin()
            except Exception:  # the command ended, or the connection did
                pass

        feeder = asyncio.ensure_future(feed())
        try:
            return await execution.wait()
        finally:
            feeder.cancel()

    async def write_file(self, path: str, data: Union[bytes, str], mode: int = 0o644) -> int:
        content = data.encode() if isinstance(data, str) else data
        answer = await self.client._json("PUT", sandbox_path(self.name, "files"),
                                         params={"path": path, "mode": format(mode, "o")}, content=content)
        return int(answer["bytes"])

    async def read_file(self, path: str) -> bytes:
        return (await self.client.request("GET", sandbox_path(self.name, "files"), params={"path": path})).content

    async def upload(self, local: Union[str, "os.PathLike[str]"], remote: str, mode: Optional[int] = None) -> int:
        mode = mode if mode is not None else os.stat(local).st_mode & 0o777

        async def chunks() -> AsyncIterator[bytes]:
            with open(local, "rb") as source:
                while chunk := source.read(CHUNK):
                    yield chunk

        answer = await self.client._json("PUT", sandbox_path(self.name, "files"),
                                         params={"path": remote, "mode": format(mode, "o")}, content=chunks())
        return int(answer["bytes"])

    async def download(self, remote: str, local: Union[str, "os.PathLike[str]"]) -> int:
        temp = os.fspath(local) + ".part"
        total = 0
        try:
            async with self.client._http.stream("GET", sandbox_path(self.name, "files"), params={"path": remote}) as response:
                if response.status_code >= 400:
                    raise error_from(response.status_code, await response.aread())
                expected = int(response.headers.get("content-length", "-1"))
                with open(temp, "wb") as sink:
                    async for chunk in response.aiter_bytes(CHUNK):
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
