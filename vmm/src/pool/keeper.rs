//! The pool's keeper: `krunbox __pool-keeper POOLDIR`, detached, one per pool.
//!
//! Every [`TICK`] it removes the members that are spent (claimed and let go) or dead, and, while
//! fewer than `size` are ready or booting, creates and starts one more (one at a time: a boot
//! takes the machine's CPU). After `krunbox pool stop` it boots nothing, removes every member
//! no run holds, waits for the ones in use to be let go, removes the pool and exits.
//!
//! A member that fails to boot is removed and the failure logged; the keeper waits
//! [`RETRY_AFTER_FAILURE`] before the next attempt, so a broken image does not spin.

use std::time::{Duration, Instant};

use super::claim::{self, MemberState};
use super::{Pool, PoolError, KEEPER_LOG_FILE};
use crate::io_error::io;
use crate::sandbox::lifecycle;

/// How often the keeper looks at its members.
const TICK: Duration = Duration::from_millis(100);
/// How long the warm-up exec may take.
const WARM_UP_LIMIT: Duration = Duration::from_secs(30);
/// The pause after a member failed to boot.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);
/// A member's guest is thrown away, so it gets no time for a clean power-off: its monitor
/// stops the VM at once.
const STOP_GRACE: Duration = Duration::ZERO;

/// What the keeper tells `krunbox pool start`, one JSON line on stdout.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// The keeper holds the pool and begins filling it.
    Keeping,
    /// The keeper cannot keep the pool.
    Failed {
        /// Why.
        message: String,
    },
}

/// Runs the keeper of the pool in `dir`; returns its exit status.
pub fn main(dir: &std::path::Path) -> i32 {
    // stderr is keeper.log (set up by `krunbox pool start`).
    crate::self_spawn::init_job_logging(std::io::stderr);
    match keep(dir) {
        Ok(()) => 0,
        Err(err) => {
            tracing::error!(%err, "the keeper stops");
            crate::self_spawn::emit(&Event::Failed {
                message: err.to_string(),
            });
            1
        }
    }
}

fn keep(dir: &std::path::Path) -> Result<(), PoolError> {
    let pool = Pool::at_dir(dir)?;
    let Some(_keeper) = pool.lock_as_keeper()? else {
        return Err(PoolError::Keeper {
            name: pool.name(),
            problem: "is already running".into(),
            log: pool.dir().join(KEEPER_LOG_FILE),
        });
    };
    let spec = pool.spec()?;
    crate::self_spawn::emit(&Event::Keeping);
    // From here on the starter has its answer; nobody reads stdout any more.
    let mut next_boot = Instant::now();
    let mut serial = 0u64;
    loop {
        let stopping = pool.stop_requested();
        let alive = sweep(&pool, stopping)?;
        if stopping {
            if pool.member_list()?.is_empty() {
                tracing::info!(pool = %spec.name, "pool emptied; the keeper exits");
                return pool.remove();
            }
        } else if alive < spec.size && Instant::now() >= next_boot {
            serial += 1;
            if let Err(err) = boot_member(&pool, &spec, serial) {
                tracing::warn!(%err, "a pool member did not boot; retrying in {RETRY_AFTER_FAILURE:?}");
                next_boot = Instant::now() + RETRY_AFTER_FAILURE;
            }
            continue;
        }
        std::thread::sleep(TICK);
    }
}

/// Removes the spent and dead members (and, when `stopping`, every member no run holds);
/// returns how many are ready or booting. A member that cannot be looked at or removed now is
/// logged and left for the next sweep: one bad member must not end the keeper.
fn sweep(pool: &Pool, stopping: bool) -> Result<usize, PoolError> {
    let mut alive = 0;
    for member in pool.member_list()? {
        let state = match claim::member_state(&member) {
            Ok(state) => state,
            Err(err) => {
                tracing::warn!(member = member.name(), %err, "cannot read a member's state");
                continue;
            }
        };
        match state {
            MemberState::Ready | MemberState::Booting if !stopping => alive += 1,
            MemberState::InUse => {}
            MemberState::Ready | MemberState::Booting | MemberState::Used | MemberState::Dead => {
                if let Err(err) = remove(&member) {
                    tracing::warn!(member = member.name(), %err, "cannot remove a member yet");
                }
            }
        }
    }
    Ok(alive)
}

/// The keeper's emptying, done by `krunbox pool stop` when the keeper is gone (killed): every
/// member removed as soon as no run holds it, then the pool.
pub fn empty_without_keeper(pool: &Pool) -> Result<(), PoolError> {
    // Held, so that no keeper starts meanwhile.
    let Some(_keeper) = pool.lock_as_keeper()? else {
        return Ok(());
    };
    while !pool.member_list()?.is_empty() {
        sweep(pool, true)?;
        std::thread::sleep(TICK);
    }
    pool.clone().remove()
}

/// Creates member number `serial` and starts it (waiting for its agent).
fn boot_member(pool: &Pool, spec: &super::PoolSpec, serial: u64) -> Result<(), PoolError> {
    let mut member = spec.member.clone();
    // Unique in the pool across keepers (a keeper's pid, its count), whatever the pool's name.
    member.name = format!("m{}-{serial}", std::process::id());
    member.created_at = crate::sandbox::spec::now();
    let sandbox = pool.members().create(&member)?;
    // Until the member is warmed up, no run claims it.
    let warming = sandbox.file(claim::WARMING_FILE);
    std::fs::write(&warming, b"").map_err(io("write", &warming))?;
    match lifecycle::start(&sandbox) {
        Ok(boot_ms) => {
            if let Err(err) = warm_up(&sandbox) {
                tracing::debug!(member = sandbox.name(), %err, "no warm-up exec");
            }
            std::fs::remove_file(&warming).map_err(io("remove", &warming))?;
            tracing::info!(member = sandbox.name(), ?boot_ms, "member ready");
            Ok(())
        }
        Err(err) => {
            let _ = lifecycle::remove(sandbox, true);
            Err(err.into())
        }
    }
}

/// Runs `true` once in a freshly booted member, before any run can claim it (its `warming`
/// mark is there until then): a guest's first exec pays for its cold page cache and guest-init's first spawn, about a
/// hundred milliseconds under TCG, which the run then does not. An image without `true` just
/// goes without.
fn warm_up(member: &crate::sandbox::store::Sandbox) -> Result<(), String> {
    use krunbox_protocol::client::ExecSpec;
    let address: krunbox_protocol::transport::AgentAddress = member
        .state()
        .map_err(|e| e.to_string())?
        .and_then(|state| state.agent)
        .ok_or("no agent address")?
        .parse()
        .map_err(|e| format!("{e}"))?;
    crate::sandbox::attach::with_agent(&address, WARM_UP_LIMIT, |client| async move {
        client.exec(ExecSpec::new(["true"])).await?.collect().await
    })
    .map(drop)
}

/// Stops and removes a member no run holds (a run may claim a ready one meanwhile: then it
/// is left to that run).
fn remove(member: &crate::sandbox::store::Sandbox) -> Result<(), PoolError> {
    let Some(_held) = claim::take_for_removal(member)? else {
        return Ok(());
    };
    lifecycle::stop(member, STOP_GRACE)?;
    lifecycle::remove(member.clone(), true)?;
    tracing::debug!(member = member.name(), "member removed");
    Ok(())
}
