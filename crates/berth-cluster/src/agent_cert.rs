//! Certificate rotation: the agent's client certificate is valid for a year
//! (pki::LEAF_VALIDITY); an agent that runs that long must not find itself locked out.
//! Every `--cert-renew-hours` (30 days by default) it makes a new key, sends a CSR to
//! `POST /v1/hosts/{name}/certificate` with its current certificate, and swaps the HTTPS
//! client for one with the new certificate. The controller revokes the old one in the same
//! transaction that records the new one. A failed renewal is retried every minute (up to
//! the period); the current certificate keeps working meanwhile.

use std::time::Duration;

use crate::agent::{AgentConfig, Client};
use crate::controller::pki;

/// Retry delay after a failed renewal.
const RETRY: Duration = Duration::from_secs(60);

pub(crate) async fn renew_loop(client: &Client, cfg: &AgentConfig) {
    let mut wait = cfg.cert_renew_every;
    loop {
        tokio::time::sleep(wait).await;
        wait = match renew(client, cfg).await {
            Ok(()) => {
                eprintln!("berth agent: host {} renewed its certificate", cfg.name);
                cfg.cert_renew_every
            }
            Err(e) => {
                eprintln!("berth agent: renewing the certificate: {e}; retrying");
                RETRY.min(cfg.cert_renew_every)
            }
        };
    }
}

async fn renew(client: &Client, cfg: &AgentConfig) -> crate::agent::Result<()> {
    let (key_pem, csr) = pki::new_csr(&format!("host:{}", cfg.name))?;
    let v: serde_json::Value = client
        .call(
            reqwest::Method::POST,
            &format!("/v1/hosts/{}/certificate", cfg.name),
            None,
            Some(serde_json::json!({ "csr": csr })),
        )
        .await?;
    let cert_pem = v["certificate"].as_str().unwrap_or_default();
    let http = crate::agent::https(
        cfg,
        Some(crate::tls::ClientIdentity {
            cert_pem,
            key_pem: &key_pem,
        }),
    )?;
    client.replace(http);
    Ok(())
}
