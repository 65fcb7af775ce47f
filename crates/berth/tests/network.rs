//! `berth` networking against the real kernel, as root: bridge networks, addresses, names,
//! isolation, port mapping (from loopback and from a client namespace, TCP and UDP),
//! egress NAT to a namespace acting as "the outside", exhaustion, conflicts and cleanup.
//!
//! Every test has its own --root, its own default bridge, subnets and nftables table
//! (BERTH_BRIDGE, BERTH_BRIDGE_SUBNET, BERTH_NFT_TABLE), so tests run in parallel and never
//! touch the host's berth0 or `inet berth`. Traffic only goes to loopback and to addresses
//! inside namespaces the test made. The guard removes containers, networks, the bridge,
//! the table, test namespaces and mounts, also when an assertion fails.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::*;

static N: AtomicU32 = AtomicU32::new(0);

struct Net {
    dir: tempfile::TempDir,
    bridge: String,
    table: String,
    /// A per-test /16-free octet pair: subnets are 10.<a>.<b>.0/24 with a in 210..240.
    octet: u8,
    n: u32,
    namespaces: std::cell::RefCell<Vec<TestNs>>,
}

impl Net {
    /// No rule of berth's table names container `id` (its tags carry the id).
    fn assert_no_rules_of(&self, id: &str, what: &str) {
        let rules = Command::new("nft")
            .args(["list", "table", "inet", &self.table])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&rules.stdout);
        assert!(!text.contains(id), "{what}: {text}");
    }

    fn new() -> Option<Net> {
        if !can_run() {
            return None;
        }
        let monitor = berth_bin().with_file_name("berth-monitor");
        assert!(monitor.exists(), "run `cargo build --workspace` first");
        let n = N.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let dir = tempfile::Builder::new()
            .prefix("berth-net-test-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let net = Net {
            dir,
            bridge: format!("bt{:x}n{n}", pid % 0xfffff),
            table: format!("berth_t{pid}_{n}"),
            octet: (pid % 250) as u8,
            n,
            namespaces: Default::default(),
        };
        let tar = busybox_tar(net.dir.path());
        net.ok(&["import", tar.to_str().unwrap(), "busybox:test"]);
        Some(net)
    }

    /// The i-th /24 of this test (i < 8): 10.<210 + n*8 % 30 + i>.<pid octet>.0/24.
    fn subnet(&self, i: u32) -> String {
        format!("10.{}.{}.0/24", 210 + (self.n * 8 + i) % 30, self.octet)
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(berth_bin());
        c.env("BERTH_BRIDGE", &self.bridge)
            .env("BERTH_BRIDGE_SUBNET", self.subnet(0))
            .env("BERTH_NFT_TABLE", &self.table)
            .env_remove("BERTH_DEFAULT_NETWORK")
            .arg("--root")
            .arg(self.dir.path().join("lib"))
            .arg("--runroot")
            .arg(self.dir.path().join("run"));
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        output_via_files(self.cmd().args(args))
    }

    fn ok(&self, args: &[&str]) -> String {
        stdout_of_success("berth", args, self.run(args))
    }

    fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert_eq!(o.status.code(), Some(125), "berth {args:?} should fail");
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    fn network(&self, name: &str, subnet_index: u32, extra: &[&str]) -> String {
        let s = self.subnet(subnet_index);
        let mut a = vec!["network", "create", "--subnet", s.as_str()];
        a.extend_from_slice(extra);
        a.push(name);
        self.ok(&a);
        s
    }

    fn pid(&self, c: &str) -> i32 {
        let v: serde_json::Value = serde_json::from_str(&self.ok(&["inspect", c])).unwrap();
        v[0]["State"]["Pid"].as_i64().unwrap() as i32
    }

    fn id(&self, c: &str) -> String {
        let v: serde_json::Value = serde_json::from_str(&self.ok(&["inspect", c])).unwrap();
        v[0]["Id"].as_str().unwrap().to_string()
    }

    /// A namespace of the test's own, linked to the host by a veth pair on 10.<250>.x.y/30:
    /// the host side gets .1, the namespace .2.
    fn test_ns(&self, tag: &str, i: u32) -> (String, Ipv4Addr, Ipv4Addr) {
        let name = format!("bn{:x}{tag}{}", std::process::id() % 0xffff, self.n);
        let host_if = format!("bv{:x}{tag}{}", std::process::id() % 0xffff, self.n);
        let base = (self.n * 8 + i) % 60 * 4;
        let host = Ipv4Addr::new(10, 250, self.octet, base as u8 + 1);
        let inner = Ipv4Addr::new(10, 250, self.octet, base as u8 + 2);
        self.namespaces.borrow_mut().push(TestNs {
            name: name.clone(),
            host_if: host_if.clone(),
        });
        let sh = |c: &str| {
            let st = Command::new("sh").arg("-c").arg(c).status().unwrap();
            assert!(st.success(), "{c}");
        };
        sh(&format!("ip netns add {name}"));
        sh(&format!(
            "ip link add {host_if} type veth peer name eth0 netns {name}"
        ));
        sh(&format!(
            "ip addr add {host}/30 dev {host_if} && ip link set {host_if} up"
        ));
        sh(&format!(
            "ip -n {name} addr add {inner}/30 dev eth0 && ip -n {name} link set eth0 up && ip -n {name} link set lo up && ip -n {name} route add default via {host}"
        ));
        (name, host, inner)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let ids = self.run(&["ps", "-aq"]);
        for id in String::from_utf8_lossy(&ids.stdout).lines() {
            let _ = self.run(&["rm", "-f", id]);
        }
        let nets = self.run(&["network", "ls", "-q"]);
        for n in String::from_utf8_lossy(&nets.stdout).lines() {
            if n != "bridge" {
                let _ = self.run(&["network", "rm", n]);
            }
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .output();
        self.namespaces.borrow_mut().clear();
        unmount_under(self.dir.path());
    }
}

struct TestNs {
    name: String,
    host_if: String,
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Runs `f` on a thread that has joined the network namespace at `path`; sockets made
/// there stay in that namespace.
fn in_netns<T: Send + 'static>(path: PathBuf, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).unwrap();
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

fn proc_ns(pid: i32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/ns/net"))
}

fn named_ns(name: &str) -> PathBuf {
    PathBuf::from(format!("/run/netns/{name}"))
}

/// Accepts one connection (bounded), returns the peer and what it sent.
fn accept_one(l: TcpListener) -> std::thread::JoinHandle<Option<(SocketAddr, String)>> {
    std::thread::spawn(move || {
        l.set_nonblocking(true).unwrap();
        for _ in 0..500 {
            if let Ok((mut s, peer)) = l.accept() {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut buf = String::new();
                let _ = s.read_to_string(&mut buf);
                return Some((peer, buf));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    })
}

fn send_tcp(addr: SocketAddr, what: &str) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    s.write_all(what.as_bytes()).unwrap();
}

#[test]
fn default_bridge_gives_address_route_and_files() {
    let Some(t) = Net::new() else { return };
    let out = t.ok(&[
        "run",
        "--rm",
        "--dns",
        "127.0.0.1",
        "--add-host",
        "db.example:10.1.2.3",
        "--hostname",
        "box",
        "busybox:test",
        "sh",
        "-c",
        "ip -4 -o addr show eth0; ip route; cat /etc/hosts /etc/resolv.conf /etc/hostname",
    ]);
    let prefix = t.subnet(0).replace(".0/24", ".");
    assert!(out.contains(&format!("inet {prefix}2/24")), "{out}");
    assert!(out.contains(&format!("default via {prefix}1")), "{out}");
    assert!(out.contains(&format!("{prefix}2\tbox")), "{out}");
    assert!(out.contains("10.1.2.3\tdb.example"), "{out}");
    assert!(out.contains("nameserver 127.0.0.1"), "{out}");
    // --rm released the address: the next container gets it again (next-fit aside, the
    // allocator must at least not have it held).
    let insp: serde_json::Value =
        serde_json::from_str(&t.ok(&["network", "inspect", "bridge"])).unwrap();
    assert_eq!(insp[0]["Containers"], serde_json::json!({}), "{insp}");
    // Bad flags are refused before anything is made.
    let e = t.fails(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-p",
        "80",
        "busybox:test",
        "true",
    ]);
    assert!(e.contains("-p") && e.contains("--network none"), "{e}");
    let e = t.fails(&["run", "--rm", "-p", "99999:80", "busybox:test", "true"]);
    assert!(e.contains("99999"), "{e}");
    let e = t.fails(&["run", "--rm", "--network", "nosuch", "busybox:test", "true"]);
    assert!(e.contains("nosuch"), "{e}");
}

#[test]
fn same_network_talks_by_name_other_networks_are_isolated() {
    let Some(t) = Net::new() else { return };
    t.network("front", 1, &[]);
    t.network("back", 2, &[]);
    t.ok(&[
        "run",
        "-d",
        "--name",
        "srv",
        "--network",
        "front",
        "--dns",
        "127.0.0.1",
        "busybox:test",
        "sleep",
        "30",
    ]);
    let out = t.ok(&[
        "run",
        "--rm",
        "--name",
        "cli",
        "--network",
        "front",
        "--dns",
        "127.0.0.1",
        "busybox:test",
        "sh",
        "-c",
        "grep srv /etc/hosts; ping -c1 -W2 srv >/dev/null && echo reached",
    ]);
    assert!(out.contains("reached"), "{out}");
    // The running container's /etc/hosts learnt of the newcomer and forgot it again.
    let hosts = t.ok(&["exec", "srv", "cat", "/etc/hosts"]);
    assert!(!hosts.contains("cli"), "{hosts}");
    t.ok(&[
        "run",
        "-d",
        "--name",
        "late",
        "--network",
        "front",
        "--dns",
        "127.0.0.1",
        "busybox:test",
        "sleep",
        "30",
    ]);
    assert!(t.ok(&["exec", "srv", "cat", "/etc/hosts"]).contains("late"));
    // Across networks: no route through the host.
    let srv_ip = t
        .ok(&["exec", "srv", "sh", "-c", "ip -4 -o addr show eth0"])
        .split_whitespace()
        .nth(3)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let o = t.run(&[
        "run",
        "--rm",
        "--network",
        "back",
        "--dns",
        "127.0.0.1",
        "busybox:test",
        "ping",
        "-c1",
        "-W1",
        &srv_ip,
    ]);
    assert_eq!(o.status.code(), Some(1), "back reached front's {srv_ip}");
    // container:srv shares srv's network namespace (and so its address).
    let shared = t.ok(&[
        "run",
        "--rm",
        "--network",
        "container:srv",
        "busybox:test",
        "sh",
        "-c",
        "ip -4 -o addr show eth0",
    ]);
    assert!(shared.contains(&format!("inet {srv_ip}/")), "{shared}");
    // A network in use can't be removed.
    let e = t.fails(&["network", "rm", "front"]);
    assert!(e.contains("in use") && e.contains("srv"), "{e}");
    t.ok(&["rm", "-f", "srv", "late"]);
    t.ok(&["network", "rm", "front"]);
}

#[test]
fn published_ports_from_loopback_and_a_client_namespace_keep_the_source() {
    let Some(t) = Net::new() else { return };
    // Below the ephemeral range, so nothing else picks them meanwhile.
    let base = 20000 + (std::process::id() % 4000) as u16 * 3;
    let (p_lo, p_any, p_udp) = (base, base + 1, base + 2);
    // Another tool's table (as iptables-nft would make): berth must leave it alone.
    let other = format!("other_{}_{}", std::process::id(), t.n);
    let script = format!(
        "add table ip {other}\nadd chain ip {other} chk {{ type filter hook forward priority 0; policy accept; }}\nadd rule ip {other} chk counter accept\n"
    );
    let mut nft = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    nft.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(nft.wait().unwrap().success(), "nft -f: {script}");
    struct DropTable(String);
    impl Drop for DropTable {
        fn drop(&mut self) {
            let _ = Command::new("nft")
                .args(["delete", "table", "ip", &self.0])
                .output();
        }
    }
    let _other = DropTable(other.clone());
    let spec_lo = format!("127.0.0.1:{p_lo}:80");
    let spec_any = format!("{p_any}:81");
    let spec_udp = format!("{p_udp}:53/udp");
    t.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        &spec_lo,
        "-p",
        &spec_any,
        "-p",
        &spec_udp,
        "--dns",
        "127.0.0.1",
        "busybox:test",
        "sleep",
        "30",
    ]);
    let ports = t.ok(&["port", "web"]);
    assert!(
        ports.contains(&format!("80/tcp -> 127.0.0.1:{p_lo}")),
        "{ports}"
    );
    assert!(
        ports.contains(&format!("53/udp -> 0.0.0.0:{p_udp}")),
        "{ports}"
    );
    assert_eq!(
        t.ok(&["port", "web", "81"]).trim(),
        format!("0.0.0.0:{p_any}")
    );
    let ns = proc_ns(t.pid("web"));

    // From the host on 127.0.0.1 (masqueraded: the host path can't keep 127.0.0.1).
    let l = in_netns(ns.clone(), || TcpListener::bind("0.0.0.0:80").unwrap());
    let got = accept_one(l);
    send_tcp(SocketAddr::from(([127, 0, 0, 1], p_lo)), "via-loopback");
    let (_, msg) = got
        .join()
        .unwrap()
        .expect("nothing arrived through 127.0.0.1");
    assert_eq!(msg, "via-loopback");

    // From another "host": a namespace of ours, to the host's address on its link. The
    // server sees the client's own address.
    let (cl, host_addr, client_addr) = t.test_ns("c", 0);
    let l = in_netns(ns.clone(), || TcpListener::bind("0.0.0.0:81").unwrap());
    let got = accept_one(l);
    in_netns(named_ns(&cl), move || {
        send_tcp(SocketAddr::from((host_addr, p_any)), "via-client")
    });
    let (peer, msg) = got
        .join()
        .unwrap()
        .expect("nothing arrived from the client");
    assert_eq!(msg, "via-client");
    assert_eq!(
        peer.ip(),
        std::net::IpAddr::V4(client_addr),
        "source not preserved"
    );

    // UDP, from loopback.
    let u = in_netns(ns, || UdpSocket::bind("0.0.0.0:53").unwrap());
    u.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.send_to(b"dgram", ("127.0.0.1", p_udp)).unwrap();
    let mut buf = [0u8; 16];
    let (n, _) = u
        .recv_from(&mut buf)
        .expect("no datagram through the UDP mapping");
    assert_eq!(&buf[..n], b"dgram");

    // Conflicts: a port another container publishes, and one a host process holds.
    let e = t.fails(&["run", "--rm", "-p", &spec_lo, "busybox:test", "true"]);
    assert!(e.contains(&p_lo.to_string()), "{e}");
    let held = TcpListener::bind("0.0.0.0:0").unwrap();
    let hp = held.local_addr().unwrap().port();
    let e = t.fails(&[
        "run",
        "--rm",
        "-p",
        &format!("{hp}:80"),
        "busybox:test",
        "true",
    ]);
    assert!(e.contains(&hp.to_string()), "{e}");
    // The failed runs left nothing: only web's address is allocated.
    let insp: serde_json::Value =
        serde_json::from_str(&t.ok(&["network", "inspect", "bridge"])).unwrap();
    assert_eq!(
        insp[0]["Containers"].as_object().unwrap().len(),
        1,
        "{insp}"
    );

    let id = t.id("web");
    t.ok(&["rm", "-f", "web"]);
    t.assert_no_rules_of(&id, "rules left");
    let theirs = Command::new("nft")
        .args(["list", "table", "ip", &other])
        .output()
        .unwrap();
    let theirs = String::from_utf8_lossy(&theirs.stdout);
    assert!(
        theirs.contains("counter") && theirs.contains("accept"),
        "{theirs}"
    );
}

#[test]
fn egress_is_masqueraded_and_internal_networks_have_none() {
    let Some(t) = Net::new() else { return };
    let (out, host_side, outside) = t.test_ns("o", 1);
    let l = in_netns(named_ns(&out), move || {
        TcpListener::bind(SocketAddr::from((outside, 9000))).unwrap()
    });
    let got = accept_one(l);
    let target = format!("{outside}");
    t.ok(&[
        "run",
        "--rm",
        "--dns",
        "127.0.0.1",
        "busybox:test",
        "sh",
        "-c",
        &format!("echo out | nc -w 3 {target} 9000"),
    ]);
    let (peer, msg) = got.join().unwrap().expect("nothing reached the outside");
    assert_eq!(msg.trim(), "out");
    assert_eq!(
        peer.ip(),
        std::net::IpAddr::V4(host_side),
        "not masqueraded"
    );

    t.network("sealed", 3, &["--internal"]);
    let o = t.run(&[
        "run",
        "--rm",
        "--network",
        "sealed",
        "--dns",
        "127.0.0.1",
        "busybox:test",
        "ping",
        "-c1",
        "-W1",
        &target,
    ]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "internal network reached the outside"
    );
}

#[test]
fn exhausted_subnet_and_requested_addresses() {
    let Some(t) = Net::new() else { return };
    // A /30: gateway .1 and one container address .2.
    let s = t.subnet(4).replace(".0/24", ".0/30");
    t.ok(&["network", "create", "--subnet", &s, "tiny"]);
    t.ok(&[
        "run",
        "-d",
        "--name",
        "one",
        "--network",
        "tiny",
        "busybox:test",
        "sleep",
        "30",
    ]);
    let e = t.fails(&["run", "--rm", "--network", "tiny", "busybox:test", "true"]);
    assert!(e.contains("tiny") && e.contains("no free"), "{e}");
    assert_eq!(
        t.ok(&["ps", "-aq"]).lines().count(),
        1,
        "the failed run left a container"
    );
    t.ok(&["rm", "-f", "one"]);
    let want = t.subnet(5).replace(".0/24", ".77");
    t.network("wide", 5, &[]);
    let out = t.ok(&[
        "run",
        "--rm",
        "--network",
        "wide",
        "--ip",
        &want,
        "busybox:test",
        "ip",
        "-4",
        "-o",
        "addr",
        "show",
        "eth0",
    ]);
    assert!(out.contains(&format!("inet {want}/24")), "{out}");
    let e = t.fails(&[
        "run",
        "--rm",
        "--network",
        "wide",
        "--ip",
        "192.0.2.1",
        "busybox:test",
        "true",
    ]);
    assert!(e.contains("192.0.2.1"), "{e}");
}

#[test]
fn crash_then_rm_or_recovery_leaves_no_veth_rule_or_address() {
    let Some(t) = Net::new() else { return };
    let spec = format!("{}:80", 10000 + std::process::id() % 9000);
    t.ok(&[
        "run",
        "-d",
        "--name",
        "victim",
        "-p",
        &spec,
        "busybox:test",
        "sleep",
        "30",
    ]);
    let id = t.id("victim");
    let ports_of_bridge = || -> Vec<String> {
        std::fs::read_dir(format!("/sys/class/net/{}/brif", t.bridge))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let veths = ports_of_bridge();
    assert_eq!(veths.len(), 1, "{veths:?}");
    let pid = t.pid("victim");
    let rec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            t.dir
                .path()
                .join("lib/containers")
                .join(&id)
                .join("container.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let monitor = rec["monitor_pid"].as_i64().unwrap() as i32;
    for p in [monitor, pid] {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    t.ok(&["rm", "victim"]);
    // The kernel deletes the pair with the namespace, asynchronously.
    let gone = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        ports_of_bridge().is_empty()
    });
    assert!(gone, "veth left: {:?}", ports_of_bridge());
    assert!(!std::path::Path::new("/sys/class/net")
        .join(&veths[0])
        .exists());
    t.assert_no_rules_of(&id, "nft rule left");
    let insp: serde_json::Value =
        serde_json::from_str(&t.ok(&["network", "inspect", "bridge"])).unwrap();
    assert_eq!(insp[0]["Containers"], serde_json::json!({}), "address left");
    assert!(find_cgroup_dirs(&id).is_empty());
}

/// A crash in the middle of rm (record gone, address and port rule still there), then a
/// reboot: the first command afterwards recovers what no container owns any more.
#[test]
fn first_command_after_a_reboot_releases_what_no_container_owns() {
    let Some(t) = Net::new() else { return };
    let spec = format!("{}:80", 10000 + (std::process::id() + 4500) % 9000);
    t.ok(&[
        "run",
        "-d",
        "--name",
        "orphan",
        "-p",
        &spec,
        "busybox:test",
        "sleep",
        "30",
    ]);
    let id = t.id("orphan");
    let pid = t.pid("orphan");
    let dir = t.dir.path().join("lib/containers").join(&id);
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("container.json")).unwrap()).unwrap();
    let monitor = rec["monitor_pid"].as_i64().unwrap() as i32;
    for p in [monitor, pid] {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    unmount_under(t.dir.path());
    remove_cgroup_dirs(&id);
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(t.dir.path().join("run")).unwrap();

    assert_eq!(t.ok(&["ps", "-aq"]), "");
    t.assert_no_rules_of(&id, "port rule left");
    let insp: serde_json::Value =
        serde_json::from_str(&t.ok(&["network", "inspect", "bridge"])).unwrap();
    assert_eq!(insp[0]["Containers"], serde_json::json!({}), "address left");
    // The port is free again.
    t.ok(&["run", "--rm", "-p", &spec, "busybox:test", "true"]);
    assert!(find_cgroup_dirs(&id).is_empty(), "cgroup left behind");
}
