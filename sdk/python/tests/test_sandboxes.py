"""The Python SDK against real sandboxes."""

import hashlib
import os
import threading
import time

import pytest

import krunbox
from conftest import unique


def test_version(kb):
    assert kb.version()["api"] == "v1"


def test_lifecycle_create_exec_pause_resume_stop_start_remove(kb):
    box = kb.create(name=unique("sdkpy-life"), memory_mib=256, env={"GREETING": "hi there"})
    try:
        assert box.status() == "running"
        assert any(s["name"] == box.name for s in kb.sandboxes())
        assert box.exec("echo $GREETING").stdout == b"hi there\n"
        box.pause()
        assert box.status() == "paused"
        with pytest.raises(krunbox.KrunboxError) as refused:
            box.exec(["true"])
        assert refused.value.kind == "conflict"
        box.resume()
        assert box.exec(["true"]).exit_code == 0
        box.stop()
        assert box.status() == "exited"
        box.start()
        assert box.exec(["cat", "/proc/uptime"]).exit_code == 0
    finally:
        box.remove(force=True)
    with pytest.raises(krunbox.KrunboxError) as gone:
        kb.sandbox(box.name)
    assert gone.value.kind == "not_found" and gone.value.status == 404


def test_bad_requests_say_why(kb):
    with pytest.raises(krunbox.KrunboxError) as err:
        kb.create(cpus=0)
    assert err.value.kind == "bad_request" and "cpus" in str(err.value)
    with pytest.raises(krunbox.KrunboxError) as err:
        kb.create(no_such_option=1)
    assert err.value.kind == "bad_request"
    with pytest.raises(krunbox.KrunboxError) as err:
        kb.sandbox("not a name!")
    assert err.value.kind == "bad_request"


def test_a_secret_is_a_placeholder_in_the_guest_and_its_value_stays_with_the_server(kb):
    # tests/tests/sdk.rs gives the server KRUNBOX_SDK_TEST_SECRET (and not KRUNBOX_SDK_UNSET).
    with pytest.raises(krunbox.KrunboxError) as err:
        kb.create(secrets=[{"name": "KRUNBOX_SDK_UNSET", "hosts": ["api.test"]}], start=False)
    assert err.value.kind == "bad_request" and "KRUNBOX_SDK_UNSET is not set" in str(err.value)
    with pytest.raises(krunbox.KrunboxError) as err:
        kb.create(secrets=[{"name": "KRUNBOX_SDK_TEST_SECRET", "hosts": []}], start=False)
    assert err.value.kind == "bad_request"
    box = kb.create(name=unique("sdksecret"), memory_mib=256,
                    secrets=[{"name": "KRUNBOX_SDK_TEST_SECRET", "hosts": ["api.test"]}])
    try:
        seen = box.exec("echo $KRUNBOX_SDK_TEST_SECRET").stdout
        assert seen == b"krunbox-secret-KRUNBOX_SDK_TEST_SECRET-placeholder\n"
        assert b"sdk-secret-value" not in box.exec("cat /proc/1/environ /proc/cmdline").stdout
    finally:
        box.remove(force=True)


def test_a_review_workspace_waits_for_accept(kb, tmp_path):
    (tmp_path / "a.txt").write_text("host\n")
    (tmp_path / "server.key").write_text("PRIVATE\n")
    box = kb.create(name=unique("sdkpyreview"), memory_mib=256, workspace=tmp_path,
                    workspace_mode="review")
    try:
        seen = box.exec("ls; echo guest > a.txt").stdout
        assert b"server.key" not in seen
        assert (tmp_path / "a.txt").read_text() == "host\n"
        changes = box.changes(patch=True)
        assert [(c["path"], c["change"]) for c in changes] == [("a.txt", "modified")]
        assert "+guest" in changes[0]["patch"]
        with pytest.raises(krunbox.KrunboxError) as err:
            box.accept()
        assert err.value.kind == "conflict" and "pause" in str(err.value)
        box.pause()
        with pytest.raises(krunbox.KrunboxError) as err:
            box.accept(["no-such-path"])
        assert err.value.kind == "bad_request"
        assert [c["path"] for c in box.accept()] == ["a.txt"]
        assert (tmp_path / "a.txt").read_text() == "guest\n"
        assert box.changes() == []
    finally:
        box.remove(force=True)


def test_exec_streams_exit_codes_and_stdin(sandbox):
    result = sandbox.exec(["sh", "-c", "echo out; echo err >&2; exit 7"])
    assert (result.exit_code, result.stdout, result.stderr) == (7, b"out\n", b"err\n")
    data = os.urandom(3 * 1024 * 1024)
    echoed = sandbox.exec(["sh", "-c", "cat | sha256sum"], stdin=data)
    assert echoed.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()
    # A command that writes its input back as it reads it: fed and read at once.
    assert sandbox.exec(["cat"], stdin=data).stdout == data
    missing = sandbox.exec(["/no/such/program"])
    assert missing.exit_code == 127 and missing.spawn_error
    assert sandbox.exec(["id", "-u"], user="1000").stdout == b"1000\n"
    assert b"7" in sandbox.exec(["id", "-G"], user="1000", group_add=["7"]).stdout.split()
    limits = sandbox.exec("grep 'open files' /proc/self/limits", ulimits=["nofile=321:654"]).stdout.split()
    assert limits[3:5] == [b"321", b"654"], limits
    with pytest.raises(krunbox.KrunboxError) as refused:
        sandbox.exec(["true"], ulimits=["nofile=9:1"])
    assert "soft limit" in str(refused.value)
    status = sandbox.exec("grep -E '^(CapBnd|NoNewPrivs):' /proc/self/status; hostname x || echo refused",
                          cap_drop=["ALL"], cap_add=["chown"], no_new_privileges=True).stdout.split()
    assert status[:4] == [b"CapBnd:", b"0000000000000001", b"NoNewPrivs:", b"1"], status
    assert b"refused" in status
    with pytest.raises(krunbox.KrunboxError) as unknown:
        sandbox.exec(["true"], cap_drop=["NET_RAWR"])
    assert "NET_RAWR" in str(unknown.value)
    assert sandbox.exec(["pwd"], cwd="/tmp").stdout == b"/tmp\n"
    assert sandbox.exec("echo $X", env={"X": "from the call"}).stdout == b"from the call\n"


def test_a_large_output_arrives_whole_and_in_order(sandbox):
    script = "head -c 8000000 /dev/urandom > /tmp/big; sha256sum /tmp/big >&2; cat /tmp/big"
    execution = sandbox.stream(["sh", "-c", script], stdin=False)
    digest, out, err = hashlib.sha256(), 0, b""
    for stream, data in execution.output():
        if stream == krunbox.STDOUT:
            digest.update(data)
            out += len(data)
        else:
            err += data
    assert execution.result.exit_code == 0
    assert out == 8000000
    assert err.split()[0].decode() == digest.hexdigest()


def test_a_pty_has_its_size_and_follows_a_resize(sandbox):
    # The resize and the input travel apart (a control message, the stdin stream): the
    # command waits (up to 10 s) for the new size rather than racing it.
    script = ('tty; stty size; read line; i=0; while [ "$(stty size)" != "45 132" ] && '
              '[ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; stty size')
    execution = sandbox.stream(["sh", "-c", script], tty=True, rows=31, cols=97)
    seen = b""
    for _, data in execution.output():
        seen += data
        if b"31 97" in seen and b"resized" not in seen:
            execution.resize(45, 132)
            execution.write("resized\n")
    assert execution.result.exit_code == 0
    assert b"/dev/pts/" in seen and b"45 132" in seen


def test_signals_reach_the_command(sandbox):
    execution = sandbox.stream(["sleep", "300"], stdin=False)
    execution.kill("TERM")
    result = execution.wait()
    assert result.signal == 15 and result.exit_code == 143


def test_a_client_that_leaves_loses_nothing_for_the_others(sandbox):
    script = "head -c 6000000 /dev/zero | tr '\\0' 'k'"
    results = {}

    def whole():
        results["whole"] = sandbox.exec(["sh", "-c", script])

    other = threading.Thread(target=whole)
    other.start()
    leaver = sandbox.stream(["sh", "-c", "echo leaving-marker; exec sleep 600"], stdin=False)
    for _, data in leaver.output():
        if b"leaving-marker" in data:
            break
    leaver.close()
    other.join(timeout=120)
    assert results["whole"].exit_code == 0
    assert results["whole"].stdout == b"k" * 6000000
    # The command of the client that left was killed.
    deadline = time.monotonic() + 20
    while b"sleep 600" in sandbox.exec(["ps"]).stdout:
        assert time.monotonic() < deadline, "the command of a client that left still runs"
        time.sleep(0.5)


def test_files_up_and_down(sandbox, tmp_path):
    assert sandbox.write_file("/work/dir/hello.bin", b"\x00\x01hello\xff", mode=0o750) == 8
    assert sandbox.read_file("/work/dir/hello.bin") == b"\x00\x01hello\xff"
    assert sandbox.exec(["stat", "-c", "%a", "/work/dir/hello.bin"]).stdout == b"750\n"
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(5 * 1024 * 1024 + 7))
    assert sandbox.upload(local, "/tmp/big.bin") == local.stat().st_size
    back = tmp_path / "back.bin"
    assert sandbox.download("/tmp/big.bin", back) == local.stat().st_size
    assert back.read_bytes() == local.read_bytes()
    # Through a symbolic link: the file it points at, whole.
    assert sandbox.exec(["ln", "-s", "big.bin", "/tmp/link.bin"]).exit_code == 0
    assert sandbox.read_file("/tmp/link.bin") == local.read_bytes()
    with pytest.raises(krunbox.KrunboxError) as err:
        sandbox.read_file("/tmp")
    # A directory is the request's mistake, not the server's.
    assert err.value.kind == "bad_request" and err.value.status == 400, err.value
    with pytest.raises(krunbox.KrunboxError) as err:
        sandbox.read_file("/no/such/file")
    assert err.value.kind == "not_found"
    with pytest.raises(krunbox.KrunboxError) as err:
        sandbox.read_file("relative/path")
    assert err.value.kind == "bad_request"
    assert not (tmp_path / "missing.part").exists()
    with pytest.raises(krunbox.KrunboxError):
        sandbox.download("/no/such/file", tmp_path / "missing")
    assert not (tmp_path / "missing").exists() and not (tmp_path / "missing.part").exists()


def test_stats_and_logs(sandbox):
    stats = sandbox.stats()
    assert stats["name"] == sandbox.name and stats["host_pss_bytes"] > 0
    assert stats["guest_total_bytes"] > 0
    assert sandbox.logs("monitor").strip()
    assert sandbox.logs("console").strip()


def test_images_list_pull_with_progress_and_remove(kb):
    reference = os.environ.get("KRUNBOX_SDK_TEST_IMAGE")
    if not reference:
        pytest.skip("KRUNBOX_SDK_TEST_IMAGE is not set")
    events = []
    pulled = kb.pull(reference, on_event=events.append)
    kinds = {e["event"] for e in events}
    assert pulled["event"] == "pulled"
    assert {"download", "progress", "done"} <= kinds or "present" in kinds, kinds
    assert any(image["name"] == pulled["name"] for image in kb.images())
    box = kb.create(pulled["name"], name=unique("sdkpy-img"), memory_mib=256)
    try:
        os_release = os.environ["KRUNBOX_SDK_TEST_OS_RELEASE"].encode()
        assert box.exec(["cat", "/etc/os-release"]).stdout == os_release
    finally:
        box.remove()
    assert kb.remove_image(pulled["name"])["name"] == pulled["name"]
    with pytest.raises(krunbox.KrunboxError) as err:
        kb.pull("bad reference!")
    assert err.value.kind == "bad_request"
    # A tag the registry does not have: not found, not an internal error.
    repository = reference.split("@")[0]
    if ":" in repository.rsplit("/", 1)[-1]:
        repository = repository.rsplit(":", 1)[0]
    with pytest.raises(krunbox.KrunboxError) as err:
        kb.pull(repository + ":no-such-tag-here")
    assert err.value.kind == "not_found", err.value


def test_one_shot_run_leaves_nothing(kb):
    before = {s["name"] for s in kb.sandboxes()}
    result = kb.run(["uname", "-s"], memory_mib=256)
    assert result.stdout == b"Linux\n"
    assert {s["name"] for s in kb.sandboxes()} == before


async def test_asyncio_client_runs_commands_side_by_side(akb):
    import asyncio
    box = await akb.create(name=unique("sdkpy-async"), memory_mib=256)
    try:
        results = await asyncio.gather(*(box.exec(["sh", "-c", f"sleep 1; echo {i}"]) for i in range(4)))
        assert [r.stdout for r in results] == [f"{i}\n".encode() for i in range(4)]
        assert await box.write_file("/tmp/a", "async") == 5
        assert await box.read_file("/tmp/a") == b"async"
        execution = await box.stream(["cat"])
        await execution.write(b"streamed")
        await execution.close_stdin()
        assert (await execution.wait()).stdout == b"streamed"
    finally:
        await box.remove()
