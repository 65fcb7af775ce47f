//! The controller's state store: a revisioned key-value map with etcd's semantics.
//!
//! One cluster-wide **revision** counts every change: each write (a put, a delete or a
//! whole transaction) that changes something gets the next revision, and every key records
//! the revision that created it (`create_revision`), the one that last changed it
//! (`mod_revision`) and how often it was written since it was created (`version`). Writes
//! can be conditional on a key's `mod_revision` (compare-and-swap), so the controller can
//! read, decide and write without a lock; **watch** replays every change after a given
//! revision, in revision order and without gaps, so a host agent that lists the map at
//! revision R and watches from R never misses an entry. Old history is dropped by
//! **compaction**; a watcher that asks for dropped history gets [`StoreError::Compacted`]
//! and starts over with a fresh listing.
//!
//! Two backends implement [`Store`]: [`EmbeddedStore`] (one redb file, the default for a
//! single controller) and [`EtcdStore`] (several controllers sharing an etcd cluster).
//! [`open`] picks one from a `--store` URL. The trait is object-safe, so the controller
//! holds an `Arc<dyn Store>`.
//!
//! Keys are strings starting with `/` (`/hosts/node1`); values are opaque bytes (the
//! controller stores JSON). A prefix is either empty (everything) or starts with `/`.

mod election;
mod embedded;
mod error;
mod etcd;
mod txn;
mod url;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

pub use election::{election_prefix, Fence, Leadership, ELECTIONS};
pub use embedded::{EmbeddedError, EmbeddedOptions, EmbeddedStore};
pub use error::{CompareFailed, StoreError};
pub use etcd::{EtcdError, EtcdStore};
pub use url::{open, StoreUrl, UrlError};

/// A cluster revision. The embedded store starts at 0 (nothing written yet), etcd at 1.
pub type Revision = u64;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Most operations in one [`Txn`]: etcd's default `--max-txn-ops`, enforced on both
/// backends so that a transaction that works on one works on the other.
pub const MAX_TXN_OPS: usize = 128;

/// A key with its value and revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// The revision that created the key (0 in a delete event's kv).
    pub create_revision: Revision,
    /// The revision that last changed the key (for a delete event: the deletion's).
    pub mod_revision: Revision,
    /// Writes since creation: 1 after the first put (0 in a delete event's kv).
    pub version: u64,
}

/// What a write expects of a key's current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// No expectation.
    Any,
    /// The key must not exist (create only).
    Absent,
    /// The key must exist.
    Exists,
    /// The key's `mod_revision` must be exactly this (compare-and-swap). An absent key's
    /// `mod_revision` counts as 0, as in etcd, so `ModRevision(0)` means `Absent`.
    ModRevision(Revision),
}

impl Condition {
    /// Whether a key in state `current` (`None`: absent) satisfies the condition.
    pub fn holds(self, current: Option<&KeyValue>) -> bool {
        match self {
            Condition::Any => true,
            Condition::Absent => current.is_none(),
            Condition::Exists => current.is_some(),
            Condition::ModRevision(r) => current.map_or(0, |kv| kv.mod_revision) == r,
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Condition::Any => f.write_str("any state"),
            Condition::Absent => f.write_str("absent"),
            Condition::Exists => f.write_str("present"),
            Condition::ModRevision(r) => write!(f, "mod_revision {r}"),
        }
    }
}

/// One condition of a [`Txn`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    pub key: String,
    pub cond: Condition,
}

/// One write of a [`Txn`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
    },
    /// Deleting an absent key is not an error; it changes nothing.
    Delete {
        key: String,
    },
    DeletePrefix {
        prefix: String,
    },
}

/// An atomic multi-key write: if every compare holds, all ops apply under one new
/// revision; if any fails, nothing applies and the first failing compare is reported as
/// [`StoreError::CompareFailed`]. At most [`MAX_TXN_OPS`] compares and as many ops, and no
/// key may be written twice in one transaction (etcd refuses that too).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub ops: Vec<Op>,
}

impl Txn {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn when(mut self, key: impl Into<String>, cond: Condition) -> Self {
        self.compares.push(Compare {
            key: key.into(),
            cond,
        });
        self
    }

    pub fn put(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.ops.push(Op::Put {
            key: key.into(),
            value: value.into(),
        });
        self
    }

    pub fn delete(mut self, key: impl Into<String>) -> Self {
        self.ops.push(Op::Delete { key: key.into() });
        self
    }

    pub fn delete_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.ops.push(Op::DeletePrefix {
            prefix: prefix.into(),
        });
        self
    }
}

/// What a successful [`Txn`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnOutcome {
    /// The store's revision after the transaction: a new one if anything changed, the
    /// current one if nothing did (only deletes of absent keys, or no ops).
    pub revision: Revision,
    /// How many keys the deletes removed.
    pub deleted: u64,
}

/// The keys under a prefix, all as of one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// Sorted by key.
    pub kvs: Vec<KeyValue>,
    /// The revision the listing reflects; watch from it to follow every later change.
    pub revision: Revision,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// After a put: the key as written. After a delete: the key, an empty value, and
    /// `mod_revision` set to the deletion's revision (etcd's shape).
    pub kv: KeyValue,
    /// The key's `mod_revision` before this change; 0 if it did not exist.
    pub prev_mod_revision: Revision,
}

impl Event {
    /// The revision of the write that made this change; the events of one transaction
    /// share it.
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// Events queued per watcher before its feeder waits for the consumer. The feeder runs
/// apart from writers, so a full queue slows only this watcher.
const WATCH_QUEUE: usize = 1024;

/// The changes under a prefix after a revision, in revision order, with no gaps.
///
/// A watch is a `tokio::sync::mpsc` receiver fed by a task the backend spawned; dropping
/// the `Watch` stops that task. Each item is an event or an error; after an error the
/// watch ends. [`StoreError::Compacted`] (the history the watch needed is gone, either
/// at once because `from` was too old or later because the watcher fell that far behind)
/// means: [`Store::range`] again and watch from the listing's revision. Any other error
/// (etcd connection lost, file error) means: watch again from the last event's revision.
/// `None` means the store was closed.
#[derive(Debug)]
pub struct Watch {
    rx: mpsc::Receiver<Result<Event>>,
}

impl Watch {
    /// A watch and the sender its backend feeds.
    pub(crate) fn channel() -> (mpsc::Sender<Result<Event>>, Watch) {
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        (tx, Watch { rx })
    }

    /// The next event, waiting for one.
    pub async fn recv(&mut self) -> Option<Result<Event>> {
        self.rx.recv().await
    }

    /// The underlying receiver, e.g. for `tokio_stream::wrappers::ReceiverStream`.
    pub fn into_receiver(self) -> mpsc::Receiver<Result<Event>> {
        self.rx
    }
}

/// The store interface the controller is written against.
///
/// Methods are `async` through `async_trait` (boxed `Send` futures) so that the trait is
/// usable as `Arc<dyn Store>`. `put`, `delete` and `delete_prefix` are written in terms
/// of [`Store::txn`], so both backends share their semantics.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug {
    /// The key, if it exists.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// Every key starting with `prefix` (`""`: all keys), as of one revision.
    async fn range(&self, prefix: &str) -> Result<Range>;

    /// The current revision.
    async fn revision(&self) -> Result<Revision>;

    /// Applies `txn` atomically; see [`Txn`].
    async fn txn(&self, txn: Txn) -> Result<TxnOutcome>;

    /// Every change to keys starting with `prefix` with a revision greater than `from`
    /// (`0`: all retained history; the current revision: only new changes). Fails only
    /// if the watch cannot be set up; history problems arrive through the [`Watch`].
    async fn watch(&self, prefix: &str, from: Revision) -> Result<Watch>;

    /// Drops the history up to and including `revision`: watches from an older revision
    /// then fail with [`StoreError::Compacted`]. Current keys are untouched. Compacting to
    /// a revision already compacted is a no-op; to a future one, an error.
    async fn compact(&self, revision: Revision) -> Result<()>;

    /// Campaigns in `election` with `value` (what [`Store::leader`] shows of the leader)
    /// and returns once this caller leads; see [`Leadership`]. `ttl` is how long a leader
    /// that stopped (crash, partition) still holds the election: etcd rounds it up to
    /// whole seconds and to its own minimum; the embedded store, with one process per
    /// file, has no use for it. A candidate that gives up drops the future.
    async fn campaign(&self, election: &str, value: Vec<u8>, ttl: Duration) -> Result<Leadership>;

    /// The leader of `election` now, as its key with the value it campaigned with: the
    /// candidate with the lowest create revision (etcd's election order).
    async fn leader(&self, election: &str) -> Result<Option<KeyValue>> {
        election::check_name("leader", election)?;
        let r = self.range(&election_prefix(election)).await?;
        Ok(r.kvs.into_iter().min_by_key(|kv| kv.create_revision))
    }

    /// Writes `key` if `cond` holds; returns the write's revision.
    async fn put(&self, key: &str, value: Vec<u8>, cond: Condition) -> Result<Revision> {
        txn::check_key("put", key)?;
        let txn = Txn::new().when(key, cond).put(key, value);
        let outcome = self.txn(txn).await.map_err(|e| e.for_op("put"))?;
        Ok(outcome.revision)
    }

    /// Deletes `key` if `cond` holds; returns the deletion's revision, or `None` if the
    /// key did not exist (with a condition that allows that).
    async fn delete(&self, key: &str, cond: Condition) -> Result<Option<Revision>> {
        txn::check_key("delete", key)?;
        let txn = Txn::new().when(key, cond).delete(key);
        let outcome = self.txn(txn).await.map_err(|e| e.for_op("delete"))?;
        Ok((outcome.deleted > 0).then_some(outcome.revision))
    }

    /// Deletes every key starting with `prefix` in one revision; returns it, or `None`
    /// if there was nothing to delete.
    async fn delete_prefix(&self, prefix: &str) -> Result<Option<Revision>> {
        txn::check_prefix("delete prefix", prefix)?;
        let outcome = self.txn(Txn::new().delete_prefix(prefix)).await?;
        Ok((outcome.deleted > 0).then_some(outcome.revision))
    }
}
