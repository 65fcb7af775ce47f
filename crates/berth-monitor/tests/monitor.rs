//! The monitor against the real runtime and kernel (as root): a busybox bundle, the berth
//! binary as `berth-runtime`, one container per test with its own runtime root.
//! Skipped (with a message) when not root or when the berth binary is not built.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

fn berth_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BERTH_BIN") {
        return Some(p.into());
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/berth");
    p.exists().then_some(p)
}

/// BERTH_MONITOR_BIN lets the RSS test measure a release build.
fn monitor_bin() -> PathBuf {
    std::env::var_os("BERTH_MONITOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_berth-monitor")))
}

fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: needs root");
        return false;
    }
    if berth_bin().is_none() {
        eprintln!("skipping: build the berth binary first (cargo build -p berth)");
        return false;
    }
    if !Path::new("/bin/busybox").exists() {
        eprintln!("skipping: needs /bin/busybox (busybox-static)");
        return false;
    }
    true
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// One container under test. Drop deletes the container, kills the monitor and removes
/// every directory, whatever happened in the test.
struct Ctr {
    tmp: tempfile::TempDir,
    id: String,
    runtime: PathBuf,
    root: PathBuf,
    bundle: PathBuf,
    state: PathBuf,
    monitor_pid: Option<i32>,
}

impl Drop for Ctr {
    fn drop(&mut self) {
        let _ = Command::new(&self.runtime)
            .arg("--root")
            .arg(&self.root)
            .args(["delete", "--force", &self.id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(pid) = self.monitor_pid {
            // Only if that pid is still our monitor (pids are reused).
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmd).contains(&self.id) {
                // SAFETY: signalling a process we started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if std::env::var_os("KEEP").is_some() {
            eprintln!("kept {}", self.tmp.path().display());
            self.tmp.disable_cleanup(true);
        }
    }
}

fn chmod755(p: &Path) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

impl Ctr {
    /// A busybox bundle running `args`; `edit` may change the rest of config.json.
    fn new(name: &str, args: &[&str], edit: impl FnOnce(&mut Value)) -> Option<Ctr> {
        if !can_run() {
            return None;
        }
        let tmp = tempfile::Builder::new()
            .prefix("berth-mon-")
            .tempdir()
            .unwrap();
        chmod755(tmp.path());
        let id = format!(
            "mon-{}-{}-{name}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let bundle = tmp.path().join("bundle");
        let bin = bundle.join("rootfs/bin");
        std::fs::create_dir_all(&bin).unwrap();
        for d in [&bundle, &bundle.join("rootfs"), &bin] {
            chmod755(d);
        }
        std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
        for tool in [
            "sh", "echo", "sleep", "cat", "tty", "stty", "ls", "printf", "head",
        ] {
            symlink("busybox", bin.join(tool)).unwrap();
        }
        let runtime = tmp.path().join("berth-runtime");
        symlink(berth_bin().unwrap(), &runtime).unwrap();
        let st = Command::new(berth_bin().unwrap())
            .args(["oci", "spec", "--bundle"])
            .arg(&bundle)
            .status()
            .unwrap();
        assert!(st.success(), "berth oci spec failed");
        let cfg_path = bundle.join("config.json");
        let mut cfg: Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
        cfg["process"]["args"] = args.iter().map(|a| Value::from(*a)).collect();
        edit(&mut cfg);
        std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
        let root = tmp.path().join("rt");
        let state = tmp.path().join("state");
        std::fs::create_dir(&state).unwrap();
        Some(Ctr {
            tmp,
            id,
            runtime,
            root,
            bundle,
            state,
            monitor_pid: None,
        })
    }

    fn argv(&self, extra: &[&str]) -> Command {
        let mut c = Command::new(monitor_bin());
        c.arg("--id")
            .arg(&self.id)
            .arg("--runtime")
            .arg(&self.runtime)
            .arg("--runtime-root")
            .arg(&self.root)
            .arg("--bundle")
            .arg(&self.bundle)
            .arg("--dir")
            .arg(&self.state)
            .args(extra);
        c
    }

    /// Starts the monitor (relay mode: the sync line comes on stdout). Ok(init pid) or
    /// Err(the sync line).
    fn monitor(&mut self, extra: &[&str]) -> Result<i32, Value> {
        let out = self.argv(extra).stdin(Stdio::null()).output().unwrap();
        let line: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("sync line {:?}: {e}", String::from_utf8_lossy(&out.stdout))
        });
        if let Some(pid) = line["monitor_pid"].as_i64() {
            self.monitor_pid = Some(pid as i32);
        }
        match line["pid"].as_i64() {
            Some(pid) => {
                assert!(out.status.success());
                Ok(pid as i32)
            }
            None => {
                assert_eq!(out.status.code(), Some(1));
                Err(line)
            }
        }
    }

    fn runtime(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.runtime)
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .output()
            .unwrap()
    }

    fn start(&self) {
        let o = self.runtime(&["start", &self.id]);
        assert!(
            o.status.success(),
            "start: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    fn wait_exit(&self) -> Value {
        let p = self.state.join("exit.json");
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if let Ok(b) = std::fs::read(&p) {
                return serde_json::from_slice(&b).unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "no exit.json; monitor.log: {}",
            std::fs::read_to_string(self.state.join("monitor.log")).unwrap_or_default()
        );
    }

    fn entries(&self, file: &str) -> Vec<Value> {
        std::fs::read_to_string(self.state.join(file))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect()
    }

    fn monitor_alive(&self) -> bool {
        let pid = self.monitor_pid.expect("monitor pid");
        Path::new(&format!("/proc/{pid}")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z ")
    }

    fn wait_monitor_gone(&self) {
        let t0 = Instant::now();
        while self.monitor_alive() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "monitor still running"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Connects through /proc/self/fd so long state paths work (sun_path is 108 bytes).
    fn attach(&self) -> UnixStream {
        let dir = std::fs::File::open(&self.state).unwrap();
        let s = UnixStream::connect(format!("/proc/self/fd/{}/attach", dir.as_raw_fd())).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    }
}

fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![kind];
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// Reads frames until the exit frame: (stdout bytes, stderr bytes, exit code).
fn read_until_exit(s: &mut UnixStream) -> (Vec<u8>, Vec<u8>, i32) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    loop {
        let mut h = [0u8; 5];
        s.read_exact(&mut h)
            .expect("attach stream ended before the exit frame");
        let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
        let mut p = vec![0u8; len];
        s.read_exact(&mut p).unwrap();
        match h[0] {
            1 => out.extend_from_slice(&p),
            2 => err.extend_from_slice(&p),
            3 => {
                assert_eq!(len, 4);
                let code = i32::from_be_bytes([p[0], p[1], p[2], p[3]]);
                // The exit frame is the last one.
                assert_eq!(s.read(&mut [0u8; 1]).unwrap(), 0);
                return (out, err, code);
            }
            k => panic!("unexpected frame kind {k}"),
        }
    }
}

#[test]
fn logs_both_streams_with_timestamps_and_records_exit_code() {
    let Some(mut c) = Ctr::new(
        "logs",
        &[
            "sh",
            "-c",
            "echo out1; echo err1 >&2; echo 'q\"\\'; printf partial; exit 3",
        ],
        |_| {},
    ) else {
        return;
    };
    let pid = c.monitor(&[]).unwrap();
    assert!(pid > 1);
    assert_eq!(
        std::fs::read_to_string(c.state.join("pid")).unwrap().trim(),
        pid.to_string()
    );
    c.start();
    let x = c.wait_exit();
    assert_eq!(x["exit_code"], 3);
    assert_eq!(x["signal"], Value::Null);
    assert_eq!(x["oom_killed"], false);
    assert!(x["exited_at"].as_str().unwrap().ends_with('Z'));
    let e = c.entries("ctr.log");
    let mut stdout: Vec<&str> = Vec::new();
    let mut stderr: Vec<&str> = Vec::new();
    for v in &e {
        let t = v["time"].as_str().unwrap();
        assert_eq!(t.len(), "2026-11-29T05:00:00.123456789Z".len(), "{t}");
        match v["stream"].as_str().unwrap() {
            "stdout" => stdout.push(v["log"].as_str().unwrap()),
            "stderr" => stderr.push(v["log"].as_str().unwrap()),
            s => panic!("stream {s}"),
        }
    }
    assert_eq!(stdout, ["out1\n", "q\"\\\n", "partial"]);
    assert_eq!(stderr, ["err1\n"]);
    c.wait_monitor_gone();
    assert!(
        !c.state.join("attach").exists(),
        "attach socket left behind"
    );
}

#[test]
fn killed_container_records_128_plus_signal() {
    let Some(mut c) = Ctr::new("kill9", &["sleep", "100"], |_| {}) else {
        return;
    };
    let pid = c.monitor(&[]).unwrap();
    c.start();
    // SAFETY: killing the container's init, which this test created.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let x = c.wait_exit();
    assert_eq!(x["exit_code"], 137);
    assert_eq!(x["signal"], 9);
}

#[test]
fn attach_clients_get_output_and_the_exit_frame() {
    let Some(mut c) = Ctr::new(
        "attach",
        &["sh", "-c", "echo hello; echo oops >&2; echo bye; exit 7"],
        |_| {},
    ) else {
        return;
    };
    c.monitor(&[]).unwrap();
    let mut a = c.attach();
    let mut b = c.attach();
    c.start();
    let (out, err, code) = read_until_exit(&mut a);
    assert_eq!(String::from_utf8(out).unwrap(), "hello\nbye\n");
    assert_eq!(String::from_utf8(err).unwrap(), "oops\n");
    assert_eq!(code, 7);
    let (out, _, code) = read_until_exit(&mut b);
    assert_eq!(String::from_utf8(out).unwrap(), "hello\nbye\n");
    assert_eq!(code, 7);
    assert_eq!(c.wait_exit()["exit_code"], 7);
}

#[test]
fn stdin_is_forwarded_and_closed() {
    let Some(mut c) = Ctr::new("stdin", &["cat"], |_| {}) else {
        return;
    };
    c.monitor(&["--stdin"]).unwrap();
    let mut a = c.attach();
    c.start();
    a.write_all(&frame(0, b"hello ")).unwrap();
    a.write_all(&frame(0, b"world\n")).unwrap();
    // More than a pipe buffer: the monitor must hold client input back (frames are at
    // most 64 KiB).
    let big = vec![b'x'; 200_000];
    for chunk in big.chunks(50_000) {
        a.write_all(&frame(0, chunk)).unwrap();
    }
    a.write_all(&frame(0, b"\n")).unwrap();
    a.write_all(&frame(4, b"")).unwrap();
    let (out, _, code) = read_until_exit(&mut a);
    assert_eq!(code, 0, "cat ends at EOF");
    assert_eq!(&out[..12], b"hello world\n");
    assert_eq!(out.len(), 12 + 200_001);
    let logged: String = c
        .entries("ctr.log")
        .iter()
        .map(|v| v["log"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(logged.as_bytes(), &out[..]);
}

#[test]
fn terminal_mode_uses_a_pty_and_resizes_it() {
    let Some(mut c) = Ctr::new(
        "tty",
        &["sh", "-c", "tty; read line; stty size; echo got:$line"],
        |cfg| cfg["process"]["terminal"] = true.into(),
    ) else {
        return;
    };
    // A state dir longer than sun_path: the monitor binds via /proc/self/fd and hands
    // the runtime a relative console socket path.
    let long = c.state.join("x".repeat(60)).join("y".repeat(60));
    std::fs::create_dir_all(&long).unwrap();
    c.state = long;
    c.monitor(&["--terminal", "--stdin"]).unwrap();
    let mut a = c.attach();
    a.write_all(&frame(5, &[0, 33, 0, 77])).unwrap();
    c.start();
    a.write_all(&frame(0, b"typed\n")).unwrap();
    let (out, err, code) = read_until_exit(&mut a);
    let out = String::from_utf8_lossy(&out);
    assert!(err.is_empty(), "a terminal has one stream");
    assert!(out.contains("/dev/pts/0\r\n"), "{out:?}");
    assert!(out.contains("33 77\r\n"), "{out:?}");
    assert!(out.contains("got:typed"), "{out:?}");
    assert_eq!(code, 0);
    let logged: Vec<Value> = c.entries("ctr.log");
    assert!(logged.iter().all(|v| v["stream"] == "stdout"));
    assert!(
        logged.iter().any(|v| v["log"] == "/dev/pts/0\r\n"),
        "{logged:?}"
    );
}

#[test]
fn log_rotates_at_max_size() {
    let script = "i=0; while [ $i -lt 300 ]; do echo line-$i; i=$((i+1)); done";
    let Some(mut c) = Ctr::new("rotate", &["sh", "-c", script], |_| {}) else {
        return;
    };
    c.monitor(&["--log-max-size", "2000"]).unwrap();
    c.start();
    assert_eq!(c.wait_exit()["exit_code"], 0);
    for f in ["ctr.log", "ctr.log.1"] {
        let n = std::fs::metadata(c.state.join(f)).unwrap().len();
        assert!(n > 0 && n <= 2000, "{f} is {n} bytes");
    }
    assert!(!c.state.join("ctr.log.2").exists());
    let lines: Vec<String> = c
        .entries("ctr.log.1")
        .into_iter()
        .chain(c.entries("ctr.log"))
        .map(|v| v["log"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(lines.last().unwrap(), "line-299\n");
    let first: usize = lines[0].trim()["line-".len()..].parse().unwrap();
    for (k, l) in lines.iter().enumerate() {
        assert_eq!(l, &format!("line-{}\n", first + k), "lines are contiguous");
    }
}

#[test]
fn monitor_survives_sigterm_and_sigint() {
    let Some(mut c) = Ctr::new("sigterm", &["sleep", "100"], |_| {}) else {
        return;
    };
    let pid = c.monitor(&[]).unwrap();
    c.start();
    let mp = c.monitor_pid.unwrap();
    for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: signalling the monitor this test started.
        unsafe { libc::kill(mp, s) };
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(c.monitor_alive(), "monitor died of a signal");
    // The container is not affected either, and the exit is still recorded.
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    let o = c.runtime(&["kill", &c.id, "KILL"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(c.wait_exit()["exit_code"], 137);
}

#[test]
fn exit_command_runs_after_exit_json() {
    let Some(mut c) = Ctr::new("exitcmd", &["sh", "-c", "exit 5"], |_| {}) else {
        return;
    };
    let marker = c.tmp.path().join("marker");
    let script = format!(
        "cat {}/exit.json > {}.tmp && echo \"$0 $1\" >> {}.tmp && mv {}.tmp {}",
        c.state.display(),
        marker.display(),
        marker.display(),
        marker.display(),
        marker.display()
    );
    c.monitor(&[
        "--exit-command",
        "/bin/sh",
        "-c",
        &script,
        "cleanup",
        &c.id.clone(),
    ])
    .unwrap();
    c.start();
    let t0 = Instant::now();
    while !marker.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "exit command did not run"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = std::fs::read_to_string(&marker).unwrap();
    assert!(text.contains("\"exit_code\":5"), "{text}");
    assert!(text.ends_with(&format!("cleanup {}\n", c.id)), "{text}");
}

#[test]
fn create_failure_reports_the_runtime_error_and_cleans_up() {
    let Some(mut c) = Ctr::new("fail", &["/no/such/program"], |_| {}) else {
        return;
    };
    let line = c.monitor(&[]).unwrap_err();
    let msg = line["error"].as_str().unwrap();
    assert!(msg.contains("/no/such/program"), "{msg}");
    c.wait_monitor_gone_if_any();
    let o = c.runtime(&["state", &c.id]);
    assert!(!o.status.success(), "the runtime still knows the container");
    assert!(!c.state.join("exit.json").exists());
}

impl Ctr {
    fn wait_monitor_gone_if_any(&self) {
        if self.monitor_pid.is_some() {
            self.wait_monitor_gone();
        }
    }
}

#[test]
fn sync_fd_mode_reports_on_the_given_fd() {
    let Some(mut c) = Ctr::new("syncfd", &["sh", "-c", "echo hi"], |_| {}) else {
        return;
    };
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let (r, w) = (fds[0], fds[1]);
    let mut cmd = c.argv(&["--sync-fd", "3"]);
    cmd.stdin(Stdio::null()).stdout(Stdio::null());
    // SAFETY: only dup2 between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(w, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let status = cmd.status().unwrap();
    assert!(status.success(), "the first process exits at once");
    // SAFETY: closing our copy of the write end; r becomes a File.
    unsafe { libc::close(w) };
    let mut f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(r) };
    let mut text = String::new();
    f.read_to_string(&mut text).unwrap();
    let v: Value = serde_json::from_str(text.trim()).unwrap();
    assert!(v["pid"].as_i64().unwrap() > 1, "{text}");
    c.monitor_pid = Some(v["monitor_pid"].as_i64().unwrap() as i32);
    c.start();
    assert_eq!(c.wait_exit()["exit_code"], 0);
    assert_eq!(c.entries("ctr.log")[0]["log"], "hi\n");
}

#[test]
fn no_monitor_fds_leak_into_the_container() {
    let Some(mut c) = Ctr::new("fds", &["sh", "-c", "ls /proc/$$/fd; exit 0"], |_| {}) else {
        return;
    };
    c.monitor(&["--stdin"]).unwrap();
    c.start();
    c.wait_exit();
    let fds: Vec<String> = c
        .entries("ctr.log")
        .iter()
        .map(|v| v["log"].as_str().unwrap().trim().to_string())
        .collect();
    assert_eq!(fds, ["0", "1", "2"]);
}

#[test]
fn oom_kill_is_detected_from_the_cgroup() {
    let cg = format!(
        "/berth-montest-{}-{}",
        std::process::id(),
        SEQ.load(Ordering::Relaxed)
    );
    let oom_file = format!("/sys/fs/cgroup/memory{cg}/memory.oom_control");
    if !Path::new("/sys/fs/cgroup/memory/memory.oom_control").exists() {
        eprintln!("skipping: no cgroup v1 memory controller");
        return;
    }
    let Some(mut c) = Ctr::new(
        "oom",
        &["sh", "-c", "x=aaaaaaaaaaaaaaaa; while :; do x=$x$x; done"],
        |cfg| {
            cfg["linux"]["cgroupsPath"] = cg.clone().into();
            cfg["linux"]["resources"] = serde_json::json!({"memory": {"limit": 16 << 20}});
        },
    ) else {
        return;
    };
    c.monitor(&["--oom-file", &oom_file]).unwrap();
    c.start();
    let x = c.wait_exit();
    assert_eq!(x["oom_killed"], true, "{x}");
    assert_eq!(x["exit_code"], 137);
}

#[test]
fn resident_memory_of_a_monitor() {
    let Some(mut c) = Ctr::new("rss", &["sleep", "100"], |_| {}) else {
        return;
    };
    c.monitor(&["--stdin"]).unwrap();
    let _a = c.attach();
    c.start();
    std::thread::sleep(Duration::from_millis(300));
    let mp = c.monitor_pid.unwrap();
    let status = std::fs::read_to_string(format!("/proc/{mp}/status")).unwrap();
    let rollup = std::fs::read_to_string(format!("/proc/{mp}/smaps_rollup")).unwrap_or_default();
    let pick = |text: &str, key: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    let (rss, anon, file) = (
        pick(&status, "VmRSS:"),
        pick(&status, "RssAnon:"),
        pick(&status, "RssFile:"),
    );
    eprintln!(
        "berth-monitor {}: VmRSS {rss} kB (RssAnon {anon} kB, RssFile {file} kB), Pss {} kB",
        monitor_bin().display(),
        pick(&rollup, "Pss:")
    );
    assert!(rss > 0 && anon + file <= rss + 4);
}
