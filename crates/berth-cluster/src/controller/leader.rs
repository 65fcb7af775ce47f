//! Which controller does the single-writer background work (the heartbeat sweep). Every
//! controller serves the API, whose writes are compare-and-swap and so safe from any of
//! them; the sweep runs only on the leader of the store's `controller` election, and
//! each of its writes carries the leadership's fence, so a leader that lost its lease
//! without noticing yet writes nothing.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::store::{Leadership, Revision, Store, StoreError};

/// The store election the controllers campaign in.
pub const ELECTION: &str = "controller";
/// How long a stopped leader keeps the election before another controller takes over.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(5);
/// Pause before campaigning again after the store failed.
const RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, Error)]
pub enum LeaderError {
    #[error("looking up the controller leader: {0}")]
    Lookup(#[source] StoreError),
    #[error("decoding the controller leader record {key}: {source}")]
    Decode {
        key: String,
        source: serde_json::Error,
    },
}

/// This controller as a candidate: how `GET /v1/status` names the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    pub name: String,
    /// The API's listen address.
    pub address: String,
}

/// How a controller takes part in the election.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    pub name: String,
    /// The etcd lease's TTL: a leader that stops is replaced within about this.
    pub lease: Duration,
}

impl LeaderConfig {
    pub fn new(name: impl Into<String>) -> Self {
        LeaderConfig {
            name: name.into(),
            lease: DEFAULT_LEASE,
        }
    }

    pub fn candidate(&self, address: &str) -> Candidate {
        Candidate {
            name: self.name.clone(),
            address: address.to_string(),
        }
    }
}

/// The leader as `GET /v1/status` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leader {
    pub name: String,
    pub address: String,
    /// The revision at which it became a candidate (its key's create revision).
    pub since_revision: Revision,
}

/// Campaigns until this controller leads. Store failures are retried after a pause,
/// for as long as the controller runs.
pub async fn lead(store: &dyn Store, me: &Candidate, lease: Duration) -> Leadership {
    // Our own plain struct: serialization cannot fail.
    let value = serde_json::to_vec(me).unwrap_or_default();
    loop {
        match store.campaign(ELECTION, value.clone(), lease).await {
            Ok(leadership) => return leadership,
            Err(e) => {
                eprintln!(
                    "berth controller {}: campaigning for leadership: {e}",
                    me.name
                );
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// The current leader, if any controller leads.
pub async fn current(store: &dyn Store) -> Result<Option<Leader>, LeaderError> {
    let Some(kv) = store.leader(ELECTION).await.map_err(LeaderError::Lookup)? else {
        return Ok(None);
    };
    let c: Candidate = serde_json::from_slice(&kv.value).map_err(|source| LeaderError::Decode {
        key: kv.key.clone(),
        source,
    })?;
    Ok(Some(Leader {
        name: c.name,
        address: c.address,
        since_revision: kv.create_revision,
    }))
}
