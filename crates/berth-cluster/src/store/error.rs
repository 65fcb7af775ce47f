//! The store's error: the outcomes callers act on (a failed compare, compacted history)
//! get their own variants; backend and URL failures fold in from their modules.

use std::fmt;

use super::{Condition, EmbeddedError, EtcdError, KeyValue, Revision, UrlError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A write's condition did not hold; nothing was written. Boxed to keep `Result`
    /// small on the happy path.
    #[error("{0}")]
    CompareFailed(Box<CompareFailed>),

    /// The history a watch needed was compacted away: list again with `range` and watch
    /// from the listing's revision.
    #[error(
        "store: watch {prefix:?} after revision {from}: history up to revision \
         {compact_revision} was compacted; re-list and watch from the listing's revision"
    )]
    Compacted {
        prefix: String,
        from: Revision,
        compact_revision: Revision,
    },

    #[error("store: compact to revision {requested}: the store is only at revision {current}")]
    FutureRevision {
        requested: Revision,
        current: Revision,
    },

    /// A request that no backend would accept (bad key, oversized or self-conflicting
    /// transaction).
    #[error("store: {op}: {reason}")]
    Invalid { op: String, reason: String },

    #[error(transparent)]
    Embedded(#[from] EmbeddedError),

    #[error(transparent)]
    Etcd(#[from] EtcdError),

    #[error(transparent)]
    Url(#[from] UrlError),
}

impl StoreError {
    /// The failed compare, if this is one (the caller re-reads `current` and retries).
    pub fn compare_failed(&self) -> Option<&CompareFailed> {
        match self {
            StoreError::CompareFailed(c) => Some(c),
            _ => None,
        }
    }

    /// Names the operation a failed compare belongs to (`put` and `delete` are
    /// transactions underneath, but their errors should say `put`/`delete`).
    pub(crate) fn for_op(self, op: &'static str) -> Self {
        match self {
            StoreError::CompareFailed(mut c) => {
                c.op = op;
                StoreError::CompareFailed(c)
            }
            other => other,
        }
    }
}

/// Which condition failed, on what key, and the key's state when it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompareFailed {
    /// `put`, `delete` or `txn`.
    pub op: &'static str,
    pub key: String,
    pub expected: Condition,
    /// The key as it was when the compare failed; `None`: absent.
    pub current: Option<KeyValue>,
}

impl CompareFailed {
    /// The key's `mod_revision` when the compare failed (0: absent), to retry a CAS with.
    pub fn current_mod_revision(&self) -> Revision {
        self.current.as_ref().map_or(0, |kv| kv.mod_revision)
    }
}

impl From<CompareFailed> for StoreError {
    fn from(c: CompareFailed) -> Self {
        StoreError::CompareFailed(Box::new(c))
    }
}

impl fmt::Display for CompareFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "store: {} {}: compare failed: ", self.op, self.key)?;
        match (&self.current, self.expected) {
            (Some(kv), Condition::ModRevision(r)) => {
                write!(f, "mod_revision is {}, expected {r}", kv.mod_revision)
            }
            (None, Condition::ModRevision(r)) => {
                write!(f, "key is absent, expected mod_revision {r}")
            }
            (Some(kv), _) => write!(
                f,
                "key exists (mod_revision {}), expected {}",
                kv.mod_revision, self.expected
            ),
            (None, _) => write!(f, "key is absent, expected {}", self.expected),
        }
    }
}
