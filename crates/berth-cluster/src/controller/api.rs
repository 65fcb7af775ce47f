//! The controller's HTTP/JSON API (described in `openapi.json`, served at
//! `/v1/openapi.json`). Reads for any authenticated caller; writes with
//! compare-and-swap; `GET /v1/watch?from=REV` streams every change after REV as JSON
//! lines, and answers 410 Gone with the compaction revision when REV's history is gone
//! (the client re-lists and watches from the listing's revision). Bad requests get a 4xx
//! with `{"error": "..."}` and change nothing.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::auth::{self, Identity, Secrets};
use super::leader;
use super::pki::{self, CaMaterial};
use super::seal::Seal;
use super::serve::Peer;
use super::state::{self, JoinInfo, StateError};
use crate::model::{self, Container};
use crate::store::{Condition, EventKind, Revision, Store, StoreError, Txn};

pub const SECRETS_KEY: &str = "/secrets/cluster";
pub const CA_KEY: &str = "/secrets/ca";
/// `/secrets/hosts/<name>`: the fingerprint of the host's current certificate.
const HOST_CERTS: &str = "/secrets/hosts/";
/// `/secrets/certs/<fingerprint>`: whose certificate it is (see auth.rs).
const CERTS: &str = "/secrets/certs/";
/// Prefixes a watch may ask for (never /secrets/).
const WATCHABLE: [&str; 4] = [
    model::HOSTS,
    model::CONTAINERS,
    model::BLOCKS,
    model::CLUSTER_KEY,
];

#[derive(Clone)]
pub struct Api {
    pub store: Arc<dyn Store>,
    /// The latest change to the map, which `status` measures hosts against.
    pub map_revision: Arc<super::map_revision::MapRevision>,
    /// Opens the CA's key (see [`super::seal`]); None: this controller can't issue.
    pub seal: Option<Arc<Seal>>,
}

/// The CA as the store keeps it: the key sealed, or (clusters initialized before keys
/// were sealed) in the clear.
#[derive(Debug, Serialize, Deserialize)]
struct StoredCa {
    cert_pem: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_sealed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_pem: Option<String>,
}

/// An error as the API reports it.
pub struct ApiError(StatusCode, String);

impl ApiError {
    pub fn message(&self) -> &str {
        &self.1
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<StateError> for ApiError {
    fn from(e: StateError) -> Self {
        let code = match &e {
            StateError::Model(_) | StateError::AddressOutsideBlocks { .. } => {
                StatusCode::BAD_REQUEST
            }
            StateError::UnknownHost(_) | StateError::UnknownContainer(_) => StatusCode::NOT_FOUND,
            StateError::Forbidden { .. } => StatusCode::FORBIDDEN,
            StateError::Stale { .. }
            | StateError::HostUp(_)
            | StateError::UnderlayChanged { .. }
            | StateError::Deposed(_) => StatusCode::CONFLICT,
            StateError::NotInitialized => StatusCode::SERVICE_UNAVAILABLE,
            StateError::Store(StoreError::CompareFailed(_)) | StateError::Contended { .. } => {
                StatusCode::CONFLICT
            }
            StateError::Store(_) | StateError::Decode { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(code, e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        StateError::from(e).into()
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

async fn secrets(store: &dyn Store) -> ApiResult<Secrets> {
    let kv = store.get(SECRETS_KEY).await?.ok_or_else(|| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the cluster is not initialized: run `berth controller init`".into(),
        )
    })?;
    serde_json::from_slice(&kv.value).map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("decoding {SECRETS_KEY}: {e}"),
        )
    })
}

fn unauthorized(why: &str) -> ApiError {
    ApiError(StatusCode::UNAUTHORIZED, why.to_string())
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// The caller's identity from its client certificate: the handshake proved it was
/// signed by the cluster CA; the store says whose it is and that it is still current.
async fn identify(store: &dyn Store, peer: &Peer) -> ApiResult<Identity> {
    let fp = peer.cert_fingerprint.as_deref().ok_or_else(|| {
        unauthorized(
            "no client certificate: this request needs the certificate the controller issued",
        )
    })?;
    let kv = store.get(&format!("{CERTS}{fp}")).await?.ok_or_else(|| {
        unauthorized("client certificate not recognized (revoked by a later join?)")
    })?;
    Identity::from_record(&String::from_utf8_lossy(&kv.value))
        .ok_or_else(|| internal(format!("unreadable identity record {CERTS}{fp}")))
}

/// Records `fingerprint` as the certificate of `id`, and (for a host) replaces the
/// host's previous certificate, in one transaction.
async fn record_cert(store: &dyn Store, id: &Identity, fingerprint: &str) -> ApiResult<()> {
    let mut txn = Txn::new().put(format!("{CERTS}{fingerprint}"), id.record());
    if let Identity::Host(h) = id {
        let key = format!("{HOST_CERTS}{h}");
        let old = store.get(&key).await?;
        let cond = match &old {
            Some(kv) => {
                txn = txn.delete(format!("{CERTS}{}", String::from_utf8_lossy(&kv.value)));
                Condition::ModRevision(kv.mod_revision)
            }
            None => Condition::Absent,
        };
        txn = txn
            .when(key.clone(), cond)
            .put(key, fingerprint.to_string());
    }
    store.txn(txn).await?;
    Ok(())
}

/// Issues and records a certificate made here (the admin's, at `controller init`).
pub async fn issue_admin(store: &dyn Store, seal: Option<&Seal>) -> ApiResult<pki::Issued> {
    let ca = ca(store, seal).await?;
    let issued = pki::issue(&ca, &Identity::Admin.record(), pki::Role::Client).map_err(internal)?;
    let fp = pki::pem_fingerprint(&issued.cert_pem)
        .ok_or_else(|| internal("reading back the admin certificate"))?;
    record_cert(store, &Identity::Admin, &fp).await?;
    Ok(issued)
}

async fn stored_ca(store: &dyn Store) -> ApiResult<StoredCa> {
    let kv = store.get(CA_KEY).await?.ok_or_else(|| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the cluster has no CA: run `berth controller init`".into(),
        )
    })?;
    serde_json::from_slice(&kv.value).map_err(|e| internal(format!("decoding {CA_KEY}: {e}")))
}

/// The cluster CA's certificate (no key needed).
pub async fn ca_cert(store: &dyn Store) -> ApiResult<String> {
    Ok(stored_ca(store).await?.cert_pem)
}

/// The cluster CA with its key, opened with `seal`.
pub async fn ca(store: &dyn Store, seal: Option<&Seal>) -> ApiResult<CaMaterial> {
    let stored = stored_ca(store).await?;
    let key_pem = match (&stored.key_sealed, stored.key_pem, seal) {
        (Some(sealed), _, Some(seal)) => {
            let key = seal
                .open(sealed)
                .map_err(|e| internal(format!("opening the cluster CA's key: {e}")))?;
            String::from_utf8(key)
                .map_err(|_| internal("opening the cluster CA's key: not PEM text"))?
        }
        (Some(_), _, None) => {
            return Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "the cluster CA's key is sealed and this controller has no seal: copy \
                 ca.seal from the directory of the controller that ran `controller init` \
                 first"
                    .into(),
            ))
        }
        (None, Some(pem), _) => pem,
        (None, None, _) => return Err(internal(format!("{CA_KEY} holds no key"))),
    };
    Ok(CaMaterial {
        cert_pem: stored.cert_pem,
        key_pem,
    })
}

/// Agents may only act as themselves; the admin may act for anyone.
fn require_host(id: &Identity, host: &str) -> ApiResult<()> {
    match id {
        Identity::Admin => Ok(()),
        Identity::Host(h) if h == host => Ok(()),
        Identity::Host(h) => Err(ApiError(
            StatusCode::FORBIDDEN,
            format!("host {h} may not act for host {host}"),
        )),
    }
}

/// Writes the join token's digest and a new CA, its key sealed with `seal` (at
/// `controller init`); nothing if the cluster already has them. True if they were
/// written now.
pub async fn init_secrets(store: &dyn Store, join_token: &str, seal: &Seal) -> ApiResult<bool> {
    let s = Secrets {
        join_token_sha256: auth::digest(join_token),
    };
    let new = pki::new_ca().map_err(internal)?;
    let ca = StoredCa {
        key_sealed: Some(seal.seal(new.key_pem.as_bytes()).map_err(internal)?),
        cert_pem: new.cert_pem,
        key_pem: None,
    };
    let txn = Txn::new()
        .when(SECRETS_KEY, Condition::Absent)
        .when(CA_KEY, Condition::Absent)
        .put(SECRETS_KEY, serde_json::to_vec(&s).unwrap_or_default())
        .put(CA_KEY, serde_json::to_vec(&ca).unwrap_or_default());
    match store.txn(txn).await {
        Ok(_) => Ok(true),
        Err(StoreError::CompareFailed(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

pub fn router(api: Api) -> Router {
    Router::new()
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/join", post(join))
        .route("/v1/cluster", get(cluster))
        .route("/v1/hosts", get(hosts))
        .route("/v1/hosts/{name}", delete(remove_host))
        .route("/v1/hosts/{name}/heartbeat", put(heartbeat))
        .route("/v1/hosts/{name}/blocks", post(add_block))
        .route("/v1/hosts/{name}/certificate", post(renew_certificate))
        .route("/v1/containers", get(containers))
        .route(
            "/v1/containers/{id}",
            put(put_container).delete(delete_container),
        )
        .route("/v1/status", get(status))
        .route("/v1/watch", get(watch))
        .with_state(api)
}

async fn openapi() -> Response {
    (
        [("content-type", "application/json")],
        include_str!("openapi.json"),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
pub struct JoinRequest {
    pub name: String,
    pub underlay_ip: std::net::Ipv4Addr,
    pub vtep_mac: String,
    /// A PEM certificate signing request for the agent's own key.
    pub csr: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct JoinResponse {
    pub host: model::Host,
    pub cluster: model::Cluster,
    /// PEM: the agent's client certificate from now on (CN `host:<name>`).
    pub certificate: String,
}

async fn join(
    State(api): State<Api>,
    headers: HeaderMap,
    Json(req): Json<JoinRequest>,
) -> ApiResult<Json<JoinResponse>> {
    let s = secrets(api.store.as_ref()).await?;
    let token =
        bearer(&headers).ok_or_else(|| unauthorized("join needs the join token as Bearer"))?;
    if !auth::matches(token, &s.join_token_sha256) {
        return Err(unauthorized("invalid join token"));
    }
    // Checked before anything is written: a bad CSR changes nothing.
    model::validate_host_name(&req.name)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    let id = Identity::Host(req.name.clone());
    let ca = ca(api.store.as_ref(), api.seal.as_deref()).await?;
    let certificate = pki::sign_csr(&ca, &req.csr, &id.record())
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    let host = state::join(
        api.store.as_ref(),
        &JoinInfo {
            name: req.name.clone(),
            underlay_ip: req.underlay_ip,
            vtep_mac: req.vtep_mac,
        },
    )
    .await?;
    // A new certificate each join: a re-joining agent (restart, lost state) gets one,
    // and the old one stops working.
    let fp = pki::pem_fingerprint(&certificate)
        .ok_or_else(|| internal("reading back the issued certificate"))?;
    record_cert(api.store.as_ref(), &id, &fp).await?;
    let cluster = state::get_cluster(api.store.as_ref()).await?;
    Ok(Json(JoinResponse {
        host,
        cluster,
        certificate,
    }))
}

async fn cluster(
    State(api): State<Api>,
    Extension(peer): Extension<Peer>,
) -> ApiResult<Json<serde_json::Value>> {
    identify(api.store.as_ref(), &peer).await?;
    let c = state::get_cluster(api.store.as_ref()).await?;
    Ok(Json(json!(c)))
}

async fn hosts(
    State(api): State<Api>,
    Extension(peer): Extension<Peer>,
) -> ApiResult<Json<serde_json::Value>> {
    identify(api.store.as_ref(), &peer).await?;
    let (hosts, revision) = state::hosts(api.store.as_ref()).await?;
    Ok(Json(json!({ "revision": revision, "hosts": hosts })))
}

async fn containers(
    State(api): State<Api>,
    Extension(peer): Extension<Peer>,
) -> ApiResult<Json<serde_json::Value>> {
    identify(api.store.as_ref(), &peer).await?;
    let (cs, revision) = state::containers(api.store.as_ref()).await?;
    Ok(Json(json!({ "revision": revision, "containers": cs })))
}

/// Each host's applied revision against the map's latest change, and which controller
/// leads. `revision` is the store's; heartbeats alone move it, so it is not what hosts
/// are measured against (see [`super::map_revision`]).
async fn status(
    State(api): State<Api>,
    Extension(peer): Extension<Peer>,
) -> ApiResult<Json<serde_json::Value>> {
    identify(api.store.as_ref(), &peer).await?;
    let leader = leader::current(api.store.as_ref())
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let (hosts, _) = state::hosts(api.store.as_ref()).await?;
    let revision = api.store.revision().await?;
    // Until the follower's first listing, the store's revision: conservative.
    let map_revision = match api.map_revision.get() {
        0 => revision,
        r => r,
    };
    let rows: Vec<_> = hosts
        .iter()
        .map(|h| {
            json!({
                "name": h.name,
                "state": h.state,
                "applied_revision": h.applied_revision,
                "behind": map_revision.saturating_sub(h.applied_revision),
                "last_heartbeat_ms": h.last_heartbeat_ms,
            })
        })
        .collect();
    Ok(Json(
        json!({ "revision": revision, "map_revision": map_revision, "leader": leader, "hosts": rows }),
    ))
}

#[derive(Debug, Deserialize)]
pub struct RemoveQuery {
    /// Remove the host even while it is up.
    #[serde(default)]
    pub force: bool,
}

/// Removes a host (admin only): its record, its blocks and its containers' records, and
/// revokes its certificate in the same transaction, so a forced removal also shuts its
/// agent out.
async fn remove_host(
    State(api): State<Api>,
    Path(name): Path<String>,
    Extension(peer): Extension<Peer>,
    Query(q): Query<RemoveQuery>,
) -> ApiResult<Json<state::RemovedHost>> {
    let who = identify(api.store.as_ref(), &peer).await?;
    if who != Identity::Admin {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!("only the admin may remove host {name}"),
        ));
    }
    let mut revoke = Txn::new();
    let key = format!("{HOST_CERTS}{name}");
    if let Some(kv) = api.store.get(&key).await? {
        revoke = revoke
            .when(key.clone(), Condition::ModRevision(kv.mod_revision))
            .delete(key)
            .delete(format!("{CERTS}{}", String::from_utf8_lossy(&kv.value)));
    }
    Ok(Json(
        state::remove_host(api.store.as_ref(), &name, q.force, &revoke).await?,
    ))
}

#[derive(Debug, Deserialize)]
pub struct HeartbeatRequest {
    pub applied_revision: Revision,
}

async fn heartbeat(
    State(api): State<Api>,
    Path(name): Path<String>,
    Extension(peer): Extension<Peer>,
    Json(req): Json<HeartbeatRequest>,
) -> ApiResult<Json<model::Host>> {
    let id = identify(api.store.as_ref(), &peer).await?;
    require_host(&id, &name)?;
    Ok(Json(
        state::heartbeat(api.store.as_ref(), &name, req.applied_revision).await?,
    ))
}

async fn add_block(
    State(api): State<Api>,
    Path(name): Path<String>,
    Extension(peer): Extension<Peer>,
) -> ApiResult<Json<model::Host>> {
    let id = identify(api.store.as_ref(), &peer).await?;
    require_host(&id, &name)?;
    Ok(Json(state::add_block(api.store.as_ref(), &name).await?))
}

#[derive(Debug, Deserialize)]
pub struct RenewRequest {
    /// A PEM certificate signing request for the host's new key.
    pub csr: String,
}

/// A host's new certificate, for its current one: the old one is revoked in the same
/// transaction that records the new one.
async fn renew_certificate(
    State(api): State<Api>,
    Path(name): Path<String>,
    Extension(peer): Extension<Peer>,
    Json(req): Json<RenewRequest>,
) -> ApiResult<Json<serde_json::Value>> {
    let id = identify(api.store.as_ref(), &peer).await?;
    // Only the host itself: the admin has no business holding a host's key.
    if id != Identity::Host(name.clone()) {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!("only host {name} may renew its certificate"),
        ));
    }
    let ca = ca(api.store.as_ref(), api.seal.as_deref()).await?;
    let certificate = pki::sign_csr(&ca, &req.csr, &id.record())
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    let fp = pki::pem_fingerprint(&certificate)
        .ok_or_else(|| internal("reading back the issued certificate"))?;
    record_cert(api.store.as_ref(), &id, &fp).await?;
    Ok(Json(json!({ "certificate": certificate })))
}

#[derive(Debug, Deserialize)]
pub struct PutContainer {
    pub host: String,
    pub addr: std::net::Ipv4Addr,
    #[serde(default)]
    pub name: String,
    /// Compare-and-swap: the record's revision as the caller read it; absent: create.
    #[serde(default)]
    pub expect_revision: Option<Revision>,
}

async fn put_container(
    State(api): State<Api>,
    Path(id): Path<String>,
    Extension(peer): Extension<Peer>,
    Json(req): Json<PutContainer>,
) -> ApiResult<Json<serde_json::Value>> {
    let who = identify(api.store.as_ref(), &peer).await?;
    require_host(&who, &req.host)?;
    let c = Container {
        id,
        host: req.host.clone(),
        addr: req.addr,
        name: req.name,
    };
    let rev = state::put_container(api.store.as_ref(), &req.host, &c, req.expect_revision).await?;
    Ok(Json(json!({ "revision": rev, "container": c })))
}

async fn delete_container(
    State(api): State<Api>,
    Path(id): Path<String>,
    Extension(peer): Extension<Peer>,
) -> ApiResult<Json<serde_json::Value>> {
    let who = identify(api.store.as_ref(), &peer).await?;
    let caller = match &who {
        Identity::Admin => None,
        Identity::Host(h) => Some(h.as_str()),
    };
    let rev = state::delete_container(api.store.as_ref(), caller, &id).await?;
    Ok(Json(json!({ "revision": rev })))
}

#[derive(Debug, Deserialize)]
pub struct WatchQuery {
    #[serde(default)]
    pub from: Revision,
}

/// One line of the watch stream.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct WatchLine {
    pub revision: Revision,
    /// "put" or "delete".
    pub kind: String,
    pub key: String,
    /// The record (JSON) for puts; null for deletes.
    pub value: Option<serde_json::Value>,
}

async fn watch(
    State(api): State<Api>,
    Extension(peer): Extension<Peer>,
    Query(q): Query<WatchQuery>,
) -> ApiResult<Response> {
    identify(api.store.as_ref(), &peer).await?;
    // Watch everything and filter: one store watch, in revision order, no gaps.
    let mut w = api.store.watch("/", q.from).await?;
    // The first item tells whether the history is there: a compaction is answered with
    // 410 before any byte of the stream.
    let first = tokio::time::timeout(std::time::Duration::from_millis(20), w.recv()).await;
    let first = match first {
        Ok(Some(Err(StoreError::Compacted {
            compact_revision, ..
        }))) => {
            return Ok((
                StatusCode::GONE,
                Json(json!({
                    "error": format!("history up to revision {compact_revision} was compacted: list again and watch from the listing's revision"),
                    "compact_revision": compact_revision,
                })),
            )
                .into_response())
        }
        Ok(Some(Err(e))) => return Err(e.into()),
        Ok(Some(Ok(ev))) => Some(ev),
        Ok(None) => None,
        Err(_) => None,
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(256);
    tokio::spawn(async move {
        let mut pending = first;
        loop {
            let ev = match pending.take() {
                Some(ev) => ev,
                None => match w.recv().await {
                    Some(Ok(ev)) => ev,
                    Some(Err(e)) => {
                        let line = json!({ "error": e.to_string() }).to_string() + "\n";
                        let _ = tx.send(Ok(line.into_bytes())).await;
                        return;
                    }
                    None => return,
                },
            };
            if !WATCHABLE.iter().any(|p| ev.kv.key.starts_with(p)) {
                continue;
            }
            let line = WatchLine {
                revision: ev.revision(),
                kind: match ev.kind {
                    EventKind::Put => "put".into(),
                    EventKind::Delete => "delete".into(),
                },
                key: ev.kv.key.clone(),
                value: match ev.kind {
                    EventKind::Put => serde_json::from_slice(&ev.kv.value).ok(),
                    EventKind::Delete => None,
                },
            };
            let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
            bytes.push(b'\n');
            // The client went away: stop watching.
            if tx.send(Ok(bytes)).await.is_err() {
                return;
            }
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok((
        StatusCode::OK,
        [("content-type", "application/x-ndjson")],
        body,
    )
        .into_response())
}
