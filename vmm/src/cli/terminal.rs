//! The host terminal during a PTY session: raw mode (restored on drop) and window size.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use nix::sys::termios::{self, SetArg, Termios};

/// Raw mode on stdin's terminal, restored when dropped.
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Puts stdin's terminal in raw mode: keys, Ctrl-C included, go to the guest as bytes.
    pub fn enable() -> nix::Result<Self> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd())?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)?;
        Ok(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let stdin = std::io::stdin();
        if let Err(err) = termios::tcsetattr(stdin.as_fd(), SetArg::TCSAFLUSH, &self.saved) {
            tracing::warn!(%err, "cannot restore the terminal");
        }
    }
}

/// The size (rows, columns) of the terminal on stdin, stdout or stderr, if any.
pub fn window_size() -> Option<(u16, u16)> {
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let found = [stdin.as_fd(), stdout.as_fd(), stderr.as_fd()]
        .into_iter()
        .find_map(size_of);
    found
}

fn size_of(fd: BorrowedFd<'_>) -> Option<(u16, u16)> {
    if !is_tty(fd) {
        return None;
    }
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the pointed-to struct, which lives for the
    // whole call; the fd is borrowed, so it is open.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut size) };
    (rc == 0 && size.ws_row > 0 && size.ws_col > 0).then_some((size.ws_row, size.ws_col))
}

fn is_tty(fd: BorrowedFd<'_>) -> bool {
    nix::unistd::isatty(fd).unwrap_or(false)
}
