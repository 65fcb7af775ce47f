//! The persisted set of networks: one JSON file per network under a state directory
//! (`<dir>/<name>.json`), each network's allocations in `<dir>/ipam/<id>.json`, and a
//! lock file serialising changes so two `network create` never take one name or subnet.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;

use crate::config::{self, CreateRequest, NetworkConfig, Range};
use crate::ipam::Ipam;
use crate::subnet::{self, HostRoute};
use crate::{fsutil, Error};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("network {0} already exists")]
    Exists(String),
    #[error("no such network: {0}")]
    NotFound(String),
    #[error("network name or id prefix {0:?} is ambiguous")]
    Ambiguous(String),
    #[error("subnet {subnet} of network {name} overlaps subnet {other} of network {other_name}")]
    OverlapsNetwork {
        name: String,
        subnet: Ipv4Net,
        other: Ipv4Net,
        other_name: String,
    },
    #[error("subnet {subnet} of network {name} overlaps host route {route} on {dev}")]
    OverlapsRoute {
        name: String,
        subnet: Ipv4Net,
        route: Ipv4Net,
        dev: String,
    },
    #[error("bridge {bridge} is already used by network {other}")]
    BridgeTaken { bridge: String, other: String },
    #[error("no free subnet left in the pool 10.89.0.0/24 - 10.255.255.0/24 for network {0}")]
    PoolExhausted(String),
    #[error("network {name} is in use by {count} container(s): {owners}")]
    InUse {
        name: String,
        count: usize,
        owners: String,
    },
    #[error("network {0} is the pre-defined default network and cannot be removed")]
    Default(String),
    #[error("default network exists with subnet {existing}, not {wanted}: remove it first")]
    DefaultMismatch { existing: Ipv4Net, wanted: Ipv4Net },
    #[error("{what} network state {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { what, path, source }
}

/// The networks of one host.
#[derive(Debug, Clone)]
pub struct Networks {
    dir: PathBuf,
    nft_table: String,
}

impl Networks {
    /// Opens (creating) the state directory, e.g. /var/lib/berth/networks.
    pub fn open(dir: &Path) -> Result<Networks, Error> {
        Networks::open_with_table(dir, config::DEFAULT_NFT_TABLE)
    }

    /// Like [`Networks::open`], with the nftables table new networks get (tests use their own).
    pub fn open_with_table(dir: &Path, nft_table: &str) -> Result<Networks, Error> {
        config::validate_table(nft_table)?;
        std::fs::create_dir_all(dir.join("ipam")).map_err(io_err("creating", dir))?;
        Ok(Networks {
            dir: dir.to_path_buf(),
            nft_table: nft_table.to_string(),
        })
    }

    fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    fn lock(&self) -> Result<fsutil::LockGuard, StoreError> {
        let path = self.dir.join(".lock");
        fsutil::lock(&path).map_err(io_err("locking", &path))
    }

    /// The default "bridge" network (bridge berth0, 10.88.0.0/16 unless `subnet` says
    /// otherwise), created in the store if missing. Kernel state is made by
    /// [`crate::setup_network`].
    pub fn ensure_default(&self, subnet: Option<Ipv4Net>) -> Result<NetworkConfig, Error> {
        if let Ok(existing) = self.get(config::DEFAULT_NETWORK) {
            return match subnet {
                Some(wanted) if wanted != existing.subnet => Err(StoreError::DefaultMismatch {
                    existing: existing.subnet,
                    wanted,
                }
                .into()),
                _ => Ok(existing),
            };
        }
        let subnet = subnet
            .unwrap_or_else(|| Ipv4Net::new(Ipv4Addr::new(10, 88, 0, 0), 16).unwrap_or_default());
        let req = CreateRequest {
            name: config::DEFAULT_NETWORK.to_string(),
            subnet: Some(subnet),
            bridge: Some(config::DEFAULT_BRIDGE.to_string()),
            ..CreateRequest::default()
        };
        match self.create(&req) {
            // another process made it first
            Err(Error::Store(StoreError::Exists(_))) => self.get(config::DEFAULT_NETWORK),
            other => other,
        }
    }

    /// Creates a network in the store (not yet in the kernel: see [`crate::setup_network`]).
    pub fn create(&self, req: &CreateRequest) -> Result<NetworkConfig, Error> {
        let routes = subnet::host_routes()?;
        self.create_with_routes(req, &routes)
    }

    fn create_with_routes(
        &self,
        req: &CreateRequest,
        routes: &[HostRoute],
    ) -> Result<NetworkConfig, Error> {
        config::validate_name(&req.name)?;
        let _lock = self.lock()?;
        let existing = self.list_unlocked()?;
        if existing.iter().any(|n| n.name == req.name) {
            return Err(StoreError::Exists(req.name.clone()).into());
        }
        let id = config::new_id().map_err(io_err("generating an id for", &self.dir))?;
        let bridge = req
            .bridge
            .clone()
            .unwrap_or_else(|| config::bridge_for_id(&id));
        if let Some(other) = existing.iter().find(|n| n.bridge == bridge) {
            return Err(StoreError::BridgeTaken {
                bridge,
                other: other.name.clone(),
            }
            .into());
        }
        // Routes through a bridge of ours are our own networks (checked above by subnet),
        // or a leftover of this very network.
        let foreign: Vec<HostRoute> = routes
            .iter()
            .filter(|r| r.dev != bridge && !existing.iter().any(|n| n.bridge == r.dev))
            .cloned()
            .collect();
        let subnet = match req.subnet {
            Some(s) => {
                config::validate_subnet(&req.name, s)?;
                check_overlaps(&req.name, s, &existing, &foreign)?;
                s
            }
            None => {
                let taken: Vec<Ipv4Net> = existing
                    .iter()
                    .flat_map(|n| n.ranges())
                    .map(|r| r.subnet)
                    .collect();
                subnet::pick_from_pool(&taken, &foreign)
                    .ok_or_else(|| StoreError::PoolExhausted(req.name.clone()))?
            }
        };
        let net = NetworkConfig {
            name: req.name.clone(),
            id,
            bridge,
            subnet,
            gateway: req.gateway.unwrap_or_else(|| config::first_host(subnet)),
            internal: req.internal,
            mtu: req.mtu.unwrap_or(config::DEFAULT_MTU),
            created: config::now_rfc3339(),
            labels: req.labels.clone(),
            nft_table: self.nft_table.clone(),
            cluster_cidr: req.cluster_cidr,
            more_ranges: Vec::new(),
        };
        net.validate()?;
        let path = self.path_of(&net.name);
        fsutil::write_json_atomic(&path, &net).map_err(io_err("writing", &path))?;
        Ok(net)
    }

    /// A network by name, full id, or unique id prefix.
    pub fn get(&self, name_or_id: &str) -> Result<NetworkConfig, Error> {
        if config::validate_name(name_or_id).is_ok() {
            let path = self.path_of(name_or_id);
            if let Some(net) =
                fsutil::read_json::<NetworkConfig>(&path).map_err(io_err("reading", &path))?
            {
                return Ok(net);
            }
        }
        let mut found = self
            .list()?
            .into_iter()
            .filter(|n| !name_or_id.is_empty() && n.id.starts_with(name_or_id));
        match (found.next(), found.next()) {
            (Some(net), None) => Ok(net),
            (Some(_), Some(_)) => Err(StoreError::Ambiguous(name_or_id.to_string()).into()),
            (None, _) => Err(StoreError::NotFound(name_or_id.to_string()).into()),
        }
    }

    /// All networks, by name.
    pub fn list(&self) -> Result<Vec<NetworkConfig>, Error> {
        Ok(self.list_unlocked()?)
    }

    fn list_unlocked(&self) -> Result<Vec<NetworkConfig>, StoreError> {
        let entries = std::fs::read_dir(&self.dir).map_err(io_err("listing", &self.dir))?;
        let mut nets = Vec::new();
        for entry in entries {
            let path = entry.map_err(io_err("listing", &self.dir))?.path();
            let is_json = path.extension().is_some_and(|e| e == "json");
            let hidden = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if !is_json || hidden {
                continue;
            }
            if let Some(net) =
                fsutil::read_json::<NetworkConfig>(&path).map_err(io_err("reading", &path))?
            {
                nets.push(net);
            }
        }
        nets.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(nets)
    }

    /// The address allocator of `net`, over all its ranges.
    pub fn ipam(&self, net: &NetworkConfig) -> Ipam {
        Ipam::with_ranges(
            &net.name,
            Range {
                subnet: net.subnet,
                gateway: net.gateway,
            },
            &net.more_ranges,
            &self.dir.join("ipam").join(format!("{}.json", net.id)),
        )
    }

    /// Adds the subnets of `add` that network `name` does not have yet, each with its
    /// first host as gateway, in order (a cluster host's new blocks). Checked like a
    /// created network's subnet, against the other networks and the host's routes
    /// not through this network's bridge. Kernel state follows with
    /// [`crate::setup_network`]. Returns the network as it is now.
    pub fn add_ranges(&self, name: &str, add: &[Ipv4Net]) -> Result<NetworkConfig, Error> {
        let routes = subnet::host_routes()?;
        self.add_ranges_with_routes(name, add, &routes)
    }

    fn add_ranges_with_routes(
        &self,
        name: &str,
        add: &[Ipv4Net],
        routes: &[HostRoute],
    ) -> Result<NetworkConfig, Error> {
        let _lock = self.lock()?;
        let existing = self.list_unlocked()?;
        let mut net = existing
            .iter()
            .find(|n| n.name == name)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(name.to_string()))?;
        let others: Vec<NetworkConfig> = existing.into_iter().filter(|n| n.name != name).collect();
        let foreign: Vec<HostRoute> = routes
            .iter()
            .filter(|r| r.dev != net.bridge && !others.iter().any(|n| n.bridge == r.dev))
            .cloned()
            .collect();
        let mut changed = false;
        for &subnet in add {
            if net.ranges().iter().any(|r| r.subnet == subnet) {
                continue;
            }
            config::validate_subnet(name, subnet)?;
            check_overlaps(name, subnet, &others, &foreign)?;
            net.more_ranges.push(Range::with_first_host(subnet));
            changed = true;
        }
        if changed {
            net.validate()?;
            let path = self.path_of(&net.name);
            fsutil::write_json_atomic(&path, &net).map_err(io_err("writing", &path))?;
        }
        Ok(net)
    }

    /// Removes a network: refused while containers hold addresses on it; tears down its
    /// bridge and rules, then forgets it.
    pub fn remove(&self, name_or_id: &str) -> Result<(), Error> {
        let net = self.get(name_or_id)?;
        if net.name == config::DEFAULT_NETWORK {
            return Err(StoreError::Default(net.name).into());
        }
        self.remove_unchecked(&net)
    }

    /// Like [`Networks::remove`] but also for the default network (uninstall, tests).
    pub fn remove_unchecked(&self, net: &NetworkConfig) -> Result<(), Error> {
        let _lock = self.lock()?;
        let owners = self
            .ipam(net)
            .remove_if_unused(|| crate::teardown_network(net))?;
        if !owners.is_empty() {
            let short: Vec<String> = owners
                .iter()
                .map(|o| o.chars().take(12).collect())
                .collect();
            return Err(StoreError::InUse {
                name: net.name.clone(),
                count: short.len(),
                owners: short.join(", "),
            }
            .into());
        }
        let path = self.path_of(&net.name);
        fsutil::remove_if_exists(&path).map_err(io_err("removing", &path))?;
        Ok(())
    }
}

fn check_overlaps(
    name: &str,
    subnet: Ipv4Net,
    existing: &[NetworkConfig],
    routes: &[HostRoute],
) -> Result<(), StoreError> {
    if let Some((other, r)) = existing.iter().find_map(|n| {
        n.ranges()
            .into_iter()
            .find(|r| subnet::overlaps(r.subnet, subnet))
            .map(|r| (n, r))
    }) {
        return Err(StoreError::OverlapsNetwork {
            name: name.to_string(),
            subnet,
            other: r.subnet,
            other_name: other.name.clone(),
        });
    }
    if let Some(r) = routes.iter().find(|r| subnet::overlaps(r.dest, subnet)) {
        return Err(StoreError::OverlapsRoute {
            name: name.to_string(),
            subnet,
            route: r.dest,
            dev: r.dev.clone(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(name: &str) -> CreateRequest {
        CreateRequest {
            name: name.into(),
            ..CreateRequest::default()
        }
    }

    fn route(dev: &str, dest: &str) -> HostRoute {
        HostRoute {
            dev: dev.into(),
            dest: dest.parse().unwrap(),
        }
    }

    #[test]
    fn create_picks_pool_subnets_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let nets = Networks::open_with_table(dir.path(), "t").unwrap();
        let routes = [route("eth0", "10.89.1.0/24")];
        let a = nets.create_with_routes(&req("a"), &routes).unwrap();
        let b = nets.create_with_routes(&req("b"), &routes).unwrap();
        assert_eq!(a.subnet.to_string(), "10.89.0.0/24");
        assert_eq!(a.gateway.to_string(), "10.89.0.1");
        assert_eq!(b.subnet.to_string(), "10.89.2.0/24", "skips the host route");
        assert_eq!(a.bridge, format!("br-{}", &a.id[..12]));
        assert_eq!(a.nft_table, "t");
        let again = Networks::open_with_table(dir.path(), "t").unwrap();
        assert_eq!(again.get("a").unwrap(), a);
        assert_eq!(again.get(&b.id[..10]).unwrap(), b);
        let names: Vec<String> = again.list().unwrap().into_iter().map(|n| n.name).collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn create_refuses_bad_and_overlapping_requests() {
        let dir = tempfile::tempdir().unwrap();
        let nets = Networks::open(dir.path()).unwrap();
        let mut r = req("web");
        r.subnet = Some("10.90.0.0/16".parse().unwrap());
        nets.create_with_routes(&r, &[]).unwrap();
        let err = |r: &CreateRequest, routes: &[HostRoute]| {
            nets.create_with_routes(r, routes).unwrap_err().to_string()
        };

        assert_eq!(err(&r, &[]), "network web already exists");
        let mut o = req("other");
        o.subnet = Some("10.90.3.0/24".parse().unwrap());
        assert_eq!(
            err(&o, &[]),
            "subnet 10.90.3.0/24 of network other overlaps subnet 10.90.0.0/16 of network web"
        );
        o.subnet = Some("192.168.5.0/24".parse().unwrap());
        assert_eq!(
            err(&o, &[route("eth1", "192.168.0.0/16")]),
            "subnet 192.168.5.0/24 of network other overlaps host route 192.168.0.0/16 on eth1"
        );
        o.gateway = Some("192.168.6.1".parse().unwrap());
        assert!(err(&o, &[]).contains("invalid gateway 192.168.6.1 for network other"));
        assert!(err(&req("bad/name"), &[]).contains("invalid network name \"bad/name\""));
        let mut b = req("b2");
        b.bridge = Some("much-too-long-bridge".into());
        assert!(err(&b, &[]).contains("invalid bridge name"));
    }

    #[test]
    fn default_network_and_removal_refused_while_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let nets = Networks::open(dir.path()).unwrap();
        let d = nets.ensure_default(None).unwrap();
        assert_eq!((d.name.as_str(), d.bridge.as_str()), ("bridge", "berth0"));
        assert_eq!(d.subnet.to_string(), "10.88.0.0/16");
        assert_eq!(nets.ensure_default(None).unwrap(), d);
        let e = nets
            .ensure_default(Some("10.77.0.0/16".parse().unwrap()))
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("default network exists with subnet 10.88.0.0/16"),
            "{e}"
        );
        assert!(nets
            .remove("bridge")
            .unwrap_err()
            .to_string()
            .contains("cannot be removed"));

        let mut r = req("busy");
        r.subnet = Some("10.91.0.0/24".parse().unwrap());
        let busy = nets.create_with_routes(&r, &[]).unwrap();
        nets.ipam(&busy).allocate("c0ffee", None).unwrap();
        let e = nets.remove("busy").unwrap_err().to_string();
        assert_eq!(e, "network busy is in use by 1 container(s): c0ffee");
        assert!(nets
            .get("nope")
            .unwrap_err()
            .to_string()
            .contains("no such network: nope"));
    }

    #[test]
    fn ranges_are_added_once_checked_and_kept_by_the_allocator() {
        let dir = tempfile::tempdir().unwrap();
        let nets = Networks::open_with_table(dir.path(), "t").unwrap();
        let mut r = req("cluster");
        r.subnet = Some("10.244.0.0/29".parse().unwrap());
        r.bridge = Some("berth-cl0".into());
        let c = nets.create_with_routes(&r, &[]).unwrap();
        let mut o = req("other");
        o.subnet = Some("10.245.0.0/24".parse().unwrap());
        nets.create_with_routes(&o, &[]).unwrap();
        for i in 0..5 {
            nets.ipam(&c).allocate(&format!("c{i}"), None).unwrap();
        }
        let second: Ipv4Net = "10.244.0.16/29".parse().unwrap();
        // The bridge's own route is no conflict.
        let routes = [route("berth-cl0", "10.244.0.16/29")];
        let c2 = nets
            .add_ranges_with_routes("cluster", &[c.subnet, second], &routes)
            .unwrap();
        assert_eq!(c2.more_ranges, [Range::with_first_host(second)]);
        assert_eq!(nets.get("cluster").unwrap(), c2);
        // Again: nothing changes.
        let again = nets
            .add_ranges_with_routes("cluster", &[second], &[])
            .unwrap();
        assert_eq!(again, c2);
        assert_eq!(
            nets.ipam(&c2).allocate("c5", None).unwrap().to_string(),
            "10.244.0.18"
        );
        let err = |add: &str, routes: &[HostRoute]| {
            nets.add_ranges_with_routes("cluster", &[add.parse().unwrap()], routes)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err("10.245.0.0/29", &[]),
            "subnet 10.245.0.0/29 of network cluster overlaps subnet 10.245.0.0/24 of network other"
        );
        assert!(err("10.244.0.32/29", &[route("eth0", "10.244.0.0/26")]).contains("host route"));
        assert!(err("10.244.0.0/28", &[]).contains("overlap"));
        assert!(nets
            .add_ranges_with_routes("nope", &[second], &[])
            .unwrap_err()
            .to_string()
            .contains("no such network"));
        // A new network can't take a subnet that is only a later range of another.
        let mut n = req("n3");
        n.subnet = Some(second);
        assert!(nets
            .create_with_routes(&n, &[])
            .unwrap_err()
            .to_string()
            .contains("overlaps subnet 10.244.0.16/29 of network cluster"));
    }
}
