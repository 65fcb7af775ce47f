//! Running the controller: the API on a listener, and the sweep that marks hosts down
//! when their heartbeats stop (a third of the timeout apart, so a host is down at most
//! 4/3 of the timeout after its last heartbeat). The sweep runs only while this
//! controller leads (see [`super::leader`]), its writes fenced by the leadership.

use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use super::api::{self, Api};
use super::leader::{self, Candidate, LeaderConfig};
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

/// Serves until the listener fails; the sweep runs alongside, while this controller
/// leads.
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Arc<dyn Store>,
    leader: LeaderConfig,
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
    let r = axum::serve(listener, api::router(Api { store })).await;
    r.map_err(|source| ServeError::Serve { addr, source })
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
        };
        eprintln!("berth controller {}: lost leadership: {why}", me.name);
    }
}
