//! Running the controller: the API on a listener, and the sweep that marks hosts down
//! when their heartbeats stop (a third of the timeout apart, so a host is down at most
//! 4/3 of the timeout after its last heartbeat).

use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use super::api::{self, Api};
use super::state;
use crate::store::Store;

#[derive(Debug, Error)]
pub enum ServeError {
    #[error("serving the controller API on {addr}: {source}")]
    Serve {
        addr: String,
        source: std::io::Error,
    },
}

/// Serves until the listener fails; the sweep runs alongside.
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Arc<dyn Store>,
) -> Result<(), ServeError> {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let sweeper = tokio::spawn(sweep_loop(store.clone()));
    let r = axum::serve(listener, api::router(Api { store })).await;
    sweeper.abort();
    r.map_err(|source| ServeError::Serve { addr, source })
}

async fn sweep_loop(store: Arc<dyn Store>) {
    loop {
        let period = match state::get_cluster(store.as_ref()).await {
            Ok(c) => Duration::from_millis((c.heartbeat_timeout_ms / 3).max(100)),
            Err(_) => Duration::from_secs(1),
        };
        tokio::time::sleep(period).await;
        // A failed sweep (store unreachable) is retried next period.
        let _ = state::sweep(store.as_ref(), state::now_ms()).await;
    }
}
