//! The overlay data path: flannel's vxlan backend in Rust.
//!
//! One VXLAN device per host carries the container blocks of every other host. For each
//! remote host that is up, three kinds of kernel entries (see [`plan`]) send a packet for its blocks
//! through the device, which wraps the inner frame in UDP to the remote host's underlay
//! address; the remote device unwraps it and the host routes it to its container bridge.
//! nftables lets the VXLAN port hear only from the map's hosts ([`nft`]).
//!
//! The reconciler is level-triggered: [`Overlay::reconcile`] reads the kernel's actual
//! entries, plans the difference to the desired map and applies it, so it is idempotent
//! (a pass over a correct state writes nothing) and restartable (a new process finds the
//! device and entries and adopts them; nothing is torn down on start or exit, so traffic
//! flows while the agent or the controller is away).
//!
//! Everything here acts in the network namespace of the calling thread.

pub mod checksum;
pub mod config;
pub mod ethtool;
pub mod kernel;
mod netlink;
pub mod nft;
pub mod plan;
pub mod vxlan;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

pub use checksum::ChecksumOffload;
pub use config::{vtep_mac, ClusterSpace, ConfigError, OverlayConfig, RemoteHost, TxChecksum};
pub use kernel::{apply, read_actual, KernelError};
pub use plan::{plan, select, Actual, FdbEntry, NeighEntry, Op, RouteEntry, Skipped};
pub use vxlan::{delete_device, ensure_device, ensure_device_counted, DeviceError, Vtep};

/// The overlay module's error: each concern's own, folded.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Nft(#[from] nft::NftError),
}

/// What one reconcile pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The netlink changes made (empty when the kernel already matched).
    pub ops: Vec<Op>,
    /// Changes the device needed (re-created, MTU, address, offload, up): 0 normally.
    pub device_changes: usize,
    /// Whether the nftables table or its allowed senders changed.
    pub nft_changed: bool,
    /// Hosts of the map left out because they conflict.
    pub skipped: Vec<Skipped>,
}

impl Report {
    /// Number of kernel writes: device changes, netlink ops, and the nft batch if any.
    pub fn changes(&self) -> usize {
        self.device_changes + self.ops.len() + usize::from(self.nft_changed)
    }
}

/// This host's overlay: the device, and the reconciler that programs it.
#[derive(Debug, Clone)]
pub struct Overlay {
    config: OverlayConfig,
    vtep: Vtep,
}

impl Overlay {
    /// Ensures the device, IP forwarding and the nftables table (keeping the allowed
    /// senders it already has); returns the overlay and how many changes that took
    /// (0 on a restart over a correct host). Existing FDB, neighbour and route entries are
    /// left for the first reconcile to judge, so a restart does not interrupt traffic.
    pub fn start(config: OverlayConfig) -> Result<(Overlay, usize), OverlayError> {
        let (vtep, mut changes) = vxlan::ensure_device_counted(&config)?;
        kernel::enable_ip_forward()?;
        if nft::ensure_table(&config)? {
            changes += 1;
        }
        Ok((Overlay { config, vtep }, changes))
    }

    pub fn vtep(&self) -> &Vtep {
        &self.vtep
    }

    pub fn config(&self) -> &OverlayConfig {
        &self.config
    }

    /// One level-triggered pass: programs exactly the up, non-conflicting hosts of
    /// `hosts` (this host itself may be listed; it is skipped) and withdraws everything
    /// else of ours. Safe to call as often as wanted. The device itself is checked too
    /// (re-created if someone deleted it), so a periodic pass repairs any drift.
    pub fn reconcile(&mut self, hosts: &[RemoteHost]) -> Result<Report, OverlayError> {
        let (vtep, device_changes) = vxlan::ensure_device_counted(&self.config)?;
        self.vtep = vtep;
        // This host's blocks: the configured one and whatever else the map gives it.
        let mut local_blocks = vec![self.config.local_block];
        local_blocks.extend(
            hosts
                .iter()
                .filter(|h| h.underlay_ip == self.config.underlay_ip)
                .flat_map(|h| h.blocks.iter().copied()),
        );
        let (chosen, skipped) =
            select(&local_blocks, self.config.underlay_ip, self.vtep.mac, hosts);
        // Senders first: a new host's packets are accepted before routes send it any,
        // and a withdrawn host's are refused together with its routes.
        let senders: BTreeSet<Ipv4Addr> = chosen.iter().map(|h| h.underlay_ip).collect();
        let nft_changed = nft::sync_hosts(&self.config, &senders)?;
        let actual = read_actual(&self.vtep)?;
        let ops = plan(&chosen, &actual);
        apply(&self.vtep, &ops)?;
        Ok(Report {
            ops,
            device_changes,
            nft_changed,
            skipped,
        })
    }

    /// Removes everything the overlay made on this host: the device (with its entries)
    /// and the nftables table.
    pub fn teardown(config: &OverlayConfig) -> Result<(), OverlayError> {
        delete_device(&config.device)?;
        nft::delete_table(&config.nft_table)?;
        Ok(())
    }
}
