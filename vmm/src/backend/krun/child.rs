//! The VMM child: `krunbox __krun-vmm RUNDIR`, one process per VM, because
//! `krun_start_enter` takes the process over and never returns (libkrun `_exit`s with the
//! guest's exit status when the guest powers off).
//!
//! ```text
//! krunbox run ──lifeline (stdin)───▶ krunbox __krun-vmm RUNDIR ── krun_start_enter ──▶ guest
//!   (holds the  ◀──events (stdout)──   PDEATHSIG=SIGTERM, own process group
//!    run dir lock)                     stderr → RUNDIR/vmm.log, console → RUNDIR/console.log
//! ```
//!
//! - The parent writes the [`KrunVmConfig`] into the run directory and starts the child with a
//!   pipe on its stdin: the lifeline. The child applies the configuration through [`KrunApi`],
//!   reports `entering` (or `failed` with the krun error) as a JSON line on stdout, and enters
//!   the VM.
//! - End of the lifeline (the parent finished or died, even by SIGKILL), SIGTERM (which the
//!   kernel sends when the parent dies: `PR_SET_PDEATHSIG`, set before exec) or SIGHUP make
//!   the child remove the run directory — the agent socket and logs with it — and `_exit`,
//!   which ends the VM with the process. Two watchers, because the pipe and the signal can
//!   each be missed: the parent may die between fork and `prctl`, and a stuck reader would
//!   not see a signal.
//! - With `--ssh`, the child starts the filtering SSH agent relay
//!   ([`crate::backend::ssh_agent_relay`]) on its own thread before configuring libkrun.
//! - Before anything else, the child confines what its in-process virtio-fs may do to
//!   host files ([`super::confine`]: no setuid/setgid modes, no device nodes or file
//!   capabilities).
//! - The child runs in its own process group: Ctrl-C reaches `krunbox run`, which forwards it
//!   to the guest command, and not the VMM.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::super::Helper;
use super::api::{KrunApi, KrunError};
use super::config::{KrunVmConfig, Layout};
use super::configure::configure;
use crate::self_spawn::emit;

/// The child's exit status when it could not start the VM.
pub const START_FAILED: i32 = 125;
/// The child's exit status when it stopped the VM because its parent went away or asked.
pub const STOPPED: i32 = 128 + libc::SIGTERM;

/// What the child tells the parent, one JSON line each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// Configured, and told not to enter the VM (`--no-enter`): waiting for the lifeline.
    Configured,
    /// Configured; calling `krun_start_enter`.
    Entering,
    /// Could not configure or start the VM.
    Failed {
        /// Why (a krun error names the call and errno).
        message: String,
    },
    /// A helper the VM cannot work without died; the child ends the VM.
    HelperDied {
        /// Which.
        helper: Helper,
    },
}

/// Runs the child; returns its exit status if the VM never ran. With `no_enter`, stops after
/// configuring libkrun and waits to be stopped.
pub fn main(run_dir: &Path, no_enter: bool) -> i32 {
    // To stderr, the VMM log; libkrun's own `log` logger stays free (`krun_init_log`).
    crate::self_spawn::init_job_logging(std::io::stderr);
    // First, before any thread starts: capabilities are per thread, and every thread started
    // later (libkrun's virtio-fs workers among them) inherits the confinement.
    if let Err(err) = super::confine::confine_share_writes() {
        return fail(err.to_string());
    }
    // Before any child: the pipe must not outlive this process's first children.
    let secrets = match crate::self_spawn::take_secrets() {
        Ok(secrets) => secrets,
        Err(message) => return fail(message),
    };
    let layout = Layout::new(run_dir.to_owned());
    let config = match KrunVmConfig::read(&layout.config()) {
        Ok(config) if config.run_dir == run_dir => config,
        Ok(config) => {
            return fail(format!(
                "the configuration is for {}, not {}",
                config.run_dir.display(),
                run_dir.display()
            ))
        }
        Err(message) => return fail(message),
    };
    if let Err(err) = watch_parent(run_dir) {
        return fail(format!("cannot watch the parent: {err}"));
    }
    let guest_init = match std::fs::read(&config.guest_init) {
        // libkrun serves it from memory for the VM's (and so the process's) life.
        Ok(bytes) => &*Box::leak(bytes.into_boxed_slice()),
        Err(err) => {
            return fail(format!(
                "cannot read the guest agent {}: {err}",
                config.guest_init.display()
            ))
        }
    };
    if let Err(err) = super::super::console::relay(&config.console_pipe, &layout.console()) {
        return fail(err.to_string());
    }
    // The values go to the gateway and are wiped here before the guest runs.
    if let Err(message) = start_network(&config, secrets) {
        return fail(message);
    }
    // A thread of this process: it ends with the VM.
    if let Some(relay) = &config.ssh_agent_relay {
        if let Err(err) = relay.start() {
            return fail(err.to_string());
        }
    }
    #[cfg(krunbox_libkrun)]
    {
        let mut api = super::api::LibKrun;
        if no_enter {
            if let Err(err) = configure(&mut api, &config, guest_init) {
                return fail(err.to_string());
            }
            emit(&Event::Configured);
            // The watchers end the process.
            loop {
                std::thread::park();
            }
        }
        run(&mut api, &config, guest_init)
    }
    #[cfg(not(krunbox_libkrun))]
    {
        // The parent never starts a child where the backend is unavailable.
        let _ = (guest_init, no_enter);
        fail("libkrun is not built into krunbox for this platform".into())
    }
}

/// Configures and enters the VM; returns only if that failed (after reporting it).
#[cfg_attr(not(krunbox_libkrun), allow(dead_code))]
pub fn run(api: &mut dyn KrunApi, config: &KrunVmConfig, guest_init: &'static [u8]) -> i32 {
    let ctx = match configure(api, config, guest_init) {
        Ok(ctx) => ctx,
        Err(err) => return fail(err.to_string()),
    };
    emit(&Event::Entering);
    let err: KrunError = api.start_enter(ctx);
    fail(format!("{err} (libkrun's own messages are in the VMM log)"))
}

/// Starts the user network's helper (`krunbox __net`) and waits for its socket, which libkrun
/// connects the guest's card to. The helper's stdin is a pipe this process never closes: it
/// ends when this process does, however that happens.
fn start_network(
    config: &KrunVmConfig,
    secrets: crate::self_spawn::SecretValues,
) -> Result<(), String> {
    use std::process::{Command, Stdio};

    use super::super::net;
    use super::super::{Network, SocketNotReady};

    let Network::User(network) = &config.network else {
        return Ok(());
    };
    let exe = std::env::current_exe().map_err(|e| format!("cannot find krunbox itself: {e}"))?;
    let args = net::helper_args(&config.net_socket, network, true).map_err(|e| e.to_string())?;
    let log_path = Layout::new(config.run_dir.clone()).log("net");
    let log = std::fs::File::create(&log_path)
        .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
    let mut child = Command::new(exe)
        .args(args)
        .env_remove(crate::self_spawn::SECRETS_FD_ENV)
        .envs(secrets.iter().map(|(name, value)| (name, value.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start the network helper: {e}"))?;
    drop(secrets);
    match super::super::wait_for_socket(&mut child, &config.net_socket, net::READY_TIMEOUT) {
        Ok(()) => {}
        Err(SocketNotReady::Exited(status)) => {
            return Err(format!(
                "the network helper ended ({status}); see {}",
                log_path.display()
            ))
        }
        Err(SocketNotReady::TimedOut) => {
            let _ = child.kill();
            return Err(format!(
                "the network helper did not listen within {:?}",
                net::READY_TIMEOUT
            ));
        }
    }
    // The lifeline: open until this process exits.
    std::mem::forget(child.stdin.take());
    let run_dir = config.run_dir.clone();
    // The gateway ends only with this process; if it dies first, the guest has lost its
    // network for good: say so and end the VM, as the QEMU supervisor does.
    std::thread::Builder::new()
        .name("network-watch".into())
        .spawn(move || {
            let status = child.wait();
            tracing::error!(?status, "the network helper died; stopping the VM");
            emit(&Event::HelperDied {
                helper: Helper::Network,
            });
            stop(&run_dir, "the network helper died")
        })
        .map_err(|e| format!("cannot watch the network helper: {e}"))?;
    Ok(())
}

fn fail(message: String) -> i32 {
    tracing::error!(%message, "the VM did not start");
    emit(&Event::Failed { message });
    START_FAILED
}

/// Starts the two watchers that end the VM when the parent goes away.
fn watch_parent(run_dir: &Path) -> std::io::Result<()> {
    let dir = run_dir.to_owned();
    std::thread::Builder::new()
        .name("lifeline".into())
        .spawn(move || {
            crate::self_spawn::wait_for_lifeline_end(std::io::stdin());
            stop(&dir, "the lifeline closed");
        })?;
    let dir = run_dir.to_owned();
    let mut signals = signal_hook::iterator::Signals::new(crate::self_spawn::ENDING_SIGNALS)?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                stop(&dir, &format!("signal {signal}"));
            }
        })?;
    Ok(())
}

/// Removes the run directory and ends the process (and so the VM) at once.
fn stop(run_dir: &Path, why: &str) -> ! {
    tracing::info!(why, "stopping the VM");
    if let Err(err) = std::fs::remove_dir_all(run_dir) {
        if err.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(%err, dir = %run_dir.display(), "cannot remove the run directory");
        }
    }
    // No destructors or atexit handlers: libkrun's threads own the VM's state.
    // SAFETY: _exit(2) is always safe to call; it ends the process without running Rust code.
    unsafe { libc::_exit(STOPPED) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::krun::configure::fake::RecordingKrun;
    use crate::backend::VmSpec;

    #[test]
    fn events_are_one_json_line_each() {
        assert_eq!(
            serde_json::to_string(&Event::Entering).unwrap(),
            r#"{"event":"entering"}"#
        );
        let back: Event =
            serde_json::from_str(r#"{"event":"failed","message":"krun_set_root(/x) failed"}"#)
                .unwrap();
        assert_eq!(
            back,
            Event::Failed {
                message: "krun_set_root(/x) failed".into()
            }
        );
    }

    #[test]
    fn a_vm_that_cannot_enter_reports_the_call() {
        let root = tempfile::tempdir().unwrap();
        let spec = VmSpec::new(root.path().to_owned(), "/gi".into());
        let config = KrunVmConfig::build(&spec, &Layout::new("/run/k/1".into()), 2).unwrap();
        let mut api = RecordingKrun::default();
        assert_eq!(run(&mut api, &config, b"init"), START_FAILED);
        assert_eq!(api.calls.last().unwrap(), "krun_start_enter(7)");
        let mut api = RecordingKrun {
            fail_at: Some(("krun_set_root", libc::ENOENT)),
            ..Default::default()
        };
        assert_eq!(run(&mut api, &config, b"init"), START_FAILED);
        assert!(!api.calls.iter().any(|c| c.starts_with("krun_start_enter")));
    }
}
