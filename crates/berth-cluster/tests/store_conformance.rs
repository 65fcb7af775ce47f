//! The store conformance suite: the same bodies run against the embedded store and a
//! real etcd (`embedded::*` and `etcd::*`). Revisions are compared relative to each
//! other, never as absolute numbers (etcd starts at 1, the embedded store at 0).
//! Every wait is bounded: a body that hangs fails after [`BODY_LIMIT`].

mod store_support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_cluster::store::{
    Condition, Event, EventKind, Revision, Store, StoreError, Txn, Watch, MAX_TXN_OPS,
};
use store_support::Harness;

const BODY_LIMIT: Duration = Duration::from_secs(120);
const EVENT_WAIT: Duration = Duration::from_secs(10);

/// The next event; fails the test on an error, the end of the watch, or a 10 s wait.
async fn next(watch: &mut Watch) -> Event {
    match tokio::time::timeout(EVENT_WAIT, watch.recv()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(e))) => panic!("watch failed: {e}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no event within {EVENT_WAIT:?}"),
    }
}

/// Asserts that nothing arrives for a short while.
async fn quiet(watch: &mut Watch) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(300), watch.recv()).await {
        panic!("expected no event, got {item:?}");
    }
}

/// The watch's error item; fails on an event, the end, or a 10 s wait.
async fn next_error(watch: &mut Watch) -> StoreError {
    match tokio::time::timeout(EVENT_WAIT, watch.recv()).await {
        Ok(Some(Err(e))) => e,
        other => panic!("expected a watch error, got {other:?}"),
    }
}

fn compare_failed(result: Result<impl std::fmt::Debug, StoreError>) -> StoreError {
    match result {
        Err(e @ StoreError::CompareFailed(_)) => e,
        other => panic!("expected a failed compare, got {other:?}"),
    }
}

async fn put(store: &dyn Store, key: &str, value: &str) -> Revision {
    store
        .put(key, value.as_bytes().to_vec(), Condition::Any)
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e}"))
}

async fn value_of(store: &dyn Store, key: &str) -> Option<String> {
    let kv = store.get(key).await.expect("get");
    kv.map(|kv| String::from_utf8(kv.value).expect("utf-8 value"))
}

mod bodies {
    use super::*;

    pub async fn put_get(h: &mut Harness) {
        let s = h.store();
        assert_eq!(s.get("/hosts/a").await.unwrap(), None);
        let r1 = put(&*s, "/hosts/a", "one").await;
        let kv = s.get("/hosts/a").await.unwrap().expect("written");
        assert_eq!(
            (kv.key.as_str(), kv.value.as_slice()),
            ("/hosts/a", &b"one"[..])
        );
        assert_eq!(
            (kv.create_revision, kv.mod_revision, kv.version),
            (r1, r1, 1)
        );
        let r2 = put(&*s, "/hosts/a", "two").await;
        assert_eq!(r2, r1 + 1, "each write takes the next revision");
        let kv = s.get("/hosts/a").await.unwrap().expect("written");
        assert_eq!(
            (kv.create_revision, kv.mod_revision, kv.version),
            (r1, r2, 2)
        );
        assert_eq!(value_of(&*s, "/hosts/a").await.as_deref(), Some("two"));
        assert_eq!(s.revision().await.unwrap(), r2);
        let bad = s.put("hosts/a", vec![], Condition::Any).await.unwrap_err();
        assert_eq!(bad.to_string(), "store: put hosts/a: keys start with '/'");
    }

    pub async fn create_only_conflict(h: &mut Harness) {
        let s = h.store();
        let r = s
            .put("/blocks/0", b"host-a".to_vec(), Condition::Absent)
            .await
            .unwrap();
        let err = compare_failed(
            s.put("/blocks/0", b"host-b".to_vec(), Condition::Absent)
                .await,
        );
        let failed = err.compare_failed().unwrap();
        assert_eq!(failed.key, "/blocks/0");
        assert_eq!(
            failed.current.as_ref().map(|kv| kv.value.clone()),
            Some(b"host-a".to_vec())
        );
        assert_eq!(failed.current_mod_revision(), r);
        assert_eq!(
            err.to_string(),
            format!("store: put /blocks/0: compare failed: key exists (mod_revision {r}), expected absent")
        );
        assert_eq!(value_of(&*s, "/blocks/0").await.as_deref(), Some("host-a"));
        assert_eq!(
            s.revision().await.unwrap(),
            r,
            "a failed compare writes nothing"
        );
    }

    pub async fn compare_and_swap(h: &mut Harness) {
        let s = h.store();
        let r1 = put(&*s, "/hosts/a", "v1").await;
        let r2 = s
            .put("/hosts/a", b"v2".to_vec(), Condition::ModRevision(r1))
            .await
            .unwrap();
        assert!(r2 > r1);
        // A writer still holding r1 loses, and learns the current revision.
        let err = compare_failed(
            s.put("/hosts/a", b"v3".to_vec(), Condition::ModRevision(r1))
                .await,
        );
        assert_eq!(err.compare_failed().unwrap().current_mod_revision(), r2);
        assert_eq!(
            err.to_string(),
            format!("store: put /hosts/a: compare failed: mod_revision is {r2}, expected {r1}")
        );
        assert_eq!(value_of(&*s, "/hosts/a").await.as_deref(), Some("v2"));
        // Retrying with what the error carries succeeds.
        let retry = err.compare_failed().unwrap().current_mod_revision();
        s.put("/hosts/a", b"v3".to_vec(), Condition::ModRevision(retry))
            .await
            .unwrap();
        assert_eq!(value_of(&*s, "/hosts/a").await.as_deref(), Some("v3"));
        // CAS on an absent key, and Exists.
        let err = compare_failed(
            s.put("/hosts/z", b"x".to_vec(), Condition::ModRevision(r1))
                .await,
        );
        assert!(err.compare_failed().unwrap().current.is_none());
        assert_eq!(
            err.to_string(),
            format!(
                "store: put /hosts/z: compare failed: key is absent, expected mod_revision {r1}"
            )
        );
        compare_failed(s.put("/hosts/z", b"x".to_vec(), Condition::Exists).await);
        s.put("/hosts/z", b"x".to_vec(), Condition::ModRevision(0))
            .await
            .unwrap();
        s.put("/hosts/z", b"y".to_vec(), Condition::Exists)
            .await
            .unwrap();
    }

    pub async fn delete_with_condition(h: &mut Harness) {
        let s = h.store();
        let r1 = put(&*s, "/c/1", "x").await;
        let r2 = put(&*s, "/c/1", "y").await;
        let err = compare_failed(s.delete("/c/1", Condition::ModRevision(r1)).await);
        assert_eq!(
            err.to_string(),
            format!("store: delete /c/1: compare failed: mod_revision is {r2}, expected {r1}")
        );
        assert!(
            s.get("/c/1").await.unwrap().is_some(),
            "a failed delete keeps the key"
        );
        let rd = s.delete("/c/1", Condition::ModRevision(r2)).await.unwrap();
        assert_eq!(rd, Some(r2 + 1));
        assert_eq!(s.get("/c/1").await.unwrap(), None);
        assert_eq!(
            s.delete("/c/1", Condition::Any).await.unwrap(),
            None,
            "already gone"
        );
        assert_eq!(
            s.revision().await.unwrap(),
            r2 + 1,
            "deleting nothing is no write"
        );
        compare_failed(s.delete("/c/1", Condition::Exists).await);

        for k in ["/c/2", "/c/3", "/cx"] {
            put(&*s, k, "v").await;
        }
        let rp = s.delete_prefix("/c/").await.unwrap().expect("deleted some");
        assert_eq!(
            s.revision().await.unwrap(),
            rp,
            "one revision for the whole prefix"
        );
        let left: Vec<String> = s
            .range("")
            .await
            .unwrap()
            .kvs
            .into_iter()
            .map(|kv| kv.key)
            .collect();
        assert_eq!(left, ["/cx"]);
        assert_eq!(s.delete_prefix("/c/").await.unwrap(), None);
    }

    pub async fn range_by_prefix(h: &mut Harness) {
        let s = h.store();
        for k in ["/hosts/b", "/hosts/a", "/hostsx", "/containers/c1"] {
            put(&*s, k, k).await;
        }
        let hosts = s.range("/hosts/").await.unwrap();
        let keys: Vec<&str> = hosts.kvs.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(
            keys,
            ["/hosts/a", "/hosts/b"],
            "sorted, and /hostsx is not under /hosts/"
        );
        assert_eq!(hosts.revision, s.revision().await.unwrap());
        let all = s.range("").await.unwrap();
        assert_eq!(all.kvs.len(), 4);
        assert_eq!(s.range("/nothing/").await.unwrap().kvs, vec![]);

        // Many keys (etcd pages through them) still come back whole and in order.
        for batch in 0..10 {
            let mut txn = Txn::new();
            for i in 0..MAX_TXN_OPS {
                txn = txn.put(
                    format!("/many/{:05}", batch * MAX_TXN_OPS + i),
                    vec![b'x'; 100],
                );
            }
            s.txn(txn).await.unwrap();
        }
        let many = s.range("/many/").await.unwrap();
        assert_eq!(many.kvs.len(), 10 * MAX_TXN_OPS);
        assert!(many.kvs.windows(2).all(|w| w[0].key < w[1].key));
    }

    /// While a writer appends /snap/00000, /snap/00001, ... one revision each, every
    /// listing holds exactly the keys written up to its revision.
    pub async fn range_is_a_snapshot(h: &mut Harness) {
        let s = h.store();
        let base = s.revision().await.unwrap();
        let writer = {
            let s = s.clone();
            tokio::spawn(async move {
                for i in 0..300 {
                    put(&*s, &format!("/snap/{i:05}"), "v").await;
                }
            })
        };
        let mut listings = 0;
        while !writer.is_finished() && listings < 1000 {
            let r = s.range("/snap/").await.unwrap();
            let n = r.kvs.len() as u64;
            assert_eq!(
                n,
                r.revision - base,
                "listing at {} has {n} keys",
                r.revision
            );
            for (i, kv) in r.kvs.iter().enumerate() {
                assert_eq!(kv.key, format!("/snap/{i:05}"));
                assert!(kv.mod_revision <= r.revision);
            }
            listings += 1;
        }
        writer.await.unwrap();
        assert!(listings > 0);
    }

    pub async fn txn_is_atomic(h: &mut Harness) {
        let s = h.store();
        let r_host = put(&*s, "/hosts/a", "host").await;
        put(&*s, "/blocks/10.244.1.0", "taken").await;
        let before = s.revision().await.unwrap();
        // Allocate a block and record it on the host, together: the block is taken, so
        // nothing at all applies.
        let txn = Txn::new()
            .when("/hosts/a", Condition::ModRevision(r_host))
            .when("/blocks/10.244.1.0", Condition::Absent)
            .put("/blocks/10.244.1.0", "a")
            .put("/hosts/a", "host+block")
            .delete("/free/10.244.1.0");
        let err = compare_failed(s.txn(txn).await);
        let failed = err.compare_failed().unwrap();
        assert_eq!(failed.key, "/blocks/10.244.1.0");
        assert_eq!(failed.op, "txn");
        assert_eq!(s.revision().await.unwrap(), before);
        assert_eq!(value_of(&*s, "/hosts/a").await.as_deref(), Some("host"));

        let mut watch = s.watch("", before).await.unwrap();
        let txn = Txn::new()
            .when("/hosts/a", Condition::ModRevision(r_host))
            .when("/blocks/10.244.2.0", Condition::Absent)
            .put("/blocks/10.244.2.0", "a")
            .put("/hosts/a", "host+block")
            .delete("/blocks/10.244.1.0");
        let outcome = s.txn(txn).await.unwrap();
        assert_eq!(
            outcome.revision,
            before + 1,
            "one revision for the whole txn"
        );
        assert_eq!(outcome.deleted, 1);
        let mut seen = Vec::new();
        for _ in 0..3 {
            let e = next(&mut watch).await;
            assert_eq!(e.revision(), outcome.revision);
            seen.push((e.kind, e.kv.key));
        }
        seen.sort_by(|a, b| a.1.cmp(&b.1));
        assert_eq!(
            seen,
            [
                (EventKind::Delete, "/blocks/10.244.1.0".to_string()),
                (EventKind::Put, "/blocks/10.244.2.0".to_string()),
                (EventKind::Put, "/hosts/a".to_string()),
            ]
        );
        // Refused the same way on both backends.
        let twice = s
            .txn(Txn::new().put("/a", "1").put("/a", "2"))
            .await
            .unwrap_err();
        assert!(matches!(twice, StoreError::Invalid { .. }), "{twice}");
    }

    pub async fn watch_from_zero(h: &mut Harness) {
        let s = h.store();
        let r1 = put(&*s, "/w/a", "1").await;
        let r2 = put(&*s, "/w/a", "2").await;
        let r3 = s.delete("/w/a", Condition::Any).await.unwrap().unwrap();
        let mut watch = s.watch("/w/", 0).await.unwrap();
        let e = next(&mut watch).await;
        assert_eq!(
            (e.kind, e.revision(), e.prev_mod_revision, e.kv.version),
            (EventKind::Put, r1, 0, 1)
        );
        let e = next(&mut watch).await;
        assert_eq!(
            (e.kind, e.revision(), e.prev_mod_revision, e.kv.version),
            (EventKind::Put, r2, r1, 2)
        );
        assert_eq!(
            (e.kv.create_revision, e.kv.value.as_slice()),
            (r1, &b"2"[..])
        );
        let e = next(&mut watch).await;
        assert_eq!(
            (e.kind, e.revision(), e.prev_mod_revision),
            (EventKind::Delete, r3, r2)
        );
        assert_eq!(e.kv.key, "/w/a");
        assert!(e.kv.value.is_empty());
        quiet(&mut watch).await;
    }

    pub async fn watch_from_middle(h: &mut Harness) {
        let s = h.store();
        let mut revs = Vec::new();
        for i in 0..5 {
            revs.push(put(&*s, &format!("/m/{i}"), "v").await);
        }
        put(&*s, "/other", "not watched").await;
        let mut watch = s.watch("/m/", revs[1]).await.unwrap();
        for (i, r) in revs.iter().enumerate().skip(2) {
            let e = next(&mut watch).await;
            assert_eq!((e.revision(), e.kv.key.clone()), (*r, format!("/m/{i}")));
        }
        quiet(&mut watch).await;
        let r = put(&*s, "/m/9", "live").await;
        assert_eq!(next(&mut watch).await.revision(), r);
    }

    pub async fn watch_from_current(h: &mut Harness) {
        let s = h.store();
        put(&*s, "/n/old", "v").await;
        let now = s.revision().await.unwrap();
        let mut watch = s.watch("/n/", now).await.unwrap();
        quiet(&mut watch).await;
        let r = put(&*s, "/n/new", "v").await;
        let e = next(&mut watch).await;
        assert_eq!((e.kv.key.as_str(), e.revision()), ("/n/new", r));
    }

    pub async fn two_concurrent_watchers(h: &mut Harness) {
        let s = h.store();
        let from = s.revision().await.unwrap();
        let mut all = s.watch("", from).await.unwrap();
        let mut hosts = s.watch("/hosts/", from).await.unwrap();
        let writer = {
            let s = s.clone();
            tokio::spawn(async move {
                for i in 0..50 {
                    put(&*s, &format!("/hosts/h{i}"), "v").await;
                    put(&*s, &format!("/containers/c{i}"), "v").await;
                }
            })
        };
        let (mut last_all, mut last_hosts) = (from, from);
        for _ in 0..100 {
            let e = next(&mut all).await;
            assert_eq!(e.revision(), last_all + 1, "no gaps");
            last_all = e.revision();
        }
        for i in 0..50 {
            let e = next(&mut hosts).await;
            assert_eq!(e.kv.key, format!("/hosts/h{i}"));
            assert!(e.revision() > last_hosts);
            last_hosts = e.revision();
        }
        writer.await.unwrap();
        quiet(&mut hosts).await;
    }

    /// Thousands of events, single writes and big transactions mixed, consumed while
    /// they are written: all arrive, in order, within the body's time limit.
    pub async fn watch_survives_many_events(h: &mut Harness) {
        let s = h.store();
        let from = s.revision().await.unwrap();
        let mut watch = s.watch("/load/", from).await.unwrap();
        const SINGLE: usize = 1024;
        const TXNS: usize = 16;
        let writer = {
            let s = s.clone();
            tokio::spawn(async move {
                for i in 0..SINGLE {
                    put(&*s, &format!("/load/single/{i}"), "v").await;
                    if i % (SINGLE / TXNS) == 0 {
                        let mut txn = Txn::new();
                        for j in 0..MAX_TXN_OPS {
                            txn = txn.put(format!("/load/txn/{i}/{j}"), "v");
                        }
                        s.txn(txn).await.unwrap();
                    }
                }
            })
        };
        let total = SINGLE + TXNS * MAX_TXN_OPS;
        let started = Instant::now();
        let mut last = from;
        let mut per_key: BTreeMap<String, u64> = BTreeMap::new();
        for _ in 0..total {
            let e = next(&mut watch).await;
            assert!(e.revision() >= last, "revision order");
            last = e.revision();
            *per_key.entry(e.kv.key).or_default() += 1;
        }
        writer.await.unwrap();
        assert_eq!(per_key.len(), total, "every key exactly once");
        assert!(per_key.values().all(|n| *n == 1));
        assert_eq!(last, s.revision().await.unwrap());
        quiet(&mut watch).await;
        eprintln!("{total} events in {:?}", started.elapsed());
    }

    pub async fn compaction_then_relist(h: &mut Harness) {
        let s = h.store();
        let mut revs = Vec::new();
        for i in 0..10 {
            revs.push(put(&*s, &format!("/k/{}", i % 3), &i.to_string()).await);
        }
        let compact_at = revs[5];
        s.compact(compact_at).await.unwrap();
        s.compact(revs[2])
            .await
            .expect("compacting an older revision is a no-op");
        let future = s.compact(revs[9] + 100).await.unwrap_err();
        assert!(
            matches!(future, StoreError::FutureRevision { .. }),
            "{future}"
        );

        // Too old: a distinct error naming the compact revision.
        let mut old = s.watch("/k/", revs[2]).await.unwrap();
        match next_error(&mut old).await {
            StoreError::Compacted {
                compact_revision,
                from,
                ..
            } => {
                assert_eq!((compact_revision, from), (compact_at, revs[2]));
            }
            other => panic!("expected Compacted, got {other}"),
        }
        assert!(
            tokio::time::timeout(EVENT_WAIT, old.recv())
                .await
                .unwrap()
                .is_none(),
            "then ends"
        );

        // From the compact revision itself, history is still whole.
        let mut edge = s.watch("/k/", compact_at).await.unwrap();
        for r in &revs[6..] {
            assert_eq!(next(&mut edge).await.revision(), *r);
        }

        // Re-list, then watch from the listing: nothing missed, nothing twice.
        let listing = s.range("/k/").await.unwrap();
        assert_eq!(listing.kvs.len(), 3);
        let mut watch = s.watch("/k/", listing.revision).await.unwrap();
        let r = put(&*s, "/k/new", "v").await;
        let e = next(&mut watch).await;
        assert_eq!((e.revision(), e.kv.key.as_str()), (r, "/k/new"));
        assert_eq!(r, listing.revision + 1);
    }

    pub async fn persists_across_reopen(h: &mut Harness) {
        let s = h.store();
        let r1 = put(&*s, "/p/a", "kept").await;
        put(&*s, "/p/b", "deleted").await;
        s.delete("/p/b", Condition::Any).await.unwrap();
        let rc = put(&*s, "/p/c", "v1").await;
        let before = s.revision().await.unwrap();
        drop(s);
        let s = h.reopen().await;
        assert_eq!(s.revision().await.unwrap(), before);
        assert_eq!(value_of(&*s, "/p/a").await.as_deref(), Some("kept"));
        assert_eq!(s.get("/p/b").await.unwrap(), None);
        assert_eq!(s.get("/p/c").await.unwrap().unwrap().mod_revision, rc);
        // Revisions continue, CAS still works against the old revision, history survived.
        let r = s
            .put("/p/c", b"v2".to_vec(), Condition::ModRevision(rc))
            .await
            .unwrap();
        assert_eq!(r, before + 1);
        let mut watch = s.watch("/p/", r1).await.unwrap();
        let e = next(&mut watch).await;
        assert_eq!((e.kv.key.as_str(), e.kind), ("/p/b", EventKind::Put));
    }

    /// Several tasks increment one counter by read + compare-and-swap; no increment is
    /// lost.
    pub async fn concurrent_cas_counter(h: &mut Harness) {
        const TASKS: usize = 6;
        const EACH: usize = 25;
        let s = h.store();
        s.put("/counter", b"0".to_vec(), Condition::Absent)
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for _ in 0..TASKS {
            let s: Arc<dyn Store> = s.clone();
            tasks.push(tokio::spawn(async move {
                let mut conflicts = 0;
                for _ in 0..EACH {
                    let mut kv = s.get("/counter").await.unwrap().unwrap();
                    // Bounded: each retry means another task's increment went in.
                    for _attempt in 0..TASKS * EACH + 1 {
                        let n: u64 = std::str::from_utf8(&kv.value).unwrap().parse().unwrap();
                        let next = (n + 1).to_string().into_bytes();
                        match s
                            .put("/counter", next, Condition::ModRevision(kv.mod_revision))
                            .await
                        {
                            Ok(_) => break,
                            Err(StoreError::CompareFailed(c)) => {
                                conflicts += 1;
                                kv = c.current.expect("the counter exists");
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
                conflicts
            }));
        }
        let mut conflicts = 0;
        for t in tasks {
            conflicts += t.await.unwrap();
        }
        let kv = s.get("/counter").await.unwrap().unwrap();
        assert_eq!(kv.value, (TASKS * EACH).to_string().into_bytes());
        assert_eq!(kv.version, (TASKS * EACH + 1) as u64);
        eprintln!("{} increments, {conflicts} conflicts retried", TASKS * EACH);
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let mut h = Harness::embedded().await;
                    tokio::time::timeout(BODY_LIMIT, bodies::$name(&mut h))
                        .await
                        .expect("test body timed out");
                }
            )*
        }
        mod etcd {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let mut h = Harness::etcd().await;
                    tokio::time::timeout(BODY_LIMIT, bodies::$name(&mut h))
                        .await
                        .expect("test body timed out");
                }
            )*
        }
    };
}

conformance!(
    put_get,
    create_only_conflict,
    compare_and_swap,
    delete_with_condition,
    range_by_prefix,
    range_is_a_snapshot,
    txn_is_atomic,
    watch_from_zero,
    watch_from_middle,
    watch_from_current,
    two_concurrent_watchers,
    watch_survives_many_events,
    compaction_then_relist,
    persists_across_reopen,
    concurrent_cas_counter,
);
