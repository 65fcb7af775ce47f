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

#[allow(dead_code)] // shared with the store suites; this one needs only etcd's data dir
mod store_support;

const BIN: &str = env!("CARGO_BIN_EXE_berth-cluster");

/// The tests of this file one at a time: each starts a controller, agents and
/// containers, and the first one's single-shot pings after a fixed pause fail on this
/// 2-core machine when the other runs beside it.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    // A failed test poisons the lock; the next one can still run.
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

struct Topology {
    /// (namespace, engine root): containers removed before the namespaces go.
    engines: Vec<(String, PathBuf)>,
    tag: String,
    namespaces: Vec<String>,
    procs: Vec<Child>,
    dir: tempfile::TempDir,
    /// etcd's data directory (on tmpfs), removed with the topology.
    etcd_dir: Option<tempfile::TempDir>,
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
    /// `prefix`: two letters no other test of this file uses, so tests running at once
    /// (same pid) get namespaces of their own.
    fn new(prefix: &str) -> Option<Topology> {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipping: needs root");
            return None;
        }
        // Several topologies in one test process (the tests run in parallel): each its
        // own namespace names and underlay subnet.
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        let t = Topology {
            engines: Vec::new(),
            tag: format!("{prefix}{:x}{n}", pid % 0xfffff),
            namespaces: Vec::new(),
            procs: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
            etcd_dir: None,
            octet: ((pid + n * 97) % 250) as u8,
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
        self.spawn_program(ns, BIN, args, log)
    }

    fn spawn_program(&mut self, ns: &str, program: &str, args: &[&str], log: &str) -> usize {
        let out = std::fs::File::create(self.dir.path().join(log)).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(ns), program])
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
/// A child (a ping flood) killed by PID if the test fails before collecting it.
struct KillOnDrop(Child);

impl KillOnDrop {
    fn wait_output(mut self) -> std::process::Output {
        let mut stdout = Vec::new();
        if let Some(mut o) = self.0.stdout.take() {
            let _ = std::io::Read::read_to_end(&mut o, &mut stdout);
        }
        let status = self.0.wait().unwrap();
        std::process::Output {
            status,
            stdout,
            stderr: Vec::new(),
        }
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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

/// All hosts as the controller lists them, and `name`'s record among them.
fn host_record(t: &Topology, ctl_dir: &Path, name: &str) -> (serde_json::Value, serde_json::Value) {
    let hosts = admin_get(t, ctl_dir, "hosts");
    let h = hosts
        .as_array()
        .and_then(|a| a.iter().find(|h| h["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no host {name} on the controller: {hosts}"));
    (hosts, h)
}

fn admin_get(t: &Topology, ctl_dir: &Path, path: &str) -> serde_json::Value {
    let o = Command::new("ip")
        .args(["netns", "exec", &t.ns("ctl"), BIN, "cluster", path])
        .args([
            "--controller",
            &format!("https://{}:7480", t.addr(1)),
            "--dir",
            ctl_dir.to_str().unwrap(),
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    serde_json::Value::Array(
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect(),
    )
}

/// Starts etcd (Debian's etcd-server) inside the controller's namespace, on its
/// loopback: the controller's store, killed with the topology. Its `--store` URL.
fn etcd_in(t: &mut Topology, ns: &str) -> String {
    let etcd_dir = store_support::etcd_data_dir();
    let data = etcd_dir.path().join("data");
    t.etcd_dir = Some(etcd_dir);
    let (client, peer) = ("http://127.0.0.1:2379", "http://127.0.0.1:2380");
    t.spawn_program(
        ns,
        "etcd",
        &[
            "--name=e2e",
            &format!("--data-dir={}", data.display()),
            &format!("--listen-client-urls={client}"),
            &format!("--advertise-client-urls={client}"),
            &format!("--listen-peer-urls={peer}"),
            &format!("--initial-advertise-peer-urls={peer}"),
            &format!("--initial-cluster=e2e={peer}"),
            "--heartbeat-interval=20",
            "--election-timeout=200",
        ],
        "etcd.log",
    );
    "etcd://127.0.0.1:2379/berth-e2e".to_string()
}

#[test]
fn agents_program_the_overlay_and_follow_hosts_down_and_up() {
    e2e(Backend::Embedded);
}

/// The same with the controller's state in etcd.
#[test]
fn agents_program_the_overlay_with_an_etcd_backed_controller() {
    e2e(Backend::Etcd);
}

enum Backend {
    Embedded,
    Etcd,
}

fn e2e(backend: Backend) {
    let _serial = serial();
    let prefix = match backend {
        Backend::Embedded => "ba",
        Backend::Etcd => "be",
    };
    let Some(mut t) = Topology::new(prefix) else {
        return;
    };
    t.build(&["ctl", "h1", "h2", "h3"]);
    let ctl_dir: PathBuf = t.dir().join("ctl");
    let ctl = ctl_dir.to_str().unwrap().to_string();
    let store: Vec<String> = match backend {
        Backend::Embedded => vec![],
        Backend::Etcd => vec!["--store".into(), etcd_in(&mut t, "ctl")],
    };
    let store: Vec<&str> = store.iter().map(String::as_str).collect();
    // init runs in the controller's namespace too (that's where etcd listens); etcd
    // may still be electing itself: bounded retries.
    let mut init = None;
    for _ in 0..100 {
        let o = Command::new("ip")
            .args(["netns", "exec", &t.ns("ctl"), BIN])
            .args(["controller", "init", "--dir", &ctl])
            .args(["--cidr", "10.244.0.0/16", "--heartbeat-timeout-ms", "1500"])
            .args(&store)
            .output()
            .unwrap();
        let ok = o.status.success();
        init = Some(o);
        if ok {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = init.unwrap();
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stderr),
        t.log("etcd.log")
    );
    let listen = format!("{}:7480", t.addr(1));
    let serve: Vec<&str> = ["controller", "serve", "--dir", &ctl, "--listen", &listen]
        .into_iter()
        .chain(store.iter().copied())
        .collect();
    let ctl_proc = t.spawn("ctl", &serve, "ctl.log");
    let token = ctl_dir.join("join.token");
    let token = token.to_str().unwrap().to_string();
    let controller = format!("https://{listen}");
    let ca = ctl_dir.join("ca.crt").display().to_string();
    // Every agent of this test: the same flags, its own host's address and engine.
    let agent_args = |t: &Topology, h: &str| -> Vec<String> {
        let i: u8 = h[1..].parse().unwrap();
        let root = t.dir().join(format!("engine-{h}"));
        [
            "agent",
            "join",
            "--controller",
            &controller,
            "--ca-cert",
            &ca,
            "--token-file",
            &token,
            "--underlay-ip",
            &t.addr(i + 1),
            "--name",
            h,
            "--heartbeat-ms",
            "300",
            "--resync-ms",
            "2000",
            // Certificates rotate all through the test; nothing may notice.
            "--cert-renew-secs",
            "2",
            "--host-file",
            &root.join("host.json").display().to_string(),
            "--engine-root",
            &root.join("lib").display().to_string(),
            "--engine-runroot",
            &root.join("run").display().to_string(),
        ]
        .map(String::from)
        .to_vec()
    };
    let spawn_agent = |t: &mut Topology, h: &str, log: &str| {
        let args = agent_args(t, h);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        t.spawn(h, &args, log)
    };
    let mut agents = Vec::new();
    for h in ["h1", "h2", "h3"] {
        let root = t.dir().join(format!("engine-{h}"));
        std::fs::create_dir_all(&root).unwrap();
        agents.push(spawn_agent(&mut t, h, &format!("{h}.log")));
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
        let addr = run_on_cluster(&t, h, &root, &format!("c-{h}"));
        assert!(
            addr.starts_with(&vtep(h)[..vtep(h).len() - 1]),
            "{h}: {addr}"
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
    // A port published on h2, reached from h1's container at h2's own cluster address
    // (its gateway, .1): DNAT'd and answered, though the overlay leaves packets between
    // two containers untracked.
    let root2 = t.dir().join("engine-h2");
    let o = t.berth(
        "h2",
        &root2,
        &[
            "run",
            "-d",
            "--name",
            "web",
            "--network",
            "cluster",
            "--dns",
            "127.0.0.1",
            "-p",
            "8080:80",
            "busybox:c",
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/etc",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let gw2 =
        std::net::Ipv4Addr::from(u32::from(vtep("h2").parse::<std::net::Ipv4Addr>().unwrap()) + 1);
    // (busybox's wget crashes here; nc speaks enough HTTP.)
    let get = format!("printf 'GET /passwd HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {gw2} 8080");
    let mut last = String::new();
    assert!(
        eventually(Duration::from_secs(10), || {
            let o = t.berth("h1", &root1, &["exec", "c-h1", "sh", "-c", &get]);
            last = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            last.contains("root:x:0:0")
        }),
        "c-h1 got no answer from {gw2}:8080: {last}"
    );
    assert!(t.berth("h2", &root2, &["rm", "-f", "web"]).status.success());
    assert!(
        eventually(Duration::from_secs(6), || t
            .log("h1.log")
            .contains("renewed its certificate")),
        "no certificate renewal in 2 s periods: {}",
        t.log("h1.log")
    );
    // h1's agent restarts (SIGKILL, then a new process, as after a crash or an
    // upgrade): it finds everything right, changes nothing in the kernel, and a ping
    // flood across it loses nothing.
    let flood = Command::new("ip")
        .args([
            "netns",
            "exec",
            &t.ns("h2"),
            "busybox",
            "ping",
            "-q",
            "-c",
            "60",
        ])
        .args(["-i", "0.05", "-W", "1", &vtep("h1")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let flood = KillOnDrop(flood);
    std::thread::sleep(Duration::from_millis(500));
    t.kill(agents[0]);
    agents[0] = spawn_agent(&mut t, "h1", "h1b.log");
    assert!(
        eventually(Duration::from_secs(10), || t
            .log("h1b.log")
            .contains("hosts at revision")),
        "restarted h1 agent did not apply the map: {}",
        t.log("h1b.log")
    );
    let out = flood.wait_output();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.contains("60 packets transmitted, 60 packets received"),
        "traffic lost across h1's agent restart: {out}"
    );
    let log = t.log("h1b.log");
    assert!(
        log.contains("(0 changes to set it up)") && log.contains("applied (0 changes)"),
        "the restarted agent reprogrammed the kernel: {log}"
    );
    assert!(!log.contains("kernel changes"), "{log}");

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
    let (hosts, h3) = host_record(&t, &ctl_dir, "h3");
    assert_eq!(h3["state"], "down", "{hosts}");
    assert!(t.ping("h1", &vtep("h2")), "h1-h2 broke when h3 went down");
    // It comes back.
    spawn_agent(&mut t, "h3", "h3b.log");
    assert!(
        eventually(Duration::from_secs(10), || t.ping("h1", &vtep("h3"))),
        "h3 not restored: {}",
        t.log("h3b.log")
    );

    assert!(
        eventually(Duration::from_secs(10), || t.ping("h2", &vtep("h3"))),
        "h2 did not learn that h3 is back: {}",
        t.log("h2.log")
    );
    // The controller goes away: forwarding continues on the last map.
    t.kill(ctl_proc);
    std::thread::sleep(Duration::from_millis(2500));
    // A few seconds of tries: a lost ping on a loaded machine is not a teardown, which
    // would fail them all.
    assert!(
        eventually(Duration::from_secs(3), || t.ping("h1", &vtep("h2"))),
        "data path torn down without the controller"
    );
    assert!(
        eventually(Duration::from_secs(3), || t.ping("h2", &vtep("h3"))),
        "h2 lost h3 without the controller:\nh2: {}\nh3: {}\n{}",
        t.log("h2.log"),
        t.log("h3b.log"),
        String::from_utf8_lossy(
            &Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "ip -n {0} route; ip -n {0} neigh show dev berth.vx; bridge -n {0} fdb show dev berth.vx; ip -n {1} -d link show berth.vx; ip -n {1} addr show berth.vx; ip netns exec {1} nft list ruleset",
                    t.ns("h2"),
                    t.ns("h3")
                ))
                .output()
                .unwrap()
                .stdout
        )
    );
    // Back: status shows every host up with an applied revision.
    t.spawn("ctl", &serve, "ctl2.log");
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
    // And in sync: heartbeats write the store, but a host that applied every change to
    // the map is not behind.
    let mut last = serde_json::Value::Null;
    assert!(
        eventually(Duration::from_secs(10), || {
            last = admin_get(&t, &ctl_dir, "status");
            last[0]["hosts"]
                .as_array()
                .is_some_and(|a| a.len() == 3 && a.iter().all(|h| h["behind"].as_u64() == Some(0)))
        }),
        "hosts not in sync after the controller restart: {last}"
    );
}

/// Starts the agent of host `h` (the `i`-th, 0-based, after the controller) with its
/// engine root under the test directory; returns that root.
/// `controller init` (with `init_args`) and `controller serve` in namespace ctl, on the
/// underlay's first address; the controller's directory and URL.
fn start_controller(t: &mut Topology, init_args: &[&str]) -> (PathBuf, String) {
    let ctl_dir: PathBuf = t.dir().join("ctl");
    let ctl = ctl_dir.to_str().unwrap().to_string();
    let o = Command::new(BIN)
        .args(["controller", "init", "--dir", &ctl])
        .args(init_args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let listen = format!("{}:7480", t.addr(1));
    t.spawn(
        "ctl",
        &["controller", "serve", "--dir", &ctl, "--listen", &listen],
        "ctl.log",
    );
    (ctl_dir, format!("https://{listen}"))
}

/// Starts `h`'s agent against `controller`, with the CA and join token `controller
/// init` wrote into `ctl_dir`.
fn join_agent(
    t: &mut Topology,
    h: &str,
    i: u8,
    controller: &str,
    ctl_dir: &Path,
    report_ms: &str,
) -> PathBuf {
    let token = ctl_dir.join("join.token").display().to_string();
    let ca = ctl_dir.join("ca.crt").display().to_string();
    let ip = t.addr(i + 2);
    let root = t.dir().join(format!("engine-{h}"));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (hf, er, err) = (
        root.join("host.json").display().to_string(),
        root.join("lib").display().to_string(),
        root.join("run").display().to_string(),
    );
    let args = [
        "agent",
        "join",
        "--controller",
        controller,
        "--ca-cert",
        &ca,
        "--token-file",
        &token,
        "--underlay-ip",
        &ip,
        "--name",
        h,
        "--heartbeat-ms",
        "300",
        "--report-ms",
        report_ms,
        "--host-file",
        &hf,
        "--engine-root",
        &er,
        "--engine-runroot",
        &err,
    ];
    t.spawn(h, &args, &format!("{h}.log"));
    t.engines.push((h.to_string(), root.clone()));
    root
}

/// `berth run -d --network cluster` of a sleeping busybox named `name`; returns its
/// cluster address.
fn run_on_cluster(t: &Topology, h: &str, root: &Path, name: &str) -> String {
    start_on_cluster(t, h, root, name);
    cluster_addr(t, h, root, name)
}

/// `berth run -d --network cluster` of a sleeping busybox named `name`.
fn start_on_cluster(t: &Topology, h: &str, root: &Path, name: &str) {
    let o = t.berth(
        h,
        root,
        &[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "cluster",
            "--dns",
            "127.0.0.1",
            "busybox:c",
            "sleep",
            "120",
        ],
    );
    assert!(
        o.status.success(),
        "run {name} on {h}: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        t.log(&format!("{h}.log"))
    );
}

/// Container `name`'s address on its eth0, as the container sees it.
fn cluster_addr(t: &Topology, h: &str, root: &Path, name: &str) -> String {
    let o = t.berth(
        h,
        root,
        &["exec", name, "ip", "-4", "-o", "addr", "show", "eth0"],
    );
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    text.split_whitespace()
        .nth(3)
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no address for {name}: {text}"))
        .to_string()
}

#[test]
fn a_filling_host_gets_a_second_block_and_its_containers_there_are_reached() {
    let _serial = serial();
    let Some(mut t) = Topology::new("bg") else {
        return;
    };
    t.build(&["ctl", "h1", "h2"]);
    // /29 blocks: 5 container addresses each, so the fourth container leaves one free,
    // under a quarter of a block, and h1 should ask for another. The /27 holds four
    // blocks: h1's, h2's and two more for h1, then the space is exhausted.
    let (ctl_dir, controller) = start_controller(
        &mut t,
        &[
            "--cidr",
            "10.244.0.0/27",
            "--block-prefix",
            "29",
            "--heartbeat-timeout-ms",
            "5000",
        ],
    );
    let root1 = join_agent(&mut t, "h1", 0, &controller, &ctl_dir, "100");
    let root2 = join_agent(&mut t, "h2", 1, &controller, &ctl_dir, "100");
    let host_blocks = |root: &Path| -> Vec<String> {
        std::fs::read(root.join("host.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| {
                v["blocks"].as_array().map(|a| {
                    a.iter()
                        .filter_map(|b| b.as_str().map(String::from))
                        .collect()
                })
            })
            .unwrap_or_default()
    };
    assert!(
        eventually(Duration::from_secs(20), || {
            host_blocks(&root1).len() == 1 && host_blocks(&root2).len() == 1
        }),
        "hosts did not join: {}\n{}",
        t.log("ctl.log"),
        t.log("h1.log")
    );
    let image = busybox_tar(t.dir());
    for (h, root) in [("h1", &root1), ("h2", &root2)] {
        let o = t.berth(h, root, &["import", image.to_str().unwrap(), "busybox:c"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let peer = run_on_cluster(&t, "h2", &root2, "peer");

    let first: ipnet::Ipv4Net = host_blocks(&root1)[0].parse().unwrap();
    for i in 0..4 {
        let a = run_on_cluster(&t, "h1", &root1, &format!("c{i}"));
        assert!(
            first.contains(&a.parse::<std::net::Ipv4Addr>().unwrap()),
            "c{i} at {a}"
        );
    }
    // One address left of five: the agent asks for a block before the host is full.
    assert!(
        eventually(Duration::from_secs(20), || host_blocks(&root1).len() == 2),
        "h1 got no second block: {}",
        t.log("h1.log")
    );
    let blocks = host_blocks(&root1);
    assert_eq!(blocks[0], first.to_string(), "the first block stays first");
    let second: ipnet::Ipv4Net = blocks[1].parse().unwrap();
    // The controller's record says the same.
    let (hosts, h1) = host_record(&t, &ctl_dir, "h1");
    assert_eq!(h1["blocks"], serde_json::json!(blocks), "{hosts}");
    // The last address of the first block, then the second block.
    let a4 = run_on_cluster(&t, "h1", &root1, "c4");
    assert!(
        first.contains(&a4.parse::<std::net::Ipv4Addr>().unwrap()),
        "c4 at {a4}"
    );
    let a5 = run_on_cluster(&t, "h1", &root1, "c5");
    assert!(
        second.contains(&a5.parse::<std::net::Ipv4Addr>().unwrap()),
        "c5 at {a5}"
    );
    // The bridge has a gateway in each block; c5's default route is its block's.
    let br = Command::new("ip")
        .args(["-n", &t.ns("h1"), "-4", "-o", "addr", "show", "berth-cl0"])
        .output()
        .unwrap();
    let br = String::from_utf8_lossy(&br.stdout).to_string();
    let gw = |b: ipnet::Ipv4Net| std::net::Ipv4Addr::from(u32::from(b.network()) + 1);
    for b in [first, second] {
        assert!(br.contains(&format!("{}/29", gw(b))), "{br}");
    }
    let o = t.berth("h1", &root1, &["exec", "c5", "ip", "-4", "route"]);
    let routes = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        routes.contains(&format!("default via {}", gw(second))),
        "{routes}"
    );
    // From the other host, over the overlay, to the address in the second block.
    assert!(
        eventually(Duration::from_secs(15), || {
            t.berth("h2", &root2, &["exec", "peer", "ping", "-c1", "-W1", &a5])
                .status
                .success()
        }),
        "peer on h2 can't reach c5 at {a5} in h1's second block: {}\n{}",
        t.log("h1.log"),
        t.log("h2.log")
    );
    // And from the second block back, unNATed.
    let o = t.berth("h1", &root1, &["exec", "c5", "ping", "-c1", "-W2", &peer]);
    assert!(o.status.success(), "c5 can't reach peer at {peer}");
    // The first block still works too.
    let o = t.berth("h2", &root2, &["exec", "peer", "ping", "-c1", "-W2", &a4]);
    assert!(o.status.success(), "peer can't reach c4 at {a4}");

    // Filling the second block brings the third, the last of the space.
    for i in 6..9 {
        run_on_cluster(&t, "h1", &root1, &format!("c{i}"));
    }
    assert!(
        eventually(Duration::from_secs(20), || host_blocks(&root1).len() == 3),
        "h1 got no third block: {}",
        t.log("h1.log")
    );
    // Filling that: the controller has no block left; the agent says so and keeps
    // trying, and the host's blocks stay as they are.
    for i in 9..14 {
        run_on_cluster(&t, "h1", &root1, &format!("c{i}"));
    }
    assert!(
        eventually(Duration::from_secs(20), || t
            .log("h1.log")
            .contains("10.244.0.0/27 is exhausted")),
        "no exhaustion logged: {}",
        t.log("h1.log")
    );
    let last = run_on_cluster(&t, "h1", &root1, "c14");
    let blocks = host_blocks(&root1);
    assert_eq!(blocks.len(), 3, "{blocks:?}");
    let third: ipnet::Ipv4Net = blocks[2].parse().unwrap();
    assert!(third.contains(&last.parse::<std::net::Ipv4Addr>().unwrap()));
    let o = t.berth(
        "h1",
        &root1,
        &[
            "run",
            "-d",
            "--name",
            "c15",
            "--network",
            "cluster",
            "busybox:c",
            "sleep",
            "120",
        ],
    );
    let e = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success());
    assert!(
        e.contains(&format!(
            "allocating a cluster address on host h1: its blocks {} are full",
            blocks.join(", ")
        )),
        "{e}"
    );
    let (hosts, h1) = host_record(&t, &ctl_dir, "h1");
    assert_eq!(h1["blocks"], serde_json::json!(blocks), "{hosts}");
    // Still serving: the last container is reached from the other host.
    assert!(
        eventually(Duration::from_secs(15), || {
            t.berth("h2", &root2, &["exec", "peer", "ping", "-c1", "-W1", &last])
                .status
                .success()
        }),
        "peer can't reach {last} in h1's third block"
    );
}

/// `berth cluster ARGS` as the admin, in the controller's namespace.
fn admin(t: &Topology, ctl_dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args(["netns", "exec", &t.ns("ctl"), BIN, "cluster"])
        .args(args)
        .args([
            "--controller",
            &format!("https://{}:7480", t.addr(1)),
            "--dir",
            ctl_dir.to_str().unwrap(),
        ])
        .output()
        .unwrap()
}

/// `berth run -d --network cluster` on h2, which must be refused; its stderr.
fn refused_cluster_run(t: &Topology, root: &Path, why: &str) -> String {
    let o = t.berth(
        "h2",
        root,
        &[
            "run",
            "-d",
            "--network",
            "cluster",
            "busybox:c",
            "sleep",
            "5",
        ],
    );
    assert!(!o.status.success(), "{why}");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `berth cluster hosts rm`: refused for an up host without --force; with it, the host
/// leaves every other host's map, its agent stops and takes its overlay and host file
/// away.
#[test]
fn a_removed_host_is_withdrawn_everywhere_and_its_agent_leaves() {
    let _serial = serial();
    let Some(mut t) = Topology::new("br") else {
        return;
    };
    t.build(&["ctl", "h1", "h2", "h3"]);
    let (ctl_dir, controller) = start_controller(&mut t, &["--cidr", "10.244.0.0/16"]);
    join_agent(&mut t, "h1", 0, &controller, &ctl_dir, "200");
    let h2_root = join_agent(&mut t, "h2", 1, &controller, &ctl_dir, "200");
    let h2_agent = t.procs.len() - 1;
    let route_to = |t: &Topology, block: &str| {
        let o = Command::new("ip")
            .args(["-n", &t.ns("h1"), "route", "show", block])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).contains("berth.vx")
    };
    let mut block = String::new();
    assert!(
        eventually(Duration::from_secs(20), || {
            let hosts = admin_get(&t, &ctl_dir, "hosts");
            if let Some(h2) = hosts
                .as_array()
                .and_then(|a| a.iter().find(|h| h["name"] == "h2"))
            {
                block = h2["blocks"][0].as_str().unwrap_or("").to_string();
            }
            !block.is_empty() && route_to(&t, &block)
        }),
        "h1 has no route to h2's block: {}
{}",
        t.log("h1.log"),
        t.log("h2.log")
    );

    // A container on h2, still running when its host is removed.
    let image = busybox_tar(t.dir());
    let o = t.berth(
        "h2",
        &h2_root,
        &["import", image.to_str().unwrap(), "busybox:c"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    start_on_cluster(&t, "h2", &h2_root, "stays");

    let o = admin(&t, &ctl_dir, &["hosts", "rm", "h2"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("h2 is up"), "{err}");
    assert!(route_to(&t, &block), "a refused removal withdrew the route");

    let o = admin(&t, &ctl_dir, &["hosts", "rm", "--force", "h2"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("removed host h2: blocks {block}")),
        "{out}"
    );
    // Withdrawn on h1: route and VXLAN sender.
    assert!(
        eventually(Duration::from_secs(10), || !route_to(&t, &block)),
        "h1 kept its route to the removed host: {}",
        t.log("h1.log")
    );
    let set = Command::new("ip")
        .args(["netns", "exec", &t.ns("h1"), "nft", "list", "set"])
        .args(["inet", "berth_overlay", "hosts"])
        .output()
        .unwrap();
    let set = String::from_utf8_lossy(&set.stdout);
    assert!(
        !set.contains(&t.addr(3)),
        "h1 still accepts VXLAN from h2: {set}"
    );
    // h2's agent saw itself go: it stopped, with its overlay and host file.
    let mut status = None;
    assert!(
        eventually(Duration::from_secs(10), || {
            status = t.procs[h2_agent].try_wait().unwrap();
            status.is_some()
        }),
        "h2's agent still runs after its host was removed: {}",
        t.log("h2.log")
    );
    assert!(!status.unwrap().success());
    assert!(
        t.log("h2.log").contains("was removed from the cluster"),
        "{}",
        t.log("h2.log")
    );
    let dev = Command::new("ip")
        .args(["-n", &t.ns("h2"), "link", "show", "berth.vx"])
        .output()
        .unwrap();
    assert!(!dev.status.success(), "h2's VXLAN device is still there");
    let table = Command::new("ip")
        .args(["netns", "exec", &t.ns("h2"), "nft", "list", "table"])
        .args(["inet", "berth_overlay"])
        .output()
        .unwrap();
    assert!(
        !table.status.success(),
        "h2's nftables table is still there"
    );
    assert!(!h2_root.join("host.json").exists());
    // The engine's cluster network stays while the container holds an address, and hands
    // out no more: new containers, and the old one's restart, are refused.
    assert!(
        t.log("h2.log")
            .contains("keeping the engine's cluster network"),
        "{}",
        t.log("h2.log")
    );
    let err = refused_cluster_run(
        &t,
        &h2_root,
        "a cluster container started on a removed host",
    );
    assert!(err.contains("has not joined a cluster"), "{err}");
    assert!(t
        .berth("h2", &h2_root, &["stop", "-t", "1", "stays"])
        .status
        .success());
    let o = t.berth("h2", &h2_root, &["start", "stays"]);
    assert!(
        !o.status.success(),
        "a cluster container restarted on a removed host"
    );
    let hosts = admin_get(&t, &ctl_dir, "hosts");
    assert_eq!(hosts.as_array().map(|a| a.len()), Some(1), "{hosts}");
    assert_eq!(hosts[0]["name"], "h1", "{hosts}");

    // h3 joins and gets the freed block; h2 joins again and gets another one, while
    // "stays" still holds an address of its old block.
    let h3_root = join_agent(&mut t, "h3", 2, &controller, &ctl_dir, "200");
    let block_of = |root: &Path| -> Option<String> {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(root.join("host.json")).ok()?).ok()?;
        v["blocks"][0].as_str().map(String::from)
    };
    assert!(
        eventually(Duration::from_secs(20), || block_of(&h3_root).as_deref()
            == Some(block.as_str())),
        "h3 did not get the freed block {block}: {}",
        t.log("h3.log")
    );
    join_agent(&mut t, "h2", 1, &controller, &ctl_dir, "200");
    let mut again = None;
    assert!(
        eventually(Duration::from_secs(20), || {
            again = block_of(&h2_root);
            again.is_some()
        }),
        "h2 did not join again: {}",
        t.log("h2.log")
    );
    let again = again.unwrap();
    assert_ne!(again, block);
    // Its engine hands out nothing while the old block's container is there...
    assert!(
        eventually(Duration::from_secs(10), || t
            .log("h2.log")
            .contains("no longer owns")),
        "{}",
        t.log("h2.log")
    );
    let err = refused_cluster_run(
        &t,
        &h2_root,
        "an address was handed out next to a stale block",
    );
    let inspect = t.berth("h2", &h2_root, &["inspect", "stays"]);
    let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let id: String = v[0]["Id"].as_str().unwrap().chars().take(12).collect();
    assert!(err.contains("no longer owns") && err.contains(&id), "{err}");
    // ...and removing it (which works without a usable cluster network) lets the
    // network be made again, from the new block only.
    let o = t.berth("h2", &h2_root, &["rm", "-f", "stays"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let addr = run_on_cluster(&t, "h2", &h2_root, "fresh");
    let prefix = again.trim_end_matches("0/24");
    assert!(addr.starts_with(prefix), "{addr} not in {again}");
}

/// The engine tells the agent when a cluster-network container starts or goes: with a
/// report period of a minute, the container still reaches the controller (and leaves it)
/// within a few seconds, which only the notification can explain.
#[test]
fn the_engines_notification_reports_a_container_without_waiting_for_the_period() {
    let _serial = serial();
    let Some(mut t) = Topology::new("bn") else {
        return;
    };
    t.build(&["ctl", "h1"]);
    let (ctl_dir, controller) = start_controller(&mut t, &["--cidr", "10.244.0.0/16"]);
    let root = join_agent(&mut t, "h1", 0, &controller, &ctl_dir, "60000");
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
    start_on_cluster(&t, "h1", &root, "quick");
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
    for a in ["sh", "sleep", "ping", "ip", "httpd", "nc"] {
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
