//! The agent in host mode: file operations, PTY sessions, bad input and PID 1 duties.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::time::Duration;

use common::{sha256_file, TestAgent};
use krunbox_protocol::client::{ExecEvent, ExecSpec, RemotePath};
use krunbox_protocol::messages::{ErrorKind, FileType, Outcome};
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn put_and_get_a_hundred_megabyte_file() {
    let agent = TestAgent::start();
    let client = agent.client().await;
    let source = agent.dir.path().join("source.bin");
    let size = 100 * 1024 * 1024u64;
    let made = std::process::Command::new("head")
        .arg("-c")
        .arg(size.to_string())
        .arg("/dev/urandom")
        .stdout(std::fs::File::create(&source).unwrap())
        .status()
        .unwrap();
    assert!(made.success());
    let expected = sha256_file(&source);

    let target = agent.dir.path().join("nested/dir/copy.bin");
    let file = tokio::fs::File::open(&source).await.unwrap();
    let written = client
        .put(file, target.display().to_string(), 0o600)
        .await
        .unwrap();
    assert_eq!(written, size);
    assert_eq!(sha256_file(&target), expected);
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&target).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let leftovers: Vec<_> = std::fs::read_dir(target.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers,
        ["copy.bin"],
        "no temporary file left beside the target"
    );

    let fetched_path = agent.dir.path().join("fetched.bin");
    let fetched = tokio::fs::File::create(&fetched_path).await.unwrap();
    let mut sink = tokio::io::BufWriter::new(fetched);
    let (stat, bytes) = client
        .get(target.display().to_string(), &mut sink)
        .await
        .unwrap();
    sink.flush().await.unwrap();
    assert_eq!(bytes, size);
    assert_eq!(stat.size, size);
    assert_eq!(sha256_file(&fetched_path), expected);
}

#[tokio::test]
async fn special_files_are_not_streamed() {
    let agent = TestAgent::start();
    let client = agent.client().await;
    let fifo = agent.dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    for path in [fifo.display().to_string(), "/dev/zero".to_owned()] {
        let mut sink = Vec::new();
        let err = tokio::time::timeout(
            Duration::from_secs(10),
            client.get(path.as_str(), &mut sink),
        )
        .await
        .expect("refused at once, not blocked on the FIFO")
        .unwrap_err();
        assert_eq!(
            err.remote_kind(),
            Some(ErrorKind::BadRequest),
            "{path}: {err}"
        );
        assert!(
            err.to_string().contains(&path),
            "error names the path: {err}"
        );
    }
}

#[tokio::test]
async fn stat_list_mkdir_rename_chmod_remove() {
    let agent = TestAgent::start();
    let client = agent.client().await;
    let root = agent.dir.path().display().to_string();
    let at = |p: &str| RemotePath::new(p).within(root.clone());
    client.mkdir(at("a/b/c"), 0o750).await.unwrap();
    client
        .put(&b"xyz"[..], at("a/file.txt"), 0o644)
        .await
        .unwrap();
    let stat = client.stat(at("a/file.txt")).await.unwrap();
    assert_eq!(
        (stat.file_type(), stat.size, stat.mode),
        (FileType::File, 3, 0o644)
    );
    client.chmod(at("a/file.txt"), 0o600).await.unwrap();
    assert_eq!(client.stat(at("a/file.txt")).await.unwrap().mode, 0o600);
    client
        .rename(at("a/file.txt"), "a/b/renamed.txt")
        .await
        .unwrap();
    let names: Vec<String> = client
        .list(at("a/b"))
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["c", "renamed.txt"]);
    let err = client.remove(at("a"), false).await.unwrap_err();
    assert!(
        err.remote_kind().is_some(),
        "non-recursive remove of a full dir fails: {err}"
    );
    client.remove(at("a"), true).await.unwrap();
    let err = client.stat(at("a")).await.unwrap_err();
    assert_eq!(err.remote_kind(), Some(ErrorKind::NotFound));
    assert!(err.to_string().contains('a'), "error names the path: {err}");
}

#[tokio::test]
async fn paths_cannot_leave_their_root() {
    let agent = TestAgent::start();
    let client = agent.client().await;
    let jail = agent.dir.path().join("jail");
    std::fs::create_dir(&jail).unwrap();
    std::fs::write(agent.dir.path().join("secret"), b"s3cret").unwrap();
    std::os::unix::fs::symlink("/etc", jail.join("etc-link")).unwrap();
    std::os::unix::fs::symlink("../secret", jail.join("up-link")).unwrap();
    let root = jail.display().to_string();
    for escape in ["../secret", "up-link", "etc-link/passwd", "/../secret"] {
        let mut sink = Vec::new();
        let err = client
            .get(RemotePath::new(escape).within(root.clone()), &mut sink)
            .await
            .unwrap_err();
        assert_eq!(
            err.remote_kind(),
            Some(ErrorKind::OutsideRoot),
            "{escape}: {err}"
        );
        assert!(sink.is_empty());
    }
    let err = client
        .put(
            &b"x"[..],
            RemotePath::new("etc-link/evil").within(root.clone()),
            0o644,
        )
        .await
        .unwrap_err();
    assert_eq!(err.remote_kind(), Some(ErrorKind::OutsideRoot), "{err}");
    assert!(!std::path::Path::new("/etc/evil").exists());
}

#[tokio::test]
async fn pty_session_with_resize_and_ctrl_c() {
    let agent = TestAgent::start();
    let client = agent.client().await;
    let mut exec = client
        .exec(ExecSpec::new(["sh"]).pty(24, 80))
        .await
        .unwrap();
    let control = exec.control();
    let mut stdin = exec.take_stdin().unwrap();
    stdin.write(b"stty size; tty\n").await.unwrap();
    let mut screen = String::new();
    let read_until = async |exec: &mut krunbox_protocol::client::Execution,
                            needle: &str,
                            screen: &mut String| {
        while !screen.contains(needle) {
            match tokio::time::timeout(Duration::from_secs(10), exec.next_event())
                .await
                .expect("output in time")
                .unwrap()
            {
                Some(ExecEvent::Output { data, .. }) => {
                    screen.push_str(&String::from_utf8_lossy(&data))
                }
                other => {
                    panic!("unexpected {other:?} while waiting for {needle:?}; screen: {screen}")
                }
            }
        }
    };
    read_until(&mut exec, "24 80", &mut screen).await;
    read_until(&mut exec, "/dev/pts/", &mut screen).await;
    control.resize(50, 132).await.unwrap();
    stdin.write(b"stty size\n").await.unwrap();
    read_until(&mut exec, "50 132", &mut screen).await;
    // Ctrl-C interrupts the foreground job (SIGINT through the line discipline), not the shell.
    stdin.write(b"sleep 30\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let interrupted = std::time::Instant::now();
    stdin.write(&[0x03]).await.unwrap();
    stdin.write(b"echo status-$?\n").await.unwrap();
    read_until(&mut exec, "status-130", &mut screen).await;
    assert!(interrupted.elapsed() < Duration::from_secs(10));
    stdin.write(b"exit 7\n").await.unwrap();
    let status = loop {
        match exec.next_event().await.unwrap() {
            Some(ExecEvent::Exit(status)) => break status,
            Some(_) => {}
            None => panic!("no exit"),
        }
    };
    assert_eq!(status.outcome, Some(Outcome::Code(7)));
}

#[tokio::test]
async fn closing_stdin_on_a_pty_sends_end_of_file() {
    let agent = TestAgent::start();
    let client = agent.client().await;
    let mut exec = client
        .exec(ExecSpec::new(["sh", "-c", "cat; echo cat-done"]).pty(24, 80))
        .await
        .unwrap();
    let mut stdin = exec.take_stdin().unwrap();
    stdin.write(b"typed\n").await.unwrap();
    // ^D at the start of a line: cat reads end of file; the terminal itself stays open.
    stdin.close().await.unwrap();
    let out = tokio::time::timeout(Duration::from_secs(10), exec.collect())
        .await
        .expect("cat ended on ^D")
        .unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(
        screen.contains("typed") && screen.contains("cat-done"),
        "{screen}"
    );
    assert_eq!(out.status.outcome, Some(Outcome::Code(0)));
}

#[tokio::test]
async fn malformed_frames_close_only_that_connection() {
    let agent = TestAgent::start();
    let client = agent.client().await;
    // Garbage after a valid-looking length, and a length prefix far over the limit.
    for garbage in [
        vec![0u8, 0, 0, 4, 0xff, 0xff, 0xff, 0xff],
        vec![0x7f, 0xff, 0xff, 0xff, 1, 2, 3],
    ] {
        let mut raw = tokio::net::UnixStream::connect(&agent.socket)
            .await
            .unwrap();
        raw.write_all(&garbage).await.unwrap();
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read(&mut raw, &mut buf),
        )
        .await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "agent closed the bad connection: {closed:?}"
        );
    }
    // A handshaken connection that then sends garbage.
    let mut raw = tokio::net::UnixStream::connect(&agent.socket)
        .await
        .unwrap();
    raw.write_all(&[0, 0, 0, 2, 0x12, 0xff]).await.unwrap();
    // The agent and the original connection are still fine.
    let out = client
        .exec(ExecSpec::new(["echo", "still here"]))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(out.stdout, b"still here\n");
    let fresh = agent.client().await;
    assert!(fresh.ping().await.is_ok());
}

#[tokio::test]
async fn shutdown_stops_the_host_mode_agent() {
    let mut agent = TestAgent::start();
    let client = agent.client().await;
    client.shutdown(0).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = agent.child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "agent did not exit after shutdown"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn unshare_available() -> bool {
    std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs the agent as PID 1 of a fresh PID + mount namespace: orphans are reaped and a
/// SIGTERM to the agent reaches a running exec.
#[tokio::test]
async fn as_pid1_in_a_namespace_reaps_orphans_and_forwards_signals() {
    if !unshare_available() {
        assert!(
            std::env::var("KRUNBOX_REQUIRE_E2E").is_err(),
            "unshare --pid needs root; required in CI"
        );
        eprintln!("SKIPPED: unshare --pid --fork --mount-proc is not permitted here");
        return;
    }
    let agent = TestAgent::start_with(|argv| {
        let mut wrapped: Vec<String> =
            ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]
                .map(String::from)
                .to_vec();
        wrapped.extend(argv);
        wrapped
    });
    let client = agent.client().await;
    let out = client
        .exec(ExecSpec::new(["sh", "-c", "echo $$; cat /proc/1/comm"]))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.lines().nth(1) == Some("guest-init"),
        "agent is PID 1: {text}"
    );

    // An orphan: a double fork into a new session, so the exec ends at once (the orphan holds
    // none of its pipes, and is outside its process group) and the orphan is re-parented to
    // PID 1, which must reap it when it exits.
    let run = async |script: String| {
        let out = client
            .exec(ExecSpec::new(["sh", "-c", script.as_str()]))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let orphan: u32 = run("setsid sh -c 'sleep 0.5 </dev/null >/dev/null 2>&1 & echo $!'".into())
        .await
        .trim()
        .parse()
        .unwrap();
    let parent = run(format!("cut -d' ' -f4 /proc/{orphan}/stat")).await;
    assert_eq!(
        parent.trim(),
        "1",
        "orphan {orphan} re-parented to the agent"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let state = run(format!("cat /proc/{orphan}/stat 2>/dev/null || echo gone")).await;
    assert_eq!(
        state.trim(),
        "gone",
        "orphan {orphan} was reaped, not left a zombie: {state}"
    );
    let zombies = run("grep -l '^[0-9]* (.*) Z' /proc/[0-9]*/stat || true".into()).await;
    assert_eq!(zombies.trim(), "", "no zombie anywhere in the namespace");

    // SIGTERM to PID 1 (sent from inside the namespace) reaches the running command.
    let mut sleeper = client
        .exec(ExecSpec::new([
            "sh",
            "-c",
            "trap 'echo got-term; exit 3' TERM; sleep 30 & wait",
        ]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    client
        .exec(ExecSpec::new(["kill", "-TERM", "1"]))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut stdout = Vec::new();
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(10), sleeper.next_event())
            .await
            .expect("exit in time")
            .unwrap()
        {
            Some(ExecEvent::Output { data, .. }) => stdout.extend_from_slice(&data),
            Some(ExecEvent::Exit(status)) => break status,
            Some(_) => {}
            None => panic!("no exit"),
        }
    };
    assert_eq!(String::from_utf8_lossy(&stdout).trim(), "got-term");
    assert_eq!(status.shell_code(), 3);
}
