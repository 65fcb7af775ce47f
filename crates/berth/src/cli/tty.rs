//! The local terminal for `run -t` and `exec -t`: raw mode, window size and its changes,
//! and, for `exec -t`, receiving the pty master from the runtime's console socket and
//! copying between it and our stdio.

use std::io::{IsTerminal, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The local terminal in raw mode; restored on drop.
pub struct RawMode {
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    pub fn enter() -> Result<RawMode> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).context("reading terminal settings")?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).context("setting raw mode")?;
        Ok(RawMode { saved })
    }

    /// Raw mode when stdin is a terminal, else nothing.
    pub fn if_terminal() -> Result<Option<RawMode>> {
        if std::io::stdin().is_terminal() {
            RawMode::enter().map(Some)
        } else {
            Ok(None)
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.saved,
        );
    }
}

/// Rows and columns of the terminal on stdin.
pub fn terminal_size() -> Option<(u16, u16)> {
    // SAFETY: TIOCGWINSZ fills the struct we pass.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_row > 0).then_some((ws.ws_row, ws.ws_col))
}

/// Calls `f` with the new size on every SIGWINCH, from a thread. Call before starting
/// other threads: SIGWINCH is blocked in this thread (and so in threads started later) and
/// read from a signalfd.
pub fn on_resize(f: impl Fn(u16, u16) + Send + 'static) -> Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    let mut set = SigSet::empty();
    set.add(Signal::SIGWINCH);
    set.thread_block().context("blocking SIGWINCH")?;
    let sfd = SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC).context("creating a signalfd")?;
    std::thread::spawn(move || {
        while let Ok(Some(_)) = sfd.read_signal() {
            if let Some((rows, cols)) = terminal_size() {
                f(rows, cols);
            }
        }
    });
    Ok(())
}

/// Sets the window size of a pty.
pub fn set_size(fd: RawFd, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads the struct we pass.
    unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
}

/// A console socket for the runtime's `--console-socket` in a private directory.
pub struct ConsoleSocket {
    dir: PrivateDir,
    listener: UnixListener,
}

impl ConsoleSocket {
    pub fn new() -> Result<ConsoleSocket> {
        let dir = PrivateDir::new()?;
        let sock = dir.0.join("console.sock");
        let listener = UnixListener::bind(&sock)
            .with_context(|| format!("listening on {}", sock.display()))?;
        Ok(ConsoleSocket { dir, listener })
    }

    pub fn path(&self) -> std::path::PathBuf {
        self.dir.0.join("console.sock")
    }
}

/// Runs `cmd` (a runtime `exec --tty --console-socket <console.path()>`), receives the pty
/// master and copies our stdin to it and it to our stdout until the process exits.
/// Returns the runtime's exit status code.
pub fn exec_with_console(mut cmd: Command, console: ConsoleSocket, id_hint: &str) -> Result<i32> {
    let ConsoleSocket { dir, listener } = console;
    let mut child = cmd.spawn().context("running the runtime's exec")?;
    let master = match accept_master(&listener, &mut child) {
        Ok(m) => m,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e.context(format!("exec -t in {id_hint}")));
        }
    };
    drop(listener);
    drop(dir);
    if let Some((rows, cols)) = terminal_size() {
        set_size(master.as_raw_fd(), rows, cols);
    }
    let raw_fd = master.as_raw_fd();
    on_resize(move |rows, cols| set_size(raw_fd, rows, cols))?;
    let raw = RawMode::if_terminal()?;
    let mut input = std::fs::File::from(master.try_clone().context("duplicating the pty")?);
    // Not joined: it may sit in a read of our terminal; it ends with the process.
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut stdin = std::io::stdin();
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 || input.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    let mut output = std::fs::File::from(master);
    let mut stdout = std::io::stdout();
    let mut buf = [0u8; 16384];
    // EIO once every holder of the slave side is gone.
    while let Ok(n) = output.read(&mut buf) {
        if n == 0
            || stdout
                .write_all(&buf[..n])
                .and_then(|_| stdout.flush())
                .is_err()
        {
            break;
        }
    }
    let status = child.wait().context("waiting for the runtime's exec")?;
    drop(raw);
    Ok(status.code().unwrap_or(125))
}

/// A 0700 directory under /tmp for the console socket (short enough for sun_path, and
/// nobody else can connect to the socket first); removed on drop.
struct PrivateDir(std::path::PathBuf);

impl PrivateDir {
    fn new() -> Result<PrivateDir> {
        use std::os::unix::fs::DirBuilderExt;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!("berth-exec-{}-{nanos}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&p)
            .with_context(|| format!("creating {}", p.display()))?;
        Ok(PrivateDir(p))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits (bounded) for the runtime to connect and send the master over SCM_RIGHTS.
fn accept_master(listener: &UnixListener, child: &mut std::process::Child) -> Result<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    listener.set_nonblocking(true)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let conn = loop {
        match listener.accept() {
            Ok((c, _)) => break c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Some(st) = child.try_wait()? {
                    bail!("the runtime exited ({st}) before sending the terminal");
                }
                if std::time::Instant::now() > deadline {
                    bail!("the runtime sent no terminal within 30 s");
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Err(e) => return Err(e).context("accepting the console connection"),
        }
    };
    conn.set_nonblocking(false)?;
    let mut name = [0u8; 256];
    let mut iov = [std::io::IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .context("receiving the terminal")?;
    for c in msg.cmsgs().context("reading the control message")? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel just gave us this descriptor; nothing else owns it.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    bail!("the console connection carried no file descriptor")
}
