//! berth-net: container networking on one host, the way docker's bridge driver does it.
//!
//! The engine creates the container first (it gets a new network namespace), then,
//! before `start`, calls [`attach`] with the container init's pid: a veth pair whose host
//! end sits on the network's bridge and whose other end is the container's `eth0`. The
//! bridge, the gateway address, forwarding and NAT belong to the network
//! ([`setup_network`]); published ports are DNAT rules ([`add_port_mappings`]). When
//! the container's namespace dies the kernel deletes the veth pair, so teardown is
//! mostly automatic; every removal here is idempotent anyway.
//!
//! Everything is synchronous: netlink over a blocking socket for interfaces (a few
//! milliseconds per container, no process spawned), one `nft` batch per rule change.

pub mod config;
mod error;
pub mod files;
mod fsutil;
pub mod ipam;
pub mod link;
pub mod netlink;
pub mod nft;
pub mod ports;
pub mod store;
pub mod subnet;
pub mod sysctl;

use std::net::Ipv4Addr;

pub use config::{CreateRequest, NetworkConfig};
pub use error::{Error, Result};
pub use files::{hosts_file, resolv_conf};
pub use ipam::Ipam;
pub use link::{attach, detach, Attachment};
pub use nft::MappedPort;
pub use ports::{
    check_host_port_free, parse_port_spec, resolve_ports, PortMapping, PortMappingSpec, Proto,
};
pub use store::Networks;

/// Makes a network's kernel state exist, idempotently: the bridge (created if missing)
/// with the gateway address, MTU and up; IPv4 forwarding on; route_localnet on the bridge
/// (host → 127.0.0.1 → published port); and the network's nftables rules.
pub fn setup_network(net: &NetworkConfig) -> Result<()> {
    net.validate()?;
    link::ensure_bridge(net)?;
    sysctl::enable_ip_forward()?;
    sysctl::enable_route_localnet(&net.bridge)?;
    nft::apply_network(net)?;
    Ok(())
}

/// Removes a network's bridge and rules; nothing to do for what is already gone.
pub fn teardown_network(net: &NetworkConfig) -> Result<()> {
    nft::remove_network(net)?;
    link::delete_bridge(net)?;
    Ok(())
}

/// Publishes a container's ports on the host (DNAT to `addr`), replacing any it had.
/// Resolve host ports first with [`resolve_ports`].
pub fn add_port_mappings(
    net: &NetworkConfig,
    container_id: &str,
    addr: Ipv4Addr,
    ports: &[PortMapping],
) -> Result<()> {
    Ok(nft::add_ports(net, container_id, addr, ports)?)
}

/// Unpublishes a container's ports; idempotent.
pub fn remove_port_mappings(net: &NetworkConfig, container_id: &str) -> Result<()> {
    Ok(nft::remove_ports(&net.nft_table, container_id)?)
}

/// Decides the host ports of `specs` (`-p`/`-P`) for a container on `net`: fixed ports
/// must be free on the host and not published by another container, ephemeral ones are
/// picked. Call before the container starts, so a conflict fails `run` early.
pub fn resolve_host_ports(
    net: &NetworkConfig,
    specs: &[PortMappingSpec],
) -> Result<Vec<PortMapping>> {
    let published = published_ports(net)?;
    let taken = |ip: Option<Ipv4Addr>, port: u16, proto: Proto| {
        published.iter().any(|p| {
            let m = &p.mapping;
            m.host_port == port
                && m.proto == proto
                && (ip.is_none() || m.host_ip.is_none() || m.host_ip == ip)
        })
    };
    Ok(resolve_ports(specs, &taken)?)
}

/// Host ports currently published in the network's table, for `resolve_ports`' `taken`.
pub fn published_ports(net: &NetworkConfig) -> Result<Vec<MappedPort>> {
    Ok(nft::mapped_ports(&net.nft_table)?)
}
