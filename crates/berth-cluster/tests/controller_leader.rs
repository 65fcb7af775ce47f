//! Several controllers on one etcd: exactly one leads and sweeps, a stopped leader (task
//! aborted, process killed) is replaced within about the lease TTL and its successor
//! marks a silent host down, and a deposed leader's sweep is refused by the fence. The
//! embedded store: the one controller leads, and a second serve on the same file is
//! refused. etcd is Debian's etcd-server on loopback, started and killed by PID by the
//! harness.

#[allow(dead_code)] // shared with the store suites, which use all of it
mod store_support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_cluster::controller::leader::{self, LeaderConfig};
use berth_cluster::controller::seal::Seal;
use berth_cluster::controller::{api, auth, pki, serve, state};
use berth_cluster::model::{Cluster, HostState};
use berth_cluster::store::{election_prefix, Store};
use serde_json::{json, Value};
use store_support::EtcdServer;

const BIN: &str = env!("CARGO_BIN_EXE_berth-cluster");
const LEASE: Duration = Duration::from_secs(1);
const HEARTBEAT_TIMEOUT_MS: u64 = 1500;
/// Slack on every bound: a loaded 2-core machine, etcd fsyncs.
const SLACK: Duration = Duration::from_secs(4);

fn cluster() -> Cluster {
    Cluster {
        cidr: "10.244.0.0/16".parse().unwrap(),
        block_prefix: 24,
        vni: 1,
        vxlan_port: 4789,
        heartbeat_timeout_ms: HEARTBEAT_TIMEOUT_MS,
    }
}

fn join_info(name: &str, last: u8) -> state::JoinInfo {
    state::JoinInfo {
        name: name.into(),
        underlay_ip: std::net::Ipv4Addr::new(192, 0, 2, last),
        vtep_mac: format!("0a:58:c0:00:02:{last:02x}"),
    }
}

/// Polls `f` every 50 ms until it returns Some, failing after `within`.
async fn until<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn host_state(store: &dyn Store, name: &str) -> HostState {
    state::get_host(store, name).await.unwrap().unwrap().0.state
}

use store_support::tls_client as http;

/// The admin's client from what `controller init` wrote into `dir`.
fn admin_of(dir: &Path) -> reqwest::Client {
    let f = |n: &str| std::fs::read_to_string(dir.join(n)).unwrap();
    http(&f("ca.crt"), Some((&f("admin.crt"), &f("admin.key"))))
}

async fn status(base: &str, admin: &reqwest::Client) -> Option<Value> {
    let r = admin.get(format!("{base}/v1/status")).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

/// A controller served by `serve::serve` in a task of this process.
struct TaskCtl {
    name: String,
    base: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TaskCtl {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn task_ctl(etcd: &EtcdServer, name: &str) -> TaskCtl {
    let store = etcd.connect().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("https://{}", listener.local_addr().unwrap());
    let mut config = LeaderConfig::new(name);
    config.lease = LEASE;
    let ca = api::ca(store.as_ref(), Some(&seal())).await.ok().unwrap();
    let cert = pki::issue(&ca, name, pki::Role::Server(&["127.0.0.1".into()])).unwrap();
    let tls =
        berth_cluster::tls::server_config(&ca.cert_pem, &cert.cert_pem, &cert.key_pem).unwrap();
    let task = tokio::spawn(async move {
        let _ = serve::serve(listener, store, tls, config, Some(seal())).await;
    });
    TaskCtl {
        name: name.into(),
        base,
        task,
    }
}

/// The seal every controller of these tests shares, as controllers copy ca.seal.
fn seal() -> Arc<Seal> {
    static SEAL: std::sync::OnceLock<Arc<Seal>> = std::sync::OnceLock::new();
    SEAL.get_or_init(|| Arc::new(Seal::generate().unwrap()))
        .clone()
}

/// Initializes the cluster; the admin's client.
async fn init_with_tokens(store: &dyn Store) -> reqwest::Client {
    state::init(store, &cluster()).await.unwrap();
    let join = auth::random_token().unwrap();
    assert!(api::init_secrets(store, &join, &seal()).await.ok().unwrap());
    let ca = api::ca(store, Some(&seal())).await.ok().unwrap();
    let admin = api::issue_admin(store, Some(&seal())).await.ok().unwrap();
    http(&ca.cert_pem, Some((&admin.cert_pem, &admin.key_pem)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_one_of_two_controllers_leads_and_the_other_takes_over() {
    let etcd = EtcdServer::start().await;
    let store = etcd.connect().await;
    let admin = init_with_tokens(store.as_ref()).await;
    let mut ctls = vec![
        task_ctl(&etcd, "ctl-a").await,
        task_ctl(&etcd, "ctl-b").await,
    ];

    // Both campaign; one leads, and both controllers' status say which.
    until(SLACK, "both controllers campaigning", || async {
        let r = store.range(&election_prefix(leader::ELECTION)).await.ok()?;
        (r.kvs.len() == 2).then_some(())
    })
    .await;
    let first = until(SLACK, "a leader", || async {
        leader::current(store.as_ref()).await.unwrap()
    })
    .await;
    for c in &ctls {
        let st = until(SLACK, "status", || status(&c.base, &admin)).await;
        assert_eq!(st["leader"]["name"], first.name, "{} says {st}", c.name);
        let want = ctls.iter().find(|c| c.name == first.name).unwrap();
        assert_eq!(
            format!("https://{}", st["leader"]["address"].as_str().unwrap()),
            want.base
        );
    }

    // A host that never heartbeats; the leader stops before its timeout runs out.
    state::join(store.as_ref(), &join_info("silent", 1))
        .await
        .unwrap();
    let i = ctls.iter().position(|c| c.name == first.name).unwrap();
    let stopped = ctls.remove(i);
    let t0 = Instant::now();
    drop(stopped); // aborts its task: no resign, the lease has to run out
    let survivor = &ctls[0];
    let second = until(LEASE + SLACK, "the other controller to lead", || async {
        leader::current(store.as_ref())
            .await
            .unwrap()
            .filter(|l| l.name == survivor.name)
    })
    .await;
    let took_over = t0.elapsed();
    assert!(second.since_revision > first.since_revision);
    let down_within = Duration::from_millis(HEARTBEAT_TIMEOUT_MS * 4 / 3) + LEASE + SLACK;
    until(
        down_within,
        "the survivor to mark the silent host down",
        || async { (host_state(store.as_ref(), "silent").await == HostState::Down).then_some(()) },
    )
    .await;
    let st = status(&survivor.base, &admin).await.unwrap();
    assert_eq!(st["leader"]["name"], survivor.name.as_str(), "{st}");
    eprintln!("takeover after {took_over:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_a_deposed_leaders_sweep_is_fenced_off() {
    let etcd = EtcdServer::start().await;
    let a: Arc<dyn Store> = etcd.connect().await;
    let b: Arc<dyn Store> = etcd.connect().await;
    state::init(a.as_ref(), &cluster()).await.unwrap();
    let mut led = a
        .campaign(leader::ELECTION, b"a".to_vec(), LEASE)
        .await
        .unwrap();
    let stale = led.fence().clone();
    assert!(led.is_held());
    let b_campaign = {
        let b = b.clone();
        tokio::spawn(async move { b.campaign(leader::ELECTION, b"b".to_vec(), LEASE).await })
    };
    // A's lease ends behind its back, as when it expires during a pause or partition.
    let lease = i64::from_str_radix(stale.key.rsplit('/').next().unwrap(), 16).unwrap();
    let mut raw = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    raw.lease_revoke(lease).await.unwrap();
    let b_led = tokio::time::timeout(SLACK, b_campaign)
        .await
        .expect("b elected once a's key is gone")
        .unwrap()
        .unwrap();
    assert_eq!(
        b.leader(leader::ELECTION).await.unwrap().unwrap().value,
        b"b"
    );

    // A silent host: a's sweep, still believing, changes nothing; b's marks it down.
    state::join(a.as_ref(), &join_info("silent", 1))
        .await
        .unwrap();
    let later = state::now_ms() + HEARTBEAT_TIMEOUT_MS + 1;
    let before = a.revision().await.unwrap();
    let e = state::sweep_fenced(a.as_ref(), later, Some(&stale))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, state::StateError::Deposed(f) if *f == stale),
        "{e}"
    );
    assert!(e.to_string().contains("no longer the leader"), "{e}");
    assert_eq!(a.revision().await.unwrap(), before, "nothing written");
    assert_eq!(host_state(a.as_ref(), "silent").await, HostState::Up);
    let downed = state::sweep_fenced(b.as_ref(), later, Some(b_led.fence()))
        .await
        .unwrap();
    assert_eq!(downed, vec!["silent".to_string()]);

    // A learns it lost: its key is gone.
    let why = tokio::time::timeout(SLACK, led.lost())
        .await
        .expect("a notices the loss");
    assert!(!led.is_held());
    assert!(
        why.contains("deleted") || why.contains("expired"),
        "a lost because: {why}"
    );
    // Resigning hands over at once: a fresh candidate leads without waiting for a TTL.
    let c_campaign = {
        let a = a.clone();
        tokio::spawn(async move { a.campaign(leader::ELECTION, b"c".to_vec(), LEASE).await })
    };
    b_led.resign().await;
    let c_led = tokio::time::timeout(SLACK, c_campaign)
        .await
        .expect("c elected after b resigned")
        .unwrap()
        .unwrap();
    assert!(c_led.is_held());
}

/// A `berth-cluster` process, killed by its PID on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn serve_proc(dir: &Path, store: Option<&str>, name: &str, log: &Path) -> (Proc, String) {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut args = vec![
        "controller".to_string(),
        "serve".into(),
        "--dir".into(),
        dir.display().to_string(),
        "--listen".into(),
        listen.clone(),
        "--name".into(),
        name.into(),
        "--leader-lease-ms".into(),
        LEASE.as_millis().to_string(),
    ];
    if let Some(s) = store {
        args.extend(["--store".to_string(), s.to_string()]);
    }
    let log = std::fs::File::create(log).unwrap();
    let child = Command::new(BIN)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    (Proc(child), format!("https://{listen}"))
}

fn init_proc(dir: &Path, store: Option<&str>) {
    let mut c = Command::new(BIN);
    c.args(["controller", "init", "--dir"])
        .arg(dir)
        .args(["--heartbeat-timeout-ms", &HEARTBEAT_TIMEOUT_MS.to_string()]);
    if let Some(s) = store {
        c.args(["--store", s]);
    }
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

async fn join_http(dir: &Path, base: &str, token: &str, name: &str, last: u8) {
    let ca = std::fs::read_to_string(dir.join("ca.crt")).unwrap();
    let (_, csr) = pki::new_csr(name).unwrap();
    let r = http(&ca, None)
        .post(format!("{base}/v1/join"))
        .bearer_auth(token.trim())
        .json(&json!({
            "name": name,
            "underlay_ip": format!("192.0.2.{last}"),
            "vtep_mac": format!("0a:58:c0:00:02:{last:02x}"),
            "csr": csr,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{:?}", r.text().await);
}

async fn host_down_in(base: &str, admin: &reqwest::Client, host: &str) -> Option<()> {
    let st = status(base, admin).await?;
    let down = st["hosts"]
        .as_array()?
        .iter()
        .any(|h| h["name"] == host && h["state"] == "down");
    down.then_some(())
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_controller_processes_only_the_leader_sweeps_and_a_killed_one_is_replaced() {
    let etcd = EtcdServer::start().await;
    let url = etcd.url();
    let dir = tempfile::tempdir().unwrap();
    init_proc(dir.path(), Some(&url));
    let admin = admin_of(dir.path());
    let join = std::fs::read_to_string(dir.path().join("join.token")).unwrap();
    let logs = [dir.path().join("a.log"), dir.path().join("b.log")];
    let (pa, base_a) = serve_proc(dir.path(), Some(&url), "ctl-a", &logs[0]);
    let (pb, base_b) = serve_proc(dir.path(), Some(&url), "ctl-b", &logs[1]);
    let mut procs = [Some(pa), Some(pb)];
    let bases = [base_a, base_b];
    let names = ["ctl-a", "ctl-b"];

    let leading = until(
        SLACK * 2,
        "a leader in both controllers' status",
        || async {
            let a = status(&bases[0], &admin).await?;
            let b = status(&bases[1], &admin).await?;
            let name = a["leader"]["name"].as_str()?.to_string();
            (b["leader"]["name"] == name.as_str()).then_some(name)
        },
    )
    .await;
    let l = names.iter().position(|n| *n == leading).unwrap();
    let f = 1 - l;

    // Joined through the follower (every controller serves the API); swept by the leader.
    join_http(dir.path(), &bases[f], &join, "silent-1", 1).await;
    let down_within = Duration::from_millis(HEARTBEAT_TIMEOUT_MS * 4 / 3) + SLACK;
    until(down_within, "silent-1 down", || {
        host_down_in(&bases[f], &admin, "silent-1")
    })
    .await;
    assert!(
        read(&logs[l]).contains("marked host silent-1 down"),
        "leader's log:\n{}",
        read(&logs[l])
    );
    assert!(
        !read(&logs[f]).contains("marked host"),
        "the follower swept:\n{}",
        read(&logs[f])
    );
    assert!(!read(&logs[f]).contains("leading"), "{}", read(&logs[f]));

    // Kill the leader by PID (SIGKILL: no resign); the follower takes over and sweeps.
    join_http(dir.path(), &bases[f], &join, "silent-2", 2).await;
    let t0 = Instant::now();
    drop(procs[l].take());
    until(LEASE + SLACK, "the follower to lead", || async {
        let st = status(&bases[f], &admin).await?;
        (st["leader"]["name"] == names[f]).then_some(())
    })
    .await;
    eprintln!("takeover after {:?}", t0.elapsed());
    until(down_within + LEASE, "silent-2 down", || {
        host_down_in(&bases[f], &admin, "silent-2")
    })
    .await;
    assert!(
        read(&logs[f]).contains("marked host silent-2 down"),
        "{}",
        read(&logs[f])
    );
    // `berth cluster status` names the leader.
    let o = Command::new(BIN)
        .args(["cluster", "status", "--controller", &bases[f], "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let want = format!(
        "leader {} ({})",
        names[f],
        bases[f].trim_start_matches("https://")
    );
    assert!(out.contains(&want), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_the_one_controller_leads_and_a_second_serve_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    init_proc(dir.path(), None);
    let admin = admin_of(dir.path());
    let log1 = dir.path().join("one.log");
    let (_one, base) = serve_proc(dir.path(), None, "ctl-one", &log1);
    let st = until(SLACK * 2, "the controller's status", || {
        status(&base, &admin)
    })
    .await;
    assert_eq!(st["leader"]["name"], "ctl-one", "{st}");
    assert_eq!(
        format!("https://{}", st["leader"]["address"].as_str().unwrap()),
        base
    );

    let log2 = dir.path().join("two.log");
    let (mut two, _) = serve_proc(dir.path(), None, "ctl-two", &log2);
    let code = until(SLACK * 2, "the second serve to exit", || {
        let exited = two.0.try_wait().unwrap();
        async move { exited }
    })
    .await;
    assert_eq!(code.code(), Some(125));
    let err = read(&log2);
    let file = dir.path().join("state.redb");
    assert!(
        err.contains(&format!("{}: the store file is in use", file.display())),
        "{err}"
    );
    assert!(
        err.contains("one controller serves one store file"),
        "{err}"
    );
    // The first one is unaffected.
    assert!(status(&base, &admin).await.is_some());
}
