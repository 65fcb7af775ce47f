//! Harnesses for the store conformance suite: an embedded store in a temporary file, or
//! a real etcd (Debian's `etcd-server`) started on loopback with its own ports and data
//! directory and killed by PID when the harness drops.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_cluster::store::{EmbeddedOptions, EmbeddedStore, EtcdStore, Store};
use tempfile::TempDir;

/// How long etcd gets to elect itself and answer.
const ETCD_READY: Duration = Duration::from_secs(20);
/// Attempts at starting etcd, in case another test took a port we picked in between.
const ETCD_ATTEMPTS: usize = 3;

pub struct Harness {
    store: Option<Arc<dyn Store>>,
    backend: Backend,
}

enum Backend {
    Embedded { _dir: TempDir, path: PathBuf },
    Etcd(EtcdServer),
}

impl Harness {
    pub async fn embedded() -> Harness {
        Self::embedded_with(EmbeddedOptions::default()).await
    }

    pub async fn embedded_with(options: EmbeddedOptions) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state").join("store.redb");
        let store = open_embedded(path.clone(), options).await;
        Harness {
            store: Some(store),
            backend: Backend::Embedded { _dir: dir, path },
        }
    }

    pub async fn etcd() -> Harness {
        let server = EtcdServer::start().await;
        let store = server.connect().await;
        Harness {
            store: Some(store),
            backend: Backend::Etcd(server),
        }
    }

    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone().expect("harness has a store")
    }

    /// Closes the store and opens it again: the embedded file is reopened; etcd is
    /// killed (SIGKILL, so only what it synced survives), restarted on the same data
    /// directory and ports, and reconnected. Callers drop their own handles first.
    pub async fn reopen(&mut self) -> Arc<dyn Store> {
        let old = self.store.take().expect("harness has a store");
        assert_eq!(
            Arc::strong_count(&old),
            1,
            "the test still holds store handles; drop them before reopening"
        );
        drop(old);
        let store = match &mut self.backend {
            Backend::Embedded { path, .. } => {
                open_embedded(path.clone(), EmbeddedOptions::default()).await
            }
            Backend::Etcd(server) => {
                server.restart().await;
                server.connect().await
            }
        };
        self.store = Some(store.clone());
        store
    }
}

async fn open_embedded(path: PathBuf, options: EmbeddedOptions) -> Arc<dyn Store> {
    let opened = tokio::task::spawn_blocking(move || EmbeddedStore::open(path, options))
        .await
        .expect("open task");
    Arc::new(opened.expect("open embedded store"))
}

/// etcd's data directory, on tmpfs where there is one: etcd preallocates 64 MiB of
/// write-ahead log per instance and fsyncs every commit, and neither needs to reach a
/// disk for a test (a CI machine's disk may be nearly full).
pub fn etcd_data_dir() -> TempDir {
    let shm = std::path::Path::new("/dev/shm");
    let builder = {
        let mut b = tempfile::Builder::new();
        b.prefix("berth-etcd-");
        b
    };
    if shm.is_dir() {
        if let Ok(dir) = builder.tempdir_in(shm) {
            return dir;
        }
    }
    builder.tempdir().expect("tempdir for etcd")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}

pub struct EtcdServer {
    dir: TempDir,
    child: Option<Child>,
    client_port: u16,
    peer_port: u16,
}

impl EtcdServer {
    pub async fn start() -> EtcdServer {
        let version = Command::new("etcd").arg("--version").output();
        if !matches!(&version, Ok(out) if out.status.success()) {
            panic!(
                "the etcd binary is missing (running `etcd --version`: {version:?}); \
                 the etcd store tests need Debian's etcd-server: apt-get install -y etcd-server"
            );
        }
        let dir = etcd_data_dir();
        let mut server = EtcdServer {
            dir,
            child: None,
            client_port: 0,
            peer_port: 0,
        };
        for _ in 0..ETCD_ATTEMPTS {
            server.client_port = free_port();
            server.peer_port = free_port();
            if server.spawn_and_wait().await {
                return server;
            }
        }
        panic!(
            "etcd did not become ready in {ETCD_ATTEMPTS} attempts; its log:\n{}",
            server.log_tail()
        );
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// The `--store` URL of this etcd.
    pub fn url(&self) -> String {
        format!("etcd://127.0.0.1:{}/berth-test", self.client_port)
    }

    /// The endpoint for a raw etcd client.
    #[allow(dead_code)] // not every suite that shares this module uses it
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub async fn connect(&self) -> Arc<dyn Store> {
        berth_cluster::store::open(&self.url())
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e}\n{}", self.url(), self.log_tail()))
    }

    /// Starts etcd on the chosen ports; false if it exited or never answered in time.
    async fn spawn_and_wait(&mut self) -> bool {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open etcd log");
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new("etcd")
            .arg("--name=test")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            // One member: elect fast.
            .arg("--heartbeat-interval=20")
            .arg("--election-timeout=200")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
        let deadline = Instant::now() + ETCD_READY;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    self.child = None; // exited, e.g. a port was taken meanwhile
                    return false;
                }
            }
            let endpoint = format!("http://127.0.0.1:{}", self.client_port);
            let probe = tokio::time::timeout(
                Duration::from_secs(2),
                EtcdStore::connect(vec![endpoint], "/berth-test"),
            );
            if let Ok(Ok(_)) = probe.await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.kill();
        false
    }

    pub async fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn_and_wait().await,
            "etcd did not come back on its data directory; its log:\n{}",
            self.log_tail()
        );
    }

    /// Kills our etcd by its PID and reaps it.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An HTTPS client of the controller trusting only the cluster CA `ca` (PEM), with a
/// client certificate and key (PEM) or none. (The store suites include this module too,
/// without calling it.)
#[allow(dead_code)]
pub fn tls_client(ca: &str, id: Option<(&str, &str)>) -> reqwest::Client {
    berth_cluster::tls::client(
        ca,
        id.map(|(cert_pem, key_pem)| berth_cluster::tls::ClientIdentity { cert_pem, key_pem }),
        reqwest::Client::builder().timeout(Duration::from_secs(10)),
    )
    .expect("building an HTTPS client")
}
