//! The pure heart of the reconciler: from the desired map and the kernel's actual entries
//! to the list of changes, with no I/O, so every case is unit-tested without root.
//!
//! Per remote host that is up, flannel's three entries, the route once per block:
//!
//! ```text
//! neighbour  <first block>.0 lladdr <vtep mac> dev vx nud permanent   (no ARP over the overlay)
//! fdb        <vtep mac> dst <underlay ip> dev vx self permanent       (where to send the frame)
//! route      <block> via <first block>.0 dev vx onlink                (which frames to make)
//! ```
//!
//! Every block of a host goes via the same next hop (its first block's `.0`), so a host
//! that gets another block costs one route, and the neighbour and FDB entries stay put.
//!
//! The plan is level-triggered: it only compares what is with what should be, so running
//! it again after a crash, a restart or a missed event converges, and when the two agree
//! it is empty (zero netlink writes).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::config::{format_mac, RemoteHost};

/// A static FDB entry on our device: frames for `mac` go to `dst` on the underlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FdbEntry {
    pub mac: [u8; 6],
    pub dst: Ipv4Addr,
}

/// A permanent neighbour entry on our device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NeighEntry {
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
}

/// One of our routes: `dst via via dev <oif> onlink`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteEntry {
    pub dst: Ipv4Net,
    pub via: Ipv4Addr,
    pub oif: u32,
}

/// What the kernel has on our device (read_actual keeps only ours).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actual {
    pub fdb: Vec<FdbEntry>,
    pub neigh: Vec<NeighEntry>,
    pub routes: Vec<RouteEntry>,
}

/// One kernel change. "Put" creates or replaces (so a changed MAC or underlay address is
/// one atomic write, not a delete that opens a gap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    PutNeigh(NeighEntry),
    DelNeigh(NeighEntry),
    PutFdb(FdbEntry),
    DelFdb(FdbEntry),
    PutRoute { dst: Ipv4Net, via: Ipv4Addr },
    DelRoute { dst: Ipv4Net, via: Ipv4Addr },
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::PutNeigh(n) => write!(
                f,
                "putting neighbour {} lladdr {}",
                n.ip,
                format_mac(&n.mac)
            ),
            Op::DelNeigh(n) => write!(
                f,
                "deleting neighbour {} lladdr {}",
                n.ip,
                format_mac(&n.mac)
            ),
            Op::PutFdb(e) => write!(f, "putting fdb {} dst {}", format_mac(&e.mac), e.dst),
            Op::DelFdb(e) => write!(f, "deleting fdb {} dst {}", format_mac(&e.mac), e.dst),
            Op::PutRoute { dst, via } => write!(f, "putting route {dst} via {via}"),
            Op::DelRoute { dst, via } => write!(f, "deleting route {dst} via {via}"),
        }
    }
}

/// A host of the map that is not programmed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub name: String,
    pub reason: String,
}

/// Picks the hosts to program: up, not this host, with blocks, and not conflicting with
/// this host or an earlier host (by name) over a block, an underlay address or a VTEP
/// MAC. A conflict is a bug in the map; programming either side would misroute, so the
/// later host is left out whole (and reported) while the rest of the overlay keeps
/// working. `local_blocks` are all of this host's blocks.
pub fn select(
    local_blocks: &[Ipv4Net],
    local_underlay: Ipv4Addr,
    local_mac: [u8; 6],
    hosts: &[RemoteHost],
) -> (Vec<RemoteHost>, Vec<Skipped>) {
    let mut sorted: Vec<&RemoteHost> = hosts.iter().filter(|h| h.up).collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut chosen: Vec<RemoteHost> = Vec::new();
    let mut skipped = Vec::new();
    for h in sorted {
        let skip = |reason: String| Skipped {
            name: h.name.clone(),
            reason,
        };
        if h.underlay_ip == local_underlay {
            // This host itself, as the map lists every host: nothing to program.
            continue;
        }
        let bad_block = h
            .blocks
            .iter()
            .find(|b| **b != b.trunc() || b.prefix_len() > 30);
        let own_overlap = h.blocks.iter().enumerate().find_map(|(i, a)| {
            h.blocks[i + 1..]
                .iter()
                .find(|b| overlaps(*a, **b))
                .map(|b| (*a, *b))
        });
        let local_overlap = h.blocks.iter().find_map(|b| {
            local_blocks
                .iter()
                .find(|l| overlaps(*b, **l))
                .map(|l| (*b, *l))
        });
        if h.blocks.is_empty() {
            skipped.push(skip("no address block".to_string()));
        } else if let Some(b) = bad_block {
            skipped.push(skip(format!("block {b} is not a network of at most /30")));
        } else if let Some((a, b)) = own_overlap {
            skipped.push(skip(format!("its blocks {a} and {b} overlap")));
        } else if let Some((b, l)) = local_overlap {
            skipped.push(skip(format!("block {b} overlaps this host's block {l}")));
        } else if h.vtep_mac == local_mac || h.vtep_mac[0] & 0x01 != 0 || h.vtep_mac == [0; 6] {
            skipped.push(skip(format!(
                "vtep mac {} is this host's, multicast or zero",
                format_mac(&h.vtep_mac)
            )));
        } else if let Some(other) = chosen.iter().find(|c| {
            c.blocks
                .iter()
                .any(|cb| h.blocks.iter().any(|hb| overlaps(*cb, *hb)))
                || c.underlay_ip == h.underlay_ip
                || c.vtep_mac == h.vtep_mac
        }) {
            skipped.push(skip(format!(
                "block, underlay address or vtep mac conflicts with host {}",
                other.name
            )));
        } else {
            chosen.push(h.clone());
        }
    }
    (chosen, skipped)
}

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The changes that turn `actual` into what `desired` asks for. Hosts that are down are
/// withdrawn; `desired` is expected to have passed [`select`] (no conflicts).
///
/// Order matters for traffic, not for correctness: routes to withdrawn blocks go first
/// (nothing new is sent into entries about to vanish), then neighbour and FDB entries,
/// then routes (a route appears only once the path under it exists), and finally the
/// entries nothing routes through any more.
pub fn plan(desired: &[RemoteHost], actual: &Actual) -> Vec<Op> {
    // A host without blocks has nothing to route to: no entries at all.
    let up = desired.iter().filter(|h| h.up && !h.blocks.is_empty());
    let want_neigh: BTreeMap<Ipv4Addr, [u8; 6]> = up
        .clone()
        .filter_map(|h| Some((h.next_hop()?, h.vtep_mac)))
        .collect();
    let want_fdb: BTreeMap<[u8; 6], Ipv4Addr> =
        up.clone().map(|h| (h.vtep_mac, h.underlay_ip)).collect();
    // One route per block, all via the host's one next hop.
    let want_route: BTreeMap<Ipv4Net, Ipv4Addr> = up
        .flat_map(|h| {
            let via = h.next_hop();
            h.blocks.iter().filter_map(move |b| Some((b.trunc(), via?)))
        })
        .collect();

    let mut have_neigh: BTreeMap<Ipv4Addr, BTreeSet<[u8; 6]>> = BTreeMap::new();
    for n in &actual.neigh {
        have_neigh.entry(n.ip).or_default().insert(n.mac);
    }
    let mut have_fdb: BTreeMap<[u8; 6], BTreeSet<Ipv4Addr>> = BTreeMap::new();
    for e in &actual.fdb {
        have_fdb.entry(e.mac).or_default().insert(e.dst);
    }
    let mut have_route: BTreeMap<Ipv4Net, BTreeSet<Ipv4Addr>> = BTreeMap::new();
    for r in &actual.routes {
        have_route.entry(r.dst).or_default().insert(r.via);
    }

    let mut ops = Vec::new();

    // 1. Routes to blocks no longer wanted.
    for (dst, vias) in &have_route {
        if !want_route.contains_key(dst) {
            ops.extend(vias.iter().map(|&via| Op::DelRoute { dst: *dst, via }));
        }
    }

    // 2. Neighbour entries: one per IP, so a put replaces a wrong MAC in place.
    for (&ip, &mac) in &want_neigh {
        let ok = have_neigh
            .get(&ip)
            .is_some_and(|macs| macs.len() == 1 && macs.contains(&mac));
        if !ok {
            ops.push(Op::PutNeigh(NeighEntry { ip, mac }));
        }
    }

    // 3. FDB entries. A MAC can have several remotes in the kernel (appended entries);
    // ours have exactly one. A single wrong remote is replaced in one write; extra
    // remotes are deleted first, so the put does not land on a remote about to go.
    for (&mac, &dst) in &want_fdb {
        match have_fdb.get(&mac) {
            None => ops.push(Op::PutFdb(FdbEntry { mac, dst })),
            Some(dsts) if dsts.len() == 1 => {
                if !dsts.contains(&dst) {
                    ops.push(Op::PutFdb(FdbEntry { mac, dst }));
                }
            }
            Some(dsts) => {
                ops.extend(
                    dsts.iter()
                        .filter(|&&d| d != dst)
                        .map(|&d| Op::DelFdb(FdbEntry { mac, dst: d })),
                );
                if !dsts.contains(&dst) {
                    ops.push(Op::PutFdb(FdbEntry { mac, dst }));
                }
            }
        }
    }

    // 4. Routes: one per block, replaced in place when the gateway differs.
    for (&dst, &via) in &want_route {
        let ok = have_route
            .get(&dst)
            .is_some_and(|vias| vias.len() == 1 && vias.contains(&via));
        if !ok {
            ops.push(Op::PutRoute { dst, via });
        }
    }

    // 5. FDB entries of MACs no host has any more.
    for (mac, dsts) in &have_fdb {
        if !want_fdb.contains_key(mac) {
            ops.extend(
                dsts.iter()
                    .map(|&dst| Op::DelFdb(FdbEntry { mac: *mac, dst })),
            );
        }
    }

    // 6. Neighbour entries of blocks no host has any more.
    for (ip, macs) in &have_neigh {
        if !want_neigh.contains_key(ip) {
            ops.extend(
                macs.iter()
                    .map(|&mac| Op::DelNeigh(NeighEntry { ip: *ip, mac })),
            );
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    const OIF: u32 = 7;

    fn host(n: u8) -> RemoteHost {
        RemoteHost {
            name: format!("h{n}"),
            underlay_ip: Ipv4Addr::new(10, 199, 0, n),
            vtep_mac: [0x0a, 0x58, 10, 199, 0, n],
            blocks: vec![format!("10.244.{n}.0/24").parse().unwrap()],
            up: true,
        }
    }

    /// The kernel state that exactly matches `hosts`.
    fn programmed(hosts: &[RemoteHost]) -> Actual {
        let mut a = Actual::default();
        for h in hosts.iter().filter(|h| h.up) {
            let via = h.blocks[0].network();
            a.neigh.push(NeighEntry {
                ip: via,
                mac: h.vtep_mac,
            });
            a.fdb.push(FdbEntry {
                mac: h.vtep_mac,
                dst: h.underlay_ip,
            });
            for b in &h.blocks {
                a.routes.push(RouteEntry {
                    dst: *b,
                    via,
                    oif: OIF,
                });
            }
        }
        a
    }

    /// Applies ops to a model of the kernel with put = replace semantics.
    fn simulate(actual: &Actual, ops: &[Op]) -> Actual {
        let mut a = actual.clone();
        for op in ops {
            match *op {
                Op::PutNeigh(n) => {
                    a.neigh.retain(|x| x.ip != n.ip);
                    a.neigh.push(n);
                }
                Op::DelNeigh(n) => a.neigh.retain(|x| *x != n),
                Op::PutFdb(e) => {
                    // replace the first remote of the MAC, as the kernel does
                    if let Some(x) = a.fdb.iter_mut().find(|x| x.mac == e.mac) {
                        x.dst = e.dst;
                    } else {
                        a.fdb.push(e);
                    }
                }
                Op::DelFdb(e) => a.fdb.retain(|x| *x != e),
                Op::PutRoute { dst, via } => {
                    a.routes.retain(|r| r.dst != dst);
                    a.routes.push(RouteEntry { dst, via, oif: OIF });
                }
                Op::DelRoute { dst, via } => a.routes.retain(|r| !(r.dst == dst && r.via == via)),
            }
        }
        a.neigh.sort();
        a.fdb.sort();
        a.routes.sort();
        a
    }

    fn sorted(mut a: Actual) -> Actual {
        a.neigh.sort();
        a.fdb.sort();
        a.routes.sort();
        a
    }

    fn converges(desired: &[RemoteHost], actual: &Actual) -> Vec<Op> {
        let ops = plan(desired, actual);
        let after = simulate(actual, &ops);
        assert_eq!(after, sorted(programmed(desired)), "ops {ops:?}");
        assert!(plan(desired, &after).is_empty(), "second pass is a no-op");
        ops
    }

    #[test]
    fn empty_to_three_hosts_adds_entries_before_routes() {
        let hosts = [host(1), host(2), host(3)];
        let ops = converges(&hosts, &Actual::default());
        assert_eq!(ops.len(), 9);
        let first_route = ops
            .iter()
            .position(|o| matches!(o, Op::PutRoute { .. }))
            .unwrap();
        assert!(ops[..first_route]
            .iter()
            .all(|o| matches!(o, Op::PutNeigh(_) | Op::PutFdb(_))));
        assert!(ops.contains(&Op::PutRoute {
            dst: "10.244.2.0/24".parse().unwrap(),
            via: Ipv4Addr::new(10, 244, 2, 0)
        }));
    }

    #[test]
    fn equal_state_is_a_no_op() {
        let hosts = [host(1), host(2)];
        assert!(plan(&hosts, &programmed(&hosts)).is_empty());
        assert!(plan(&[], &Actual::default()).is_empty());
    }

    #[test]
    fn removed_host_is_withdrawn_route_first() {
        let before = [host(1), host(2)];
        let ops = converges(&[host(1)], &programmed(&before));
        assert_eq!(
            ops,
            vec![
                Op::DelRoute {
                    dst: "10.244.2.0/24".parse().unwrap(),
                    via: Ipv4Addr::new(10, 244, 2, 0)
                },
                Op::DelFdb(FdbEntry {
                    mac: host(2).vtep_mac,
                    dst: host(2).underlay_ip
                }),
                Op::DelNeigh(NeighEntry {
                    ip: Ipv4Addr::new(10, 244, 2, 0),
                    mac: host(2).vtep_mac
                }),
            ]
        );
    }

    #[test]
    fn host_down_is_withdrawn_and_back_up_restored() {
        let all = [host(1), host(2)];
        let mut down = all.clone();
        down[1].up = false;
        let ops = converges(&down, &programmed(&all));
        assert_eq!(ops.len(), 3);
        assert!(ops
            .iter()
            .all(|o| matches!(o, Op::DelRoute { .. } | Op::DelFdb(_) | Op::DelNeigh(_))));
        let ops = converges(&all, &programmed(&down));
        assert_eq!(ops.len(), 3);
    }

    #[test]
    fn changed_underlay_ip_is_one_fdb_replace() {
        let before = [host(1)];
        let mut after = before.clone();
        after[0].underlay_ip = Ipv4Addr::new(10, 199, 0, 99);
        let ops = converges(&after, &programmed(&before));
        assert_eq!(
            ops,
            vec![Op::PutFdb(FdbEntry {
                mac: host(1).vtep_mac,
                dst: Ipv4Addr::new(10, 199, 0, 99)
            })]
        );
    }

    #[test]
    fn changed_mac_replaces_neighbour_adds_fdb_and_drops_the_old_one() {
        let before = [host(1)];
        let mut after = before.clone();
        after[0].vtep_mac = [0x0a, 0x58, 1, 1, 1, 1];
        let ops = converges(&after, &programmed(&before));
        assert_eq!(
            ops,
            vec![
                Op::PutNeigh(NeighEntry {
                    ip: Ipv4Addr::new(10, 244, 1, 0),
                    mac: [0x0a, 0x58, 1, 1, 1, 1]
                }),
                Op::PutFdb(FdbEntry {
                    mac: [0x0a, 0x58, 1, 1, 1, 1],
                    dst: host(1).underlay_ip
                }),
                Op::DelFdb(FdbEntry {
                    mac: host(1).vtep_mac,
                    dst: host(1).underlay_ip
                }),
            ]
        );
    }

    #[test]
    fn changed_block_moves_route_and_neighbour() {
        let before = [host(1)];
        let mut after = before.clone();
        after[0].blocks = vec!["10.244.77.0/24".parse().unwrap()];
        let ops = converges(&after, &programmed(&before));
        assert_eq!(ops.len(), 4, "{ops:?}");
        assert!(matches!(ops[0], Op::DelRoute { .. }));
        assert!(matches!(ops[3], Op::DelNeigh(_)));
    }

    #[test]
    fn wrong_route_gateway_and_extra_fdb_remote_are_repaired() {
        let hosts = [host(1)];
        let mut actual = programmed(&hosts);
        actual.routes[0].via = Ipv4Addr::new(10, 244, 1, 9);
        actual.fdb.push(FdbEntry {
            mac: host(1).vtep_mac,
            dst: Ipv4Addr::new(10, 199, 0, 50),
        });
        let ops = converges(&hosts, &actual);
        assert_eq!(ops.len(), 2, "{ops:?}");
    }

    #[test]
    fn stale_entries_of_unknown_hosts_are_removed() {
        let mut actual = programmed(&[host(1), host(5)]);
        actual.neigh.push(NeighEntry {
            ip: Ipv4Addr::new(10, 244, 9, 0),
            mac: [0x0a, 0x58, 0, 0, 0, 9],
        });
        let ops = converges(&[host(1)], &actual);
        assert_eq!(ops.len(), 4);
    }

    #[test]
    fn select_skips_self_conflicts_and_down_hosts() {
        let local_blocks: [Ipv4Net; 2] = [
            "10.244.3.0/24".parse().unwrap(),
            "10.244.30.0/24".parse().unwrap(),
        ];
        let local_ip = Ipv4Addr::new(10, 199, 0, 3);
        let local_mac = [0x0a, 0x58, 10, 199, 0, 3];
        let mut down = host(4);
        down.up = false;
        let mut same_block = host(6);
        same_block.blocks = host(1).blocks;
        let mut overlaps_local = host(7);
        overlaps_local.blocks = vec!["10.244.0.0/16".parse().unwrap()];
        // Its first block is fine; its second is this host's second.
        let mut overlaps_local_second = host(9);
        overlaps_local_second
            .blocks
            .push("10.244.30.0/25".parse().unwrap());
        let mut overlaps_itself = host(10);
        overlaps_itself
            .blocks
            .push("10.244.10.128/25".parse().unwrap());
        let mut no_blocks = host(11);
        no_blocks.blocks.clear();
        let mut multicast_mac = host(8);
        multicast_mac.vtep_mac[0] = 0x01;
        let hosts = [
            same_block,
            host(3), // this host, as listed by the map
            host(1),
            down,
            overlaps_local,
            multicast_mac,
            host(2),
            overlaps_local_second,
            overlaps_itself,
            no_blocks,
        ];
        let (chosen, skipped) = select(&local_blocks, local_ip, local_mac, &hosts);
        let names: Vec<_> = chosen.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["h1", "h2"]);
        let skipped: Vec<_> = skipped.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(skipped, ["h10", "h11", "h6", "h7", "h8", "h9"]);
    }

    #[test]
    fn plan_ignores_down_hosts_it_is_given() {
        let mut h = host(1);
        h.up = false;
        assert!(plan(&[h.clone()], &Actual::default()).is_empty());
        assert_eq!(plan(&[h], &programmed(&[host(1)])).len(), 3);
    }

    fn two_blocks(n: u8) -> RemoteHost {
        let mut h = host(n);
        h.blocks
            .push(format!("10.244.{}.0/24", 100 + n).parse().unwrap());
        h
    }

    #[test]
    fn a_host_with_two_blocks_gets_two_routes_via_one_next_hop() {
        let ops = converges(&[two_blocks(1)], &Actual::default());
        let via = Ipv4Addr::new(10, 244, 1, 0);
        assert_eq!(
            ops,
            vec![
                Op::PutNeigh(NeighEntry {
                    ip: via,
                    mac: host(1).vtep_mac
                }),
                Op::PutFdb(FdbEntry {
                    mac: host(1).vtep_mac,
                    dst: host(1).underlay_ip
                }),
                Op::PutRoute {
                    dst: "10.244.1.0/24".parse().unwrap(),
                    via
                },
                Op::PutRoute {
                    dst: "10.244.101.0/24".parse().unwrap(),
                    via
                },
            ]
        );
        assert!(plan(&[two_blocks(1)], &programmed(&[two_blocks(1)])).is_empty());
    }

    #[test]
    fn adding_a_block_is_one_route() {
        let ops = converges(&[two_blocks(1), host(2)], &programmed(&[host(1), host(2)]));
        assert_eq!(
            ops,
            vec![Op::PutRoute {
                dst: "10.244.101.0/24".parse().unwrap(),
                via: Ipv4Addr::new(10, 244, 1, 0)
            }]
        );
    }

    #[test]
    fn removing_a_block_is_one_route_withdrawn() {
        let ops = converges(&[host(1)], &programmed(&[two_blocks(1)]));
        assert_eq!(
            ops,
            vec![Op::DelRoute {
                dst: "10.244.101.0/24".parse().unwrap(),
                via: Ipv4Addr::new(10, 244, 1, 0)
            }]
        );
    }

    #[test]
    fn a_host_with_two_blocks_going_down_withdraws_everything() {
        let mut down = two_blocks(1);
        down.up = false;
        let ops = converges(&[down, host(2)], &programmed(&[two_blocks(1), host(2)]));
        assert_eq!(ops.len(), 4, "{ops:?}");
        assert!(ops[..2].iter().all(|o| matches!(o, Op::DelRoute { .. })));
    }

    #[test]
    fn plan_gives_a_host_without_blocks_nothing() {
        let mut h = host(1);
        h.blocks.clear();
        assert!(plan(&[h], &Actual::default()).is_empty());
    }
}
