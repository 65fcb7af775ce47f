//! Reading and writing the three kinds of entries the plan speaks of, through rtnetlink.
//!
//! What is ours: neighbour and FDB entries on our device that are permanent (the kernel's
//! own cache entries, and the device's all-zero flood entry, are not), and main-table
//! routes out of our device whose protocol is [`ROUTE_PROTOCOL`] (a route someone adds
//! by hand on the device keeps the default "boot" protocol and is left alone).

use std::io;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::netlink::{self, Netlink, ENOENT, ESRCH};
use super::plan::{Actual, FdbEntry, NeighEntry, Op, RouteEntry};
use super::vxlan::Vtep;

/// The rtm_protocol our routes carry ("proto 98" in `ip route`): an unassigned number
/// (iproute2's rt_protos has none there), so our routes are told from everyone else's
/// even on our own device.
pub const ROUTE_PROTOCOL: u8 = 98;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("{op}: {source}")]
    Netlink {
        op: String,
        #[source]
        source: io::Error,
    },
    #[error("{} of {total} overlay changes failed, first {}: {}", failed.len(), failed[0].0, failed[0].1)]
    Apply {
        total: usize,
        /// Each failed op and why; the others were applied.
        failed: Vec<(Op, io::Error)>,
    },
    #[error("setting {path} to {value}: {source}")]
    Sysctl {
        path: String,
        value: String,
        #[source]
        source: io::Error,
    },
}

fn nl(op: impl Into<String>) -> impl FnOnce(io::Error) -> KernelError {
    let op = op.into();
    move |source| KernelError::Netlink { op, source }
}

fn mac6(v: &[u8]) -> Option<[u8; 6]> {
    <[u8; 6]>::try_from(v).ok()
}

fn is_permanent(n: &NeighbourMessage) -> bool {
    n.header.state == NeighbourState::Permanent
}

/// Our entries on the device, as the kernel has them now.
pub fn read_actual(vtep: &Vtep) -> Result<Actual, KernelError> {
    let mut nl_ = netlink::open().map_err(nl("opening a netlink socket"))?;
    read_actual_with(&mut nl_, vtep)
}

pub(crate) fn read_actual_with(nl_: &mut Netlink, vtep: &Vtep) -> Result<Actual, KernelError> {
    let dev = &vtep.name;
    let mut actual = Actual::default();

    for n in netlink::neighbours(nl_, AddressFamily::Inet)
        .map_err(nl(format!("listing neighbours of {dev}")))?
    {
        if n.header.ifindex != vtep.ifindex || !is_permanent(&n) {
            continue;
        }
        let ip = n.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
            _ => None,
        });
        let mac = n.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::LinkLayerAddress(m) => mac6(m),
            _ => None,
        });
        if let (Some(ip), Some(mac)) = (ip, mac) {
            actual.neigh.push(NeighEntry { ip, mac });
        }
    }

    for n in netlink::neighbours(nl_, AddressFamily::Bridge)
        .map_err(nl(format!("listing fdb entries of {dev}")))?
    {
        if n.header.ifindex != vtep.ifindex || !is_permanent(&n) {
            continue;
        }
        let mac = n.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::LinkLayerAddress(m) => mac6(m),
            _ => None,
        });
        // In the bridge family the kernel's 4-byte NDA_DST parses as "other".
        let dst = n.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
            NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from)
            }
            _ => None,
        });
        match (mac, dst) {
            // The all-zero MAC is the device's default (flood) destination, not a host.
            (Some(mac), Some(dst)) if mac != [0; 6] => actual.fdb.push(FdbEntry { mac, dst }),
            _ => {}
        }
    }

    for r in netlink::routes(nl_).map_err(nl(format!("listing routes of {dev}")))? {
        if u8::from(r.header.protocol) != ROUTE_PROTOCOL
            || route_table(&r) != RouteHeader::RT_TABLE_MAIN as u32
        {
            continue;
        }
        let mut dst = None;
        let mut via = None;
        let mut oif = None;
        for a in &r.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = Some(*ip),
                RouteAttribute::Gateway(RouteAddress::Inet(ip)) => via = Some(*ip),
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        if oif != Some(vtep.ifindex) {
            continue;
        }
        let dst = Ipv4Net::new(
            dst.unwrap_or(Ipv4Addr::UNSPECIFIED),
            r.header.destination_prefix_length,
        );
        if let (Ok(dst), Some(via)) = (dst, via) {
            actual.routes.push(RouteEntry {
                dst,
                via,
                oif: vtep.ifindex,
            });
        }
    }
    Ok(actual)
}

/// The table a route is in: the header's byte, or the attribute for tables above 255.
fn route_table(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table))
}

fn neigh_msg(vtep: &Vtep, n: &NeighEntry) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.ifindex = vtep.ifindex;
    m.header.state = NeighbourState::Permanent;
    m.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
            n.ip,
        )));
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(n.mac.to_vec()));
    m
}

/// `bridge fdb … dev vx self permanent`: NTF_SELF puts it in the vxlan device's own table
/// (not a bridge's), permanent so it never ages out.
fn fdb_msg(vtep: &Vtep, e: &FdbEntry) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = vtep.ifindex;
    m.header.state = NeighbourState::Permanent;
    m.header.flags = NeighbourFlags::Own;
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(e.mac.to_vec()));
    m.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
            e.dst,
        )));
    m
}

/// `ip route … <dst> via <via> dev vx onlink proto 98`: onlink because the gateway (the
/// remote block's .0) is on no subnet of ours; the permanent neighbour entry resolves it.
fn route_msg(vtep: &Vtep, dst: Ipv4Net, via: Ipv4Addr) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = AddressFamily::Inet;
    m.header.destination_prefix_length = dst.prefix_len();
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::from(ROUTE_PROTOCOL);
    m.header.scope = RouteScope::Universe;
    m.header.kind = RouteType::Unicast;
    m.header.flags = RouteFlags::Onlink;
    m.attributes
        .push(RouteAttribute::Destination(RouteAddress::Inet(
            dst.network(),
        )));
    m.attributes
        .push(RouteAttribute::Gateway(RouteAddress::Inet(via)));
    m.attributes.push(RouteAttribute::Oif(vtep.ifindex));
    m
}

/// Applies one op. A delete of something already gone counts as done.
fn apply_one(nl_: &mut Netlink, vtep: &Vtep, op: &Op) -> io::Result<()> {
    let gone = |e: &io::Error| matches!(e.raw_os_error(), Some(ENOENT) | Some(ESRCH));
    let put = NLM_F_CREATE | NLM_F_REPLACE;
    let res = match op {
        Op::PutNeigh(n) => nl_.request(RouteNetlinkMessage::NewNeighbour(neigh_msg(vtep, n)), put),
        Op::DelNeigh(n) => nl_.request(RouteNetlinkMessage::DelNeighbour(neigh_msg(vtep, n)), 0),
        Op::PutFdb(e) => nl_.request(RouteNetlinkMessage::NewNeighbour(fdb_msg(vtep, e)), put),
        Op::DelFdb(e) => nl_.request(RouteNetlinkMessage::DelNeighbour(fdb_msg(vtep, e)), 0),
        Op::PutRoute { dst, via } => nl_.request(
            RouteNetlinkMessage::NewRoute(route_msg(vtep, *dst, *via)),
            put,
        ),
        Op::DelRoute { dst, via } => nl_.request(
            RouteNetlinkMessage::DelRoute(route_msg(vtep, *dst, *via)),
            0,
        ),
    };
    match res {
        Err(e)
            if matches!(op, Op::DelNeigh(_) | Op::DelFdb(_) | Op::DelRoute { .. }) && gone(&e) =>
        {
            Ok(())
        }
        other => other.map(drop),
    }
}

/// Applies the ops in order. Every op is tried even when one fails (one bad entry must
/// not keep the rest of the overlay from converging); the failures come back together,
/// and the next reconcile retries them. Returns how many ops were applied.
pub fn apply(vtep: &Vtep, ops: &[Op]) -> Result<usize, KernelError> {
    if ops.is_empty() {
        return Ok(0);
    }
    let mut nl_ = netlink::open().map_err(nl("opening a netlink socket"))?;
    apply_with(&mut nl_, vtep, ops)
}

pub(crate) fn apply_with(nl_: &mut Netlink, vtep: &Vtep, ops: &[Op]) -> Result<usize, KernelError> {
    let mut failed = Vec::new();
    for op in ops {
        if let Err(e) = apply_one(nl_, vtep, op) {
            failed.push((*op, e));
        }
    }
    if failed.is_empty() {
        Ok(ops.len())
    } else {
        Err(KernelError::Apply {
            total: ops.len(),
            failed,
        })
    }
}

/// Routing between the VXLAN device and the local container bridge is IP forwarding;
/// a fresh host (or network namespace) has it off. Written only when it is not already
/// on, since a write to ip_forward resets per-device settings.
pub fn enable_ip_forward() -> Result<(), KernelError> {
    let path = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(path, "1").map_err(|source| KernelError::Sysctl {
        path: path.to_string(),
        value: "1".to_string(),
        source,
    })
}
