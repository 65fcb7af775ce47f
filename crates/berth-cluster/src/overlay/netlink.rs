//! A small synchronous rtnetlink client, in the style of berth-net's (one blocking
//! `netlink-sys` socket, `netlink-packet-route` messages, one request and its
//! acknowledgement per call), extended with the dumps the reconciler reads.
//!
//! The socket belongs to the network namespace of the thread that opened it; everything
//! in the overlay acts in the calling thread's namespace, so an agent (or a test) that
//! manages a host namespace calls it from a thread that has joined that namespace.

use std::io;
use std::os::fd::AsRawFd;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::address::AddressMessage;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::neighbour::NeighbourMessage;
use netlink_packet_route::route::RouteMessage;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// ENODEV: the kernel's "no such interface".
pub(crate) const ENODEV: i32 = 19;
/// ENOENT: "no such entry" (neighbour, fdb entry, route).
pub(crate) const ENOENT: i32 = 2;
/// ESRCH: what route deletion says for a route that is not there.
pub(crate) const ESRCH: i32 = 3;

/// How long to wait for the kernel's answer to one request.
const REPLY_TIMEOUT_SECS: libc::time_t = 10;

pub(crate) struct Netlink {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    pub fn open() -> io::Result<Netlink> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        // The kernel always answers; a bound wait turns a bug (a request it does not
        // acknowledge) into an error instead of a hung agent.
        let timeout = libc::timeval {
            tv_sec: REPLY_TIMEOUT_SECS,
            tv_usec: 0,
        };
        // SAFETY: setsockopt on our own socket with a correctly sized timeval.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Netlink {
            sock,
            seq: 0,
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    /// Sends one request and collects the replies until the acknowledgement (or, for a
    /// dump, the end of the dump).
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        dump: bool,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        // A dump ends with NLMSG_DONE; anything else needs NLM_F_ACK to be answered at
        // all on success. (The flag bits overlap: NLM_F_EXCL is NLM_F_MATCH, so "is it a
        // dump" cannot be read off the flags.)
        header.flags = NLM_F_REQUEST | flags;
        if dump {
            header.flags |= NLM_F_DUMP;
        } else {
            header.flags |= NLM_F_ACK;
        }
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut out = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut out);
        self.sock.send_to(&out, &SocketAddr::new(0, 0), 0)?;

        let mut replies = Vec::new();
        loop {
            self.buf.clear();
            self.sock.recv(&mut self.buf, 0)?;
            let mut at = 0;
            while at < self.buf.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[at..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                let len = reply.header.length as usize;
                if len == 0 {
                    break;
                }
                at += len.next_multiple_of(4);
                if reply.header.sequence_number != self.seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                            None => Ok(replies),
                        }
                    }
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::InnerMessage(m) => replies.push(m),
                    _ => {}
                }
            }
        }
    }

    /// A change (create, replace, delete): one request, one acknowledgement.
    pub fn change(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.request(msg, flags, false).map(drop)
    }

    /// The link named `name`, or None.
    pub fn link_by_name(&mut self, name: &str) -> io::Result<Option<LinkMessage>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.get_link(msg)
    }

    /// The link with index `index`, or None.
    pub fn link_by_index(&mut self, index: u32) -> io::Result<Option<LinkMessage>> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.get_link(msg)
    }

    fn get_link(&mut self, msg: LinkMessage) -> io::Result<Option<LinkMessage>> {
        match self.request(RouteNetlinkMessage::GetLink(msg), 0, false) {
            Ok(replies) => Ok(replies.into_iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })),
            Err(e) if e.raw_os_error() == Some(ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every IPv4 address of every interface.
    pub fn addresses(&mut self) -> io::Result<Vec<AddressMessage>> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        let replies = self.request(RouteNetlinkMessage::GetAddress(msg), 0, true)?;
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewAddress(a) => Some(a),
                _ => None,
            })
            .collect())
    }

    /// Every neighbour entry of `family`: Inet for the ARP table, Bridge for FDBs.
    pub fn neighbours(&mut self, family: AddressFamily) -> io::Result<Vec<NeighbourMessage>> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = family;
        let replies = self.request(RouteNetlinkMessage::GetNeighbour(msg), 0, true)?;
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewNeighbour(n) => Some(n),
                _ => None,
            })
            .collect())
    }

    /// Every IPv4 route of every table.
    pub fn routes(&mut self) -> io::Result<Vec<RouteMessage>> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        let replies = self.request(RouteNetlinkMessage::GetRoute(msg), 0, true)?;
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewRoute(r) => Some(r),
                _ => None,
            })
            .collect())
    }
}
