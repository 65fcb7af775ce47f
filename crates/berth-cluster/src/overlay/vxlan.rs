//! The VXLAN device (flannel's flannel.1): created once, then only checked.
//!
//! Equivalent of
//! `ip link add berth.vx type vxlan id VNI local UNDERLAY_IP dev UNDERLAY_DEV dstport PORT
//! nolearning; ip link set berth.vx mtu UNDERLAY_MTU-50 address 0a:58:.. up;
//! ip addr add BLOCK.0/32 dev berth.vx; ethtool -K berth.vx tx-checksum-ip-generic off`,
//! but idempotent: every property is read first and written only when it differs, so an
//! agent restart against a correct device makes no change at all.

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::config::{vtep_mac, OverlayConfig, TxChecksum, VXLAN_OVERHEAD};
use super::ethtool;
use super::netlink::{self, Netlink, ENODEV};

/// Our VXLAN device as it is in the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vtep {
    pub name: String,
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub mtu: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("{op}: {source}")]
    Netlink {
        op: String,
        #[source]
        source: io::Error,
    },
    #[error("no interface carries underlay address {0}")]
    NoUnderlay(Ipv4Addr),
    #[error("underlay interface {0} does not exist")]
    NoUnderlayDev(String),
    #[error("interface {0} exists and is not a vxlan device; not touching it")]
    Foreign(String),
    #[error(
        "underlay interface {dev} has mtu {mtu}, too small for vxlan's {VXLAN_OVERHEAD} bytes"
    )]
    SmallMtu { dev: String, mtu: u32 },
    #[error("setting tx checksum offload on {dev}: {source}")]
    Checksum {
        dev: String,
        #[source]
        source: ethtool::EthtoolError,
    },
}

fn nl(op: impl Into<String>) -> impl FnOnce(io::Error) -> DeviceError {
    let op = op.into();
    move |source| DeviceError::Netlink { op, source }
}

/// The underlay interface: its index, name and MTU.
struct Underlay {
    index: u32,
    name: String,
    mtu: u32,
}

fn find_underlay(nl_: &mut Netlink, cfg: &OverlayConfig) -> Result<Underlay, DeviceError> {
    let link = match &cfg.underlay_dev {
        Some(dev) => nl_
            .link_by_name(dev)
            .map_err(nl(format!("looking up underlay interface {dev}")))?
            .ok_or_else(|| DeviceError::NoUnderlayDev(dev.clone()))?,
        None => {
            // The interface that carries our underlay address: the one the outer packets
            // leave from (a route lookup of our own address would answer "lo").
            let addrs = netlink::addresses(nl_)
                .map_err(nl("listing addresses to find the underlay interface"))?;
            let index = addrs
                .iter()
                .find(|a| {
                    a.attributes.iter().any(|at| {
                        matches!(at, AddressAttribute::Local(IpAddr::V4(ip)) | AddressAttribute::Address(IpAddr::V4(ip)) if *ip == cfg.underlay_ip)
                    })
                })
                .map(|a| a.header.index)
                .ok_or(DeviceError::NoUnderlay(cfg.underlay_ip))?;
            nl_.link_by_index(index)
                .map_err(nl(format!("looking up interface {index}")))?
                .ok_or(DeviceError::NoUnderlay(cfg.underlay_ip))?
        }
    };
    let name = link_name(&link).unwrap_or_default();
    let mtu = link_mtu(&link).unwrap_or(1500);
    Ok(Underlay {
        index: link.header.index,
        name,
        mtu,
    })
}

fn link_name(l: &LinkMessage) -> Option<String> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

fn link_mtu(l: &LinkMessage) -> Option<u32> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    })
}

fn link_mac(l: &LinkMessage) -> Option<Vec<u8>> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(m) => Some(m.clone()),
        _ => None,
    })
}

/// The VXLAN attributes we set, as the kernel reports them; None if `l` is not vxlan.
fn vxlan_data(l: &LinkMessage) -> Option<Vec<InfoVxlan>> {
    let info = l.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(i) => Some(i),
        _ => None,
    })?;
    if !info
        .iter()
        .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Vxlan)))
    {
        return None;
    }
    Some(
        info.iter()
            .find_map(|i| match i {
                LinkInfo::Data(InfoData::Vxlan(d)) => Some(d.clone()),
                _ => None,
            })
            .unwrap_or_default(),
    )
}

/// The attributes that define the tunnel; any difference means re-creating the device,
/// since the kernel does not change most of them on a live vxlan device.
fn tunnel_attrs(cfg: &OverlayConfig, underlay_index: u32) -> Vec<InfoVxlan> {
    vec![
        InfoVxlan::Id(cfg.vni),
        InfoVxlan::Local(cfg.underlay_ip),
        InfoVxlan::Link(underlay_index),
        InfoVxlan::Port(cfg.port),
        // Static FDB only: the map is the truth; learning would let any sender that
        // reaches the port teach us where a MAC lives.
        InfoVxlan::Learning(false),
    ]
}

fn tunnel_matches(have: &[InfoVxlan], want: &[InfoVxlan]) -> bool {
    want.iter().all(|w| have.contains(w))
}

/// Makes the device exist as configured, up, with `<block>.0/32` and TX checksum offload
/// as configured (off by default). Returns the device.
pub fn ensure_device(cfg: &OverlayConfig) -> Result<Vtep, super::OverlayError> {
    ensure_device_counted(cfg).map(|(v, _)| v)
}

/// [`ensure_device`], also saying how many changes it made (0 when all was right).
pub fn ensure_device_counted(cfg: &OverlayConfig) -> Result<(Vtep, usize), super::OverlayError> {
    cfg.validate()?;
    let mut nl_ = netlink::open().map_err(nl("opening a netlink socket"))?;
    let under = find_underlay(&mut nl_, cfg)?;
    let mtu = match cfg.mtu {
        Some(m) => m,
        None => under
            .mtu
            .checked_sub(VXLAN_OVERHEAD)
            .filter(|m| *m >= 68)
            .ok_or_else(|| DeviceError::SmallMtu {
                dev: under.name.clone(),
                mtu: under.mtu,
            })?,
    };
    let mac = vtep_mac(cfg.underlay_ip);
    let dev = &cfg.device;
    let want = tunnel_attrs(cfg, under.index);
    let mut changes = 0;

    let mut link = nl_
        .link_by_name(dev)
        .map_err(nl(format!("looking up vxlan device {dev}")))?;
    if let Some(l) = &link {
        match vxlan_data(l) {
            None => return Err(DeviceError::Foreign(dev.clone()).into()),
            Some(have) if tunnel_matches(&have, &want) => {}
            Some(_) => {
                // VNI, port, local address or underlay changed: the device must be made
                // anew (its FDB, neighbours and routes go with it; the reconcile after
                // this puts them back).
                delete_index(&mut nl_, l.header.index, dev)?;
                changes += 1;
                link = None;
            }
        }
    }
    let link = match link {
        Some(l) => l,
        None => {
            let mut msg = LinkMessage::default();
            msg.attributes.push(LinkAttribute::IfName(dev.clone()));
            msg.attributes.push(LinkAttribute::Mtu(mtu));
            msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
            msg.attributes.push(LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Vxlan),
                LinkInfo::Data(InfoData::Vxlan(want)),
            ]));
            nl_.request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
                .map_err(nl(format!(
                    "creating vxlan device {dev} (vni {}, port {}, local {} on {})",
                    cfg.vni, cfg.port, cfg.underlay_ip, under.name
                )))?;
            changes += 1;
            nl_.link_by_name(dev)
                .map_err(nl(format!("looking up vxlan device {dev}")))?
                .ok_or_else(|| DeviceError::Netlink {
                    op: format!("looking up vxlan device {dev} after creating it"),
                    source: io::Error::from_raw_os_error(ENODEV),
                })?
        }
    };
    let ifindex = link.header.index;

    // MTU and MAC: set only when they differ.
    let mut set = LinkMessage::default();
    set.header.index = ifindex;
    if link_mtu(&link) != Some(mtu) {
        set.attributes.push(LinkAttribute::Mtu(mtu));
    }
    if link_mac(&link).as_deref() != Some(&mac[..]) {
        set.attributes.push(LinkAttribute::Address(mac.to_vec()));
    }
    if !set.attributes.is_empty() {
        nl_.request(RouteNetlinkMessage::SetLink(set), 0)
            .map_err(nl(format!(
                "setting mtu {mtu} and mac of vxlan device {dev}"
            )))?;
        changes += 1;
    }

    changes += ensure_address(&mut nl_, ifindex, cfg)?;

    let offload = cfg.tx_checksum == TxChecksum::Offload;
    if ethtool::set_tx_checksum_offload(dev, offload).map_err(|source| DeviceError::Checksum {
        dev: dev.clone(),
        source,
    })? {
        changes += 1;
    }

    if !link.header.flags.contains(LinkFlags::Up) {
        let mut up = LinkMessage::default();
        up.header.index = ifindex;
        up.header.flags = LinkFlags::Up;
        up.header.change_mask = LinkFlags::Up;
        nl_.request(RouteNetlinkMessage::SetLink(up), 0)
            .map_err(nl(format!("setting vxlan device {dev} up")))?;
        changes += 1;
    }

    Ok((
        Vtep {
            name: dev.clone(),
            ifindex,
            mac,
            mtu,
        },
        changes,
    ))
}

/// The device carries exactly `<block>.0/32` (flannel's layout: the host's own source
/// address on the overlay, and the neighbour address the other hosts route via). A /32,
/// so the kernel adds no connected route that would claim the whole cluster range.
fn ensure_address(
    nl_: &mut Netlink,
    ifindex: u32,
    cfg: &OverlayConfig,
) -> Result<usize, DeviceError> {
    let dev = &cfg.device;
    let want = cfg.device_addr();
    let addrs =
        netlink::addresses(nl_).map_err(nl(format!("listing addresses of vxlan device {dev}")))?;
    let mut has_want = false;
    let mut changes = 0;
    for a in addrs.into_iter().filter(|a| a.header.index == ifindex) {
        let local = a.attributes.iter().find_map(|at| match at {
            AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
            _ => None,
        });
        if local == Some(want) && a.header.prefix_len == 32 {
            has_want = true;
            continue;
        }
        // A left-over address of an earlier block.
        let what = format!("deleting stale address {local:?} from vxlan device {dev}");
        nl_.request(RouteNetlinkMessage::DelAddress(a), 0)
            .map_err(nl(what))?;
        changes += 1;
    }
    if !has_want {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = 32;
        msg.header.index = ifindex;
        msg.attributes.push(AddressAttribute::Local(want.into()));
        msg.attributes.push(AddressAttribute::Address(want.into()));
        nl_.request(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map_err(nl(format!(
            "adding address {want}/32 to vxlan device {dev}"
        )))?;
        changes += 1;
    }
    Ok(changes)
}

fn delete_index(nl_: &mut Netlink, index: u32, dev: &str) -> Result<(), DeviceError> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    match nl_.request(RouteNetlinkMessage::DelLink(msg), 0) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(ENODEV) => Ok(()),
        Err(e) => Err(nl(format!("deleting vxlan device {dev}"))(e)),
    }
}

/// Deletes the device (and with it every FDB, neighbour and route entry on it); Ok(false)
/// if it did not exist. A device of that name that is not vxlan is left alone.
pub fn delete_device(device: &str) -> Result<bool, super::OverlayError> {
    let mut nl_ = netlink::open().map_err(nl("opening a netlink socket"))?;
    let Some(link) = nl_
        .link_by_name(device)
        .map_err(nl(format!("looking up vxlan device {device}")))?
    else {
        return Ok(false);
    };
    if vxlan_data(&link).is_none() {
        return Err(DeviceError::Foreign(device.to_string()).into());
    }
    delete_index(&mut nl_, link.header.index, device)?;
    Ok(true)
}

/// The device as it is now, without changing anything; None if it does not exist.
pub fn find_device(cfg: &OverlayConfig) -> Result<Option<Vtep>, super::OverlayError> {
    let mut nl_ = netlink::open().map_err(nl("opening a netlink socket"))?;
    let Some(link) = nl_
        .link_by_name(&cfg.device)
        .map_err(nl(format!("looking up vxlan device {}", cfg.device)))?
    else {
        return Ok(None);
    };
    if vxlan_data(&link).is_none() {
        return Err(DeviceError::Foreign(cfg.device.clone()).into());
    }
    let mac = link_mac(&link)
        .and_then(|m| <[u8; 6]>::try_from(m).ok())
        .unwrap_or_default();
    Ok(Some(Vtep {
        name: cfg.device.clone(),
        ifindex: link.header.index,
        mac,
        mtu: link_mtu(&link).unwrap_or(0),
    }))
}
