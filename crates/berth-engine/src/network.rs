//! The engine's side of networking. At create: which network the container joins, its
//! address and published ports (kept in its record), and the files it gets (/etc/hosts,
//! /etc/resolv.conf, /etc/hostname). Once the runtime has created the container (its
//! network namespace exists, the process has not started): plumb it through berth-net.
//! At rm: unpublish, unplug, release. Every step tolerates "already done".
//!
//! Name resolution on user networks (docker's semantics: not on the default `bridge`):
//! every container's /etc/hosts lists the other containers of its network, rewritten in
//! place (it is bind-mounted, so the inode must stay) whenever one joins or leaves. libc
//! reads /etc/hosts on every lookup, so names stay correct as containers come and go,
//! with no resolver process to run and nothing forwarded anywhere.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use berth_net::{NetworkConfig, Networks, PortMapping, PortMappingSpec, Proto};
use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum NetError {
    #[error(transparent)]
    Net(#[from] berth_net::Error),
    #[error("invalid {var} {value:?}: {reason}")]
    Setting {
        var: &'static str,
        value: String,
        reason: String,
    },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "allocating a cluster address on host {host}: its blocks {blocks} are full; \
         the host's agent asks the controller for another block as they fill (see its log)"
    )]
    ClusterFull { host: String, blocks: String },
    #[error(
        "the cluster network has blocks {stale} that host {host} no longer owns (it was \
         removed from the cluster and joined again); containers {owners} still hold \
         addresses there: remove them so the network can be made again from the host's \
         blocks {blocks}"
    )]
    ClusterStale {
        host: String,
        stale: String,
        blocks: String,
        owners: String,
    },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> NetError {
    let path = path.to_path_buf();
    move |source| NetError::Io { op, path, source }
}

/// Host-wide network settings (podman keeps these in containers.conf; berth reads the
/// environment): the network a container gets without `--network`, and the default
/// bridge network's bridge, subnet and the nftables table berth owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSettings {
    /// BERTH_DEFAULT_NETWORK: "bridge" unless set (none, host or a network's name).
    pub default_network: String,
    /// BERTH_BRIDGE: the default network's bridge device, "berth0".
    pub bridge: String,
    /// BERTH_BRIDGE_SUBNET: the default network's subnet, 10.88.0.0/16.
    pub subnet: ipnet::Ipv4Net,
    /// BERTH_NFT_TABLE: berth's nftables table (inet family), "berth".
    pub nft_table: String,
}

impl NetSettings {
    pub fn from_env() -> Result<NetSettings, NetError> {
        Self::from_lookup(&|k| std::env::var(k).ok())
    }

    pub fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Result<NetSettings, NetError> {
        let subnet = match get("BERTH_BRIDGE_SUBNET") {
            Some(v) => v.parse().map_err(|_| NetError::Setting {
                var: "BERTH_BRIDGE_SUBNET",
                value: v.clone(),
                reason: "not an IPv4 subnet like 10.88.0.0/16".into(),
            })?,
            None => ipnet::Ipv4Net::new(Ipv4Addr::new(10, 88, 0, 0), 16).unwrap_or_default(),
        };
        let s = NetSettings {
            default_network: get("BERTH_DEFAULT_NETWORK")
                .unwrap_or_else(|| berth_net::config::DEFAULT_NETWORK.into()),
            bridge: get("BERTH_BRIDGE").unwrap_or_else(|| berth_net::config::DEFAULT_BRIDGE.into()),
            subnet,
            nft_table: get("BERTH_NFT_TABLE")
                .unwrap_or_else(|| berth_net::config::DEFAULT_NFT_TABLE.into()),
        };
        let bad = |var, value: &str, e: berth_net::config::ConfigError| NetError::Setting {
            var,
            value: value.to_string(),
            reason: e.to_string(),
        };
        berth_net::config::validate_bridge(&s.bridge)
            .map_err(|e| bad("BERTH_BRIDGE", &s.bridge, e))?;
        berth_net::config::validate_table(&s.nft_table)
            .map_err(|e| bad("BERTH_NFT_TABLE", &s.nft_table, e))?;
        Ok(s)
    }
}

/// A container's place on a bridge network, in its record (`extra.net`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerNet {
    pub network: String,
    pub addr: Option<Ipv4Addr>,
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    /// The name other containers of a user network reach it by.
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub add_hosts: Vec<(String, IpAddr)>,
}

impl ContainerNet {
    pub fn from_record(extra: &serde_json::Map<String, serde_json::Value>) -> Option<Self> {
        extra
            .get("net")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
    }

    pub fn store(&self, extra: &mut serde_json::Map<String, serde_json::Value>) {
        if let Ok(v) = serde_json::to_value(self) {
            extra.insert("net".into(), v);
        }
    }
}

/// The networks of this engine root, with berth's table.
pub fn open(dir: &Path, s: &NetSettings) -> Result<Networks, NetError> {
    Ok(Networks::open_with_table(dir, &s.nft_table)?)
}

/// A network by name; the default one is made on first use from the settings. The
/// cluster network is made from the host file, and follows it when the host got more
/// blocks since.
pub fn get_or_default(
    nets: &Networks,
    name: &str,
    s: &NetSettings,
) -> Result<NetworkConfig, NetError> {
    if name != berth_net::config::DEFAULT_NETWORK && name != CLUSTER_NETWORK {
        return Ok(nets.get(name)?);
    }
    if let Ok(n) = nets.get(name) {
        if name != CLUSTER_NETWORK {
            return Ok(n);
        }
        // No host file: the agent is not running here yet (after a reboot) or the host
        // was removed from the cluster, whose blocks may be another host's by now.
        // Either way no address of them may be handed out or plumbed.
        let h = read_cluster_host(&cluster_host_file())?;
        if let Some(n) = sync_cluster_network(nets, &h)? {
            return Ok(n);
        }
        // Removed as stale: made again below from the host file.
    }
    let (req, host) = if name == CLUSTER_NETWORK {
        let h = read_cluster_host(&cluster_host_file())?;
        (cluster_request(&h)?, Some(h))
    } else {
        (
            berth_net::CreateRequest {
                name: name.to_string(),
                subnet: Some(s.subnet),
                bridge: Some(s.bridge.clone()),
                ..Default::default()
            },
            None,
        )
    };
    let net = match nets.create(&req) {
        Ok(n) => n,
        // Another process made it first.
        Err(_) if nets.get(name).is_ok() => nets.get(name)?,
        Err(e) => return Err(e.into()),
    };
    match host {
        Some(h) => Ok(sync_cluster_network(nets, &h)?.unwrap_or(net)),
        None => Ok(net),
    }
}

/// `--network cluster`: this host's blocks of the cluster's address space, as the host's
/// agent recorded them.
pub const CLUSTER_NETWORK: &str = "cluster";

/// What the agent writes after joining (`berth agent join --host-file`), and rewrites
/// whenever the host gets another block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterHost {
    pub name: String,
    /// In the order the controller gave them: the first is the network's first subnet,
    /// and addresses are handed out from the first with room.
    pub blocks: Vec<ipnet::Ipv4Net>,
    pub cidr: ipnet::Ipv4Net,
    pub mtu: u32,
    /// The agent's unix datagram socket: the engine sends one datagram when a container of
    /// the cluster network has started or has been removed, so the agent reports it at
    /// once rather than at its next period. Absent (an older agent): the agent only polls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<PathBuf>,
}

/// What happened to a cluster-network container, as the agent's notification says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterEvent {
    Started,
    Removed,
}

impl ClusterEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterEvent::Started => "started",
            ClusterEvent::Removed => "removed",
        }
    }
}

/// Tells this host's cluster agent about container `id` (a datagram `"<event> <id>"` to
/// the socket named in the host file). Best-effort and never blocking: a missing host
/// file or socket, an agent that is down or a full socket buffer only mean the agent
/// learns of the container at its next periodic report, so errors are deliberately
/// dropped here rather than failing the container command.
pub fn notify_cluster_agent(event: ClusterEvent, id: &str) {
    notify_cluster_agent_via(&cluster_host_file(), event, id)
}

/// [`notify_cluster_agent`] with the host file named.
pub fn notify_cluster_agent_via(host_file: &Path, event: ClusterEvent, id: &str) {
    let Ok(text) = std::fs::read(host_file) else {
        return;
    };
    let Ok(Some(path)) = serde_json::from_slice::<ClusterHost>(&text).map(|h| h.notify) else {
        return;
    };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    if sock.set_nonblocking(true).is_ok() {
        let _ = sock.send_to(format!("{} {id}", event.as_str()).as_bytes(), &path);
    }
}

/// BERTH_CLUSTER_HOST_FILE, default /run/berth/cluster/host.json.
pub fn cluster_host_file() -> PathBuf {
    std::env::var_os("BERTH_CLUSTER_HOST_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/berth/cluster/host.json"))
}

/// The host file at `path`; an error that says to join when it is missing.
pub fn read_cluster_host(path: &Path) -> Result<ClusterHost, NetError> {
    let bad = |reason: String| NetError::Setting {
        var: "--network",
        value: CLUSTER_NETWORK.into(),
        reason,
    };
    let text = std::fs::read(path).map_err(|e| {
        bad(format!(
            "this host has not joined a cluster ({}: {e}); run `berth agent join` first",
            path.display()
        ))
    })?;
    let h: ClusterHost = serde_json::from_slice(&text)
        .map_err(|e| bad(format!("reading {}: {e}", path.display())))?;
    if h.blocks.is_empty() {
        return Err(bad(format!("{} lists no address block", path.display())));
    }
    Ok(h)
}

/// "10.244.0.0/24, 10.244.3.0/24", for messages.
pub fn blocks_text(blocks: &[ipnet::Ipv4Net]) -> String {
    blocks
        .iter()
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn cluster_request(h: &ClusterHost) -> Result<berth_net::CreateRequest, NetError> {
    Ok(berth_net::CreateRequest {
        name: CLUSTER_NETWORK.into(),
        subnet: h.blocks.first().copied(),
        bridge: Some(std::env::var("BERTH_CLUSTER_BRIDGE").unwrap_or_else(|_| "berth-cl0".into())),
        mtu: Some(h.mtu),
        cluster_cidr: Some(h.cidr),
        ..Default::default()
    })
}

/// Makes the cluster network of `nets` carry every block of `h` (a live host's blocks
/// only grow): adds the missing ones as ranges and, if the bridge exists, its gateway
/// addresses and rules. Returns the network, or None when it does not exist (it is made
/// from the host file, with every block, when a container first needs it), also when it
/// was just removed for blocks the host no longer has.
pub fn sync_cluster_network(
    nets: &Networks,
    h: &ClusterHost,
) -> Result<Option<NetworkConfig>, NetError> {
    let Ok(net) = nets.get(CLUSTER_NETWORK) else {
        return Ok(None);
    };
    let have = net.ranges();
    // Blocks the host no longer has: it was removed from the cluster while its agent was
    // away and joined again with new ones. The network goes if nothing uses it (it is
    // made again from the host file); otherwise nothing may be allocated from it.
    let stale: Vec<ipnet::Ipv4Net> = have
        .iter()
        .map(|r| r.subnet)
        .filter(|s| !h.blocks.contains(s))
        .collect();
    if !stale.is_empty() {
        return match nets.remove(CLUSTER_NETWORK) {
            Ok(()) => Ok(None),
            Err(berth_net::Error::Store(berth_net::store::StoreError::InUse {
                owners, ..
            })) => Err(NetError::ClusterStale {
                host: h.name.clone(),
                stale: blocks_text(&stale),
                blocks: blocks_text(&h.blocks),
                owners,
            }),
            Err(e) => Err(e.into()),
        };
    }
    if h.blocks.iter().all(|b| have.iter().any(|r| r.subnet == *b)) {
        return Ok(Some(net));
    }
    let net = nets.add_ranges(CLUSTER_NETWORK, &h.blocks)?;
    if berth_net::link::exists(&net.bridge).map_err(berth_net::Error::from)? {
        berth_net::setup_network(&net)?;
    }
    Ok(Some(net))
}

/// The port specs of `-p`, plus the image's exposed ports on ephemeral host ports for `-P`.
pub fn port_specs(
    publish: &[PortMappingSpec],
    publish_all: bool,
    exposed: &[String],
) -> Vec<PortMappingSpec> {
    let mut out = publish.to_vec();
    if publish_all {
        for e in exposed {
            let (port, proto) = e.split_once('/').unwrap_or((e, "tcp"));
            let (Ok(port), Some(proto)) = (port.parse::<u16>(), parse_proto(proto)) else {
                continue;
            };
            if !out
                .iter()
                .any(|p| p.container_port == port && p.proto == proto)
            {
                out.push(PortMappingSpec {
                    host_ip: None,
                    host_ports: None,
                    container_port: port,
                    proto,
                });
            }
        }
    }
    out
}

fn parse_proto(s: &str) -> Option<Proto> {
    match s {
        "tcp" => Some(Proto::Tcp),
        "udp" => Some(Proto::Udp),
        _ => None,
    }
}

/// The kernel side of a network exists (after a reboot it doesn't): the bridge device is
/// the marker; when it is missing, bridge, sysctls and rules are (re)made.
pub fn ensure_kernel_state(net: &NetworkConfig) -> Result<(), NetError> {
    if !berth_net::link::exists(&net.bridge).map_err(berth_net::Error::from)? {
        berth_net::setup_network(net)?;
    }
    Ok(())
}

/// The container's /etc/hosts, /etc/resolv.conf and /etc/hostname, in `dir`.
pub struct Files {
    pub hosts: PathBuf,
    pub resolv: PathBuf,
    pub hostname: PathBuf,
}

impl Files {
    pub fn in_dir(dir: &Path) -> Files {
        Files {
            hosts: dir.join("hosts"),
            resolv: dir.join("resolv.conf"),
            hostname: dir.join("hostname"),
        }
    }
}

/// Writes the three files for a new container. `dns` empty: the host's usable nameservers.
pub fn write_files(
    files: &Files,
    c: &ContainerNet,
    peers: &[(String, Ipv4Addr)],
    dns: &[IpAddr],
    search: &[String],
    options: &[String],
) -> Result<(), NetError> {
    write_in_place(&files.hosts, hosts_text(c, peers).as_bytes())?;
    let ns = if dns.is_empty() {
        std::fs::read_to_string("/etc/resolv.conf")
            .map(|t| berth_net::files::usable_host_nameservers(&t))
            .unwrap_or_default()
    } else {
        dns.to_vec()
    };
    let search = if search.is_empty() && dns.is_empty() {
        host_search()
    } else {
        search.to_vec()
    };
    write_in_place(
        &files.resolv,
        berth_net::resolv_conf(&ns, &search, options).as_bytes(),
    )?;
    write_in_place(&files.hostname, format!("{}\n", c.hostname).as_bytes())?;
    Ok(())
}

fn host_search() -> Vec<String> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("search"))
        .flat_map(|r| r.split_whitespace().map(String::from).collect::<Vec<_>>())
        .collect()
}

/// /etc/hosts: berth-net's base (localhost, own name, --add-host) and the peers.
pub fn hosts_text(c: &ContainerNet, peers: &[(String, Ipv4Addr)]) -> String {
    let mut text = berth_net::hosts_file(&c.hostname, c.addr, &c.add_hosts);
    for (name, addr) in peers {
        if *name != c.name {
            text.push_str(&format!("{addr}\t{name}\n"));
        }
    }
    text
}

/// Rewrites a bind-mounted file keeping its inode (a rename would leave the container
/// with the old one): write from the start, then cut to length.
pub fn write_in_place(path: &Path, data: &[u8]) -> Result<(), NetError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(path)
        .map_err(io("opening", path))?;
    f.write_all(data).map_err(io("writing", path))?;
    f.set_len(data.len() as u64)
        .map_err(io("truncating", path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_default_and_from_environment() {
        let s = NetSettings::from_lookup(&|_| None).unwrap();
        assert_eq!(s.default_network, "bridge");
        assert_eq!(s.bridge, "berth0");
        assert_eq!(s.subnet.to_string(), "10.88.0.0/16");
        assert_eq!(s.nft_table, "berth");
        let s = NetSettings::from_lookup(&|k| match k {
            "BERTH_DEFAULT_NETWORK" => Some("none".into()),
            "BERTH_BRIDGE" => Some("bt0".into()),
            "BERTH_BRIDGE_SUBNET" => Some("10.201.0.0/24".into()),
            "BERTH_NFT_TABLE" => Some("berth_t1".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(
            (
                s.default_network.as_str(),
                s.bridge.as_str(),
                s.nft_table.as_str()
            ),
            ("none", "bt0", "berth_t1")
        );
        let e = NetSettings::from_lookup(&|k| (k == "BERTH_BRIDGE_SUBNET").then(|| "10.1".into()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("BERTH_BRIDGE_SUBNET") && e.contains("10.1"),
            "{e}"
        );
    }

    #[test]
    fn publish_all_adds_exposed_ports_once() {
        let p = berth_net::parse_port_spec("8080:80").unwrap();
        let specs = port_specs(
            &p,
            true,
            &["80/tcp".into(), "53/udp".into(), "x/tcp".into()],
        );
        let got: Vec<_> = specs
            .iter()
            .map(|s| (s.container_port, s.proto, s.host_ports))
            .collect();
        assert_eq!(
            got,
            vec![(80, Proto::Tcp, Some((8080, 8080))), (53, Proto::Udp, None)]
        );
        assert_eq!(port_specs(&p, false, &["53/udp".into()]).len(), 1);
    }

    #[test]
    fn hosts_list_peers_but_not_self() {
        let c = ContainerNet {
            network: "n".into(),
            addr: Some(Ipv4Addr::new(10, 89, 0, 2)),
            name: "web".into(),
            hostname: "abc".into(),
            add_hosts: vec![("db.local".into(), "10.0.0.9".parse().unwrap())],
            ..Default::default()
        };
        let t = hosts_text(
            &c,
            &[
                ("web".into(), Ipv4Addr::new(10, 89, 0, 2)),
                ("cache".into(), Ipv4Addr::new(10, 89, 0, 3)),
            ],
        );
        assert!(t.contains("10.89.0.2\tabc\n"), "{t}");
        assert!(t.contains("10.0.0.9\tdb.local\n"), "{t}");
        assert!(t.contains("10.89.0.3\tcache\n"), "{t}");
        assert!(!t.contains("\tweb\n"), "{t}");
    }

    #[test]
    fn the_cluster_network_follows_the_host_files_blocks() {
        let d = tempfile::tempdir().unwrap();
        let nets = Networks::open_with_table(&d.path().join("nets"), "t").unwrap();
        let b: Vec<ipnet::Ipv4Net> = ["10.244.0.0/29", "10.244.0.16/29"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let mut h = ClusterHost {
            name: "h1".into(),
            blocks: vec![b[0]],
            cidr: "10.244.0.0/16".parse().unwrap(),
            mtu: 1450,
            notify: None,
        };
        // Not made yet: nothing to follow.
        assert_eq!(sync_cluster_network(&nets, &h).unwrap(), None);
        let mut req = cluster_request(&h).unwrap();
        // A bridge that does not exist here, so no kernel state is touched.
        req.bridge = Some("bt-nonexist0".into());
        nets.create(&req).unwrap();
        let one = sync_cluster_network(&nets, &h).unwrap().unwrap();
        assert!(one.more_ranges.is_empty());
        h.blocks.push(b[1]);
        let two = sync_cluster_network(&nets, &h).unwrap().unwrap();
        assert_eq!(two.ranges().len(), 2);
        assert_eq!(
            two.range_of("10.244.0.18".parse().unwrap()).unwrap().subnet,
            b[1]
        );
        assert_eq!(nets.get(CLUSTER_NETWORK).unwrap(), two);
        assert_eq!(sync_cluster_network(&nets, &h).unwrap().unwrap(), two);

        let p = d.path().join("host.json");
        std::fs::write(&p, serde_json::to_vec(&h).unwrap()).unwrap();
        assert_eq!(read_cluster_host(&p).unwrap(), h);
        h.blocks.clear();
        std::fs::write(&p, serde_json::to_vec(&h).unwrap()).unwrap();
        let e = read_cluster_host(&p).unwrap_err().to_string();
        assert!(e.contains("lists no address block"), "{e}");
        let e = read_cluster_host(&d.path().join("none.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("has not joined a cluster"), "{e}");
    }

    #[test]
    fn blocks_the_host_lost_are_never_allocated_from() {
        let d = tempfile::tempdir().unwrap();
        // A table no one has (removing the network looks for its rules there).
        let table = format!("berth_ut_stale_{}", std::process::id());
        let nets = Networks::open_with_table(&d.path().join("nets"), &table).unwrap();
        let old: ipnet::Ipv4Net = "10.244.0.0/29".parse().unwrap();
        let new: ipnet::Ipv4Net = "10.244.0.16/29".parse().unwrap();
        let mut h = ClusterHost {
            name: "h1".into(),
            blocks: vec![old],
            cidr: "10.244.0.0/16".parse().unwrap(),
            mtu: 1450,
            notify: None,
        };
        let mut req = cluster_request(&h).unwrap();
        req.bridge = Some("bt-nonexist1".into());
        let net = nets.create(&req).unwrap();
        nets.ipam(&net).allocate("c0ffee", None).unwrap();
        // Removed from the cluster and joined again: another block.
        h.blocks = vec![new];
        let e = sync_cluster_network(&nets, &h).unwrap_err().to_string();
        assert!(
            e.contains("10.244.0.0/29") && e.contains("c0ffee") && e.contains("10.244.0.16/29"),
            "{e}"
        );
        assert!(nets.get(CLUSTER_NETWORK).is_ok(), "removed while in use");
        // Once nothing uses it, the network goes, to be made again from the host file.
        nets.ipam(&net).release("c0ffee").unwrap();
        assert_eq!(sync_cluster_network(&nets, &h).unwrap(), None);
        assert!(nets.get(CLUSTER_NETWORK).is_err());
    }

    #[test]
    fn rewriting_in_place_keeps_the_inode() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("hosts");
        write_in_place(&p, b"a long first version\n").unwrap();
        let ino = std::fs::metadata(&p).unwrap().ino();
        write_in_place(&p, b"short\n").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"short\n");
        assert_eq!(std::fs::metadata(&p).unwrap().ino(), ino);
    }
}
