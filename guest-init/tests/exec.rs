//! The agent in host mode: exec behaviour end to end over a real Unix socket.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::time::Duration;

use common::{Sha256Sum, TestAgent};
use krunbox_protocol::client::{ExecEvent, ExecSpec};
use krunbox_protocol::messages::{Outcome, OutputStream, SpawnStage};

#[tokio::test]
async fn echo_and_exit_codes() {
    let agent = TestAgent::start();
    let client = agent.client().await;
    let out = client
        .exec(ExecSpec::new(["echo", "hello", "world"]))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(out.stdout, b"hello world\n");
    assert_eq!(out.status.outcome, Some(Outcome::Code(0)));
    let out = client
        .exec(ExecSpec::new([
            "sh",
            "-c",
            "echo out; echo err >&2; exit 42",
        ]))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(out.status.shell_code(), 42);
}

#[tokio::test]
async fn env_cwd_and_default_path() {
    let agent = TestAgent::start();
    let client = agent.client().await;
    let spec = ExecSpec::new(["sh", "-c", "echo $GREETING; pwd; echo $PATH"])
        .env("GREETING", "hi there")
        .cwd("/usr");
    let out = client.exec(spec).await.unwrap().collect().await.unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "hi there");
    assert_eq!(lines[1], "/usr");
    assert!(
        lines[2].contains("/usr/bin"),
        "default PATH added: {}",
        lines[2]
    );
    // No cwd means `/`, whatever the agent's own working directory is.
    let out = client
        .exec(ExecSpec::new(["pwd"]))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(out.stdout, b"/\n");
}

#[tokio::test]
async fn runs_as_another_user_without_root_groups() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIPPED: changing users needs root");
        return;
    }
    let agent = TestAgent::start();
    let client = agent.client().await;
    let out = client
        .exec(ExecSpec::new(["sh", "-c", "id -u; id -g; id -G"]).user(65534, 65533))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "65534\n65533\n65533\n",
        "uid, gid, and no supplementary groups left from root; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn stdin_is_piped_and_closed() {
    let agent = TestAgent::start();
    let client = agent.client().await;
    let mut exec = client
        .exec(ExecSpec::new(["sh", "-c", "tr a-z A-Z; echo done"]).stdin(true))
        .await
        .unwrap();
    let mut stdin = exec.take_stdin().unwrap();
    stdin.write(b"piped input\n").await.unwrap();
    stdin.close().await.unwrap();
    let out = exec.collect().await.unwrap();
    assert_eq!(out.stdout, b"PIPED INPUT\ndone\n");
}

/// The host closes stdin when its own input ends, which may be just as the command exits:
/// a close that meets an exec on its way out is taken, never answered with an error that
/// would reach the host before the exit (a `krunbox exec` of twenty sandboxes under TCG once
/// failed so). The window is the agent's exit path, microseconds unless its writer is slow:
/// on a quiet machine this passes without the fix too; it guards against the error coming
/// back, more often the busier the machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdin_close_racing_the_exit_is_not_an_error() {
    let agent = TestAgent::start();
    let client = agent.client().await;
    for round in 0..300u64 {
        let mut exec = client
            .exec(ExecSpec::new(["true"]).stdin(true))
            .await
            .unwrap();
        let stdin = exec.take_stdin().unwrap();
        // From at once to well after the exit, so that some closes meet its way out.
        tokio::time::sleep(Duration::from_micros(round * 17 % 3000)).await;
        let _ = stdin.close().await;
        let out = exec
            .collect()
            .await
            .unwrap_or_else(|err| panic!("round {round}: {err}"));
        assert_eq!(out.status.outcome, Some(Outcome::Code(0)));
    }
}

#[tokio::test]
async fn signals_reach_the_process_group() {
    let agent = TestAgent::start();
    let client = agent.client().await;
    let exec = client.exec(ExecSpec::new(["sleep", "30"])).await.unwrap();
    exec.control().signal(libc::SIGTERM).await.unwrap();
    let out = exec.collect().await.unwrap();
    assert_eq!(out.status.outcome, Some(Outcome::Signal(libc::SIGTERM)));
    assert_eq!(out.status.shell_code(), 128 + libc::SIGTERM);
}

/// A delivered signal is not left in the client's queue: once `signal_delivered` returned, a
/// client that ends at once (its runtime gone, as `krunbox mcp` after its client left) has
/// still delivered it. The command ignores the hangup the agent sends when the connection
/// drops; only the kill ends it. On one thread the client's writer cannot run before the
/// runtime is dropped: with `signal` (queued only) here, the command was still alive after
/// 10 s in each run. (Should the hangup come before the trap is set, the test passes
/// whatever the client does: it can miss a regression, never fail a correct client.)
#[test]
fn a_delivered_signal_survives_the_client_ending_at_once() {
    let agent = TestAgent::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pid = runtime.block_on(async {
        let client = agent.client().await;
        let exec = client
            .exec(ExecSpec::new(["sh", "-c", "trap '' HUP; exec sleep 60"]))
            .await
            .unwrap();
        exec.control()
            .signal_delivered(libc::SIGKILL)
            .await
            .unwrap();
        exec.pid().unwrap()
    });
    drop(runtime);
    // A failed run does not leave its command behind.
    let _reaper = KillOnDrop(pid);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if state.split(' ').nth(2) == Some("Z") {
            break; // killed, not yet reaped by the agent
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the command still runs: the kill never left the client"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills a process when dropped.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0) {
            // A process already gone is ESRCH: nothing to do.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[tokio::test]
async fn timeout_kills_the_process_group() {
    let agent = TestAgent::start();
    let client = agent.client().await;
    let started = std::time::Instant::now();
    let out = client
        .exec(
            ExecSpec::new(["sh", "-c", "sleep 30 & sleep 30"]).timeout(Duration::from_millis(300)),
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert!(out.status.timed_out);
    assert_eq!(out.status.outcome, Some(Outcome::Signal(libc::SIGKILL)));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the background sleep was killed too (pipes closed)"
    );
}

#[tokio::test]
async fn missing_program_is_a_spawn_failure() {
    let agent = TestAgent::start();
    let client = agent.client().await;
    let exec = client
        .exec(ExecSpec::new(["/no/such/program"]))
        .await
        .unwrap();
    assert!(exec.pid().is_none());
    let out = exec.collect().await.unwrap();
    match &out.status.outcome {
        Some(Outcome::SpawnFailed(failure)) => {
            assert_eq!(failure.stage(), SpawnStage::Exec);
            assert_eq!(failure.errno, libc::ENOENT);
            assert!(
                failure.message.contains("/no/such/program"),
                "message names the program: {}",
                failure.message
            );
        }
        other => panic!("expected a spawn failure, got {other:?}"),
    }
    assert_eq!(out.status.shell_code(), 127);
    let bad_cwd = client
        .exec(ExecSpec::new(["true"]).cwd("/no/such/dir"))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    match bad_cwd.status.outcome {
        Some(Outcome::SpawnFailed(failure)) => {
            assert_eq!(failure.stage(), SpawnStage::Chdir);
            assert!(
                failure.message.contains("/no/such/dir"),
                "{}",
                failure.message
            );
        }
        other => panic!("expected a chdir failure, got {other:?}"),
    }
}

#[tokio::test]
async fn hundred_megabytes_of_stdout_arrive_intact() {
    let agent = TestAgent::start();
    let client = agent.client().await;
    // 100 MiB of non-repeating data, hashed inside the command and on the receiving side.
    let script = "head -c 104857600 /dev/urandom | tee >(sha256sum >&2)";
    let mut exec = client
        .exec(ExecSpec::new(["bash", "-c", script]))
        .await
        .unwrap();
    let mut hasher = Sha256Sum::new();
    let mut total = 0usize;
    let mut stderr = Vec::new();
    let status = loop {
        match exec.next_event().await.unwrap().unwrap() {
            ExecEvent::Output {
                stream: OutputStream::Stdout,
                data,
            } => {
                total += data.len();
                hasher.update(&data);
            }
            ExecEvent::Output { data, .. } => stderr.extend_from_slice(&data),
            ExecEvent::Eof(_) => {}
            ExecEvent::Exit(status) => break status,
        }
    };
    assert_eq!(status.shell_code(), 0);
    assert_eq!(total, 104_857_600);
    let expected = String::from_utf8(stderr).unwrap();
    assert_eq!(hasher.finish(), expected.split_whitespace().next().unwrap());
}

#[tokio::test]
async fn fifty_concurrent_execs() {
    let agent = TestAgent::start();
    let client = agent.client().await;
    let tasks: Vec<_> = (0..60)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let spec = ExecSpec::new(["sh", "-c", "sleep 0.2; echo $N; exit $((N % 7))"])
                    .env("N", i.to_string());
                let out = client.exec(spec).await.unwrap().collect().await.unwrap();
                (i, out)
            })
        })
        .collect();
    for task in tasks {
        let (i, out) = task.await.unwrap();
        assert_eq!(out.stdout, format!("{i}\n").into_bytes());
        assert_eq!(out.status.shell_code(), i % 7);
    }
}

#[tokio::test]
async fn split_streams_and_exit_future() {
    let agent = TestAgent::start();
    let client = agent.client().await;
    let exec = client
        .exec(ExecSpec::new(["sh", "-c", "echo a; echo b >&2; exit 5"]))
        .await
        .unwrap();
    let (_stdin, stdout, stderr, exit) = exec.split();
    let (out, err, status) = tokio::join!(stdout.read_to_end(), stderr.read_to_end(), exit);
    assert_eq!(out, b"a\n");
    assert_eq!(err, b"b\n");
    assert_eq!(status.unwrap().shell_code(), 5);
}

/// The soft and hard limit `/proc/self/limits` shows in the row `row` (e.g. "Max open files").
fn limits_row(limits: &str, row: &str) -> (String, String) {
    let line = limits
        .lines()
        .find(|l| l.starts_with(row))
        .unwrap_or_else(|| panic!("no {row} in {limits}"));
    let mut values = line[row.len()..].split_whitespace();
    (
        values.next().unwrap().to_owned(),
        values.next().unwrap().to_owned(),
    )
}

/// Linux's number of the capability to raise resource limits.
const CAP_SYS_RESOURCE: u32 = 24;

/// Whether this process has `capability` in its effective set.
fn has_capability(capability: u32) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|hex| u64::from_str_radix(hex.trim(), 16).unwrap())
        .unwrap();
    effective & (1 << capability) != 0
}

#[tokio::test]
async fn resource_limits_are_set_before_the_user_changes() {
    use krunbox_protocol::messages::Rlimit;
    use krunbox_protocol::rlimit::parse_ulimit;
    let agent = TestAgent::start();
    let client = agent.client().await;
    let limits = |spec: ExecSpec| {
        let client = &client;
        async move {
            let out = client.exec(spec).await.unwrap().collect().await.unwrap();
            (String::from_utf8(out.stdout).unwrap(), out.status)
        }
    };
    let (text, _) = limits(
        ExecSpec::new(["cat", "/proc/self/limits"])
            .rlimit(parse_ulimit("nofile=123:456").unwrap())
            .rlimit(parse_ulimit("core=unlimited").unwrap()),
    )
    .await;
    assert_eq!(
        limits_row(&text, "Max open files"),
        ("123".into(), "456".into())
    );
    assert_eq!(
        limits_row(&text, "Max core file size"),
        ("unlimited".into(), "unlimited".into())
    );

    // A hard limit above the agent's own: an agent that may raise it (CAP_SYS_RESOURCE, which
    // root in a guest has) does so before the command becomes another user; any other is
    // refused, and the command does not run.
    let mut own = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct it is given.
    let read = unsafe { libc::getrlimit(libc::RLIMIT_MSGQUEUE, &mut own) };
    assert_eq!(read, 0);
    if own.rlim_max != libc::RLIM_INFINITY {
        let raised = own.rlim_max + 4096;
        let mut spec = ExecSpec::new(["cat", "/proc/self/limits"]).rlimit(Rlimit {
            resource: 12,
            soft: raised,
            hard: raised,
        });
        let may_raise = has_capability(CAP_SYS_RESOURCE);
        if may_raise && nix::unistd::Uid::effective().is_root() {
            spec = spec.user(65534, 65534);
        }
        let (text, status) = limits(spec).await;
        if may_raise {
            let raised = raised.to_string();
            assert_eq!(
                limits_row(&text, "Max msgqueue size"),
                (raised.clone(), raised)
            );
        } else {
            match status.outcome {
                Some(Outcome::SpawnFailed(failure)) => {
                    assert_eq!(failure.stage(), SpawnStage::Rlimit);
                    assert_eq!(failure.errno, libc::EPERM);
                    assert!(
                        failure.message.contains("msgqueue limit"),
                        "the limit is named: {}",
                        failure.message
                    );
                }
                other => panic!("a raised hard limit ran as a normal user: {other:?}"),
            }
        }
    }

    // What the kernel has no limit for, or a soft limit above the hard one, is refused.
    for (bad, named) in [
        (
            Rlimit {
                resource: 99,
                soft: 1,
                hard: 1,
            },
            "resource 99 limit",
        ),
        (
            Rlimit {
                resource: 7,
                soft: 10,
                hard: 5,
            },
            "nofile limit",
        ),
    ] {
        let (_, status) = limits(ExecSpec::new(["true"]).rlimit(bad)).await;
        match status.outcome {
            Some(Outcome::SpawnFailed(failure)) => {
                assert_eq!(failure.stage(), SpawnStage::Rlimit);
                assert_eq!(failure.errno, libc::EINVAL);
                assert!(failure.message.contains(named), "{}", failure.message);
            }
            other => panic!("{bad:?} ran: {other:?}"),
        }
    }
}

/// A `/proc/self/status` field's mask (`CapBnd`, `CapEff`, ...).
fn status_mask(status: &str, field: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|hex| u64::from_str_radix(hex.trim(), 16).unwrap())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

/// Linux's number of the capability to change the bounding set.
const CAP_SETPCAP: u32 = 8;

#[tokio::test]
async fn capability_sets_and_no_new_privs_are_applied_as_asked() {
    use krunbox_protocol::messages::CapabilitySets;
    let agent = TestAgent::start();
    let client = agent.client().await;
    let status = |spec: ExecSpec| {
        let client = &client;
        async move {
            let out = client.exec(spec).await.unwrap().collect().await.unwrap();
            (String::from_utf8(out.stdout).unwrap(), out.status)
        }
    };
    let cat = || ExecSpec::new(["cat", "/proc/self/status"]);

    // no_new_privs needs no privilege.
    let (text, _) = status(cat().no_new_privileges(true)).await;
    assert_eq!(status_mask(&text, "NoNewPrivs"), 1, "{text}");
    let (text, _) = status(cat()).await;
    assert_eq!(status_mask(&text, "NoNewPrivs"), 0, "{text}");

    const CHOWN: u64 = 1;
    const KILL: u64 = 1 << 5;
    let narrow = CapabilitySets {
        bounding: CHOWN | KILL,
        effective: CHOWN | KILL,
        permitted: CHOWN | KILL,
        ..Default::default()
    };
    if !(nix::unistd::Uid::effective().is_root() && has_capability(CAP_SETPCAP)) {
        // An agent that may not narrow the bounding set says so; the command does not run.
        let (text, status) = status(cat().capabilities(narrow)).await;
        match status.outcome {
            Some(Outcome::SpawnFailed(failure)) => {
                assert_eq!(failure.stage(), SpawnStage::Capabilities);
                assert_eq!(failure.errno, libc::EPERM);
                assert!(
                    failure.message.contains("capabilities"),
                    "{}",
                    failure.message
                );
                assert!(text.is_empty());
            }
            other => panic!("capabilities were not applied and the command ran: {other:?}"),
        }
        return;
    }
    // As root: the bounding set is what the command can ever have (Linux gives root its
    // bounding set at execve).
    let (text, _) = status(cat().capabilities(narrow)).await;
    assert_eq!(status_mask(&text, "CapBnd"), CHOWN | KILL, "{text}");
    assert_eq!(status_mask(&text, "CapEff"), CHOWN | KILL, "{text}");
    // As another user: capabilities survive the change of user only as ambient ones.
    let ambient = CapabilitySets {
        ambient: KILL,
        inheritable: KILL,
        ..narrow
    };
    let (text, _) = status(cat().user(65534, 65534).capabilities(ambient)).await;
    assert!(text.contains("\nUid:\t65534\t65534"), "{text}");
    assert_eq!(status_mask(&text, "CapBnd"), CHOWN | KILL, "{text}");
    assert_eq!(status_mask(&text, "CapAmb"), KILL, "{text}");
    assert_eq!(status_mask(&text, "CapEff"), KILL, "{text}");
    let (text, _) = status(cat().user(65534, 65534).capabilities(narrow)).await;
    assert_eq!(status_mask(&text, "CapEff"), 0, "{text}");
    // An ambient capability outside the permitted set cannot be raised.
    let (_, refused) = status(cat().capabilities(CapabilitySets {
        ambient: 1 << 12,
        ..narrow
    }))
    .await;
    match refused.outcome {
        Some(Outcome::SpawnFailed(failure)) => {
            assert_eq!(failure.stage(), SpawnStage::Capabilities);
        }
        other => panic!("an unpermitted ambient capability was raised: {other:?}"),
    }
}

#[tokio::test]
async fn supplementary_groups_replace_the_agent_s() {
    let agent = TestAgent::start();
    let client = agent.client().await;
    let spec = ExecSpec::new(["cat", "/proc/self/status"])
        .user(65534, 65534)
        .groups([5, 7]);
    let out = client.exec(spec).await.unwrap().collect().await.unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    if nix::unistd::Uid::effective().is_root() {
        let groups = text
            .lines()
            .find_map(|l| l.strip_prefix("Groups:"))
            .unwrap_or_else(|| panic!("no Groups in {text}"));
        assert_eq!(groups.split_whitespace().collect::<Vec<_>>(), ["5", "7"]);
        assert!(text.contains("\nGid:\t65534\t65534"), "{text}");
    } else {
        // Only root may set groups; the command does not run without them.
        match out.status.outcome {
            Some(Outcome::SpawnFailed(failure)) => {
                assert_eq!(failure.stage(), SpawnStage::SetGid);
                assert_eq!(failure.errno, libc::EPERM);
            }
            other => panic!("groups were not set and the command ran: {other:?}"),
        }
    }
}
