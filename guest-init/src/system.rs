//! Small PID 1 duties: hostname, loopback, descriptor limit, and powering off.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

/// Sets the hostname; logged on failure.
pub fn set_hostname(name: &str) {
    if let Err(err) = nix::unistd::sethostname(name) {
        tracing::warn!(name, %err, "cannot set hostname");
    }
}

/// Brings `lo` up (IFF_UP) so that programs can use 127.0.0.1.
pub fn loopback_up() {
    let sock = match socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    ) {
        Ok(sock) => sock,
        Err(err) => {
            tracing::warn!(%err, "no socket for configuring lo");
            return;
        }
    };
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS fills `req`, which outlives the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) } != 0 {
        tracing::warn!(err = %std::io::Error::last_os_error(), "cannot read lo flags");
        return;
    }
    // SAFETY: reading and writing the flags member of the union SIOCGIFFLAGS just filled.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads `req`, which outlives the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) } != 0 {
        tracing::warn!(err = %std::io::Error::last_os_error(), "cannot bring lo up");
    }
}

/// The most open descriptors a process may be allowed (`fs.nr_open`), as systemd sets it.
/// The kernel's default (1048576) is below what an engine often copies from its host into a
/// container's `RLIMIT_NOFILE`, which setting it would then refuse.
const NR_OPEN: &str = "1073741816";

/// Lets a command's hard descriptor limit go as high as on a systemd host (see [`NR_OPEN`]).
pub fn raise_nr_open() {
    if let Err(err) = std::fs::write("/proc/sys/fs/nr_open", NR_OPEN) {
        tracing::warn!(%err, "cannot raise fs.nr_open");
    }
}

/// Raises the soft limit on open descriptors to the hard limit: each exec holds several
/// (pipes, PTY, status pipe) and the kernel's default soft limit of 1024 would cap how many
/// commands run at once long before memory does.
pub fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(err) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(%err, soft, hard, "cannot raise the descriptor limit");
            }
        }
        Ok(_) => {}
        Err(err) => tracing::warn!(%err, "cannot read the descriptor limit"),
    }
}

/// How long the guest's processes get to exit after SIGTERM before SIGKILL at power-off.
const TERM_GRACE: Duration = Duration::from_millis(500);

/// Reaps children until none is left (true) or `deadline` passes (false). Only for the power-off
/// path, after the runtime and its reaper are gone.
fn reap_until_none_left(deadline: Instant) -> bool {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Err(Errno::ECHILD) => return true,
            Ok(WaitStatus::StillAlive) => {
                if Instant::now() >= deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return false,
        }
    }
}

/// libkrun's request code for the guest's exit status (`_IO('v', 2)`), sent on a file of the
/// virtio-fs root; libkrun's VMM then exits with that status when the guest powers off.
const KRUN_EXIT_CODE_IOCTL: u32 = 0x7602;
/// `statfs` magic of virtio-fs.
const VIRTIOFS_MAGIC: nix::sys::statfs::FsType = nix::sys::statfs::FsType(0x6573_5546);

/// Tells libkrun the status its VMM process should exit with. Only when the root is virtio-fs
/// (libkrun serves the ioctl there); failures are logged, the shutdown goes on.
fn report_status_to_libkrun(status: i32, virtiofs_root: Option<std::os::fd::RawFd>) {
    use std::os::fd::AsRawFd;
    if let Some(fd) = virtiofs_root {
        // The root is an overlay: the virtio-fs root was opened before the switch.
        ioctl_exit_code(fd, status);
        return;
    }
    match nix::sys::statfs::statfs("/") {
        Ok(fs) if fs.filesystem_type() == VIRTIOFS_MAGIC => {}
        Ok(_) => {
            eprintln!("krunbox: the root is not virtio-fs: libkrun cannot learn the exit status");
            return;
        }
        Err(err) => {
            eprintln!("krunbox: cannot statfs /: {err}");
            return;
        }
    }
    let root = match std::fs::File::open("/") {
        Ok(root) => root,
        Err(err) => {
            eprintln!("krunbox: cannot open / to report the exit status: {err}");
            return;
        }
    };
    ioctl_exit_code(root.as_raw_fd(), status);
}

fn ioctl_exit_code(fd: std::os::fd::RawFd, status: i32) {
    // SAFETY: ioctl(2) on a descriptor we own, with an integer argument (no pointer); libkrun's
    // virtio-fs server reads the argument as the status and writes nothing back.
    let rc = unsafe {
        libc::ioctl(
            fd,
            KRUN_EXIT_CODE_IOCTL as _,
            libc::c_ulong::from(status.unsigned_abs()),
        )
    };
    if rc < 0 {
        eprintln!(
            "krunbox: libkrun did not take the exit status: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// How the guest ends, per VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Power off (QEMU: ACPI, `-no-reboot`).
    PowerOff,
    /// libkrun: report the status through virtio-fs, then reset, as libkrun's own init does
    /// (`reboot=k`: the i8042 reset ends the VMM; an x86 power-off without ACPI only halts).
    /// `virtiofs_root`: a descriptor of the virtio-fs root kept open when `/` became an
    /// overlay over it (else `/` itself is used).
    Libkrun {
        /// The virtio-fs root, when it is no longer `/`.
        virtiofs_root: Option<std::os::fd::RawFd>,
    },
}

/// Stops everything and ends the machine as `ending` says, reporting `status` on the console
/// first.
///
/// As PID 1 every process of the guest is our descendant, so "no child left" means nothing
/// runs any more: the grace period ends as soon as that is true, and a one-shot command that
/// already exited costs no waiting at all.
pub fn shut_down(status: i32, ending: Ending) -> ! {
    use nix::sys::reboot::RebootMode;
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    // Every process but us: -1 means all processes we may signal.
    let everyone = Pid::from_raw(-1);
    if kill(everyone, Signal::SIGTERM).is_ok() && !reap_until_none_left(Instant::now() + TERM_GRACE)
    {
        let _ = kill(everyone, Signal::SIGKILL);
        reap_until_none_left(Instant::now() + TERM_GRACE);
    }
    nix::unistd::sync();
    eprintln!("krunbox: exit-status {status}");
    let mode = match ending {
        Ending::PowerOff => RebootMode::RB_POWER_OFF,
        Ending::Libkrun { virtiofs_root } => {
            report_status_to_libkrun(status, virtiofs_root);
            RebootMode::RB_AUTOBOOT
        }
    };
    let err = match nix::sys::reboot::reboot(mode) {
        Ok(never) => match never {},
        Err(err) => err,
    };
    eprintln!("krunbox: power off failed: {err}");
    // A PID 1 that exits panics the kernel, which with panic=-1 also ends the VM.
    std::process::exit(status)
}
