//! A small synchronous rtnetlink client, shared with berth-cluster's overlay.
//!
//! Why not `rtnetlink`: it is async (tokio + futures) and each call would need a runtime,
//! while every operation here is one request and one acknowledgement (or one dump). A
//! blocking `netlink-sys` socket with `netlink-packet-route` messages does the same in a
//! few syscalls, keeps tokio out of the engine's link path, and makes "open the socket
//! inside another network namespace" a plain thread + setns (see
//! [`Netlink::open_in_netns`]).
//!
//! The public part is the socket layer ([`Netlink::request`], [`Netlink::dump`], link
//! lookups); errors are plain `io::Error`s (the kernel's answer is an errno), which each
//! caller folds into its own error enum with what it was doing. The bridge and veth
//! operations below are berth-net's own and stay crate-private.

use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, State,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// One rtnetlink socket, bound to the network namespace it was opened in.
pub struct Netlink {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

/// What a veth pair looks like when created in one request.
pub(crate) struct VethSpec<'a> {
    pub host_name: &'a str,
    pub bridge_index: u32,
    pub mtu: u32,
    pub peer_name: &'a str,
    pub peer_mac: [u8; 6],
    /// The peer is created directly in this network namespace.
    pub peer_netns: &'a File,
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Netlink> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        Ok(Netlink {
            sock,
            seq: 0,
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    /// Opens a socket inside the network namespace `netns` (a /proc/<pid>/ns/net file).
    /// The setns happens in a short-lived thread, so the caller's thread never changes
    /// namespace; the socket stays bound to the namespace it was created in.
    pub fn open_in_netns(netns: &File) -> io::Result<Netlink> {
        std::thread::scope(|s| {
            s.spawn(|| {
                rustix::thread::move_into_link_name_space(
                    netns.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )?;
                Netlink::open()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("netns thread panicked")))
        })
    }

    /// Bounds how long a reply may take: the kernel always answers, so a wait that runs
    /// out means a bug (a request it does not acknowledge) and becomes an error instead
    /// of a hung caller. Without it the socket waits as long as it takes.
    pub fn set_reply_timeout(&self, timeout: Duration) -> io::Result<()> {
        let tv = libc::timeval {
            tv_sec: libc::time_t::try_from(timeout.as_secs())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
            // Below a million: fits every suseconds_t.
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: setsockopt on our own socket with a correctly sized timeval.
        let rc = unsafe {
            libc::setsockopt(
                self.sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sends one request (a change or a get) and collects the replies until the
    /// kernel's acknowledgement. `flags` are added to NLM_F_REQUEST | NLM_F_ACK.
    pub fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.exchange(msg, NLM_F_ACK | flags)
    }

    /// Asks for a dump (every object of `msg`'s kind) and collects it to its end.
    pub fn dump(&mut self, msg: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        // A call of its own, not a flag of `request`: the flag bits overlap (NLM_F_EXCL
        // is NLM_F_MATCH), so "is it a dump" cannot be read off the flags. A dump ends
        // with NLMSG_DONE, so it needs no NLM_F_ACK.
        self.exchange(msg, NLM_F_DUMP)
    }

    /// The link named `name`, or None if there is no such interface.
    pub fn link_by_name(&mut self, name: &str) -> io::Result<Option<LinkMessage>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.get_link(msg)
    }

    /// The link with index `index`, or None if there is no such interface.
    pub fn link_by_index(&mut self, index: u32) -> io::Result<Option<LinkMessage>> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.get_link(msg)
    }

    fn get_link(&mut self, msg: LinkMessage) -> io::Result<Option<LinkMessage>> {
        match self.request(RouteNetlinkMessage::GetLink(msg), 0) {
            Ok(replies) => Ok(replies.into_iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sends one message with NLM_F_REQUEST | `flags` and collects the replies until the
    /// acknowledgement or the end of a dump; an error answer becomes its errno.
    fn exchange(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
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

    /// The index of interface `name`, or None if there is no such interface.
    pub(crate) fn link_index(&mut self, name: &str) -> io::Result<Option<u32>> {
        Ok(self.link_by_name(name)?.map(|l| l.header.index))
    }

    /// Whether the interface can transmit: operationally up, and its queueing discipline
    /// attached (the kernel sets operstate slightly before it swaps the "noop" qdisc,
    /// which drops everything, for the real one).
    pub(crate) fn is_transmitting(&mut self, index: u32) -> io::Result<bool> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        let replies = self.request(RouteNetlinkMessage::GetLink(msg), 0)?;
        Ok(replies.iter().any(|r| match r {
            RouteNetlinkMessage::NewLink(l) => {
                let up = l
                    .attributes
                    .iter()
                    .any(|a| matches!(a, LinkAttribute::OperState(State::Up)));
                let qdisc_ready = l
                    .attributes
                    .iter()
                    .any(|a| matches!(a, LinkAttribute::Qdisc(q) if q != "noop"));
                up && qdisc_ready
            }
            _ => false,
        }))
    }

    /// Creates a bridge with a fixed MAC; an existing interface of that name is left
    /// alone (Ok(false)).
    pub(crate) fn create_bridge(&mut self, name: &str, mtu: u32, mac: [u8; 6]) -> io::Result<bool> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        match self.request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Sets the interface up, and its MTU if given.
    pub(crate) fn set_up(&mut self, index: u32, mtu: Option<u32>) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        if let Some(mtu) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        self.request(RouteNetlinkMessage::SetLink(msg), 0).map(drop)
    }

    /// Adds `addr/prefix` (with its broadcast address) to the interface; replacing an
    /// identical address makes this idempotent.
    pub(crate) fn add_address(&mut self, index: u32, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = prefix;
        msg.header.index = index;
        let brd = ipnet::Ipv4Net::new(addr, prefix)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?
            .broadcast();
        msg.attributes.push(AddressAttribute::Local(addr.into()));
        msg.attributes.push(AddressAttribute::Address(addr.into()));
        msg.attributes.push(AddressAttribute::Broadcast(brd));
        self.request(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(drop)
    }

    /// Adds (or replaces) the default route via `gateway` out of interface `index`.
    pub(crate) fn add_default_route(&mut self, index: u32, gateway: Ipv4Addr) -> io::Result<()> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.scope = RouteScope::Universe;
        msg.header.kind = RouteType::Unicast;
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
        msg.attributes.push(RouteAttribute::Oif(index));
        self.request(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(drop)
    }

    /// Creates a veth pair in one request: the host end enslaved to the bridge and up,
    /// the peer created directly inside the container's namespace with its final name,
    /// MAC and MTU (so it never appears on the host and needs no rename).
    pub(crate) fn create_veth(&mut self, spec: &VethSpec<'_>) -> io::Result<()> {
        let mut peer = LinkMessage::default();
        peer.attributes
            .push(LinkAttribute::IfName(spec.peer_name.to_string()));
        peer.attributes.push(LinkAttribute::Mtu(spec.mtu));
        peer.attributes
            .push(LinkAttribute::Address(spec.peer_mac.to_vec()));
        peer.attributes
            .push(LinkAttribute::NetNsFd(spec.peer_netns.as_raw_fd()));

        let mut msg = LinkMessage::default();
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        msg.attributes
            .push(LinkAttribute::IfName(spec.host_name.to_string()));
        msg.attributes.push(LinkAttribute::Mtu(spec.mtu));
        msg.attributes
            .push(LinkAttribute::Controller(spec.bridge_index));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        self.request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
            .map(drop)
    }

    /// Deletes interface `name`; Ok(false) if it did not exist.
    pub(crate) fn delete_link(&mut self, name: &str) -> io::Result<bool> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(RouteNetlinkMessage::DelLink(msg), 0) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
