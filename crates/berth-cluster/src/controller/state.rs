//! The controller's operations on cluster state: each one a compare-and-swap transaction
//! on the store, retried a bounded number of times when another writer got there first,
//! so two joins never get one block and a heartbeat never undoes a mark-down it didn't see.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use thiserror::Error;

use crate::model::{self, BlockOwner, Cluster, Container, Host, HostState, ModelError};
use crate::store::{Condition, Fence, KeyValue, Revision, Store, StoreError, Txn};

/// Conflicting writers retry this often before giving up with an error.
const CAS_RETRIES: usize = 16;

#[derive(Debug, Error)]
pub enum StateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("the cluster is not initialized: run `berth controller init`")]
    NotInitialized,
    #[error("decoding {key}: {source}")]
    Decode {
        key: String,
        source: serde_json::Error,
    },
    #[error("host {0} is not registered")]
    UnknownHost(String),
    #[error("container {0} does not exist")]
    UnknownContainer(String),
    #[error("host {host} may not write {what}: it belongs to host {owner}")]
    Forbidden {
        host: String,
        what: String,
        owner: String,
    },
    #[error("container {id}: address {addr} is not in a block of host {host} ({blocks})")]
    AddressOutsideBlocks {
        id: String,
        addr: Ipv4Addr,
        host: String,
        blocks: String,
    },
    #[error(
        "host {name} is registered with underlay address {existing}; it asked to join from {asked}"
    )]
    UnderlayChanged {
        name: String,
        existing: Ipv4Addr,
        asked: Ipv4Addr,
    },
    #[error("{what}: still conflicting after {CAS_RETRIES} attempts")]
    Contended { what: String },
    #[error(
        "sweeping hosts: no longer the leader: the leader key {} is not at revision {}",
        .0.key, .0.revision
    )]
    Deposed(Fence),
    #[error(
        "host {0} is up: stop its agent and let it be marked down, or force the removal \
         (its containers lose the cluster)"
    )]
    HostUp(String),
    #[error("container {id}: revision {expected} expected, it is at {actual}")]
    Stale {
        id: String,
        expected: Revision,
        actual: Revision,
    },
}

pub type Result<T, E = StateError> = std::result::Result<T, E>;

fn decode<T: serde::de::DeserializeOwned>(kv: &KeyValue) -> Result<T> {
    serde_json::from_slice(&kv.value).map_err(|source| StateError::Decode {
        key: kv.key.clone(),
        source,
    })
}

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    // Our own plain structs: serialization cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Writes the cluster record unless one exists; returns the one in force.
pub async fn init(store: &dyn Store, cluster: &Cluster) -> Result<Cluster> {
    cluster.validate()?;
    match store
        .put(model::CLUSTER_KEY, encode(cluster), Condition::Absent)
        .await
    {
        Ok(_) => Ok(cluster.clone()),
        Err(StoreError::CompareFailed(_)) => get_cluster(store).await,
        Err(e) => Err(e.into()),
    }
}

pub async fn get_cluster(store: &dyn Store) -> Result<Cluster> {
    let kv = store
        .get(model::CLUSTER_KEY)
        .await?
        .ok_or(StateError::NotInitialized)?;
    decode(&kv)
}

pub async fn get_host(store: &dyn Store, name: &str) -> Result<Option<(Host, Revision)>> {
    match store.get(&model::host_key(name)).await? {
        Some(kv) => Ok(Some((decode(&kv)?, kv.mod_revision))),
        None => Ok(None),
    }
}

pub async fn hosts(store: &dyn Store) -> Result<(Vec<Host>, Revision)> {
    let r = store.range(model::HOSTS).await?;
    let hosts = r.kvs.iter().map(decode).collect::<Result<Vec<Host>>>()?;
    Ok((hosts, r.revision))
}

pub async fn containers(store: &dyn Store) -> Result<(Vec<Container>, Revision)> {
    let r = store.range(model::CONTAINERS).await?;
    let cs = r
        .kvs
        .iter()
        .map(decode)
        .collect::<Result<Vec<Container>>>()?;
    Ok((cs, r.revision))
}

async fn taken_blocks(store: &dyn Store) -> Result<Vec<Ipv4Net>> {
    let r = store.range(model::BLOCKS).await?;
    Ok(r.kvs
        .iter()
        .filter_map(|kv| model::block_of_key(&kv.key))
        .collect())
}

/// What an agent says about itself when it joins.
#[derive(Debug, Clone)]
pub struct JoinInfo {
    pub name: String,
    pub underlay_ip: Ipv4Addr,
    pub vtep_mac: String,
}

/// Registers a host (or re-registers it: an agent restart keeps its blocks), giving it
/// a block when it has none. The host and its block are written in one transaction.
pub async fn join(store: &dyn Store, info: &JoinInfo) -> Result<Host> {
    model::validate_host_name(&info.name)?;
    model::parse_mac(&info.vtep_mac)?;
    let cluster = get_cluster(store).await?;
    for _ in 0..CAS_RETRIES {
        let existing = get_host(store, &info.name).await?;
        let (mut host, cond) = match existing {
            Some((h, rev)) => {
                if h.underlay_ip != info.underlay_ip {
                    return Err(StateError::UnderlayChanged {
                        name: info.name.clone(),
                        existing: h.underlay_ip,
                        asked: info.underlay_ip,
                    });
                }
                (h, Condition::ModRevision(rev))
            }
            None => (
                Host {
                    name: info.name.clone(),
                    underlay_ip: info.underlay_ip,
                    vtep_mac: String::new(),
                    blocks: Vec::new(),
                    state: HostState::Up,
                    last_heartbeat_ms: 0,
                    applied_revision: 0,
                },
                Condition::Absent,
            ),
        };
        host.vtep_mac = info.vtep_mac.clone();
        host.state = HostState::Up;
        host.last_heartbeat_ms = now_ms();
        let mut txn = Txn::new().when(model::host_key(&host.name), cond);
        if host.blocks.is_empty() {
            let block = model::next_free_block(&cluster, &taken_blocks(store).await?)?;
            host.blocks.push(block);
            txn = txn.when(model::block_key(block), Condition::Absent).put(
                model::block_key(block),
                encode(&BlockOwner {
                    host: host.name.clone(),
                }),
            );
        }
        txn = txn.put(model::host_key(&host.name), encode(&host));
        match store.txn(txn).await {
            Ok(_) => return Ok(host),
            Err(StoreError::CompareFailed(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(StateError::Contended {
        what: format!("joining host {}", info.name),
    })
}

/// Gives a host one more block (its first ones filled up).
pub async fn add_block(store: &dyn Store, name: &str) -> Result<Host> {
    let cluster = get_cluster(store).await?;
    for _ in 0..CAS_RETRIES {
        let (mut host, rev) = get_host(store, name)
            .await?
            .ok_or_else(|| StateError::UnknownHost(name.to_string()))?;
        let block = model::next_free_block(&cluster, &taken_blocks(store).await?)?;
        host.blocks.push(block);
        let txn = Txn::new()
            .when(model::host_key(name), Condition::ModRevision(rev))
            .when(model::block_key(block), Condition::Absent)
            .put(
                model::block_key(block),
                encode(&BlockOwner {
                    host: name.to_string(),
                }),
            )
            .put(model::host_key(name), encode(&host));
        match store.txn(txn).await {
            Ok(_) => return Ok(host),
            Err(StoreError::CompareFailed(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(StateError::Contended {
        what: format!("adding a block to host {name}"),
    })
}

/// A heartbeat: the host is up (again) and has applied `applied_revision`.
pub async fn heartbeat(store: &dyn Store, name: &str, applied_revision: Revision) -> Result<Host> {
    for _ in 0..CAS_RETRIES {
        let (mut host, rev) = get_host(store, name)
            .await?
            .ok_or_else(|| StateError::UnknownHost(name.to_string()))?;
        host.state = HostState::Up;
        host.last_heartbeat_ms = now_ms();
        host.applied_revision = host.applied_revision.max(applied_revision);
        match store
            .put(
                &model::host_key(name),
                encode(&host),
                Condition::ModRevision(rev),
            )
            .await
        {
            Ok(_) => return Ok(host),
            Err(StoreError::CompareFailed(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(StateError::Contended {
        what: format!("heartbeat of host {name}"),
    })
}

/// Marks down every up host whose last heartbeat is older than the cluster's timeout;
/// returns their names. A host that heartbeats meanwhile wins (the CAS fails, and the
/// next sweep sees it fresh).
pub async fn sweep(store: &dyn Store, now: u64) -> Result<Vec<String>> {
    sweep_fenced(store, now, None).await
}

/// [`sweep`] as the leader: each write also requires `fence` to hold, so once the
/// leadership is gone nothing is written and [`StateError::Deposed`] says so.
pub async fn sweep_fenced(
    store: &dyn Store,
    now: u64,
    fence: Option<&Fence>,
) -> Result<Vec<String>> {
    let cluster = get_cluster(store).await?;
    let r = store.range(model::HOSTS).await?;
    let mut downed = Vec::new();
    for kv in &r.kvs {
        let mut host: Host = decode(kv)?;
        if host.state == HostState::Up
            && now.saturating_sub(host.last_heartbeat_ms) > cluster.heartbeat_timeout_ms
        {
            host.state = HostState::Down;
            let mut txn = Txn::new();
            if let Some(f) = fence {
                // First, so that a lost leadership is what a failure reports.
                txn.compares.push(f.compare());
            }
            let txn = txn
                .when(&kv.key, Condition::ModRevision(kv.mod_revision))
                .put(&kv.key, encode(&host));
            match store.txn(txn).await {
                Ok(_) => downed.push(host.name),
                Err(StoreError::CompareFailed(c)) => {
                    if let Some(f) = fence.filter(|f| f.key == c.key) {
                        return Err(StateError::Deposed(f.clone()));
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(downed)
}

/// Writes a container record for `caller` (the agent of the host it runs on); with
/// `expect`, only if the record is still at that revision (None: must not exist yet).
pub async fn put_container(
    store: &dyn Store,
    caller: &str,
    c: &Container,
    expect: Option<Revision>,
) -> Result<Revision> {
    model::validate_container_id(&c.id)?;
    if c.host != caller {
        return Err(StateError::Forbidden {
            host: caller.to_string(),
            what: format!("container {}", c.id),
            owner: c.host.clone(),
        });
    }
    let (host, _) = get_host(store, caller)
        .await?
        .ok_or_else(|| StateError::UnknownHost(caller.to_string()))?;
    if !host.blocks.iter().any(|b| b.contains(&c.addr)) {
        return Err(StateError::AddressOutsideBlocks {
            id: c.id.clone(),
            addr: c.addr,
            host: caller.to_string(),
            blocks: berth_engine::network::blocks_text(&host.blocks),
        });
    }
    let key = model::container_key(&c.id);
    if let Some(kv) = store.get(&key).await? {
        let existing: Container = decode(&kv)?;
        if existing.host != caller {
            return Err(StateError::Forbidden {
                host: caller.to_string(),
                what: format!("container {}", c.id),
                owner: existing.host,
            });
        }
    }
    let cond = match expect {
        Some(r) => Condition::ModRevision(r),
        None => Condition::Absent,
    };
    // The host must still exist as the record is written: a host removed meanwhile
    // (remove_host) leaves no container behind.
    let host_key = model::host_key(caller);
    let txn = Txn::new()
        .when(&host_key, Condition::Exists)
        .when(&key, cond)
        .put(&key, encode(c));
    match store.txn(txn).await {
        Ok(outcome) => Ok(outcome.revision),
        Err(StoreError::CompareFailed(f)) if f.key == host_key => {
            Err(StateError::UnknownHost(caller.to_string()))
        }
        Err(StoreError::CompareFailed(f)) => Err(StateError::Stale {
            id: c.id.clone(),
            expected: expect.unwrap_or(0),
            actual: f.current.as_ref().map_or(0, |kv| kv.mod_revision),
        }),
        Err(e) => Err(e.into()),
    }
}

/// Removes a container record; only its host's agent (or an admin, `caller` None) may.
pub async fn delete_container(
    store: &dyn Store,
    caller: Option<&str>,
    id: &str,
) -> Result<Revision> {
    let key = model::container_key(id);
    let kv = store
        .get(&key)
        .await?
        .ok_or_else(|| StateError::UnknownContainer(id.to_string()))?;
    let existing: Container = decode(&kv)?;
    if let Some(c) = caller {
        if existing.host != c {
            return Err(StateError::Forbidden {
                host: c.to_string(),
                what: format!("container {id}"),
                owner: existing.host,
            });
        }
    }
    match store
        .delete(&key, Condition::ModRevision(kv.mod_revision))
        .await?
    {
        Some(rev) => Ok(rev),
        None => Err(StateError::UnknownContainer(id.to_string())),
    }
}

/// Most keys one transaction deletes: etcd refuses transactions of more than 128
/// operations by default (`--max-txn-ops`).
const DELETE_BATCH: usize = 100;

/// What [`remove_host`] took away.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RemovedHost {
    pub host: Host,
    /// Ids of the host's container records that were removed.
    pub containers: Vec<String>,
}

/// Removes a host from the cluster (an admin's act, as `docker node rm`): its record and
/// its blocks in one transaction, with `extra`'s compares and deletes (the API's
/// certificate records), so the blocks are free for other hosts at once and every agent
/// withdraws the host's routes on the delete; then the host's container records.
/// A host that is up is refused unless `force`: its agent would be cut off while its
/// containers run. Container records can no longer be written for the host once it is
/// gone ([`put_container`] requires it), and any left by an interrupted removal are
/// taken away by the leader later ([`delete_orphans`]).
pub async fn remove_host(
    store: &dyn Store,
    name: &str,
    force: bool,
    extra: &Txn,
) -> Result<RemovedHost> {
    model::validate_host_name(name)?;
    let mut removed = None;
    for _ in 0..CAS_RETRIES {
        let (host, rev) = get_host(store, name)
            .await?
            .ok_or_else(|| StateError::UnknownHost(name.to_string()))?;
        if host.state == HostState::Up && !force {
            return Err(StateError::HostUp(name.to_string()));
        }
        let mut txn = Txn::new().when(model::host_key(name), Condition::ModRevision(rev));
        txn.compares.extend(extra.compares.iter().cloned());
        txn = txn.delete(model::host_key(name));
        for b in &host.blocks {
            txn = txn.delete(model::block_key(*b));
        }
        txn.ops.extend(extra.ops.iter().cloned());
        match store.txn(txn).await {
            Ok(_) => {
                removed = Some(host);
                break;
            }
            Err(StoreError::CompareFailed(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let host = removed.ok_or_else(|| StateError::Contended {
        what: format!("removing host {name}"),
    })?;
    let containers = delete_orphans(store, None).await?;
    Ok(RemovedHost { host, containers })
}

/// Deletes the container records whose host no longer exists (left by a removal that
/// was interrupted), in batches; returns their ids. The leader runs it now and then;
/// with `fence`, nothing is written once the leadership is gone. Containers are listed
/// before hosts: a record seen here was written while its host existed (see
/// [`put_container`]), so a host missing from the later listing was removed since.
pub async fn delete_orphans(store: &dyn Store, fence: Option<&Fence>) -> Result<Vec<String>> {
    let cs = store.range(model::CONTAINERS).await?;
    let hosts = store.range(model::HOSTS).await?;
    let live: std::collections::BTreeSet<&str> = hosts
        .kvs
        .iter()
        .filter_map(|kv| kv.key.strip_prefix(model::HOSTS))
        .collect();
    let mut orphans = Vec::new();
    for kv in &cs.kvs {
        let c: Container = decode(kv)?;
        if !live.contains(c.host.as_str()) {
            orphans.push((kv.key.clone(), kv.mod_revision, c.id));
        }
    }
    let mut deleted = Vec::new();
    for batch in orphans.chunks(DELETE_BATCH) {
        let mut txn = Txn::new();
        if let Some(f) = fence {
            txn.compares.push(f.compare());
        }
        for (key, rev, _) in batch {
            txn = txn.when(key, Condition::ModRevision(*rev)).delete(key);
        }
        match store.txn(txn).await {
            Ok(_) => deleted.extend(batch.iter().map(|(_, _, id)| id.clone())),
            Err(StoreError::CompareFailed(c)) => {
                if let Some(f) = fence.filter(|f| f.key == c.key) {
                    return Err(StateError::Deposed(f.clone()));
                }
                // A record changed meanwhile (its agent deleted it): the next sweep
                // looks again.
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(deleted)
}
