//! What a guest is given, whichever backend boots it: its root filesystem ([`rootfs`]: the
//! IMAGE argument prepared), the host directories shared into it ([`shares`]), the host's CA
//! certificates it may trust ([`host_ca`]), the command it runs ([`command`]), and the agent
//! binary that is its PID 1 ([`agent`]). `sandbox/` and `cli/` decide what a VM gets; `backend/` boots it.

pub mod agent;
pub mod command;
pub mod host_ca;
pub mod rootfs;
pub mod shares;
