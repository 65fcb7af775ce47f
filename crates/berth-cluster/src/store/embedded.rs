//! The embedded backend: the whole store in one redb file, for a single controller.
//!
//! Three tables:
//! - `kv`: key → (create_revision, mod_revision, version, value), the current map;
//! - `log`: (revision, index within the revision) → the change, the watch history;
//! - `meta`: the current revision and the compacted one (history at or below it is gone).
//!
//! Every write lands in a durable redb write transaction: compares, changes, log
//! entries, the new revision and the trimming of old history commit together, so a
//! crash leaves either all of a transaction or none of it. Writers that arrive while a
//! commit is running are committed together next (group commit: one fsync for many
//! writes, each with its own revision), which is what lets many agents report at once
//! without queueing behind one fsync each. After a commit the new
//! revision is published on a `tokio::sync::watch` channel. Each watcher is a task that
//! reads the log from its own position in short read transactions and then waits for that
//! channel: writers never wait for watchers, and a watcher that falls behind catches up
//! from the log instead of losing events. The log keeps the last `history` revisions
//! (auto-compaction on every write), so the file stops growing at a steady state.
//!
//! redb is synchronous, so every call runs on tokio's blocking pool.

use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;
use std::{collections::HashMap, fmt};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use tokio::sync::{mpsc, watch};

use super::election::check_name;
use super::txn::{check_key, check_prefix, check_txn, first_failed};
use super::{
    election_prefix, Condition, Event, EventKind, Fence, KeyValue, Leadership, Op, Range, Result,
    Revision, Store, StoreError, Txn, TxnOutcome, Watch,
};

/// key → (create_revision, mod_revision, version, value)
const KV: TableDefinition<&str, (u64, u64, u64, &[u8])> = TableDefinition::new("kv");
/// (revision, index within the revision)
type LogKey = (u64, u32);
/// (kind, key, create_revision, version, prev_mod_revision, value)
type LogRow = (u8, &'static str, u64, u64, u64, &'static [u8]);
const LOG: TableDefinition<LogKey, LogRow> = TableDefinition::new("log");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION: &str = "revision";
const COMPACTED: &str = "compacted";

const KIND_PUT: u8 = 0;
const KIND_DELETE: u8 = 1;

/// Log entries a watcher reads per read transaction; bounds how long one read takes and
/// how much it holds in memory.
const WATCH_BATCH: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error("store: creating the directory of {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store: {op}: {}: {source}", path.display())]
    Db {
        op: String,
        path: PathBuf,
        source: Box<redb::Error>,
    },
    /// redb locks the file for the process that has it open: one controller per file.
    #[error(
        "store: open: {}: the store file is in use by another process (or another handle \
         in this one); one controller serves one store file, several need etcd \
         (--store etcd://host:port)",
        path.display()
    )]
    InUse { path: PathBuf },
    #[error("store: {op}: {}: committed together with a write that failed: {reason}", path.display())]
    Batch {
        op: String,
        path: PathBuf,
        reason: String,
    },
    #[error("store: {op}: {}: the blocking task failed: {reason}", path.display())]
    Task {
        op: String,
        path: PathBuf,
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddedOptions {
    /// Revisions of history kept for watchers; older ones are compacted on each write.
    /// A watcher further behind than this gets `Compacted` and re-lists.
    pub history: u64,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions { history: 10_000 }
    }
}

/// The store in one redb file. Cheap to clone; clones share the open file.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    path: PathBuf,
    history: u64,
    /// The latest committed revision, for waking watchers.
    head: watch::Sender<Revision>,
    /// Writes queued for the next group commit.
    pending: Mutex<Vec<Pending>>,
    /// Held by the thread committing a batch.
    committer: Mutex<()>,
    /// One leadership per election at a time within this process (the file lock keeps
    /// other processes out).
    elections: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A queued write and where its outcome goes.
struct Pending {
    txn: Txn,
    done: std_mpsc::Sender<Result<TxnOutcome>>,
}

/// Locks a mutex; a panic elsewhere while holding it leaves nothing half-done here (the
/// queue is a plain Vec, the committer lock guards no data), so poisoning is ignored.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.inner.path)
            .field("history", &self.inner.history)
            .finish()
    }
}

/// Adds the operation and file to a redb error.
trait Ctx<T> {
    fn ctx(self, inner: &Inner, op: &str) -> Result<T>;
}

impl<T, E: Into<redb::Error>> Ctx<T> for std::result::Result<T, E> {
    fn ctx(self, inner: &Inner, op: &str) -> Result<T> {
        self.map_err(|e| {
            StoreError::from(EmbeddedError::Db {
                op: op.to_string(),
                path: inner.path.clone(),
                source: Box::new(e.into()),
            })
        })
    }
}

impl EmbeddedStore {
    /// Opens (creating if needed, with its directory) the store file. Blocking: call it
    /// before the runtime starts or through `spawn_blocking` ([`super::open`] does).
    /// A file can be open once at a time; a second open fails until the first store and
    /// all its clones and watches are dropped.
    pub fn open(path: impl AsRef<Path>, options: EmbeddedOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if options.history == 0 {
            return Err(StoreError::Invalid {
                op: format!("open {}", path.display()),
                reason: "history must keep at least 1 revision".into(),
            });
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| EmbeddedError::CreateDir {
                path: path.clone(),
                source,
            })?;
        }
        let open_err = |e: redb::DatabaseError| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => EmbeddedError::InUse { path: path.clone() },
            e => EmbeddedError::Db {
                op: "open".into(),
                path: path.clone(),
                source: Box::new(e.into()),
            },
        };
        let db = Database::create(&path).map_err(open_err)?;
        let (head, _) = watch::channel(0);
        let inner = Inner {
            db,
            path,
            history: options.history,
            head,
            pending: Mutex::new(Vec::new()),
            committer: Mutex::new(()),
            elections: Mutex::new(HashMap::new()),
        };
        let revision = inner.init()?;
        inner.head.send_replace(revision);
        Ok(EmbeddedStore {
            inner: Arc::new(inner),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on the blocking pool.
    async fn blocking<T, F>(&self, op: String, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner, &str) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        let path = inner.path.clone();
        let what = op.clone();
        match tokio::task::spawn_blocking(move || f(&inner, &op)).await {
            Ok(result) => result,
            Err(join) => Err(EmbeddedError::Task {
                op: what,
                path,
                reason: join.to_string(),
            }
            .into()),
        }
    }
}

/// Reads a key from the kv table.
fn read_kv(
    table: &impl ReadableTable<&'static str, (u64, u64, u64, &'static [u8])>,
    key: &str,
) -> std::result::Result<Option<KeyValue>, redb::StorageError> {
    Ok(table.get(key)?.map(|row| {
        let (create_revision, mod_revision, version, value) = row.value();
        KeyValue {
            key: key.to_string(),
            value: value.to_vec(),
            create_revision,
            mod_revision,
            version,
        }
    }))
}

fn read_meta(
    table: &impl ReadableTable<&'static str, u64>,
    name: &str,
) -> std::result::Result<u64, redb::StorageError> {
    Ok(table.get(name)?.map_or(0, |v| v.value()))
}

/// A watcher's next slice of the log.
struct LogBatch {
    events: Vec<Event>,
    /// Every revision up to this one has been scanned.
    upto: Revision,
    /// More log entries follow; read again without waiting.
    more: bool,
}

impl Inner {
    /// Creates the tables so that read transactions find them; returns the revision.
    fn init(&self) -> Result<Revision> {
        let op = "open";
        let wtx = self.db.begin_write().ctx(self, op)?;
        let revision = {
            wtx.open_table(KV).ctx(self, op)?;
            wtx.open_table(LOG).ctx(self, op)?;
            let meta = wtx.open_table(META).ctx(self, op)?;
            read_meta(&meta, REVISION).ctx(self, op)?
        };
        wtx.commit().ctx(self, op)?;
        Ok(revision)
    }

    fn get(&self, key: &str, op: &str) -> Result<Option<KeyValue>> {
        let rtx = self.db.begin_read().ctx(self, op)?;
        let kv = rtx.open_table(KV).ctx(self, op)?;
        read_kv(&kv, key).ctx(self, op)
    }

    fn range(&self, prefix: &str, op: &str) -> Result<Range> {
        let rtx = self.db.begin_read().ctx(self, op)?;
        let meta = rtx.open_table(META).ctx(self, op)?;
        let revision = read_meta(&meta, REVISION).ctx(self, op)?;
        let kv = rtx.open_table(KV).ctx(self, op)?;
        let mut kvs = Vec::new();
        for row in kv.range::<&str>(prefix..).ctx(self, op)? {
            let (key, row) = row.ctx(self, op)?;
            let key = key.value();
            if !key.starts_with(prefix) {
                break;
            }
            let (create_revision, mod_revision, version, value) = row.value();
            kvs.push(KeyValue {
                key: key.to_string(),
                value: value.to_vec(),
                create_revision,
                mod_revision,
                version,
            });
        }
        Ok(Range { kvs, revision })
    }

    fn revision(&self, op: &str) -> Result<Revision> {
        let rtx = self.db.begin_read().ctx(self, op)?;
        let meta = rtx.open_table(META).ctx(self, op)?;
        read_meta(&meta, REVISION).ctx(self, op)
    }

    /// Applies a checked transaction, committed together with whatever other writers
    /// queued meanwhile (group commit): one redb commit, hence one fsync, for the whole
    /// group, while each transaction still gets its own revision and its own outcome.
    /// A thread queues its write, then waits to be the committer; whoever is committer
    /// drains the queue, so by the time a thread gets its turn its write is either done
    /// by an earlier committer or in the batch it drains itself.
    fn txn(&self, txn: Txn, op: &str) -> Result<TxnOutcome> {
        let (done, answer) = std_mpsc::channel();
        lock(&self.pending).push(Pending { txn, done });
        {
            let _committer = lock(&self.committer);
            let batch = std::mem::take(&mut *lock(&self.pending));
            if !batch.is_empty() {
                self.commit_batch(batch, op);
            }
        }
        answer.recv().unwrap_or_else(|_| {
            Err(EmbeddedError::Task {
                op: op.to_string(),
                path: self.path.clone(),
                reason: "the committing thread went away without an answer".into(),
            }
            .into())
        })
    }

    /// Writes a batch in one redb write transaction and answers each writer. A failed
    /// compare fails only its own transaction (it wrote nothing); a storage error fails
    /// the whole batch, since the transaction may hold half of a write.
    fn commit_batch(&self, batch: Vec<Pending>, op: &str) {
        let wtx = match self.db.begin_write().ctx(self, op) {
            Ok(wtx) => wtx,
            Err(e) => return self.fail_batch(batch, 0, e, op),
        };
        let mut answers = Vec::with_capacity(batch.len());
        let mut head = None;
        for (i, pending) in batch.iter().enumerate() {
            match self.write(&wtx, &pending.txn, op) {
                Ok((outcome, changed)) => {
                    if changed {
                        head = Some(outcome.revision);
                    }
                    answers.push(Ok(outcome));
                }
                Err(e @ StoreError::CompareFailed(_)) => answers.push(Err(e)),
                Err(e) => {
                    let _ = wtx.abort();
                    return self.fail_batch(batch, i, e, op);
                }
            }
        }
        let finished = match head {
            Some(_) => wtx.commit().ctx(self, op),
            None => wtx.abort().ctx(self, op), // nothing changed: leave the file alone
        };
        if let Err(e) = finished {
            return self.fail_batch(batch, 0, e, op);
        }
        if let Some(revision) = head {
            self.head.send_replace(revision);
        }
        for (pending, answer) in batch.into_iter().zip(answers) {
            let _ = pending.done.send(answer); // the writer may have given up waiting
        }
    }

    /// Answers every writer of a failed batch: `culprit` gets the error itself, the
    /// others an error saying their write failed with it.
    fn fail_batch(&self, batch: Vec<Pending>, culprit: usize, error: StoreError, op: &str) {
        let reason = error.to_string();
        let mut error = Some(error);
        for (i, pending) in batch.into_iter().enumerate() {
            let e = match error.take().filter(|_| i == culprit) {
                Some(e) => e,
                None => EmbeddedError::Batch {
                    op: op.to_string(),
                    path: self.path.clone(),
                    reason: reason.clone(),
                }
                .into(),
            };
            let _ = pending.done.send(Err(e));
        }
    }

    /// One transaction of a batch, inside the batch's redb transaction; also says
    /// whether anything changed (if not, the outcome carries the current revision).
    fn write(&self, wtx: &WriteTransaction, txn: &Txn, op: &str) -> Result<(TxnOutcome, bool)> {
        let mut kv = wtx.open_table(KV).ctx(self, op)?;
        let mut log = wtx.open_table(LOG).ctx(self, op)?;
        let mut meta = wtx.open_table(META).ctx(self, op)?;
        let current = read_meta(&meta, REVISION).ctx(self, op)?;

        let mut seen = HashMap::new();
        for c in &txn.compares {
            seen.insert(c.key.as_str(), read_kv(&kv, &c.key).ctx(self, op)?);
        }
        if let Some(failed) = first_failed(&txn.compares, |k| seen.get(k).and_then(Option::as_ref))
        {
            return Err(failed.into());
        }

        let revision = current + 1;
        let mut events = Vec::new();
        for write in &txn.ops {
            match write {
                Op::Put { key, value } => {
                    let prev = read_kv(&kv, key).ctx(self, op)?;
                    let create_revision = prev.as_ref().map_or(revision, |p| p.create_revision);
                    let version = prev.as_ref().map_or(1, |p| p.version + 1);
                    let row = (create_revision, revision, version, value.as_slice());
                    kv.insert(key.as_str(), row).ctx(self, op)?;
                    events.push(Event {
                        kind: EventKind::Put,
                        kv: KeyValue {
                            key: key.clone(),
                            value: value.clone(),
                            create_revision,
                            mod_revision: revision,
                            version,
                        },
                        prev_mod_revision: prev.map_or(0, |p| p.mod_revision),
                    });
                }
                Op::Delete { key } => {
                    let prev_mod = kv.remove(key.as_str()).ctx(self, op)?.map(|g| g.value().1);
                    if let Some(prev_mod) = prev_mod {
                        events.push(deletion(key, revision, prev_mod));
                    }
                }
                Op::DeletePrefix { prefix } => {
                    let mut doomed = Vec::new();
                    for row in kv.range::<&str>(prefix.as_str()..).ctx(self, op)? {
                        let (key, row) = row.ctx(self, op)?;
                        if !key.value().starts_with(prefix.as_str()) {
                            break;
                        }
                        doomed.push((key.value().to_string(), row.value().1));
                    }
                    for (key, prev_mod) in doomed {
                        kv.remove(key.as_str()).ctx(self, op)?;
                        events.push(deletion(&key, revision, prev_mod));
                    }
                }
            }
        }
        if events.is_empty() {
            let outcome = TxnOutcome {
                revision: current,
                deleted: 0,
            };
            return Ok((outcome, false));
        }
        for (index, event) in events.iter().enumerate() {
            let kind = match event.kind {
                EventKind::Put => KIND_PUT,
                EventKind::Delete => KIND_DELETE,
            };
            let row = (
                kind,
                event.kv.key.as_str(),
                event.kv.create_revision,
                event.kv.version,
                event.prev_mod_revision,
                event.kv.value.as_slice(),
            );
            // At most MAX_TXN_OPS ops, but a prefix delete can remove many keys.
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            log.insert((revision, index), row).ctx(self, op)?;
        }
        let deleted = events
            .iter()
            .filter(|e| e.kind == EventKind::Delete)
            .count() as u64;
        meta.insert(REVISION, revision).ctx(self, op)?;
        let compacted = read_meta(&meta, COMPACTED).ctx(self, op)?;
        if revision.saturating_sub(compacted) > self.history {
            let upto = revision - self.history;
            log.retain_in(..=(upto, u32::MAX), |_, _| false)
                .ctx(self, op)?;
            meta.insert(COMPACTED, upto).ctx(self, op)?;
        }
        Ok((TxnOutcome { revision, deleted }, true))
    }

    fn compact(&self, upto: Revision, op: &str) -> Result<()> {
        let _committer = lock(&self.committer);
        let wtx = self.db.begin_write().ctx(self, op)?;
        let changed = {
            let mut log = wtx.open_table(LOG).ctx(self, op)?;
            let mut meta = wtx.open_table(META).ctx(self, op)?;
            let current = read_meta(&meta, REVISION).ctx(self, op)?;
            if upto > current {
                return Err(StoreError::FutureRevision {
                    requested: upto,
                    current,
                });
            }
            let compacted = read_meta(&meta, COMPACTED).ctx(self, op)?;
            if upto > compacted {
                log.retain_in(..=(upto, u32::MAX), |_, _| false)
                    .ctx(self, op)?;
                meta.insert(COMPACTED, upto).ctx(self, op)?;
            }
            upto > compacted
        };
        if changed {
            wtx.commit().ctx(self, op)?;
        } else {
            wtx.abort().ctx(self, op)?;
        }
        Ok(())
    }

    /// The events under `prefix` after revision `after`, up to about [`WATCH_BATCH`] log
    /// entries, never splitting a revision (the caller resumes at a revision boundary).
    fn read_log(&self, prefix: &str, after: Revision, op: &str) -> Result<LogBatch> {
        let rtx = self.db.begin_read().ctx(self, op)?;
        let meta = rtx.open_table(META).ctx(self, op)?;
        let compacted = read_meta(&meta, COMPACTED).ctx(self, op)?;
        if after < compacted {
            return Err(StoreError::Compacted {
                prefix: prefix.to_string(),
                from: after,
                compact_revision: compacted,
            });
        }
        let head = read_meta(&meta, REVISION).ctx(self, op)?;
        let log = rtx.open_table(LOG).ctx(self, op)?;
        let mut events = Vec::new();
        let mut upto = after;
        let entries = log.range((after.saturating_add(1), 0u32)..).ctx(self, op)?;
        for (scanned, entry) in entries.enumerate() {
            let (key, row) = entry.ctx(self, op)?;
            let (revision, _) = key.value();
            if revision != upto && scanned >= WATCH_BATCH {
                return Ok(LogBatch {
                    events,
                    upto,
                    more: true,
                });
            }
            upto = revision;
            let (kind, key, create_revision, version, prev_mod_revision, value) = row.value();
            if !key.starts_with(prefix) {
                continue;
            }
            events.push(Event {
                kind: if kind == KIND_DELETE {
                    EventKind::Delete
                } else {
                    EventKind::Put
                },
                kv: KeyValue {
                    key: key.to_string(),
                    value: value.to_vec(),
                    create_revision,
                    mod_revision: revision,
                    version,
                },
                prev_mod_revision,
            });
        }
        Ok(LogBatch {
            events,
            upto: head.max(after),
            more: false,
        })
    }
}

/// A delete event in etcd's shape: the key, no value, the deletion's revision.
fn deletion(key: &str, revision: Revision, prev_mod_revision: Revision) -> Event {
    Event {
        kind: EventKind::Delete,
        kv: KeyValue {
            key: key.to_string(),
            value: Vec::new(),
            create_revision: 0,
            mod_revision: revision,
            version: 0,
        },
        prev_mod_revision,
    }
}

/// One watcher: reads the log from its position, hands events to the consumer, then
/// sleeps until a commit. Holds the store weakly, so dropping the store ends it.
async fn feed(
    store: Weak<Inner>,
    mut head: watch::Receiver<Revision>,
    prefix: String,
    from: Revision,
    tx: mpsc::Sender<Result<Event>>,
) {
    let mut after = from;
    // Bounded by the consumer: every pass either sends, or waits for a commit, or ends.
    loop {
        // Mark the head seen *before* reading, so a commit after the read wakes us.
        head.borrow_and_update();
        let Some(inner) = store.upgrade() else { return };
        let path = inner.path.clone();
        let p = prefix.clone();
        let read = tokio::task::spawn_blocking(move || inner.read_log(&p, after, "watch"));
        let batch = match read.await {
            Ok(Ok(batch)) => batch,
            Ok(Err(e)) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
            Err(join) => {
                let e = EmbeddedError::Task {
                    op: format!("watch {prefix}"),
                    path,
                    reason: join.to_string(),
                };
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        };
        for event in batch.events {
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
        }
        after = batch.upto;
        if batch.more {
            continue;
        }
        tokio::select! {
            changed = head.changed() => {
                if changed.is_err() {
                    return; // the store was dropped
                }
            }
            () = tx.closed() => return,
        }
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        check_key("get", key)?;
        let key = key.to_string();
        self.blocking(format!("get {key}"), move |inner, op| inner.get(&key, op))
            .await
    }

    async fn range(&self, prefix: &str) -> Result<Range> {
        check_prefix("range", prefix)?;
        let prefix = prefix.to_string();
        self.blocking(format!("range {prefix}"), move |inner, op| {
            inner.range(&prefix, op)
        })
        .await
    }

    async fn revision(&self) -> Result<Revision> {
        self.blocking("revision".into(), |inner, op| inner.revision(op))
            .await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome> {
        check_txn(&txn)?;
        self.blocking("txn".into(), move |inner, op| inner.txn(txn, op))
            .await
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<Watch> {
        check_prefix("watch", prefix)?;
        let (tx, watch) = Watch::channel();
        let head = self.inner.head.subscribe();
        let store = Arc::downgrade(&self.inner);
        tokio::spawn(feed(store, head, prefix.to_string(), from, tx));
        Ok(watch)
    }

    async fn campaign(&self, election: &str, value: Vec<u8>, _ttl: Duration) -> Result<Leadership> {
        check_name("campaign", election)?;
        let slot = lock(&self.inner.elections)
            .entry(election.to_string())
            .or_default()
            .clone();
        let held = slot.lock_owned().await;
        let key = format!("{}local", election_prefix(election));
        let revision = self.put(&key, value, Condition::Any).await?;
        Ok(Leadership::local(Fence { key, revision }, held))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.blocking(
            format!("compact to revision {revision}"),
            move |inner, op| inner.compact(revision, op),
        )
        .await
    }
}
