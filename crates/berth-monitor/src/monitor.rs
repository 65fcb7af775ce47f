//! The monitor proper, after daemonizing: create the container through the runtime, report
//! readiness, then one poll loop until the container's init has exited and been recorded.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::args::Args;
use crate::attach::{self, Client, Request};
use crate::log::{Logger, Stream};
use crate::{diag, fmt, sys};

/// How long `runtime create` may take before it is killed.
const CREATE_TIMEOUT_MS: i64 = 60_000;
/// After the init exits, how long to wait for the output pipes to reach EOF (processes
/// outside a private pid namespace may keep them open forever).
const DRAIN_MS: i64 = 2_000;
/// How long attached clients get to take the rest of the output and the exit frame.
const FINAL_FLUSH_MS: i64 = 5_000;
/// Runtime stderr kept during create, to report its error.
const CREATE_ERR_MAX: usize = 16 * 1024;
/// Bytes read from an output fd per poll wake-up (on the stack).
const READ_CHUNK: usize = 16 * 1024;

pub const PID_FILE: &str = "pid";
pub const EXIT_FILE: &str = "exit.json";
pub const ATTACH_SOCKET: &str = "attach";
pub const CONSOLE_SOCKET: &str = "console.sock";

/// A container output fd: a pipe (stdout/stderr) or the pty master (reported as stdout).
struct Output {
    fd: OwnedFd,
    stream: Stream,
}

/// What `create` leaves for the loop.
struct Created {
    init_pid: i32,
    outputs: Vec<Output>,
    stdin: Option<OwnedFd>,
    master: Option<OwnedFd>,
}

/// Runs the monitor in the daemonized child; returns the process exit code.
pub fn run(args: Args, dir: OwnedFd, sync: OwnedFd) -> i32 {
    let sigfd = match sys::setup_signals() {
        Ok(fd) => fd,
        Err(e) => return fail(&sync, &format!("setting up signals: {e}")),
    };
    let logger = match sys::dup(dir.as_raw_fd()).and_then(|d| Logger::open(d, args.log_max_size)) {
        Ok(l) => l,
        Err(e) => {
            return fail(
                &sync,
                &format!("opening {}/ctr.log: {e}", args.dir.display()),
            )
        }
    };
    let listener = match sys::listen_unix(&dir, ATTACH_SOCKET) {
        Ok(l) => l,
        Err(e) => {
            return fail(
                &sync,
                &format!("listening on {}/{ATTACH_SOCKET}: {e}", args.dir.display()),
            )
        }
    };
    let mut m = Monitor {
        logger,
        listener: Some(listener),
        outputs: Vec::new(),
        stdin: None,
        stdin_buf: Vec::new(),
        stdin_close: false,
        master: None,
        clients: Vec::new(),
        init_pid: 0,
        exit: None,
        args,
        dir,
        sigfd,
        log_failing: false,
    };
    let created = match m.create() {
        Ok(c) => c,
        Err(msg) => {
            sys::unlink_at(&m.dir, ATTACH_SOCKET);
            return fail(&sync, &msg);
        }
    };
    let oom_before = m.args.oom_file.as_deref().and_then(oom_kills);
    m.init_pid = created.init_pid;
    m.outputs = created.outputs;
    m.stdin = created.stdin;
    m.master = created.master;

    let mut line = Vec::with_capacity(64);
    line.extend_from_slice(b"{\"pid\":");
    fmt::int(&mut line, i64::from(m.init_pid));
    line.extend_from_slice(b",\"monitor_pid\":");
    fmt::int(&mut line, i64::from(std::process::id()));
    line.extend_from_slice(b"}\n");
    if let Err(e) = sys::write_all(sync.as_raw_fd(), &line) {
        diag(&format!("writing the sync line: {e}"));
    }
    drop(sync);

    if let Err(e) = m.serve() {
        // The container lives on, but nobody records its exit: make that loud.
        diag(&format!("monitor loop failed: {e}"));
        return 1;
    }
    m.finish(oom_before);
    0
}

/// Reports a failure before readiness to the engine (and monitor.log).
fn fail(sync: &OwnedFd, msg: &str) -> i32 {
    diag(msg);
    let mut line = Vec::with_capacity(msg.len() + 16);
    line.extend_from_slice(b"{\"error\":");
    fmt::json_str(&mut line, msg.as_bytes());
    line.extend_from_slice(b"}\n");
    let _ = sys::write_all(sync.as_raw_fd(), &line);
    1
}

struct Exit {
    status: libc::c_int,
    at: (i64, u32),
    drain_until: i64,
}

struct Monitor {
    args: Args,
    dir: OwnedFd,
    sigfd: OwnedFd,
    logger: Logger,
    listener: Option<OwnedFd>,
    outputs: Vec<Output>,
    /// Write end of the container's stdin (pipe, or a dup of the pty master).
    stdin: Option<OwnedFd>,
    stdin_buf: Vec<u8>,
    /// A client asked to close stdin: close once `stdin_buf` is written.
    stdin_close: bool,
    master: Option<OwnedFd>,
    clients: Vec<Client>,
    init_pid: i32,
    exit: Option<Exit>,
    /// Log writes are failing (reported once, until they work again).
    log_failing: bool,
}

#[derive(Clone, Copy)]
enum Slot {
    Signal,
    Listener,
    Output(usize),
    Stdin,
    Client(usize),
}

impl Monitor {
    fn runtime_argv(&self, verb: &str) -> Result<Vec<CString>, String> {
        let a = &self.args;
        let mk = |b: &[u8]| sys::cstring(b).map_err(|e| format!("runtime argument: {e}"));
        Ok(vec![
            mk(a.runtime.as_os_str().as_bytes())?,
            mk(b"--root")?,
            mk(a.runtime_root.as_os_str().as_bytes())?,
            mk(verb.as_bytes())?,
        ])
    }

    /// `runtime delete --force ID`, after a failed create; output goes to monitor.log.
    fn cleanup_container(&self) {
        let Ok(mut argv) = self.runtime_argv("delete") else {
            return;
        };
        argv.push(c"--force".to_owned());
        let Ok(id) = sys::cstring(self.args.id.as_bytes()) else {
            return;
        };
        argv.push(id);
        let null = match sys::dev_null() {
            Ok(n) => n,
            Err(_) => return,
        };
        match sys::spawn(&argv, [null.as_raw_fd(), 2, 2], None) {
            Ok(pid) => {
                let _ = sys::wait_blocking(pid);
            }
            Err(e) => diag(&format!(
                "running {} delete: {e}",
                self.args.runtime.display()
            )),
        }
    }

    /// Runs `runtime create` with the container's stdio and waits for it, collecting its
    /// error output and (with a terminal) the pty master. Err carries the message for
    /// the engine.
    fn create(&mut self) -> Result<Created, String> {
        for stale in [PID_FILE, EXIT_FILE, "exit.json.tmp", CONSOLE_SOCKET] {
            sys::unlink_at(&self.dir, stale);
        }
        let a = self.args.clone();
        let d = a.dir.display();
        let null = sys::dev_null().map_err(ctx("opening /dev/null"))?;

        let mut argv = self.runtime_argv("create")?;
        let mk = |b: &[u8]| sys::cstring(b).map_err(|e| format!("runtime argument: {e}"));
        argv.push(mk(b"--bundle")?);
        argv.push(mk(a.bundle.as_os_str().as_bytes())?);
        argv.push(mk(b"--pid-file")?);
        argv.push(mk(a.dir.join(PID_FILE).as_os_str().as_bytes())?);

        // Fds that only the runtime (and through it the container) keeps.
        let runtime_side: Vec<OwnedFd>;
        let stdio: [RawFd; 3];
        let mut cwd = None;
        let mut console_listener = None;
        let (err_r, mut out_r, mut stdin_w) = if a.terminal {
            let l = sys::listen_unix(&self.dir, CONSOLE_SOCKET)
                .map_err(ctx(&format!("listening on {d}/{CONSOLE_SOCKET}")))?;
            console_listener = Some(l);
            let abs = a.dir.join(CONSOLE_SOCKET);
            argv.push(mk(b"--console-socket")?);
            // sun_path holds 107 bytes; beyond that the runtime connects relative to
            // its working directory, which we set to the state dir.
            if abs.as_os_str().len() < 100 {
                argv.push(mk(abs.as_os_str().as_bytes())?);
            } else {
                argv.push(mk(CONSOLE_SOCKET.as_bytes())?);
                cwd = Some(sys::cpath(&a.dir).map_err(ctx("state dir"))?);
            }
            let (r, w) = sys::pipe().map_err(ctx("creating a pipe"))?;
            stdio = [null.as_raw_fd(), w.as_raw_fd(), w.as_raw_fd()];
            runtime_side = vec![w];
            (r, None, None)
        } else {
            let (or, ow) = sys::pipe().map_err(ctx("creating the stdout pipe"))?;
            let (er, ew) = sys::pipe().map_err(ctx("creating the stderr pipe"))?;
            let (ir, iw) = if a.stdin {
                let (r, w) = sys::pipe().map_err(ctx("creating the stdin pipe"))?;
                (Some(r), Some(w))
            } else {
                (None, None)
            };
            let in_fd = ir.as_ref().map_or(null.as_raw_fd(), |r| r.as_raw_fd());
            stdio = [in_fd, ow.as_raw_fd(), ew.as_raw_fd()];
            runtime_side = [Some(ow), Some(ew), ir].into_iter().flatten().collect();
            (er, Some(or), iw)
        };
        argv.push(mk(a.id.as_bytes())?);

        let rt = sys::spawn(&argv, stdio, cwd.as_deref())
            .map_err(ctx(&format!("running {}", a.runtime.display())))?;
        // Only the container may hold the write ends now, so EOF means it is gone.
        drop(runtime_side);
        drop(null);
        for fd in [Some(&err_r), out_r.as_ref()].into_iter().flatten() {
            sys::set_nonblock(fd.as_raw_fd()).map_err(ctx("setting O_NONBLOCK"))?;
        }

        let mut err_r = Some(err_r);
        let mut create_err: Vec<u8> = Vec::new();
        let mut console_conn: Option<OwnedFd> = None;
        let mut master: Option<OwnedFd> = None;
        let deadline = sys::monotonic_ms() + CREATE_TIMEOUT_MS;
        let mut buf = [0u8; 4096];
        let status = loop {
            let mut pfds = vec![sys::pollfd(self.sigfd.as_raw_fd(), libc::POLLIN)];
            let mut tags = vec![0u8];
            if let Some(fd) = &err_r {
                pfds.push(sys::pollfd(fd.as_raw_fd(), libc::POLLIN));
                tags.push(1);
            }
            if let Some(fd) = &out_r {
                pfds.push(sys::pollfd(fd.as_raw_fd(), libc::POLLIN));
                tags.push(2);
            }
            if let (Some(l), None, None) = (&console_listener, &console_conn, &master) {
                pfds.push(sys::pollfd(l.as_raw_fd(), libc::POLLIN));
                tags.push(3);
            }
            if let Some(c) = &console_conn {
                pfds.push(sys::pollfd(c.as_raw_fd(), libc::POLLIN));
                tags.push(4);
            }
            let left = deadline - sys::monotonic_ms();
            if left <= 0 {
                sys::kill(rt, libc::SIGKILL);
                let _ = sys::wait_blocking(rt);
                self.cleanup_container();
                return Err(format!(
                    "{} create {} timed out after {} s",
                    a.runtime.display(),
                    a.id,
                    CREATE_TIMEOUT_MS / 1000
                ));
            }
            sys::poll(&mut pfds, left.min(i64::from(i32::MAX)) as i32).map_err(ctx("polling"))?;
            let mut exited = None;
            // Handle the signal last: the runtime sends the master before it exits.
            for (p, &tag) in pfds.iter().zip(&tags).rev() {
                if p.revents == 0 {
                    continue;
                }
                match tag {
                    0 => {
                        sys::drain_signalfd(p.fd);
                        exited = sys::wait_pid(rt).map(|(_, st)| st);
                    }
                    1 => match sys::read(p.fd, &mut buf) {
                        Ok(0) => err_r = None,
                        Ok(n) => {
                            let keep = (CREATE_ERR_MAX - create_err.len()).min(n);
                            create_err.extend_from_slice(&buf[..keep]);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(_) => err_r = None,
                    },
                    2 => match sys::read(p.fd, &mut buf) {
                        Ok(0) => out_r = None,
                        Ok(n) => self.log(Stream::Stdout, &buf[..n]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(_) => out_r = None,
                    },
                    3 => {
                        if let Some(l) = &console_listener {
                            console_conn = sys::accept(l.as_raw_fd()).ok().flatten();
                        }
                    }
                    _ => match sys::recv_fd(p.fd) {
                        Ok((Some(fd), _)) => {
                            master = Some(fd);
                            console_conn = None;
                        }
                        Ok((None, true)) | Err(_) => console_conn = None,
                        Ok((None, false)) => {}
                    },
                }
            }
            if let Some(st) = exited {
                break st;
            }
        };
        drop(console_listener);
        sys::unlink_at(&self.dir, CONSOLE_SOCKET);
        // Whatever the runtime printed and has not been read yet.
        if let Some(fd) = &err_r {
            while let Ok(n @ 1..) = sys::read(fd.as_raw_fd(), &mut buf) {
                let keep = (CREATE_ERR_MAX - create_err.len()).min(n);
                create_err.extend_from_slice(&buf[..keep]);
            }
        }

        let abort = |m: &Monitor, msg: String| {
            m.cleanup_container();
            Err(msg)
        };
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            let text = String::from_utf8_lossy(&create_err).trim().to_string();
            let msg = if text.is_empty() {
                format!(
                    "{} create {} failed ({})",
                    a.runtime.display(),
                    a.id,
                    describe(status)
                )
            } else {
                text
            };
            return abort(self, msg);
        }
        let pid_path = a.dir.join(PID_FILE);
        let init_pid = match std::fs::read_to_string(&pid_path) {
            Ok(s) => match s.trim().parse::<i32>() {
                Ok(p) if p > 0 => p,
                _ => return abort(self, format!("{}: not a pid: {:?}", pid_path.display(), s)),
            },
            Err(e) => return abort(self, format!("reading {}: {e}", pid_path.display())),
        };
        // The init is reparented to us (child subreaper) when the runtime's stage-1
        // exits; if not, we could never learn its exit status.
        if !sys::is_child(init_pid) {
            return abort(
                self,
                format!("container init {init_pid} is not a child of the monitor"),
            );
        }

        let mut outputs = Vec::new();
        let mut stdin = None;
        if a.terminal {
            let Some(m) = master.take() else {
                return abort(
                    self,
                    "the runtime sent no pty master to the console socket".into(),
                );
            };
            if !create_err.is_empty() {
                diag(&format!(
                    "runtime: {}",
                    String::from_utf8_lossy(&create_err).trim()
                ));
            }
            let dup = |fd: &OwnedFd| sys::dup(fd.as_raw_fd());
            let out = dup(&m).map_err(ctx("duplicating the pty master"))?;
            sys::set_nonblock(m.as_raw_fd()).map_err(ctx("setting O_NONBLOCK"))?;
            outputs.push(Output {
                fd: out,
                stream: Stream::Stdout,
            });
            if a.stdin {
                stdin = Some(dup(&m).map_err(ctx("duplicating the pty master"))?);
            }
            master = Some(m);
        } else {
            // Runtime warnings or hook output written to the container's stderr.
            if !create_err.is_empty() {
                self.log(Stream::Stderr, &create_err);
            }
            if let Some(o) = out_r.take() {
                outputs.push(Output {
                    fd: o,
                    stream: Stream::Stdout,
                });
            }
            if let Some(e) = err_r.take() {
                outputs.push(Output {
                    fd: e,
                    stream: Stream::Stderr,
                });
            }
            if let Some(w) = stdin_w.take() {
                sys::set_nonblock(w.as_raw_fd()).map_err(ctx("setting O_NONBLOCK"))?;
                stdin = Some(w);
            }
        }
        Ok(Created {
            init_pid,
            outputs,
            stdin,
            master,
        })
    }

    fn log(&mut self, stream: Stream, data: &[u8]) {
        let r = self.logger.write(stream, data);
        self.note_log_result(r);
    }

    fn note_log_result(&mut self, r: io::Result<()>) {
        match r {
            Ok(()) if self.log_failing => {
                self.log_failing = false;
                diag("writing the container log works again");
            }
            Err(e) if !self.log_failing => {
                self.log_failing = true;
                diag(&format!("writing {}/ctr.log: {e}", self.args.dir.display()));
            }
            _ => {}
        }
    }

    fn backpressured(&self) -> bool {
        self.clients.iter().any(|c| c.pending() > attach::OUT_HIGH)
    }

    /// The poll loop: until the init has exited and the outputs are drained.
    fn serve(&mut self) -> io::Result<()> {
        let mut pfds: Vec<libc::pollfd> = Vec::with_capacity(8);
        let mut slots: Vec<Slot> = Vec::with_capacity(8);
        let mut buf = [0u8; READ_CHUNK];
        self.reap(); // an exit may have been signalled while we were still creating
        loop {
            let now = sys::monotonic_ms();
            if let Some(x) = &self.exit {
                if self.outputs.is_empty() || now >= x.drain_until {
                    return Ok(());
                }
            }
            pfds.clear();
            slots.clear();
            let mut add = |fd: RawFd, ev: libc::c_short, s: Slot| {
                pfds.push(sys::pollfd(fd, ev));
                slots.push(s);
            };
            add(self.sigfd.as_raw_fd(), libc::POLLIN, Slot::Signal);
            if let Some(l) = &self.listener {
                add(l.as_raw_fd(), libc::POLLIN, Slot::Listener);
            }
            // While draining after the exit, read regardless of slow clients: the pipes
            // hold at most a pipe buffer each, and the log must be complete.
            if self.exit.is_some() || !self.backpressured() {
                for (i, o) in self.outputs.iter().enumerate() {
                    add(o.fd.as_raw_fd(), libc::POLLIN, Slot::Output(i));
                }
            }
            if let Some(s) = &self.stdin {
                if !self.stdin_buf.is_empty() {
                    add(s.as_raw_fd(), libc::POLLOUT, Slot::Stdin);
                }
            }
            let mut timeout = -1i64;
            for (i, c) in self.clients.iter().enumerate() {
                // Stdin backpressure: no new client input until the container took the last.
                let mut ev = 0;
                if self.stdin_buf.is_empty() {
                    ev |= libc::POLLIN;
                }
                if c.pending() > 0 {
                    ev |= libc::POLLOUT;
                }
                add(c.fd(), ev, Slot::Client(i));
                if let Some(since) = c.stalled_since() {
                    let t = (since + attach::STALL_MS - now).max(0);
                    timeout = if timeout < 0 { t } else { timeout.min(t) };
                }
            }
            if let Some(x) = &self.exit {
                let t = (x.drain_until - now).max(0);
                timeout = if timeout < 0 { t } else { timeout.min(t) };
            }
            sys::poll(&mut pfds, timeout.min(i64::from(i32::MAX)) as i32)?;

            let now = sys::monotonic_ms();
            let mut dead_clients: Vec<usize> = Vec::new();
            let mut dead_outputs: Vec<usize> = Vec::new();
            // Accept before reading output: a client that connected before `start` must
            // see the first bytes.
            for (p, &slot) in pfds.iter().zip(&slots) {
                if p.revents != 0 {
                    if let Slot::Listener = slot {
                        self.accept_clients();
                    }
                }
            }
            for (p, &slot) in pfds.iter().zip(&slots) {
                if p.revents == 0 {
                    continue;
                }
                match slot {
                    Slot::Signal => {
                        sys::drain_signalfd(p.fd);
                        self.reap();
                    }
                    Slot::Listener => {}
                    Slot::Output(i) => {
                        let o = &self.outputs[i];
                        match sys::read(o.fd.as_raw_fd(), &mut buf) {
                            Ok(0) => dead_outputs.push(i),
                            Ok(n) => {
                                let stream = o.stream;
                                self.output(stream, &buf[..n], now);
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                            // EIO: the pty's last slave fd closed.
                            Err(_) => dead_outputs.push(i),
                        }
                    }
                    Slot::Stdin => self.write_stdin(),
                    Slot::Client(i) => {
                        if p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
                            && !self.client_input(i)
                        {
                            dead_clients.push(i);
                            continue;
                        }
                        if self.clients[i].flush(now).is_err() {
                            dead_clients.push(i);
                        }
                    }
                }
            }
            for (i, c) in self.clients.iter().enumerate() {
                if matches!(c.stalled_since(), Some(s) if now - s >= attach::STALL_MS) {
                    diag("dropping an attach client that took no output for 30 s");
                    dead_clients.push(i);
                }
            }
            dead_clients.sort_unstable();
            dead_clients.dedup();
            for i in dead_clients.into_iter().rev() {
                self.clients.swap_remove(i);
            }
            for i in dead_outputs.into_iter().rev() {
                let o = self.outputs.swap_remove(i);
                let r = self.logger.flush(o.stream);
                self.note_log_result(r);
            }
        }
    }

    fn accept_clients(&mut self) {
        let Some(l) = &self.listener else { return };
        loop {
            match sys::accept(l.as_raw_fd()) {
                Ok(Some(fd)) => self.clients.push(Client::new(fd)),
                Ok(None) => return,
                Err(e) => {
                    diag(&format!("accepting an attach client: {e}"));
                    return;
                }
            }
        }
    }

    /// Logs container output and passes it to every attached client.
    fn output(&mut self, stream: Stream, data: &[u8], now: i64) {
        self.log(stream, data);
        let kind = match stream {
            Stream::Stdout => attach::STDOUT,
            Stream::Stderr => attach::STDERR,
        };
        for c in &mut self.clients {
            c.queue(kind, data);
            // Errors surface on the next poll (POLLERR/HUP) and drop the client there.
            let _ = c.flush(now);
        }
    }

    /// Reads a client's frames; false when it is gone or broke the protocol.
    fn client_input(&mut self, i: usize) -> bool {
        let mut stdin_data = std::mem::take(&mut self.stdin_buf);
        let mut close = false;
        let mut resize = None;
        let accepting = self.stdin.is_some() && !self.stdin_close;
        let r = self.clients[i].read(&mut |req| match req {
            Request::Stdin(b) if accepting && !close => stdin_data.extend_from_slice(b),
            Request::Stdin(_) => {}
            Request::CloseStdin => close = true,
            Request::Resize { rows, cols } => resize = Some((rows, cols)),
        });
        self.stdin_buf = stdin_data;
        if close {
            self.stdin_close = true;
        }
        if let (Some((rows, cols)), Some(m)) = (resize, &self.master) {
            if let Err(e) = sys::set_winsize(m.as_raw_fd(), rows, cols) {
                diag(&format!("resizing the terminal: {e}"));
            }
        }
        self.write_stdin();
        match r {
            Ok(open) => open,
            Err(e) => {
                if e.kind() == io::ErrorKind::InvalidData {
                    diag(&format!("dropping an attach client: {e}"));
                }
                false
            }
        }
    }

    /// Moves buffered client input to the container's stdin without blocking.
    fn write_stdin(&mut self) {
        let Some(fd) = &self.stdin else {
            self.stdin_buf.clear();
            return;
        };
        let mut done = 0;
        let mut broken = false;
        while done < self.stdin_buf.len() {
            match sys::write(fd.as_raw_fd(), &self.stdin_buf[done..]) {
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // EPIPE: the container closed its stdin; drop what is left.
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        self.stdin_buf.drain(..done);
        if broken {
            self.stdin_buf.clear();
            self.stdin = None;
        }
        if self.stdin_close && self.stdin_buf.is_empty() {
            // Closing our write end gives the container EOF. On a pty this only drops
            // a dup of the master: terminals have no EOF of their own.
            self.stdin = None;
        }
        if self.stdin_buf.capacity() > 4 * attach::IN_MAX && self.stdin_buf.is_empty() {
            self.stdin_buf = Vec::new();
        }
    }

    fn reap(&mut self) {
        while let Some((pid, status)) = sys::wait_any() {
            if pid == self.init_pid && self.exit.is_none() {
                self.exit = Some(Exit {
                    status,
                    at: sys::realtime(),
                    drain_until: sys::monotonic_ms() + DRAIN_MS,
                });
            }
        }
    }

    /// After the exit: complete the log, record exit.json, tell the clients, run the
    /// exit command.
    fn finish(mut self, oom_before: Option<u64>) {
        for o in std::mem::take(&mut self.outputs) {
            let r = self.logger.flush(o.stream);
            self.note_log_result(r);
        }
        let Some(x) = self.exit.take() else { return };
        let (code, signal) = exit_code(x.status);
        let oom_killed = match (
            oom_before,
            self.args.oom_file.as_deref().and_then(oom_kills),
        ) {
            (Some(before), Some(after)) => after > before,
            _ => false,
        };
        let mut j = Vec::with_capacity(128);
        j.extend_from_slice(b"{\"exit_code\":");
        fmt::int(&mut j, i64::from(code));
        j.extend_from_slice(b",\"signal\":");
        match signal {
            Some(s) => fmt::int(&mut j, i64::from(s)),
            None => j.extend_from_slice(b"null"),
        }
        j.extend_from_slice(b",\"exited_at\":\"");
        fmt::rfc3339(&mut j, x.at.0, x.at.1);
        j.extend_from_slice(b"\",\"oom_killed\":");
        j.extend_from_slice(if oom_killed { b"true" } else { b"false" });
        j.extend_from_slice(b"}\n");
        if let Err(e) = self.write_exit_file(&j) {
            diag(&format!(
                "writing {}/{EXIT_FILE}: {e}",
                self.args.dir.display()
            ));
        }

        // The exit frame, also to clients that connect while the others are flushed.
        let code_be = code.to_be_bytes();
        for c in &mut self.clients {
            c.queue(attach::EXIT, &code_be);
        }
        let deadline = sys::monotonic_ms() + FINAL_FLUSH_MS;
        loop {
            let now = sys::monotonic_ms();
            self.clients
                .retain_mut(|c| c.flush(now).is_ok() && c.pending() > 0);
            if self.clients.is_empty() || now >= deadline {
                break;
            }
            let mut pfds: Vec<libc::pollfd> = self
                .clients
                .iter()
                .map(|c| sys::pollfd(c.fd(), libc::POLLOUT))
                .collect();
            if let Some(l) = &self.listener {
                pfds.push(sys::pollfd(l.as_raw_fd(), libc::POLLIN));
            }
            if sys::poll(&mut pfds, (deadline - now) as i32).is_err() {
                break;
            }
            let before = self.clients.len();
            self.accept_clients();
            for c in &mut self.clients[before..] {
                c.queue(attach::EXIT, &code_be);
            }
        }
        self.clients.clear();
        self.listener = None;
        sys::unlink_at(&self.dir, ATTACH_SOCKET);
        self.stdin = None;
        self.master = None;

        if let Some(cmd) = &self.args.exit_command {
            self.run_exit_command(cmd);
        }
    }

    fn write_exit_file(&self, data: &[u8]) -> io::Result<()> {
        let tmp = "exit.json.tmp";
        let f = sys::open_at(
            &self.dir,
            tmp,
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
            0o644,
        )?;
        sys::write_all(f.as_raw_fd(), data)?;
        // SAFETY: fsync on our fd; the record must survive a crash right after.
        sys::cvt(unsafe { libc::fsync(f.as_raw_fd()) })?;
        drop(f);
        sys::rename_at(&self.dir, tmp, EXIT_FILE)
    }

    /// Started, not waited for: it may well remove this container (and so want us gone).
    fn run_exit_command(&self, cmd: &[std::ffi::OsString]) {
        let argv: Result<Vec<CString>, _> =
            cmd.iter().map(|s| sys::cstring(s.as_bytes())).collect();
        let null = sys::dev_null();
        match (argv, null) {
            (Ok(argv), Ok(null)) => {
                if let Err(e) = sys::spawn(&argv, [null.as_raw_fd(), null.as_raw_fd(), 2], None) {
                    diag(&format!("running exit command {:?}: {e}", cmd[0]));
                }
            }
            (Err(e), _) | (_, Err(e)) => diag(&format!("running exit command: {e}")),
        }
    }
}

/// Error context for map_err: "what: error".
fn ctx(what: &str) -> impl FnOnce(io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Docker's convention: the exit status, or 128 + signal for a killed process.
fn exit_code(status: libc::c_int) -> (i32, Option<i32>) {
    if libc::WIFSIGNALED(status) {
        let s = libc::WTERMSIG(status);
        (128 + s, Some(s))
    } else {
        (libc::WEXITSTATUS(status), None)
    }
}

fn describe(status: libc::c_int) -> String {
    match exit_code(status) {
        (_, Some(s)) => format!("killed by signal {s}"),
        (c, None) => format!("exit status {c}"),
    }
}

/// The `oom_kill N` counter of memory.oom_control (v1) or memory.events (v2).
fn oom_kills(path: &Path) -> Option<u64> {
    parse_oom_kills(&std::fs::read_to_string(path).ok()?)
}

fn parse_oom_kills(text: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some("oom_kill")).then(|| it.next()?.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_counters_v1_and_v2() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        let v2 = "low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(parse_oom_kills(v1), Some(3));
        assert_eq!(parse_oom_kills(v2), Some(2));
        assert_eq!(parse_oom_kills("oom_kill_disable 0\n"), None);
    }

    #[test]
    fn exit_codes_like_docker() {
        // Raw wait statuses: exited with 3; killed by SIGKILL.
        assert_eq!(exit_code(3 << 8), (3, None));
        assert_eq!(exit_code(9), (137, Some(9)));
        assert_eq!(describe(9), "killed by signal 9");
    }
}
