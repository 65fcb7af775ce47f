//! The revision of the cluster map's latest change, which `status` compares each host's
//! applied revision with.
//!
//! The store's own revision is the wrong yardstick: heartbeats rewrite host records
//! (time, applied revision) every second or so, and certificate renewals and elections
//! write too, so it runs ahead of every agent by those writes alone and a healthy
//! cluster would always look a few revisions behind. A host is behind only while it has
//! not seen a change to what it programs: a host record whose routing fields changed
//! ([`Host::same_route`]), a block, a container.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::model::{self, Host};
use crate::store::{Event, EventKind, Revision, Store};

/// Shared between the follower task and the API.
#[derive(Debug, Default)]
pub struct MapRevision(AtomicU64);

impl MapRevision {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The latest map change seen; 0 until the first listing.
    pub fn get(&self) -> Revision {
        self.0.load(Ordering::Relaxed)
    }

    fn raise(&self, to: Revision) {
        self.0.fetch_max(to, Ordering::Relaxed);
    }
}

/// Follows the store for ever, keeping `map` at the latest map change. After a
/// compaction or a store error it lists again and counts the listing's revision as a
/// change: whatever it missed in between may have been one, so hosts look behind until
/// they report that revision (one heartbeat), never in sync too early.
pub async fn follow(store: Arc<dyn Store>, map: Arc<MapRevision>) {
    let mut warned = false;
    loop {
        match follow_once(store.as_ref(), &map).await {
            Ok(()) => return, // the store closed
            Err(e) => {
                if !warned {
                    eprintln!("berth controller: following the map for status: {e}; retrying");
                    warned = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

async fn follow_once(store: &dyn Store, map: &MapRevision) -> Result<(), String> {
    let listed = store.range(model::HOSTS).await.map_err(|e| e.to_string())?;
    let mut hosts: BTreeMap<String, Host> = listed
        .kvs
        .iter()
        .filter_map(|kv| {
            let name = kv.key.strip_prefix(model::HOSTS)?;
            Some((name.to_string(), serde_json::from_slice(&kv.value).ok()?))
        })
        .collect();
    map.raise(listed.revision);
    let mut watch = store
        .watch("/", listed.revision)
        .await
        .map_err(|e| e.to_string())?;
    while let Some(ev) = watch.recv().await {
        let ev = ev.map_err(|e| e.to_string())?;
        if changes_map(&mut hosts, &ev) {
            map.raise(ev.revision());
        }
    }
    Ok(())
}

/// Whether `ev` changes what some agent programs; keeps `hosts` current.
pub(crate) fn changes_map(hosts: &mut BTreeMap<String, Host>, ev: &Event) -> bool {
    let key = ev.kv.key.as_str();
    if let Some(name) = key.strip_prefix(model::HOSTS) {
        return match ev.kind {
            EventKind::Delete => {
                model::record_host(hosts, name, None);
                true
            }
            EventKind::Put => match serde_json::from_slice::<Host>(&ev.kv.value) {
                Ok(h) => model::record_host(hosts, name, Some(h)),
                // Not a host as this controller reads one: count it, to be safe.
                Err(_) => {
                    hosts.remove(name);
                    true
                }
            },
        };
    }
    key.starts_with(model::BLOCKS)
        || key.starts_with(model::CONTAINERS)
        || key == model::CLUSTER_KEY
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::KeyValue;

    fn put(key: &str, value: Vec<u8>, rev: Revision) -> Event {
        Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: key.to_string(),
                value,
                create_revision: 1,
                mod_revision: rev,
                version: 1,
            },
            prev_mod_revision: 0,
        }
    }

    fn host(state: &str, beat: u64, applied: Revision) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "name": "a", "underlay_ip": "10.0.0.1", "vtep_mac": "02:00:00:00:00:01",
            "blocks": ["10.244.1.0/24"], "state": state,
            "last_heartbeat_ms": beat, "applied_revision": applied,
        }))
        .unwrap()
    }

    #[test]
    fn heartbeats_are_not_map_changes_but_routing_fields_are() {
        let mut hosts = BTreeMap::new();
        assert!(
            changes_map(&mut hosts, &put("/hosts/a", host("up", 1, 0), 2)),
            "a new host"
        );
        assert!(
            !changes_map(&mut hosts, &put("/hosts/a", host("up", 2, 2), 3)),
            "a heartbeat"
        );
        assert!(
            !changes_map(&mut hosts, &put("/hosts/a", host("up", 3, 3), 4)),
            "another"
        );
        assert!(
            changes_map(&mut hosts, &put("/hosts/a", host("down", 3, 3), 5)),
            "marked down"
        );
        assert!(
            changes_map(&mut hosts, &put("/hosts/a", host("up", 9, 5), 6)),
            "back up"
        );
        let mut del = put("/hosts/a", Vec::new(), 7);
        del.kind = EventKind::Delete;
        assert!(changes_map(&mut hosts, &del), "a host removed");
        assert!(hosts.is_empty());
    }

    #[test]
    fn containers_and_blocks_are_map_changes_secrets_and_elections_are_not() {
        let mut hosts = BTreeMap::new();
        assert!(changes_map(
            &mut hosts,
            &put("/containers/abc", b"{}".to_vec(), 2)
        ));
        assert!(changes_map(
            &mut hosts,
            &put("/blocks/10.244.3.0-24", b"{}".to_vec(), 3)
        ));
        assert!(!changes_map(
            &mut hosts,
            &put("/secrets/certs/ff", b"x".to_vec(), 4)
        ));
        assert!(!changes_map(
            &mut hosts,
            &put("/election/controller/1", b"x".to_vec(), 5)
        ));
        assert!(
            changes_map(&mut hosts, &put("/hosts/x", b"not json".to_vec(), 6)),
            "unreadable: counted"
        );
    }
}
