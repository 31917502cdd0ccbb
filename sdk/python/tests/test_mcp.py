"""`krunbox mcp` driven by the official MCP client library (the `mcp` package)."""

import json
import os
import subprocess
import time

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


def leave_mid_exec(server_params, sandbox):
    """A raw JSON-RPC client of `krunbox mcp` that starts an exec, waits until its command
    runs, and goes away without a word (stdin closed)."""
    server = subprocess.Popen([server_params.command, *server_params.args], env=server_params.env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def send(message):
        server.stdin.write((json.dumps({"jsonrpc": "2.0", **message}) + "\n").encode())
        server.stdin.flush()

    send({"id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "leaver", "version": "0"}}})
    assert json.loads(server.stdout.readline())["id"] == 1
    send({"method": "notifications/initialized"})
    send({"id": 2, "method": "tools/call", "params": {"name": "exec", "arguments": {
        "sandbox": sandbox,
        # It ignores the hangup the agent sends when its connection drops: only a kill ends it.
        "command": "trap '' HUP TERM INT; echo $$ > /tmp/left.tmp && mv /tmp/left.tmp /tmp/left.pid; exec sleep 120"}}})
    deadline = time.monotonic() + 60
    while subprocess.run([server_params.command, "exec", sandbox, "--", "test", "-s", "/tmp/left.pid"],
                         env=server_params.env, stdin=subprocess.DEVNULL).returncode != 0:
        assert time.monotonic() < deadline, "the exec never started"
        time.sleep(0.2)
    server.stdin.close()
    assert server.wait(timeout=30) == 0


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
                # A call the client gives up on (its timeout sends notifications/cancelled)
                # kills its command: nothing is left running in the sandbox.
                with pytest.raises(Exception):
                    await session.call_tool(
                        "exec", {"sandbox": name, "command": "echo $$ > /tmp/abandoned.pid; exec sleep 120"},
                        read_timeout_seconds=3)
                gone = json.loads(payload(await session.call_tool("exec", {
                    "sandbox": name,
                    "command": "for i in $(seq 50); do kill -0 $(cat /tmp/abandoned.pid) 2>/dev/null || exit 0; "
                               "sleep 0.2; done; exit 1"})))
                assert gone["exit_code"] == 0, "the abandoned command still runs"
                # A client that leaves (closes the server's stdin) in the middle of an exec,
                # without cancelling it: its command is killed too.
                leave_mid_exec(server_params, name)
                left = json.loads(payload(await session.call_tool("exec", {
                    "sandbox": name,
                    "command": "for i in $(seq 50); do kill -0 $(cat /tmp/left.pid) 2>/dev/null || exit 0; "
                               "sleep 0.2; done; exit 1"})))
                assert left["exit_code"] == 0, "the command of the client that left still runs"
            finally:
                stopped = await session.call_tool("stop_sandbox", {"sandbox": name})
            assert "removed" in payload(stopped)
            listed = json.loads(payload(await session.call_tool("list_sandboxes", {})))
            assert not any(s["name"] == name for s in listed)
