//! The overlay data path against the real kernel, with test hosts made of network
//! namespaces: an underlay bridge in a namespace of its own, "hosts" each in their own
//! namespace with a veth onto it and an underlay address, and in each host a container
//! bridge with the block's .1 and "container" namespaces on it. The overlay runs inside
//! each host namespace, on a thread that has joined it.
//!
//! Nothing is created in the test process's own namespace: every link, address, route
//! and nftables table lives in a namespace made here and dies with it. Only addresses
//! inside those namespaces are contacted. Every wait is bounded.

use std::fs::File;
use std::io::{Read, Write};
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use berth_cluster::overlay::{
    ethtool, nft, read_actual, vtep_mac, ClusterSpace, Overlay, OverlayConfig, RemoteHost,
    TxChecksum,
};
use ipnet::Ipv4Net;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    eprintln!("skipping: needs root");
    false
}

/// A name prefix no other fixture (of this process, or by the pid of another) uses.
fn unique() -> String {
    format!(
        "bov{}x{}",
        std::process::id() % 100_000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace (`ip netns add`), deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(name: String) -> Netns {
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    fn nft(&self, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", &self.name, "nft"];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs `f` on a thread that has joined this namespace: sockets it makes, netlink
    /// it speaks and processes it spawns are inside.
    fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = File::open(format!("/run/netns/{}", self.name)).unwrap();
        std::thread::scope(|s| {
            let handle = s.spawn(|| {
                // SAFETY: setns on a valid namespace fd; only this thread changes namespace.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns into {}", self.name);
                f()
            });
            match handle.join() {
                Ok(v) => v,
                Err(e) => std::panic::resume_unwind(e),
            }
        })
    }

    /// (rx_packets, tx_packets) of a device.
    fn counters(&self, dev: &str) -> (u64, u64) {
        let out = self.ip(&["-s", "-j", "link", "show", "dev", dev]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let stats = &v[0]["stats64"];
        (
            stats["rx"]["packets"].as_u64().unwrap(),
            stats["tx"]["packets"].as_u64().unwrap(),
        )
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

struct Container {
    ns: Netns,
    ip: Ipv4Addr,
}

struct Host {
    name: String,
    // Containers go before the host namespace (fields drop in order).
    containers: Vec<Container>,
    ns: Netns,
    underlay_ip: Ipv4Addr,
    block: Ipv4Net,
    /// Blocks the host got after its first (see [`Host::add_block`]).
    more_blocks: Vec<Ipv4Net>,
    config: OverlayConfig,
}

const UNDERLAY_DEV: &str = "eth0";
const BRIDGE: &str = "cbr";

impl Host {
    fn remote(&self) -> RemoteHost {
        RemoteHost {
            name: self.name.clone(),
            underlay_ip: self.underlay_ip,
            vtep_mac: vtep_mac(self.underlay_ip),
            blocks: std::iter::once(self.block)
                .chain(self.more_blocks.iter().copied())
                .collect(),
            up: true,
        }
    }

    /// Starts (or restarts) the overlay inside the host: returns it and the changes made.
    fn start(&self) -> (Overlay, usize) {
        let cfg = self.config.clone();
        self.ns.enter(move || Overlay::start(cfg).unwrap())
    }

    /// One reconcile pass inside the host; returns the number of kernel changes.
    fn reconcile(&self, overlay: &mut Overlay, map: &[RemoteHost]) -> usize {
        self.ns.enter(|| overlay.reconcile(map).unwrap()).changes()
    }

    /// Adds the container bridge with `<block>.1` and `n` containers on it; every link on
    /// the container path gets the overlay's MTU, as a cluster network would.
    fn add_containers(&mut self, n: u8, mtu: u32, prefix: &str) {
        let mtu = mtu.to_string();
        let gw = Ipv4Addr::from(u32::from(self.block.network()) + 1);
        let plen = self.block.prefix_len();
        self.ns
            .ip(&["link", "add", BRIDGE, "mtu", &mtu, "type", "bridge"]);
        self.ns
            .ip(&["addr", "add", &format!("{gw}/{plen}"), "dev", BRIDGE]);
        self.ns.ip(&["link", "set", BRIDGE, "up"]);
        for j in 0..n {
            let ip = Ipv4Addr::from(u32::from(self.block.network()) + 10 + u32::from(j));
            let ns = Netns::new(format!("{prefix}c{j}"));
            let veth = format!("c{j}");
            self.ns.ip(&[
                "link", "add", &veth, "mtu", &mtu, "type", "veth", "peer", "name", "eth0", "mtu",
                &mtu, "netns", &ns.name,
            ]);
            self.ns.ip(&["link", "set", &veth, "master", BRIDGE, "up"]);
            ns.ip(&["addr", "add", &format!("{ip}/{plen}"), "dev", "eth0"]);
            ns.ip(&["link", "set", "eth0", "up"]);
            ns.ip(&["route", "add", "default", "via", &gw.to_string()]);
            self.containers.push(Container { ns, ip });
        }
    }
}

impl Host {
    /// Gives the host another block, as a cluster network does when its first fills:
    /// the bridge gets the block's `.1` too, and one container in the block (its gateway
    /// that `.1`) is added; returns that container's index.
    fn add_block(&mut self, block: Ipv4Net, mtu: u32, prefix: &str) -> usize {
        let mtu = mtu.to_string();
        let gw = Ipv4Addr::from(u32::from(block.network()) + 1);
        let plen = block.prefix_len();
        self.ns
            .ip(&["addr", "add", &format!("{gw}/{plen}"), "dev", BRIDGE]);
        let j = self.containers.len();
        let ip = Ipv4Addr::from(u32::from(block.network()) + 10);
        let ns = Netns::new(format!("{prefix}c{j}"));
        let veth = format!("c{j}");
        self.ns.ip(&[
            "link", "add", &veth, "mtu", &mtu, "type", "veth", "peer", "name", "eth0", "mtu", &mtu,
            "netns", &ns.name,
        ]);
        self.ns.ip(&["link", "set", &veth, "master", BRIDGE, "up"]);
        ns.ip(&["addr", "add", &format!("{ip}/{plen}"), "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["route", "add", "default", "via", &gw.to_string()]);
        self.containers.push(Container { ns, ip });
        self.more_blocks.push(block);
        j
    }
}

/// The test cluster: the underlay namespace with bridge "ul", and the hosts.
struct Cluster {
    prefix: String,
    hosts: Vec<Host>,
    /// Dropped last: the hosts' underlay veths die with their own namespaces anyway.
    underlay: Netns,
    /// Third octet of the underlay subnet 10.199.N.0/24.
    net: u8,
}

impl Cluster {
    fn new() -> Cluster {
        let prefix = unique();
        let underlay = Netns::new(format!("{prefix}u"));
        underlay.ip(&["link", "add", "ul", "type", "bridge"]);
        underlay.ip(&["link", "set", "ul", "up"]);
        let net = (std::process::id() % 250) as u8;
        Cluster {
            prefix,
            hosts: Vec::new(),
            underlay,
            net,
        }
    }

    /// Host number `i` (1-based): underlay 10.199.N.(10+i), block 10.244.i.0/24.
    fn add_host(&mut self, i: u8, underlay_mtu: u32) -> usize {
        let name = format!("{}h{i}", self.prefix);
        let ns = Netns::new(name.clone());
        let port = format!("h{i}");
        let mtu = underlay_mtu.to_string();
        self.underlay.ip(&[
            "link",
            "add",
            &port,
            "mtu",
            &mtu,
            "type",
            "veth",
            "peer",
            "name",
            UNDERLAY_DEV,
            "mtu",
            &mtu,
            "netns",
            &ns.name,
        ]);
        self.underlay
            .ip(&["link", "set", &port, "master", "ul", "up"]);
        let underlay_ip = Ipv4Addr::new(10, 199, self.net, 10 + i);
        ns.ip(&[
            "addr",
            "add",
            &format!("{underlay_ip}/24"),
            "dev",
            UNDERLAY_DEV,
        ]);
        ns.ip(&["link", "set", UNDERLAY_DEV, "up"]);
        let block: Ipv4Net = format!("10.244.{i}.0/24").parse().unwrap();
        let mut config = OverlayConfig::new(underlay_ip, block);
        config.nft_table = format!("berth_ov_{}", self.prefix);
        config.cluster = Some(ClusterSpace {
            cidr: "10.244.0.0/16".parse().unwrap(),
            block_prefix: 24,
        });
        self.hosts.push(Host {
            name,
            containers: Vec::new(),
            ns,
            underlay_ip,
            block,
            more_blocks: Vec::new(),
            config,
        });
        self.hosts.len() - 1
    }

    /// `n` hosts with `containers` containers each, overlays started and programmed with
    /// the full map; returns the overlays.
    fn build(n: u8, containers: u8) -> (Cluster, Vec<Overlay>) {
        let mut c = Cluster::new();
        let mut overlays = Vec::new();
        for i in 1..=n {
            let h = c.add_host(i, 1500);
            let (ov, changes) = c.hosts[h].start();
            assert!(changes > 0, "a fresh host needs changes");
            let prefix = format!("{}h{i}", c.prefix);
            c.hosts[h].add_containers(containers, ov.vtep().mtu, &prefix);
            overlays.push(ov);
        }
        let map = c.map();
        for (h, ov) in c.hosts.iter().zip(overlays.iter_mut()) {
            assert!(h.reconcile(ov, &map) > 0);
        }
        (c, overlays)
    }

    fn map(&self) -> Vec<RemoteHost> {
        self.hosts.iter().map(Host::remote).collect()
    }
}

// ---------------------------------------------------------------------------------
// Traffic: ICMP echo over a raw socket, TCP, UDP, and a packet capture on the underlay.

#[derive(Debug, Default)]
struct PingResult {
    sent: u32,
    received: u32,
    rtts: Vec<Duration>,
}

impl PingResult {
    fn median(&self) -> Duration {
        let mut r = self.rtts.clone();
        r.sort();
        r.get(r.len() / 2).copied().unwrap_or_default()
    }
}

fn icmp_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// `count` ICMP echo requests from inside `ns` to `dst`, one every `interval`, each
/// waiting at most `timeout` for its reply.
fn ping(
    ns: &Netns,
    dst: Ipv4Addr,
    count: u32,
    interval: Duration,
    timeout: Duration,
) -> PingResult {
    static IDS: AtomicU32 = AtomicU32::new(1);
    let id = (IDS.fetch_add(1, Ordering::Relaxed) as u16) ^ (std::process::id() as u16);
    ns.enter(|| {
        let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)).unwrap();
        let to = SockAddr::from(SocketAddrV4::new(dst, 0));
        let mut res = PingResult::default();
        for seq in 0..count {
            let started = Instant::now();
            let mut pkt = vec![8u8, 0, 0, 0];
            pkt.extend_from_slice(&id.to_be_bytes());
            pkt.extend_from_slice(&(seq as u16).to_be_bytes());
            pkt.extend_from_slice(&[0x42; 56]);
            let csum = icmp_checksum(&pkt);
            pkt[2..4].copy_from_slice(&csum.to_be_bytes());
            res.sent += 1;
            if sock.send_to(&pkt, &to).is_ok() {
                let deadline = started + timeout;
                let mut buf = [MaybeUninit::<u8>::uninit(); 2048];
                loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    sock.set_read_timeout(Some(left)).unwrap();
                    let Ok((n, _)) = sock.recv_from(&mut buf) else {
                        continue;
                    };
                    // SAFETY: recv_from initialised the first n bytes.
                    let b: Vec<u8> = buf[..n]
                        .iter()
                        .map(|x| unsafe { x.assume_init() })
                        .collect();
                    let ihl = usize::from(b[0] & 0x0f) * 4;
                    let src = Ipv4Addr::new(b[12], b[13], b[14], b[15]);
                    let icmp = &b[ihl..];
                    if src == dst
                        && icmp.len() >= 8
                        && icmp[0] == 0
                        && icmp[4..6] == id.to_be_bytes()
                        && icmp[6..8] == (seq as u16).to_be_bytes()
                    {
                        res.received += 1;
                        res.rtts.push(started.elapsed());
                        break;
                    }
                }
            }
            if let Some(rest) = interval.checked_sub(started.elapsed()) {
                std::thread::sleep(rest);
            }
        }
        res
    })
}

fn reaches(from: &Netns, dst: Ipv4Addr) -> bool {
    let r = ping(
        from,
        dst,
        3,
        Duration::from_millis(20),
        Duration::from_secs(2),
    );
    r.received == r.sent
}

fn unreachable(from: &Netns, dst: Ipv4Addr) -> bool {
    ping(from, dst, 2, Duration::ZERO, Duration::from_millis(300)).received == 0
}

/// Sends `len` bytes over TCP from `client` to a listener in `server`, which answers with
/// the count and a checksum of what it got, and the peer address it saw.
fn tcp_transfer(client: &Container, server: &Container, port: u16, len: usize) {
    let listener = server
        .ns
        .enter(|| TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).unwrap());
    let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    let expect_sum: u64 = data.iter().map(|&b| u64::from(b)).sum();
    let serve = std::thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let (mut s, peer) = loop {
            match listener.accept() {
                Ok(x) => break x,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
                Err(e) => panic!("no connection: {e}"),
            }
        };
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let (mut n, mut sum) = (0u64, 0u64);
        let mut buf = vec![0u8; 65536];
        loop {
            let got = s.read(&mut buf).unwrap();
            if got == 0 {
                break;
            }
            n += got as u64;
            sum += buf[..got].iter().map(|&b| u64::from(b)).sum::<u64>();
        }
        s.write_all(format!("{n} {sum} {}", peer.ip()).as_bytes())
            .unwrap();
    });
    let to = SocketAddrV4::new(server.ip, port);
    let answer = client.ns.enter(|| {
        let mut s = TcpStream::connect_timeout(&to.into(), Duration::from_secs(4)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&data).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer
    });
    serve.join().unwrap();
    // The server sees the client's cluster address: no NAT anywhere on the path.
    assert_eq!(answer, format!("{len} {expect_sum} {}", client.ip));
}

/// One UDP datagram from `client` to `server` and the answer back.
fn udp_exchange(client: &Container, server: &Container, port: u16) {
    let srv = server
        .ns
        .enter(|| UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).unwrap());
    srv.set_read_timeout(Some(Duration::from_secs(4))).unwrap();
    let cli = client
        .ns
        .enter(|| UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)).unwrap());
    cli.set_read_timeout(Some(Duration::from_secs(4))).unwrap();
    // Payload bigger than one overlay MTU: the datagram is fragmented inside, and the
    // fragments encapsulated, which is where a bad checksum would lose it.
    let payload = vec![0x5a; 3000];
    cli.send_to(&payload, SocketAddrV4::new(server.ip, port))
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let (n, from) = srv.recv_from(&mut buf).unwrap();
    assert_eq!(n, payload.len());
    assert_eq!(from.ip(), std::net::IpAddr::V4(client.ip));
    srv.send_to(b"pong", from).unwrap();
    let (n, _) = cli.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"pong");
}

/// A VXLAN packet seen on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Encapsulated {
    outer_src: Ipv4Addr,
    outer_dst: Ipv4Addr,
    vni: u32,
    inner_src: Ipv4Addr,
    inner_dst: Ipv4Addr,
}

/// Parses an Ethernet frame as IPv4/UDP to `port`/VXLAN/Ethernet/IPv4.
fn parse_vxlan(f: &[u8], port: u16) -> Option<Encapsulated> {
    if f.len() < 14 + 20 + 8 + 8 + 14 + 20 || f[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &f[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[9] != 17 {
        return None;
    }
    let udp = ip.get(ihl..)?;
    if u16::from_be_bytes([udp[2], udp[3]]) != port {
        return None;
    }
    let vx = udp.get(8..)?;
    let vni = u32::from_be_bytes([0, vx[4], vx[5], vx[6]]);
    let inner = vx.get(8..)?;
    if inner.len() < 14 + 20 || inner[12..14] != [0x08, 0x00] {
        return None;
    }
    let iip = &inner[14..];
    Some(Encapsulated {
        outer_src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        outer_dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        vni,
        inner_src: Ipv4Addr::new(iip[12], iip[13], iip[14], iip[15]),
        inner_dst: Ipv4Addr::new(iip[16], iip[17], iip[18], iip[19]),
    })
}

/// Captures (AF_PACKET, every interface of the host namespace) until `stop` is set or
/// 5 s pass, keeping the VXLAN packets.
fn capture(ns: &Netns, port: u16, stop: &AtomicBool) -> Vec<Encapsulated> {
    let sock = ns.enter(|| {
        // ETH_P_ALL in network byte order.
        let all = i32::from(0x0003u16.to_be());
        Socket::new(Domain::PACKET, Type::RAW, Some(Protocol::from(all))).unwrap()
    });
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        if let Ok(n) = sock.recv(&mut buf) {
            // SAFETY: recv initialised the first n bytes.
            let f: Vec<u8> = buf[..n]
                .iter()
                .map(|x| unsafe { x.assume_init() })
                .collect();
            if let Some(e) = parse_vxlan(&f, port) {
                seen.push(e);
            }
        }
    }
    seen
}

fn vx_rx(h: &Host) -> u64 {
    h.ns.counters(&h.config.device).0
}

fn nft_counter(h: &Host, tag: &str) -> u64 {
    let table = h.config.nft_table.clone();
    let listed = h.ns.enter(move || nft::list(&table).unwrap().unwrap());
    *listed.rules.get(tag).unwrap_or(&0)
}

// ---------------------------------------------------------------------------------

#[test]
fn three_hosts_reach_each_other_by_cluster_address_encapsulated() {
    if !is_root() {
        return;
    }
    let t0 = Instant::now();
    let (c, mut overlays) = Cluster::build(3, 2);
    let [a, b, h3] = [&c.hosts[0], &c.hosts[1], &c.hosts[2]];

    // The device: MTU from the underlay, .0/32 of the block, offload off, stable MAC.
    let vtep = overlays[0].vtep().clone();
    assert_eq!(vtep.mtu, 1500 - 50);
    assert_eq!(vtep.mac, vtep_mac(a.underlay_ip));
    let addrs = a.ns.ip(&["-4", "-o", "addr", "show", "dev", &vtep.name]);
    assert!(addrs.contains("10.244.1.0/32"), "{addrs}");
    let details = a.ns.ip(&["-d", "link", "show", "dev", &vtep.name]);
    assert!(details.contains("vxlan id 1 "), "{details}");
    assert!(details.contains("dstport 4789"), "{details}");
    assert!(details.contains("nolearning"), "{details}");
    assert!(
        details.contains(&format!("local {}", a.underlay_ip)),
        "{details}"
    );
    let dev = vtep.name.clone();
    assert!(!a.ns.enter(|| ethtool::tx_checksum_offload(&dev).unwrap()));

    // The entries: two remote hosts on each.
    let actual = a.ns.enter(|| read_actual(&vtep).unwrap());
    assert_eq!(actual.routes.len(), 2);
    assert_eq!(actual.neigh.len(), 2);
    assert_eq!(actual.fdb.len(), 2);
    let routes = a.ns.ip(&["route", "show", "10.244.2.0/24"]);
    assert!(
        routes.contains("via 10.244.2.0 dev berth.vx") && routes.contains("onlink"),
        "{routes}"
    );

    // Every container reaches every container on the other hosts, both ways.
    for (x, y) in [(a, b), (a, h3), (b, h3)] {
        for cx in &x.containers {
            for cy in &y.containers {
                assert!(reaches(&cx.ns, cy.ip), "{} -> {}", cx.ip, cy.ip);
                assert!(reaches(&cy.ns, cx.ip), "{} -> {}", cy.ip, cx.ip);
            }
        }
    }
    // The host itself reaches remote containers (from its .0 address).
    assert!(reaches(&a.ns, b.containers[0].ip));

    // TCP (1 MiB, checked end to end) and UDP (fragmented), across hosts.
    tcp_transfer(&a.containers[0], &b.containers[1], 7001, 1 << 20);
    tcp_transfer(&h3.containers[1], &a.containers[0], 7002, 1 << 20);
    udp_exchange(&b.containers[0], &h3.containers[0], 7003);
    udp_exchange(&a.containers[1], &b.containers[0], 7004);

    // On the wire: UDP 4789 between the hosts' underlay addresses, VNI 1, with the
    // containers' addresses inside; and the device counters moved.
    let rx_before = vx_rx(b);
    let stop = AtomicBool::new(false);
    let seen = std::thread::scope(|s| {
        let cap = s.spawn(|| capture(&a.ns, 4789, &stop));
        std::thread::sleep(Duration::from_millis(50));
        assert!(reaches(&a.containers[0].ns, b.containers[0].ip));
        stop.store(true, Ordering::Relaxed);
        cap.join().unwrap()
    });
    let out = Encapsulated {
        outer_src: a.underlay_ip,
        outer_dst: b.underlay_ip,
        vni: 1,
        inner_src: a.containers[0].ip,
        inner_dst: b.containers[0].ip,
    };
    let back = Encapsulated {
        outer_src: b.underlay_ip,
        outer_dst: a.underlay_ip,
        vni: 1,
        inner_src: b.containers[0].ip,
        inner_dst: a.containers[0].ip,
    };
    assert!(seen.contains(&out), "{seen:?}");
    assert!(seen.contains(&back), "{seen:?}");
    assert!(vx_rx(b) >= rx_before + 3);
    assert!(nft_counter(b, "berth-overlay:vxlan-accept:4789") > 0);
    assert_eq!(nft_counter(b, "berth-overlay:vxlan-drop:4789"), 0);

    // Container to container packets are left untracked; packets to a host's own
    // cluster address (here b's gateway, .1) are not.
    const UNTRACKED: &str = "berth-overlay:notrack-cluster:10.244.0.0/16:24";
    assert!(nft_counter(b, UNTRACKED) > 0);
    let before = nft_counter(b, UNTRACKED);
    let b_gw = Ipv4Addr::from(u32::from(b.block.network()) + 1);
    assert!(reaches(&a.containers[0].ns, b_gw));
    assert_eq!(
        nft_counter(b, UNTRACKED),
        before,
        "a host's address left untracked"
    );

    // Re-applying the same map changes nothing.
    let map = c.map();
    for (h, ov) in c.hosts.iter().zip(overlays.iter_mut()) {
        assert_eq!(h.reconcile(ov, &map), 0, "second pass on {}", h.name);
    }

    // Overlay RTT against the underlay's, in this topology.
    let overlay = ping(
        &a.containers[0].ns,
        b.containers[0].ip,
        50,
        Duration::from_millis(2),
        Duration::from_secs(1),
    );
    let underlay = ping(
        &a.ns,
        b.underlay_ip,
        50,
        Duration::from_millis(2),
        Duration::from_secs(1),
    );
    assert_eq!(overlay.received, 50);
    assert_eq!(underlay.received, 50);
    eprintln!(
        "rtt median: container->container over the overlay {:?}, host->host underlay {:?}; \
         test took {:?}",
        overlay.median(),
        underlay.median(),
        t0.elapsed()
    );
}

#[test]
fn a_host_marked_down_is_withdrawn_everywhere_and_restored_when_up() {
    if !is_root() {
        return;
    }
    let (c, mut overlays) = Cluster::build(3, 1);
    let [a, b, h3] = [&c.hosts[0], &c.hosts[1], &c.hosts[2]];
    assert!(reaches(&a.containers[0].ns, h3.containers[0].ip));

    let mut map = c.map();
    map[2].up = false;
    let (oa, rest) = overlays.split_at_mut(1);
    let ob = &mut rest[0];
    // route, fdb and neighbour entries + the nft set
    assert_eq!(a.reconcile(&mut oa[0], &map), 4);
    assert_eq!(b.reconcile(ob, &map), 4);
    for (h, ov) in [(a, &oa[0]), (b, &*ob)] {
        let vtep = ov.vtep().clone();
        let actual = h.ns.enter(|| read_actual(&vtep).unwrap());
        assert!(
            actual.routes.iter().all(|r| r.dst != h3.block),
            "{actual:?}"
        );
        assert!(actual.fdb.iter().all(|e| e.dst != h3.underlay_ip));
        assert!(actual.neigh.iter().all(|n| n.ip != h3.block.network()));
        assert_eq!(actual.routes.len(), 1);
        let table = h.config.nft_table.clone();
        let listed = h.ns.enter(move || nft::list(&table).unwrap().unwrap());
        assert!(!listed.hosts.contains(&h3.underlay_ip));
    }
    assert!(unreachable(&a.containers[0].ns, h3.containers[0].ip));
    assert!(unreachable(&b.containers[0].ns, h3.containers[0].ip));
    // ... and only that host: A and B still talk.
    assert!(reaches(&a.containers[0].ns, b.containers[0].ip));

    map[2].up = true;
    assert_eq!(a.reconcile(&mut oa[0], &map), 4);
    assert_eq!(b.reconcile(ob, &map), 4);
    assert!(reaches(&a.containers[0].ns, h3.containers[0].ip));
    assert!(reaches(&h3.containers[0].ns, b.containers[0].ip));
}

#[test]
fn a_host_with_two_blocks_is_reachable_on_both_and_a_new_block_is_one_route() {
    if !is_root() {
        return;
    }
    let (mut c, mut overlays) = Cluster::build(2, 1);
    let second: Ipv4Net = "10.244.102.0/24".parse().unwrap();
    let mtu = overlays[1].vtep().mtu;
    let prefix = format!("{}h2", c.prefix);
    let j = c.hosts[1].add_block(second, mtu, &prefix);
    let map = c.map();
    let (a, b) = (&c.hosts[0], &c.hosts[1]);
    let (oa, ob) = overlays.split_at_mut(1);
    let (oa, ob) = (&mut oa[0], &mut ob[0]);
    // The peer: one route, via the host's one next hop; neighbour and fdb stay.
    assert_eq!(a.reconcile(oa, &map), 1);
    // The host itself: its own blocks are never routed over the overlay.
    assert_eq!(b.reconcile(ob, &map), 0);
    let vtep = oa.vtep().clone();
    let actual = a.ns.enter(|| read_actual(&vtep).unwrap());
    let mut routes: Vec<(Ipv4Net, Ipv4Addr)> =
        actual.routes.iter().map(|r| (r.dst, r.via)).collect();
    routes.sort();
    assert_eq!(
        routes,
        [(b.block, b.block.network()), (second, b.block.network())],
        "{actual:?}"
    );
    assert_eq!(actual.neigh.len(), 1, "{actual:?}");
    // Both of B's blocks from A, and back from the second block.
    assert!(reaches(&a.containers[0].ns, b.containers[0].ip));
    assert!(reaches(&a.containers[0].ns, b.containers[j].ip));
    assert!(reaches(&b.containers[j].ns, a.containers[0].ip));
    // Re-applying changes nothing.
    assert_eq!(a.reconcile(oa, &map), 0);
    assert_eq!(b.reconcile(ob, &map), 0);

    // A's map without the block: that one route goes, the first block keeps working.
    let mut without = map.clone();
    without[1].blocks.truncate(1);
    assert_eq!(a.reconcile(oa, &without), 1);
    assert!(unreachable(&a.containers[0].ns, b.containers[j].ip));
    assert!(reaches(&a.containers[0].ns, b.containers[0].ip));
}

#[test]
fn vxlan_from_an_underlay_address_not_in_the_map_is_dropped() {
    if !is_root() {
        return;
    }
    let (mut c, mut overlays) = Cluster::build(2, 1);
    // A fourth machine on the same underlay, with a VXLAN device of its own, programmed
    // to reach host A, but absent from A's map.
    let r = c.add_host(4, 1500);
    let (mut orogue, _) = c.hosts[r].start();
    let prefix = format!("{}h4", c.prefix);
    let mtu = orogue.vtep().mtu;
    c.hosts[r].add_containers(1, mtu, &prefix);
    let (a, rogue) = (&c.hosts[0], &c.hosts[r]);
    assert!(rogue.reconcile(&mut orogue, &[a.remote()]) > 0);

    let rx_before = vx_rx(a);
    let drops_before = nft_counter(a, "berth-overlay:vxlan-drop:4789");
    assert!(unreachable(&rogue.containers[0].ns, a.containers[0].ip));
    // The packets reached A's underlay, were dropped by the rule, and never came out of
    // A's VXLAN device.
    assert!(nft_counter(a, "berth-overlay:vxlan-drop:4789") >= drops_before + 2);
    assert_eq!(vx_rx(a), rx_before);

    // Control: once A knows the fourth host, the same traffic flows.
    let mut map = c.map();
    map.truncate(2);
    map.push(rogue.remote());
    assert!(a.reconcile(&mut overlays[0], &map) > 0);
    assert!(reaches(&rogue.containers[0].ns, a.containers[0].ip));
    assert!(vx_rx(a) > rx_before);
}

#[test]
fn a_restarted_overlay_changes_nothing_and_drops_no_packet() {
    if !is_root() {
        return;
    }
    let (c, overlays) = Cluster::build(2, 1);
    let [a, b] = [&c.hosts[0], &c.hosts[1]];
    assert!(reaches(&a.containers[0].ns, b.containers[0].ip));
    let map = c.map();
    // All in-memory state is dropped; each "agent" starts again from its config.
    drop(overlays);

    let stop = AtomicBool::new(false);
    let (result, restarts) = std::thread::scope(|s| {
        let pinger = s.spawn(|| {
            ping(
                &a.containers[0].ns,
                b.containers[0].ip,
                300,
                Duration::from_millis(5),
                Duration::from_secs(1),
            )
        });
        let mut restarts = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pinger.is_finished() && Instant::now() < deadline && restarts < 20 {
            for h in [a, b] {
                let (mut ov, changes) = h.start();
                assert_eq!(
                    changes, 0,
                    "restart of {} changed the device or table",
                    h.name
                );
                assert_eq!(
                    h.reconcile(&mut ov, &map),
                    0,
                    "restart of {} reprogrammed",
                    h.name
                );
            }
            restarts += 1;
        }
        stop.store(true, Ordering::Relaxed);
        (pinger.join().unwrap(), restarts)
    });
    eprintln!(
        "{restarts} restarts of both hosts during 300 pings at 5 ms: {} received",
        result.received
    );
    assert!(restarts >= 3, "only {restarts} restarts during the ping");
    assert_eq!(result.sent, 300);
    assert_eq!(
        result.received, 300,
        "packets lost across {restarts} restarts"
    );
}

#[test]
fn only_our_entries_are_touched_and_teardown_leaves_the_rest() {
    if !is_root() {
        return;
    }
    let mut c = Cluster::new();
    // A smaller underlay MTU: the device follows it.
    let h = c.add_host(1, 1400);
    let peer = c.add_host(2, 1400);
    let (mut ov, _) = c.hosts[h].start();
    let prefix = format!("{}h1", c.prefix);
    c.hosts[h].add_containers(1, ov.vtep().mtu, &prefix);
    let host = &c.hosts[h];
    let dev = host.config.device.clone();
    assert_eq!(ov.vtep().mtu, 1350);

    // The offload call does something: a plain vxlan device has it on.
    host.ns.ip(&[
        "link",
        "add",
        "vxplain",
        "type",
        "vxlan",
        "id",
        "77",
        "dstport",
        "4790",
        "nolearning",
    ]);
    assert!(host
        .ns
        .enter(|| ethtool::tx_checksum_offload("vxplain").unwrap()));
    assert!(host
        .ns
        .enter(|| ethtool::disable_tx_checksum_offload("vxplain").unwrap()));
    assert!(!host
        .ns
        .enter(|| ethtool::tx_checksum_offload("vxplain").unwrap()));

    // The offload policy is held both ways: Offload turns it on, Software off again.
    let mut fast = host.config.clone();
    fast.tx_checksum = TxChecksum::Offload;
    let (_, changes) = host.ns.enter(|| Overlay::start(fast).unwrap());
    assert_eq!(changes, 1);
    assert!(host
        .ns
        .enter(|| ethtool::tx_checksum_offload(&dev).unwrap()));
    let cfg = host.config.clone();
    let (_, changes) = host.ns.enter(|| Overlay::start(cfg).unwrap());
    assert_eq!(changes, 1);
    assert!(!host
        .ns
        .enter(|| ethtool::tx_checksum_offload(&dev).unwrap()));

    // Foreign state: a hand-made route on our device (another protocol), a permanent
    // neighbour on the bridge, a route elsewhere, another tool's nftables table.
    host.ns.ip(&[
        "route",
        "add",
        "10.250.0.0/24",
        "via",
        "10.244.9.0",
        "dev",
        &dev,
        "onlink",
    ]);
    host.ns.ip(&[
        "neigh",
        "add",
        "10.244.1.200",
        "lladdr",
        "02:00:00:00:00:01",
        "nud",
        "permanent",
        "dev",
        BRIDGE,
    ]);
    host.ns.ip(&[
        "route",
        "add",
        "10.251.0.0/24",
        "via",
        "10.244.1.200",
        "dev",
        BRIDGE,
    ]);
    host.ns.nft(&["add", "table", "inet", "other_tool"]);
    host.ns.nft(&[
        "add",
        "chain",
        "inet",
        "other_tool",
        "input",
        "{ type filter hook input priority 0; policy accept; }",
    ]);
    host.ns.nft(&[
        "add",
        "rule",
        "inet",
        "other_tool",
        "input",
        "udp",
        "dport",
        "4789",
        "counter",
    ]);

    // Naming the underlay device finds the same one the address lookup found; a missing
    // one is a clear error.
    let mut named = host.config.clone();
    named.underlay_dev = Some(UNDERLAY_DEV.to_string());
    let (_, changes) = host.ns.enter(|| Overlay::start(named.clone()).unwrap());
    assert_eq!(changes, 0);
    named.underlay_dev = Some("nosuchdev".to_string());
    let err = host
        .ns
        .enter(|| Overlay::start(named).unwrap_err())
        .to_string();
    assert_eq!(err, "underlay interface nosuchdev does not exist");

    let map = vec![c.hosts[peer].remote()];
    assert_eq!(host.reconcile(&mut ov, &map), 4);
    assert_eq!(host.reconcile(&mut ov, &map), 0);
    // The peer withdrawn: ours go, theirs stay.
    assert_eq!(host.reconcile(&mut ov, &[]), 4);
    let vtep = ov.vtep().clone();
    let actual = host.ns.enter(|| read_actual(&vtep).unwrap());
    assert!(actual.routes.is_empty() && actual.fdb.is_empty() && actual.neigh.is_empty());
    let routes = host.ns.ip(&["route", "show"]);
    assert!(routes.contains("10.250.0.0/24 via 10.244.9.0"), "{routes}");
    assert!(
        routes.contains("10.251.0.0/24 via 10.244.1.200"),
        "{routes}"
    );
    let neigh = host.ns.ip(&["neigh", "show", "dev", BRIDGE]);
    assert!(neigh.contains("10.244.1.200"), "{neigh}");

    // A change of VNI re-creates the device; the next pass re-programs it.
    let mut cfg = host.config.clone();
    cfg.vni = 42;
    let (mut ov42, changes) = host.ns.enter(|| Overlay::start(cfg).unwrap());
    assert!(changes > 0);
    assert_ne!(ov42.vtep().ifindex, vtep.ifindex);
    let details = host.ns.ip(&["-d", "link", "show", "dev", &dev]);
    assert!(details.contains("vxlan id 42 "), "{details}");
    assert_eq!(host.reconcile(&mut ov42, &map), 4);

    // Teardown removes our device and table, nothing else.
    let cfg = ov42.config().clone();
    host.ns.enter(|| Overlay::teardown(&cfg).unwrap());
    assert!(host.ns.ip(&["link", "show"]).contains("vxplain"));
    assert!(!host.ns.ip(&["link", "show"]).contains(&dev));
    let tables = host.ns.nft(&["list", "tables"]);
    assert!(tables.contains("other_tool"), "{tables}");
    assert!(!tables.contains(&cfg.nft_table), "{tables}");
    // A second teardown is a no-op.
    host.ns.enter(|| Overlay::teardown(&cfg).unwrap());
}

/// Pushes `total` bytes over one TCP connection from `from` to a sink in `to`; returns
/// the rate in Gbit/s.
fn tcp_rate(from: &Netns, to: &Netns, to_ip: Ipv4Addr, port: u16, total: usize) -> f64 {
    let listener =
        to.enter(|| TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).unwrap());
    let sink = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0;
        while let Ok(got) = s.read(&mut buf) {
            if got == 0 {
                break;
            }
            n += got;
        }
        n
    });
    let elapsed = from.enter(|| {
        let to = SocketAddrV4::new(to_ip, port);
        let mut s = TcpStream::connect_timeout(&to.into(), Duration::from_secs(4)).unwrap();
        let buf = vec![0x33u8; 1 << 20];
        let started = Instant::now();
        for _ in 0..total / buf.len() {
            s.write_all(&buf).unwrap();
        }
        s.shutdown(Shutdown::Write).unwrap();
        started.elapsed()
    });
    assert_eq!(sink.join().unwrap(), total / (1 << 20) * (1 << 20));
    (total * 8) as f64 / elapsed.as_secs_f64() / 1e9
}

/// A measurement, not a check: single-stream TCP container to container across the
/// overlay against host to host on the underlay (`--ignored --nocapture` to see it).
#[test]
#[ignore]
fn throughput_overlay_vs_underlay() {
    if !is_root() {
        return;
    }
    let (c, _overlays) = Cluster::build(2, 1);
    let [a, b] = [&c.hosts[0], &c.hosts[1]];
    let total = 512 << 20;
    for round in 0..4 {
        // Rounds 2 and 3 with TX checksum offload back on, to see what turning it off costs.
        let offload = round >= 2;
        for (h, ov) in [a, b].iter().zip(&_overlays) {
            let dev = ov.vtep().name.clone();
            h.ns.enter(|| ethtool::set_tx_checksum_offload(&dev, offload).unwrap());
        }
        let under = tcp_rate(&a.ns, &b.ns, b.underlay_ip, 7100 + round, total);
        let over = tcp_rate(
            &a.containers[0].ns,
            &b.containers[0].ns,
            b.containers[0].ip,
            7200 + round,
            total,
        );
        eprintln!(
            "single TCP stream: underlay {under:.2} Gbit/s, overlay {over:.2} Gbit/s ({:.2}x), \
             tx checksum offload {}",
            over / under,
            if offload { "on" } else { "off" }
        );
    }
}
