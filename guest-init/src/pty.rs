//! Pseudo-terminals: opening one for an exec, resizing it, and async I/O on the master.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use krunbox_protocol::messages::PtySize;
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::pty::{openpty, Winsize};
use tokio::io::unix::AsyncFd;

fn winsize(size: PtySize) -> Winsize {
    let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
    Winsize {
        ws_row: clamp(size.rows),
        ws_col: clamp(size.cols),
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// The agent's end of a PTY.
pub struct PtyMaster {
    fd: AsyncFd<OwnedFd>,
}

/// Opens a PTY of `size`: the master (non-blocking, for the agent) and the slave (for the command).
pub fn open(size: PtySize) -> Result<(PtyMaster, OwnedFd), Errno> {
    let pair = openpty(&winsize(size), None)?;
    for fd in [&pair.master, &pair.slave] {
        fcntl(fd, FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))?;
    }
    let flags = OFlag::from_bits_truncate(fcntl(&pair.master, FcntlArg::F_GETFL)?);
    fcntl(&pair.master, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    // SAFETY: the AsyncFd takes ownership of the OwnedFd, so the descriptor stays open and
    // refers to the same PTY master for the AsyncFd's whole lifetime.
    let fd = unsafe { AsyncFd::register(pair.master) }
        .map_err(|e| Errno::from_raw(e.into_parts().1.raw_os_error().unwrap_or(libc::EIO)))?;
    Ok((PtyMaster { fd }, pair.slave))
}

impl PtyMaster {
    /// Reads output; `Ok(0)` once every slave descriptor is closed (Linux reports EIO then).
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| nix::unistd::read(fd.get_ref(), buf).map_err(io::Error::from)) {
                Ok(Ok(n)) => return Ok(n),
                Ok(Err(err)) if err.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(Err(err)) => return Err(err),
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `data` (input to the terminal).
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(err)) => return Err(err),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// Sets the window size; the kernel sends SIGWINCH to the foreground process group.
    pub fn resize(&self, size: PtySize) -> Result<(), Errno> {
        let ws = winsize(size);
        // SAFETY: TIOCSWINSZ reads one `Winsize` from the pointer, which lives across the call.
        let rc = unsafe {
            libc::ioctl(
                self.fd.get_ref().as_fd().as_raw_fd(),
                libc::TIOCSWINSZ as _,
                &ws,
            )
        };
        Errno::result(rc).map(drop)
    }
}
