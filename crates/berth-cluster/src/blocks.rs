//! This host's address blocks, grown before they fill (issue 5 item 3).
//!
//! The agent watches how many cluster addresses are left across its blocks (the
//! engine's allocator file for the `cluster` network, counted against the blocks), and
//! when fewer than a quarter of one block are free it asks the controller for another
//! (`POST /v1/hosts/{name}/blocks`). The new block is then recorded for the engine: the
//! host file is rewritten atomically, and the engine's cluster network gets the block as
//! another range (the bridge gets its gateway address). Asking early means `berth run`
//! normally never sees a full host; if it does, its error names the host and its blocks.
//!
//! A refusal (the cluster's address space is exhausted) or an unreachable controller is
//! logged and retried later, with backoff; nothing local changes until a block has been
//! granted. Blocks are never taken back from a live host: a host that shrinks would
//! have to drain the block's containers first, which is not done here.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use berth_engine::network::ClusterHost;
use ipnet::Ipv4Net;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum BlocksError {
    #[error("writing the cluster host file {path}: {source}")]
    HostFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("adding blocks {blocks} to the engine's cluster network: {source}")]
    Network {
        blocks: String,
        source: berth_engine::network::NetError,
    },
    #[error("reading the engine's cluster addresses: {0}")]
    Usage(String),
}

/// Addresses of a block that containers get: all but network, gateway (`.1`) and
/// broadcast, as [`crate::model::container_addresses`] counts them.
fn usable(block: Ipv4Net) -> u64 {
    crate::model::container_addresses(block).count() as u64
}

fn is_container_address(block: Ipv4Net, a: Ipv4Addr) -> bool {
    let (a, net) = (u32::from(a), u32::from(block.network()));
    block.contains(&Ipv4Addr::from(a)) && a >= net + 2 && a < u32::from(block.broadcast())
}

/// Free addresses below this ask for another block: a quarter of the newest block (at
/// least one), so at the default /24 a new block comes with 64 still free, and at a tiny
/// /29 (5 addresses) with 2 left.
pub fn low_water(blocks: &[Ipv4Net]) -> u64 {
    blocks.last().map_or(1, |b| usable(*b).div_ceil(4).max(1))
}

/// Free addresses across `blocks`, given the addresses in use on this host.
pub fn free(blocks: &[Ipv4Net], in_use: &[Ipv4Addr]) -> u64 {
    let capacity: u64 = blocks.iter().map(|b| usable(*b)).sum();
    let used = in_use
        .iter()
        .filter(|a| blocks.iter().any(|b| is_container_address(*b, **a)))
        .count() as u64;
    capacity.saturating_sub(used)
}

/// Whether the host should ask for another block now.
pub fn needs_block(blocks: &[Ipv4Net], in_use: &[Ipv4Addr]) -> bool {
    !blocks.is_empty() && free(blocks, in_use) < low_water(blocks)
}

/// The addresses the engine's cluster network has handed out (none when it does not
/// exist yet).
pub fn addresses_in_use(networks_dir: &Path) -> Result<Vec<Ipv4Addr>, BlocksError> {
    let usage = |e: berth_net::Error| BlocksError::Usage(e.to_string());
    let nets = berth_net::Networks::open(networks_dir).map_err(usage)?;
    let Ok(net) = nets.get(berth_engine::network::CLUSTER_NETWORK) else {
        return Ok(Vec::new());
    };
    let allocs: BTreeMap<Ipv4Addr, String> =
        nets.ipam(&net).allocations().map_err(|e| usage(e.into()))?;
    Ok(allocs.into_keys().collect())
}

/// Writes the host file atomically (a reader sees the old or the new one, never part).
pub fn write_host_file(path: &Path, h: &ClusterHost) -> Result<(), BlocksError> {
    let io = |source| BlocksError::HostFile {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let data = serde_json::to_vec_pretty(h)
        .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Records `h` for the engine: the host file, then the engine's cluster network (if it
/// exists yet) with every block and the bridge addresses.
pub fn record(host_file: &Path, networks_dir: &Path, h: &ClusterHost) -> Result<(), BlocksError> {
    write_host_file(host_file, h)?;
    let net_err = |source| BlocksError::Network {
        blocks: blocks_text(&h.blocks),
        source,
    };
    let from_net = |e: berth_net::Error| net_err(berth_engine::network::NetError::from(e));
    let nets = berth_net::Networks::open(networks_dir).map_err(from_net)?;
    let Some(net) = berth_engine::network::sync_cluster_network(&nets, h).map_err(net_err)? else {
        return Ok(());
    };
    // Again even when nothing was added: an earlier attempt may have stored the range but
    // failed before its gateway reached the bridge. Idempotent, and rare (start, growth).
    let bridge = berth_net::link::exists(&net.bridge).map_err(|e| from_net(e.into()))?;
    if bridge {
        berth_net::setup_network(&net).map_err(from_net)?;
    }
    Ok(())
}

pub use berth_engine::network::blocks_text;

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn addrs(block: &str, n: usize) -> Vec<Ipv4Addr> {
        crate::model::container_addresses(net(block))
            .take(n)
            .collect()
    }

    #[test]
    fn asks_when_less_than_a_quarter_of_a_block_is_free() {
        let b = [net("10.244.0.0/29")];
        assert_eq!(low_water(&b), 2);
        assert!(!needs_block(&b, &addrs("10.244.0.0/29", 3)));
        assert!(needs_block(&b, &addrs("10.244.0.0/29", 4)));
        assert!(needs_block(&b, &addrs("10.244.0.0/29", 5)));
        // With the second block there is room again.
        let two = [net("10.244.0.0/29"), net("10.244.0.16/29")];
        assert_eq!(free(&two, &addrs("10.244.0.0/29", 5)), 5);
        assert!(!needs_block(&two, &addrs("10.244.0.0/29", 5)));

        let big = [net("10.244.3.0/24")];
        assert_eq!(low_water(&big), 64);
        assert!(!needs_block(&big, &addrs("10.244.3.0/24", 189)));
        assert!(needs_block(&big, &addrs("10.244.3.0/24", 190)));
        assert!(!needs_block(&[], &[]));
    }

    #[test]
    fn addresses_outside_the_blocks_do_not_count() {
        let b = [net("10.244.0.0/29")];
        let mut used = addrs("10.244.9.0/29", 5);
        used.push(Ipv4Addr::new(10, 244, 0, 1)); // the gateway: never a container's
        assert_eq!(free(&b, &used), 5);
    }

    #[test]
    fn the_host_file_is_replaced_whole() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/host.json");
        let mut h = ClusterHost {
            name: "h1".into(),
            blocks: vec![net("10.244.0.0/29")],
            cidr: net("10.244.0.0/16"),
            mtu: 1450,
            notify: None,
        };
        write_host_file(&p, &h).unwrap();
        h.blocks.push(net("10.244.0.16/29"));
        write_host_file(&p, &h).unwrap();
        let back: ClusterHost = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(back, h);
        assert!(!p.with_extension("tmp").exists());
        // The engine's network does not exist yet: recording is just the file.
        record(&p, &d.path().join("nets"), &h).unwrap();
    }
}
