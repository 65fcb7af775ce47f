//! Terminals: the container's pty is created inside the container (on its own devpts) and
//! the master end is sent to the caller's console socket, as runc does for podman/conmon.

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt, Winsize};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConsoleError {
    #[error("connecting to console socket {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{op}: {errno}")]
    Pty { op: &'static str, errno: Errno },
}

fn pty(op: &'static str) -> impl FnOnce(Errno) -> ConsoleError {
    move |errno| ConsoleError::Pty { op, errno }
}

/// Connects to the console socket from the host side, before any namespace is entered.
pub fn connect(path: &Path) -> Result<OwnedFd, ConsoleError> {
    let s = UnixStream::connect(path).map_err(|source| ConsoleError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(OwnedFd::from(s))
}

/// Creates a pty from the current /dev/ptmx, sends the master to `socket`, makes the slave
/// the controlling terminal and stdio. Returns the slave's path (for /dev/console).
pub fn setup(socket: &OwnedFd, size: Option<(u16, u16)>) -> Result<String, ConsoleError> {
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(pty("opening /dev/ptmx"))?;
    grantpt(&master).map_err(pty("granting pty"))?;
    unlockpt(&master).map_err(pty("unlocking pty"))?;
    let name = ptsname_r(&master).map_err(pty("reading pty name"))?;
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(pty("opening pty slave"))?;
    if let Some((rows, cols)) = size {
        let ws = Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a Winsize from the pointer we pass.
        let r = unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        Errno::result(r).map_err(pty("setting terminal size"))?;
    }
    let master_raw: RawFd = master.as_raw_fd();
    let fds = [master_raw];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let iov = [IoSlice::new(name.as_bytes())];
    sendmsg::<()>(socket.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
        .map_err(pty("sending pty master to console socket"))?;
    drop(master);
    // SAFETY: TIOCSCTTY on a terminal we just opened; we are a session leader.
    let r = unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) };
    Errno::result(r).map_err(pty("making pty the controlling terminal"))?;
    for target in 0..3 {
        dup2_raw(slave.as_fd().as_raw_fd(), target).map_err(pty("redirecting stdio to pty"))?;
    }
    Ok(name)
}

fn dup2_raw(from: RawFd, to: RawFd) -> Result<(), Errno> {
    // SAFETY: plain dup2 onto stdio numbers we own.
    Errno::result(unsafe { libc::dup2(from, to) }).map(drop)
}

/// Takes ownership of a raw fd inherited across fork.
///
/// # Safety
/// `fd` must be open and owned by nobody else.
pub unsafe fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: guaranteed by the caller.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

pub fn into_raw(fd: OwnedFd) -> RawFd {
    fd.into_raw_fd()
}
