//! The controller's state operations, the same bodies against the embedded store and a
//! real etcd: joins get distinct blocks (also when racing), re-joins keep theirs,
//! heartbeats and the down sweep, containers only in the caller's blocks and only by
//! their own host, compare-and-swap on container records, removing a host.

#[allow(dead_code)] // shared with the store suites, which use all of it
mod store_support;

use std::net::Ipv4Addr;
use std::sync::Arc;

use berth_cluster::controller::state::{self, JoinInfo, StateError};
use berth_cluster::model::{Cluster, Container, HostState};
use berth_cluster::store::Store;
use store_support::Harness;

fn cluster(timeout_ms: u64) -> Cluster {
    Cluster {
        cidr: "10.244.0.0/22".parse().unwrap(),
        block_prefix: 24,
        vni: 1,
        vxlan_port: 4789,
        heartbeat_timeout_ms: timeout_ms,
    }
}

fn info(name: &str, last: u8) -> JoinInfo {
    JoinInfo {
        name: name.into(),
        underlay_ip: Ipv4Addr::new(192, 0, 2, last),
        vtep_mac: format!("0a:58:c0:00:02:{last:02x}"),
    }
}

async fn joins_get_distinct_blocks_and_rejoin_keeps_them(s: Arc<dyn Store>) {
    let s = s.as_ref();
    assert!(matches!(
        state::join(s, &info("a", 1)).await,
        Err(StateError::NotInitialized)
    ));
    state::init(s, &cluster(10_000)).await.unwrap();
    // A second init keeps the first cluster.
    let mut other = cluster(10_000);
    other.vni = 9;
    assert_eq!(state::init(s, &other).await.unwrap().vni, 1);
    let a = state::join(s, &info("a", 1)).await.unwrap();
    let b = state::join(s, &info("b", 2)).await.unwrap();
    assert_eq!(a.blocks.len(), 1);
    assert_ne!(a.blocks, b.blocks);
    let again = state::join(s, &info("a", 1)).await.unwrap();
    assert_eq!(again.blocks, a.blocks, "a re-join must keep the block");
    let e = state::join(s, &info("a", 7)).await.unwrap_err();
    assert!(e.to_string().contains("192.0.2.1"), "{e}");
    let more = state::add_block(s, "a").await.unwrap();
    assert_eq!(more.blocks.len(), 2);
    // /22 of /24s: a has 2, b 1, one left, then exhaustion is a clear error.
    state::join(s, &info("c", 3)).await.unwrap();
    let e = state::join(s, &info("d", 4)).await.unwrap_err();
    assert!(e.to_string().contains("exhausted"), "{e}");
    let bad = JoinInfo {
        vtep_mac: "zz".into(),
        ..info("e", 5)
    };
    assert!(state::join(s, &bad).await.is_err());
}

async fn racing_joins_never_share_a_block(s: Arc<dyn Store>) {
    let mut c = cluster(10_000);
    c.cidr = "10.244.0.0/20".parse().unwrap();
    state::init(s.as_ref(), &c).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..8u8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            state::join(s.as_ref(), &info(&format!("h{i}"), 10 + i))
                .await
                .unwrap()
        }));
    }
    let mut blocks = Vec::new();
    for t in tasks {
        blocks.extend(t.await.unwrap().blocks);
    }
    blocks.sort();
    let n = blocks.len();
    blocks.dedup();
    assert_eq!(blocks.len(), n, "a block was handed out twice");
    assert_eq!(n, 8);
}

async fn heartbeats_and_the_down_sweep(s: Arc<dyn Store>) {
    let s = s.as_ref();
    state::init(s, &cluster(1_000)).await.unwrap();
    state::join(s, &info("a", 1)).await.unwrap();
    state::join(s, &info("b", 2)).await.unwrap();
    let now = state::now_ms();
    assert!(state::sweep(s, now).await.unwrap().is_empty());
    state::heartbeat(s, "b", 42).await.unwrap();
    // Two seconds "later" for a (its heartbeat is stale), b just beat at `now`.
    let down = state::sweep(s, now + 1_500).await.unwrap();
    assert!(down.contains(&"a".to_string()), "{down:?}");
    let (a, _) = state::get_host(s, "a").await.unwrap().unwrap();
    assert_eq!(a.state, HostState::Down);
    let a = state::heartbeat(s, "a", 7).await.unwrap();
    assert_eq!(a.state, HostState::Up);
    assert_eq!(a.applied_revision, 7);
    let (b, _) = state::get_host(s, "b").await.unwrap().unwrap();
    assert_eq!(b.applied_revision, 42);
    assert!(matches!(
        state::heartbeat(s, "nobody", 1).await,
        Err(StateError::UnknownHost(_))
    ));
}

async fn containers_only_in_own_blocks_by_own_host(s: Arc<dyn Store>) {
    let s = s.as_ref();
    state::init(s, &cluster(10_000)).await.unwrap();
    let a = state::join(s, &info("a", 1)).await.unwrap();
    let b = state::join(s, &info("b", 2)).await.unwrap();
    let addr = |blk: ipnet::Ipv4Net| Ipv4Addr::from(u32::from(blk.network()) + 2);
    let c = Container {
        id: "c1".into(),
        host: "a".into(),
        addr: addr(a.blocks[0]),
        name: "web".into(),
    };
    let r1 = state::put_container(s, "a", &c, None).await.unwrap();
    // Create-only: a second create is stale.
    assert!(matches!(
        state::put_container(s, "a", &c, None).await,
        Err(StateError::Stale { .. })
    ));
    // CAS update with the right revision, then with the old one.
    let mut moved = c.clone();
    moved.name = "web2".into();
    let r2 = state::put_container(s, "a", &moved, Some(r1))
        .await
        .unwrap();
    assert!(r2 > r1);
    assert!(matches!(
        state::put_container(s, "a", &moved, Some(r1)).await,
        Err(StateError::Stale { .. })
    ));
    // b can't write a's container, nor claim it, nor use a's block.
    let e = state::put_container(s, "b", &c, None).await.unwrap_err();
    assert!(matches!(e, StateError::Forbidden { .. }), "{e}");
    let mut stolen = c.clone();
    stolen.host = "b".into();
    let e = state::put_container(s, "b", &stolen, Some(r2))
        .await
        .unwrap_err();
    assert!(matches!(e, StateError::AddressOutsideBlocks { .. }), "{e}");
    stolen.addr = addr(b.blocks[0]);
    let e = state::put_container(s, "b", &stolen, Some(r2))
        .await
        .unwrap_err();
    assert!(matches!(e, StateError::Forbidden { .. }), "{e}");
    assert!(matches!(
        state::delete_container(s, Some("b"), "c1").await,
        Err(StateError::Forbidden { .. })
    ));
    let (cs, _) = state::containers(s).await.unwrap();
    assert_eq!(cs.len(), 1);
    assert_eq!(cs[0].name, "web2");
    state::delete_container(s, Some("a"), "c1").await.unwrap();
    assert!(matches!(
        state::delete_container(s, Some("a"), "c1").await,
        Err(StateError::UnknownContainer(_))
    ));
    let bad = Container {
        id: "../x".into(),
        ..c
    };
    assert!(state::put_container(s, "a", &bad, None).await.is_err());
}

async fn removing_a_host_frees_its_blocks_and_containers(s: Arc<dyn Store>) {
    let s = s.as_ref();
    // A /23 of /24s: room for two hosts only, so the freed block is visibly reused.
    let mut c = cluster(1_000);
    c.cidr = "10.244.0.0/23".parse().unwrap();
    state::init(s, &c).await.unwrap();
    let a = state::join(s, &info("a", 1)).await.unwrap();
    state::join(s, &info("b", 2)).await.unwrap();
    let e = state::join(s, &info("c", 3)).await.unwrap_err();
    assert!(e.to_string().contains("exhausted"), "{e}");
    let in_a = |i: u32| Ipv4Addr::from(u32::from(a.blocks[0].network()) + i);
    for (id, i) in [("c1", 2), ("c2", 3)] {
        let rec = Container {
            id: id.into(),
            host: "a".into(),
            addr: in_a(i),
            name: String::new(),
        };
        state::put_container(s, "a", &rec, None).await.unwrap();
    }
    let none = berth_cluster::store::Txn::new();
    // Up: refused unless forced, and nothing changed.
    let e = state::remove_host(s, "a", false, &none).await.unwrap_err();
    assert!(matches!(e, StateError::HostUp(_)), "{e}");
    assert!(e.to_string().contains("force"), "{e}");
    assert_eq!(state::containers(s).await.unwrap().0.len(), 2);
    // Down (its heartbeats stopped): removed with its block and containers.
    let down = state::sweep(s, state::now_ms() + 1_500).await.unwrap();
    assert!(down.contains(&"a".to_string()), "{down:?}");
    let removed = state::remove_host(s, "a", false, &none).await.unwrap();
    assert_eq!(removed.host.blocks, a.blocks);
    let mut ids = removed.containers.clone();
    ids.sort();
    assert_eq!(ids, ["c1", "c2"]);
    assert!(state::get_host(s, "a").await.unwrap().is_none());
    assert!(state::containers(s).await.unwrap().0.is_empty());
    assert!(s
        .get(&berth_cluster::model::block_key(a.blocks[0]))
        .await
        .unwrap()
        .is_none());
    // The removed host can no longer write, and its block goes to the next host.
    let late = Container {
        id: "c3".into(),
        host: "a".into(),
        addr: in_a(4),
        name: String::new(),
    };
    assert!(matches!(
        state::put_container(s, "a", &late, None).await,
        Err(StateError::UnknownHost(_))
    ));
    let c3 = state::join(s, &info("c", 3)).await.unwrap();
    assert_eq!(c3.blocks, a.blocks);
    assert!(matches!(
        state::remove_host(s, "a", true, &none).await,
        Err(StateError::UnknownHost(_))
    ));
    // Forced: an up host goes too.
    assert_eq!(
        state::heartbeat(s, "b", 1).await.unwrap().state,
        HostState::Up
    );
    assert!(state::remove_host(s, "b", false, &none).await.is_err());
    state::remove_host(s, "b", true, &none).await.unwrap();
    assert!(state::get_host(s, "b").await.unwrap().is_none());
    // A record whose host is gone (an interrupted removal) is collected.
    let orphan = Container {
        id: "o1".into(),
        host: "gone".into(),
        addr: in_a(9),
        name: String::new(),
    };
    s.put(
        &berth_cluster::model::container_key("o1"),
        serde_json::to_vec(&orphan).unwrap(),
        berth_cluster::store::Condition::Absent,
    )
    .await
    .unwrap();
    assert_eq!(state::delete_orphans(s, None).await.unwrap(), ["o1"]);
    assert!(state::containers(s).await.unwrap().0.is_empty());
    assert!(state::delete_orphans(s, None).await.unwrap().is_empty());
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let h = super::Harness::embedded().await;
                    super::$name(h.store()).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let h = super::Harness::etcd().await;
                    super::$name(h.store()).await;
                }
            )*
        }
    };
}

on_both_backends!(
    joins_get_distinct_blocks_and_rejoin_keeps_them,
    racing_joins_never_share_a_block,
    heartbeats_and_the_down_sweep,
    containers_only_in_own_blocks_by_own_host,
    removing_a_host_frees_its_blocks_and_containers,
);
