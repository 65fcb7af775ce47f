//! The overlay's use of berth-net's rtnetlink client: sockets with a bounded reply wait,
//! and the dumps the reconciler reads.
//!
//! The socket belongs to the network namespace of the thread that opened it; everything
//! in the overlay acts in the calling thread's namespace, so an agent (or a test) that
//! manages a host namespace calls it from a thread that has joined that namespace.

use std::io;
use std::time::Duration;

use netlink_packet_route::address::AddressMessage;
use netlink_packet_route::neighbour::NeighbourMessage;
use netlink_packet_route::route::RouteMessage;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

pub(crate) use berth_net::netlink::Netlink;

/// ENODEV: the kernel's "no such interface".
pub(crate) const ENODEV: i32 = 19;
/// ENOENT: "no such entry" (neighbour, fdb entry, route).
pub(crate) const ENOENT: i32 = 2;
/// ESRCH: what route deletion says for a route that is not there.
pub(crate) const ESRCH: i32 = 3;

/// How long to wait for the kernel's answer to one request.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// A socket in the calling thread's namespace. The kernel always answers; a bound wait
/// turns a bug (a request it does not acknowledge) into an error instead of a hung agent.
pub(crate) fn open() -> io::Result<Netlink> {
    let nl = Netlink::open()?;
    nl.set_reply_timeout(REPLY_TIMEOUT)?;
    Ok(nl)
}

/// The messages of one dump that `pick` keeps.
fn dump_of<T>(
    nl: &mut Netlink,
    msg: RouteNetlinkMessage,
    pick: fn(RouteNetlinkMessage) -> Option<T>,
) -> io::Result<Vec<T>> {
    Ok(nl.dump(msg)?.into_iter().filter_map(pick).collect())
}

/// Every IPv4 address of every interface.
pub(crate) fn addresses(nl: &mut Netlink) -> io::Result<Vec<AddressMessage>> {
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet;
    dump_of(nl, RouteNetlinkMessage::GetAddress(msg), |r| match r {
        RouteNetlinkMessage::NewAddress(a) => Some(a),
        _ => None,
    })
}

/// Every neighbour entry of `family`: Inet for the ARP table, Bridge for FDBs.
pub(crate) fn neighbours(
    nl: &mut Netlink,
    family: AddressFamily,
) -> io::Result<Vec<NeighbourMessage>> {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family;
    dump_of(nl, RouteNetlinkMessage::GetNeighbour(msg), |r| match r {
        RouteNetlinkMessage::NewNeighbour(n) => Some(n),
        _ => None,
    })
}

/// Every IPv4 route of every table.
pub(crate) fn routes(nl: &mut Netlink) -> io::Result<Vec<RouteMessage>> {
    let mut msg = RouteMessage::default();
    msg.header.address_family = AddressFamily::Inet;
    dump_of(nl, RouteNetlinkMessage::GetRoute(msg), |r| match r {
        RouteNetlinkMessage::NewRoute(r) => Some(r),
        _ => None,
    })
}
