//! Interfaces through netlink: the network's bridge, and each container's veth pair
//! (host end on the bridge, `eth0` inside the container's namespace).

use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::config::{NetworkConfig, Range};
use crate::netlink::{Netlink, VethSpec};

/// The loopback device's index in every network namespace.
const LOOPBACK_INDEX: u32 = 1;
/// The container's end of the veth pair.
pub const CONTAINER_IFNAME: &str = "eth0";

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{op}: {source}")]
    Op {
        op: String,
        #[source]
        source: io::Error,
    },
    #[error("bridge {bridge} of network {network} does not exist (the network is not set up)")]
    NoBridge { bridge: String, network: String },
    #[error("attaching address {addr}: it is in no subnet of network {network} ({subnets})")]
    OutsideNetwork {
        addr: Ipv4Addr,
        network: String,
        subnets: String,
    },
}

fn op(op: impl Into<String>) -> impl FnOnce(io::Error) -> LinkError {
    let op = op.into();
    move |source| LinkError::Op { op, source }
}

/// A container's place on a network, as `attach` made it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attachment {
    /// The host end of the veth pair: "veth" + 8 hex digits derived from the container id.
    pub host_ifname: String,
    pub addr: Ipv4Addr,
    pub mac: [u8; 6],
}

/// "veth" + the 32-bit FNV-1a hash of the container id in hex: stable (detach finds it
/// from the id alone), 12 characters, and independent of the id's alphabet.
pub fn host_ifname(container_id: &str) -> String {
    let hash = container_id.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    format!("veth{hash:08x}")
}

/// A locally administered MAC derived from the address, like docker's 02:42:a.b.c.d, so a
/// re-created container with the same address keeps its MAC (neighbour caches stay valid).
pub fn mac_for(addr: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = addr.octets();
    [0x02, 0x42, a, b, c, d]
}

/// Makes the bridge exist, carry every range's gateway address, have the network's MTU
/// and be up.
pub fn ensure_bridge(net: &NetworkConfig) -> Result<(), LinkError> {
    let mut nl = Netlink::open().map_err(op("opening a netlink socket"))?;
    let br = &net.bridge;
    // A bridge without a set MAC takes the lowest MAC of its ports, so it would change
    // as containers come and go, and containers' ARP entries for the gateway would go
    // stale (connections through the gateway stall for seconds). Fix it, derived from
    // the gateway like the containers' own.
    nl.create_bridge(br, net.mtu, mac_for(net.gateway))
        .map_err(op(format!("creating bridge {br} for network {}", net.name)))?;
    let index = nl
        .link_index(br)
        .map_err(op(format!("looking up bridge {br}")))?
        .ok_or_else(|| LinkError::NoBridge {
            bridge: br.clone(),
            network: net.name.clone(),
        })?;
    for r in net.ranges() {
        let plen = r.subnet.prefix_len();
        nl.add_address(index, r.gateway, plen).map_err(op(format!(
            "adding address {}/{plen} to bridge {br}",
            r.gateway
        )))?;
    }
    nl.set_up(index, Some(net.mtu))
        .map_err(op(format!("setting bridge {br} up with mtu {}", net.mtu)))
}

/// Whether a device named `name` exists in the caller's network namespace (asked over
/// netlink: /sys/class/net shows the namespace sysfs was mounted in, which differs under
/// `nsenter --net`).
pub fn exists(name: &str) -> Result<bool, LinkError> {
    let mut nl = Netlink::open().map_err(op("opening a netlink socket"))?;
    Ok(nl
        .link_index(name)
        .map_err(op(format!("looking up {name}")))?
        .is_some())
}

/// Deletes the bridge; nothing to do if it is gone.
pub fn delete_bridge(net: &NetworkConfig) -> Result<(), LinkError> {
    let mut nl = Netlink::open().map_err(op("opening a netlink socket"))?;
    nl.delete_link(&net.bridge).map(drop).map_err(op(format!(
        "deleting bridge {} of network {}",
        net.bridge, net.name
    )))
}

/// Plugs the container whose init is `container_pid` into the network: a veth pair with
/// the host end on the bridge, `eth0` inside with `addr`, lo up, default route via the
/// gateway. On failure the pair is removed again.
pub fn attach(
    net: &NetworkConfig,
    container_pid: i32,
    container_id: &str,
    addr: Ipv4Addr,
) -> Result<Attachment, LinkError> {
    let short: String = container_id.chars().take(12).collect();
    let range = net
        .range_of(addr)
        .ok_or_else(|| LinkError::OutsideNetwork {
            addr,
            network: net.name.clone(),
            subnets: net.subnets_text(),
        })?;
    let ns_path = format!("/proc/{container_pid}/ns/net");
    let netns = File::open(&ns_path).map_err(op(format!(
        "opening network namespace {ns_path} of container {short}"
    )))?;
    let mut host = Netlink::open().map_err(op("opening a netlink socket"))?;
    let bridge_index = host
        .link_index(&net.bridge)
        .map_err(op(format!("looking up bridge {}", net.bridge)))?
        .ok_or_else(|| LinkError::NoBridge {
            bridge: net.bridge.clone(),
            network: net.name.clone(),
        })?;
    let attachment = Attachment {
        host_ifname: host_ifname(container_id),
        addr,
        mac: mac_for(addr),
    };
    let veth = &attachment.host_ifname;
    host.create_veth(&VethSpec {
        host_name: veth,
        bridge_index,
        mtu: net.mtu,
        peer_name: CONTAINER_IFNAME,
        peer_mac: attachment.mac,
        peer_netns: &netns,
    })
    .map_err(op(format!("creating veth {veth} for container {short}")))?;

    match configure_inside(range, &netns, addr, &short) {
        Ok((mut inside, eth0)) => {
            let veth_index = host.link_index(veth).ok().flatten();
            wait_until_forwarding(&mut inside, eth0, &mut host, veth_index, veth);
            Ok(attachment)
        }
        Err(e) => {
            // Leave nothing behind: deleting the host end deletes the peer too.
            let _ = host.delete_link(veth);
            Err(e)
        }
    }
}

/// The kernel turns a new veth's carrier on asynchronously (linkwatch): until it has,
/// the device's queue drops packets and the bridge port is disabled, so a container
/// that starts sending at once would lose its first SYN and wait a 1 s retransmit.
/// Waits, briefly and bounded, until eth0 can transmit and the host end forwards
/// on the bridge; if that does not happen in time the kernel will still get there.
fn wait_until_forwarding(
    inside: &mut Netlink,
    eth0: u32,
    host: &mut Netlink,
    veth_index: Option<u32>,
    veth: &str,
) {
    const FORWARDING: &str = "3";
    let brport_state = format!("/sys/class/net/{veth}/brport/state");
    let deadline = Instant::now() + Duration::from_millis(200);
    loop {
        let host_ready = match std::fs::read_to_string(&brport_state) {
            Ok(s) => s.trim() == FORWARDING,
            // sysfs belongs to another network namespace (we run under `nsenter --net`):
            // judge the host end by its carrier, over netlink, rather than wait it out.
            Err(_) => veth_index.is_none_or(|i| host.is_transmitting(i).unwrap_or(true)),
        };
        if host_ready && inside.is_transmitting(eth0).unwrap_or(true) {
            return;
        }
        if Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// Configures lo and eth0 inside the container; returns the netlink socket there and
/// eth0's index.
fn configure_inside(
    range: Range,
    netns: &File,
    addr: Ipv4Addr,
    short: &str,
) -> Result<(Netlink, u32), LinkError> {
    let mut nl = Netlink::open_in_netns(netns).map_err(op(format!(
        "opening a netlink socket in the network namespace of container {short}"
    )))?;
    nl.set_up(LOOPBACK_INDEX, None)
        .map_err(op(format!("setting lo up in container {short}")))?;
    let index = nl
        .link_index(CONTAINER_IFNAME)
        .map_err(op(format!("looking up eth0 in container {short}")))?
        .ok_or_else(|| LinkError::Op {
            op: format!("looking up eth0 in container {short}"),
            source: io::Error::from(io::ErrorKind::NotFound),
        })?;
    let prefix = range.subnet.prefix_len();
    nl.add_address(index, addr, prefix).map_err(op(format!(
        "adding address {addr}/{prefix} to eth0 in container {short}"
    )))?;
    nl.set_up(index, None)
        .map_err(op(format!("setting eth0 up in container {short}")))?;
    nl.add_default_route(index, range.gateway)
        .map_err(op(format!(
            "adding default route via {} in container {short}",
            range.gateway
        )))?;
    Ok((nl, index))
}

/// Removes the container's veth pair if it still exists (it dies with the container's
/// namespace anyway).
pub fn detach(container_id: &str) -> Result<(), LinkError> {
    let veth = host_ifname(container_id);
    let mut nl = Netlink::open().map_err(op("opening a netlink socket"))?;
    nl.delete_link(&veth)
        .map(drop)
        .map_err(op(format!("deleting veth {veth}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_macs() {
        let a = host_ifname("0123456789abcdef");
        assert_eq!(a.len(), 12);
        assert!(a.starts_with("veth"));
        assert_eq!(a, host_ifname("0123456789abcdef"));
        assert_ne!(a, host_ifname("0123456789abcdee"));
        // FNV-1a of the empty string is the offset basis
        assert_eq!(host_ifname(""), "veth811c9dc5");
        assert_eq!(
            mac_for(Ipv4Addr::new(10, 88, 0, 2)),
            [0x02, 0x42, 10, 88, 0, 2]
        );
    }
}
