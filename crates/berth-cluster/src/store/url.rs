//! `--store` URLs: which backend, and where.
//!
//! - `file:///var/lib/berth/state.redb`, or just a path: the embedded store;
//! - `etcd://host:port,host:port[/prefix]`: etcd, keys under `prefix` (default
//!   `/berth`); a missing port means etcd's 2379. IPv6 hosts go in brackets.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use super::{EmbeddedError, EmbeddedOptions, EmbeddedStore, EtcdStore, Result, Store};

pub const DEFAULT_ETCD_PREFIX: &str = "/berth";
const DEFAULT_ETCD_PORT: u16 = 2379;
const SHAPES: &str = "use file:///path/state.redb, a plain path, or etcd://host:port[,host:port]";

#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("store: parsing store url {url:?}: {reason}")]
    Invalid { url: String, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    File(PathBuf),
    Etcd {
        /// `http://host:port`, as the etcd client takes them.
        endpoints: Vec<String>,
        /// Prepended to every key; no trailing `/`.
        prefix: String,
    },
}

impl FromStr for StoreUrl {
    type Err = UrlError;

    fn from_str(url: &str) -> std::result::Result<Self, UrlError> {
        parse(url.trim()).map_err(|reason| UrlError::Invalid {
            url: url.to_string(),
            reason,
        })
    }
}

fn parse(url: &str) -> std::result::Result<StoreUrl, String> {
    if url.is_empty() {
        return Err(format!("it is empty; {SHAPES}"));
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Ok(StoreUrl::File(PathBuf::from(url)));
    };
    match scheme {
        "file" => {
            let path = rest.strip_prefix("localhost").unwrap_or(rest);
            if !path.starts_with('/') || path.len() < 2 {
                return Err(
                    "a file url takes an absolute file path, as in file:///var/lib/berth/state.redb"
                        .into(),
                );
            }
            Ok(StoreUrl::File(PathBuf::from(path)))
        }
        "etcd" => parse_etcd(rest),
        "etcds" | "https" => Err("etcd over TLS is not supported yet".into()),
        other => Err(format!("unknown scheme {other:?}; {SHAPES}")),
    }
}

fn parse_etcd(rest: &str) -> std::result::Result<StoreUrl, String> {
    if rest.contains('?') || rest.contains('#') {
        return Err("etcd urls take no query or fragment".into());
    }
    let (hosts, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    let prefix = if path.is_empty() {
        DEFAULT_ETCD_PREFIX.to_string()
    } else {
        path.trim_end_matches('/').to_string()
    };
    if prefix.contains('\0') {
        return Err("the key prefix contains a NUL byte".into());
    }
    let mut endpoints = Vec::new();
    for endpoint in hosts.split(',') {
        endpoints.push(parse_endpoint(endpoint.trim())?);
    }
    Ok(StoreUrl::Etcd { endpoints, prefix })
}

/// `host`, `host:port`, `[v6]` or `[v6]:port` → `http://host:port`.
fn parse_endpoint(endpoint: &str) -> std::result::Result<String, String> {
    if endpoint.is_empty() {
        return Err("an endpoint is empty; write etcd://host:port[,host:port]".into());
    }
    let (host, port) = if let Some(v6) = endpoint.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("endpoint {endpoint:?} opens '[' without closing it"))?;
        match after {
            "" => (format!("[{host}]"), None),
            _ => match after.strip_prefix(':') {
                Some(port) => (format!("[{host}]"), Some(port)),
                None => return Err(format!("endpoint {endpoint:?} has junk after ']'")),
            },
        }
    } else {
        match endpoint.rsplit_once(':') {
            Some((host, port)) => (host.to_string(), Some(port)),
            None => (endpoint.to_string(), None),
        }
    };
    let host_ok = host.starts_with('[')
        || (!host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_'));
    if !host_ok {
        return Err(format!("endpoint {endpoint:?} has no valid host name"));
    }
    let port = match port {
        None => DEFAULT_ETCD_PORT,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("port {p:?} of endpoint {endpoint:?} is not in 1-65535"))?,
    };
    Ok(format!("http://{host}:{port}"))
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::File(path) => write!(f, "file://{}", path.display()),
            StoreUrl::Etcd { endpoints, prefix } => {
                let hosts: Vec<&str> = endpoints
                    .iter()
                    .map(|e| e.strip_prefix("http://").unwrap_or(e))
                    .collect();
                write!(f, "etcd://{}{prefix}", hosts.join(","))
            }
        }
    }
}

impl StoreUrl {
    /// Opens the backend the URL names: the file store with default options, or a
    /// connection to etcd that has answered once.
    pub async fn open(&self) -> Result<Arc<dyn Store>> {
        match self {
            StoreUrl::File(path) => {
                let path = path.clone();
                let shown = path.clone();
                let opened = tokio::task::spawn_blocking(move || {
                    EmbeddedStore::open(path, EmbeddedOptions::default())
                })
                .await
                .map_err(|join| EmbeddedError::Task {
                    op: "open".into(),
                    path: shown,
                    reason: join.to_string(),
                })??;
                Ok(Arc::new(opened))
            }
            StoreUrl::Etcd { endpoints, prefix } => Ok(Arc::new(
                EtcdStore::connect(endpoints.clone(), prefix).await?,
            )),
        }
    }
}

/// Parses `url` and opens the store it names.
pub async fn open(url: &str) -> Result<Arc<dyn Store>> {
    url.parse::<StoreUrl>()?.open().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn etcd(endpoints: &[&str], prefix: &str) -> StoreUrl {
        StoreUrl::Etcd {
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            prefix: prefix.into(),
        }
    }

    #[test]
    fn files() {
        let want = StoreUrl::File("/var/lib/berth/state.redb".into());
        assert_eq!(
            "file:///var/lib/berth/state.redb"
                .parse::<StoreUrl>()
                .unwrap(),
            want
        );
        assert_eq!(
            "/var/lib/berth/state.redb".parse::<StoreUrl>().unwrap(),
            want
        );
        assert_eq!(
            "state.redb".parse::<StoreUrl>().unwrap(),
            StoreUrl::File("state.redb".into())
        );
    }

    #[test]
    fn etcd_endpoints_and_prefix() {
        assert_eq!(
            "etcd://10.0.0.1:2379,etcd-2".parse::<StoreUrl>().unwrap(),
            etcd(&["http://10.0.0.1:2379", "http://etcd-2:2379"], "/berth")
        );
        assert_eq!(
            "etcd://[::1]:12379/prod/".parse::<StoreUrl>().unwrap(),
            etcd(&["http://[::1]:12379"], "/prod")
        );
        let url = etcd(&["http://a:1", "http://b:2"], "/x");
        assert_eq!(url.to_string().parse::<StoreUrl>().unwrap(), url);
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        let cases = [
            ("", "it is empty"),
            ("file://relative/x", "absolute file path"),
            ("redis://h:1", "unknown scheme \"redis\""),
            ("etcds://h:1", "TLS"),
            ("etcd://", "an endpoint is empty"),
            ("etcd://h:1,,h:2", "an endpoint is empty"),
            (
                "etcd://h:99999",
                "port \"99999\" of endpoint \"h:99999\" is not in 1-65535",
            ),
            ("etcd://h:x", "is not in 1-65535"),
            ("etcd://:2379", "no valid host"),
            ("etcd://[::1", "without closing"),
            ("etcd://h:1?x=y", "no query"),
        ];
        for (url, want) in cases {
            let err = url.parse::<StoreUrl>().unwrap_err().to_string();
            assert!(
                err.contains(want),
                "{url:?}: {err:?} should contain {want:?}"
            );
            assert!(err.starts_with("store: parsing store url"), "{err}");
        }
    }
}
