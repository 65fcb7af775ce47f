//! Leader election behind the store, for work that must have exactly one writer (the
//! controller's heartbeat sweep).
//!
//! [`Store::campaign`] returns once the caller leads an election and hands back a
//! [`Leadership`]: a [`Fence`] to put in every single-writer transaction, and a way to
//! learn that the leadership is gone. The fence is a compare on the leader's own key in
//! the store, so a transaction from a leader that was deposed but does not know it yet
//! (a paused process, a partition) fails instead of acting on a stale belief.
//!
//! - etcd: a lease kept alive by a task, and etcd's election API (the same protocol as
//!   etcd's `concurrency` package): each candidate writes `<prefix>/election/<name>/<lease>`
//!   bound to its lease, and the candidate with the lowest create revision leads. A dead
//!   leader's key goes with its lease after the TTL, and the next candidate leads.
//! - embedded: the redb file is open in one process at a time, so that process is the
//!   only candidate; within it, one [`Leadership`] per election at a time.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::{oneshot, watch, OwnedMutexGuard};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Compare, Condition, Result, Revision, StoreError};

/// Where elections keep their keys: `/election/<name>/<candidate>`.
pub const ELECTIONS: &str = "/election/";

/// The prefix of one election's candidate keys.
pub fn election_prefix(election: &str) -> String {
    format!("{ELECTIONS}{election}/")
}

/// An election's name becomes one key segment: non-empty, no `/`, no NUL.
pub(crate) fn check_name(op: &str, election: &str) -> Result<()> {
    if election.is_empty() || election.contains(['/', '\0']) {
        return Err(StoreError::Invalid {
            op: format!("{op} election {election:?}"),
            reason: "an election name is one non-empty key segment (no '/' or NUL)".into(),
        });
    }
    Ok(())
}

/// Proof of leadership for a transaction: the leader's key at the revision that wrote it.
/// While the leadership holds, nobody else writes that key; once it is lost the key is
/// gone (lease expired, resigned) and [`Fence::compare`] fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub key: String,
    pub revision: Revision,
}

impl Fence {
    pub fn compare(&self) -> Compare {
        Compare {
            key: self.key.clone(),
            cond: Condition::ModRevision(self.revision),
        }
    }
}

/// A won election. Dropping it stops the lease's keep-alive without revoking the lease,
/// as a crash would: the next candidate leads once the TTL runs out. [`Leadership::resign`]
/// hands over at once.
#[derive(Debug)]
pub struct Leadership {
    fence: Fence,
    /// `Some(why)` once the leadership is lost.
    lost: watch::Receiver<Option<String>>,
    /// The etcd lease's keeper; `None` for the embedded store.
    keeper: Option<JoinHandle<()>>,
    resign: Option<oneshot::Sender<()>>,
    /// Embedded: holds the election within this process.
    _local: Option<(OwnedMutexGuard<()>, watch::Sender<Option<String>>)>,
}

impl Leadership {
    /// A leadership that lasts until dropped (the embedded store's).
    pub(crate) fn local(fence: Fence, guard: OwnedMutexGuard<()>) -> Self {
        let (tx, lost) = watch::channel(None);
        Leadership {
            fence,
            lost,
            keeper: None,
            resign: None,
            // `lost()` reads a closed channel as lost: this one stays open while held.
            _local: Some((guard, tx)),
        }
    }

    pub(crate) fn kept(
        fence: Fence,
        lost: watch::Receiver<Option<String>>,
        keeper: JoinHandle<()>,
        resign: oneshot::Sender<()>,
    ) -> Self {
        Leadership {
            fence,
            lost,
            keeper: Some(keeper),
            resign: Some(resign),
            _local: None,
        }
    }

    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// Whether the leadership is still believed held (the fence decides for writes).
    pub fn is_held(&self) -> bool {
        self.lost.borrow().is_none()
    }

    /// Waits until the leadership is lost; returns why.
    pub async fn lost(&mut self) -> String {
        loop {
            if let Some(why) = self.lost.borrow_and_update().clone() {
                return why;
            }
            if self.lost.changed().await.is_err() {
                return "the lease keeper stopped".into();
            }
        }
    }

    /// Gives the leadership up now (etcd: revokes the lease, deleting the key), so the next
    /// candidate need not wait for the TTL.
    pub async fn resign(mut self) {
        if let Some(resign) = self.resign.take() {
            let _ = resign.send(());
        }
        if let Some(keeper) = self.keeper.take() {
            let _ = keeper.await;
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        if let Some(keeper) = &self.keeper {
            keeper.abort();
        }
    }
}

/// Keeps an etcd lease alive: a keep-alive every third of the TTL, and a local deadline
/// (the send time of the oldest unanswered keep-alive plus the TTL) past which the lease
/// may have expired on the server, so the holder must assume it has.
pub(crate) struct KeepAlive {
    keeper: etcd_client::LeaseKeeper,
    stream: etcd_client::LeaseKeepAliveStream,
    ttl: Duration,
    next: Instant,
    expires: Instant,
    /// Send times of keep-alives not answered yet; answers come back in order.
    sent: VecDeque<Instant>,
}

impl KeepAlive {
    /// `granted` is when the lease was granted (its TTL runs from then at the latest).
    pub(crate) fn new(
        keeper: etcd_client::LeaseKeeper,
        stream: etcd_client::LeaseKeepAliveStream,
        ttl: Duration,
        granted: Instant,
    ) -> Self {
        KeepAlive {
            keeper,
            stream,
            ttl,
            next: Instant::now(),
            expires: granted + ttl,
            sent: VecDeque::new(),
        }
    }

    /// Does the next bit of keeping: sends a keep-alive or takes an answer. Fails with the
    /// reason once the lease is gone or may be. Cancel-safe enough to sit in a `select!`:
    /// a cancelled send is only a skipped keep-alive.
    pub(crate) async fn step(&mut self) -> Result<(), String> {
        tokio::select! {
            () = tokio::time::sleep_until(self.next) => {
                let at = Instant::now();
                self.keeper
                    .keep_alive()
                    .await
                    .map_err(|e| format!("sending a lease keep-alive: {e}"))?;
                self.sent.push_back(at);
                self.next = at + self.ttl / 3;
                Ok(())
            }
            answer = self.stream.message() => match answer {
                Ok(Some(r)) if r.ttl() > 0 => {
                    let at = self.sent.pop_front().unwrap_or_else(Instant::now);
                    self.expires = at + Duration::from_secs(r.ttl().unsigned_abs());
                    Ok(())
                }
                Ok(Some(_)) => Err("the lease expired".into()),
                Ok(None) => Err("etcd ended the lease keep-alive stream".into()),
                Err(e) => Err(format!("lease keep-alive: {e}")),
            },
            () = tokio::time::sleep_until(self.expires) => Err(format!(
                "no keep-alive answer within the lease's {} s",
                self.ttl.as_secs()
            )),
        }
    }
}
