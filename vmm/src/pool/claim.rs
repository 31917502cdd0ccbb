//! Taking one ready member of a pool for one run, and letting it go.
//!
//! A member is claimed by holding `claim.lock` exclusively and writing `claimed` beside it.
//! The lock says "in use now" (the run holds it for its life, however it ends); the mark
//! says "used": once the lock is free again the member is spent, and only the keeper touches
//! it, to remove it. The keeper takes the same lock to remove an unclaimed member, so a run
//! and the keeper never both have one.

use crate::backend::{BackendKind, VmSpec};
use crate::io_error::io;
use crate::lock::LockGuard;
use crate::sandbox::state::Status;
use crate::sandbox::store::Sandbox;

use super::{PoolError, PoolKey, Pools};

const CLAIM_LOCK_FILE: &str = "claim.lock";
const CLAIMED_FILE: &str = "claimed";
/// Present while the keeper boots and warms the member up: not claimable yet.
pub(super) const WARMING_FILE: &str = "warming";

/// Where a member is in its one life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    /// Starting (its monitor runs; the agent is not up yet).
    Booting,
    /// Booted, unclaimed.
    Ready,
    /// A run holds it.
    InUse,
    /// A run had it and let go.
    Used,
    /// Its VM ended or never started, unclaimed.
    Dead,
}

/// `member`'s state. Only a claimed member's lock is probed (to tell in use from spent): a
/// probe of a ready member's lock would make a run that claims it at that moment miss it.
pub fn member_state(member: &Sandbox) -> Result<MemberState, PoolError> {
    if member.file(CLAIMED_FILE).exists() {
        let held = crate::lock::try_exclusive_existing(&member.file(CLAIM_LOCK_FILE))
            .map(|guard| guard.is_none())
            .unwrap_or(false);
        return Ok(if held {
            MemberState::InUse
        } else {
            MemberState::Used
        });
    }
    Ok(match member.status()? {
        // Booted, and still the keeper's while it warms the member up.
        Status::Running if member.file(WARMING_FILE).exists() => MemberState::Booting,
        Status::Running => MemberState::Ready,
        status if status.is_running() => MemberState::Booting,
        _ if member.monitor_alive()? => MemberState::Booting,
        _ => MemberState::Dead,
    })
}

/// A member taken for one run; [`finish`](Self::finish) (or drop) lets it go.
pub struct Claimed {
    /// The pool's name.
    pub pool: String,
    /// The member.
    pub member: Sandbox,
    _lock: LockGuard,
}

impl Claimed {
    /// Asks the member's monitor to stop its VM, without waiting: the keeper removes the
    /// member and boots another.
    pub fn finish(self) {
        if let Err(err) = self.member.request_stop() {
            tracing::debug!(%err, "cannot mark the pool member for stopping");
        }
        // Only while its monitor holds the member (its flock): a dead monitor's pid may be
        // another process's by now.
        if self.member.monitor_alive().unwrap_or(false) {
            if let Ok(Some(state)) = self.member.state() {
                let pid = nix::unistd::Pid::from_raw(state.monitor_pid as i32);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            }
        }
    }
}

/// Takes a ready member of a pool that serves `spec` on `backend`, if there is one.
pub fn claim(spec: &VmSpec, backend: BackendKind) -> Result<Option<Claimed>, PoolError> {
    let key = PoolKey::of(spec, backend);
    for pool in Pools::new()?.list()? {
        let Ok(pool_spec) = pool.spec() else { continue };
        if pool_spec.key != key || pool.stop_requested() {
            continue;
        }
        for member in pool.member_list()? {
            // A member may be removed under our feet by the keeper: it is just not available.
            let claimed = match try_claim(&member) {
                Ok(claimed) => claimed,
                Err(err) => {
                    tracing::debug!(member = member.name(), %err, "pool member not available");
                    None
                }
            };
            if let Some(claimed) = claimed {
                tracing::debug!(pool = %pool_spec.name, member = member.name(), "warm start");
                return Ok(Some(Claimed {
                    pool: pool_spec.name,
                    member,
                    _lock: claimed,
                }));
            }
        }
    }
    Ok(None)
}

/// Claims `member` if it is ready; the lock, held for the run's life.
pub(super) fn try_claim(member: &Sandbox) -> Result<Option<LockGuard>, PoolError> {
    let unclaimable = || member.file(CLAIMED_FILE).exists() || member.file(WARMING_FILE).exists();
    if unclaimable() {
        return Ok(None);
    }
    let Some(lock) = crate::lock::try_exclusive(&member.file(CLAIM_LOCK_FILE))? else {
        return Ok(None);
    };
    // Checked again under the lock: another run may have claimed and let go meanwhile.
    if unclaimable() || member.status()? != Status::Running {
        return Ok(None);
    }
    let mark = member.file(CLAIMED_FILE);
    std::fs::write(&mark, b"").map_err(io("write", &mark))?;
    Ok(Some(lock))
}

/// Takes `member` for the keeper, to remove it: `None` while a run holds it.
pub(super) fn take_for_removal(member: &Sandbox) -> Result<Option<LockGuard>, PoolError> {
    Ok(crate::lock::try_exclusive(&member.file(CLAIM_LOCK_FILE))?)
}
