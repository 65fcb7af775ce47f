//! The overlay's nftables rules, in a table of their own (`table inet berth_overlay` by
//! default, configurable), never touching any other table:
//!
//! ```text
//! table inet berth_overlay
//!   set hosts     type ipv4_addr                  the up hosts' underlay addresses
//!   chain prerouting  filter hook prerouting, priority raw
//!     udp dport 4789 ip saddr @hosts              berth-overlay:vxlan-accept:4789
//!       notrack accept
//!     udp dport 4789 fib daddr type               berth-overlay:vxlan-drop:4789
//!       { local, broadcast, multicast } drop
//!     ip saddr C ip daddr C                       berth-overlay:notrack-cluster:C:24
//!       ip saddr & 0.0.0.255 > 0.0.0.1
//!       ip daddr & 0.0.0.255 > 0.0.0.1 notrack
//!   chain output  filter hook output, priority raw
//!     udp dport 4789 ip daddr @hosts notrack      berth-overlay:notrack-out:4789
//! ```
//!
//! Why the notrack rules: berth's own `inet berth` table has NAT chains, which make
//! conntrack follow every packet of the namespace, the outer VXLAN datagrams included
//! (a lookup on send and one on receive per packet, for flows nobody NATs or matches by
//! state: the accept and drop rules are stateless). Leaving them untracked costs nothing in
//! function and measured ~5-10% of a TCP stream's throughput across two hosts
//! (docs/performance.md). The inner packets are still tracked, as on any berth network.
//! A side effect: nothing on the host can NAT the outer datagrams between known hosts,
//! which is also the trigger of the pre-5.7 checksum bug (see [`super::checksum`]).
//!
//! Why the cluster rule: the same NAT chains make conntrack follow every container to
//! container packet crossing the host, though nothing NATs or filters them by state
//! (berth's forward chain lets the cluster's space in by address). With both tables in
//! place a cross-host TCP stream ran at 0.84-0.87x the same overlay built by hand
//! without any ruleset; leaving these flows untracked gave 0.92-0.97x
//! (docs/performance.md). Only packets between two containers are left alone: the
//! first two addresses of every block are a host's own (`.0`, `.1`), so a connection to
//! a port published on a host's cluster address is tracked and DNAT'd, and berth's
//! cluster network masquerades such connections into the bridge so the container's
//! replies go to a host address and are tracked too.
//!
//! Why the accept and drop rules: the VXLAN socket decapsulates whatever reaches its
//! port, and the inner packet then enters this host's container bridge as if it came
//! from the overlay; only the map's hosts may do that. They sit in the raw prerouting
//! chain rather than an input chain of their own, and a known host's datagram leaves
//! that chain at its first rule: every base chain is one more traversal for every packet
//! that reaches its hook (perf showed nft_do_chain among the top kernel symbols of a
//! cross-host stream), and with checksum offload off the outer datagrams are one per
//! MTU. Only datagrams from unknown senders pay the route lookup that tells whether they
//! are for this host (a datagram routed through the host is none of our business). For
//! the same reason there is no forward chain; counting the overlay's flows is what the
//! VXLAN device's own counters already do.
//!
//! Each rule carries a tag that encodes its parameters; the table is re-created (one
//! atomic batch) only when the tags differ from what the config asks, and otherwise only
//! the set's elements are changed, again in one batch. When nothing differs, nft is only
//! asked to list.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use super::config::{ClusterSpace, OverlayConfig};

const TAG: &str = "berth-overlay:";
const SET: &str = "hosts";

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// Running nft itself (berth-net's runner, shared by both of berth's tables).
    #[error(transparent)]
    Run(#[from] berth_net::nft::NftError),
    #[error("parsing nft's listing of table inet {table}: {reason}")]
    Listing { table: String, reason: String },
}

fn run(args: &[&str], stdin: &str, what: &str) -> Result<Vec<u8>, NftError> {
    Ok(berth_net::nft::run(args, stdin, what)?)
}

/// Our table as listed: rule tags with their packet counters, and the set's elements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listed {
    pub rules: BTreeMap<String, u64>,
    pub hosts: BTreeSet<Ipv4Addr>,
    pub has_set: bool,
}

/// The table's current state; None if it does not exist.
pub fn list(table: &str) -> Result<Option<Listed>, NftError> {
    berth_net::nft::list_json(table)?
        .map(|json| parse_listing(table, &json))
        .transpose()
}

pub(crate) fn parse_listing(table: &str, json: &[u8]) -> Result<Listed, NftError> {
    let bad = |reason: String| NftError::Listing {
        table: table.to_string(),
        reason,
    };
    let items = berth_net::nft::listing_items(table, json)?;
    let mut listed = Listed::default();
    for item in &items {
        if let Some(rule) = item.get("rule") {
            let Some(comment) = rule.get("comment").and_then(|c| c.as_str()) else {
                continue;
            };
            let packets = rule
                .get("expr")
                .and_then(|e| e.as_array())
                .into_iter()
                .flatten()
                .find_map(|x| x.get("counter")?.get("packets")?.as_u64())
                .unwrap_or(0);
            listed.rules.insert(comment.to_string(), packets);
        } else if let Some(set) = item.get("set") {
            if set.get("name").and_then(|n| n.as_str()) != Some(SET) {
                continue;
            }
            listed.has_set = true;
            for e in set
                .get("elem")
                .and_then(|e| e.as_array())
                .into_iter()
                .flatten()
            {
                // A plain set lists addresses as strings; one with per-element options
                // as {"elem": {"val": ...}}.
                let s = e
                    .as_str()
                    .or_else(|| e.get("elem")?.get("val")?.as_str())
                    .ok_or_else(|| bad(format!("unexpected set element {e}")))?;
                let ip = s
                    .parse()
                    .map_err(|_| bad(format!("set element {s} is not an IPv4 address")))?;
                listed.hosts.insert(ip);
            }
        }
    }
    Ok(listed)
}

/// The tags of the rules the config asks for.
pub(crate) fn expected_tags(cfg: &OverlayConfig) -> BTreeSet<String> {
    let p = cfg.port;
    [
        format!("{TAG}vxlan-accept:{p}"),
        format!("{TAG}vxlan-drop:{p}"),
        format!("{TAG}notrack-out:{p}"),
    ]
    .into_iter()
    .chain(cfg.cluster.map(|c| cluster_tag(&c)))
    .collect()
}

fn cluster_tag(c: &ClusterSpace) -> String {
    format!("{TAG}notrack-cluster:{}:{}", c.cidr, c.block_prefix)
}

/// The rule leaving container-to-container packets untracked (module docs).
fn cluster_rule(c: &ClusterSpace) -> String {
    let (net, m) = (c.cidr.trunc(), c.host_mask());
    format!(
        "\t\tip saddr {net} ip daddr {net} ip saddr & {m} > 0.0.0.1 ip daddr & {m} > 0.0.0.1 \
         counter notrack comment \"{}\"\n",
        cluster_tag(c)
    )
}

fn elements(hosts: &BTreeSet<Ipv4Addr>) -> String {
    hosts
        .iter()
        .map(|h| h.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The whole table, re-created atomically: "table {}" makes the delete valid when the
/// table does not exist yet, and the kernel applies the batch all or nothing.
pub(crate) fn table_script(cfg: &OverlayConfig, hosts: &BTreeSet<Ipv4Addr>) -> String {
    let t = &cfg.nft_table;
    let p = cfg.port;
    let elems = if hosts.is_empty() {
        String::new()
    } else {
        format!(" elements = {{ {} }};", elements(hosts))
    };
    let cluster = cfg.cluster.map(|c| cluster_rule(&c)).unwrap_or_default();
    format!(
        "table inet {t} {{}}\n\
         delete table inet {t}\n\
         table inet {t} {{\n\
         \tset {SET} {{ type ipv4_addr;{elems} }}\n\
         \tchain prerouting {{\n\
         \t\ttype filter hook prerouting priority raw; policy accept;\n\
         \t\tudp dport {p} ip saddr @{SET} counter notrack accept comment \"{TAG}vxlan-accept:{p}\"\n\
         \t\tudp dport {p} fib daddr type {{ local, broadcast, multicast }} counter drop \
         comment \"{TAG}vxlan-drop:{p}\"\n\
         {cluster}\
         \t}}\n\
         \tchain output {{\n\
         \t\ttype filter hook output priority raw; policy accept;\n\
         \t\tudp dport {p} ip daddr @{SET} counter notrack comment \"{TAG}notrack-out:{p}\"\n\
         \t}}\n\
         }}\n"
    )
}

/// The element changes that turn `have` into `want`; empty if equal.
pub(crate) fn element_script(
    table: &str,
    have: &BTreeSet<Ipv4Addr>,
    want: &BTreeSet<Ipv4Addr>,
) -> String {
    let gone: BTreeSet<Ipv4Addr> = have.difference(want).copied().collect();
    let new: BTreeSet<Ipv4Addr> = want.difference(have).copied().collect();
    let mut script = String::new();
    if !gone.is_empty() {
        script += &format!(
            "delete element inet {table} {SET} {{ {} }}\n",
            elements(&gone)
        );
    }
    if !new.is_empty() {
        script += &format!("add element inet {table} {SET} {{ {} }}\n", elements(&new));
    }
    script
}

fn is_current(cfg: &OverlayConfig, listed: &Listed) -> bool {
    listed.has_set && listed.rules.keys().cloned().collect::<BTreeSet<_>>() == expected_tags(cfg)
}

/// Makes the table exist with the config's rules, keeping the allowed hosts it already
/// has (a restart must not close the port to known hosts until the first reconcile), and
/// starting with none when new (nothing is accepted before the map is known).
/// Returns whether anything changed.
pub fn ensure_table(cfg: &OverlayConfig) -> Result<bool, NftError> {
    let listed = list(&cfg.nft_table)?;
    match listed {
        Some(l) if is_current(cfg, &l) => Ok(false),
        other => {
            let keep = other.map(|l| l.hosts).unwrap_or_default();
            run(
                &["-f", "-"],
                &table_script(cfg, &keep),
                &format!("create table inet {}", cfg.nft_table),
            )?;
            Ok(true)
        }
    }
}

/// Makes the allowed set exactly `hosts` (and the rules right); one batch, or none when
/// nothing differs. Returns whether anything changed.
pub fn sync_hosts(cfg: &OverlayConfig, hosts: &BTreeSet<Ipv4Addr>) -> Result<bool, NftError> {
    let t = &cfg.nft_table;
    match list(t)? {
        Some(l) if is_current(cfg, &l) => {
            let script = element_script(t, &l.hosts, hosts);
            if script.is_empty() {
                return Ok(false);
            }
            run(
                &["-f", "-"],
                &script,
                &format!("update the allowed vxlan senders in table inet {t}"),
            )?;
            Ok(true)
        }
        _ => {
            run(
                &["-f", "-"],
                &table_script(cfg, hosts),
                &format!("create table inet {t}"),
            )?;
            Ok(true)
        }
    }
}

/// Deletes the table; Ok(false) if it did not exist.
pub fn delete_table(table: &str) -> Result<bool, NftError> {
    if list(table)?.is_none() {
        return Ok(false);
    }
    run(
        &["-f", "-"],
        &format!("delete table inet {table}\n"),
        &format!("delete table inet {table}"),
    )?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> OverlayConfig {
        let mut c = OverlayConfig::new(
            Ipv4Addr::new(10, 199, 1, 2),
            "10.244.3.0/24".parse().unwrap(),
        );
        c.nft_table = "t1".into();
        c
    }

    fn set(ips: &[[u8; 4]]) -> BTreeSet<Ipv4Addr> {
        ips.iter().map(|&o| Ipv4Addr::from(o)).collect()
    }

    #[test]
    fn element_diff() {
        let have = set(&[[10, 0, 0, 1], [10, 0, 0, 2]]);
        let want = set(&[[10, 0, 0, 2], [10, 0, 0, 3]]);
        assert_eq!(
            element_script("t", &have, &want),
            "delete element inet t hosts { 10.0.0.1 }\nadd element inet t hosts { 10.0.0.3 }\n"
        );
        assert_eq!(element_script("t", &want, &want), "");
    }

    #[test]
    fn table_script_has_every_tag() {
        let c = cfg();
        let s = table_script(&c, &set(&[[10, 199, 1, 3]]));
        for tag in expected_tags(&c) {
            assert!(s.contains(&format!("\"{tag}\"")), "{tag} in {s}");
        }
        assert!(s.contains("elements = { 10.199.1.3 }"));
        assert!(s.starts_with("table inet t1 {}\ndelete table inet t1\n"));
        assert!(!table_script(&c, &BTreeSet::new()).contains("elements"));
    }

    #[test]
    fn container_to_container_packets_are_left_untracked_hosts_addresses_not() {
        let mut c = cfg();
        assert!(!table_script(&c, &BTreeSet::new()).contains("notrack-cluster"));
        c.cluster = Some(ClusterSpace {
            cidr: "10.244.0.0/16".parse().unwrap(),
            block_prefix: 29,
        });
        let s = table_script(&c, &BTreeSet::new());
        assert!(
            s.contains(
                "ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 ip saddr & 0.0.0.7 > 0.0.0.1 \
                 ip daddr & 0.0.0.7 > 0.0.0.1 counter notrack \
                 comment \"berth-overlay:notrack-cluster:10.244.0.0/16:29\""
            ),
            "{s}"
        );
        assert!(expected_tags(&c).contains("berth-overlay:notrack-cluster:10.244.0.0/16:29"));
        // A listing from before (no cluster rule) is not current: the table is redone.
        let mut listed = Listed {
            has_set: true,
            ..Listed::default()
        };
        for t in expected_tags(&cfg()) {
            listed.rules.insert(t, 0);
        }
        assert!(is_current(&cfg(), &listed));
        assert!(!is_current(&c, &listed));
    }

    #[test]
    fn parses_a_listing() {
        let json = br#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
          {"table": {"family": "inet", "name": "t1", "handle": 1}},
          {"set": {"family": "inet", "name": "hosts", "table": "t1", "type": "ipv4_addr",
                   "handle": 2, "elem": ["10.199.1.3", "10.199.1.4"]}},
          {"chain": {"family": "inet", "table": "t1", "name": "input", "handle": 3}},
          {"rule": {"family": "inet", "table": "t1", "chain": "input", "handle": 5,
                    "comment": "berth-overlay:vxlan-drop:4789",
                    "expr": [{"counter": {"packets": 7, "bytes": 700}}, {"drop": null}]}}]}"#;
        let l = parse_listing("t1", json).unwrap();
        assert!(l.has_set);
        assert_eq!(l.hosts, set(&[[10, 199, 1, 3], [10, 199, 1, 4]]));
        assert_eq!(l.rules.get("berth-overlay:vxlan-drop:4789"), Some(&7));
        assert!(!is_current(&cfg(), &l));
    }
}
