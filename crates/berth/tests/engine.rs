//! `berth` as users drive it: images imported from a busybox rootfs, containers run,
//! inspected, logged, exec'd into, stopped and removed, against the real kernel as root.
//! Each test has its own --root and --runroot; the guard removes every container and
//! unmounts anything left under them, even when an assertion fails.

mod common;

use common::*;

// common::Berth, with what these tests add.
impl Berth {
    fn new() -> Option<Berth> {
        if !can_run() {
            return None;
        }
        // These tests are about containers, not networks: no bridge on the host for them
        // (tests/network.rs has its own bridges, subnets and nftables tables).
        Some(Berth::with(
            "berth-engine-test-",
            &[("BERTH_DEFAULT_NETWORK", "none")],
        ))
    }

    /// Imports a busybox rootfs as `busybox:test`.
    fn busybox(&self) {
        let tar = busybox_tar(self.dir.path());
        self.ok(&["import", tar.to_str().unwrap(), "busybox:test"]);
    }

    /// `inspect` of one container: the JSON array berth prints.
    fn inspect(&self, name: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["inspect", name])).unwrap()
    }

    /// What a crash (or a power cut) does to a running container: its monitor and its
    /// init killed with SIGKILL at once. Returns the init's pid and the container's id.
    fn kill_monitor_and_init(&self, name: &str) -> (i32, String) {
        let insp = self.inspect(name);
        let pid = insp[0]["State"]["Pid"].as_i64().unwrap() as i32;
        let id = insp[0]["Id"].as_str().unwrap().to_string();
        let record = self
            .root()
            .join("containers")
            .join(&id)
            .join("container.json");
        let rec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(record).unwrap()).unwrap();
        let monitor = rec["monitor_pid"].as_i64().unwrap() as i32;
        for p in [monitor, pid] {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        (pid, id)
    }

    /// Nothing is mounted under the test's directory any more.
    fn assert_no_mounts(&self) {
        let left = mounts_under(self.dir.path());
        assert!(left.is_empty(), "{left:?}");
    }

    /// After `rm` of container `id`: no mount, no cgroup and no record of it left.
    fn assert_removed(&self, id: &str) {
        self.assert_no_mounts();
        assert!(find_cgroup_dirs(id).is_empty(), "cgroup left behind");
        assert!(!self.root().join("containers").join(id).exists());
    }
}

#[test]
fn run_rm_prints_and_leaves_nothing() {
    let Some(b) = Berth::new() else { return };
    b.busybox();
    let out = b.ok(&[
        "run",
        "--rm",
        "busybox:test",
        "sh",
        "-c",
        "echo hello; echo pid=$$",
    ]);
    assert_eq!(out, "hello\npid=1\n");
    assert_eq!(b.ok(&["ps", "-aq"]), "");
    b.assert_no_mounts();
}

#[test]
fn exit_codes_follow_docker() {
    let Some(b) = Berth::new() else { return };
    b.busybox();
    assert_eq!(
        b.run(&["run", "--rm", "busybox:test", "sh", "-c", "exit 3"])
            .status
            .code(),
        Some(3)
    );
    let o = b.run(&["run", "--rm", "busybox:test", "no-such-command"]);
    assert_eq!(
        o.status.code(),
        Some(127),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = b.run(&["run", "--rm", "busybox:test", "/etc/passwd"]);
    assert_eq!(
        o.status.code(),
        Some(126),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = b.run(&["run", "--rm", "no-such-image-here:1"]);
    assert_eq!(o.status.code(), Some(125));
    assert_eq!(b.ok(&["ps", "-aq"]), "");
}

#[test]
fn user_namespace_by_default_host_only_on_request() {
    let Some(b) = Berth::new() else { return };
    b.busybox();
    let out = b.ok(&["run", "--rm", "busybox:test", "cat", "/proc/self/uid_map"]);
    let f: Vec<u64> = out.split_whitespace().map(|x| x.parse().unwrap()).collect();
    assert_eq!(f[0], 0);
    assert!(
        f[1] >= 100000,
        "container root maps to host {}: {out}",
        f[1]
    );
    assert_eq!(f[2], 65536);
    // Files of the image appear owned by the container's root, without chown on disk.
    let out = b.ok(&[
        "run",
        "--rm",
        "busybox:test",
        "sh",
        "-c",
        "stat -c %u /bin/busybox; touch /newfile && stat -c %u /newfile",
    ]);
    assert_eq!(out, "0\n0\n");
    let o = b.run(&[
        "run",
        "--rm",
        "--userns",
        "host",
        "busybox:test",
        "cat",
        "/proc/self/uid_map",
    ]);
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["0", "0", "4294967295"]
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("WARNING"),
        "no warning for host root"
    );
}

#[test]
fn secure_defaults_in_every_container() {
    let Some(b) = Berth::new() else { return };
    b.busybox();
    let out = b.ok(&["run", "--rm", "busybox:test", "sh", "-c", "grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status; wc -c < /proc/timer_list; echo x > /proc/sys/kernel/hostname 2>/dev/null || echo ro"]);
    assert!(out.contains("CapEff:\t00000000a80425fb"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "{out}");
    assert!(out.contains("\n0\nro\n"), "{out}");
    // The default seccomp profile refuses what docker's refuses.
    let out = b.ok(&[
        "run",
        "--rm",
        "--cap-add",
        "SYS_ADMIN",
        "busybox:test",
        "sh",
        "-c",
        "grep CapEff /proc/self/status",
    ]);
    assert!(out.contains("CapEff:\t00000000a82425fb"), "{out}");
}

#[test]
fn sensitive_mounts_are_refused_unless_forced() {
    let Some(b) = Berth::new() else { return };
    b.busybox();
    for src in [
        "/etc",
        "/etc/passwd",
        "/",
        "/proc",
        "/sys",
        "/dev",
        "/root",
        "/run",
    ] {
        let v = format!("{src}:/mnt");
        let o = b.run(&["run", "--rm", "-v", &v, "busybox:test", "true"]);
        assert_eq!(o.status.code(), Some(125), "{src} was mounted");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("--allow-sensitive-mount"), "{src}: {err}");
    }
    let o = b.run(&[
        "run",
        "--rm",
        "--allow-sensitive-mount",
        "-v",
        "/etc/hostname:/h:ro",
        "busybox:test",
        "cat",
        "/h",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("WARNING"));
    // An ordinary directory is fine, read-only when asked.
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("f"), "data\n").unwrap();
    let v = format!("{}:/data:ro", data.path().display());
    let out = b.ok(&[
        "run",
        "--rm",
        "-v",
        &v,
        "busybox:test",
        "sh",
        "-c",
        "cat /data/f; touch /data/g 2>/dev/null || echo ro",
    ]);
    assert_eq!(out, "data\nro\n");
}

#[test]
fn detached_lifecycle_logs_exec_stop_rm() {
    let Some(b) = Berth::new() else { return };
    b.busybox();
    let id = b.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "busybox:test",
        "sh",
        "-c",
        "echo started; echo oops >&2; trap 'echo bye; exit 0' TERM; while true; do sleep 0.1; done",
    ]);
    let id = id.trim();
    assert_eq!(id.len(), 64);
    let ps = b.ok(&["ps", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(ps.lines().next().unwrap()).unwrap();
    assert_eq!(v["Names"][0], "web");
    assert_eq!(v["State"], "running");
    assert_eq!(
        b.ok(&["exec", "web", "sh", "-c", "echo in-exec $$"])
            .split_whitespace()
            .next(),
        Some("in-exec")
    );
    assert_eq!(
        b.run(&["exec", "web", "sh", "-c", "exit 5"]).status.code(),
        Some(5)
    );
    // Name conflicts are refused.
    let o = b.run(&["run", "-d", "--name", "web", "busybox:test", "true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already in use"));
    // rm of a running container needs -f.
    assert!(!b.run(&["rm", "web"]).status.success());
    b.ok(&["stop", "-t", "5", "web"]);
    let insp = b.inspect("web");
    assert_eq!(insp[0]["State"]["Status"], "exited");
    assert_eq!(insp[0]["State"]["ExitCode"], 0);
    let logs = b.ok(&["logs", "web"]);
    assert_eq!(logs, "started\noops\nbye\n");
    assert_eq!(b.ok(&["logs", "--tail", "1", "web"]), "bye\n");
    let ts = b.ok(&["logs", "--timestamps", "web"]);
    assert!(
        ts.lines().all(|l| l.starts_with("20") && l.contains('T')),
        "{ts}"
    );
    // Restart runs it again.
    b.ok(&["start", "web"]);
    assert!(b.ok(&["inspect", "web"]).contains("\"running\""));
    b.ok(&["rm", "-f", "web"]);
    assert_eq!(b.ok(&["ps", "-aq"]), "");
    b.assert_no_mounts();
}

#[test]
fn oom_kill_shows_as_137() {
    let Some(b) = Berth::new() else { return };
    b.busybox();
    // `tail` buffers a line that never ends: memory grows until the limit.
    let o = b.run(&[
        "run",
        "--name",
        "hog",
        "--memory",
        "32m",
        "--memory-swap",
        "32m",
        "busybox:test",
        "tail",
        "/dev/zero",
    ]);
    assert_eq!(
        o.status.code(),
        Some(137),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let insp = b.inspect("hog");
    assert_eq!(insp[0]["State"]["OOMKilled"], true, "{insp}");
    b.ok(&["rm", "hog"]);
}

#[test]
fn stats_wait_and_kill() {
    let Some(b) = Berth::new() else { return };
    b.busybox();
    b.ok(&[
        "run",
        "-d",
        "--name",
        "s",
        "--memory",
        "64m",
        "--pids-limit",
        "50",
        "busybox:test",
        "sleep",
        "30",
    ]);
    let out = b.ok(&["stats", "--no-stream", "--format", "json", "s"]);
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(v["MemLimit"], 64 << 20);
    assert_eq!(v["PIDsLimit"], 50);
    assert!(v["PIDs"].as_u64().unwrap() >= 1);
    b.ok(&["kill", "s"]);
    assert_eq!(b.ok(&["wait", "s"]), "137\n");
    b.ok(&["rm", "s"]);
}

#[test]
fn crash_of_monitor_and_container_is_cleaned_by_rm() {
    let Some(b) = Berth::new() else { return };
    b.busybox();
    b.ok(&["run", "-d", "--name", "c", "busybox:test", "sleep", "30"]);
    let (_, id) = b.kill_monitor_and_init("c");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let ps = b.ok(&["ps", "-a", "--format", "json"]);
    assert!(ps.contains("\"exited\""), "{ps}");
    b.ok(&["rm", "c"]);
    b.assert_removed(&id);
}

#[test]
fn images_tag_save_load_rmi() {
    let Some(b) = Berth::new() else { return };
    b.busybox();
    b.ok(&["tag", "busybox:test", "localhost/mine:v1"]);
    let imgs = b.ok(&["images", "--format", "json"]);
    assert!(
        imgs.contains("localhost/mine:v1") && imgs.contains("busybox:test"),
        "{imgs}"
    );
    let tar = b.dir.path().join("save.tar");
    b.ok(&["save", "-o", tar.to_str().unwrap(), "localhost/mine:v1"]);
    b.ok(&["rmi", "localhost/mine:v1"]);
    b.ok(&["rmi", "busybox:test"]);
    assert!(!b.ok(&["images"]).contains("mine"));
    b.ok(&["load", "-i", tar.to_str().unwrap()]);
    assert_eq!(
        b.ok(&["run", "--rm", "localhost/mine:v1", "echo", "loaded"]),
        "loaded\n"
    );
    // An image used by a container can't be removed without --force.
    b.ok(&["create", "--name", "user", "localhost/mine:v1", "true"]);
    assert!(!b.run(&["rmi", "localhost/mine:v1"]).status.success());
    b.ok(&["rm", "user"]);
    b.ok(&["rmi", "localhost/mine:v1"]);
    b.ok(&["prune"]);
}

/// `exec -t`: the process gets a pty of its own, sized like the caller's terminal, and its
/// output comes back through it.
#[test]
fn exec_tty_gets_a_terminal_of_the_callers_size() {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let Some(b) = Berth::new() else { return };
    b.busybox();
    b.ok(&["run", "-d", "--name", "t", "busybox:test", "sleep", "30"]);
    let ws = nix::pty::Winsize {
        ws_row: 33,
        ws_col: 77,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&ws), None).unwrap();
    let slave = std::fs::File::from(pty.slave);
    let mut child = b
        .cmd()
        .args(["exec", "-t", "t", "sh", "-c", "tty; stty size; echo done"])
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave.try_clone().unwrap())
        .spawn()
        .unwrap();
    drop(slave);
    let mut master = std::fs::File::from(pty.master);
    let fd = master.as_raw_fd();
    // Bounded: if berth hangs, kill it after 20 s so the read sees EIO.
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if rx.recv_timeout(std::time::Duration::from_secs(20)).is_err() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    });
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = master.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    let status = child.wait().unwrap();
    let _ = tx.send(());
    watchdog.join().unwrap();
    let _ = fd;
    let text = String::from_utf8_lossy(&out);
    assert!(status.success(), "exec -t failed: {text}");
    assert!(text.contains("/dev/pts/"), "no pty inside: {text}");
    assert!(text.contains("33 77"), "size not passed on: {text}");
    assert!(text.contains("done"), "{text}");
    assert!(!b.run(&["exec", "-t", "-d", "t", "true"]).status.success());
    b.ok(&["rm", "-f", "t"]);
}

/// What a host reboot leaves: records and snapshots' upper dirs on disk; no processes,
/// no mounts, no cgroups, an empty /run. `ps -a` shows the container exited, `start`
/// brings it back and `rm` cleans everything.
#[test]
fn after_a_reboot_containers_show_exited_restart_and_rm_cleanly() {
    let Some(b) = Berth::new() else { return };
    b.busybox();
    b.ok(&[
        "run",
        "-d",
        "--name",
        "r",
        "busybox:test",
        "sh",
        "-c",
        "echo up; sleep 30",
    ]);
    // "Power off": everything dies at once, then what doesn't survive a reboot goes.
    let (pid, id) = b.kill_monitor_and_init("r");
    let gone = (0..200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(10));
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    });
    assert!(gone, "container init {pid} survived SIGKILL");
    unmount_under(b.dir.path());
    remove_cgroup_dirs(&id);
    std::fs::remove_dir_all(b.dir.path().join("run")).unwrap();

    let ps = b.ok(&["ps", "-a", "--format", "json"]);
    assert!(ps.contains("\"exited\""), "{ps}");
    b.ok(&["start", "r"]);
    let logs = (0..100).find_map(|_| {
        std::thread::sleep(std::time::Duration::from_millis(20));
        let l = b.ok(&["logs", "r"]);
        (l.matches("up").count() >= 2).then_some(l)
    });
    assert!(logs.is_some(), "restarted container did not run again");
    b.ok(&["rm", "-f", "r"]);
    b.assert_removed(&id);
}

/// Where layers can't be idmapped, each container gets a chowned copy: inside, files are
/// root's and writable by container root; on the host the copy belongs to the range.
#[test]
fn chowned_copy_fallback_when_layers_cannot_be_idmapped() {
    let Some(b) = Berth::new() else { return };
    b.busybox();
    let run = |args: &[&str]| {
        let o = output_via_files(b.cmd().env("BERTH_IDMAPPED_LAYERS", "0").args(args));
        assert!(
            o.status.success(),
            "berth {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    run(&["run", "-d", "--name", "cc", "busybox:test", "sleep", "30"]);
    let out = b.ok(&[
        "exec",
        "cc",
        "sh",
        "-c",
        "stat -c %u:%g /bin/busybox; touch /root/x && echo wrote; cat /proc/self/uid_map",
    ]);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("0:0"), "{out}");
    assert_eq!(lines.next(), Some("wrote"), "{out}");
    let base: u32 = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(base, 0, "{out}");
    let insp = b.inspect("cc");
    let id = insp[0]["Id"].as_str().unwrap();
    let copy = b
        .root()
        .join("containers")
        .join(id)
        .join("snapshot/shifted/0/bin/busybox");
    let meta = std::fs::symlink_metadata(&copy).expect("no chowned copy");
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), base);
    // Restart remounts the same copy.
    b.ok(&["stop", "-t", "1", "cc"]);
    b.ok(&["start", "cc"]);
    assert_eq!(b.ok(&["exec", "cc", "ls", "/root"]).trim(), "x");
    b.ok(&["rm", "-f", "cc"]);
    b.assert_no_mounts();
}
