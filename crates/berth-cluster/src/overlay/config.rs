//! What the overlay is told: this host's side (device, VNI, port, underlay address, block)
//! and the remote hosts it should reach. Pure data plus its validation.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// The IANA VXLAN port; flannel and the kernel's own default (8472, Linux's historical
/// one) differ, so it is spelled out.
pub const DEFAULT_PORT: u16 = 4789;
/// flannel's default VNI.
pub const DEFAULT_VNI: u32 = 1;
pub const DEFAULT_DEVICE: &str = "berth.vx";
pub const DEFAULT_NFT_TABLE: &str = "berth_overlay";
/// Outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14) headers.
pub const VXLAN_OVERHEAD: u32 = 50;

/// Linux's IFNAMSIZ minus the terminating NUL.
const MAX_IFNAME: usize = 15;
/// VNIs are 24 bits on the wire.
const MAX_VNI: u32 = (1 << 24) - 1;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "invalid overlay device name {0:?}: must be 1 to 15 characters, no '/', ':' or whitespace"
    )]
    DeviceName(String),
    #[error("invalid VNI {0}: must be 1 to 16777215")]
    Vni(u32),
    #[error("invalid VXLAN port 0")]
    Port,
    #[error("invalid local block {0}: must be an IPv4 network of at most /30")]
    Block(Ipv4Net),
    #[error("invalid mtu {0} for the overlay device: must be 68 to 65535")]
    Mtu(u32),
    #[error("invalid nftables table name {0:?}: must be 1 to 64 characters of [a-zA-Z0-9_]")]
    NftTable(String),
    #[error("invalid underlay address {0}: must be a unicast host address")]
    UnderlayIp(Ipv4Addr),
}

/// This host's side of the overlay.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OverlayConfig {
    /// Name of the VXLAN device (flannel's flannel.1).
    pub device: String,
    pub vni: u32,
    /// UDP destination port of the encapsulated traffic (and the one we listen on).
    pub port: u16,
    /// This host's address on the underlay: the outer source of encapsulated packets.
    pub underlay_ip: Ipv4Addr,
    /// The underlay interface; when None, the interface that carries `underlay_ip`.
    pub underlay_dev: Option<String>,
    /// This host's container block (e.g. 10.244.3.0/24); its `.0` goes on the device.
    pub local_block: Ipv4Net,
    /// When None: the underlay interface's MTU minus [`VXLAN_OVERHEAD`].
    pub mtu: Option<u32>,
    /// Our own nftables table (family inet); nothing else is ever touched.
    pub nft_table: String,
    /// Who computes the inner packets' checksums (see [`TxChecksum`]).
    #[serde(default)]
    pub tx_checksum: TxChecksum,
    /// The cluster's address space: packets between two containers in it are left
    /// untracked (see [`super::nft`]); None tracks everything.
    #[serde(default)]
    pub cluster: Option<ClusterSpace>,
}

/// The cluster's address space and its hosts' block size. The first two addresses of
/// every block are hosts' own (`.0` on the VXLAN device, `.1` the bridge's gateway);
/// the rest are containers'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClusterSpace {
    pub cidr: Ipv4Net,
    pub block_prefix: u8,
}

impl ClusterSpace {
    /// The host part of an address in a block, as a mask (0.0.0.255 for /24 blocks).
    pub fn host_mask(&self) -> Ipv4Addr {
        let bits = 32 - u32::from(self.block_prefix.min(32));
        Ipv4Addr::from(if bits == 32 {
            u32::MAX
        } else {
            (1u32 << bits) - 1
        })
    }
}

/// The UDP-checksum-offload pitfall: with TX checksum offload on the VXLAN device, the
/// inner TCP/UDP checksum is left for the underlay NIC to fill in after encapsulation,
/// and behind NAT or on some (virtual) NICs it arrives wrong and the far end drops the
/// packets (ICMP works, TCP does not). Software checksums avoid it at a real cost: the
/// kernel then also stops segmentation offload on the device, and in the namespace test
/// topology a single TCP stream drops from about 14 to about 2.5 Gbit/s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TxChecksum {
    /// `ethtool -K <dev> tx-checksum-ip-generic off`, the known workaround (kops applies
    /// it to flannel.1 unconditionally): safe on every underlay. The library's default;
    /// the agent picks per kernel ([`super::checksum::ChecksumOffload`]).
    #[default]
    Software,
    /// Leave the offload on (the kernel's default): for underlays known to handle it,
    /// such as veth/bridge or NICs with working VXLAN checksum offload.
    Offload,
}

impl OverlayConfig {
    /// The defaults for everything but the two facts only the caller knows.
    pub fn new(underlay_ip: Ipv4Addr, local_block: Ipv4Net) -> OverlayConfig {
        OverlayConfig {
            device: DEFAULT_DEVICE.to_string(),
            vni: DEFAULT_VNI,
            port: DEFAULT_PORT,
            underlay_ip,
            underlay_dev: None,
            local_block: local_block.trunc(),
            mtu: None,
            nft_table: DEFAULT_NFT_TABLE.to_string(),
            tx_checksum: TxChecksum::Software,
            cluster: None,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let name_ok = !self.device.is_empty()
            && self.device.len() <= MAX_IFNAME
            && self.device != "."
            && self.device != ".."
            && !self
                .device
                .chars()
                .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
        if !name_ok {
            return Err(ConfigError::DeviceName(self.device.clone()));
        }
        if self.vni == 0 || self.vni > MAX_VNI {
            return Err(ConfigError::Vni(self.vni));
        }
        if self.port == 0 {
            return Err(ConfigError::Port);
        }
        // The block's .0 is the device address and the neighbour the others route via, so
        // it must be a real network with room for a gateway and containers.
        if self.local_block.prefix_len() > 30 || self.local_block != self.local_block.trunc() {
            return Err(ConfigError::Block(self.local_block));
        }
        if let Some(mtu) = self.mtu {
            if !(68..=65535).contains(&mtu) {
                return Err(ConfigError::Mtu(mtu));
            }
        }
        let table_ok = !self.nft_table.is_empty()
            && self.nft_table.len() <= 64
            && self
                .nft_table
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !table_ok {
            return Err(ConfigError::NftTable(self.nft_table.clone()));
        }
        let ip = self.underlay_ip;
        if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() || ip.is_loopback() {
            return Err(ConfigError::UnderlayIp(ip));
        }
        Ok(())
    }

    /// The address the device carries and remote hosts route our block via.
    pub fn device_addr(&self) -> Ipv4Addr {
        self.local_block.network()
    }
}

/// Another host, as the cluster's map describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RemoteHost {
    pub name: String,
    pub underlay_ip: Ipv4Addr,
    pub vtep_mac: [u8; 6],
    /// The host's container blocks in the order the controller gave them. The first is
    /// its primary: its `.0` is the host's VTEP address, the one next hop every block of
    /// the host is routed via (so a new block is one new route, nothing else).
    pub blocks: Vec<Ipv4Net>,
    /// A host marked down is withdrawn: no route, neighbour, FDB entry or nft allowance.
    pub up: bool,
}

impl RemoteHost {
    /// The next hop of all the host's blocks: the primary block's `.0` (its VTEP
    /// address); None for a host without blocks.
    pub fn next_hop(&self) -> Option<Ipv4Addr> {
        self.blocks.first().map(|b| b.network())
    }
}

/// A host's VTEP MAC, derived from its underlay address (0a:58 + the four octets, the
/// locally administered unicast prefix Kubernetes uses for derived MACs): a restarted
/// agent or a re-created device gets the same MAC, so the other hosts' neighbour entries
/// stay right and nothing has to be reprogrammed.
pub fn vtep_mac(underlay_ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = underlay_ip.octets();
    [0x0a, 0x58, a, b, c, d]
}

/// "0a:58:0a:c7:01:02".
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> OverlayConfig {
        OverlayConfig::new(
            Ipv4Addr::new(10, 199, 1, 2),
            "10.244.3.0/24".parse().unwrap(),
        )
    }

    #[test]
    fn defaults_are_valid() {
        let c = cfg();
        c.validate().unwrap();
        assert_eq!(c.port, 4789);
        assert_eq!(c.vni, 1);
        assert_eq!(c.device_addr(), Ipv4Addr::new(10, 244, 3, 0));
    }

    #[test]
    fn rejects_bad_values() {
        let mut c = cfg();
        c.device = "sixteen-chars-xx".into();
        assert!(matches!(c.validate(), Err(ConfigError::DeviceName(_))));
        let mut c = cfg();
        c.device = "a/b".into();
        assert!(c.validate().is_err());
        let mut c = cfg();
        c.vni = 1 << 24;
        assert!(matches!(c.validate(), Err(ConfigError::Vni(_))));
        let mut c = cfg();
        c.port = 0;
        assert!(c.validate().is_err());
        let mut c = cfg();
        c.local_block = "10.244.3.5/24".parse().unwrap();
        assert!(matches!(c.validate(), Err(ConfigError::Block(_))));
        let mut c = cfg();
        c.local_block = "10.244.3.4/31".parse().unwrap();
        assert!(c.validate().is_err());
        let mut c = cfg();
        c.nft_table = "inet x; flush ruleset".into();
        assert!(matches!(c.validate(), Err(ConfigError::NftTable(_))));
        let mut c = cfg();
        c.mtu = Some(20);
        assert!(c.validate().is_err());
        let mut c = cfg();
        c.underlay_ip = Ipv4Addr::LOCALHOST;
        assert!(c.validate().is_err());
    }

    #[test]
    fn vtep_mac_is_stable_and_local_unicast() {
        let mac = vtep_mac(Ipv4Addr::new(10, 199, 1, 2));
        assert_eq!(mac, [0x0a, 0x58, 10, 199, 1, 2]);
        assert_eq!(mac[0] & 0x01, 0, "unicast");
        assert_eq!(mac[0] & 0x02, 0x02, "locally administered");
        assert_eq!(format_mac(&mac), "0a:58:0a:c7:01:02");
    }
}
