//! Registry client for the OCI distribution spec (docker registry v2 API), synchronous.
//!
//! - [`Client`]: manifests and blobs of one registry host, with anonymous, basic and bearer
//!   (token server) authentication; bearer tokens are cached per (repository, scope) and the
//!   client is `Clone + Send + Sync` so download threads share one client and its tokens.
//! - [`select_platform`] / [`host_platform`]: pick a manifest out of an image index or a
//!   docker manifest list.
//! - [`load_credentials`] / [`save_credentials`] / [`remove_credentials`]: the credentials
//!   file, in podman's `auth.json` format.
//! - [`fetch_blobs_parallel`]: several blobs at once on `threads` std threads.
//!
//! Transport: plain http for loopback hosts (`localhost`, `127.0.0.0/8`, `::1`) and hosts
//! listed in [`ClientOptions::insecure_hosts`] (as docker treats them), https with
//! certificate verification everywhere else. A registry given as `http://host` or
//! `https://host` forces the scheme.

mod auth;
mod client;
mod creds;
mod platform;

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use thiserror::Error;

use crate::digest::Digest;

pub use client::{Client, Manifest};
pub use creds::{load_credentials, remove_credentials, save_credentials};
pub use platform::{host_platform, select_platform};

/// OCI image manifest.
pub const MEDIA_TYPE_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const MEDIA_TYPE_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest, schema 2.
pub const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list (multi-platform).
pub const MEDIA_TYPE_DOCKER_MANIFEST_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";

/// Whether a manifest media type is an index (OCI image index or docker manifest list).
pub fn is_index_media_type(media_type: &str) -> bool {
    media_type == MEDIA_TYPE_OCI_INDEX || media_type == MEDIA_TYPE_DOCKER_MANIFEST_LIST
}

/// A user name and password (or a registry token used as password).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// How a [`Client`] talks to its registry.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Hosts (`host` or `host:port`) reached over plain http. Loopback hosts always are.
    pub insecure_hosts: Vec<String>,
    /// Sent on `Basic` challenges, and to the token server on `Bearer` challenges.
    pub credentials: Option<Credentials>,
    pub user_agent: String,
    /// Limit for connecting, for the response headers and for each read of a body (a
    /// stalled transfer fails after this long; a large blob may take longer in total).
    pub timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            insecure_hosts: Vec::new(),
            credentials: None,
            user_agent: format!("berth/{}", env!("CARGO_PKG_VERSION")),
            timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Error)]
pub enum RegistryError {
    #[error("{}", unauthorized_message(.registry, .repository, .username, .detail))]
    Unauthorized {
        registry: String,
        /// Empty for registry-wide requests (`ping`).
        repository: String,
        /// The user whose credentials were sent and refused; None if sent none.
        username: Option<String>,
        /// What the registry said, if anything.
        detail: String,
    },
    #[error("{what} not found{}", with_detail(.detail))]
    NotFound {
        /// The manifest or blob with its location: `manifest localhost:5000/app:v1`.
        what: String,
        detail: String,
    },
    #[error("registry {registry} is unreachable: {source}")]
    Unreachable {
        registry: String,
        #[source]
        source: io::Error,
    },
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{what}: size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error("{what}: registry answered http {status}{}", with_detail(.detail))]
    Http {
        what: String,
        status: u16,
        detail: String,
    },
    /// The registry (or token server) said something we cannot use.
    #[error("{what}: {reason}")]
    Protocol { what: String, reason: String },
    /// Writing what was downloaded failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("no image for platform {wanted} in the index; available: {}", list_or_none(.available))]
    NoMatchingPlatform {
        wanted: String,
        available: Vec<String>,
    },
    #[error("parsing image index: {reason}")]
    BadIndex { reason: String },
    #[error("credentials file {}: {reason}", .path.display())]
    Credentials { path: PathBuf, reason: String },
    /// A caller passed something unusable (bad repository name, inconsistent offset).
    #[error("{0}")]
    Invalid(String),
}

fn unauthorized_message(
    registry: &str,
    repository: &str,
    username: &Option<String>,
    detail: &str,
) -> String {
    let place = if repository.is_empty() {
        format!("registry {registry}")
    } else {
        format!("{registry}/{repository}")
    };
    let refused = match username {
        Some(u) => format!("the credentials of user {u:?} were refused; "),
        None => String::new(),
    };
    format!(
        "{place}: authentication required: {refused}run berth login {registry}{}",
        with_detail(detail)
    )
}

fn with_detail(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(" ({detail})")
    }
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "none".to_string()
    } else {
        v.join(", ")
    }
}

/// Where a sink for one blob comes from, in [`fetch_blobs_parallel`].
pub type OpenSink<'a> = dyn Fn(&Digest) -> Result<Box<dyn Write + Send>, RegistryError> + Sync + 'a;

/// Downloads `blobs` (digest, size) of `repository` on up to `threads` threads, each into
/// the sink `open_sink` gives for it, verified like [`Client::fetch_blob`]. `progress` gets
/// (digest, bytes so far). A digest listed twice is downloaded once. On the first error no
/// new download starts, those running are cut short (their sinks fail), and that first error
/// is returned; sinks of failed downloads hold partial data for the caller to discard.
/// Downloads start from zero: resuming partial files is the caller's business (one
/// [`Client::fetch_blob`] per blob).
pub fn fetch_blobs_parallel(
    client: &Client,
    repository: &str,
    blobs: &[(Digest, u64)],
    threads: usize,
    open_sink: &OpenSink<'_>,
    progress: &(dyn Fn(&Digest, u64) + Sync),
) -> Result<(), RegistryError> {
    let mut unique: Vec<&(Digest, u64)> = Vec::with_capacity(blobs.len());
    for b in blobs {
        if !unique.iter().any(|u| u.0 == b.0) {
            unique.push(b);
        }
    }
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let first_err: Mutex<Option<RegistryError>> = Mutex::new(None);
    let workers = threads.max(1).min(unique.len());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some((digest, size)) = unique.get(i).copied() else {
                    break;
                };
                let result = open_sink(digest).and_then(|sink| {
                    let mut sink = StopWriter {
                        inner: sink,
                        stop: &stop,
                    };
                    let mut report = |n: u64| progress(digest, n);
                    client.fetch_blob(
                        repository,
                        digest,
                        Some(*size),
                        0,
                        crate::digest::Hasher::new(),
                        &mut sink,
                        &mut report,
                    )
                });
                if let Err(e) = result {
                    // The first error wins; errors of downloads cut short by it are dropped.
                    if let Ok(mut slot) = first_err.lock() {
                        if slot.is_none() {
                            *slot = Some(e);
                        }
                    }
                    stop.store(true, Ordering::SeqCst);
                    break;
                }
            });
        }
    });
    match first_err.into_inner() {
        Ok(Some(e)) => Err(e),
        Ok(None) => Ok(()),
        Err(poisoned) => match poisoned.into_inner() {
            Some(e) => Err(e),
            None => Err(RegistryError::Invalid(
                "a download thread panicked".to_string(),
            )),
        },
    }
}

/// A sink that fails once another download has failed, to end this one early.
struct StopWriter<'a> {
    inner: Box<dyn Write + Send>,
    stop: &'a AtomicBool,
}

impl Write for StopWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.stop.load(Ordering::SeqCst) {
            // Not ErrorKind::Interrupted: write_all would retry that forever.
            return Err(io::Error::other("cancelled: another download failed"));
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
