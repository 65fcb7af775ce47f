//! Test fixtures against the real kernel: namespaces as "containers" and "outside"
//! hosts, test networks with their own bridge, subnet and nftables table. Every fixture
//! cleans up in Drop; names and subnets are unique per process and per fixture.
//! Traffic goes only to loopback or to addresses inside namespaces made here.

#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use berth_net::NetworkConfig;
use ipnet::Ipv4Net;

/// Long enough for one ARP or SYN retransmission (1 s each): under parallel load a first
/// contact occasionally needs one (see the crate's notes).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(4);

static COUNTER: AtomicU32 = AtomicU32::new(0);
static BLOCKS: AtomicU32 = AtomicU32::new(0);

pub fn is_root() -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    eprintln!("skipping: needs root");
    false
}

pub fn next() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// A /28 of 10.200.0.0/16 that no other fixture of this process (and, by the pid,
/// almost surely no other test process) uses.
pub fn block() -> Ipv4Net {
    let n = BLOCKS.fetch_add(1, Ordering::Relaxed);
    assert!(n < 32, "too many address blocks in one test process");
    let index = (std::process::id() % 128) * 32 + n;
    Ipv4Net::new(
        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 0)) + index * 16),
        28,
    )
    .unwrap()
}

pub fn host(net: Ipv4Net, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + n)
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}n{}", std::process::id() % 100_000, next())
}

/// Runs a command, returning stdout; panics with stderr on failure.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Like `sh` but returns None on failure.
pub fn try_sh(args: &[&str]) -> Option<String> {
    let out = Command::new(args[0]).args(&args[1..]).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A process in a new network namespace (optionally a new user namespace too), like a
/// container's init after `create`.
pub struct Ns {
    pub child: Child,
    pub pid: i32,
}

impl Ns {
    pub fn new() -> Ns {
        Ns::spawn(&["--net"])
    }

    pub fn with_userns() -> Ns {
        Ns::spawn(&["--user", "--map-root-user", "--net"])
    }

    fn spawn(flags: &[&str]) -> Ns {
        let child = Command::new("unshare")
            .args(flags)
            .args(["sleep", "60"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let ns = Ns { child, pid };
        // unshare execs sleep after unsharing: wait (bounded) until the namespace differs.
        let mine = std::fs::read_link("/proc/self/ns/net").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let theirs = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
            let is_sleep = exe.is_some_and(|e| e.to_string_lossy().contains("sleep"));
            if theirs.is_some_and(|t| t != mine) && is_sleep {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "namespace of {pid} never appeared"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        ns
    }

    /// Runs a command inside the namespace's network namespace.
    pub fn run(&self, args: &[&str]) -> Option<String> {
        let pid = self.pid.to_string();
        let mut full = vec!["nsenter", "-t", &pid, "-n"];
        full.extend_from_slice(args);
        try_sh(&full)
    }

    /// Runs `f` on a thread that has joined this network namespace; sockets made there
    /// stay in it.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = File::open(format!("/proc/{}/ns/net", self.pid)).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                rustix::thread::move_into_link_name_space(
                    file.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .unwrap();
                f()
            })
            .join()
            .unwrap()
        })
    }

    /// A TCP listener inside the namespace.
    pub fn listen_tcp(&self, port: u16) -> TcpListener {
        self.enter(|| TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).unwrap())
    }

    pub fn bind_udp(&self, port: u16) -> UdpSocket {
        self.enter(|| UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).unwrap())
    }

    /// Connects from inside the namespace, expecting success.
    pub fn connect(&self, to: SocketAddrV4) -> std::io::Result<TcpStream> {
        self.enter(|| TcpStream::connect_timeout(&to.into(), CONNECT_TIMEOUT))
    }

    /// Connects from inside the namespace, expecting the attempt to be dropped (short
    /// timeout; each such check is paired with a control that shows the path works).
    pub fn connect_refused(&self, to: SocketAddrV4) -> std::io::Result<TcpStream> {
        self.enter(|| TcpStream::connect_timeout(&to.into(), Duration::from_secs(1)))
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Serves one connection on `listener` in the background: reads a line, answers
/// "hello <line>", and reports the client's address. Bounded to 8 s.
pub fn serve_once(listener: TcpListener) -> std::thread::JoinHandle<Option<SocketAddr>> {
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(8);
        loop {
            match listener.accept() {
                Ok((mut s, peer)) => {
                    s.set_nonblocking(false).ok()?;
                    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
                    let mut buf = [0u8; 64];
                    let n = s.read(&mut buf).ok()?;
                    s.write_all(b"hello ").ok()?;
                    s.write_all(&buf[..n]).ok()?;
                    return Some(peer);
                }
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Err(_) => return None,
            }
        }
    })
}

/// Sends "ping" over `stream` and returns the answer.
pub fn talk(mut stream: TcpStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    stream.write_all(b"ping").unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).unwrap();
    out
}

/// A network made directly from a config (no store), with its own nftables table;
/// dropped: torn down, table deleted, bridge deleted.
pub struct TestNet {
    pub net: NetworkConfig,
}

impl TestNet {
    pub fn new(table: &str, internal: bool) -> TestNet {
        let subnet = block();
        let net = NetworkConfig {
            name: unique("tnet"),
            id: format!("{:064x}", next()),
            bridge: unique("bt"),
            subnet,
            gateway: host(subnet, 1),
            internal,
            mtu: 1450,
            created: String::new(),
            labels: Default::default(),
            nft_table: table.to_string(),
            cluster_cidr: None,
            more_ranges: Vec::new(),
        };
        let t = TestNet { net };
        berth_net::setup_network(&t.net).unwrap();
        t
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let _ = berth_net::teardown_network(&self.net);
        let _ = try_sh(&["ip", "link", "del", &self.net.bridge]);
    }
}

/// Deletes an nftables table when dropped.
pub struct TableGuard(pub String);

impl TableGuard {
    pub fn new() -> TableGuard {
        TableGuard(format!("berth_t{}_{}", std::process::id(), next()))
    }
}

impl Drop for TableGuard {
    fn drop(&mut self) {
        let _ = try_sh(&["nft", "delete", "table", "inet", &self.0]);
    }
}

/// An "outside" host: a namespace reached from the host over a veth pair; the host end
/// has `host_addr`, the inside end (eth1) `addr`, both in a /30.
pub struct Outside {
    pub ns: Ns,
    pub link: String,
    pub host_addr: Ipv4Addr,
    pub addr: Ipv4Addr,
}

impl Outside {
    pub fn new() -> Outside {
        let b = block();
        let (host_addr, addr) = (host(b, 1), host(b, 2));
        let ns = Ns::new();
        let link = unique("vo");
        let out = Outside {
            ns,
            link,
            host_addr,
            addr,
        };
        let pid = out.ns.pid.to_string();
        sh(&[
            "ip", "link", "add", &out.link, "type", "veth", "peer", "name", "eth1", "netns", &pid,
        ]);
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{host_addr}/30"),
            "dev",
            &out.link,
        ]);
        sh(&["ip", "link", "set", &out.link, "up"]);
        out.ns
            .run(&["ip", "addr", "add", &format!("{addr}/30"), "dev", "eth1"])
            .unwrap();
        out.ns.run(&["ip", "link", "set", "eth1", "up"]).unwrap();
        out.ns.run(&["ip", "link", "set", "lo", "up"]).unwrap();
        out
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = try_sh(&["ip", "link", "del", &self.link]);
    }
}

/// A container id unique to this process and fixture.
pub fn container_id() -> String {
    unique("c")
}

/// Detaches and unpublishes a container when dropped.
pub struct Attached<'a> {
    pub net: &'a NetworkConfig,
    pub id: String,
    pub addr: Ipv4Addr,
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        let _ = berth_net::remove_port_mappings(self.net, &self.id);
        let _ = berth_net::detach(&self.id);
    }
}

/// Attaches `ns` to `net` with the nth host address of the subnet.
pub fn attach<'a>(net: &'a NetworkConfig, ns: &Ns, n: u32) -> Attached<'a> {
    let id = container_id();
    let addr = host(net.subnet, n);
    let guard = Attached { net, id, addr };
    berth_net::attach(net, ns.pid, &guard.id, addr).unwrap();
    guard
}

pub fn link_exists(name: &str) -> bool {
    try_sh(&["ip", "link", "show", name]).is_some()
}

pub fn table_exists(table: &str) -> bool {
    try_sh(&["nft", "list", "table", "inet", table]).is_some()
}
