//! What the controller stores, and where: the cluster's configuration, hosts with their
//! address blocks, and containers with their cluster addresses. Every record is JSON
//! under a fixed key; revisions come from the store, never from the records.
//!
//! ```text
//! /cluster                 Cluster      address space, block size, VXLAN id and port
//! /hosts/<name>            Host         underlay address, VTEP MAC, blocks, state
//! /blocks/<a.b.c.d-len>    BlockOwner   which host holds the block (unique by key)
//! /containers/<id>         Container    host, cluster address, name
//! ```

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub const CLUSTER_KEY: &str = "/cluster";
pub const HOSTS: &str = "/hosts/";
pub const BLOCKS: &str = "/blocks/";
pub const CONTAINERS: &str = "/containers/";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ModelError {
    #[error("invalid host name {0:?}: use 1-63 letters, digits, '-' or '.', starting with a letter or digit")]
    HostName(String),
    #[error("invalid container id {0:?}: use 1-128 letters, digits, '_', '-' or '.'")]
    ContainerId(String),
    #[error("cluster address space {cidr}: blocks of /{prefix} don't fit (need a prefix between /{} and /30)", cidr.prefix_len())]
    BlockSize { cidr: Ipv4Net, prefix: u8 },
    #[error(
        "cluster address space {cidr} is exhausted: all {count} blocks of /{prefix} are taken"
    )]
    Exhausted {
        cidr: Ipv4Net,
        prefix: u8,
        count: u64,
    },
    #[error("invalid VTEP MAC {0:?}: expected six hex bytes like 0a:58:0a:c7:00:02")]
    Mac(String),
}

/// The cluster as `controller init` made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    /// Every container address comes from here (10.244.0.0/16 by default).
    pub cidr: Ipv4Net,
    /// Hosts get blocks of this prefix length (/24 by default: 253 containers a block).
    pub block_prefix: u8,
    pub vni: u32,
    pub vxlan_port: u16,
    /// A host that has not sent a heartbeat for this long is marked down.
    pub heartbeat_timeout_ms: u64,
}

impl Cluster {
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.block_prefix < self.cidr.prefix_len() || self.block_prefix > 30 {
            return Err(ModelError::BlockSize {
                cidr: self.cidr,
                prefix: self.block_prefix,
            });
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostState {
    Up,
    Down,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    pub name: String,
    pub underlay_ip: Ipv4Addr,
    /// "0a:58:..." as agents read it from their VXLAN device.
    pub vtep_mac: String,
    pub blocks: Vec<Ipv4Net>,
    pub state: HostState,
    /// Unix milliseconds of the last heartbeat the controller accepted.
    pub last_heartbeat_ms: u64,
    /// The store revision the host's agent last reported as applied to its kernel.
    pub applied_revision: u64,
}

impl Host {
    /// Whether `other` programs the overlay differently: heartbeats rewrite the record
    /// (time, applied revision) every second or so, and those changes must not make every
    /// agent reconcile.
    pub fn same_route(&self, other: &Host) -> bool {
        self.underlay_ip == other.underlay_ip
            && self.vtep_mac == other.vtep_mac
            && self.blocks == other.blocks
            && self.state == other.state
    }
}

/// Records `new` as host `name`'s record in `hosts` (None: the host is gone) and says
/// whether that programs the overlay differently; a heartbeat does not
/// ([`Host::same_route`]). Shared by the agent's map and the controller's
/// `map_revision`, so both count the same changes.
pub fn record_host(hosts: &mut BTreeMap<String, Host>, name: &str, new: Option<Host>) -> bool {
    match new {
        Some(h) => {
            let changed = hosts.get(name).is_none_or(|old| !old.same_route(&h));
            hosts.insert(name.to_string(), h);
            changed
        }
        None => hosts.remove(name).is_some(),
    }
}

/// Owner of a block; the key (`/blocks/10.244.3.0-24`) makes a block unique.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockOwner {
    pub host: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    pub id: String,
    pub host: String,
    pub addr: Ipv4Addr,
    #[serde(default)]
    pub name: String,
}

pub fn host_key(name: &str) -> String {
    format!("{HOSTS}{name}")
}

pub fn container_key(id: &str) -> String {
    format!("{CONTAINERS}{id}")
}

pub fn block_key(block: Ipv4Net) -> String {
    format!("{BLOCKS}{}-{}", block.network(), block.prefix_len())
}

/// The block a `/blocks/` key names.
pub fn block_of_key(key: &str) -> Option<Ipv4Net> {
    let (addr, len) = key.strip_prefix(BLOCKS)?.split_once('-')?;
    Ipv4Net::new(addr.parse().ok()?, len.parse().ok()?).ok()
}

pub fn validate_host_name(name: &str) -> Result<(), ModelError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(ModelError::HostName(name.to_string()))
    }
}

pub fn validate_container_id(id: &str) -> Result<(), ModelError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ModelError::ContainerId(id.to_string()))
    }
}

pub fn parse_mac(s: &str) -> Result<[u8; 6], ModelError> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(ModelError::Mac(s.to_string()));
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return Err(ModelError::Mac(s.to_string()));
        }
        *m = u8::from_str_radix(p, 16).map_err(|_| ModelError::Mac(s.to_string()))?;
    }
    Ok(mac)
}

/// The first block of `cluster`'s size not in `taken`, lowest address first (so a
/// released block is reused before the space grows: routes stay few and predictable).
pub fn next_free_block(cluster: &Cluster, taken: &[Ipv4Net]) -> Result<Ipv4Net, ModelError> {
    cluster.validate()?;
    let subnets =
        cluster
            .cidr
            .subnets(cluster.block_prefix)
            .map_err(|_| ModelError::BlockSize {
                cidr: cluster.cidr,
                prefix: cluster.block_prefix,
            })?;
    let mut count = 0u64;
    for b in subnets {
        count += 1;
        if !taken
            .iter()
            .any(|t| t.contains(&b.network()) || b.contains(&t.network()))
        {
            return Ok(b);
        }
    }
    Err(ModelError::Exhausted {
        cidr: cluster.cidr,
        prefix: cluster.block_prefix,
        count,
    })
}

/// Addresses a block hands to containers: all but the network address (the VTEP's, as
/// in flannel), the gateway `.1` (the host's bridge) and broadcast.
pub fn container_addresses(block: Ipv4Net) -> impl Iterator<Item = Ipv4Addr> {
    let net = u32::from(block.network());
    let bcast = u32::from(block.broadcast());
    (net.saturating_add(2)..bcast).map(Ipv4Addr::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(cidr: &str, prefix: u8) -> Cluster {
        Cluster {
            cidr: cidr.parse().unwrap(),
            block_prefix: prefix,
            vni: 1,
            vxlan_port: 4789,
            heartbeat_timeout_ms: 10_000,
        }
    }

    #[test]
    fn blocks_are_handed_out_lowest_first_and_reused() {
        let c = cluster("10.244.0.0/16", 24);
        let b0 = next_free_block(&c, &[]).unwrap();
        assert_eq!(b0.to_string(), "10.244.0.0/24");
        let b1 = next_free_block(&c, &[b0]).unwrap();
        assert_eq!(b1.to_string(), "10.244.1.0/24");
        // b0 released: it comes back first.
        assert_eq!(next_free_block(&c, &[b1]).unwrap(), b0);
    }

    #[test]
    fn exhaustion_and_bad_sizes_are_clear() {
        let c = cluster("10.244.0.0/23", 24);
        let all: Vec<Ipv4Net> = vec![
            "10.244.0.0/24".parse().unwrap(),
            "10.244.1.0/24".parse().unwrap(),
        ];
        let e = next_free_block(&c, &all).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cluster address space 10.244.0.0/23 is exhausted: all 2 blocks of /24 are taken"
        );
        assert!(matches!(
            next_free_block(&cluster("10.244.0.0/16", 8), &[]),
            Err(ModelError::BlockSize { .. })
        ));
        assert!(matches!(
            next_free_block(&cluster("10.244.0.0/16", 31), &[]),
            Err(ModelError::BlockSize { .. })
        ));
    }

    #[test]
    fn overlapping_taken_ranges_are_skipped() {
        // A /23 taken (e.g. configured by hand) covers two /24s.
        let c = cluster("10.244.0.0/16", 24);
        let taken = vec!["10.244.0.0/23".parse().unwrap()];
        assert_eq!(
            next_free_block(&c, &taken).unwrap().to_string(),
            "10.244.2.0/24"
        );
    }

    #[test]
    fn keys_round_trip() {
        let b: Ipv4Net = "10.244.3.0/24".parse().unwrap();
        assert_eq!(block_key(b), "/blocks/10.244.3.0-24");
        assert_eq!(block_of_key(&block_key(b)), Some(b));
        assert_eq!(block_of_key("/blocks/junk"), None);
        assert_eq!(host_key("a"), "/hosts/a");
        assert_eq!(container_key("c1"), "/containers/c1");
    }

    #[test]
    fn heartbeats_do_not_change_the_route_but_state_and_blocks_do() {
        let h = Host {
            name: "h".into(),
            underlay_ip: "192.0.2.1".parse().unwrap(),
            vtep_mac: "0a:58:c0:00:02:01".into(),
            blocks: vec!["10.244.0.0/24".parse().unwrap()],
            state: HostState::Up,
            last_heartbeat_ms: 1,
            applied_revision: 1,
        };
        let mut beat = h.clone();
        beat.last_heartbeat_ms = 2;
        beat.applied_revision = 9;
        assert!(h.same_route(&beat));
        let mut down = h.clone();
        down.state = HostState::Down;
        assert!(!h.same_route(&down));
        let mut grown = h.clone();
        grown.blocks.push("10.244.1.0/24".parse().unwrap());
        assert!(!h.same_route(&grown));
        let mut moved = h.clone();
        moved.underlay_ip = "192.0.2.2".parse().unwrap();
        assert!(!h.same_route(&moved));
    }

    #[test]
    fn names_ids_and_macs() {
        assert!(validate_host_name("node-1.example").is_ok());
        for bad in ["", "-a", "a/b", "a b", &"a".repeat(64)] {
            assert!(validate_host_name(bad).is_err(), "{bad}");
        }
        assert!(validate_container_id("abc_1-2.3").is_ok());
        assert!(validate_container_id("../x").is_err());
        assert_eq!(
            parse_mac("0a:58:0a:c7:00:02").unwrap(),
            [0x0a, 0x58, 0x0a, 0xc7, 0, 2]
        );
        assert!(parse_mac("0a:58:0a:c7:00").is_err());
        assert!(parse_mac("0a:58:0a:c7:00:zz").is_err());
    }

    #[test]
    fn container_addresses_skip_vtep_gateway_and_broadcast() {
        let b: Ipv4Net = "10.244.3.0/29".parse().unwrap();
        let a: Vec<String> = container_addresses(b).map(|a| a.to_string()).collect();
        assert_eq!(
            a,
            [
                "10.244.3.2",
                "10.244.3.3",
                "10.244.3.4",
                "10.244.3.5",
                "10.244.3.6"
            ]
        );
    }
}
