//! Running the controller: the API over TLS on a listener, and the sweep that marks hosts down
//! when their heartbeats stop (a third of the timeout apart, so a host is down at most
//! 4/3 of the timeout after its last heartbeat). The sweep runs only while this
//! controller leads (see [`super::leader`]), its writes fenced by the leadership.

use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use super::api::{self, Api};
use super::leader::{self, Candidate, LeaderConfig};
use super::map_revision::{self, MapRevision};
use super::pki;
use super::state::{self, StateError};
use crate::store::Store;

#[derive(Debug, Error)]
pub enum ServeError {
    #[error("serving the controller API on {addr}: {source}")]
    Serve {
        addr: String,
        source: std::io::Error,
    },
}

/// The client certificate a connection presented (its fingerprint), if any: what
/// handlers map to an identity.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    pub cert_fingerprint: Option<String>,
}

/// A TLS handshake that takes longer than this is dropped (a stalled or hostile client
/// must not hold a task forever).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the leader looks for container records of removed hosts.
const ORPHAN_PERIOD: Duration = Duration::from_secs(60);

/// Serves HTTPS until the listener fails; the sweep runs alongside, while this
/// controller leads.
/// `seal` opens the CA's key, for joins and renewals (None: this controller can't issue
/// certificates, and says so to whoever asks).
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Arc<dyn Store>,
    tls: Arc<rustls::ServerConfig>,
    leader: LeaderConfig,
    seal: Option<Arc<super::seal::Seal>>,
) -> Result<(), ServeError> {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let _sweeper = AbortOnDrop(tokio::spawn(sweep_loop(
        store.clone(),
        leader.candidate(&addr),
        leader.lease,
    )));
    let map_revision = MapRevision::new();
    let _map_follower = AbortOnDrop(tokio::spawn(map_revision::follow(
        store.clone(),
        map_revision.clone(),
    )));
    let app = api::router(Api {
        store,
        map_revision,
        seal,
    });
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            // Out of fds and the like: the next accept may succeed.
            Err(e) if is_transient(&e) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(source) => return Err(ServeError::Serve { addr, source }),
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            else {
                return;
            };
            let peer = Peer {
                cert_fingerprint: tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| pki::fingerprint(c)),
            };
            let svc =
                hyper_util::service::TowerToHyperService::new(app.layer(axum::Extension(peer)));
            // A connection's error (client gone) concerns that connection only.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                .await;
        });
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::ECONNABORTED)
    )
}

/// Stops the sweep also when `serve`'s future is dropped (an aborted task), which must
/// end the leadership it holds.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Campaigns, sweeps while leading, and campaigns again once the leadership is lost.
async fn sweep_loop(store: Arc<dyn Store>, me: Candidate, lease: Duration) {
    loop {
        let mut leadership = leader::lead(store.as_ref(), &me, lease).await;
        eprintln!(
            "berth controller {}: leading (fence {} at revision {})",
            me.name,
            leadership.fence().key,
            leadership.fence().revision
        );
        // Container records of removed hosts, left by a removal that was interrupted:
        // looked for now and then, not every sweep (it lists every container).
        let mut orphans_checked = std::time::Instant::now() - ORPHAN_PERIOD;
        let why = loop {
            let period = match state::get_cluster(store.as_ref()).await {
                Ok(c) => Duration::from_millis((c.heartbeat_timeout_ms / 3).max(100)),
                Err(_) => Duration::from_secs(1),
            };
            tokio::select! {
                why = leadership.lost() => break why,
                () = tokio::time::sleep(period) => {}
            }
            let fence = leadership.fence().clone();
            match state::sweep_fenced(store.as_ref(), state::now_ms(), Some(&fence)).await {
                Ok(downed) => {
                    for host in downed {
                        eprintln!("berth controller {}: marked host {host} down", me.name);
                    }
                }
                Err(e @ StateError::Deposed(_)) => break e.to_string(),
                // A failed sweep (store unreachable) is retried next period.
                Err(_) => {}
            }
            if orphans_checked.elapsed() >= ORPHAN_PERIOD {
                orphans_checked = std::time::Instant::now();
                match state::delete_orphans(store.as_ref(), Some(&fence)).await {
                    Ok(ids) if !ids.is_empty() => eprintln!(
                        "berth controller {}: removed {} container records of removed hosts",
                        me.name,
                        ids.len()
                    ),
                    Ok(_) => {}
                    Err(e @ StateError::Deposed(_)) => break e.to_string(),
                    Err(_) => {}
                }
            }
        };
        eprintln!("berth controller {}: lost leadership: {why}", me.name);
    }
}
