//! berth's nftables rules, all in one table of its own (`table inet berth` by default),
//! never touching other tables, so it coexists with iptables-nft and other tools.
//!
//! Layout (every rule carries a comment tag that says who owns it):
//!
//! ```text
//! table inet berth
//!   chain prerouting  nat dstnat    fib daddr type local jump ports          berth:base
//!   chain output      nat -100      fib daddr type local jump ports          berth:base
//!   chain ports       (regular)     [ip daddr H] tcp dport P dnat ip to A:C  berth:p:<cid>:tcp:P:H|*:C
//!   chain postrouting nat srcnat    ip saddr S oifname != B masquerade       berth:n:B (egress)
//!                                   oifname B ip saddr S ct status dnat masquerade  (hairpin)
//!                                   oifname B ip saddr 127.0.0.0/8 masquerade      (host → 127.0.0.1:P)
//!   chain forward     filter        ct state established,related accept      berth:base
//!                                   oifname B iifname != B ct status ! dnat drop    berth:n:B
//!                                   (internal) iifname B oifname != B drop; oifname B iifname != B drop
//! ```
//!
//! Forward rules of networks are drops only, so their order does not matter: anything
//! entering a bridge from elsewhere must be a reply or DNAT'd (isolation between
//! networks, no unsolicited inbound), and internal networks neither leave nor are
//! entered. DNAT'd traffic keeps the client's source address (no masquerade on that
//! path); only the host's own 127.0.0.1 connections and hairpin traffic are masqueraded.
//!
//! Each operation is one `nft -j list table` (to find handles by tag) and one
//! `nft -f -` batch, applied atomically by the kernel, under one flock so
//! concurrent berth processes do not interleave list and change.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::config::NetworkConfig;
use crate::ports::{PortMapping, Proto};

const BASE_TAG: &str = "berth:base";
const NET_PREFIX: &str = "berth:n:";
const PORT_PREFIX: &str = "berth:p:";

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("running nft to {what}: {source}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("nft failed to {what}: {stderr}")]
    Failed { what: String, stderr: String },
    #[error("parsing nft's listing of table inet {table}: {reason}")]
    Listing { table: String, reason: String },
    #[error("locking nftables table {table} through {path}: {source}")]
    Lock {
        table: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("host port {port}/{proto} on {ip} is already published by container {owner}")]
    PortTaken {
        ip: String,
        port: u16,
        proto: Proto,
        owner: String,
    },
    #[error("network {0} is internal: ports cannot be published on it")]
    Internal(String),
    #[error("invalid container id {0:?}: must be 1 to 64 characters of [a-zA-Z0-9_.-]")]
    InvalidId(String),
}

/// A rule of our table as listed by nft.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListedRule {
    pub chain: String,
    pub handle: u64,
    pub comment: String,
}

/// A published port as recorded in the rules (the table is the source of truth, so
/// `berth port` and conflict checks see what the kernel does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedPort {
    pub container_id: String,
    pub mapping: PortMapping,
}

fn nft_binary() -> &'static str {
    if Path::new("/usr/sbin/nft").exists() {
        "/usr/sbin/nft"
    } else {
        "nft"
    }
}

/// Runs nft with `args`, `stdin` fed in; returns its stdout. berth's one way of running
/// nft (the cluster's overlay table goes through it too).
pub fn run(args: &[&str], stdin: &str, what: &str) -> Result<Vec<u8>, NftError> {
    let spawn_err = |source| NftError::Spawn {
        what: what.to_string(),
        source,
    };
    let mut child = Command::new(nft_binary())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let Some(mut pipe) = child.stdin.take() {
        pipe.write_all(stdin.as_bytes()).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(NftError::Failed {
            what: what.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// `nft -j list table inet TABLE`: its JSON, or None if the table does not exist.
pub fn list_json(table: &str) -> Result<Option<Vec<u8>>, NftError> {
    let what = format!("list table inet {table}");
    match run(&["-j", "list", "table", "inet", table], "", &what) {
        Ok(json) => Ok(Some(json)),
        Err(NftError::Failed { stderr, .. })
            if stderr.contains("No such file or directory")
                || stderr.contains("does not exist") =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Runs `nft -f -` with `script` on stdin (one batch, applied all or nothing).
fn run_script(script: &str, what: &str) -> Result<(), NftError> {
    run(&["-f", "-"], script, what).map(|_| ())
}

/// Lists the rules of `table`; None if the table does not exist.
fn list(table: &str) -> Result<Option<Vec<ListedRule>>, NftError> {
    list_json(table)?
        .map(|json| parse_listing(table, &json))
        .transpose()
}

/// The items (tables, chains, rules, sets) of an `nft -j list` output.
pub fn listing_items(table: &str, json: &[u8]) -> Result<Vec<serde_json::Value>, NftError> {
    let bad = |reason: String| NftError::Listing {
        table: table.to_string(),
        reason,
    };
    let mut doc: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
    match doc.get_mut("nftables").map(serde_json::Value::take) {
        Some(serde_json::Value::Array(items)) => Ok(items),
        _ => Err(bad("no \"nftables\" array".into())),
    }
}

pub(crate) fn parse_listing(table: &str, json: &[u8]) -> Result<Vec<ListedRule>, NftError> {
    Ok(listing_items(table, json)?
        .iter()
        .filter_map(|item| {
            let rule = item.get("rule")?;
            Some(ListedRule {
                chain: rule.get("chain")?.as_str()?.to_string(),
                handle: rule.get("handle")?.as_u64()?,
                comment: rule
                    .get("comment")
                    .and_then(|c| c.as_str())
                    .unwrap_or("")
                    .to_string(),
            })
        })
        .collect())
}

/// Held for the duration of one list + change. One lock file for every table: changes
/// are rare, and a fixed file is never left behind per (test) table.
fn lock(table: &str) -> Result<crate::fsutil::LockGuard, NftError> {
    let path = PathBuf::from("/run/lock/berth-nft.lock");
    crate::fsutil::lock(&path).map_err(|source| NftError::Lock {
        table: table.to_string(),
        path,
        source,
    })
}

/// The table, its chains and the untagged-by-network base rules.
pub(crate) fn base_script(table: &str) -> String {
    let t = format!("inet {table}");
    format!(
        "add table {t}\n\
         add chain {t} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}\n\
         add chain {t} output {{ type nat hook output priority -100; policy accept; }}\n\
         add chain {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
         add chain {t} forward {{ type filter hook forward priority filter; policy accept; }}\n\
         add chain {t} ports\n\
         add rule {t} prerouting fib daddr type local jump ports comment \"{BASE_TAG}\"\n\
         add rule {t} output fib daddr type local jump ports comment \"{BASE_TAG}\"\n\
         add rule {t} forward ct state established,related accept comment \"{BASE_TAG}\"\n"
    )
}

fn net_tag(bridge: &str) -> String {
    format!("{NET_PREFIX}{bridge}")
}

/// The rules of one network (see the module docs).
pub(crate) fn network_rules(net: &NetworkConfig) -> String {
    let t = format!("inet {}", net.nft_table);
    // Every range's subnet: an anonymous set when the network has more than one.
    let s = match net.ranges().as_slice() {
        [one] => one.subnet.to_string(),
        _ => format!("{{ {} }}", net.subnets_text()),
    };
    let (b, tag) = (&net.bridge, net_tag(&net.bridge));
    let mut rules = vec![format!(
        "postrouting oifname \"{b}\" ip saddr 127.0.0.0/8 masquerade"
    )];
    if net.internal {
        rules.push(format!("forward iifname \"{b}\" oifname != \"{b}\" drop"));
        rules.push(format!("forward oifname \"{b}\" iifname != \"{b}\" drop"));
    } else if let Some(c) = net.cluster_cidr {
        // A cluster network: the rest of the cluster's space arrives over the overlay
        // and is let in, and traffic to it leaves unmasqueraded (containers see each
        // other's cluster addresses, as with flannel).
        rules.push(format!(
            "forward oifname \"{b}\" iifname != \"{b}\" ip saddr != {c} ct status & dnat == 0 drop"
        ));
        rules.push(format!(
            "postrouting ip saddr {s} ip daddr != {c} oifname != \"{b}\" masquerade"
        ));
        // A connection from the cluster to a port published on one of this host's
        // addresses (hairpin included): the container answers the host, not the client
        // directly, so the replies are un-DNAT'd; the overlay leaves only packets between
        // two containers untracked.
        rules.push(format!(
            "postrouting oifname \"{b}\" ip saddr {c} ct status dnat masquerade"
        ));
    } else {
        rules.push(format!(
            "forward oifname \"{b}\" iifname != \"{b}\" ct status & dnat == 0 drop"
        ));
        rules.push(format!(
            "postrouting ip saddr {s} oifname != \"{b}\" masquerade"
        ));
        rules.push(format!(
            "postrouting oifname \"{b}\" ip saddr {s} ct status dnat masquerade"
        ));
    }
    rules
        .iter()
        .map(|r| format!("add rule {t} {r} comment \"{tag}\"\n"))
        .collect()
}

fn port_tag(container_id: &str, m: &PortMapping) -> String {
    let ip = m.host_ip.map_or("*".to_string(), |ip| ip.to_string());
    format!(
        "{PORT_PREFIX}{container_id}:{}:{}:{ip}:{}",
        m.proto, m.host_port, m.container_port
    )
}

fn parse_port_tag(tag: &str) -> Option<MappedPort> {
    let rest = tag.strip_prefix(PORT_PREFIX)?;
    // the id never contains ':', so split from the right
    let mut parts = rest.rsplitn(5, ':');
    let container_port = parts.next()?.parse().ok()?;
    let ip = parts.next()?;
    let host_port = parts.next()?.parse().ok()?;
    let proto = match parts.next()? {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        _ => return None,
    };
    let container_id = parts.next()?.to_string();
    let host_ip = if ip == "*" {
        None
    } else {
        Some(ip.parse().ok()?)
    };
    Some(MappedPort {
        container_id,
        mapping: PortMapping {
            host_ip,
            host_port,
            container_port,
            proto,
        },
    })
}

/// DNAT rules of one container's published ports.
pub(crate) fn port_rules(
    table: &str,
    container_id: &str,
    addr: Ipv4Addr,
    ports: &[PortMapping],
) -> String {
    ports
        .iter()
        .map(|m| {
            let daddr = m.host_ip.map_or(String::new(), |ip| format!("ip daddr {ip} "));
            format!(
                "add rule inet {table} ports {daddr}{} dport {} dnat ip to {addr}:{} comment \"{}\"\n",
                m.proto,
                m.host_port,
                m.container_port,
                port_tag(container_id, m)
            )
        })
        .collect()
}

fn deletions(table: &str, rules: &[ListedRule], owned: impl Fn(&str) -> bool) -> String {
    rules
        .iter()
        .filter(|r| owned(&r.comment))
        .map(|r| format!("delete rule inet {table} {} handle {}\n", r.chain, r.handle))
        .collect()
}

/// The base part of a script: the whole base if the table or its base rules are missing.
fn ensure_base(table: &str, listed: &Option<Vec<ListedRule>>) -> String {
    match listed {
        Some(rules) if rules.iter().any(|r| r.comment == BASE_TAG) => String::new(),
        _ => base_script(table),
    }
}

/// Installs (or refreshes) the rules of a network, replacing any it had, atomically.
pub fn apply_network(net: &NetworkConfig) -> Result<(), NftError> {
    let table = &net.nft_table;
    let _lock = lock(table)?;
    let listed = list(table)?;
    let tag = net_tag(&net.bridge);
    let mut script = ensure_base(table, &listed);
    if let Some(rules) = &listed {
        script += &deletions(table, rules, |c| c == tag);
    }
    script += &network_rules(net);
    run_script(
        &script,
        &format!("install the rules of network {}", net.name),
    )
}

/// Removes a network's rules; drops the whole table when no network is left in it.
pub fn remove_network(net: &NetworkConfig) -> Result<(), NftError> {
    let table = &net.nft_table;
    let _lock = lock(table)?;
    let Some(rules) = list(table)? else {
        return Ok(());
    };
    let tag = net_tag(&net.bridge);
    let others_left = rules.iter().any(|r| {
        (r.comment.starts_with(NET_PREFIX) && r.comment != tag)
            || r.comment.starts_with(PORT_PREFIX)
    });
    let script = if others_left {
        deletions(table, &rules, |c| c == tag)
    } else {
        format!("delete table inet {table}\n")
    };
    if script.is_empty() {
        return Ok(());
    }
    run_script(
        &script,
        &format!("remove the rules of network {}", net.name),
    )
}

pub(crate) fn validate_container_id(id: &str) -> Result<(), NftError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(NftError::InvalidId(id.to_string()))
    }
}

fn conflicts(a: &PortMapping, b: &PortMapping) -> bool {
    a.proto == b.proto
        && a.host_port == b.host_port
        && (a.host_ip.is_none() || b.host_ip.is_none() || a.host_ip == b.host_ip)
}

/// Publishes a container's ports (replacing any it had). A host port already published
/// by another container is refused.
pub fn add_ports(
    net: &NetworkConfig,
    container_id: &str,
    addr: Ipv4Addr,
    ports: &[PortMapping],
) -> Result<(), NftError> {
    validate_container_id(container_id)?;
    if ports.is_empty() {
        return Ok(());
    }
    if net.internal {
        return Err(NftError::Internal(net.name.clone()));
    }
    let table = &net.nft_table;
    let _lock = lock(table)?;
    let listed = list(table)?;
    let mine = format!("{PORT_PREFIX}{container_id}:");
    let mut script = ensure_base(table, &listed);
    if let Some(rules) = &listed {
        for other in rules.iter().filter_map(|r| parse_port_tag(&r.comment)) {
            if other.container_id == container_id {
                continue;
            }
            if let Some(m) = ports.iter().find(|m| conflicts(m, &other.mapping)) {
                return Err(NftError::PortTaken {
                    ip: m.host_ip.map_or("0.0.0.0".into(), |ip| ip.to_string()),
                    port: m.host_port,
                    proto: m.proto,
                    owner: other.container_id,
                });
            }
        }
        script += &deletions(table, rules, |c| c.starts_with(&mine));
    }
    script += &port_rules(table, container_id, addr, ports);
    let short: String = container_id.chars().take(12).collect();
    run_script(&script, &format!("publish the ports of container {short}"))
}

/// Unpublishes a container's ports; nothing to do if it has none.
pub fn remove_ports(table: &str, container_id: &str) -> Result<(), NftError> {
    validate_container_id(container_id)?;
    let _lock = lock(table)?;
    let Some(rules) = list(table)? else {
        return Ok(());
    };
    let mine = format!("{PORT_PREFIX}{container_id}:");
    let script = deletions(table, &rules, |c| c.starts_with(&mine));
    if script.is_empty() {
        return Ok(());
    }
    let short: String = container_id.chars().take(12).collect();
    run_script(
        &script,
        &format!("unpublish the ports of container {short}"),
    )
}

/// Every port published in `table`: for conflict checks and `berth port`.
pub fn mapped_ports(table: &str) -> Result<Vec<MappedPort>, NftError> {
    Ok(list(table)?
        .unwrap_or_default()
        .iter()
        .filter_map(|r| parse_port_tag(&r.comment))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(internal: bool) -> NetworkConfig {
        NetworkConfig {
            name: "n".into(),
            id: "x".into(),
            bridge: "br-x".into(),
            subnet: "10.89.1.0/24".parse().unwrap(),
            gateway: "10.89.1.1".parse().unwrap(),
            internal,
            mtu: 1500,
            created: String::new(),
            labels: Default::default(),
            nft_table: "t".into(),
            cluster_cidr: None,
            more_ranges: Vec::new(),
        }
    }

    #[test]
    fn every_range_of_a_network_is_masqueraded() {
        let mut n = net(false);
        n.cluster_cidr = Some("10.244.0.0/16".parse().unwrap());
        n.more_ranges.push(crate::config::Range::with_first_host(
            "10.89.7.0/24".parse().unwrap(),
        ));
        let r = network_rules(&n);
        assert!(r.contains(
            "postrouting ip saddr { 10.89.1.0/24, 10.89.7.0/24 } ip daddr != 10.244.0.0/16 oifname != \"br-x\" masquerade"
        ), "{r}");
    }

    #[test]
    fn cluster_networks_let_the_cluster_in_unmasqueraded() {
        let mut n = net(false);
        n.cluster_cidr = Some("10.244.0.0/16".parse().unwrap());
        let r = network_rules(&n);
        assert!(r.contains(
            "forward oifname \"br-x\" iifname != \"br-x\" ip saddr != 10.244.0.0/16 ct status & dnat == 0 drop"
        ), "{r}");
        assert!(r.contains(
            "postrouting ip saddr 10.89.1.0/24 ip daddr != 10.244.0.0/16 oifname != \"br-x\" masquerade"
        ), "{r}");
        assert!(!r.contains("ip saddr 10.89.1.0/24 oifname"), "{r}");
        // DNAT'd connections from anywhere in the cluster answer through the host.
        assert!(
            r.contains(
                "postrouting oifname \"br-x\" ip saddr 10.244.0.0/16 ct status dnat masquerade"
            ),
            "{r}"
        );
    }

    #[test]
    fn network_rules_are_tagged_and_internal_has_no_egress() {
        let r = network_rules(&net(false));
        assert!(r
            .lines()
            .all(|l| l.starts_with("add rule inet t ") && l.ends_with("comment \"berth:n:br-x\"")));
        assert!(r.contains("postrouting ip saddr 10.89.1.0/24 oifname != \"br-x\" masquerade"));
        assert!(
            r.contains("forward oifname \"br-x\" iifname != \"br-x\" ct status & dnat == 0 drop")
        );
        let i = network_rules(&net(true));
        assert!(!i.contains("saddr 10.89.1.0/24"));
        assert!(i.contains("forward iifname \"br-x\" oifname != \"br-x\" drop"));
    }

    #[test]
    fn port_rules_and_tags_round_trip() {
        let ports = [
            PortMapping {
                host_ip: None,
                host_port: 8080,
                container_port: 80,
                proto: Proto::Tcp,
            },
            PortMapping {
                host_ip: Some("127.0.0.1".parse().unwrap()),
                host_port: 5353,
                container_port: 53,
                proto: Proto::Udp,
            },
        ];
        let r = port_rules("t", "c1", "10.89.1.2".parse().unwrap(), &ports);
        assert_eq!(
            r,
            "add rule inet t ports tcp dport 8080 dnat ip to 10.89.1.2:80 comment \"berth:p:c1:tcp:8080:*:80\"\n\
             add rule inet t ports ip daddr 127.0.0.1 udp dport 5353 dnat ip to 10.89.1.2:53 comment \"berth:p:c1:udp:5353:127.0.0.1:53\"\n"
        );
        let back = parse_port_tag("berth:p:c1:udp:5353:127.0.0.1:53").unwrap();
        assert_eq!(back.mapping, ports[1]);
        assert_eq!(back.container_id, "c1");
        assert_eq!(back.mapping.host_port, 5353);
        assert_eq!(back.mapping.host_ip, Some("127.0.0.1".parse().unwrap()));
        assert!(parse_port_tag("berth:n:br-x").is_none());
        assert!(conflicts(
            &ports[0],
            &PortMapping {
                host_ip: Some("10.0.0.1".parse().unwrap()),
                ..ports[0]
            }
        ));
        assert!(!conflicts(
            &ports[0],
            &PortMapping {
                proto: Proto::Udp,
                ..ports[0]
            }
        ));
    }

    #[test]
    fn listing_parse() {
        let json = br#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"table": {"family": "inet", "name": "t", "handle": 1}},
            {"chain": {"family": "inet", "table": "t", "name": "ports", "handle": 5}},
            {"rule": {"family": "inet", "table": "t", "chain": "ports", "handle": 12, "comment": "berth:p:abc:tcp:8080:*", "expr": []}},
            {"rule": {"family": "inet", "table": "t", "chain": "forward", "handle": 7, "expr": []}}]}"#;
        let rules = parse_listing("t", json).unwrap();
        assert_eq!(
            rules,
            vec![
                ListedRule {
                    chain: "ports".into(),
                    handle: 12,
                    comment: "berth:p:abc:tcp:8080:*".into()
                },
                ListedRule {
                    chain: "forward".into(),
                    handle: 7,
                    comment: String::new()
                },
            ]
        );
        let d = deletions("t", &rules, |c| c.starts_with("berth:p:abc:"));
        assert_eq!(d, "delete rule inet t ports handle 12\n");
        assert!(parse_listing("t", b"{}").is_err());
    }

    #[test]
    fn container_ids() {
        validate_container_id("0123abc").unwrap();
        assert!(validate_container_id("a\"b").is_err());
        assert!(validate_container_id("").is_err());
    }
}
