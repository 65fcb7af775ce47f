//! The engine's side of berth-monitor, the per-container process that holds a container's
//! stdio, writes its log and records its exit (conmon's role). The protocol is documented
//! at the top of crates/berth-monitor/src/main.rs; in short:
//!
//! * `spawn` starts the monitor with `--sync-fd 3` and reads one JSON line:
//!   `{"pid":N,"monitor_pid":M}` once the container is created (not started), or
//!   `{"error":"..."}` carrying the runtime's message.
//! * `STATE_DIR/attach` streams `[kind u8][len u32 BE][bytes]` frames: 1 stdout, 2 stderr,
//!   3 exit code (i32 BE, last); the client sends 0 stdin, 4 close stdin, 5 resize
//!   (rows, cols as u16 BE).
//! * `STATE_DIR/ctr.log` (+ `ctr.log.1`): docker json-file lines; `STATE_DIR/exit.json`
//!   appears once the log is complete.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

pub const LOG_FILE: &str = "ctr.log";
pub const LOG_FILE_OLD: &str = "ctr.log.1";
pub const EXIT_FILE: &str = "exit.json";
pub const ATTACH_SOCKET: &str = "attach";
pub const MONITOR_LOG: &str = "monitor.log";
/// Default `--log-max-size`, as docker's json-file driver (10 MiB).
pub const DEFAULT_LOG_MAX_SIZE: u64 = 10 << 20;

/// How often `follow_logs` looks for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// Stdin chunk per frame; the monitor accepts frames up to 64 KiB.
const STDIN_CHUNK: usize = 32 * 1024;

const FRAME_STDIN: u8 = 0;
const FRAME_STDOUT: u8 = 1;
const FRAME_STDERR: u8 = 2;
const FRAME_EXIT: u8 = 3;
const FRAME_CLOSE_STDIN: u8 = 4;
const FRAME_RESIZE: u8 = 5;

#[derive(Debug, Error)]
pub enum MonitorError {
    #[error("starting monitor {binary}: {source}")]
    Spawn { binary: PathBuf, source: io::Error },
    /// The container could not be created; `message` is the runtime's own error.
    #[error("creating container {id}: {message}")]
    Create { id: String, message: String },
    #[error("monitor for {id} exited without reporting (see {log})")]
    NoReport { id: String, log: PathBuf },
    #[error("monitor for {id} sent an unexpected sync line {line:?}")]
    BadSync { id: String, line: String },
    #[error("connecting to {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("attached to {dir}: {source}")]
    Attach { dir: PathBuf, source: io::Error },
    #[error("the monitor in {dir} closed the attach stream without an exit status")]
    AttachEnded { dir: PathBuf },
    /// `Control::detach` was called; the container keeps running.
    #[error("detached from the container")]
    Detached,
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("writing output: {0}")]
    Output(io::Error),
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> MonitorError {
    let path = path.to_path_buf();
    move |source| MonitorError::Io { op, path, source }
}

/// Everything the monitor needs to create and watch one container.
#[derive(Debug, Clone)]
pub struct MonitorSpec {
    pub id: String,
    /// berth-runtime (or any runc-compatible runtime).
    pub runtime: PathBuf,
    pub runtime_root: PathBuf,
    pub bundle: PathBuf,
    /// The monitor's state directory (Paths::userdata): logs, exit.json, attach socket.
    pub dir: PathBuf,
    pub terminal: bool,
    /// Keep the container's stdin open for attach clients.
    pub stdin: bool,
    /// Rotate ctr.log beyond this size; 0 = never.
    pub log_max_size: u64,
    /// The cgroup's memory.oom_control (v1) or memory.events (v2), for `oom_killed`.
    pub oom_file: Option<PathBuf>,
    /// Started by the monitor after the exit is recorded (e.g. cleanup for --rm).
    pub exit_command: Option<Vec<String>>,
    pub monitor_binary: PathBuf,
}

impl MonitorSpec {
    /// The monitor's command line, without `--sync-fd`.
    pub fn args(&self) -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = Vec::new();
        let mut push = |k: &str, v: &std::ffi::OsStr| {
            a.push(k.into());
            a.push(v.to_owned());
        };
        push("--id", self.id.as_ref());
        push("--runtime", self.runtime.as_os_str());
        push("--runtime-root", self.runtime_root.as_os_str());
        push("--bundle", self.bundle.as_os_str());
        push("--dir", self.dir.as_os_str());
        push("--log-max-size", self.log_max_size.to_string().as_ref());
        if let Some(f) = &self.oom_file {
            push("--oom-file", f.as_os_str());
        }
        if self.terminal {
            a.push("--terminal".into());
        }
        if self.stdin {
            a.push("--stdin".into());
        }
        // Must come last: it takes the rest of the command line.
        if let Some(cmd) = &self.exit_command {
            a.push("--exit-command".into());
            a.extend(cmd.iter().map(Into::into));
        }
        a
    }
}

/// The monitor binary installed next to the running executable, else found on PATH.
pub fn locate_binary() -> PathBuf {
    crate::runtime::sibling("berth-monitor")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spawned {
    pub init_pid: i32,
    pub monitor_pid: i32,
}

#[derive(Deserialize)]
struct SyncLine {
    pid: Option<i32>,
    monitor_pid: Option<i32>,
    error: Option<String>,
}

/// Starts a monitor for `spec` and waits until it has created the container (created, not
/// started: attach first, then `runtime start`). The monitor daemonizes; the process
/// started here exits at once and is reaped before returning. (A caller that is itself a
/// child subreaper inherits the daemon and must reap it when it exits.)
pub fn spawn(spec: &MonitorSpec) -> Result<Spawned, MonitorError> {
    let spawn_err = |source| MonitorError::Spawn {
        binary: spec.monitor_binary.clone(),
        source,
    };
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| spawn_err(io::Error::from(e)))?;
    let w_raw = w.as_raw_fd();
    let mut cmd = Command::new(&spec.monitor_binary);
    // Before the spec's arguments: --exit-command, if present, takes the rest.
    cmd.args(["--sync-fd", "3"])
        .args(spec.args())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only async-signal-safe calls (dup2/fcntl) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 clears CLOEXEC on the copy; if the pipe already is fd 3, clear it there.
            let r = if w_raw == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(w_raw, 3)
            };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(spawn_err)?;
    drop(w);
    let line = read_sync_line(r);
    // The first process exits right after forking the daemon.
    let _ = child.wait();
    let line = line.map_err(spawn_err)?;
    if line.trim().is_empty() {
        return Err(MonitorError::NoReport {
            id: spec.id.clone(),
            log: spec.dir.join(MONITOR_LOG),
        });
    }
    let bad = || MonitorError::BadSync {
        id: spec.id.clone(),
        line: line.trim().to_string(),
    };
    let parsed: SyncLine = serde_json::from_str(line.trim()).map_err(|_| bad())?;
    match parsed {
        SyncLine {
            pid: Some(init_pid),
            monitor_pid: Some(monitor_pid),
            ..
        } => Ok(Spawned {
            init_pid,
            monitor_pid,
        }),
        SyncLine {
            error: Some(message),
            ..
        } => Err(MonitorError::Create {
            id: spec.id.clone(),
            message,
        }),
        _ => Err(bad()),
    }
}

/// One line, or "" at EOF (the monitor died before reporting).
fn read_sync_line(r: OwnedFd) -> io::Result<String> {
    let mut line = String::new();
    BufReader::new(File::from(r)).read_line(&mut line)?;
    Ok(line)
}

/// An attach connection to a monitor.
pub struct Attach {
    reader: UnixStream,
    control: Control,
    dir: PathBuf,
}

/// Sends resizes (and detaches) while `Attach::run` is copying; cheap to clone, Send.
#[derive(Clone)]
pub struct Control {
    writer: Arc<Mutex<UnixStream>>,
    detached: Arc<AtomicBool>,
}

impl Control {
    /// The local terminal changed size (call on SIGWINCH, and once before `run`).
    pub fn resize(&self, rows: u16, cols: u16) -> io::Result<()> {
        let mut p = [0u8; 4];
        p[..2].copy_from_slice(&rows.to_be_bytes());
        p[2..].copy_from_slice(&cols.to_be_bytes());
        send(&self.writer, FRAME_RESIZE, &p)
    }

    /// Closes the container's stdin (what `run` does when its stdin reaches EOF).
    pub fn close_stdin(&self) -> io::Result<()> {
        send(&self.writer, FRAME_CLOSE_STDIN, &[])
    }

    /// Ends `run` with `MonitorError::Detached`; the container keeps running.
    pub fn detach(&self) {
        self.detached.store(true, Ordering::SeqCst);
        if let Ok(w) = self.writer.lock() {
            let _ = w.shutdown(std::net::Shutdown::Both);
        }
    }
}

fn send(w: &Mutex<UnixStream>, kind: u8, payload: &[u8]) -> io::Result<()> {
    let mut f = Vec::with_capacity(5 + payload.len());
    f.push(kind);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    let mut s = w
        .lock()
        .map_err(|_| io::Error::other("attach writer poisoned"))?;
    s.write_all(&f)
}

impl Attach {
    /// Connects to `dir/attach`. Connect before `runtime start` to see all output.
    pub fn connect(dir: &Path) -> Result<Attach, MonitorError> {
        let path = dir.join(ATTACH_SOCKET);
        let err = |source| MonitorError::Connect {
            path: path.clone(),
            source,
        };
        // Through /proc/self/fd: sun_path holds only 108 bytes, state paths can be longer.
        let d = File::open(dir).map_err(err)?;
        let reader =
            UnixStream::connect(format!("/proc/self/fd/{}/{ATTACH_SOCKET}", d.as_raw_fd()))
                .map_err(err)?;
        let writer = reader.try_clone().map_err(err)?;
        Ok(Attach {
            reader,
            control: Control {
                writer: Arc::new(Mutex::new(writer)),
                detached: Arc::new(AtomicBool::new(false)),
            },
            dir: dir.to_path_buf(),
        })
    }

    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// Copies output to `stdout`/`stderr` (a terminal's output all arrives as stdout) and,
    /// from a thread, `stdin` to the container, closing the container's stdin at its EOF.
    /// Returns the exit code once the container has exited. The stdin thread is not
    /// joined (it may sit in a blocking read of the terminal); it ends at its next read.
    /// For `run -it` the caller puts the terminal in raw mode and forwards SIGWINCH
    /// through `control().resize`.
    pub fn run(
        self,
        stdin: Option<Box<dyn Read + Send>>,
        mut stdout: impl Write,
        mut stderr: impl Write,
    ) -> Result<i32, MonitorError> {
        let Attach {
            reader,
            control,
            dir,
        } = self;
        if let Some(mut input) = stdin {
            let w = control.writer.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; STDIN_CHUNK];
                loop {
                    match input.read(&mut buf) {
                        Ok(0) => {
                            let _ = send(&w, FRAME_CLOSE_STDIN, &[]);
                            return;
                        }
                        Ok(n) => {
                            if send(&w, FRAME_STDIN, &buf[..n]).is_err() {
                                return;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return,
                    }
                }
            });
        }
        let attach_err = |source| MonitorError::Attach {
            dir: dir.clone(),
            source,
        };
        let mut r = BufReader::with_capacity(64 * 1024, &reader);
        let mut payload = Vec::new();
        let result = loop {
            let mut h = [0u8; 5];
            match r.read_exact(&mut h) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break None,
                Err(_) if control.detached.load(Ordering::SeqCst) => break None,
                Err(e) => return Err(attach_err(e)),
            }
            let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
            payload.resize(len, 0);
            if let Err(e) = r.read_exact(&mut payload) {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    break None;
                }
                return Err(attach_err(e));
            }
            let out: &mut dyn Write = match h[0] {
                FRAME_STDOUT => &mut stdout,
                FRAME_STDERR => &mut stderr,
                FRAME_EXIT if len == 4 => {
                    break Some(i32::from_be_bytes([
                        payload[0], payload[1], payload[2], payload[3],
                    ]))
                }
                k => {
                    return Err(attach_err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("unexpected frame kind {k}"),
                    )))
                }
            };
            out.write_all(&payload)
                .and_then(|()| out.flush())
                .map_err(MonitorError::Output)?;
        };
        // Let a stdin thread blocked in write (or its next one) fail instead of lingering.
        let _ = reader.shutdown(std::net::Shutdown::Both);
        match result {
            Some(code) => Ok(code),
            None if control.detached.load(Ordering::SeqCst) => Err(MonitorError::Detached),
            // The monitor may have finished before we connected fully.
            None => match read_exit(&dir)? {
                Some(x) => Ok(x.exit_code),
                None => Err(MonitorError::AttachEnded { dir }),
            },
        }
    }
}

/// The monitor's record of how the container exited.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ExitInfo {
    /// Docker's: the exit status, or 128 + signal.
    pub exit_code: i32,
    pub signal: Option<i32>,
    /// RFC 3339 with nanoseconds, UTC.
    pub exited_at: String,
    pub oom_killed: bool,
}

/// exit.json, or None while the container has not exited (or never ran).
pub fn read_exit(dir: &Path) -> Result<Option<ExitInfo>, MonitorError> {
    let path = dir.join(EXIT_FILE);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|source| MonitorError::Parse { path, source }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("reading", &path)(e)),
    }
}

/// One line of ctr.log.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LogEntry {
    pub log: String,
    /// "stdout" or "stderr".
    pub stream: String,
    pub time: String,
}

fn write_entry(out: &mut dyn Write, e: &LogEntry, timestamps: bool) -> io::Result<()> {
    if timestamps {
        out.write_all(e.time.as_bytes())?;
        out.write_all(b" ")?;
    }
    out.write_all(e.log.as_bytes())
}

/// Parses complete lines; a torn or foreign line is skipped rather than failing `logs`.
fn parse_lines(buf: &[u8], entries: &mut Vec<LogEntry>) {
    for line in buf.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        if let Ok(e) = serde_json::from_slice(line) {
            entries.push(e);
        }
    }
}

/// All entries of ctr.log.1 then ctr.log.
pub fn read_log_entries(dir: &Path) -> Result<Vec<LogEntry>, MonitorError> {
    let mut entries = Vec::new();
    for name in [LOG_FILE_OLD, LOG_FILE] {
        let path = dir.join(name);
        match std::fs::read(&path) {
            Ok(b) => parse_lines(&b, &mut entries),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("reading", &path)(e)),
        }
    }
    Ok(entries)
}

fn write_tail(
    entries: &[LogEntry],
    tail: Option<usize>,
    timestamps: bool,
    out: &mut dyn Write,
) -> Result<(), MonitorError> {
    let skip = tail.map_or(0, |n| entries.len().saturating_sub(n));
    for e in &entries[skip..] {
        write_entry(out, e, timestamps).map_err(MonitorError::Output)?;
    }
    out.flush().map_err(MonitorError::Output)
}

/// `berth logs`: the last `tail` entries (all if None), optionally prefixed by their time.
pub fn read_logs(
    dir: &Path,
    tail: Option<usize>,
    timestamps: bool,
    out: &mut dyn Write,
) -> Result<(), MonitorError> {
    write_tail(&read_log_entries(dir)?, tail, timestamps, out)
}

/// The open ctr.log being followed.
struct Followed {
    file: File,
    ino: u64,
    /// Bytes after the last newline read (a line still being written).
    partial: Vec<u8>,
}

impl Followed {
    fn open(path: &Path) -> io::Result<Option<Followed>> {
        match File::open(path) {
            Ok(file) => {
                let ino = file.metadata()?.ino();
                Ok(Some(Followed {
                    file,
                    ino,
                    partial: Vec::new(),
                }))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads to EOF; appends the complete lines' entries.
    fn read_new(&mut self, entries: &mut Vec<LogEntry>) -> io::Result<()> {
        let start = self.partial.len();
        self.file.read_to_end(&mut self.partial)?;
        if self.partial.len() == start {
            return Ok(());
        }
        if let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') {
            parse_lines(&self.partial[..end], entries);
            self.partial.drain(..=end);
        }
        Ok(())
    }
}

/// `berth logs -f`: like `read_logs`, then keeps printing new entries, across rotations.
/// With `until_exit` it returns once exit.json exists and the log is drained (the monitor
/// writes exit.json only after the last output); otherwise it runs until `out` fails.
pub fn follow_logs(
    dir: &Path,
    tail: Option<usize>,
    timestamps: bool,
    out: &mut dyn Write,
    until_exit: bool,
) -> Result<(), MonitorError> {
    let log = dir.join(LOG_FILE);
    let old = dir.join(LOG_FILE_OLD);
    let exit = dir.join(EXIT_FILE);
    let ioe = |op| io_err(op, &log);

    // Open the current file first: if it is rotated meanwhile, ctr.log.1 *is* this file,
    // which is then read once, through our fd.
    let mut cur = Followed::open(&log).map_err(ioe("opening"))?;
    let mut entries = Vec::new();
    match File::open(&old) {
        Ok(mut f) => {
            let same = matches!((&cur, f.metadata()), (Some(c), Ok(m)) if m.ino() == c.ino);
            if !same {
                let mut b = Vec::new();
                f.read_to_end(&mut b).map_err(io_err("reading", &old))?;
                parse_lines(&b, &mut entries);
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("opening", &old)(e)),
    }
    if let Some(c) = &mut cur {
        c.read_new(&mut entries).map_err(ioe("reading"))?;
    }
    write_tail(&entries, tail, timestamps, out)?;

    loop {
        // Checked before reading: once it exists, everything is already in the log.
        let exited = until_exit && exit.exists();
        entries.clear();
        if cur.is_none() {
            cur = Followed::open(&log).map_err(ioe("opening"))?;
        }
        let mut rotated = false;
        if let Some(c) = &mut cur {
            c.read_new(&mut entries).map_err(ioe("reading"))?;
            if let Ok(m) = std::fs::metadata(&log) {
                rotated = m.ino() != c.ino;
            }
        }
        if rotated {
            // Finish the renamed file (read to EOF above; again for writes that raced the
            // check), then switch to the new one.
            if let Some(c) = &mut cur {
                c.read_new(&mut entries).map_err(ioe("reading"))?;
            }
            cur = Followed::open(&log).map_err(ioe("opening"))?;
        }
        write_tail(&entries, None, timestamps, out)?;
        if rotated {
            continue;
        }
        if exited {
            return Ok(());
        }
        std::thread::sleep(FOLLOW_POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::os::unix::net::UnixListener;
    use std::sync::mpsc;
    use std::time::Instant;

    fn entry(stream: &str, log: &str, t: u32) -> String {
        format!(
            "{{\"log\":{},\"stream\":\"{stream}\",\"time\":\"2026-11-29T05:00:{t:02}.000000001Z\"}}\n",
            serde_json::to_string(log).unwrap()
        )
    }

    #[test]
    fn read_logs_across_rotation_with_tail_and_timestamps() {
        let t = tempfile::tempdir().unwrap();
        let old = entry("stdout", "one\n", 1) + &entry("stderr", "two\n", 2);
        std::fs::write(t.path().join(LOG_FILE_OLD), old).unwrap();
        let cur = entry("stdout", "three\n", 3) + "not json\n" + &entry("stdout", "four", 4);
        std::fs::write(t.path().join(LOG_FILE), cur).unwrap();

        let mut out = Vec::new();
        read_logs(t.path(), None, false, &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "one\ntwo\nthree\nfour");
        let mut out = Vec::new();
        read_logs(t.path(), Some(2), true, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2026-11-29T05:00:03.000000001Z three\n2026-11-29T05:00:04.000000001Z four"
        );
        let mut out = Vec::new();
        read_logs(t.path(), Some(0), false, &mut out).unwrap();
        assert!(out.is_empty());
        let e = read_log_entries(t.path()).unwrap();
        assert_eq!(e[1].stream, "stderr");
    }

    #[test]
    fn read_exit_missing_and_present() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(read_exit(t.path()).unwrap(), None);
        std::fs::write(
            t.path().join(EXIT_FILE),
            r#"{"exit_code":137,"signal":9,"exited_at":"2026-11-29T05:00:00.1Z","oom_killed":true}"#,
        )
        .unwrap();
        let x = read_exit(t.path()).unwrap().unwrap();
        assert_eq!((x.exit_code, x.signal, x.oom_killed), (137, Some(9), true));
        std::fs::write(t.path().join(EXIT_FILE), "{").unwrap();
        assert!(matches!(
            read_exit(t.path()),
            Err(MonitorError::Parse { .. })
        ));
    }

    #[test]
    fn follow_logs_follows_rotation_and_stops_after_exit() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().to_path_buf();
        std::fs::write(dir.join(LOG_FILE), entry("stdout", "a\n", 0)).unwrap();
        let writer = {
            let dir = dir.clone();
            std::thread::spawn(move || {
                let append = |s: &str| {
                    let mut f = std::fs::OpenOptions::new()
                        .append(true)
                        .create(true)
                        .open(dir.join(LOG_FILE))
                        .unwrap();
                    f.write_all(s.as_bytes()).unwrap();
                };
                std::thread::sleep(Duration::from_millis(150));
                append(&entry("stdout", "b\n", 1));
                // A line written in two pieces.
                let e = entry("stderr", "c\n", 2);
                append(&e[..10]);
                std::thread::sleep(Duration::from_millis(150));
                append(&e[10..]);
                std::fs::rename(dir.join(LOG_FILE), dir.join(LOG_FILE_OLD)).unwrap();
                append(&entry("stdout", "d\n", 3));
                std::thread::sleep(Duration::from_millis(150));
                append(&entry("stdout", "e\n", 4));
                std::fs::write(dir.join(EXIT_FILE), "{}").unwrap();
            })
        };
        let mut out = Vec::new();
        follow_logs(&dir, None, false, &mut out, true).unwrap();
        writer.join().unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "a\nb\nc\nd\ne\n");
        // Again with tail: only the last entry of what exists, then nothing new.
        let mut out = Vec::new();
        follow_logs(&dir, Some(1), false, &mut out, true).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "e\n");
    }

    #[test]
    fn args_put_the_exit_command_last() {
        let spec = MonitorSpec {
            id: "c1".into(),
            runtime: "/rt".into(),
            runtime_root: "/run/rt".into(),
            bundle: "/b".into(),
            dir: "/d".into(),
            terminal: true,
            stdin: true,
            log_max_size: 123,
            oom_file: Some("/sys/oom".into()),
            exit_command: Some(vec!["/bin/berth".into(), "rm".into(), "c1".into()]),
            monitor_binary: "/m".into(),
        };
        let a: Vec<String> = spec
            .args()
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect();
        assert_eq!(
            a.join(" "),
            "--id c1 --runtime /rt --runtime-root /run/rt --bundle /b --dir /d \
             --log-max-size 123 --oom-file /sys/oom --terminal --stdin \
             --exit-command /bin/berth rm c1"
        );
    }

    fn read_frame(s: &mut UnixStream) -> Option<(u8, Vec<u8>)> {
        let mut h = [0u8; 5];
        s.read_exact(&mut h).ok()?;
        let mut p = vec![0u8; u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize];
        s.read_exact(&mut p).ok()?;
        Some((h[0], p))
    }

    fn frame(kind: u8, p: &[u8]) -> Vec<u8> {
        let mut f = vec![kind];
        f.extend_from_slice(&(p.len() as u32).to_be_bytes());
        f.extend_from_slice(p);
        f
    }

    #[test]
    fn attach_against_a_fake_monitor() {
        let t = tempfile::tempdir().unwrap();
        let l = UnixListener::bind(t.path().join(ATTACH_SOCKET)).unwrap();
        let (tx, rx) = mpsc::channel();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut got = Vec::new();
            while let Some((k, p)) = read_frame(&mut s) {
                let close = k == FRAME_CLOSE_STDIN;
                got.push((k, p));
                if close {
                    break;
                }
            }
            s.write_all(&frame(FRAME_STDOUT, b"out\n")).unwrap();
            s.write_all(&frame(FRAME_STDERR, b"err\n")).unwrap();
            s.write_all(&frame(FRAME_EXIT, &42i32.to_be_bytes()))
                .unwrap();
            tx.send(got).unwrap();
        });
        let a = Attach::connect(t.path()).unwrap();
        a.control().resize(24, 80).unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = a
            .run(
                Some(Box::new(Cursor::new(b"abc".to_vec()))),
                &mut out,
                &mut err,
            )
            .unwrap();
        assert_eq!(code, 42);
        assert_eq!((&out[..], &err[..]), (&b"out\n"[..], &b"err\n"[..]));
        server.join().unwrap();
        let got = rx.recv().unwrap();
        assert_eq!(
            got,
            vec![
                (FRAME_RESIZE, vec![0, 24, 0, 80]),
                (FRAME_STDIN, b"abc".to_vec()),
                (FRAME_CLOSE_STDIN, vec![]),
            ]
        );
    }

    #[test]
    fn attach_detach_and_early_close() {
        let t = tempfile::tempdir().unwrap();
        let l = UnixListener::bind(t.path().join(ATTACH_SOCKET)).unwrap();
        let server = std::thread::spawn(move || {
            let (s1, _) = l.accept().unwrap();
            // Second client: closed without an exit frame.
            let (s2, _) = l.accept().unwrap();
            drop(s2);
            std::thread::sleep(Duration::from_millis(500));
            drop(s1);
        });
        let a = Attach::connect(t.path()).unwrap();
        let c = a.control();
        let d = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            c.detach();
        });
        assert!(matches!(
            a.run(None, io::sink(), io::sink()),
            Err(MonitorError::Detached)
        ));
        d.join().unwrap();
        let b = Attach::connect(t.path()).unwrap();
        assert!(matches!(
            b.run(None, io::sink(), io::sink()),
            Err(MonitorError::AttachEnded { .. })
        ));
        // The monitor finished between connect and exit frame: exit.json answers.
        std::fs::write(
            t.path().join(EXIT_FILE),
            r#"{"exit_code":3,"signal":null,"exited_at":"x","oom_killed":false}"#,
        )
        .unwrap();
        server.join().unwrap();
        let l = UnixListener::bind(t.path().join("attach2")).unwrap();
        std::fs::rename(t.path().join("attach2"), t.path().join(ATTACH_SOCKET)).unwrap();
        let s = std::thread::spawn(move || drop(l.accept().unwrap()));
        let c = Attach::connect(t.path()).unwrap();
        assert_eq!(c.run(None, io::sink(), io::sink()).unwrap(), 3);
        s.join().unwrap();
    }

    // ---- against the real monitor, runtime and kernel (root) ----

    struct Real {
        _tmp: tempfile::TempDir,
        spec: MonitorSpec,
        monitor_pid: Option<i32>,
    }

    impl Drop for Real {
        fn drop(&mut self) {
            let _ = Command::new(&self.spec.runtime)
                .arg("--root")
                .arg(&self.spec.runtime_root)
                .args(["delete", "--force", &self.spec.id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if let Some(pid) = self.monitor_pid {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmd).contains(&self.spec.id) {
                    // SAFETY: signalling the monitor this test started.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }

    fn find(env: &str, candidates: &[PathBuf]) -> Option<PathBuf> {
        if let Some(p) = std::env::var_os(env) {
            return Some(p.into());
        }
        candidates.iter().find(|p| p.exists()).cloned()
    }

    /// A busybox container running `args` under a real monitor, or None (skipped).
    fn real(name: &str, args: &[&str], stdin: bool) -> Option<Real> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 || !Path::new("/bin/busybox").exists() {
            eprintln!("skipping: needs root and /bin/busybox");
            return None;
        }
        let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug");
        let Some(berth) = find("BERTH_BIN", &[target.join("berth")]) else {
            eprintln!("skipping: build the berth binary first (cargo build -p berth)");
            return None;
        };
        let Some(monitor) = find(
            "BERTH_MONITOR_BIN",
            &[locate_binary(), target.join("berth-monitor")],
        ) else {
            eprintln!("skipping: build berth-monitor first (cargo build -p berth-monitor)");
            return None;
        };
        let tmp = tempfile::Builder::new()
            .prefix("berth-engmon-")
            .tempdir()
            .unwrap();
        let p755 =
            |p: &Path| std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p755(tmp.path());
        let bundle = tmp.path().join("bundle");
        let bin = bundle.join("rootfs/bin");
        std::fs::create_dir_all(&bin).unwrap();
        for d in [&bundle, &bundle.join("rootfs"), &bin] {
            p755(d);
        }
        std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
        for tool in ["sh", "echo", "cat", "sleep"] {
            symlink("busybox", bin.join(tool)).unwrap();
        }
        let runtime = tmp.path().join("berth-runtime");
        symlink(&berth, &runtime).unwrap();
        let ok = Command::new(&berth)
            .args(["oci", "spec", "--bundle"])
            .arg(&bundle)
            .status()
            .unwrap();
        assert!(ok.success());
        let cfg_path = bundle.join("config.json");
        let mut cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
        cfg["process"]["args"] = args.iter().map(|a| serde_json::Value::from(*a)).collect();
        std::fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
        let spec = MonitorSpec {
            id: format!("engmon-{}-{name}", std::process::id()),
            runtime,
            runtime_root: tmp.path().join("rt"),
            bundle,
            dir: tmp.path().join("userdata"),
            terminal: false,
            stdin,
            log_max_size: DEFAULT_LOG_MAX_SIZE,
            oom_file: None,
            exit_command: None,
            monitor_binary: monitor,
        };
        std::fs::create_dir(&spec.dir).unwrap();
        Some(Real {
            _tmp: tmp,
            spec,
            monitor_pid: None,
        })
    }

    impl Real {
        fn start(&self) {
            let o = Command::new(&self.spec.runtime)
                .arg("--root")
                .arg(&self.spec.runtime_root)
                .args(["start", &self.spec.id])
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
    }

    #[test]
    fn real_monitor_spawn_attach_logs_and_exit() {
        let Some(mut r) = real(
            "run",
            &["sh", "-c", "read x; echo got $x; echo oops >&2; exit 4"],
            true,
        ) else {
            return;
        };
        let s = spawn(&r.spec).unwrap();
        r.monitor_pid = Some(s.monitor_pid);
        assert!(s.init_pid > 1 && s.monitor_pid > 1);
        let a = Attach::connect(&r.spec.dir).unwrap();
        r.start();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let input: Box<dyn Read + Send> = Box::new(Cursor::new(b"hello\n".to_vec()));
        let code = a.run(Some(input), &mut out, &mut err).unwrap();
        assert_eq!(code, 4);
        assert_eq!(String::from_utf8(out).unwrap(), "got hello\n");
        assert_eq!(String::from_utf8(err).unwrap(), "oops\n");

        // exit.json is written before the exit frame is sent.
        let x = read_exit(&r.spec.dir).unwrap().unwrap();
        assert_eq!((x.exit_code, x.signal, x.oom_killed), (4, None, false));
        let mut logs = Vec::new();
        follow_logs(&r.spec.dir, None, false, &mut logs, true).unwrap();
        let logs = String::from_utf8(logs).unwrap();
        assert!(
            logs.contains("got hello\n") && logs.contains("oops\n"),
            "{logs}"
        );
        let mut logs = Vec::new();
        read_logs(&r.spec.dir, Some(1), true, &mut logs).unwrap();
        assert!(String::from_utf8(logs).unwrap().starts_with("20"));
    }

    #[test]
    fn real_monitor_reports_the_runtime_error() {
        let Some(mut r) = real("fail", &["/no/such/program"], false) else {
            return;
        };
        match spawn(&r.spec) {
            Err(MonitorError::Create { message, .. }) => {
                assert!(message.contains("/no/such/program"), "{message}")
            }
            Ok(s) => {
                r.monitor_pid = Some(s.monitor_pid);
                panic!("created a container with a missing program");
            }
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn real_monitor_follow_logs_until_exit() {
        let Some(mut r) = real(
            "follow",
            &[
                "sh",
                "-c",
                "echo one; sleep 0.3; echo two; sleep 0.3; echo three",
            ],
            false,
        ) else {
            return;
        };
        let s = spawn(&r.spec).unwrap();
        r.monitor_pid = Some(s.monitor_pid);
        r.start();
        let t0 = Instant::now();
        let mut out = Vec::new();
        follow_logs(&r.spec.dir, None, false, &mut out, true).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "one\ntwo\nthree\n");
        assert!(t0.elapsed() >= Duration::from_millis(500));
        assert_eq!(read_exit(&r.spec.dir).unwrap().unwrap().exit_code, 0);
    }
}
