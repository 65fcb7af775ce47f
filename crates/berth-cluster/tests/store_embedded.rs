//! What only the embedded store has to show (its history bound, its watchers never
//! holding up writers, its file lock), and `open`'s handling of store URLs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_cluster::store::{open, Condition, EmbeddedOptions, EmbeddedStore, Store, StoreError};

const WAIT: Duration = Duration::from_secs(10);

async fn open_with(path: std::path::PathBuf, history: u64) -> Arc<dyn Store> {
    let opened =
        tokio::task::spawn_blocking(move || EmbeddedStore::open(path, EmbeddedOptions { history }))
            .await
            .expect("open task");
    Arc::new(opened.expect("open store"))
}

/// The log keeps the last `history` revisions: older ones are compacted on write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_with(dir.path().join("s.redb"), 20).await;
    let mut last = 0;
    for i in 0..100 {
        last = s
            .put("/k", i.to_string().into_bytes(), Condition::Any)
            .await
            .unwrap();
    }
    let mut too_old = s.watch("", 0).await.unwrap();
    match tokio::time::timeout(WAIT, too_old.recv()).await {
        Ok(Some(Err(StoreError::Compacted {
            compact_revision, ..
        }))) => {
            assert_eq!(compact_revision, last - 20);
        }
        other => panic!("expected Compacted, got {other:?}"),
    }
    // The last 20 revisions are all there.
    let mut recent = s.watch("", last - 20).await.unwrap();
    for r in last - 19..=last {
        let e = tokio::time::timeout(WAIT, recent.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(e.revision(), r);
    }
}

/// A watcher that reads nothing neither slows writers nor keeps history alive; when it
/// finally reads, it gets what was still queued for it and then `Compacted`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_watcher_does_not_block_writers() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_with(dir.path().join("s.redb"), 50).await;
    let mut idle = s.watch("", 0).await.unwrap();
    let started = Instant::now();
    // More than the watch queue (1024) plus the history (50).
    for i in 0..1500u32 {
        let key = format!("/k/{}", i % 10);
        s.put(&key, vec![0; 64], Condition::Any).await.unwrap();
    }
    eprintln!("1500 writes with an idle watcher: {:?}", started.elapsed());
    let mut events = 0;
    let mut last = 0;
    let err = loop {
        match tokio::time::timeout(WAIT, idle.recv())
            .await
            .expect("bounded")
        {
            Some(Ok(e)) => {
                assert_eq!(e.revision(), last + 1, "no gap before the error");
                last = e.revision();
                events += 1;
                assert!(events <= 1500);
            }
            Some(Err(e)) => break e,
            None => panic!("watch ended without an error"),
        }
    };
    assert!(matches!(err, StoreError::Compacted { .. }), "{err}");
    assert!(
        events < 1500,
        "the watcher fell behind the history ({events} events)"
    );
}

/// One process at a time: a second open of the same file fails clearly, and the file
/// opens again once every handle (watches included) is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_is_locked_while_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let s = open_with(path.clone(), 100).await;
    let watch = s.watch("", 0).await.unwrap();
    let p = path.clone();
    let second =
        tokio::task::spawn_blocking(move || EmbeddedStore::open(p, EmbeddedOptions::default()))
            .await
            .unwrap();
    let err = second
        .expect_err("second open of the same file")
        .to_string();
    assert!(
        err.starts_with(&format!("store: open: {}:", path.display())),
        "{err}"
    );
    drop(watch);
    drop(s);
    // The dropped watch's task lets go of the file within a moment.
    let deadline = Instant::now() + WAIT;
    loop {
        let p = path.clone();
        let again =
            tokio::task::spawn_blocking(move || EmbeddedStore::open(p, EmbeddedOptions::default()))
                .await
                .unwrap();
        match again {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => panic!("reopen: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

#[tokio::test]
async fn open_by_url() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("a/b/state.redb").display());
    let s = open(&url).await.unwrap();
    s.put("/x", b"1".to_vec(), Condition::Absent).await.unwrap();
    drop(s);
    let plain = dir.path().join("plain.redb");
    open(plain.to_str().unwrap()).await.unwrap();
    assert!(plain.exists());

    let err = open("redis://localhost").await.unwrap_err().to_string();
    assert!(err.contains("unknown scheme \"redis\""), "{err}");
    assert!(matches!(open("etcd://h:0").await, Err(StoreError::Url(_))));
}

/// Nothing listens on the port: the error names etcd and the endpoint, and comes back
/// well within the request timeout.
#[tokio::test]
async fn etcd_unreachable_fails_fast_and_clearly() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let started = Instant::now();
    let err = open(&format!("etcd://127.0.0.1:{port}"))
        .await
        .expect_err("nothing listens there")
        .to_string();
    assert!(
        err.starts_with(&format!(
            "store: connecting to etcd at http://127.0.0.1:{port}:"
        )),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(11),
        "{:?}",
        started.elapsed()
    );
}

/// Concurrent writers are committed in groups: every write still gets its own revision,
/// all of them distinct and consecutive, and the watch sees each once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_get_distinct_consecutive_revisions() {
    const TASKS: usize = 16;
    const EACH: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    let s = open_with(dir.path().join("s.redb"), 10_000).await;
    let base = s.revision().await.unwrap();
    let mut watch = s.watch("", base).await.unwrap();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..EACH {
                let key = format!("/t{t}/{i}");
                revs.push(s.put(&key, vec![1; 32], Condition::Absent).await.unwrap());
            }
            revs
        }));
    }
    let mut revs = Vec::new();
    for t in tasks {
        revs.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    revs.sort_unstable();
    let want: Vec<u64> = (base + 1..=base + (TASKS * EACH) as u64).collect();
    assert_eq!(revs, want);
    for r in want {
        let e = tokio::time::timeout(WAIT, watch.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(e.revision(), r);
    }
    eprintln!("{} concurrent writes in {elapsed:?}", TASKS * EACH);
}
