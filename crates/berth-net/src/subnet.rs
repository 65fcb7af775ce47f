//! Choosing subnets: the pool user networks draw from, and overlap checks against other
//! berth networks and against the host's routes.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// The first subnet handed out to user networks when none is asked for, like podman.
pub const POOL_START: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 0);
/// The pool ends with 10.255.255.0/24.
pub const POOL_END: Ipv4Addr = Ipv4Addr::new(10, 255, 255, 0);
/// The size of each pool subnet.
pub const POOL_PREFIX: u8 = 24;

/// One IPv4 route of the host's main table, as read from /proc/net/route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoute {
    pub dev: String,
    pub dest: Ipv4Net,
}

#[derive(Debug, thiserror::Error)]
pub enum SubnetError {
    #[error("reading host routes from /proc/net/route: {0}")]
    Routes(#[source] std::io::Error),
}

/// The host's IPv4 routes, minus the default route (which overlaps everything).
pub fn host_routes() -> Result<Vec<HostRoute>, SubnetError> {
    let text = std::fs::read_to_string("/proc/net/route").map_err(SubnetError::Routes)?;
    Ok(parse_proc_route(&text))
}

/// Parses /proc/net/route: addresses are hex in the kernel's byte order.
pub fn parse_proc_route(text: &str) -> Vec<HostRoute> {
    let hex = |s: &str| {
        u32::from_str_radix(s, 16)
            .ok()
            .map(|v| Ipv4Addr::from(v.to_ne_bytes()))
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (dev, dest, mask) = (f.first()?, hex(f.get(1)?)?, hex(f.get(7)?)?);
            let prefix = u32::from(mask).leading_ones() as u8;
            let dest = Ipv4Net::new(dest, prefix).ok()?;
            (prefix > 0).then(|| HostRoute {
                dev: dev.to_string(),
                dest,
            })
        })
        .collect()
}

pub fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The first pool subnet that overlaps neither `taken` nor a host route.
pub fn pick_from_pool(taken: &[Ipv4Net], routes: &[HostRoute]) -> Option<Ipv4Net> {
    let step = 1u32 << (32 - POOL_PREFIX);
    let mut at = u32::from(POOL_START);
    while at <= u32::from(POOL_END) {
        let candidate = Ipv4Net::new(Ipv4Addr::from(at), POOL_PREFIX).ok()?;
        let clash = taken.iter().any(|t| overlaps(*t, candidate))
            || routes.iter().any(|r| overlaps(r.dest, candidate));
        if !clash {
            return Some(candidate);
        }
        at += step;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROC_ROUTE: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
berth0\t0000580A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn parses_proc_net_route_without_default() {
        let routes = parse_proc_route(PROC_ROUTE);
        assert_eq!(
            routes,
            vec![
                HostRoute {
                    dev: "eth0".into(),
                    dest: net("192.0.2.0/24")
                },
                HostRoute {
                    dev: "berth0".into(),
                    dest: net("10.88.0.0/16")
                },
            ]
        );
    }

    #[test]
    fn overlap() {
        assert!(overlaps(net("10.0.0.0/8"), net("10.89.1.0/24")));
        assert!(overlaps(net("10.89.1.0/24"), net("10.0.0.0/8")));
        assert!(!overlaps(net("10.89.1.0/24"), net("10.89.2.0/24")));
    }

    #[test]
    fn pool_skips_taken_and_routed_subnets() {
        assert_eq!(pick_from_pool(&[], &[]), Some(net("10.89.0.0/24")));
        let taken = [net("10.89.0.0/24"), net("10.89.2.0/24")];
        assert_eq!(pick_from_pool(&taken, &[]), Some(net("10.89.1.0/24")));
        let routes = [HostRoute {
            dev: "x".into(),
            dest: net("10.89.0.0/23"),
        }];
        assert_eq!(pick_from_pool(&taken, &routes), Some(net("10.89.3.0/24")));
        let everything = [HostRoute {
            dev: "x".into(),
            dest: net("10.0.0.0/8"),
        }];
        assert_eq!(pick_from_pool(&[], &everything), None);
    }
}
