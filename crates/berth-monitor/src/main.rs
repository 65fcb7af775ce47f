//! berth-monitor: the per-container monitor (conmon's role). One runs for each container,
//! outlives the CLI that started it, holds the container's stdio, writes its log, serves
//! attach clients and records how the container exited.
//!
//! # Invocation
//!
//! ```text
//! berth-monitor --id ID --runtime PATH --runtime-root DIR --bundle DIR --dir STATE_DIR
//!               [--terminal] [--stdin] [--log-max-size BYTES] [--sync-fd N]
//!               [--oom-file PATH] [--exit-command PATH [ARG...]]
//! ```
//!
//! # Start-up and readiness
//!
//! The process forks; the child calls setsid(), becomes child subreaper and runs
//! `RUNTIME --root DIR create --bundle DIR --pid-file STATE_DIR/pid
//! [--console-socket SOCK] ID`. It then writes exactly one JSON line:
//!
//! * `{"pid":<container init pid>,"monitor_pid":<daemon pid>}` when the container is
//!   created (not started: the engine attaches, then runs `RUNTIME start ID` itself);
//! * `{"error":"<message>"}` when it is not, the message being the runtime's stderr (or
//!   the monitor's own error). The monitor has already run `RUNTIME delete --force ID`.
//!
//! With `--sync-fd N` the line goes to fd N (inherited from the engine) and the process
//! the engine started exits 0 at once, so there is nothing to reap later. Without it the
//! starting process relays the line to its stdout and exits 0 on success, 1 on error.
//!
//! # Container stdio
//!
//! Without `--terminal`: pipes for stdout and stderr, and for stdin with `--stdin`
//! (otherwise /dev/null). With `--terminal`: a console socket `STATE_DIR/console.sock`
//! receives the pty master (SCM_RIGHTS); the runtime's own output goes to a private pipe.
//!
//! # Attach socket `STATE_DIR/attach` (SOCK_STREAM)
//!
//! Every frame, both ways, is `[u8 kind][u32 BE length][payload]`.
//!
//! | kind | direction       | payload                                             |
//! |------|-----------------|-----------------------------------------------------|
//! | 1    | monitor → client| stdout bytes (everything, with a terminal)           |
//! | 2    | monitor → client| stderr bytes                                        |
//! | 3    | monitor → client| i32 BE exit code; last frame, then the socket closes |
//! | 0    | client → monitor| stdin bytes (dropped unless `--stdin`)               |
//! | 4    | client → monitor| length 0: close the container's stdin (pipe only)    |
//! | 5    | client → monitor| u16 BE rows, u16 BE cols: TIOCSWINSZ on the pty      |
//!
//! Clients see output from the moment they connect (connect before `start` to see all of
//! it); the log has everything. Output is not read from the container while any client
//! has more than 64 KiB queued (a client that takes nothing for 30 s is dropped). A
//! client that closes its end is dropped. An unknown or oversized frame drops the client.
//!
//! # Files in STATE_DIR
//!
//! * `ctr.log`, `ctr.log.1`: docker json-file lines
//!   `{"log":"text\n","stream":"stdout","time":"2026-11-29T05:00:00.123456789Z"}`, one per
//!   line of output (a line over 16 KiB is split; an unterminated tail is written when the
//!   pipe closes). Rotated to `ctr.log.1` before a write would exceed `--log-max-size`
//!   (default 10 MiB, 0 = never).
//! * `exit.json`, written atomically once the outputs are drained (so a reader that sees
//!   it has the complete log): `{"exit_code":N,"signal":S|null,"exited_at":"RFC 3339",
//!   "oom_killed":bool}`; exit code is docker's (128 + signal when killed). `oom_killed`
//!   compares the `oom_kill` counter of `--oom-file` (v1 memory.oom_control or v2
//!   memory.events) at exit with its value after create.
//! * `pid` (from the runtime), `monitor.log` (the monitor's own diagnostics and stderr).
//!
//! # Lifetime
//!
//! SIGTERM, SIGINT, SIGHUP and SIGQUIT are ignored: a Ctrl-C'd CLI must not take the
//! monitor along; containers are stopped through the runtime. When the init exits, the
//! outputs are drained to EOF (at most 2 s, since processes outside a private pid
//! namespace may hold them), exit.json is written, clients get the exit frame (5 s to take
//! it), the attach socket is removed, `--exit-command` is started (not waited for) and
//! the monitor exits.
//!
//! Resident size matters (one monitor per container): libc only, no threads, one poll
//! loop, buffers allocated on demand. Measured while its container sleeps: ~0.95-1.15 MB
//! VmRSS dynamically linked (RssAnon ~145 kB; the rest is libc.so and binary text shared
//! with other processes), ~0.77 MB linked statically (RssAnon ~96 kB). The static build
//! needs no workspace-wide flags:
//! `cargo rustc --release -p berth-monitor --bin berth-monitor -- -C target-feature=+crt-static`.

mod args;
mod attach;
mod fmt;
mod log;
mod monitor;
mod sys;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Appends a timestamped line to the monitor's stderr, which is STATE_DIR/monitor.log
/// once daemonized.
pub(crate) fn diag(msg: &str) {
    let (s, ns) = sys::realtime();
    let mut line = Vec::with_capacity(msg.len() + 64);
    fmt::rfc3339(&mut line, s, ns);
    line.extend_from_slice(b" berth-monitor[");
    fmt::int(&mut line, i64::from(std::process::id()));
    line.extend_from_slice(b"]: ");
    line.extend_from_slice(msg.as_bytes());
    line.push(b'\n');
    let _ = sys::write_all(2, &line);
}

fn exit(code: i32) -> ! {
    std::process::exit(code)
}

/// Writes `{"error": msg}` to a sync fd we may not have parsed properly yet.
fn early_error(sync_fd: Option<i32>, msg: &str) -> ! {
    diag(msg);
    if let Some(fd) = sync_fd {
        let mut line = b"{\"error\":".to_vec();
        fmt::json_str(&mut line, msg.as_bytes());
        line.extend_from_slice(b"}\n");
        let _ = sys::write_all(fd, &line);
    }
    exit(1)
}

fn main() {
    let raw: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    // So that even a bad command line is reported to an engine waiting on --sync-fd.
    let raw_sync = raw
        .iter()
        .position(|a| a == "--sync-fd")
        .and_then(|i| raw.get(i + 1)?.to_str()?.parse::<i32>().ok());
    let args = match args::parse(raw) {
        Ok(a) => a,
        Err(e) => {
            diag(&format!("{e}\n{}", args::USAGE));
            early_error(raw_sync, &format!("berth-monitor: {e}"));
        }
    };
    // Inherited fds must not reach the container; the sync fd only needs to live in us.
    sys::cloexec_from(3);

    let dir = match open_state_dir(&args.dir) {
        Ok(d) => d,
        Err(e) => early_error(
            args.sync_fd,
            &format!("opening {}: {e}", args.dir.display()),
        ),
    };
    let mon_log = match sys::open_at(
        &dir,
        "monitor.log",
        libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND,
        0o600,
    ) {
        Ok(f) => f,
        Err(e) => early_error(
            args.sync_fd,
            &format!("opening {}/monitor.log: {e}", args.dir.display()),
        ),
    };
    let null = match sys::dev_null() {
        Ok(n) => n,
        Err(e) => early_error(args.sync_fd, &format!("opening /dev/null: {e}")),
    };

    // The daemon reports on the engine's fd, or on a pipe that this process relays.
    let (sync_w, relay) = match args.sync_fd {
        // SAFETY: the engine handed this fd to us; nothing else in this process owns it.
        Some(fd) => (unsafe { OwnedFd::from_raw_fd(fd) }, None),
        None => match sys::pipe() {
            Ok((r, w)) => (w, Some(r)),
            Err(e) => early_error(None, &format!("creating the sync pipe: {e}")),
        },
    };

    match sys::fork() {
        Err(e) => early_error(args.sync_fd, &format!("forking: {e}")),
        Ok(0) => {}
        Ok(_) => {
            let Some(r) = relay else { exit(0) };
            drop(sync_w);
            let mut line = Vec::new();
            let mut buf = [0u8; 512];
            while let Ok(n @ 1..) = sys::read(r.as_raw_fd(), &mut buf) {
                line.extend_from_slice(&buf[..n]);
            }
            if line.is_empty() {
                line.extend_from_slice(b"{\"error\":\"the monitor exited without reporting\"}\n");
            }
            let _ = sys::write_all(1, &line);
            exit(if line.starts_with(b"{\"pid\"") { 0 } else { 1 })
        }
    }

    // The daemon: own session (no controlling terminal, no job-control signals), and
    // subreaper so the container's init becomes our child when the runtime's stage-1 exits.
    drop(relay);
    // SAFETY: plain syscalls without pointers.
    unsafe {
        libc::setsid();
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        libc::umask(0o022);
    }
    let redirect = sys::dup2(null.as_raw_fd(), 0)
        .and_then(|_| sys::dup2(null.as_raw_fd(), 1))
        .and_then(|_| sys::dup2(mon_log.as_raw_fd(), 2));
    if let Err(e) = redirect {
        early_error(Some(sync_w.as_raw_fd()), &format!("redirecting stdio: {e}"));
    }
    drop((null, mon_log));
    if std::env::set_current_dir("/").is_err() {
        diag("cannot chdir to /");
    }
    exit(monitor::run(args, dir, sync_w))
}

/// Opens STATE_DIR, creating its last component (mode 0700) if needed.
fn open_state_dir(path: &std::path::Path) -> std::io::Result<OwnedFd> {
    if let Err(e) = std::fs::create_dir(path) {
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            return Err(e);
        }
    } else {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    }
    sys::open(path, libc::O_RDONLY | libc::O_DIRECTORY, 0)
}
