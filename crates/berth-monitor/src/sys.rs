//! The narrow syscall layer: thin wrappers over libc that turn -1/errno into io::Error.
//! Every fd the monitor creates is O_CLOEXEC, so nothing reaches the runtime or the
//! container except the stdio we dup2 explicitly in `spawn`.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cvt_size(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

pub fn cstring(p: &[u8]) -> io::Result<CString> {
    CString::new(p).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in argument"))
}

pub fn cpath(p: &Path) -> io::Result<CString> {
    cstring(p.as_os_str().as_bytes())
}

/// (read end, write end), both CLOEXEC.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two fds into the array.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both fds are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

pub fn set_nonblock(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd we hold.
    let fl = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) })?;
    Ok(())
}

pub fn open(path: &Path, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
    let c = cpath(path)?;
    // SAFETY: c is a valid C string.
    let fd = cvt(unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint) })?;
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn dev_null() -> io::Result<OwnedFd> {
    open(Path::new("/dev/null"), libc::O_RDWR, 0)
}

pub fn dup2(from: RawFd, to: RawFd) -> io::Result<()> {
    // SAFETY: dup2 on fds we hold; `to` is replaced atomically.
    cvt(unsafe { libc::dup2(from, to) })?;
    Ok(())
}

pub fn dup(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC returns a fresh fd.
    let n = cvt(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) })?;
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// Marks every inherited fd from 3 up close-on-exec (the engine may leak some to us; they
/// must not reach the container).
pub fn cloexec_from(first: RawFd) {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        return;
    }
    // Kernels before 5.11: walk /proc/self/fd.
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        let fds: Vec<RawFd> = dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|&fd| fd >= first)
            .collect();
        for fd in fds {
            // SAFETY: setting FD_CLOEXEC on an fd number; harmless if already closed.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
}

pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: buf is valid for buf.len() bytes.
        let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        match cvt_size(r) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

pub fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: buf is valid for buf.len() bytes.
        let r = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        match cvt_size(r) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// For blocking fds (sync pipe, files).
pub fn write_all(fd: RawFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let n = write(fd, buf)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
    }
    Ok(())
}

/// poll(2); EINTR counts as "nothing ready".
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    // SAFETY: fds is a valid array of pollfd.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(r as usize)
}

pub fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

fn sigset(sigs: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a valid sigset_t.
    unsafe {
        libc::sigemptyset(&mut set);
        for &s in sigs {
            libc::sigaddset(&mut set, s);
        }
    }
    set
}

/// Ignores the signals a terminal or a parent's Ctrl-C would send, blocks SIGCHLD and
/// returns a signalfd for it: exits are handled in the poll loop, not in a handler.
pub fn setup_signals() -> io::Result<OwnedFd> {
    for s in [
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGHUP,
        libc::SIGPIPE,
        libc::SIGQUIT,
    ] {
        // SAFETY: installing SIG_IGN is async-signal-safe and has no handler code.
        unsafe { libc::signal(s, libc::SIG_IGN) };
    }
    let set = sigset(&[libc::SIGCHLD]);
    // SAFETY: set is valid; single-threaded process.
    cvt(unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) })?;
    // SAFETY: set is valid.
    let fd = cvt(unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) })?;
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Empties a signalfd (we only care that SIGCHLD arrived; waitpid tells us who).
pub fn drain_signalfd(fd: RawFd) {
    let mut buf = [0u8; std::mem::size_of::<libc::signalfd_siginfo>() * 4];
    while matches!(read(fd, &mut buf), Ok(n) if n > 0) {}
}

/// A reaped child: its pid and raw wait status.
pub fn wait_any() -> Option<(i32, libc::c_int)> {
    wait_pid(-1)
}

pub fn wait_pid(pid: i32) -> Option<(i32, libc::c_int)> {
    let mut status = 0;
    // SAFETY: status is a valid out pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    (r > 0).then_some((r, status))
}

/// Blocking wait for one child (used for short-lived helpers such as `delete --force`).
pub fn wait_blocking(pid: i32) -> io::Result<libc::c_int> {
    let mut status = 0;
    loop {
        // SAFETY: status is a valid out pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r >= 0 {
            return Ok(status);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Whether `pid` is our child and has not been reaped yet.
pub fn is_child(pid: i32) -> bool {
    // SAFETY: siginfo_t is plain data; waitid fills it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: WNOWAIT leaves the child waitable; info is a valid out pointer.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    r == 0
}

pub fn kill(pid: i32, sig: libc::c_int) {
    if pid > 0 {
        // SAFETY: sending a signal to a pid we own.
        unsafe { libc::kill(pid, sig) };
    }
}

pub fn fork() -> io::Result<i32> {
    // SAFETY: the monitor is single-threaded, so the child may run arbitrary code.
    cvt(unsafe { libc::fork() })
}

/// Forks and execs `argv` (argv[0] looked up in PATH if it has no '/') with the given
/// stdio. Signal dispositions and mask are reset, since ignored signals survive execve.
/// Returns the pid, or the exec error reported back through a CLOEXEC pipe.
pub fn spawn(argv: &[CString], stdio: [RawFd; 3], cwd: Option<&CStr>) -> io::Result<i32> {
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    let (err_r, err_w) = pipe()?;
    let pid = fork()?;
    if pid == 0 {
        // Child: only async-signal-safe calls, nothing allocates.
        // SAFETY: all pointers were prepared before fork.
        unsafe {
            for s in [
                libc::SIGTERM,
                libc::SIGINT,
                libc::SIGHUP,
                libc::SIGPIPE,
                libc::SIGQUIT,
            ] {
                libc::signal(s, libc::SIG_DFL);
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            libc::umask(0o022);
            for (target, &fd) in stdio.iter().enumerate() {
                if fd != target as RawFd {
                    libc::dup2(fd, target as RawFd);
                } else {
                    libc::fcntl(fd, libc::F_SETFD, 0);
                }
            }
            if let Some(dir) = cwd {
                libc::chdir(dir.as_ptr());
            }
            libc::execvp(ptrs[0], ptrs.as_ptr());
            let errno = *libc::__errno_location();
            let b = errno.to_ne_bytes();
            libc::write(err_w.as_raw_fd(), b.as_ptr().cast(), b.len());
            libc::_exit(127);
        }
    }
    drop(err_w);
    let mut b = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match read(err_r.as_raw_fd(), &mut b[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    if got == 4 {
        let _ = wait_blocking(pid);
        return Err(io::Error::from_raw_os_error(i32::from_ne_bytes(b)));
    }
    Ok(pid)
}

/// A listening SOCK_STREAM unix socket at `dir/name`. Bound through /proc/self/fd/N so
/// state directories longer than sun_path (108 bytes) still work.
pub fn listen_unix(dir: &OwnedFd, name: &str) -> io::Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}/{}", dir.as_raw_fd(), name);
    let c = cstring(path.as_bytes())?;
    // SAFETY: unlinking a stale socket path; ENOENT is fine.
    unsafe { libc::unlink(c.as_ptr()) };
    // SAFETY: plain socket creation.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    })?;
    // SAFETY: fresh fd.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let (addr, len) = sockaddr_un(path.as_bytes())?;
    // Owner-only (0600): a client can write to the container's stdin.
    // SAFETY: umask only changes the process file mode mask; single-threaded.
    let old = unsafe { libc::umask(0o177) };
    // SAFETY: addr is a valid sockaddr_un of length len.
    let r = cvt(unsafe { libc::bind(fd, (&addr as *const libc::sockaddr_un).cast(), len) });
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    r?;
    // SAFETY: listening on our socket.
    cvt(unsafe { libc::listen(fd, 16) })?;
    Ok(sock)
}

fn sockaddr_un(path: &[u8]) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    if path.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(path) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + path.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

/// Accepts one pending connection (non-blocking, CLOEXEC); None when there is none.
pub fn accept(listener: RawFd) -> io::Result<Option<OwnedFd>> {
    // SAFETY: accept4 with null address pointers.
    let r = unsafe {
        libc::accept4(
            listener,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) | Some(libc::ECONNABORTED) => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: fresh fd.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(r) }))
}

/// Receives one message from the console socket; returns the fd passed with SCM_RIGHTS
/// (the pty master), if any. Ok(None) with `eof` set when the peer closed.
pub fn recv_fd(sock: RawFd) -> io::Result<(Option<OwnedFd>, bool)> {
    let mut data = [0u8; 256];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // Room for a few fds, aligned for cmsghdr.
    let mut cbuf = [0u64; 8];
    // SAFETY: msghdr is plain data.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf);
    // SAFETY: msg points at valid buffers for the duration of the call.
    let r = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted {
            return Ok((None, false));
        }
        return Err(e);
    }
    let mut got = None;
    // SAFETY: walking the control messages the kernel wrote into cbuf.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let n = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                    / std::mem::size_of::<RawFd>();
                let p = libc::CMSG_DATA(c) as *const RawFd;
                for i in 0..n {
                    let fd = std::ptr::read_unaligned(p.add(i));
                    let owned = OwnedFd::from_raw_fd(fd);
                    if got.is_none() {
                        got = Some(owned);
                    } // extra fds are closed by dropping `owned`
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((got, r == 0))
}

pub fn set_winsize(fd: RawFd, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from the pointer.
    cvt(unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) })?;
    Ok(())
}

/// Wall clock as (seconds, nanoseconds) since the epoch.
pub fn realtime() -> (i64, u32) {
    clock(libc::CLOCK_REALTIME)
}

/// Monotonic milliseconds, for deadlines.
pub fn monotonic_ms() -> i64 {
    let (s, ns) = clock(libc::CLOCK_MONOTONIC);
    s * 1000 + i64::from(ns / 1_000_000)
}

fn clock(id: libc::clockid_t) -> (i64, u32) {
    // SAFETY: timespec is plain data.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: ts is a valid out pointer.
    unsafe { libc::clock_gettime(id, &mut ts) };
    (ts.tv_sec, ts.tv_nsec as u32)
}

pub fn unlink_at(dir: &OwnedFd, name: &str) {
    if let Ok(c) = cstring(name.as_bytes()) {
        // SAFETY: c is a valid C string, dir a directory fd.
        unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) };
    }
}

pub fn rename_at(dir: &OwnedFd, from: &str, to: &str) -> io::Result<()> {
    let (f, t) = (cstring(from.as_bytes())?, cstring(to.as_bytes())?);
    // SAFETY: valid C strings and directory fd.
    cvt(unsafe { libc::renameat(dir.as_raw_fd(), f.as_ptr(), dir.as_raw_fd(), t.as_ptr()) })?;
    Ok(())
}

/// Opens `name` in `dir` (CLOEXEC added).
pub fn open_at(
    dir: &OwnedFd,
    name: &str,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    let c = cstring(name.as_bytes())?;
    // SAFETY: valid C string and directory fd.
    let fd = cvt(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    })?;
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn fstat_size(fd: RawFd) -> io::Result<u64> {
    // SAFETY: stat is plain data; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: st is a valid out pointer.
    cvt(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st.st_size as u64)
}
