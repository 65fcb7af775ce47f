//! What a network is: its persisted configuration, the request that creates one, and the
//! validation of names, bridges, subnets and gateways.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// The name of the default network, as in docker.
pub const DEFAULT_NETWORK: &str = "bridge";
/// The default network's bridge device.
pub const DEFAULT_BRIDGE: &str = "berth0";
/// The nftables table (family inet) that holds all of berth's rules.
pub const DEFAULT_NFT_TABLE: &str = "berth";
/// The MTU of new networks.
pub const DEFAULT_MTU: u32 = 1500;

/// Linux interface names are at most IFNAMSIZ-1 bytes.
const IFNAMSIZ_MAX: usize = 15;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "invalid network name {0:?}: must match [a-zA-Z0-9][a-zA-Z0-9_.-]* (at most 64 characters)"
    )]
    InvalidName(String),
    #[error("invalid bridge name {0:?}: must be 1 to 15 characters of [a-zA-Z0-9_.-]")]
    InvalidBridge(String),
    #[error("invalid subnet {subnet} for network {name}: {reason}")]
    InvalidSubnet {
        name: String,
        subnet: String,
        reason: &'static str,
    },
    #[error("invalid gateway {gateway} for network {name}: {reason}")]
    InvalidGateway {
        name: String,
        gateway: Ipv4Addr,
        reason: String,
    },
    #[error("invalid mtu {0} (must be 576 to 65535)")]
    InvalidMtu(u32),
    #[error("invalid nftables table name {0:?}: must be 1 to 64 characters of [a-zA-Z0-9_]")]
    InvalidTable(String),
    #[error("subnets {a} and {b} of network {name} overlap")]
    RangesOverlap {
        name: String,
        a: Ipv4Net,
        b: Ipv4Net,
    },
}

/// A network as persisted in the store and handed to the kernel-facing functions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConfig {
    pub name: String,
    pub id: String,
    /// Bridge device, at most 15 characters: "berth0" for the default network,
    /// "br-<first 12 of id>" for user networks.
    pub bridge: String,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// No egress, no port mappings: traffic only between the network's containers.
    pub internal: bool,
    pub mtu: u32,
    /// RFC 3339, UTC.
    pub created: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The nftables table (family inet) holding this network's rules; tests use their
    /// own so they never touch the real one.
    #[serde(default = "default_table")]
    pub nft_table: String,
    /// A cluster network (`--network cluster`): the subnet is this host's block of the
    /// cluster's address space, and traffic to and from the rest of that space travels
    /// the overlay unmasqueraded.
    #[serde(default)]
    pub cluster_cidr: Option<Ipv4Net>,
    /// Address ranges added after creation (a cluster host's later blocks), in the order
    /// added. The bridge carries every range's gateway; addresses come from `subnet` first,
    /// then from these in order; a container's prefix and default route are its range's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_ranges: Vec<Range>,
}

/// A subnet of a network with the gateway (bridge address) in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Range {
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
}

impl Range {
    /// The subnet with its first host as the gateway, as networks get by default.
    pub fn with_first_host(subnet: Ipv4Net) -> Range {
        Range {
            subnet,
            gateway: first_host(subnet),
        }
    }
}

fn default_table() -> String {
    DEFAULT_NFT_TABLE.to_string()
}

/// What `berth network create` asks for; everything optional is chosen by the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateRequest {
    pub name: String,
    pub subnet: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    pub internal: bool,
    pub labels: BTreeMap<String, String>,
    /// Bridge device name; default "br-<first 12 of id>".
    pub bridge: Option<String>,
    pub mtu: Option<u32>,
    /// See [`NetworkConfig::cluster_cidr`].
    pub cluster_cidr: Option<Ipv4Net>,
}

impl NetworkConfig {
    /// Checks every field that reaches the kernel or a file name.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_name(&self.name)?;
        validate_bridge(&self.bridge)?;
        let ranges = self.ranges();
        for (i, r) in ranges.iter().enumerate() {
            validate_subnet(&self.name, r.subnet)?;
            validate_gateway(&self.name, r.subnet, r.gateway)?;
            if let Some(o) = ranges[i + 1..]
                .iter()
                .find(|o| crate::subnet::overlaps(o.subnet, r.subnet))
            {
                return Err(ConfigError::RangesOverlap {
                    name: self.name.clone(),
                    a: r.subnet,
                    b: o.subnet,
                });
            }
        }
        validate_table(&self.nft_table)?;
        if !(576..=65535).contains(&self.mtu) {
            return Err(ConfigError::InvalidMtu(self.mtu));
        }
        Ok(())
    }

    /// The network's (first subnet's) prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.subnet.prefix_len()
    }

    /// Every address range, the first subnet first.
    pub fn ranges(&self) -> Vec<Range> {
        std::iter::once(Range {
            subnet: self.subnet,
            gateway: self.gateway,
        })
        .chain(self.more_ranges.iter().copied())
        .collect()
    }

    /// The range `addr` belongs to.
    pub fn range_of(&self, addr: Ipv4Addr) -> Option<Range> {
        self.ranges().into_iter().find(|r| r.subnet.contains(&addr))
    }

    /// The subnets, comma separated, for messages.
    pub fn subnets_text(&self) -> String {
        self.ranges()
            .iter()
            .map(|r| r.subnet.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

pub fn validate_name(name: &str) -> Result<(), ConfigError> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if first_ok && rest_ok && name.len() <= 64 {
        Ok(())
    } else {
        Err(ConfigError::InvalidName(name.to_string()))
    }
}

pub fn validate_bridge(bridge: &str) -> Result<(), ConfigError> {
    let ok = !bridge.is_empty()
        && bridge.len() <= IFNAMSIZ_MAX
        && bridge
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && bridge != "."
        && bridge != "..";
    if ok {
        Ok(())
    } else {
        Err(ConfigError::InvalidBridge(bridge.to_string()))
    }
}

pub fn validate_table(table: &str) -> Result<(), ConfigError> {
    let ok = !table.is_empty()
        && table.len() <= 64
        && table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::InvalidTable(table.to_string()))
    }
}

pub fn validate_subnet(name: &str, subnet: Ipv4Net) -> Result<(), ConfigError> {
    let err = |reason| ConfigError::InvalidSubnet {
        name: name.to_string(),
        subnet: subnet.to_string(),
        reason,
    };
    if subnet.addr() != subnet.network() {
        return Err(err("host bits are set (use the network address)"));
    }
    if subnet.prefix_len() > 30 {
        return Err(err(
            "prefix must be /30 or shorter to hold a gateway and a container",
        ));
    }
    if subnet.prefix_len() < 8 {
        return Err(err("prefix must be /8 or longer"));
    }
    let first = subnet.network().octets()[0];
    if first == 0 || first == 127 || first >= 224 {
        return Err(err("not a usable unicast range"));
    }
    Ok(())
}

pub fn validate_gateway(name: &str, subnet: Ipv4Net, gateway: Ipv4Addr) -> Result<(), ConfigError> {
    let reason = if !subnet.contains(&gateway) {
        format!("not inside subnet {subnet}")
    } else if gateway == subnet.network() {
        format!("is the network address of {subnet}")
    } else if gateway == subnet.broadcast() {
        format!("is the broadcast address of {subnet}")
    } else {
        return Ok(());
    };
    Err(ConfigError::InvalidGateway {
        name: name.to_string(),
        gateway,
        reason,
    })
}

/// The first host address of a subnet: the default gateway, as docker and podman pick it.
pub fn first_host(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

/// "br-" and the first 12 characters of the id, like docker.
pub fn bridge_for_id(id: &str) -> String {
    let short: String = id.chars().take(12).collect();
    format!("br-{short}")
}

/// A random 64-hex-digit id.
pub(crate) fn new_id() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The current time as RFC 3339 UTC, second precision.
pub(crate) fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339(secs)
}

fn rfc3339(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "web", "my-net_1.x", "0net"] {
            validate_name(ok).unwrap();
        }
        for bad in ["", "-a", ".a", "a/b", "a b", "ä", &"x".repeat(65)] {
            let e = validate_name(bad).unwrap_err().to_string();
            assert!(e.contains("invalid network name"), "{e}");
        }
    }

    #[test]
    fn bridges() {
        validate_bridge("berth0").unwrap();
        validate_bridge("br-0123456789ab").unwrap();
        assert!(validate_bridge("br-0123456789abc").is_err());
        assert!(validate_bridge("").is_err());
        assert!(validate_bridge("a/b").is_err());
        assert_eq!(bridge_for_id("0123456789abcdef"), "br-0123456789ab");
    }

    #[test]
    fn subnets_and_gateways() {
        let s: Ipv4Net = "10.89.0.0/24".parse().unwrap();
        validate_subnet("n", s).unwrap();
        let e = validate_subnet("n", "10.89.0.1/24".parse().unwrap()).unwrap_err();
        assert!(e.to_string().contains("10.89.0.1/24"), "{e}");
        assert!(validate_subnet("n", "10.89.0.0/31".parse().unwrap()).is_err());
        assert!(validate_subnet("n", "127.0.0.0/8".parse().unwrap()).is_err());
        validate_gateway("n", s, "10.89.0.1".parse().unwrap()).unwrap();
        let e = validate_gateway("n", s, "10.90.0.1".parse().unwrap()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid gateway 10.90.0.1 for network n: not inside subnet 10.89.0.0/24"
        );
        assert!(validate_gateway("n", s, "10.89.0.0".parse().unwrap()).is_err());
        assert!(validate_gateway("n", s, "10.89.0.255".parse().unwrap()).is_err());
        assert_eq!(first_host(s), Ipv4Addr::new(10, 89, 0, 1));
    }

    #[test]
    fn more_ranges_are_validated_and_found() {
        let mut n = NetworkConfig {
            name: "cluster".into(),
            id: "x".into(),
            bridge: "berth-cl0".into(),
            subnet: "10.244.0.0/29".parse().unwrap(),
            gateway: "10.244.0.1".parse().unwrap(),
            internal: false,
            mtu: 1450,
            created: String::new(),
            labels: BTreeMap::new(),
            nft_table: "t".into(),
            cluster_cidr: None,
            more_ranges: vec![Range::with_first_host("10.244.0.16/29".parse().unwrap())],
        };
        n.validate().unwrap();
        assert_eq!(n.ranges().len(), 2);
        let r = n.range_of("10.244.0.18".parse().unwrap()).unwrap();
        assert_eq!(r.gateway, Ipv4Addr::new(10, 244, 0, 17));
        assert_eq!(n.range_of("10.244.0.9".parse().unwrap()), None);
        assert_eq!(n.subnets_text(), "10.244.0.0/29, 10.244.0.16/29");
        // An old record without the field reads as no more ranges, and is written back
        // without it.
        let mut v = serde_json::to_value(&n).unwrap();
        v.as_object_mut().unwrap().remove("more_ranges");
        let old: NetworkConfig = serde_json::from_value(v).unwrap();
        assert!(old.more_ranges.is_empty());
        assert!(!serde_json::to_string(&old).unwrap().contains("more_ranges"));

        n.more_ranges
            .push(Range::with_first_host("10.244.0.0/28".parse().unwrap()));
        let e = n.validate().unwrap_err().to_string();
        assert_eq!(
            e,
            "subnets 10.244.0.0/29 and 10.244.0.0/28 of network cluster overlap"
        );
        n.more_ranges = vec![Range {
            subnet: "10.244.0.16/29".parse().unwrap(),
            gateway: "10.244.0.1".parse().unwrap(),
        }];
        assert!(n.validate().is_err());
    }

    #[test]
    fn time_format() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_798_761_599), "2026-12-31T23:59:59Z");
    }

    #[test]
    fn ids_are_random_hex() {
        let a = new_id().unwrap();
        let b = new_id().unwrap();
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
