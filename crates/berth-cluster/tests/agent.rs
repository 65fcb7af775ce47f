//! Controller and agents end to end, with hosts made of network namespaces: an underlay
//! bridge in a namespace of its own, a controller namespace and three host namespaces on
//! it. Each host runs `berth-cluster agent join`; the controller programs their overlays.
//! Checks: every host reaches every other host's block (the VTEP address, `.0`) through
//! VXLAN; a host whose agent dies is marked down and withdrawn everywhere, and restored
//! when its agent returns; with the controller gone the data path keeps forwarding.
//! Only addresses inside these namespaces are contacted. Guards delete the namespaces
//! and kill the processes (by PID) even when an assertion fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_berth-cluster");

struct Topology {
    /// (namespace, engine root): containers removed before the namespaces go.
    engines: Vec<(String, PathBuf)>,
    tag: String,
    namespaces: Vec<String>,
    procs: Vec<Child>,
    dir: tempfile::TempDir,
    octet: u8,
}

fn sh(cmd: &str) {
    let o = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        o.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

impl Topology {
    fn new() -> Option<Topology> {
        Self::tagged("")
    }

    /// `suffix` keeps the namespaces of tests running in parallel in this process apart.
    fn tagged(suffix: &str) -> Option<Topology> {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipping: needs root");
            return None;
        }
        let pid = std::process::id();
        let t = Topology {
            engines: Vec::new(),
            tag: format!("ba{:x}{suffix}", pid % 0xfffff),
            namespaces: Vec::new(),
            procs: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
            octet: (pid % 250) as u8,
        };
        Some(t)
    }

    fn ns(&self, n: &str) -> String {
        format!("{}{n}", self.tag)
    }

    fn addr(&self, i: u8) -> String {
        format!("10.198.{}.{i}", self.octet)
    }

    /// The underlay namespace with its bridge, and `names` attached to it, the i-th with
    /// address .(i+1).
    fn build(&mut self, names: &[&str]) {
        let u = self.ns("u");
        sh(&format!("ip netns add {u}"));
        self.namespaces.push(u.clone());
        sh(&format!(
            "ip -n {u} link add br0 type bridge && ip -n {u} link set br0 up"
        ));
        for (i, n) in names.iter().enumerate() {
            let ns = self.ns(n);
            sh(&format!("ip netns add {ns}"));
            self.namespaces.push(ns.clone());
            sh(&format!(
                "ip -n {u} link add p{i} type veth peer name eth0 netns {ns} && ip -n {u} link set p{i} master br0 up"
            ));
            sh(&format!(
                "ip -n {ns} addr add {}/24 dev eth0 && ip -n {ns} link set eth0 up && ip -n {ns} link set lo up",
                self.addr(i as u8 + 1)
            ));
        }
    }

    fn spawn(&mut self, ns: &str, args: &[&str], log: &str) -> usize {
        let out = std::fs::File::create(self.dir.path().join(log)).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(ns), BIN])
            .args(args)
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap();
        self.procs.push(child);
        self.procs.len() - 1
    }

    fn kill(&mut self, idx: usize) {
        let _ = self.procs[idx].kill();
        let _ = self.procs[idx].wait();
    }

    fn ping(&self, from: &str, to: &str) -> bool {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns(from),
                "busybox",
                "ping",
                "-c1",
                "-W1",
                to,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// berth (the engine) inside a host namespace, with the engine root `root`.
    fn berth(&self, ns: &str, root: &Path, args: &[&str]) -> std::process::Output {
        let berth = Path::new(BIN).with_file_name("berth");
        // nsenter, not `ip netns exec`: that remounts /sys, hiding the cgroup hierarchies.
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns(ns)))
            .arg("--")
            .arg(berth)
            .arg("--root")
            .arg(root.join("lib"))
            .arg("--runroot")
            .arg(root.join("run"))
            .args(args)
            .env("BERTH_CLUSTER_HOST_FILE", root.join("host.json"))
            .output()
            .unwrap()
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for (ns, root) in self.engines.clone() {
            let ids = self.berth(&ns, &root, &["ps", "-aq"]);
            for id in String::from_utf8_lossy(&ids.stdout).lines() {
                let _ = self.berth(&ns, &root, &["rm", "-f", id]);
            }
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "grep -o ' {}[^ ]*' /proc/self/mounts | sort -r | xargs -r -n1 umount -l",
                    root.display()
                ))
                .output();
        }
        for p in &mut self.procs {
            let _ = p.kill();
            let _ = p.wait();
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Polls `f` every 50 ms for up to `limit`.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn admin_get(t: &Topology, ctl_dir: &Path, path: &str) -> serde_json::Value {
    let token = std::fs::read_to_string(ctl_dir.join("admin.token")).unwrap();
    let o = Command::new("ip")
        .args(["netns", "exec", &t.ns("ctl"), BIN, "cluster", path])
        .args([
            "--controller",
            &format!("http://{}:7480", t.addr(1)),
            "--format",
            "json",
        ])
        .env("BERTH_CLUSTER_TOKEN", token.trim())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    serde_json::Value::Array(
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect(),
    )
}

#[test]
fn agents_program_the_overlay_and_follow_hosts_down_and_up() {
    let Some(mut t) = Topology::new() else { return };
    t.build(&["ctl", "h1", "h2", "h3"]);
    let ctl_dir: PathBuf = t.dir().join("ctl");
    let ctl = ctl_dir.to_str().unwrap().to_string();
    let o = Command::new(BIN)
        .args([
            "controller",
            "init",
            "--dir",
            &ctl,
            "--cidr",
            "10.244.0.0/16",
        ])
        .args(["--heartbeat-timeout-ms", "1500"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let listen = format!("{}:7480", t.addr(1));
    let ctl_proc = t.spawn(
        "ctl",
        &["controller", "serve", "--dir", &ctl, "--listen", &listen],
        "ctl.log",
    );
    let token = ctl_dir.join("join.token");
    let token = token.to_str().unwrap().to_string();
    let controller = format!("http://{listen}");
    let mut agents = Vec::new();
    for (i, h) in ["h1", "h2", "h3"].iter().enumerate() {
        let ip = t.addr(i as u8 + 2);
        let root = t.dir().join(format!("engine-{h}"));
        std::fs::create_dir_all(&root).unwrap();
        let (hf, er, err) = (
            root.join("host.json").display().to_string(),
            root.join("lib").display().to_string(),
            root.join("run").display().to_string(),
        );
        let args = [
            "agent",
            "join",
            "--controller",
            &controller,
            "--token-file",
            &token,
            "--underlay-ip",
            &ip,
            "--name",
            h,
            "--heartbeat-ms",
            "300",
            "--resync-ms",
            "2000",
            "--host-file",
            &hf,
            "--engine-root",
            &er,
            "--engine-runroot",
            &err,
        ];
        agents.push(t.spawn(h, &args, &format!("{h}.log")));
        t.engines.push((h.to_string(), root));
    }
    // Each host's block, from the controller.
    let mut blocks = std::collections::BTreeMap::new();
    assert!(
        eventually(Duration::from_secs(20), || {
            let hosts = admin_get(&t, &ctl_dir, "hosts");
            blocks = hosts
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|h| {
                    Some((
                        h["name"].as_str()?.to_string(),
                        h["blocks"][0].as_str()?.trim_end_matches("/24").to_string(),
                    ))
                })
                .collect();
            blocks.len() == 3
        }),
        "hosts did not join: {}\n{}",
        t.log("ctl.log"),
        t.log("h1.log")
    );
    let vtep = |h: &str| blocks[h].clone();
    // Full mesh over VXLAN.
    for a in ["h1", "h2", "h3"] {
        for b in ["h1", "h2", "h3"] {
            if a != b {
                assert!(
                    eventually(Duration::from_secs(10), || t.ping(a, &vtep(b))),
                    "{a} can't reach {b}'s block ({}): {}",
                    vtep(b),
                    t.log(&format!("{a}.log"))
                );
            }
        }
    }
    // The traffic went through the VXLAN device.
    let stats = Command::new("ip")
        .args(["-j", "-s", "-n", &t.ns("h1"), "link", "show", "berth.vx"])
        .output()
        .unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    let tx = stats[0]["stats64"]["tx"]["packets"].as_u64().unwrap_or(0);
    let rx = stats[0]["stats64"]["rx"]["packets"].as_u64().unwrap_or(0);
    assert!(
        tx >= 2 && rx >= 2,
        "berth.vx counters tx {tx} rx {rx}: {stats}"
    );

    // Containers on h1 and h2 with --network cluster talk by cluster address, unNATed.
    let image = busybox_tar(t.dir());
    let mut addrs = Vec::new();
    for h in ["h1", "h2"] {
        let root = t.dir().join(format!("engine-{h}"));
        std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let o = t.berth(h, &root, &["import", image.to_str().unwrap(), "busybox:c"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let o = t.berth(
            h,
            &root,
            &[
                "run",
                "-d",
                "--name",
                &format!("c-{h}"),
                "--network",
                "cluster",
                "--dns",
                "127.0.0.1",
                "busybox:c",
                "sleep",
                "60",
            ],
        );
        assert!(
            o.status.success(),
            "run on {h}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let o = t.berth(
            h,
            &root,
            &[
                "exec",
                &format!("c-{h}"),
                "ip",
                "-4",
                "-o",
                "addr",
                "show",
                "eth0",
            ],
        );
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        let addr = text
            .split_whitespace()
            .nth(3)
            .unwrap_or("")
            .split('/')
            .next()
            .unwrap_or("")
            .to_string();
        assert!(
            addr.starts_with(&vtep(h)[..vtep(h).len() - 1]),
            "{h}: {text}"
        );
        addrs.push(addr);
    }
    assert!(
        eventually(Duration::from_secs(10), || {
            admin_get(&t, &ctl_dir, "containers")
                .as_array()
                .map(|a| a.len())
                == Some(2)
        }),
        "the agents did not report the containers: {}",
        t.log("h1.log")
    );
    let root1 = t.dir().join("engine-h1");
    let o = t.berth(
        "h1",
        &root1,
        &["exec", "c-h1", "ping", "-c1", "-W2", &addrs[1]],
    );
    assert!(
        o.status.success(),
        "c-h1 can't reach c-h2 at {}: {}{}",
        addrs[1],
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    // A removed container leaves the controller's map.
    let root2 = t.dir().join("engine-h2");
    assert!(t
        .berth("h2", &root2, &["rm", "-f", "c-h2"])
        .status
        .success());
    assert!(
        eventually(Duration::from_secs(10), || {
            admin_get(&t, &ctl_dir, "containers")
                .as_array()
                .map(|a| a.len())
                == Some(1)
        }),
        "c-h2 still in the controller's map"
    );

    // h3's agent dies: marked down after the timeout, withdrawn from h1 and h2.
    t.kill(agents[2]);
    assert!(
        eventually(Duration::from_secs(10), || !t.ping("h1", &vtep("h3"))),
        "h3 still reachable after its agent died"
    );
    let hosts = admin_get(&t, &ctl_dir, "hosts");
    let h3 = hosts
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "h3")
        .unwrap();
    assert_eq!(h3["state"], "down", "{hosts}");
    assert!(t.ping("h1", &vtep("h2")), "h1-h2 broke when h3 went down");
    // It comes back.
    let ip3 = t.addr(4);
    let root3 = t.dir().join("engine-h3");
    let (hf3, er3, err3) = (
        root3.join("host.json").display().to_string(),
        root3.join("lib").display().to_string(),
        root3.join("run").display().to_string(),
    );
    let args = [
        "agent",
        "join",
        "--controller",
        &controller,
        "--token-file",
        &token,
        "--underlay-ip",
        &ip3,
        "--name",
        "h3",
        "--heartbeat-ms",
        "300",
        "--host-file",
        &hf3,
        "--engine-root",
        &er3,
        "--engine-runroot",
        &err3,
    ];
    t.spawn("h3", &args, "h3b.log");
    assert!(
        eventually(Duration::from_secs(10), || t.ping("h1", &vtep("h3"))),
        "h3 not restored: {}",
        t.log("h3b.log")
    );

    // The controller goes away: forwarding continues on the last map.
    t.kill(ctl_proc);
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        t.ping("h1", &vtep("h2")),
        "data path torn down without the controller"
    );
    assert!(t.ping("h2", &vtep("h3")));
    // Back: status shows every host up with an applied revision.
    t.spawn(
        "ctl",
        &["controller", "serve", "--dir", &ctl, "--listen", &listen],
        "ctl2.log",
    );
    assert!(
        eventually(Duration::from_secs(10), || {
            let hosts = admin_get(&t, &ctl_dir, "hosts");
            hosts.as_array().is_some_and(|a| {
                a.len() == 3
                    && a.iter()
                        .all(|h| h["state"] == "up" && h["applied_revision"].as_u64() > Some(0))
            })
        }),
        "hosts not all up after the controller restart"
    );
}

/// The engine tells the agent when a cluster-network container starts or goes: with a
/// report period of a minute, the container still reaches the controller (and leaves it)
/// within a few seconds, which only the notification can explain.
#[test]
fn the_engines_notification_reports_a_container_without_waiting_for_the_period() {
    let Some(mut t) = Topology::tagged("n") else {
        return;
    };
    t.build(&["ctl", "h1"]);
    let ctl_dir: PathBuf = t.dir().join("ctl");
    let ctl = ctl_dir.to_str().unwrap().to_string();
    let o = Command::new(BIN)
        .args([
            "controller",
            "init",
            "--dir",
            &ctl,
            "--cidr",
            "10.244.0.0/16",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let listen = format!("{}:7480", t.addr(1));
    t.spawn(
        "ctl",
        &["controller", "serve", "--dir", &ctl, "--listen", &listen],
        "ctl.log",
    );
    let root = t.dir().join("engine-h1");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (token, controller, ip) = (
        ctl_dir.join("join.token").display().to_string(),
        format!("http://{listen}"),
        t.addr(2),
    );
    let (hf, er, err) = (
        root.join("host.json").display().to_string(),
        root.join("lib").display().to_string(),
        root.join("run").display().to_string(),
    );
    t.spawn(
        "h1",
        &[
            "agent",
            "join",
            "--controller",
            &controller,
            "--token-file",
            &token,
            "--underlay-ip",
            &ip,
            "--name",
            "h1",
            "--host-file",
            &hf,
            "--engine-root",
            &er,
            "--engine-runroot",
            &err,
            "--report-ms",
            "60000",
        ],
        "h1.log",
    );
    t.engines.push(("h1".to_string(), root.clone()));
    assert!(
        eventually(Duration::from_secs(20), || root.join("host.json").exists()),
        "the agent wrote no host file: {}\n{}",
        t.log("h1.log"),
        t.log("ctl.log")
    );
    let host: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("host.json")).unwrap()).unwrap();
    let sock = PathBuf::from(
        host["notify"]
            .as_str()
            .expect("no notify socket in the host file"),
    );
    assert!(sock.exists(), "{host}");

    let image = busybox_tar(t.dir());
    let o = t.berth(
        "h1",
        &root,
        &["import", image.to_str().unwrap(), "busybox:c"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run = [
        "run",
        "-d",
        "--name",
        "quick",
        "--network",
        "cluster",
        "--dns",
        "127.0.0.1",
        "busybox:c",
        "sleep",
        "60",
    ];
    let o = t.berth("h1", &root, &run);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ran = Instant::now();
    let count = |t: &Topology| {
        admin_get(t, &ctl_dir, "containers")
            .as_array()
            .map(|a| a.iter().filter(|c| c["name"] == "quick").count())
    };
    assert!(
        eventually(Duration::from_secs(5), || count(&t) == Some(1)),
        "the container was not reported within 5 s (period 60 s): {}",
        t.log("h1.log")
    );
    eprintln!("reported {:?} after `run -d` returned", ran.elapsed());
    assert!(t
        .berth("h1", &root, &["rm", "-f", "quick"])
        .status
        .success());
    assert!(
        eventually(Duration::from_secs(5), || count(&t) == Some(0)),
        "the removed container stayed on the controller for 5 s: {}",
        t.log("h1.log")
    );
}

/// A busybox rootfs tarball under `dir` (for `berth import`).
fn busybox_tar(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    for d in ["bin", "proc", "sys", "dev", "etc", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for a in ["sh", "sleep", "ping", "ip"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a)).unwrap();
    }
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").unwrap();
    let tar = dir.join("busybox.tar");
    sh(&format!(
        "tar -C {} -cf {} .",
        rootfs.display(),
        tar.display()
    ));
    tar
}
