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
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Pki(#[from] crate::controller::pki::PkiError),
    #[error(transparent)]
    Blocks(#[from] crate::blocks::BlocksError),
    #[error(transparent)]
    Notify(#[from] crate::agent_notify::NotifyError),
    #[error(
        "host {0} was removed from the cluster (`berth cluster hosts rm`): its overlay is \
         torn down; join again to come back"
    )]
    Removed(String),
}

pub type Result<T, E = AgentError> = std::result::Result<T, E>;

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// e.g. https://10.199.0.1:7480
    pub controller: String,
    pub join_token: String,
    /// The cluster CA (PEM): the only root the agent trusts for the controller.
    pub ca_pem: String,
    pub name: String,
    pub underlay_ip: Ipv4Addr,
    pub device: String,
    pub nft_table: String,
    pub heartbeat: Duration,
    /// Full reconcile period, whatever the watch says.
    pub resync: Duration,
    pub tx_checksum: TxChecksum,
    /// Where to record this host's blocks for `berth run --network cluster`.
    pub host_file: PathBuf,
    /// The engine whose cluster-network containers this agent reports (its --root and
    /// --runroot).
    pub engine_root: PathBuf,
    pub engine_runroot: PathBuf,
    /// How often local containers are compared with the controller's records.
    pub report_every: Duration,
    /// How often the agent renews its client certificate (a new key each time).
    pub cert_renew_every: Duration,
}

/// The controller's API over mutual TLS: `http` carries the agent's certificate once it
/// has joined (before that, only the join token in the join request).
#[derive(Clone)]
pub(crate) struct Client {
    pub(crate) base: String,
    /// Replaced when the certificate is renewed (see agent_cert.rs); every request takes
    /// the current one.
    http: Arc<std::sync::RwLock<reqwest::Client>>,
}

impl Client {
    pub(crate) fn new(base: String, http: reqwest::Client) -> Client {
        Client {
            base,
            http: Arc::new(std::sync::RwLock::new(http)),
        }
    }

    /// The current HTTPS client (a cheap handle).
    pub(crate) fn http(&self) -> reqwest::Client {
        match self.http.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub(crate) fn replace(&self, http: reqwest::Client) {
        match self.http.write() {
            Ok(mut c) => *c = http,
            Err(poisoned) => *poisoned.into_inner() = http,
        }
    }

    pub(crate) async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> Result<T> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http().request(method, &url);
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
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
    if h.blocks.is_empty() {
        return Ok(None);
    }
    let mac = crate::model::parse_mac(&h.vtep_mac).map_err(|_| AgentError::BadMac {
        host: h.name.clone(),
        mac: h.vtep_mac.clone(),
    })?;
    Ok(Some(RemoteHost {
        name: h.name.clone(),
        underlay_ip: h.underlay_ip,
        vtep_mac: mac,
        blocks: h.blocks.clone(),
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
    let changes = tokio::task::spawn_blocking(move || {
        let mut o = o
            .lock()
            .map_err(|_| AgentError::Task("overlay lock poisoned".into()))?;
        Ok(o.reconcile(&desired)?.changes())
    })
    .await
    .map_err(|e| AgentError::Task(e.to_string()))?;
    // Logged only when the kernel was changed: a quiet log means the map held (and a
    // restarted agent that finds everything right says so once, below).
    if let Ok(n @ 1..) = changes {
        eprintln!("berth agent: reconcile: {n} kernel changes");
    }
    changes
}

/// The agent's HTTPS client: the cluster CA as the only root, with its certificate once
/// it has one.
pub(crate) fn https(
    cfg: &AgentConfig,
    id: Option<crate::tls::ClientIdentity>,
) -> Result<reqwest::Client> {
    Ok(crate::tls::client(
        &cfg.ca_pem,
        id,
        reqwest::Client::builder().connect_timeout(Duration::from_secs(3)),
    )?)
}

/// Joins (retrying until the controller answers), starts the overlay, then runs until
/// the process is stopped. Errors after start are logged and retried, never fatal.
pub async fn run(cfg: AgentConfig) -> Result<()> {
    let base = cfg.controller.trim_end_matches('/').to_string();
    let http = |id| https(&cfg, id);
    let joining = Client::new(base.clone(), http(None)?);
    // A new key at every start, kept in memory only: nothing secret on disk but the
    // join token, and a restarted agent's old certificate is revoked by its re-join.
    let (key_pem, csr) = crate::controller::pki::new_csr(&format!("host:{}", cfg.name))?;
    let mac = overlay::vtep_mac(cfg.underlay_ip);
    let mac_s = mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let mut backoff = Duration::from_millis(100);
    let joined: JoinResponse =
        loop {
            match joining
            .call(
                reqwest::Method::POST,
                "/v1/join",
                Some(&cfg.join_token),
                Some(serde_json::json!({
                    "name": cfg.name, "underlay_ip": cfg.underlay_ip, "vtep_mac": mac_s, "csr": csr,
                })),
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
    ocfg.cluster = Some(crate::overlay::ClusterSpace {
        cidr: joined.cluster.cidr,
        block_prefix: joined.cluster.block_prefix,
    });
    let started = tokio::task::spawn_blocking(move || Overlay::start(ocfg))
        .await
        .map_err(|e| AgentError::Task(e.to_string()))??;
    let overlay = Arc::new(Mutex::new(started.0));
    eprintln!(
        "berth agent: host {} joined with blocks {}, device {} ({} changes to set it up)",
        cfg.name,
        crate::blocks::blocks_text(&joined.host.blocks),
        cfg.device,
        started.1
    );
    let client = Client::new(
        base,
        http(Some(crate::tls::ClientIdentity {
            cert_pem: &joined.certificate,
            key_pem: &key_pem,
        }))?,
    );
    // A new key and certificate well before this one expires.
    {
        let (client, cfg) = (client.clone(), cfg.clone());
        tokio::spawn(async move { crate::agent_cert::renew_loop(&client, &cfg).await });
    }
    let applied = Arc::new(AtomicU64::new(0));
    let mtu = overlay
        .lock()
        .map(|o| o.vtep().mtu)
        .map_err(|_| AgentError::Task("overlay lock poisoned".into()))?;
    // Bound before the host file names it, so no engine finds a path nobody listens on.
    let notes = crate::agent_notify::Notifications::bind(&crate::agent_notify::socket_path(
        &cfg.host_file,
    ))?;
    // Every block the host has (a re-joined host keeps those it had), for the engine.
    let host = berth_engine::network::ClusterHost {
        name: cfg.name.clone(),
        blocks: joined.host.blocks.clone(),
        cidr: joined.cluster.cidr,
        mtu,
        notify: Some(notes.path().to_path_buf()),
    };
    {
        let (cfg, host) = (cfg.clone(), host.clone());
        let recorded = tokio::task::spawn_blocking(move || {
            crate::blocks::record(&cfg.host_file, &networks_dir(&cfg), &host)
        })
        .await
        .map_err(|e| AgentError::Task(e.to_string()))?;
        match recorded {
            // Containers left from before this host was removed hold addresses of blocks
            // it no longer has: the engine refuses cluster addresses until they are
            // removed, and says so; the overlay serves the rest meanwhile.
            Err(
                e @ crate::blocks::BlocksError::Network {
                    source: berth_engine::network::NetError::ClusterStale { .. },
                    ..
                },
            ) => eprintln!("berth agent: {e}"),
            other => other?,
        }
    }

    // More blocks before these fill.
    {
        let (client, cfg) = (client.clone(), cfg.clone());
        tokio::spawn(async move { grow_blocks(&client, &cfg, host).await });
    }

    // Local containers on the cluster network, reported to the controller at once when
    // the engine says one started or went, and every --report-ms whatever it says.
    {
        let (client, cfg) = (client.clone(), cfg.clone());
        tokio::spawn(async move {
            let mut schedule = crate::agent_notify::Schedule::new(cfg.report_every, Some(notes));
            let mut known = None;
            loop {
                if schedule.next().await == crate::agent_notify::Trigger::Periodic {
                    known = None;
                }
                if let Err(e) = report_containers(&client, &cfg, &mut known).await {
                    eprintln!("berth agent: reporting containers: {e}");
                }
            }
        });
    }

    // Heartbeats, independent of the watch; one at once when the first map is applied,
    // so the controller's status doesn't show a working host as behind for a period.
    let beat_now = Arc::new(tokio::sync::Notify::new());
    {
        let (client, name, applied, every, beat_now) = (
            client.clone(),
            cfg.name.clone(),
            applied.clone(),
            cfg.heartbeat,
            beat_now.clone(),
        );
        tokio::spawn(async move {
            loop {
                let body = serde_json::json!({"applied_revision": applied.load(Ordering::Relaxed)});
                if let Err(e) = client
                    .call::<serde_json::Value>(
                        reqwest::Method::PUT,
                        &format!("/v1/hosts/{name}/heartbeat"),
                        None,
                        Some(body),
                    )
                    .await
                {
                    eprintln!("berth agent: heartbeat: {e}");
                }
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = beat_now.notified() => {}
                }
            }
        });
    }

    let mut hosts: BTreeMap<String, Host> = BTreeMap::new();
    let mut listed_once = false;
    let mut backoff = Duration::from_millis(100);
    loop {
        // List, reconcile, watch from the listing's revision.
        let listed: Result<serde_json::Value> = client
            .call(reqwest::Method::GET, "/v1/hosts", None, None)
            .await;
        let listed = match listed {
            Ok(v) => v,
            Err(e) => {
                eprintln!("berth agent: listing hosts: {e}; keeping the current map");
                // Level-triggered even while the controller is away: repair drift. Not
                // before a first listing, though: an empty map would withdraw what a
                // previous run of this agent programmed.
                if listed_once {
                    if let Err(e) = reconcile(&overlay, &hosts).await {
                        eprintln!("berth agent: reconcile: {e}");
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let first = !listed_once;
        listed_once = true;
        let revision = listed["revision"].as_u64().unwrap_or(0);
        hosts = serde_json::from_value::<Vec<Host>>(listed["hosts"].clone())
            .unwrap_or_default()
            .into_iter()
            .map(|h| (h.name.clone(), h))
            .collect();
        if !hosts.contains_key(&cfg.name) {
            return leave(&cfg, &overlay).await;
        }
        match reconcile(&overlay, &hosts).await {
            Ok(n) => {
                applied.store(revision, Ordering::Relaxed);
                if first {
                    eprintln!(
                        "berth agent: map of {} hosts at revision {revision} applied ({n} changes)",
                        hosts.len()
                    );
                    beat_now.notify_one();
                }
            }
            Err(e) => eprintln!("berth agent: reconcile: {e}"),
        }
        let url = format!("{}/v1/watch?from={revision}", client.base);
        let resp = match client.http().get(&url).send().await {
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
                            let new = w.value.and_then(|v| serde_json::from_value::<Host>(v).ok());
                            if name == cfg.name && new.is_none() {
                                return leave(&cfg, &overlay).await;
                            }
                            changed |= crate::model::record_host(&mut hosts, name, new);
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

/// This host was removed from the cluster: its blocks may already belong to another
/// host, so the overlay goes (device and nftables table) and so does the host file, which
/// would let `berth run --network cluster` hand out their addresses. Containers already
/// running keep their addresses but lose the cluster.
async fn leave(cfg: &AgentConfig, overlay: &Arc<Mutex<Overlay>>) -> Result<()> {
    let config = overlay
        .lock()
        .map_err(|_| AgentError::Task("overlay lock poisoned".into()))?
        .config()
        .clone();
    tokio::task::spawn_blocking(move || Overlay::teardown(&config))
        .await
        .map_err(|e| AgentError::Task(e.to_string()))??;
    if let Err(e) = std::fs::remove_file(&cfg.host_file) {
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!(
                "berth agent: removing the host file {}: {e}",
                cfg.host_file.display()
            );
        }
    }
    // The engine's cluster network too, with its ranges of the old blocks, so a
    // re-join starts from the new host file; refused while containers hold addresses.
    let dir = networks_dir(cfg);
    let removed = tokio::task::spawn_blocking(move || {
        berth_net::Networks::open(&dir)?.remove(berth_engine::network::CLUSTER_NETWORK)
    })
    .await
    .map_err(|e| AgentError::Task(e.to_string()))?;
    match removed {
        Ok(()) => eprintln!("berth agent: the engine's cluster network removed"),
        Err(berth_net::Error::Store(berth_net::store::StoreError::NotFound(_))) => {}
        Err(e) => eprintln!(
            "berth agent: keeping the engine's cluster network: {e}; remove those \
             containers before joining again (their addresses may be another host's now)"
        ),
    }
    Err(AgentError::Removed(cfg.name.clone()))
}

fn networks_dir(cfg: &AgentConfig) -> PathBuf {
    berth_engine::paths::Paths::new(&cfg.engine_root, &cfg.engine_runroot).networks()
}

/// Asks the controller for another block whenever this host's run low, and records each
/// one for the engine (see [`crate::blocks`]). Runs forever: failures (the cluster's
/// space exhausted, the controller away) are logged and retried with backoff, and
/// nothing local changes until a block is granted.
async fn grow_blocks(
    client: &Client,
    cfg: &AgentConfig,
    mut host: berth_engine::network::ClusterHost,
) {
    let mut recorded = host.blocks.clone();
    let mut wait = cfg.report_every;
    loop {
        tokio::time::sleep(wait).await;
        match grow_once(client, cfg, &mut host, &mut recorded).await {
            Ok(()) => wait = cfg.report_every,
            Err(e) => {
                wait = (wait * 2).clamp(Duration::from_millis(200), Duration::from_secs(30));
                eprintln!(
                    "berth agent: growing the address blocks of host {} ({}): {e}; retrying in {wait:?}",
                    cfg.name,
                    crate::blocks::blocks_text(&host.blocks)
                );
            }
        }
    }
}

async fn grow_once(
    client: &Client,
    cfg: &AgentConfig,
    host: &mut berth_engine::network::ClusterHost,
    recorded: &mut Vec<ipnet::Ipv4Net>,
) -> Result<()> {
    let blocking = |e: tokio::task::JoinError| AgentError::Task(e.to_string());
    if *recorded != host.blocks {
        // Granted, but recording failed last time.
        let (cfg, h) = (cfg.clone(), host.clone());
        tokio::task::spawn_blocking(move || {
            crate::blocks::record(&cfg.host_file, &networks_dir(&cfg), &h)
        })
        .await
        .map_err(blocking)??;
        recorded.clone_from(&host.blocks);
    }
    let dir = networks_dir(cfg);
    let in_use = tokio::task::spawn_blocking(move || crate::blocks::addresses_in_use(&dir))
        .await
        .map_err(blocking)??;
    if !crate::blocks::needs_block(&host.blocks, &in_use) {
        return Ok(());
    }
    let (free, before) = (
        crate::blocks::free(&host.blocks, &in_use),
        crate::blocks::blocks_text(&host.blocks),
    );
    // A block granted earlier whose answer was lost is in the host's record: adopt it
    // rather than take one more.
    let listed: serde_json::Value = client
        .call(reqwest::Method::GET, "/v1/hosts", None, None)
        .await?;
    let known = serde_json::from_value::<Vec<Host>>(listed["hosts"].clone())
        .unwrap_or_default()
        .into_iter()
        .find(|h| h.name == cfg.name)
        .map(|h| h.blocks)
        .unwrap_or_default();
    host.blocks = if known.len() > host.blocks.len() {
        known
    } else {
        let granted: Host = client
            .call(
                reqwest::Method::POST,
                &format!("/v1/hosts/{}/blocks", cfg.name),
                None,
                None,
            )
            .await?;
        granted.blocks
    };
    eprintln!(
        "berth agent: host {} had {free} addresses free in {before}; its blocks are now {}",
        cfg.name,
        crate::blocks::blocks_text(&host.blocks)
    );
    let (c, h) = (cfg.clone(), host.clone());
    tokio::task::spawn_blocking(move || crate::blocks::record(&c.host_file, &networks_dir(&c), &h))
        .await
        .map_err(blocking)??;
    recorded.clone_from(&host.blocks);
    Ok(())
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
                .call(reqwest::Method::GET, "/v1/containers", None, None)
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
                    None,
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
                    None,
                    Some(serde_json::json!({"host": c.host, "addr": c.addr, "name": c.name})),
                )
                .await?;
            now.insert(id.clone(), c);
        }
    }
    *known = Some(now);
    Ok(())
}
