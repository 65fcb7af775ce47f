//! Address allocation for one network: a JSON file of address → owner, changed only under
//! an flock and written by atomic rename, so no address ever has two owners, even across
//! processes. Allocation is next-fit: it resumes after the last address handed out, so an
//! address just released is not immediately given to the next container (a stale peer
//! still holding it in an ARP cache would otherwise reach the wrong container).
//!
//! A network may have several ranges (a cluster host's blocks): they are searched as one
//! sequence, the first subnet's addresses first, so the first range fills before the
//! next is used, and next-fit carries on across them.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::config::Range;
use crate::fsutil;

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// `subnets`: every range's subnet, comma separated.
    #[error("network {network} ({subnets}): no free addresses")]
    Exhausted { network: String, subnets: String },
    #[error("network {network}: requested address {addr} is not inside subnet {subnets}")]
    OutsideSubnet {
        network: String,
        addr: Ipv4Addr,
        subnets: String,
    },
    #[error("network {network}: requested address {addr} is reserved ({what})")]
    Reserved {
        network: String,
        addr: Ipv4Addr,
        what: &'static str,
    },
    #[error("network {network}: address {addr} is already in use by {owner}")]
    Taken {
        network: String,
        addr: Ipv4Addr,
        owner: String,
    },
    #[error("network {network}: {owner} already holds {held}, cannot also take {addr}")]
    OwnerHoldsOther {
        network: String,
        owner: String,
        held: Ipv4Addr,
        addr: Ipv4Addr,
    },
    #[error("{what} address allocations of network {network} at {path}: {source}")]
    Io {
        what: &'static str,
        network: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    /// The last address handed out; the next search starts after it.
    last: Option<Ipv4Addr>,
    allocations: BTreeMap<Ipv4Addr, String>,
}

/// The allocator of one network. Cheap to create; all state is on disk.
#[derive(Debug, Clone)]
pub struct Ipam {
    network: String,
    /// Never empty: the constructors take at least one.
    ranges: Vec<Range>,
    path: PathBuf,
    lock_path: PathBuf,
}

impl Ipam {
    /// `path` is the JSON file. The lock is one `.lock` file for the whole directory:
    /// allocations are rare and short, and a lock file that is never deleted cannot be
    /// raced by a removal (a waiter would otherwise lock an unlinked file).
    pub fn new(network: &str, subnet: Ipv4Net, gateway: Ipv4Addr, path: &Path) -> Ipam {
        Ipam::with_ranges(network, Range { subnet, gateway }, &[], path)
    }

    /// An allocator over `first` and then `more`, in that order (see the module docs).
    pub fn with_ranges(network: &str, first: Range, more: &[Range], path: &Path) -> Ipam {
        Ipam {
            network: network.to_string(),
            ranges: std::iter::once(first).chain(more.iter().copied()).collect(),
            path: path.to_path_buf(),
            lock_path: path.with_file_name(".lock"),
        }
    }

    fn subnets_text(&self) -> String {
        self.ranges
            .iter()
            .map(|r| r.subnet.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// How many addresses the ranges can hand out, and how many of those are taken.
    pub fn usage(&self) -> Result<(u64, u64), IpamError> {
        let state = self.load()?;
        let capacity = self.ranges.iter().map(|r| usable(r).count() as u64).sum();
        let used = state
            .allocations
            .keys()
            .filter(|a| self.ranges.iter().any(|r| r.subnet.contains(*a)))
            .count() as u64;
        Ok((capacity, used))
    }

    /// Gives `owner` an address: `requested` if free, else the next free one after the
    /// last handed out. An owner that already holds an address gets it again.
    pub fn allocate(
        &self,
        owner: &str,
        requested: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, IpamError> {
        if let Some(addr) = requested {
            self.check_requestable(addr)?;
        }
        self.update(|state| {
            if let Some((&held, _)) = state.allocations.iter().find(|(_, o)| *o == owner) {
                return match requested {
                    Some(addr) if addr != held => Err(IpamError::OwnerHoldsOther {
                        network: self.network.clone(),
                        owner: owner.to_string(),
                        held,
                        addr,
                    }),
                    _ => Ok(held),
                };
            }
            let addr = match requested {
                Some(addr) => {
                    if let Some(other) = state.allocations.get(&addr) {
                        return Err(IpamError::Taken {
                            network: self.network.clone(),
                            addr,
                            owner: other.clone(),
                        });
                    }
                    addr
                }
                None => self.next_free(state)?,
            };
            state.allocations.insert(addr, owner.to_string());
            state.last = Some(addr);
            Ok(addr)
        })
    }

    /// Drops `owner`'s address; nothing to do if it holds none.
    pub fn release(&self, owner: &str) -> Result<(), IpamError> {
        self.update(|state| {
            state.allocations.retain(|_, o| o != owner);
            Ok(())
        })
    }

    /// Start-up recovery: drops the allocations of owners for which `live_owners` is
    /// false, and returns those owners.
    pub fn retain(&self, live_owners: &dyn Fn(&str) -> bool) -> Result<Vec<String>, IpamError> {
        self.update(|state| {
            let mut dropped = Vec::new();
            state.allocations.retain(|_, owner| {
                let live = live_owners(owner);
                if !live {
                    dropped.push(owner.clone());
                }
                live
            });
            Ok(dropped)
        })
    }

    pub fn allocations(&self) -> Result<BTreeMap<Ipv4Addr, String>, IpamError> {
        Ok(self.load()?.allocations)
    }

    /// For removing the network: under the lock, so no allocation can slip in, runs
    /// `teardown` and deletes the allocation file if no address is allocated. Returns the
    /// owners (and does nothing) otherwise.
    pub(crate) fn remove_if_unused<E: From<IpamError>>(
        &self,
        teardown: impl FnOnce() -> Result<(), E>,
    ) -> Result<Vec<String>, E> {
        let _lock = fsutil::lock(&self.lock_path).map_err(|e| self.io_err("locking", e))?;
        let owners: Vec<String> = self.load()?.allocations.into_values().collect();
        if owners.is_empty() {
            teardown()?;
            fsutil::remove_if_exists(&self.path).map_err(|e| self.io_err("removing", e))?;
        }
        Ok(owners)
    }

    fn check_requestable(&self, addr: Ipv4Addr) -> Result<(), IpamError> {
        let Some(r) = self.ranges.iter().find(|r| r.subnet.contains(&addr)) else {
            return Err(IpamError::OutsideSubnet {
                network: self.network.clone(),
                addr,
                subnets: self.subnets_text(),
            });
        };
        let what = if addr == r.subnet.network() {
            "network address"
        } else if addr == r.subnet.broadcast() {
            "broadcast address"
        } else if addr == r.gateway {
            "gateway"
        } else {
            return Ok(());
        };
        Err(IpamError::Reserved {
            network: self.network.clone(),
            addr,
            what,
        })
    }

    /// Next-fit over the ranges' usable addresses taken as one sequence: the search
    /// starts after the last address handed out (at the start when that is in no range
    /// any more) and wraps around once.
    fn next_free(&self, state: &State) -> Result<Ipv4Addr, IpamError> {
        let all: Vec<Ipv4Addr> = self.ranges.iter().flat_map(usable).collect();
        let start = state
            .last
            .and_then(|l| all.iter().position(|a| *a == l))
            .map_or(0, |i| i + 1);
        (0..all.len())
            .map(|i| all[(start + i) % all.len()])
            .find(|a| !state.allocations.contains_key(a))
            .ok_or_else(|| IpamError::Exhausted {
                network: self.network.clone(),
                subnets: self.subnets_text(),
            })
    }

    fn load(&self) -> Result<State, IpamError> {
        fsutil::read_json(&self.path)
            .map(Option::unwrap_or_default)
            .map_err(|e| self.io_err("reading", e))
    }

    /// Runs `f` on the state under the lock and saves it if `f` succeeded.
    fn update<T>(
        &self,
        f: impl FnOnce(&mut State) -> Result<T, IpamError>,
    ) -> Result<T, IpamError> {
        let _lock = fsutil::lock(&self.lock_path).map_err(|e| self.io_err("locking", e))?;
        let mut state = self.load()?;
        let out = f(&mut state)?;
        fsutil::write_json_atomic(&self.path, &state).map_err(|e| self.io_err("writing", e))?;
        Ok(out)
    }

    fn io_err(&self, what: &'static str, source: std::io::Error) -> IpamError {
        IpamError::Io {
            what,
            network: self.network.clone(),
            path: self.path.clone(),
            source,
        }
    }
}

/// The addresses a range hands out: all but network, broadcast and gateway.
fn usable(r: &Range) -> impl Iterator<Item = Ipv4Addr> + '_ {
    let first = u32::from(r.subnet.network()) + 1;
    let last = u32::from(r.subnet.broadcast());
    (first..last)
        .map(Ipv4Addr::from)
        .filter(move |a| *a != r.gateway)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipam(dir: &Path, subnet: &str) -> Ipam {
        let subnet: Ipv4Net = subnet.parse().unwrap();
        let gw = crate::config::first_host(subnet);
        Ipam::new("n", subnet, gw, &dir.join("n.json"))
    }

    fn a(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn skips_network_gateway_broadcast_and_is_next_fit() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = ipam(dir.path(), "10.89.3.0/29");
        assert_eq!(ipam.allocate("c1", None).unwrap(), a("10.89.3.2"));
        assert_eq!(ipam.allocate("c2", None).unwrap(), a("10.89.3.3"));
        ipam.release("c1").unwrap();
        // next-fit: .2 was just released, so .4 comes first
        assert_eq!(ipam.allocate("c3", None).unwrap(), a("10.89.3.4"));
        assert_eq!(ipam.allocate("c4", None).unwrap(), a("10.89.3.5"));
        assert_eq!(ipam.allocate("c5", None).unwrap(), a("10.89.3.6"));
        // wraps around to the released .2, never .7 (broadcast)
        assert_eq!(ipam.allocate("c6", None).unwrap(), a("10.89.3.2"));
        let e = ipam.allocate("c7", None).unwrap_err();
        assert_eq!(e.to_string(), "network n (10.89.3.0/29): no free addresses");
        // the same owner gets its address again
        assert_eq!(ipam.allocate("c4", None).unwrap(), a("10.89.3.5"));
    }

    #[test]
    fn exhaustion_of_a_slash_30() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = ipam(dir.path(), "10.89.3.0/30");
        assert_eq!(ipam.allocate("c1", None).unwrap(), a("10.89.3.2"));
        let e = ipam.allocate("c2", None).unwrap_err();
        assert_eq!(e.to_string(), "network n (10.89.3.0/30): no free addresses");
    }

    #[test]
    fn requested_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = ipam(dir.path(), "10.89.0.0/24");
        assert_eq!(
            ipam.allocate("c1", Some(a("10.89.0.50"))).unwrap(),
            a("10.89.0.50")
        );
        let e = ipam.allocate("c2", Some(a("10.89.0.50"))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "network n: address 10.89.0.50 is already in use by c1"
        );
        let e = ipam.allocate("c2", Some(a("10.90.0.5"))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "network n: requested address 10.90.0.5 is not inside subnet 10.89.0.0/24"
        );
        for (addr, what) in [
            ("10.89.0.1", "gateway"),
            ("10.89.0.0", "network"),
            ("10.89.0.255", "broadcast"),
        ] {
            let e = ipam.allocate("c2", Some(a(addr))).unwrap_err().to_string();
            assert!(e.contains(what) && e.contains(addr), "{e}");
        }
        let e = ipam.allocate("c1", Some(a("10.89.0.51"))).unwrap_err();
        assert!(e.to_string().contains("c1 already holds 10.89.0.50"), "{e}");
        // next-fit continues after the requested address
        assert_eq!(ipam.allocate("c2", None).unwrap(), a("10.89.0.51"));
    }

    #[test]
    fn persists_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let first = ipam(dir.path(), "10.89.0.0/24");
        first.allocate("c1", None).unwrap();
        first.allocate("c2", None).unwrap();
        first.release("c1").unwrap();
        let again = ipam(dir.path(), "10.89.0.0/24");
        let allocs = again.allocations().unwrap();
        assert_eq!(allocs.len(), 1);
        assert_eq!(allocs[&a("10.89.0.3")], "c2");
        // the next-fit cursor survived too
        assert_eq!(again.allocate("c3", None).unwrap(), a("10.89.0.4"));
        again.release("c3").unwrap();
        again.release("c3").unwrap(); // idempotent
    }

    #[test]
    fn retain_drops_dead_owners() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = ipam(dir.path(), "10.89.0.0/24");
        for c in ["live1", "dead1", "live2", "dead2"] {
            ipam.allocate(c, None).unwrap();
        }
        let mut dropped = ipam.retain(&|o| o.starts_with("live")).unwrap();
        dropped.sort();
        assert_eq!(dropped, ["dead1", "dead2"]);
        let owners: Vec<String> = ipam.allocations().unwrap().into_values().collect();
        assert_eq!(owners, ["live1", "live2"]);
    }

    #[test]
    fn concurrent_allocations_never_share_an_address() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    // a fresh Ipam per allocation: the lock is the file, not the struct
                    (0..20)
                        .map(|i| {
                            ipam(&path, "10.89.0.0/24")
                                .allocate(&format!("t{t}-{i}"), None)
                                .unwrap()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<Ipv4Addr> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
        assert_eq!(
            ipam(&path, "10.89.0.0/24").allocations().unwrap().len(),
            160
        );
    }

    fn two_ranges(dir: &Path) -> Ipam {
        Ipam::with_ranges(
            "cluster",
            Range::with_first_host("10.244.0.0/29".parse().unwrap()),
            &[Range::with_first_host("10.244.0.16/29".parse().unwrap())],
            &dir.join("c.json"),
        )
    }

    #[test]
    fn several_ranges_fill_the_first_first_then_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = two_ranges(dir.path());
        let got: Vec<Ipv4Addr> = (0..10)
            .map(|i| ipam.allocate(&format!("c{i}"), None).unwrap())
            .collect();
        let want: Vec<Ipv4Addr> = (2..=6)
            .map(|d| Ipv4Addr::new(10, 244, 0, d))
            .chain((18..=22).map(|d| Ipv4Addr::new(10, 244, 0, d)))
            .collect();
        assert_eq!(got, want, "the gateways .1 and .17 are never handed out");
        assert_eq!(ipam.usage().unwrap(), (10, 10));
        let e = ipam.allocate("c10", None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "network cluster (10.244.0.0/29, 10.244.0.16/29): no free addresses"
        );
        // next-fit wraps from the end of the last range to the first.
        ipam.release("c1").unwrap();
        ipam.release("c8").unwrap();
        assert_eq!(ipam.allocate("c11", None).unwrap(), a("10.244.0.3"));
        assert_eq!(ipam.allocate("c12", None).unwrap(), a("10.244.0.21"));
        // requested addresses: in any range, never a range's gateway.
        ipam.release("c0").unwrap();
        assert!(ipam
            .allocate("c13", Some(a("10.244.0.17")))
            .unwrap_err()
            .to_string()
            .contains("gateway"));
        let e = ipam.allocate("c13", Some(a("10.244.0.9"))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "network cluster: requested address 10.244.0.9 is not inside subnet 10.244.0.0/29, 10.244.0.16/29"
        );
    }

    #[test]
    fn a_range_added_later_extends_what_was_allocated() {
        let dir = tempfile::tempdir().unwrap();
        let one = Ipam::new(
            "cluster",
            "10.244.0.0/29".parse().unwrap(),
            a("10.244.0.1"),
            &dir.path().join("c.json"),
        );
        for i in 0..5 {
            one.allocate(&format!("c{i}"), None).unwrap();
        }
        assert!(one.allocate("c5", None).is_err());
        assert_eq!(one.usage().unwrap(), (5, 5));
        // The same file, now with a second range: the allocations stay, the new range
        // has room.
        let two = two_ranges(dir.path());
        assert_eq!(two.usage().unwrap(), (10, 5));
        assert_eq!(two.allocate("c5", None).unwrap(), a("10.244.0.18"));
        assert_eq!(two.allocate("c0", None).unwrap(), a("10.244.0.2"));
    }
}
