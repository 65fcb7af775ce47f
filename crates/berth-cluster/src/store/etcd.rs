//! The etcd backend, for several controllers sharing one etcd cluster.
//!
//! etcd already has the store's model (one revision, per-key revisions, compare-and-swap
//! transactions, watch from a revision, compaction), so this is a mapping:
//! - every key lives under a prefix (`/berth` by default): `/hosts/a` is `/berth/hosts/a`;
//! - `range` is paginated Range requests pinned to the first page's revision, so a big
//!   listing is still one snapshot and no response exceeds gRPC's message limit;
//! - `txn` is one etcd Txn; its else-branch reads every compared key, so a failed compare
//!   reports the key's state at the moment it failed, in the same atomic step;
//! - `watch` is an etcd Watch with `prev_kv`; etcd's start revision is inclusive and ours
//!   exclusive, so we start *at* `from` and drop events at `from`: etcd then reports
//!   compaction exactly when ours does (`from` below the compact revision);
//! - a watch response carrying `compact_revision` becomes [`StoreError::Compacted`].
//!
//! - `campaign` is a lease kept alive by a task plus etcd's election API (see
//!   [`super::Leadership`]).
//!
//! Unary requests are bounded by [`REQUEST_TIMEOUT`]; watches stay open, with HTTP/2
//! keep-alives so a dead connection ends the watch with an error instead of hanging.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, CompactionOptions, Compare as EtcdCompare, CompareOp, ConnectOptions, DeleteOptions,
    EventType, GetOptions, TxnOp, TxnOpResponse, WatchOptions, WatchStream,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::election::{check_name, KeepAlive};
use super::txn::{check_key, check_prefix, check_txn, first_failed};
use super::{
    election_prefix, Condition, Event, EventKind, Fence, KeyValue, Leadership, Op, Range, Result,
    Revision, Store, StoreError, Txn, TxnOutcome, Watch,
};

/// Bound on one unary request, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on revoking a lease on the way out; the TTL ends it anyway.
const REVOKE_TIMEOUT: Duration = Duration::from_secs(2);
/// Keys per Range page: far below gRPC's 4 MiB default even with kilobyte values.
const PAGE: i64 = 500;

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("store: connecting to etcd at {endpoints}: {source}")]
    Connect {
        endpoints: String,
        source: Box<etcd_client::Error>,
    },
    #[error("store: {op} on etcd: {source}")]
    Request {
        op: String,
        source: Box<etcd_client::Error>,
    },
    #[error("store: {op} on etcd: no answer within {} s", REQUEST_TIMEOUT.as_secs())]
    Timeout { op: String },
    /// etcd answered with something the store does not expect (a key under our prefix
    /// that is not UTF-8, a watch that ended or was canceled).
    #[error("store: {op} on etcd: {reason}")]
    Unexpected { op: String, reason: String },
}

fn request_error(op: &str, source: etcd_client::Error) -> StoreError {
    EtcdError::Request {
        op: op.to_string(),
        source: Box::new(source),
    }
    .into()
}

fn unexpected(op: &str, reason: impl Into<String>) -> StoreError {
    EtcdError::Unexpected {
        op: op.to_string(),
        reason: reason.into(),
    }
    .into()
}

/// The gRPC status message of an etcd error, to recognise etcd's named errors.
fn grpc_message(e: &StoreError) -> Option<&str> {
    match e {
        StoreError::Etcd(EtcdError::Request { source, .. }) => match source.as_ref() {
            etcd_client::Error::GRpcStatus(status) => Some(status.message()),
            _ => None,
        },
        _ => None,
    }
}

/// The first key after every key starting with `prefix` (etcd's range end).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // etcd: "every key from the start key on"
}

fn rev(r: i64) -> Revision {
    u64::try_from(r).unwrap_or(0)
}

fn etcd_rev(r: Revision) -> i64 {
    i64::try_from(r).unwrap_or(i64::MAX)
}

/// The store on an etcd cluster. Cheap to clone.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    endpoints: Vec<String>,
    prefix: String,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl EtcdStore {
    /// Connects to etcd (`endpoints` as `http://host:port`) and checks that it answers,
    /// since the client itself connects lazily. `prefix` (e.g. `/berth`, no trailing `/`)
    /// is prepended to every key.
    pub async fn connect(endpoints: Vec<String>, prefix: &str) -> Result<Self> {
        let joined = endpoints.join(",");
        let connect_err = |source| EtcdError::Connect {
            endpoints: joined.clone(),
            source: Box::new(source),
        };
        let options = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT);
        let client = Client::connect(&endpoints, Some(options))
            .await
            .map_err(connect_err)?;
        let store = EtcdStore {
            client,
            endpoints,
            prefix: prefix.trim_end_matches('/').to_string(),
        };
        store.revision().await.map_err(|e| match e {
            StoreError::Etcd(EtcdError::Request { source, .. }) => connect_err(*source).into(),
            other => other,
        })?;
        Ok(store)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Every user key starts with `/`, so the empty prefix is our prefix plus `/`
    /// (without the slash, `/berth` would also cover `/berthold/...`).
    fn full_prefix(&self, prefix: &str) -> String {
        if prefix.is_empty() {
            format!("{}/", self.prefix)
        } else {
            self.full_key(prefix)
        }
    }

    fn to_kv(&self, kv: &etcd_client::KeyValue, op: &str) -> Result<KeyValue> {
        to_kv(&self.prefix, kv, op)
    }

    /// Runs one unary request on a clone of the client, bounded by [`REQUEST_TIMEOUT`].
    async fn call<T, F, Fut>(&self, op: &str, f: F) -> Result<T>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        match tokio::time::timeout(REQUEST_TIMEOUT, f(self.client.clone())).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(request_error(op, e)),
            Err(_) => Err(EtcdError::Timeout { op: op.to_string() }.into()),
        }
    }
}

impl EtcdStore {
    /// Campaigns with a granted lease, keeping it alive meanwhile; once elected, hands the
    /// lease's keeping to a [`hold`] task.
    async fn win(
        &self,
        op: &str,
        election: &str,
        value: Vec<u8>,
        lease: i64,
        ttl: Duration,
        granted: Instant,
    ) -> Result<Leadership> {
        let (keeper, stream) = self
            .call(op, |mut c| async move { c.lease_keep_alive(lease).await })
            .await?;
        let mut keep = KeepAlive::new(keeper, stream, ttl, granted);
        // etcd's election name; candidates' keys are `<name>/<lease in hex>`.
        let prefix = self.full_key(&election_prefix(election));
        let name = prefix.trim_end_matches('/').to_string();
        let mut elections = self.client.election_client();
        let campaign = elections.campaign(name, value, lease);
        tokio::pin!(campaign);
        // Waits for every older candidate's key to go, which may take long: no timeout,
        // but the lease must stay alive meanwhile.
        let won = loop {
            tokio::select! {
                won = &mut campaign => break won.map_err(|e| request_error(op, e))?,
                kept = keep.step() => {
                    if let Err(why) = kept {
                        return Err(unexpected(op, why));
                    }
                }
            }
        };
        let leader = won
            .leader()
            .ok_or_else(|| unexpected(op, "etcd elected us without a leader key"))?;
        let key = leader
            .key()
            .strip_prefix(self.prefix.as_bytes())
            .and_then(|k| std::str::from_utf8(k).ok())
            .ok_or_else(|| unexpected(op, "the leader key is not under our prefix"))?
            .to_string();
        // etcd's campaign ends once the older keys are gone, even if ours went with an
        // expired lease meanwhile: lead only with our key still in place.
        let kv = match self.get(&key).await? {
            Some(kv) if kv.create_revision == rev(leader.rev()) => kv,
            _ => {
                return Err(unexpected(
                    op,
                    "our candidate key expired before we were elected",
                ))
            }
        };
        let full = self.full_key(&key);
        let options = WatchOptions::new().with_start_revision(etcd_rev(kv.mod_revision + 1));
        let key_watch = self
            .call(
                op,
                |mut c| async move { c.watch(full, Some(options)).await },
            )
            .await?;
        let (lost_tx, lost) = watch::channel(None);
        let (resign, resigned) = oneshot::channel();
        let keeper = tokio::spawn(hold(
            self.client.clone(),
            lease,
            keep,
            key_watch,
            resigned,
            lost_tx,
        ));
        let fence = Fence {
            key,
            revision: kv.mod_revision,
        };
        Ok(Leadership::kept(fence, lost, keeper, resign))
    }
}

fn to_kv(store_prefix: &str, kv: &etcd_client::KeyValue, op: &str) -> Result<KeyValue> {
    let key = kv
        .key()
        .strip_prefix(store_prefix.as_bytes())
        .and_then(|k| std::str::from_utf8(k).ok())
        .ok_or_else(|| {
            let shown = String::from_utf8_lossy(kv.key());
            unexpected(
                op,
                format!("key {shown:?} is not UTF-8 under {store_prefix:?}"),
            )
        })?;
    Ok(KeyValue {
        key: key.to_string(),
        value: kv.value().to_vec(),
        create_revision: rev(kv.create_revision()),
        mod_revision: rev(kv.mod_revision()),
        version: rev(kv.version()),
    })
}

/// Forwards one etcd watch into a [`Watch`] until the consumer drops it or the watch
/// ends; dropping the etcd stream cancels the watch on the server.
async fn relay(
    mut stream: WatchStream,
    store_prefix: String,
    prefix: String,
    from: Revision,
    tx: mpsc::Sender<Result<Event>>,
) {
    let op = format!("watch {prefix}");
    let mut last = from;
    loop {
        let message = tokio::select! {
            message = stream.message() => message,
            () = tx.closed() => return,
        };
        let response = match message {
            Ok(Some(response)) => response,
            Ok(None) => {
                let _ = tx.send(Err(unexpected(&op, "etcd ended the watch"))).await;
                return;
            }
            Err(e) => {
                let _ = tx.send(Err(request_error(&op, e))).await;
                return;
            }
        };
        if response.compact_revision() > 0 {
            let compacted = StoreError::Compacted {
                prefix,
                from: last,
                compact_revision: rev(response.compact_revision()),
            };
            let _ = tx.send(Err(compacted)).await;
            return;
        }
        if response.canceled() {
            let reason = format!("etcd canceled the watch: {}", response.cancel_reason());
            let _ = tx.send(Err(unexpected(&op, reason))).await;
            return;
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let kv = match to_kv(&store_prefix, kv, &op) {
                Ok(kv) => kv,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            if kv.mod_revision <= from {
                continue; // etcd's start revision is inclusive, `from` is not
            }
            last = kv.mod_revision;
            let event = Event {
                kind: match event.event_type() {
                    EventType::Put => EventKind::Put,
                    EventType::Delete => EventKind::Delete,
                },
                kv,
                prev_mod_revision: event.prev_kv().map_or(0, |p| rev(p.mod_revision())),
            };
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
        }
    }
}

/// Revokes a lease, best effort: a candidate key left behind would hold up the next
/// election until its TTL ran out.
async fn revoke(client: &Client, lease: i64) {
    let mut c = client.clone();
    let _ = tokio::time::timeout(REVOKE_TIMEOUT, c.lease_revoke(lease)).await;
}

/// Holds a won election: keeps the lease alive and watches the leader key, until either
/// fails (reported on `lost`) or the holder resigns.
async fn hold(
    client: Client,
    lease: i64,
    mut keep: KeepAlive,
    mut key_watch: WatchStream,
    mut resign: oneshot::Receiver<()>,
    lost: watch::Sender<Option<String>>,
) {
    let why = loop {
        tokio::select! {
            r = &mut resign => {
                // Err: the Leadership was dropped, which aborts this task anyway.
                if r.is_ok() {
                    revoke(&client, lease).await;
                    let _ = lost.send(Some("resigned".into()));
                }
                return;
            }
            kept = keep.step() => {
                if let Err(why) = kept {
                    break why;
                }
            }
            m = key_watch.message() => match m {
                Ok(Some(r)) if r.canceled() => {
                    break format!("etcd canceled the watch on the leader key: {}", r.cancel_reason());
                }
                Ok(Some(r)) => {
                    if r.events().iter().any(|e| e.event_type() == EventType::Delete) {
                        break "the leader key was deleted".into();
                    }
                }
                Ok(None) => break "etcd ended the watch on the leader key".into(),
                Err(e) => break format!("watching the leader key: {e}"),
            },
        }
    };
    let _ = lost.send(Some(why));
    revoke(&client, lease).await;
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        check_key("get", key)?;
        let op = format!("get {key}");
        let full = self.full_key(key);
        let response = self
            .call(&op, |mut c| async move { c.get(full, None).await })
            .await?;
        response
            .kvs()
            .first()
            .map(|kv| self.to_kv(kv, &op))
            .transpose()
    }

    async fn range(&self, prefix: &str) -> Result<Range> {
        check_prefix("range", prefix)?;
        let op = format!("range {prefix}");
        let full = self.full_prefix(prefix);
        let end = prefix_end(full.as_bytes());
        let mut start = full.into_bytes();
        let mut kvs = Vec::new();
        let mut revision = 0;
        // Each page moves `start` past the last key it returned, so this ends.
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if revision > 0 {
                options = options.with_revision(etcd_rev(revision));
            }
            let key = start.clone();
            let response = self
                .call(&op, |mut c| async move { c.get(key, Some(options)).await })
                .await?;
            if revision == 0 {
                revision = response.header().map_or(0, |h| rev(h.revision()));
            }
            for kv in response.kvs() {
                kvs.push(self.to_kv(kv, &op)?);
            }
            match response.kvs().last() {
                Some(last) if response.more() => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => break,
            }
        }
        Ok(Range { kvs, revision })
    }

    async fn revision(&self) -> Result<Revision> {
        // Any read carries the current revision in its header; this key never exists
        // (user keys have no NUL byte).
        let probe = format!("{}\0", self.prefix);
        let options = GetOptions::new().with_count_only();
        let response = self
            .call("revision", |mut c| async move {
                c.get(probe, Some(options)).await
            })
            .await?;
        Ok(response.header().map_or(0, |h| rev(h.revision())))
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome> {
        check_txn(&txn)?;
        let mut compares = Vec::new();
        let mut reads = Vec::new();
        for c in &txn.compares {
            let key = self.full_key(&c.key);
            let compare = match c.cond {
                Condition::Any => continue,
                Condition::Absent => EtcdCompare::version(key.clone(), CompareOp::Equal, 0),
                Condition::Exists => EtcdCompare::version(key.clone(), CompareOp::Greater, 0),
                Condition::ModRevision(r) => {
                    EtcdCompare::mod_revision(key.clone(), CompareOp::Equal, etcd_rev(r))
                }
            };
            compares.push(compare);
            reads.push(TxnOp::get(key, None));
        }
        let writes: Vec<TxnOp> = txn
            .ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value } => TxnOp::put(self.full_key(key), value.clone(), None),
                Op::Delete { key } => TxnOp::delete(self.full_key(key), None),
                Op::DeletePrefix { prefix } => {
                    let full = self.full_prefix(prefix);
                    let end = prefix_end(full.as_bytes());
                    TxnOp::delete(full, Some(DeleteOptions::new().with_range(end)))
                }
            })
            .collect();
        let request = etcd_client::Txn::new()
            .when(compares)
            .and_then(writes)
            .or_else(reads);
        let response = self
            .call("txn", |mut c| async move { c.txn(request).await })
            .await?;
        let revision = response.header().map_or(0, |h| rev(h.revision()));
        if response.succeeded() {
            let deleted = response
                .op_responses()
                .iter()
                .map(|r| match r {
                    TxnOpResponse::Delete(d) => rev(d.deleted()),
                    _ => 0,
                })
                .sum();
            return Ok(TxnOutcome { revision, deleted });
        }
        let mut current = HashMap::new();
        for r in response.op_responses() {
            if let TxnOpResponse::Get(got) = r {
                for kv in got.kvs() {
                    let kv = self.to_kv(kv, "txn")?;
                    current.insert(kv.key.clone(), kv);
                }
            }
        }
        match first_failed(&txn.compares, |k| current.get(k)) {
            Some(failed) => Err(failed.into()),
            None => Err(unexpected(
                "txn",
                "etcd reported a failed compare, but every compared key matches",
            )),
        }
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<Watch> {
        check_prefix("watch", prefix)?;
        let op = format!("watch {prefix}");
        let full = self.full_prefix(prefix);
        let options = WatchOptions::new()
            .with_range(prefix_end(full.as_bytes()))
            // etcd's 0 means "from now"; 1 is its first revision.
            .with_start_revision(etcd_rev(from.max(1)))
            .with_prev_key();
        let stream = self
            .call(
                &op,
                |mut c| async move { c.watch(full, Some(options)).await },
            )
            .await?;
        let (tx, watch) = Watch::channel();
        tokio::spawn(relay(
            stream,
            self.prefix.clone(),
            prefix.to_string(),
            from,
            tx,
        ));
        Ok(watch)
    }

    async fn campaign(&self, election: &str, value: Vec<u8>, ttl: Duration) -> Result<Leadership> {
        check_name("campaign", election)?;
        let op = format!("campaign in election {election}");
        let seconds = i64::try_from(ttl.as_millis().div_ceil(1000))
            .unwrap_or(i64::MAX)
            .max(1);
        let asked = Instant::now();
        let grant = self
            .call(
                &op,
                |mut c| async move { c.lease_grant(seconds, None).await },
            )
            .await?;
        let lease = grant.id();
        // etcd may raise the TTL to its minimum; the granted one is what counts.
        let ttl = Duration::from_secs(grant.ttl().unsigned_abs());
        let result = self.win(&op, election, value, lease, ttl, asked).await;
        if result.is_err() {
            revoke(&self.client, lease).await;
        }
        result
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let op = format!("compact to revision {revision}");
        // Physical: return once the history is really gone, so a watch that follows
        // sees the compaction.
        let options = CompactionOptions::new().with_physical();
        let result = self
            .call(&op, |mut c| async move {
                c.compact(etcd_rev(revision), Some(options)).await
            })
            .await;
        let Err(e) = result else { return Ok(()) };
        match grpc_message(&e) {
            Some(m) if m.contains("required revision has been compacted") => Ok(()),
            Some(m) if m.contains("required revision is a future revision") => {
                Err(StoreError::FutureRevision {
                    requested: revision,
                    current: self.revision().await?,
                })
            }
            _ => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"/berth/"), b"/berth0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
