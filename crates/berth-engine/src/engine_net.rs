//! The engine's network steps: prepare at create (address, ports, files), plumb once the
//! runtime has made the container's network namespace, unplumb at rm, and keep the
//! /etc/hosts of a user network's containers in step.

use std::net::Ipv4Addr;

use berth_image::store::Image;
use berth_net::NetworkConfig;
use oci_spec::runtime::Mount;
use serde_json::json;

use crate::engine::{Engine, EngineError, Result, Status};
use crate::network::{self, ContainerNet, Files};
use crate::request::RunRequest;
use crate::userns::IdRange;

/// What `--network container:X` takes from X.
pub struct Shared {
    /// X's network namespace, by its init's /proc path.
    pub net: String,
    /// X's user namespace (None when X runs in the host's).
    pub user: Option<String>,
    pub range: Option<IdRange>,
    /// X's /etc/hosts, /etc/resolv.conf and /etc/hostname, when it has them.
    pub files: Vec<Mount>,
}

fn bind(source: &std::path::Path, dest: &str) -> Result<Mount> {
    serde_json::from_value(json!({
        "destination": dest,
        "type": "bind",
        "source": source,
        "options": ["rbind", "rprivate"],
    }))
    .map_err(|e| EngineError::Other(format!("building the {dest} mount: {e}")))
}

impl Engine {
    pub(crate) fn shared_namespaces(&self, other: &str) -> Result<Shared> {
        let o = self.records.find(other)?;
        let st = self.status(&o);
        let pid = match (st.is_alive(), self.runtime.pid(&o.id)) {
            (true, Some(pid)) => pid,
            _ => {
                return Err(EngineError::State {
                    name: o.name.clone(),
                    status: st.name().into(),
                    what: "--network container: needs it running",
                })
            }
        };
        let range = o.userns_base.map(|start| IdRange {
            start,
            size: o.userns_size.unwrap_or(65536),
        });
        let files = Files::in_dir(&self.paths.userdata(&o.id));
        let mut mounts = Vec::new();
        for (p, d) in [
            (&files.hosts, "/etc/hosts"),
            (&files.resolv, "/etc/resolv.conf"),
        ] {
            if p.exists() {
                mounts.push(bind(p, d)?);
            }
        }
        Ok(Shared {
            net: format!("/proc/{pid}/ns/net"),
            user: range.map(|_| format!("/proc/{pid}/ns/user")),
            range,
            files: mounts,
        })
    }

    /// Address, host ports and files for a container joining bridge network `net`.
    pub(crate) fn prepare_network(
        &self,
        id: &str,
        name: &str,
        net: &str,
        req: &RunRequest,
        image: &Image,
    ) -> Result<(ContainerNet, Vec<Mount>)> {
        let nets = self.networks()?;
        let cfg = network::get_or_default(&nets, net, &self.net)?;
        let ipam = nets.ipam(&cfg);
        let addr = ipam.allocate(id, req.ip).map_err(|e| match e {
            // Name the host and its blocks: the fix is the agent's, not the user's.
            berth_net::ipam::IpamError::Exhausted { .. }
                if cfg.name == network::CLUSTER_NETWORK =>
            {
                EngineError::Net(network::NetError::ClusterFull {
                    host: network::read_cluster_host(&network::cluster_host_file())
                        .map(|h| h.name)
                        .unwrap_or_else(|_| "(unknown)".into()),
                    blocks: cfg.subnets_text(),
                })
            }
            e => EngineError::Net(berth_net::Error::from(e).into()),
        })?;
        // Until the record holds the address, nothing else would release it.
        let r = self.prepare_with_address(id, name, &cfg, addr, req, image);
        if r.is_err() {
            let _ = ipam.release(id);
        }
        r
    }

    fn prepare_with_address(
        &self,
        id: &str,
        name: &str,
        cfg: &NetworkConfig,
        addr: Ipv4Addr,
        req: &RunRequest,
        image: &Image,
    ) -> Result<(ContainerNet, Vec<Mount>)> {
        let exposed: Vec<String> = image
            .config
            .config()
            .as_ref()
            .and_then(|c| c.exposed_ports().clone())
            .unwrap_or_default();
        let specs = network::port_specs(&req.publish, req.publish_all, &exposed);
        let ports = if specs.is_empty() {
            Vec::new()
        } else {
            berth_net::resolve_host_ports(cfg, &specs).map_err(network::NetError::from)?
        };
        let c = ContainerNet {
            network: cfg.name.clone(),
            addr: Some(addr),
            ports,
            name: name.to_string(),
            hostname: req
                .hostname
                .clone()
                .unwrap_or_else(|| id.chars().take(12).collect()),
            add_hosts: req.add_hosts.clone(),
        };
        let dir = self.paths.userdata(id);
        std::fs::create_dir_all(&dir).map_err(|source| EngineError::Io {
            op: "creating",
            path: dir.clone(),
            source,
        })?;
        let files = Files::in_dir(&dir);
        let peers = if cfg.name == berth_net::config::DEFAULT_NETWORK {
            Vec::new()
        } else {
            self.peers(&cfg.name, id)
        };
        network::write_files(
            &files,
            &c,
            &peers,
            &req.dns,
            &req.dns_search,
            &req.dns_options,
        )?;
        let mounts = vec![
            bind(&files.hosts, "/etc/hosts")?,
            bind(&files.resolv, "/etc/resolv.conf")?,
            bind(&files.hostname, "/etc/hostname")?,
        ];
        Ok((c, mounts))
    }

    /// Containers of network `net` with their addresses, except `except`.
    fn peers(&self, net: &str, except: &str) -> Vec<(String, Ipv4Addr)> {
        self.records
            .all()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.id != except)
            .filter_map(|r| {
                let c = ContainerNet::from_record(&r.extra)?;
                (c.network == net).then_some((c.name, c.addr?))
            })
            .collect()
    }

    /// Rewrites the /etc/hosts of every container on user network `net` (not the default
    /// one: like docker, it has no name resolution), leaving out `gone`.
    fn refresh_hosts(&self, net: &str, gone: Option<&str>) {
        if net == berth_net::config::DEFAULT_NETWORK {
            return;
        }
        let members: Vec<(String, ContainerNet)> = self
            .records
            .all()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| Some(r.id.as_str()) != gone)
            .filter_map(|r| Some((r.id.clone(), ContainerNet::from_record(&r.extra)?)))
            .filter(|(_, c)| c.network == net)
            .collect();
        let peers: Vec<(String, Ipv4Addr)> = members
            .iter()
            .filter_map(|(_, c)| Some((c.name.clone(), c.addr?)))
            .collect();
        for (id, c) in &members {
            let path = Files::in_dir(&self.paths.userdata(id)).hosts;
            if path.exists() {
                let _ = network::write_in_place(&path, network::hosts_text(c, &peers).as_bytes());
            }
        }
    }

    /// Connects the created (not started) container whose init is `pid` to its network.
    pub(crate) fn plumb(&self, id: &str, c: &ContainerNet, pid: i32) -> Result<()> {
        let nets = self.networks()?;
        let cfg = network::get_or_default(&nets, &c.network, &self.net)?;
        let addr = c.addr.ok_or_else(|| {
            EngineError::Other(format!("container {id} has no address on {}", c.network))
        })?;
        network::ensure_kernel_state(&cfg)?;
        // A pair left by a crash (normally it dies with the namespace) would make attach fail.
        let _ = berth_net::detach(id);
        berth_net::attach(&cfg, pid, id, addr)
            .map_err(|e| network::NetError::from(berth_net::Error::from(e)))?;
        if !c.ports.is_empty() {
            berth_net::add_port_mappings(&cfg, id, addr, &c.ports)
                .map_err(network::NetError::from)?;
        }
        self.refresh_hosts(&c.network, None);
        Ok(())
    }

    /// Undoes `prepare_network` and `plumb`; each step tolerates "already gone".
    pub(crate) fn unplumb(&self, id: &str, c: &ContainerNet) -> Result<()> {
        let nets = self.networks()?;
        if let Ok(cfg) = nets.get(&c.network) {
            if !c.ports.is_empty() {
                berth_net::remove_port_mappings(&cfg, id).map_err(network::NetError::from)?;
            }
            // No explicit detach: the veth pair dies with the container's network
            // namespace (deleting it here would wait for the kernel's RCU grace periods,
            // ~20 ms); recovery and the next attach remove any that outlived it.
            nets.ipam(&cfg)
                .release(id)
                .map_err(|e| network::NetError::from(berth_net::Error::from(e)))?;
        }
        self.refresh_hosts(&c.network, Some(id));
        Ok(())
    }

    /// `berth port`: the container's published ports.
    pub fn ports(&self, key: &str) -> Result<Vec<berth_net::PortMapping>> {
        let rec = self.records.find(key)?;
        Ok(ContainerNet::from_record(&rec.extra)
            .map(|c| c.ports)
            .unwrap_or_default())
    }

    /// Containers using network `name` (for `network rm`).
    pub fn network_users(&self, name: &str) -> Vec<String> {
        self.records
            .all()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| ContainerNet::from_record(&r.extra).is_some_and(|c| c.network == name))
            .map(|r| r.name)
            .collect()
    }

    /// Whether the container is running (for callers outside the engine module).
    pub fn is_running(&self, key: &str) -> bool {
        self.records
            .find(key)
            .map(|r| matches!(self.status(&r), Status::Running))
            .unwrap_or(false)
    }
}
