//! Starting a command: `clone(CLONE_VM | CLONE_VFORK)` into a child that only makes system
//! calls, then `execve`.
//!
//! Why not `fork`: in a multi-threaded program (the agent runs tokio) a forked child can
//! deadlock on a lock, malloc's among them, that another thread held at the fork. Why not
//! `posix_spawn`: it cannot set a session, a controlling terminal, credentials or a working
//! directory. So the child is made the way `posix_spawn` makes its own: it runs on the
//! agent's memory while the calling thread waits (`CLONE_VFORK`) until it execs or exits, on a
//! stack of its own, with every signal blocked until it has reset their handlers. Everything
//! it needs is prepared beforehand in a [`Plan`], so it never allocates or takes a lock; it
//! calls the kernel directly for credentials (libc's `setuid` would try to change every
//! thread of the agent). A failure is left in the shared plan as the stage and errno, and the
//! child `_exit`s 127.
//!
//! (Until generation 2 the agent `posix_spawn`ed its own binary as a single-threaded
//! trampoline that did those steps: a second exec of guest-init per command, about 80 % of
//! an exec's time.)

use std::ffi::{c_char, c_int, c_void, CString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;

use krunbox_protocol::messages::{CapabilitySets, SpawnStage};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};
use nix::unistd::Pid;

use crate::reaper::{ChildExit, ProcessTable};

/// The child's stack (it runs a few system calls and a `PATH` search on it).
const CHILD_STACK: usize = 64 * 1024;
/// The size of the kernel's signal set (64 signals), as `rt_sig*` calls take it.
const SIGSET_BYTES: libc::c_long = 8;
/// The longest `PATH` candidate tried (Linux's `PATH_MAX`).
const PATH_MAX: usize = 4096;
/// The highest capability number the bounding-set loop tries (the kernel refuses those past
/// its own last one with EINVAL, which is not an error here).
const LAST_CAPABILITY: libc::c_long = 63;
/// `_LINUX_CAPABILITY_VERSION_3`: `capset` with two 32-bit words per set.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Why a command could not be started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{stage:?} failed: {errno}")]
pub struct SpawnError {
    pub stage: SpawnStage,
    pub errno: Errno,
    /// The resource (Linux's number) whose limit could not be set, at stage `Rlimit`.
    pub resource: Option<u32>,
}

impl SpawnError {
    pub fn new(stage: SpawnStage, errno: Errno) -> Self {
        Self {
            stage,
            errno,
            resource: None,
        }
    }

    fn of_limit(resource: u32, errno: Errno) -> Self {
        Self {
            resource: Some(resource),
            ..Self::new(SpawnStage::Rlimit, errno)
        }
    }
}

/// The three descriptors the command gets as 0, 1 and 2.
pub struct Stdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// What a command runs as.
pub struct Command {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub pty: bool,
    /// `(resource, soft, hard)` in Linux's numbering.
    pub rlimits: Vec<(u32, u64, u64)>,
    /// Supplementary groups; empty: the primary group alone when the user changes.
    pub groups: Vec<u32>,
    /// The capability sets to give the command; `None` leaves them as Linux makes them.
    pub capabilities: Option<CapabilitySets>,
    /// Set `no_new_privs` before the `execve`.
    pub no_new_privileges: bool,
}

/// A started command.
pub struct Spawned {
    pub pid: Pid,
    pub exit: tokio::sync::oneshot::Receiver<ChildExit>,
}

/// Returns a close-on-exec duplicate at fd ≥ 10 when `fd` is low, so that the child's
/// `dup2`s onto 0–2 never collide with a source descriptor.
fn above_stdio(fd: OwnedFd) -> Result<OwnedFd, Errno> {
    if fd.as_raw_fd() >= 10 {
        return Ok(fd);
    }
    let high = fcntl(&fd, FcntlArg::F_DUPFD_CLOEXEC(10))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(high) })
}

fn c_string(s: &str) -> Result<CString, SpawnError> {
    CString::new(s).map_err(|_| SpawnError::new(SpawnStage::Validate, Errno::EINVAL))
}

/// Everything the child reads, prepared by the parent; the pointers point into the owned
/// strings beside them, which live as long as the plan.
struct Plan {
    _argv: Vec<CString>,
    _envp: Vec<CString>,
    argv: Vec<*const c_char>,
    envp: Vec<*const c_char>,
    /// `argv[0]`.
    file: CString,
    /// The command's own `PATH` (its environment's, else the default), for a bare name.
    path: Vec<u8>,
    cwd: Option<CString>,
    uid: Option<u32>,
    gid: Option<u32>,
    /// Drop the supplementary groups (a command run as another user, by root).
    single_group: bool,
    /// `setgroups`' list, when the command names its supplementary groups.
    groups: Vec<libc::gid_t>,
    pty: bool,
    /// `(resource, [soft, hard])`: `prlimit64`'s arguments.
    rlimits: Vec<(libc::c_long, [u64; 2])>,
    capabilities: Option<Capabilities>,
    no_new_privileges: bool,
    stdio: [RawFd; 3],
    /// Set by the child when a step failed: `stage << 32 | errno`.
    failure: AtomicI64,
    /// Set by the child when a limit could not be set: its index in `rlimits`.
    failed_limit: AtomicUsize,
}

// SAFETY: the raw pointers point into the heap buffers of the `CString`s the plan owns, which
// do not move when the plan does, and nothing else refers to them.
unsafe impl Send for Plan {}

impl Plan {
    fn new(command: &Command, stdio: [RawFd; 3]) -> Result<Self, SpawnError> {
        let argv_owned: Vec<CString> = command
            .argv
            .iter()
            .map(|a| c_string(a))
            .collect::<Result<_, _>>()?;
        let envp_owned: Vec<CString> = command
            .env
            .iter()
            .map(|(k, v)| {
                if k.is_empty() || k.contains('=') {
                    return Err(SpawnError::new(SpawnStage::Validate, Errno::EINVAL));
                }
                c_string(&format!("{k}={v}"))
            })
            .collect::<Result<_, _>>()?;
        let file = argv_owned
            .first()
            .cloned()
            .ok_or(SpawnError::new(SpawnStage::Validate, Errno::EINVAL))?;
        let path = command
            .env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_bytes().to_vec())
            .unwrap_or_else(|| b"/usr/local/bin:/bin:/usr/bin".to_vec());
        let pointers = |strings: &[CString]| {
            strings
                .iter()
                .map(|s| s.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect::<Vec<_>>()
        };
        Ok(Self {
            argv: pointers(&argv_owned),
            envp: pointers(&envp_owned),
            _argv: argv_owned,
            _envp: envp_owned,
            file,
            path,
            cwd: command.cwd.as_deref().map(c_string).transpose()?,
            uid: command.uid,
            gid: command.gid,
            single_group: (command.uid.is_some() || command.gid.is_some())
                && nix::unistd::Uid::effective().is_root(),
            groups: command.groups.clone(),
            pty: command.pty,
            rlimits: command
                .rlimits
                .iter()
                .map(|&(resource, soft, hard)| {
                    let known = krunbox_protocol::rlimit::resource_name(resource).is_some();
                    if !known || soft > hard {
                        return Err(SpawnError::of_limit(resource, Errno::EINVAL));
                    }
                    Ok((libc::c_long::from(resource), [soft, hard]))
                })
                .collect::<Result<_, _>>()?,
            capabilities: command.capabilities.map(Capabilities::new),
            no_new_privileges: command.no_new_privileges,
            stdio,
            failure: AtomicI64::new(0),
            failed_limit: AtomicUsize::new(0),
        })
    }
}

/// A command's capability sets as the child's system calls take them.
struct Capabilities {
    bounding: u64,
    /// `capset`'s header: version 3, this process.
    header: [u32; 2],
    /// `capset`'s data: (effective, permitted, inheritable) for bits 0–31, then 32–63.
    data: [[u32; 3]; 2],
    ambient: u64,
}

impl Capabilities {
    fn new(sets: CapabilitySets) -> Self {
        let words = |mask: u64| [mask as u32, (mask >> 32) as u32];
        let [effective, permitted, inheritable] =
            [sets.effective, sets.permitted, sets.inheritable].map(words);
        Self {
            bounding: sets.bounding,
            header: [CAPABILITY_VERSION_3, 0],
            data: [
                [effective[0], permitted[0], inheritable[0]],
                [effective[1], permitted[1], inheritable[1]],
            ],
            ambient: sets.ambient,
        }
    }
}

/// Starts `command` with `stdio`, registered in `table`; returns once the command was exec'd
/// (or failed before that).
pub async fn spawn(
    table: &Arc<ProcessTable>,
    command: &Command,
    stdio: Stdio,
) -> Result<Spawned, SpawnError> {
    let setup = |e| SpawnError::new(SpawnStage::Setup, e);
    let stdin = above_stdio(stdio.stdin).map_err(setup)?;
    let stdout = above_stdio(stdio.stdout).map_err(setup)?;
    let stderr = above_stdio(stdio.stderr).map_err(setup)?;
    let plan = Plan::new(
        command,
        [stdin.as_raw_fd(), stdout.as_raw_fd(), stderr.as_raw_fd()],
    )?;
    // On a blocking thread: CLONE_VFORK holds the calling thread until the child execs, which
    // must not hold up the runtime's other connections and streams.
    // The descriptors go along: they must stay open until the child has them, even if this
    // future is dropped meanwhile (a closed number could be reused for another file).
    let table = Arc::clone(table);
    let (spawned, plan) = tokio::task::spawn_blocking(move || {
        let spawned = table.spawn_tracked(|| clone_child(&plan));
        drop((stdin, stdout, stderr));
        (spawned, plan)
    })
    .await
    .map_err(|_| SpawnError::new(SpawnStage::Spawn, Errno::EAGAIN))?;
    let (pid, exit) = spawned.map_err(|e| SpawnError::new(SpawnStage::Spawn, e))?;
    let failure = plan.failure.load(Ordering::Acquire);
    if failure != 0 {
        let stage = SpawnStage::try_from((failure >> 32) as i32).unwrap_or(SpawnStage::Unspecified);
        let errno = Errno::from_raw((failure & 0xffff_ffff) as i32);
        // The child has exited; the reaper collects it.
        drop(exit);
        if stage == SpawnStage::Rlimit {
            let index = plan.failed_limit.load(Ordering::Acquire);
            let resource = plan.rlimits.get(index).map_or(0, |(r, _)| *r as u32);
            return Err(SpawnError::of_limit(resource, errno));
        }
        return Err(SpawnError::new(stage, errno));
    }
    Ok(Spawned { pid, exit })
}

/// Makes the child and waits (`CLONE_VFORK`) until it exec'd or exited.
fn clone_child(plan: &Plan) -> Result<Pid, Errno> {
    let mut stack = vec![0u8; CHILD_STACK];
    // The stack grows down on every architecture guest-init runs on; 16-byte aligned.
    let top = (stack.as_mut_ptr() as usize + CHILD_STACK) & !15;
    // Every signal blocked from here until the child reset its handlers: a handler of the
    // agent's running in the child would run on the agent's memory. Raw, because libc's
    // `sigfillset` leaves out the signals libc keeps for itself.
    let all: u64 = !0;
    let mut previous: u64 = 0;
    // SAFETY: rt_sigprocmask on this thread with two 8-byte masks that outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK as libc::c_long,
            &all as *const u64,
            &mut previous as *mut u64,
            SIGSET_BYTES,
        )
    };
    if rc != 0 {
        return Err(Errno::last());
    }
    // SAFETY: `child_main` only makes system calls and reads `plan`, which outlives the call
    // (CLONE_VFORK suspends this thread until the child execs or exits, so neither `plan` nor
    // `stack` can go away under it); `top` is the aligned top of `stack`, used by the child
    // alone.
    let pid = unsafe {
        libc::clone(
            child_main,
            top as *mut c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            plan as *const Plan as *mut c_void,
        )
    };
    let clone_errno = Errno::last();
    // SAFETY: as above, putting back the mask saved there.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK as libc::c_long,
            &previous as *const u64,
            std::ptr::null::<u64>(),
            SIGSET_BYTES,
        );
    }
    drop(stack);
    if pid < 0 {
        return Err(clone_errno);
    }
    Ok(Pid::from_raw(pid))
}

/// The child: only system calls from here to `execve` (see the module documentation).
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `&Plan` `clone_child` passed, alive while this runs.
    let plan = unsafe { &*(arg as *const Plan) };
    let stage = match prepare_and_exec(plan) {
        Ok(never) => match never {},
        Err(stage) => stage,
    };
    let errno = Errno::last_raw();
    plan.failure.store(
        ((stage as i64) << 32) | i64::from(errno as u32),
        Ordering::Release,
    );
    // SAFETY: ends the child process at once, without running anything of the agent's.
    unsafe { libc::_exit(127) }
}

enum Never {}

/// The steps before the command; the failed step's stage (errno says why).
fn prepare_and_exec(plan: &Plan) -> Result<Never, SpawnStage> {
    let ok = |rc: libc::c_long| rc >= 0;
    // SAFETY: system calls with scalar arguments or pointers into `plan` (which the parent
    // keeps alive) and into this stack; none touches memory the agent's threads use.
    unsafe {
        // Every handler back to its default, then nothing blocked: the command starts clean.
        // The kernel's `struct sigaction` (handler, flags, restorer, mask) all zero: SIG_DFL.
        let default = [0u64; 4];
        for signal in 1..=64 as libc::c_long {
            libc::syscall(
                libc::SYS_rt_sigaction,
                signal,
                default.as_ptr(),
                std::ptr::null::<u64>(),
                SIGSET_BYTES,
            );
        }
        let none = 0u64;
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK as libc::c_long,
            &none as *const u64,
            std::ptr::null::<u64>(),
            SIGSET_BYTES,
        );
        for (target, &source) in plan.stdio.iter().enumerate() {
            if libc::dup2(source, target as c_int) < 0 {
                return Err(SpawnStage::Setup);
            }
        }
        if libc::setsid() < 0 {
            return Err(SpawnStage::ControllingTerminal);
        }
        // The PTY slave is fd 0: make it the controlling terminal.
        if plan.pty && libc::ioctl(0, libc::TIOCSCTTY as _, 0) != 0 {
            return Err(SpawnStage::ControllingTerminal);
        }
        // Before the credentials change: root may raise a hard limit, the user may not.
        for (index, (resource, limit)) in plan.rlimits.iter().enumerate() {
            if !ok(libc::syscall(
                libc::SYS_prlimit64,
                0 as libc::c_long,
                *resource,
                limit.as_ptr(),
                std::ptr::null::<u64>(),
            )) {
                plan.failed_limit.store(index, Ordering::Release);
                return Err(SpawnStage::Rlimit);
            }
        }
        // As runc: the bounding set first, while the agent (root) may still drop from it;
        // capabilities kept across the change of user, then set once it is made.
        if let Some(capabilities) = &plan.capabilities {
            for capability in 0..=LAST_CAPABILITY {
                if capabilities.bounding & (1 << capability) == 0
                    && prctl(libc::PR_CAPBSET_DROP, capability, 0) < 0
                    && Errno::last() != Errno::EINVAL
                {
                    return Err(SpawnStage::Capabilities);
                }
            }
            if plan.uid.is_some() && !ok(prctl(libc::PR_SET_KEEPCAPS, 1, 0)) {
                return Err(SpawnStage::Capabilities);
            }
        }
        if let Some(gid) = plan.gid {
            if !ok(libc::syscall(libc::SYS_setgid, gid as libc::c_long)) {
                return Err(SpawnStage::SetGid);
            }
        }
        if !plan.groups.is_empty() {
            if !ok(libc::syscall(
                libc::SYS_setgroups,
                plan.groups.len() as libc::c_long,
                plan.groups.as_ptr(),
            )) {
                return Err(SpawnStage::SetGid);
            }
        } else if plan.single_group {
            let gid = libc::getgid();
            if !ok(libc::syscall(
                libc::SYS_setgroups,
                1,
                &gid as *const libc::gid_t,
            )) {
                return Err(SpawnStage::SetGid);
            }
        }
        if let Some(uid) = plan.uid {
            if !ok(libc::syscall(libc::SYS_setuid, uid as libc::c_long)) {
                return Err(SpawnStage::SetUid);
            }
        }
        // As the user, before its capabilities narrow (runc's order too).
        if let Some(cwd) = &plan.cwd {
            if libc::chdir(cwd.as_ptr()) != 0 {
                return Err(SpawnStage::Chdir);
            }
        }
        if let Some(capabilities) = &plan.capabilities {
            set_capabilities(capabilities)?;
        }
        if plan.no_new_privileges && !ok(prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0)) {
            return Err(SpawnStage::NoNewPrivileges);
        }
    }
    exec(plan);
    Err(SpawnStage::Exec)
}

/// `prctl(option, arg2, arg3, 0, 0)` as a raw system call: every argument given, since
/// several options refuse (EINVAL) unused ones that are not zero.
///
/// # Safety
/// Only for options that take scalars (no pointer is passed).
unsafe fn prctl(option: c_int, arg2: libc::c_long, arg3: libc::c_long) -> libc::c_long {
    // SAFETY: prctl with scalar arguments only.
    unsafe {
        libc::syscall(
            libc::SYS_prctl,
            libc::c_long::from(option),
            arg2,
            arg3,
            0 as libc::c_long,
            0 as libc::c_long,
        )
    }
}

/// The effective, permitted and inheritable sets, then the ambient one (raised from an empty
/// one; each must be permitted and inheritable). `PR_SET_KEEPCAPS` ends at the `execve`.
///
/// # Safety
/// Only system calls with pointers into `capabilities`: callable in the child.
unsafe fn set_capabilities(capabilities: &Capabilities) -> Result<(), SpawnStage> {
    let failed = |rc: libc::c_long| rc < 0;
    // SAFETY: capset reads a two-word header and two three-word data blocks, both owned by
    // `capabilities`; prctl takes scalars.
    unsafe {
        if failed(libc::syscall(
            libc::SYS_capset,
            capabilities.header.as_ptr(),
            capabilities.data.as_ptr(),
        )) || failed(prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL.into(),
            0,
        )) {
            return Err(SpawnStage::Capabilities);
        }
        for capability in 0..=LAST_CAPABILITY {
            if capabilities.ambient & (1 << capability) != 0
                && failed(prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE.into(),
                    capability,
                ))
            {
                return Err(SpawnStage::Capabilities);
            }
        }
    }
    Ok(())
}

/// `execve` of `argv[0]`, searched in the command's `PATH` when it has no `/` (as `execvp`,
/// but with the command's `PATH` and without allocating). Returns only on failure.
fn exec(plan: &Plan) {
    let file = plan.file.as_bytes();
    // SAFETY: execve with NUL-terminated strings and null-terminated pointer arrays that the
    // plan owns.
    let execve = |path: *const c_char| unsafe {
        libc::execve(path, plan.argv.as_ptr(), plan.envp.as_ptr());
    };
    if file.contains(&b'/') {
        execve(plan.file.as_ptr());
        return;
    }
    let mut candidate = [0u8; PATH_MAX];
    let mut denied = false;
    for dir in plan.path.split(|&b| b == b':') {
        let dir: &[u8] = if dir.is_empty() { b"." } else { dir };
        let len = dir.len() + 1 + file.len();
        if len >= PATH_MAX {
            continue;
        }
        candidate[..dir.len()].copy_from_slice(dir);
        candidate[dir.len()] = b'/';
        candidate[dir.len() + 1..len].copy_from_slice(file);
        candidate[len] = 0;
        execve(candidate.as_ptr().cast());
        match Errno::last() {
            Errno::EACCES => denied = true,
            Errno::ENOENT | Errno::ENOTDIR => {}
            _ => return,
        }
    }
    Errno::set_raw(if denied { libc::EACCES } else { libc::ENOENT });
}
