//! `berth network create|ls|inspect|rm` and `berth port`.

use anyhow::{bail, Context, Result};
use berth_net::NetworkConfig;

use super::args::{Global, NetworkCmd};
use super::container::engine;

pub fn network(g: &Global, cmd: NetworkCmd) -> Result<i32> {
    let e = engine(g)?;
    let nets = e.networks()?;
    // The default network exists from the first time anyone looks.
    berth_engine::network::get_or_default(&nets, berth_net::config::DEFAULT_NETWORK, &e.net)?;
    match cmd {
        NetworkCmd::Create {
            subnet,
            gateway,
            internal,
            label,
            name,
        } => {
            let subnet = subnet
                .map(|s| {
                    s.parse().with_context(|| {
                        format!("invalid --subnet {s:?}: expected e.g. 10.89.5.0/24")
                    })
                })
                .transpose()?;
            let gateway = gateway
                .map(|s| {
                    s.parse()
                        .with_context(|| format!("invalid --gateway {s:?}: not an IPv4 address"))
                })
                .transpose()?;
            let mut labels = std::collections::BTreeMap::new();
            for l in label {
                let (k, v) = l.split_once('=').unwrap_or((&l, ""));
                labels.insert(k.to_string(), v.to_string());
            }
            let n = nets.create(&berth_net::CreateRequest {
                name,
                subnet,
                gateway,
                internal,
                labels,
                ..Default::default()
            })?;
            println!("{}", n.id);
        }
        NetworkCmd::Ls { quiet, format } => {
            let list = nets.list()?;
            if quiet {
                for n in &list {
                    println!("{}", n.name);
                }
            } else if format == "json" {
                for n in &list {
                    println!("{}", serde_json::to_string(&summary(n))?);
                }
            } else if format == "table" {
                println!(
                    "{:<14}{:<22}{:<10}{:<20}",
                    "NETWORK ID", "NAME", "DRIVER", "SUBNET"
                );
                for n in &list {
                    let id: String = n.id.chars().take(12).collect();
                    let subnets = n.subnets_text();
                    println!("{:<14}{:<22}{:<10}{:<20}", id, n.name, "bridge", subnets);
                }
            } else {
                bail!("invalid --format {format:?}: table or json");
            }
        }
        NetworkCmd::Inspect { names } => {
            let mut out = Vec::new();
            for name in &names {
                let n = nets.get(name)?;
                let mut v = summary(&n);
                let containers: serde_json::Map<String, serde_json::Value> = nets
                    .ipam(&n)
                    .allocations()?
                    .into_iter()
                    .map(|(addr, owner)| {
                        // The prefix of the range the address is in (a cluster network
                        // has one per block).
                        let plen = n
                            .range_of(addr)
                            .map_or(n.subnet.prefix_len(), |r| r.subnet.prefix_len());
                        (
                            owner,
                            serde_json::json!({"IPv4Address": format!("{addr}/{plen}")}),
                        )
                    })
                    .collect();
                v["Containers"] = containers.into();
                out.push(v);
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        NetworkCmd::Rm { names } => {
            for name in &names {
                let n = nets.get(name)?;
                if n.name == berth_net::config::DEFAULT_NETWORK {
                    bail!("network {name} is the default network and cannot be removed");
                }
                let users = e.network_users(&n.name);
                if !users.is_empty() {
                    bail!(
                        "network {name} is in use by container(s) {}: remove them first",
                        users.join(", ")
                    );
                }
                nets.remove(&n.name)?;
                println!("{name}");
            }
        }
    }
    Ok(0)
}

/// docker's shape, the fields that apply.
fn summary(n: &NetworkConfig) -> serde_json::Value {
    serde_json::json!({
        "Name": n.name,
        "Id": n.id,
        "Created": n.created,
        "Driver": "bridge",
        "Internal": n.internal,
        "IPAM": {"Config": n.ranges().iter().map(|r| serde_json::json!({
            "Subnet": r.subnet.to_string(),
            "Gateway": r.gateway.to_string(),
        })).collect::<Vec<_>>()},
        "Options": {"bridge": n.bridge, "mtu": n.mtu.to_string()},
        "Labels": n.labels,
    })
}

/// `berth port CONTAINER [PORT[/PROTO]]`, docker's output: `80/tcp -> 0.0.0.0:8080`.
pub fn port(g: &Global, container: &str, filter: Option<&str>) -> Result<i32> {
    let e = engine(g)?;
    let ports = e.ports(container)?;
    let (want_port, want_proto) = match filter {
        Some(f) => {
            let (p, proto) = f.split_once('/').unwrap_or((f, "tcp"));
            let p: u16 = p
                .parse()
                .with_context(|| format!("invalid port {f:?}: expected PORT[/tcp|/udp]"))?;
            (Some(p), proto.to_string())
        }
        None => (None, String::new()),
    };
    let mut found = false;
    for m in &ports {
        let proto = format!("{}", m.proto);
        if let Some(p) = want_port {
            if m.container_port != p || proto != want_proto {
                continue;
            }
        }
        found = true;
        let ip = m
            .host_ip
            .map(|i| i.to_string())
            .unwrap_or_else(|| "0.0.0.0".into());
        if want_port.is_some() {
            println!("{ip}:{}", m.host_port);
        } else {
            println!("{}/{proto} -> {ip}:{}", m.container_port, m.host_port);
        }
    }
    if let (Some(p), false) = (want_port, found) {
        bail!("no public port {p}/{want_proto} published for {container}");
    }
    Ok(0)
}
