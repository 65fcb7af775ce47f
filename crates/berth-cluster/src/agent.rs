//! The host agent: joins the cluster, then keeps this host's VXLAN overlay equal to the
//! controller's map of hosts, flannel-style and level-triggered. It lists the hosts,
//! reconciles, and watches from the listing's revision, reconciling on every host change;
//! a periodic full reconcile repairs whatever drifted in the kernel, a 410 (compacted
//! history) or a broken stream means list again. Heartbeats carry the revision applied.
//! When the controller is unreachable nothing is torn down: the data path keeps
//! forwarding with the last map, and the agent retries with backoff.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use thiserror::Error;

use crate::controller::api::{JoinResponse, WatchLine};
use crate::model::{Host, HostState};
use crate::overlay::{self, Overlay, OverlayConfig, OverlayError, RemoteHost, TxChecksum};

#[derive(Debug, Error)]
pub enum AgentError {
    #[error("contacting the controller at {url}: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("{url}: {status}: {message}")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    #[error("the controller gave host {0} no address block")]
    NoBlock(String),
    #[error("invalid VTEP MAC {mac} of host {host}")]
    BadMac { host: String, mac: String },
    #[error(transparent)]
    Overlay(#[from] OverlayError),
    #[error("overlay task: {0}")]
    Task(String),
    #[error(transparent)]
    Notify(#[from] crate::agent_notify::NotifyError),
    #[error("writing the cluster host file {path}: {source}")]
    HostFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub type Result<T, E = AgentError> = std::result::Result<T, E>;

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// e.g. http://10.199.0.1:7480
    pub controller: String,
    pub join_token: String,
    pub name: String,
    pub underlay_ip: Ipv4Addr,
    pub device: String,
    pub nft_table: String,
    pub heartbeat: Duration,
    /// Full reconcile period, whatever the watch says.
    pub resync: Duration,
    pub tx_checksum: TxChecksum,
    /// Where to record this host's block for `berth run --network cluster`.
    pub host_file: PathBuf,
    /// The engine whose cluster-network containers this agent reports (its --root and
    /// --runroot).
    pub engine_root: PathBuf,
    pub engine_runroot: PathBuf,
    /// How often local containers are compared with the controller's records.
    pub report_every: Duration,
}

struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        cred: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url).bearer_auth(cred);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let http = |source| AgentError::Http {
            url: url.clone(),
            source,
        };
        let resp = req.send().await.map_err(http)?;
        let status = resp.status().as_u16();
        if !resp.status().is_success() {
            let v: serde_json::Value = resp.json().await.unwrap_or_default();
            return Err(AgentError::Refused {
                url,
                status,
                message: v["error"].as_str().unwrap_or("no message").to_string(),
            });
        }
        resp.json().await.map_err(http)
    }
}

fn remote(h: &Host) -> Result<Option<RemoteHost>> {
    let Some(block) = h.blocks.first() else {
        return Ok(None);
    };
    let mac = crate::model::parse_mac(&h.vtep_mac).map_err(|_| AgentError::BadMac {
        host: h.name.clone(),
        mac: h.vtep_mac.clone(),
    })?;
    Ok(Some(RemoteHost {
        name: h.name.clone(),
        underlay_ip: h.underlay_ip,
        vtep_mac: mac,
        block: *block,
        up: h.state == HostState::Up,
    }))
}

/// Reconciles the overlay with `hosts` on a blocking thread (netlink and nft block).
async fn reconcile(overlay: &Arc<Mutex<Overlay>>, hosts: &BTreeMap<String, Host>) -> Result<usize> {
    let desired: Vec<RemoteHost> = hosts
        .values()
        .filter_map(|h| remote(h).ok().flatten())
        .collect();
    let o = overlay.clone();
    tokio::task::spawn_blocking(move || {
        let mut o = o
            .lock()
            .map_err(|_| AgentError::Task("overlay lock poisoned".into()))?;
        Ok(o.reconcile(&desired)?.changes())
    })
    .await
    .map_err(|e| AgentError::Task(e.to_string()))?
}

/// Joins (retrying until the controller answers), starts the overlay, then runs until
/// the process is stopped. Errors after start are logged and retried, never fatal.
pub async fn run(cfg: AgentConfig) -> Result<()> {
    let client = Client {
        base: cfg.controller.trim_end_matches('/').to_string(),
        http: reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|source| AgentError::Http {
                url: cfg.controller.clone(),
                source,
            })?,
    };
    let mac = overlay::vtep_mac(cfg.underlay_ip);
    let mac_s = mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let mut backoff = Duration::from_millis(100);
    let joined: JoinResponse = loop {
        match client
            .call(
                reqwest::Method::POST,
                "/v1/join",
                &cfg.join_token,
                Some(serde_json::json!({"name": cfg.name, "underlay_ip": cfg.underlay_ip, "vtep_mac": mac_s})),
            )
            .await
        {
            Ok(j) => break j,
            // A wrong token or name won't get better by retrying.
            Err(e @ AgentError::Refused { status: 400..=499, .. }) => return Err(e),
            Err(e) => {
                eprintln!("berth agent: joining: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    let block = *joined
        .host
        .blocks
        .first()
        .ok_or_else(|| AgentError::NoBlock(cfg.name.clone()))?;
    let mut ocfg = OverlayConfig::new(cfg.underlay_ip, block);
    ocfg.device = cfg.device.clone();
    ocfg.vni = joined.cluster.vni;
    ocfg.port = joined.cluster.vxlan_port;
    ocfg.nft_table = cfg.nft_table.clone();
    ocfg.tx_checksum = cfg.tx_checksum;
    let started = tokio::task::spawn_blocking(move || Overlay::start(ocfg))
        .await
        .map_err(|e| AgentError::Task(e.to_string()))??;
    let overlay = Arc::new(Mutex::new(started.0));
    eprintln!(
        "berth agent: host {} joined with block {block}, device {}",
        cfg.name, cfg.device
    );
    let cred = joined.credential;
    let applied = Arc::new(AtomicU64::new(0));
    let mtu = overlay
        .lock()
        .map(|o| o.vtep().mtu)
        .map_err(|_| AgentError::Task("overlay lock poisoned".into()))?;
    // Bound before the host file names it, so no engine finds a path nobody listens on.
    let notes = crate::agent_notify::Notifications::bind(&crate::agent_notify::socket_path(
        &cfg.host_file,
    ))?;
    write_host_file(
        &cfg.host_file,
        &berth_engine::network::ClusterHost {
            name: cfg.name.clone(),
            block,
            cidr: joined.cluster.cidr,
            mtu,
            notify: Some(notes.path().to_path_buf()),
        },
    )?;

    // Local containers on the cluster network, reported to the controller at once when
    // the engine says one started or went, and every --report-ms whatever it says.
    {
        let client = Client {
            base: client.base.clone(),
            http: client.http.clone(),
        };
        let (cred, cfg) = (cred.clone(), cfg.clone());
        tokio::spawn(async move {
            let mut schedule = crate::agent_notify::Schedule::new(cfg.report_every, Some(notes));
            let mut known = None;
            loop {
                if schedule.next().await == crate::agent_notify::Trigger::Periodic {
                    known = None;
                }
                if let Err(e) = report_containers(&client, &cred, &cfg, &mut known).await {
                    eprintln!("berth agent: reporting containers: {e}");
                }
            }
        });
    }

    // Heartbeats, independent of the watch.
    {
        let (client, cred, name, applied, every) = (
            Client {
                base: client.base.clone(),
                http: client.http.clone(),
            },
            cred.clone(),
            cfg.name.clone(),
            applied.clone(),
            cfg.heartbeat,
        );
        tokio::spawn(async move {
            loop {
                let body = serde_json::json!({"applied_revision": applied.load(Ordering::Relaxed)});
                if let Err(e) = client
                    .call::<serde_json::Value>(
                        reqwest::Method::PUT,
                        &format!("/v1/hosts/{name}/heartbeat"),
                        &cred,
                        Some(body),
                    )
                    .await
                {
                    eprintln!("berth agent: heartbeat: {e}");
                }
                tokio::time::sleep(every).await;
            }
        });
    }

    let mut hosts: BTreeMap<String, Host> = BTreeMap::new();
    let mut backoff = Duration::from_millis(100);
    loop {
        // List, reconcile, watch from the listing's revision.
        let listed: Result<serde_json::Value> = client
            .call(reqwest::Method::GET, "/v1/hosts", &cred, None)
            .await;
        let listed = match listed {
            Ok(v) => v,
            Err(e) => {
                eprintln!("berth agent: listing hosts: {e}; keeping the current map");
                // Level-triggered even while the controller is away: repair drift.
                if let Err(e) = reconcile(&overlay, &hosts).await {
                    eprintln!("berth agent: reconcile: {e}");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let revision = listed["revision"].as_u64().unwrap_or(0);
        hosts = serde_json::from_value::<Vec<Host>>(listed["hosts"].clone())
            .unwrap_or_default()
            .into_iter()
            .map(|h| (h.name.clone(), h))
            .collect();
        match reconcile(&overlay, &hosts).await {
            Ok(_) => applied.store(revision, Ordering::Relaxed),
            Err(e) => eprintln!("berth agent: reconcile: {e}"),
        }
        let url = format!("{}/v1/watch?from={revision}", client.base);
        let resp = match client.http.get(&url).bearer_auth(&cred).send().await {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => {
                // 410: history compacted; anything else: list again after a pause.
                if r.status().as_u16() != 410 {
                    eprintln!("berth agent: watch: {}", r.status());
                    tokio::time::sleep(backoff).await;
                }
                continue;
            }
            Err(e) => {
                eprintln!("berth agent: watch: {e}");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        let mut body = resp.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        let mut resync = tokio::time::interval(cfg.resync);
        resync.tick().await;
        loop {
            tokio::select! {
                chunk = body.next() => {
                    let Some(Ok(chunk)) = chunk else { break };
                    buf.extend_from_slice(&chunk);
                    let mut changed = false;
                    let mut last = None;
                    while let Some(i) = buf.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=i).collect();
                        let Ok(w) = serde_json::from_slice::<WatchLine>(&line) else { continue };
                        last = Some(w.revision);
                        if let Some(name) = w.key.strip_prefix(crate::model::HOSTS) {
                            changed = true;
                            match w.value.and_then(|v| serde_json::from_value::<Host>(v).ok()) {
                                Some(h) => { hosts.insert(name.to_string(), h); }
                                None => { hosts.remove(name); }
                            }
                        }
                    }
                    if changed {
                        if let Err(e) = reconcile(&overlay, &hosts).await {
                            eprintln!("berth agent: reconcile: {e}");
                            continue;
                        }
                    }
                    if let Some(r) = last {
                        applied.store(r, Ordering::Relaxed);
                    }
                }
                _ = resync.tick() => {
                    if let Err(e) = reconcile(&overlay, &hosts).await {
                        eprintln!("berth agent: reconcile: {e}");
                    }
                }
            }
        }
    }
}

fn write_host_file(path: &std::path::Path, h: &berth_engine::network::ClusterHost) -> Result<()> {
    let io = |source| AgentError::HostFile {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(h).unwrap_or_default()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// This host's containers on the engine's cluster network: id → (address, name).
fn local_containers(cfg: &AgentConfig) -> BTreeMap<String, (Ipv4Addr, String)> {
    let paths = berth_engine::paths::Paths::new(&cfg.engine_root, &cfg.engine_runroot);
    let Ok(nets) = berth_net::Networks::open(&paths.networks()) else {
        return BTreeMap::new();
    };
    let Ok(net) = nets.get(berth_engine::network::CLUSTER_NETWORK) else {
        return BTreeMap::new();
    };
    // Only containers that have been started: their network is plumbed (that happens
    // before start), so a peer that learns the address can reach it at once. An address
    // advertised earlier made peers' ARP for it fail and retry only after a second.
    let names: BTreeMap<String, String> = berth_engine::record::Records::new(&paths)
        .and_then(|r| r.all())
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.started_at.is_some())
        .map(|r| (r.id, r.name))
        .collect();
    nets.ipam(&net)
        .allocations()
        .unwrap_or_default()
        .into_iter()
        // An address whose container record is gone is being released: not reported.
        .filter_map(|(addr, id)| names.get(&id).map(|n| (id.clone(), (addr, n.clone()))))
        .collect()
}

/// The controller's containers of this host, as of the last report: id → record.
type Known = BTreeMap<String, crate::model::Container>;

/// Level-triggered: what the controller has for this host is made equal to what runs
/// here (creates for new containers, deletes for removed ones, both for moved ones).
/// `known` is the controller's side as the last report left it; None means list it
/// afresh (periodic reports, and after any error). A notified report diffs against it
/// and so costs one request per change instead of a listing of the whole cluster first.
async fn report_containers(
    client: &Client,
    cred: &str,
    cfg: &AgentConfig,
    known: &mut Option<Known>,
) -> Result<()> {
    let local = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || local_containers(&cfg))
            .await
            .map_err(|e| AgentError::Task(e.to_string()))?
    };
    let remote = match known.take() {
        Some(k) => k,
        None => {
            let listed: serde_json::Value = client
                .call(reqwest::Method::GET, "/v1/containers", cred, None)
                .await?;
            serde_json::from_value::<Vec<crate::model::Container>>(listed["containers"].clone())
                .unwrap_or_default()
                .into_iter()
                .filter(|c| c.host == cfg.name)
                .map(|c| (c.id.clone(), c))
                .collect()
        }
    };
    // Updated as requests succeed; an error leaves `known` None, so the next report lists.
    let mut now = remote.clone();
    for (id, c) in &remote {
        if local.get(id).is_none_or(|(addr, _)| *addr != c.addr) {
            client
                .call::<serde_json::Value>(
                    reqwest::Method::DELETE,
                    &format!("/v1/containers/{id}"),
                    cred,
                    None,
                )
                .await?;
            now.remove(id);
        }
    }
    for (id, (addr, name)) in &local {
        if remote.get(id).is_none_or(|c| c.addr != *addr) {
            let c = crate::model::Container {
                id: id.clone(),
                host: cfg.name.clone(),
                addr: *addr,
                name: name.clone(),
            };
            client
                .call::<serde_json::Value>(
                    reqwest::Method::PUT,
                    &format!("/v1/containers/{id}"),
                    cred,
                    Some(serde_json::json!({"host": c.host, "addr": c.addr, "name": c.name})),
                )
                .await?;
            now.insert(id.clone(), c);
        }
    }
    *known = Some(now);
    Ok(())
}
