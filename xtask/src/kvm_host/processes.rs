//! The harness's children (virtiofsd per share, QEMU) and how they die with it.
//!
//! Each child runs in a process group of its own (so a Ctrl-C at the terminal reaches only
//! the harness, which then stops them in order) and with `PR_SET_PDEATHSIG=SIGKILL` (so
//! they die even when the harness is SIGKILLed). [`Children`] SIGKILLs every group and reaps
//! it when dropped, which is every exit path of the harness but SIGKILL.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// A child that failed to start or to get ready.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// Spawning failed.
    #[error("cannot start {name} ({program}): {source}")]
    Spawn {
        /// Which child.
        name: String,
        /// Its program.
        program: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// It exited before its socket appeared, or the socket never did.
    #[error("{name} did not create {socket} within {waited:?}{exited}; its log: {log}")]
    NotReady {
        /// Which child.
        name: String,
        /// The socket waited for.
        socket: String,
        /// How long.
        waited: Duration,
        /// `" (it exited with ...)"` or empty.
        exited: String,
        /// Its log file.
        log: String,
    },
    /// A path given to the kernel contains a NUL byte.
    #[error("{0} contains a NUL byte")]
    Nul(String),
}

/// The running children, stopped (SIGKILL to each group, then reaped) on drop.
#[derive(Default)]
pub struct Children {
    running: Vec<(String, Child)>,
}

impl Children {
    /// Starts `cmd` as child `name`, in its own process group, killed with the harness.
    pub fn spawn(&mut self, name: &str, cmd: &mut Command) -> Result<(), ProcessError> {
        cmd.process_group(0);
        // SAFETY: prctl(2) is async-signal-safe and allocates nothing; it only sets the
        // signal this child receives when the thread that forked it exits.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| ProcessError::Spawn {
            name: name.to_owned(),
            program: cmd.get_program().to_string_lossy().into_owned(),
            source,
        })?;
        self.running.push((name.to_owned(), child));
        Ok(())
    }

    /// The process id of child `name`, while it is known.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.running
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, child)| child.id())
    }

    /// `None` while child `name` runs, else its exit status.
    pub fn try_wait(&mut self, name: &str) -> Option<ExitStatus> {
        let (_, child) = self.running.iter_mut().find(|(n, _)| n == name)?;
        child.try_wait().ok().flatten()
    }

    /// Waits until `socket` exists (the child's readiness signal) or child `name` exits.
    pub fn wait_for_socket(
        &mut self,
        name: &str,
        socket: &Path,
        log: &Path,
        limit: Duration,
    ) -> Result<(), ProcessError> {
        let deadline = Instant::now() + limit;
        loop {
            if socket.exists() {
                return Ok(());
            }
            let exited = self.try_wait(name);
            if exited.is_some() || Instant::now() >= deadline {
                return Err(ProcessError::NotReady {
                    name: name.to_owned(),
                    socket: socket.display().to_string(),
                    waited: limit,
                    exited: exited
                        .map(|s| format!(" (it exited: {s})"))
                        .unwrap_or_default(),
                    log: std::fs::read_to_string(log)
                        .unwrap_or_default()
                        .trim()
                        .to_owned(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        // QEMU (started last) first: the virtiofsds then see their client go.
        for (name, mut child) in self.running.drain(..).rev() {
            if matches!(child.try_wait(), Ok(None)) {
                if let Ok(pid) = i32::try_from(child.id()) {
                    // SAFETY: kill(2) with a negative pid signals the process group the
                    // child leads (process_group(0)); it takes no pointers.
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                }
            }
            if let Err(err) = child.wait() {
                eprintln!("kvm-host: cannot reap {name}: {err}");
            }
        }
    }
}

/// Makes `cmd` see, at `mount_point`, the whole of `/` (recursively) read-only, in a mount
/// namespace of its own: so virtiofsd serving `mount_point` cannot write to the machine
/// whatever the KVM host asks. Needs CAP_SYS_ADMIN (root) and mount_setattr(2) (Linux 5.12).
pub fn read_only_root_view(cmd: &mut Command, mount_point: &Path) -> Result<(), ProcessError> {
    let target = CString::new(mount_point.as_os_str().as_bytes())
        .map_err(|_| ProcessError::Nul(mount_point.display().to_string()))?;
    /// `struct mount_attr` of linux/mount.h (not in the libc crate).
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    // SAFETY: between fork and exec the closure makes only unshare(2), mount(2) and
    // mount_setattr(2) system calls, with pointers to C strings and a struct that live as long
    // as the closure (made before the fork) or are static; nothing is allocated.
    unsafe {
        cmd.pre_exec(move || {
            let fail = || Err(std::io::Error::last_os_error());
            let none: *const libc::c_char = std::ptr::null();
            let no_data: *const libc::c_void = std::ptr::null();
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return fail();
            }
            // Our mounts must not propagate back to the machine's namespace.
            let private = libc::MS_REC | libc::MS_PRIVATE;
            if libc::mount(none, c"/".as_ptr(), none, private, no_data) != 0 {
                return fail();
            }
            let bind = libc::MS_BIND | libc::MS_REC;
            if libc::mount(c"/".as_ptr(), target.as_ptr(), none, bind, no_data) != 0 {
                return fail();
            }
            let attr = MountAttr {
                attr_set: MOUNT_ATTR_RDONLY,
                attr_clr: 0,
                propagation: 0,
                userns_fd: 0,
            };
            let rc = libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                target.as_ptr(),
                libc::AT_RECURSIVE as libc::c_uint,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            );
            if rc != 0 {
                return fail();
            }
            Ok(())
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_root() -> bool {
        // SAFETY: geteuid(2) cannot fail and takes no arguments.
        unsafe { libc::geteuid() == 0 }
    }

    /// What the root virtiofsd is given to serve: a child that tries to write through the
    /// view — into a directory of the machine and into a submount (`/dev/shm`, a tmpfs) — fails
    /// with EROFS, nothing appears on the machine, and the view is not visible outside.
    #[test]
    fn the_root_view_cannot_be_written_even_in_submounts() {
        if !is_root() {
            eprintln!("SKIPPED the_root_view_cannot_be_written_even_in_submounts: needs root");
            return;
        }
        let machine_dir = tempfile::tempdir().unwrap();
        let view = tempfile::tempdir().unwrap();
        let shm = tempfile::Builder::new()
            .prefix("kvm-host-test-")
            .tempdir_in("/dev/shm")
            .unwrap();
        let targets = [
            machine_dir.path().join("written"),
            shm.path().join("written"),
        ];
        let script: String = targets
            .iter()
            .map(|t| {
                let through_view = view.path().join(t.strip_prefix("/").unwrap());
                format!(
                    "if echo x > '{}'; then echo wrote; else echo refused; fi; ",
                    through_view.display()
                )
            })
            .collect();
        let mut cmd = Command::new("/bin/sh");
        cmd.args([
            "-c",
            &format!("{script} ls '{}'", view.path().join("etc").display()),
        ]);
        read_only_root_view(&mut cmd, view.path()).unwrap();
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stdout} {stderr}");
        assert!(stdout.starts_with("refused\nrefused\n"), "{stdout}");
        assert!(
            stdout.contains("passwd"),
            "the view shows the machine's /etc: {stdout}"
        );
        assert_eq!(
            stderr.matches("Read-only file system").count(),
            2,
            "{stderr}"
        );
        for target in &targets {
            assert!(!target.exists(), "{} was written", target.display());
        }
        assert_eq!(
            std::fs::read_dir(view.path()).unwrap().count(),
            0,
            "the bind mount stays in the child's namespace"
        );
    }
}
