//! The HTTP side: one registry host, its authentication, manifests and blobs.

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ureq::http::{Response, StatusCode};
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};
use ureq::{Agent, Body};

use super::auth::{self, AuthState, Challenge, TokenResponse};
use super::{ClientOptions, Credentials, RegistryError};
use super::{
    MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST_LIST, MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_MANIFEST,
};
use crate::digest::{Digest, Hasher};

/// Manifests larger than this are refused (containerd's limit too).
const MAX_MANIFEST: u64 = 4 << 20;
/// Error bodies are read up to this much.
const MAX_ERROR_BODY: u64 = 64 << 10;
const MAX_TOKEN_BODY: u64 = 1 << 20;
const MAX_REDIRECTS: usize = 5;
/// Times a blob download cut off mid-body is resumed before giving up.
const BLOB_RETRIES: usize = 3;

/// A manifest or index as served.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The exact bytes served: their sha256 is `digest`.
    pub bytes: Vec<u8>,
    /// From `Content-Type`, or from the document's `mediaType` when the server sent a
    /// generic type.
    pub media_type: String,
    pub digest: Digest,
}

/// A client for one registry. Cheap to clone; clones share connections and tokens.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    /// As given, without scheme: "localhost:5000", "docker.io".
    registry: String,
    /// Where the API lives: "http://localhost:5000", "https://registry-1.docker.io".
    base: String,
    /// Through the environment's proxy, if any.
    agent: Agent,
    /// Never through a proxy: loopback hosts.
    direct: Agent,
    insecure_hosts: Vec<String>,
    credentials: Option<Credentials>,
    timeout: Duration,
    auth: Mutex<AuthState>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("registry", &self.inner.registry)
            .field("base", &self.inner.base)
            .finish_non_exhaustive()
    }
}

/// Extra request headers.
type Headers<'a> = &'a [(&'static str, String)];

impl Client {
    /// A client for `registry` ("host", "host:port", optionally with an `http://` or
    /// `https://` prefix that forces the scheme). No request is made.
    pub fn new(registry: &str, opts: ClientOptions) -> Result<Client, RegistryError> {
        let (forced_scheme, name) = if let Some(r) = registry.strip_prefix("http://") {
            (Some("http"), r)
        } else if let Some(r) = registry.strip_prefix("https://") {
            (Some("https"), r)
        } else {
            (None, registry)
        };
        let name = name.trim_end_matches('/');
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
        {
            return Err(RegistryError::Invalid(format!(
                "invalid registry host {registry:?}"
            )));
        }
        let insecure =
            is_loopback(host_of_authority(name)) || host_listed(name, &opts.insecure_hosts);
        let scheme = forced_scheme.unwrap_or(if insecure { "http" } else { "https" });
        // Docker Hub's API is not at its name.
        let api_host = match name {
            "docker.io" | "index.docker.io" => "registry-1.docker.io",
            other => other,
        };
        let base = format!("{scheme}://{api_host}");
        let tls = tls_config(api_host);
        let build = |proxy: bool| -> Agent {
            let mut cfg = Agent::config_builder()
                .http_status_as_error(false)
                .max_redirects(0)
                .max_redirects_will_error(false)
                .user_agent(opts.user_agent.as_str())
                .timeout_resolve(Some(opts.timeout))
                .timeout_connect(Some(opts.timeout))
                .timeout_send_request(Some(opts.timeout))
                .timeout_recv_response(Some(opts.timeout))
                .timeout_per_read(Some(opts.timeout))
                .tls_config(tls.clone());
            if !proxy {
                cfg = cfg.proxy(None);
            }
            cfg.build().into()
        };
        Ok(Client {
            inner: Arc::new(Inner {
                registry: name.to_string(),
                base,
                agent: build(true),
                direct: build(false),
                insecure_hosts: opts.insecure_hosts.clone(),
                credentials: opts.credentials,
                timeout: opts.timeout,
                auth: Mutex::new(AuthState::default()),
            }),
        })
    }

    /// The registry as named to [`Client::new`], without scheme.
    pub fn registry(&self) -> &str {
        &self.inner.registry
    }

    /// The API base URL: "http://localhost:5000".
    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    /// `GET /v2/` with credentials: what `berth login` checks. Ok when the registry accepts
    /// us (anonymously or with the credentials given).
    pub fn ping(&self) -> Result<(), RegistryError> {
        let url = format!("{}/v2/", self.inner.base);
        let what = format!("registry {}", self.inner.registry);
        let resp = self.get(None, &url, &[], &what)?;
        self.check_status(resp, None, &what).map(|_| ())
    }

    /// The manifest or index `reference` (a tag or a digest) of `repository`, with the
    /// bytes exactly as served. A digest reference is verified against the bytes.
    pub fn get_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Manifest, RegistryError> {
        check_repository(repository)?;
        let pinned =
            if reference.contains(':') {
                Some(reference.parse::<Digest>().map_err(|e| {
                    RegistryError::Invalid(format!("invalid manifest reference: {e}"))
                })?)
            } else {
                check_tag(reference)?;
                None
            };
        let sep = if pinned.is_some() { '@' } else { ':' };
        let what = format!(
            "manifest {}/{repository}{sep}{reference}",
            self.inner.registry
        );
        let url = format!("{}/v2/{repository}/manifests/{reference}", self.inner.base);
        let accept = [
            MEDIA_TYPE_OCI_MANIFEST,
            MEDIA_TYPE_OCI_INDEX,
            MEDIA_TYPE_DOCKER_MANIFEST,
            MEDIA_TYPE_DOCKER_MANIFEST_LIST,
        ]
        .join(", ");
        let resp = self.get(Some(repository), &url, &[("Accept", accept)], &what)?;
        let mut resp = self.check_status(resp, Some(repository), &what)?;
        let content_type = header(&resp, "content-type")
            .map(|v| v.split(';').next().unwrap_or("").trim().to_string())
            .unwrap_or_default();
        let header_digest = header(&resp, "docker-content-digest");
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(MAX_MANIFEST)
            .read_to_vec()
            .map_err(|e| match e {
                ureq::Error::BodyExceedsLimit(_) => RegistryError::Protocol {
                    what: what.clone(),
                    reason: format!("larger than {} bytes", MAX_MANIFEST),
                },
                e => self.transport_error(e, &url),
            })?;
        let digest = Digest::of(&bytes);
        if let Some(expected) = &pinned {
            if *expected != digest {
                return Err(RegistryError::DigestMismatch {
                    what,
                    expected: expected.clone(),
                    actual: digest,
                });
            }
        }
        // A registry's own digest of what it served must agree with ours (only sha256 is
        // checked; other algorithms are ignored).
        if let Some(Ok(served)) = header_digest.as_deref().map(str::parse::<Digest>) {
            if served != digest {
                return Err(RegistryError::DigestMismatch {
                    what: format!("{what} (Docker-Content-Digest header)"),
                    expected: served,
                    actual: digest,
                });
            }
        }
        let media_type = manifest_media_type(&content_type, &bytes).map_err(|reason| {
            RegistryError::Protocol {
                what: what.clone(),
                reason,
            }
        })?;
        Ok(Manifest {
            bytes,
            media_type,
            digest,
        })
    }

    /// Streams blob `digest` of `repository` into `sink`, verifying its sha256 (and `size`
    /// when given) over the whole blob.
    ///
    /// To resume, pass the number of bytes the caller already has as `offset` and a
    /// `prefix_hasher` that has hashed exactly those bytes (`prefix_hasher.len() ==
    /// offset`); only the rest is requested (`Range`) and written to `sink`, and the digest
    /// is checked over prefix + rest. A server that ignores `Range` is handled by skipping
    /// the bytes the caller has. A transfer cut off mid-body is resumed the same way, a few
    /// times. `progress` is called with the bytes of the blob held so far (prefix
    /// included). On a digest mismatch the caller must discard what it wrote.
    #[allow(clippy::too_many_arguments)]
    pub fn fetch_blob(
        &self,
        repository: &str,
        digest: &Digest,
        size: Option<u64>,
        offset: u64,
        prefix_hasher: Hasher,
        sink: &mut dyn Write,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), RegistryError> {
        check_repository(repository)?;
        let what = format!("blob {digest} of {}/{repository}", self.inner.registry);
        if prefix_hasher.len() != offset {
            return Err(RegistryError::Invalid(format!(
                "fetching {what}: resume offset {offset} but the prefix hasher has seen {} bytes",
                prefix_hasher.len()
            )));
        }
        if let Some(size) = size {
            if offset > size {
                return Err(RegistryError::SizeMismatch {
                    what,
                    expected: size,
                    actual: offset,
                });
            }
        }
        let url = format!("{}/v2/{repository}/blobs/{digest}", self.inner.base);
        let mut hasher = prefix_hasher;
        let mut have = offset;
        let mut retries = 0;
        let mut buf = vec![0u8; 64 << 10];
        // Nothing to download when the caller has it all already.
        let mut done = size == Some(have);
        while !done {
            let headers: Vec<(&'static str, String)> = if have > 0 {
                vec![("Range", format!("bytes={have}-"))]
            } else {
                Vec::new()
            };
            let resp = self.get(Some(repository), &url, &headers, &what)?;
            if resp.status().as_u16() == 416 && have > 0 && size.is_none() {
                // The caller may hold the whole blob already; the digest check decides.
                break;
            }
            let resp = self.check_status(resp, Some(repository), &what)?;
            let mut skip = 0u64;
            match resp.status().as_u16() {
                206 => {
                    let range = header(&resp, "content-range").unwrap_or_default();
                    let (start, total) =
                        parse_content_range(&range).ok_or_else(|| RegistryError::Protocol {
                            what: what.clone(),
                            reason: format!("bad Content-Range {range:?}"),
                        })?;
                    if start != have {
                        return Err(RegistryError::Protocol {
                            what,
                            reason: format!("asked for bytes from {have}, got from {start}"),
                        });
                    }
                    if let (Some(total), Some(size)) = (total, size) {
                        if total != size {
                            return Err(RegistryError::SizeMismatch {
                                what,
                                expected: size,
                                actual: total,
                            });
                        }
                    }
                }
                // The whole blob: skip what we have.
                _ => skip = have,
            }
            let mut reader = resp.into_body().into_reader();
            let mut progressed = false;
            let read_result: Result<(), io::Error> = loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) => break Ok(()),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => break Err(e),
                };
                let mut chunk = &buf[..n];
                if skip > 0 {
                    let k = (skip.min(n as u64)) as usize;
                    skip -= k as u64;
                    chunk = &chunk[k..];
                    if chunk.is_empty() {
                        continue;
                    }
                }
                if let Some(size) = size {
                    if have + chunk.len() as u64 > size {
                        return Err(RegistryError::SizeMismatch {
                            what,
                            expected: size,
                            actual: have + chunk.len() as u64,
                        });
                    }
                }
                sink.write_all(chunk).map_err(|e| RegistryError::Io {
                    what: format!("writing {what}"),
                    source: e,
                })?;
                hasher.update(chunk);
                have += chunk.len() as u64;
                progressed = true;
                progress(have);
            };
            match read_result {
                Ok(()) if skip > 0 => {
                    return Err(RegistryError::Protocol {
                        what,
                        reason: format!(
                            "the registry sent {} bytes, fewer than the {have} already held",
                            have - skip
                        ),
                    })
                }
                Ok(()) => done = true,
                Err(e) => {
                    retries += 1;
                    if retries > BLOB_RETRIES || (!progressed && retries > 1) {
                        return Err(RegistryError::Unreachable {
                            registry: host_of_url(&url).to_string(),
                            source: io::Error::new(e.kind(), format!("reading {what}: {e}")),
                        });
                    }
                }
            }
        }
        sink.flush().map_err(|e| RegistryError::Io {
            what: format!("writing {what}"),
            source: e,
        })?;
        if let Some(size) = size {
            if have != size {
                return Err(RegistryError::SizeMismatch {
                    what,
                    expected: size,
                    actual: have,
                });
            }
        }
        let actual = hasher.finish();
        if actual != *digest {
            return Err(RegistryError::DigestMismatch {
                what,
                expected: digest.clone(),
                actual,
            });
        }
        Ok(())
    }

    // ---- requests, authentication, redirects ----

    fn auth_state(&self) -> MutexGuard<'_, AuthState> {
        // The state is a cache: a panic while holding it leaves nothing half-done.
        self.inner
            .auth
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The Authorization header to try first for `repository`.
    fn cached_authorization(&self, repository: Option<&str>) -> Option<String> {
        let state = self.auth_state();
        if let Some(token) = repository.and_then(|r| state.token_for(r)) {
            return Some(format!("Bearer {token}"));
        }
        match (&self.inner.credentials, state.basic) {
            (Some(c), true) => Some(auth::basic_header(c)),
            _ => None,
        }
    }

    /// GET with authentication: one try with what we know, and after a 401 one more with
    /// what the challenge asks for. Redirects are followed. 401/403 after that is
    /// `Unauthorized`; other statuses are left to the caller.
    fn get(
        &self,
        repository: Option<&str>,
        url: &str,
        headers: Headers<'_>,
        what: &str,
    ) -> Result<Response<Body>, RegistryError> {
        let mut authorization = self.cached_authorization(repository);
        let mut answered_challenge = false;
        loop {
            let resp = self.get_following_redirects(url, headers, authorization.clone())?;
            if resp.status() != StatusCode::UNAUTHORIZED || answered_challenge {
                return Ok(resp);
            }
            let challenges: Vec<Challenge> = resp
                .headers()
                .get_all("www-authenticate")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(auth::parse_challenges)
                .collect();
            let bearer = challenges.iter().find(|c| c.scheme == "bearer");
            let basic = challenges.iter().find(|c| c.scheme == "basic");
            authorization = Some(match (bearer, basic) {
                (Some(ch), _) => format!("Bearer {}", self.fetch_token(repository, ch, what)?),
                (None, Some(_)) => {
                    let Some(c) = &self.inner.credentials else {
                        return Err(self.unauthorized(repository, resp));
                    };
                    self.auth_state().basic = true;
                    auth::basic_header(c)
                }
                (None, None) => return Err(self.unauthorized(repository, resp)),
            });
            answered_challenge = true;
        }
    }

    /// Asks the token server of a Bearer challenge for a token, and caches it.
    fn fetch_token(
        &self,
        repository: Option<&str>,
        ch: &Challenge,
        what: &str,
    ) -> Result<String, RegistryError> {
        let realm = ch.param("realm").unwrap_or_default();
        if !(realm.starts_with("https://") || realm.starts_with("http://")) {
            return Err(RegistryError::Protocol {
                what: what.to_string(),
                reason: format!("bearer challenge with an unusable realm {realm:?}"),
            });
        }
        let scope = match (ch.param("scope"), repository) {
            (Some(s), _) if !s.is_empty() => s.to_string(),
            (_, Some(r)) => auth::pull_scope(r),
            (_, None) => String::new(),
        };
        let mut query: Vec<(&str, &str)> = Vec::new();
        if let Some(service) = ch.param("service") {
            query.push(("service", service));
        }
        for s in scope.split(' ').filter(|s| !s.is_empty()) {
            query.push(("scope", s));
        }
        if let Some(c) = &self.inner.credentials {
            query.push(("account", c.username.as_str()));
        }
        let url = append_query(realm, &query);
        // Credentials go to the token server only over https or to a host we reach over
        // plain http anyway.
        let send_credentials =
            realm.starts_with("https://") || self.is_insecure_host(host_of_url(realm));
        let authorization = match &self.inner.credentials {
            Some(c) if send_credentials => Some(auth::basic_header(c)),
            _ => None,
        };
        let token_what = format!("token from {}", strip_query(realm));
        let resp = self.get_following_redirects(&url, &[], authorization)?;
        let status = resp.status().as_u16();
        if status == 401 || status == 403 {
            return Err(self.unauthorized(repository, resp));
        }
        let mut resp = self.check_status(resp, repository, &token_what)?;
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_TOKEN_BODY)
            .read_to_vec()
            .map_err(|e| self.transport_error(e, &url))?;
        let parsed: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| RegistryError::Protocol {
                what: token_what.clone(),
                reason: format!("not a token response: {e}"),
            })?;
        let (token, ttl) = parsed.into_token().ok_or_else(|| RegistryError::Protocol {
            what: token_what.clone(),
            reason: "the answer has no token".to_string(),
        })?;
        if let Some(r) = repository {
            self.auth_state()
                .insert_token(r, &scope, token.clone(), ttl);
        }
        Ok(token)
    }

    /// One GET, following up to [`MAX_REDIRECTS`] redirects. `Authorization` is kept only
    /// while the redirects stay on the same scheme, host and port: registries redirect
    /// blobs to storage services, which must never see registry credentials.
    fn get_following_redirects(
        &self,
        url: &str,
        headers: Headers<'_>,
        mut authorization: Option<String>,
    ) -> Result<Response<Body>, RegistryError> {
        let mut url = url.to_string();
        for _ in 0..=MAX_REDIRECTS {
            let agent = if url_is_loopback(&url) {
                &self.inner.direct
            } else {
                &self.inner.agent
            };
            let mut req = agent.get(url.as_str());
            for (k, v) in headers {
                req = req.header(*k, v.as_str());
            }
            if let Some(a) = &authorization {
                req = req.header("Authorization", a.as_str());
            }
            let resp = req.call().map_err(|e| self.transport_error(e, &url))?;
            if !matches!(resp.status().as_u16(), 301 | 302 | 303 | 307 | 308) {
                return Ok(resp);
            }
            let location = header(&resp, "location").ok_or_else(|| RegistryError::Protocol {
                what: format!("GET {}", strip_query(&url)),
                reason: format!("redirect ({}) without a Location", resp.status().as_u16()),
            })?;
            let next =
                resolve_location(&url, &location).ok_or_else(|| RegistryError::Protocol {
                    what: format!("GET {}", strip_query(&url)),
                    reason: format!("redirect to an unusable location {location:?}"),
                })?;
            if next.starts_with("http://")
                && url.starts_with("https://")
                && !self.is_insecure_host(host_of_url(&next))
            {
                return Err(RegistryError::Protocol {
                    what: format!("GET {}", strip_query(&url)),
                    reason: format!(
                        "refusing a redirect from https to plain http ({})",
                        strip_query(&next)
                    ),
                });
            }
            if origin(&next) != origin(&url) {
                authorization = None;
            }
            url = next;
        }
        Err(RegistryError::Protocol {
            what: format!("GET {}", strip_query(&url)),
            reason: format!("more than {MAX_REDIRECTS} redirects"),
        })
    }

    /// Maps a final status to an error, reading the registry's error body for the message.
    fn check_status(
        &self,
        resp: Response<Body>,
        repository: Option<&str>,
        what: &str,
    ) -> Result<Response<Body>, RegistryError> {
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(resp);
        }
        if status == 401 || status == 403 {
            return Err(self.unauthorized(repository, resp));
        }
        let detail = error_detail(resp);
        if status == 404 {
            return Err(RegistryError::NotFound {
                what: what.to_string(),
                detail,
            });
        }
        Err(RegistryError::Http {
            what: what.to_string(),
            status,
            detail,
        })
    }

    fn unauthorized(&self, repository: Option<&str>, resp: Response<Body>) -> RegistryError {
        let status = resp.status().as_u16();
        let mut detail = error_detail(resp);
        if status == 403 && detail.is_empty() {
            detail = "access denied".to_string();
        }
        RegistryError::Unauthorized {
            registry: self.inner.registry.clone(),
            repository: repository.unwrap_or_default().to_string(),
            username: self.inner.credentials.as_ref().map(|c| c.username.clone()),
            detail,
        }
    }

    fn transport_error(&self, e: ureq::Error, url: &str) -> RegistryError {
        let host = host_of_url(url).to_string();
        let source = match e {
            ureq::Error::Timeout(t) => {
                let after = self.inner.timeout;
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("timed out after {after:?} ({t})"),
                )
            }
            ureq::Error::HostNotFound => {
                io::Error::new(io::ErrorKind::NotFound, "host name not found")
            }
            ureq::Error::Io(e) => match e.kind() {
                // std's texts are capitalized; messages here are lowercase.
                io::ErrorKind::ConnectionRefused => io::Error::new(e.kind(), "connection refused"),
                io::ErrorKind::ConnectionReset => io::Error::new(e.kind(), "connection reset"),
                io::ErrorKind::TimedOut => io::Error::new(e.kind(), "timed out"),
                _ => e,
            },
            e @ (ureq::Error::Tls(_) | ureq::Error::Rustls(_)) => {
                let hint = if url.starts_with("https://") {
                    " (if this registry speaks plain http, list it in the insecure registries)"
                } else {
                    ""
                };
                io::Error::other(format!("tls: {e}{hint}"))
            }
            e => io::Error::other(e.to_string()),
        };
        RegistryError::Unreachable {
            registry: host,
            source,
        }
    }

    fn is_insecure_host(&self, host_port: &str) -> bool {
        is_loopback(host_of_authority(host_port))
            || host_listed(host_port, &self.inner.insecure_hosts)
    }
}

/// TLS roots: the system's bundle (so locally installed CAs work) plus the certificates in
/// `/etc/containers/certs.d/HOST/*.crt` (podman's per-registry CAs); Mozilla's roots when
/// there is no system bundle.
fn tls_config(host: &str) -> TlsConfig {
    let mut certs: Vec<Certificate<'static>> = Vec::new();
    let mut add_pem = |path: &std::path::Path| {
        if let Ok(data) = std::fs::read(path) {
            for item in ureq::tls::parse_pem(&data).flatten() {
                if let PemItem::Certificate(c) = item {
                    certs.push(c);
                }
            }
        }
    };
    for bundle in [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
    ] {
        add_pem(std::path::Path::new(bundle));
    }
    for dir in ["/etc/containers/certs.d", "/etc/docker/certs.d"] {
        let d = std::path::Path::new(dir).join(host);
        if let Ok(entries) = std::fs::read_dir(&d) {
            for e in entries.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "crt") {
                    add_pem(&p);
                }
            }
        }
    }
    // Without a system bundle, ureq's built-in Mozilla roots cannot be combined with
    // extra certificates: a registry-specific CA alone is then trusted for that registry.
    let roots = if certs.is_empty() {
        RootCerts::WebPki
    } else {
        RootCerts::new_with_certs(&certs)
    };
    TlsConfig::builder().root_certs(roots).build()
}

/// Picks the media type: `Content-Type` unless generic, else the document's `mediaType`,
/// else a guess from its shape. Docker schema 1 is refused.
fn manifest_media_type(content_type: &str, bytes: &[u8]) -> Result<String, String> {
    let is_schema1 = |t: &str| t.starts_with("application/vnd.docker.distribution.manifest.v1");
    if is_schema1(content_type) {
        return Err("docker schema 1 manifests are not supported".to_string());
    }
    let generic = matches!(
        content_type,
        "" | "application/json" | "text/plain" | "application/octet-stream"
    );
    if !generic {
        return Ok(content_type.to_string());
    }
    let doc: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("manifest is not json: {e}"))?;
    if let Some(t) = doc.get("mediaType").and_then(|v| v.as_str()) {
        if is_schema1(t) {
            return Err("docker schema 1 manifests are not supported".to_string());
        }
        return Ok(t.to_string());
    }
    if doc.get("schemaVersion").and_then(|v| v.as_u64()) == Some(1) {
        return Err("docker schema 1 manifests are not supported".to_string());
    }
    if doc.get("manifests").is_some() {
        Ok(MEDIA_TYPE_OCI_INDEX.to_string())
    } else if doc.get("layers").is_some() || doc.get("config").is_some() {
        Ok(MEDIA_TYPE_OCI_MANIFEST.to_string())
    } else {
        Err(format!(
            "cannot tell the manifest type (Content-Type {content_type:?}, no mediaType)"
        ))
    }
}

/// The registry's message from an error body: `{"errors":[{"code","message","detail"}]}`,
/// or the start of a text body.
fn error_detail(resp: Response<Body>) -> String {
    let mut body = resp.into_body();
    let Ok(bytes) = body.with_config().limit(MAX_ERROR_BODY).read_to_vec() else {
        return String::new();
    };
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        #[serde(default)]
        errors: Vec<ErrorItem>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorItem {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(parsed) = serde_json::from_slice::<ErrorBody>(&bytes) {
        let parts: Vec<String> = parsed
            .errors
            .iter()
            .map(|e| match (e.code.is_empty(), e.message.is_empty()) {
                (false, false) => format!("{}: {}", e.code, e.message),
                (false, true) => e.code.clone(),
                (true, _) => e.message.clone(),
            })
            .filter(|s| !s.is_empty())
            .collect();
        if !parts.is_empty() {
            return parts.join("; ");
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    let text = text.trim();
    if text.is_empty() || text.starts_with('<') || text.starts_with('{') {
        // Empty, an HTML page, or JSON of another shape: nothing worth quoting.
        return String::new();
    }
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    one_line
}

fn header(resp: &Response<Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// `bytes START-END/TOTAL` (TOTAL may be `*`) → (START, TOTAL).
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    if end < start {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((start, total))
}

/// Repository names as the distribution spec allows them.
fn check_repository(repository: &str) -> Result<(), RegistryError> {
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && c.as_bytes()[0].is_ascii_alphanumeric()
            && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
    };
    if repository.len() > 255 || !repository.split('/').all(component_ok) {
        return Err(RegistryError::Invalid(format!(
            "invalid repository name {repository:?}"
        )));
    }
    Ok(())
}

fn check_tag(tag: &str) -> Result<(), RegistryError> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && !tag.starts_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(RegistryError::Invalid(format!("invalid tag {tag:?}")))
    }
}

/// "host:port" of an absolute URL.
fn host_of_url(url: &str) -> &str {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    // Drop userinfo, if any.
    authority
        .rsplit_once('@')
        .map(|(_, h)| h)
        .unwrap_or(authority)
}

/// The host of "host:port", "[v6]:port", "host".
fn host_of_authority(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    authority.split(':').next().unwrap_or(authority)
}

fn url_is_loopback(url: &str) -> bool {
    is_loopback(host_of_authority(host_of_url(url)))
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .map(|ip| ip.is_loopback())
        .unwrap_or(false)
}

/// Whether "host:port" (or its host alone) is in `list`.
fn host_listed(host_port: &str, list: &[String]) -> bool {
    let host = host_of_authority(host_port);
    list.iter().any(|h| {
        let h = h
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .trim_end_matches('/');
        h.eq_ignore_ascii_case(host_port) || h.eq_ignore_ascii_case(host)
    })
}

/// (scheme, host:port) with default ports made explicit.
fn origin(url: &str) -> (String, String) {
    let scheme = url
        .split_once("://")
        .map(|(s, _)| s)
        .unwrap_or("")
        .to_ascii_lowercase();
    let authority = host_of_url(url).to_ascii_lowercase();
    let has_port = match authority.strip_prefix('[') {
        Some(v6) => v6.contains("]:"),
        None => authority.contains(':'),
    };
    let authority = if has_port {
        authority
    } else {
        let port = if scheme == "https" { 443 } else { 80 };
        format!("{authority}:{port}")
    };
    (scheme, authority)
}

/// A `Location` header resolved against the URL that answered with it.
fn resolve_location(base: &str, location: &str) -> Option<String> {
    let location = location.trim();
    if location.starts_with("http://") || location.starts_with("https://") {
        return Some(location.to_string());
    }
    let (scheme, rest) = base.split_once("://")?;
    if let Some(net) = location.strip_prefix("//") {
        return Some(format!("{scheme}://{net}"));
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    if location.starts_with('/') {
        return Some(format!("{scheme}://{authority}{location}"));
    }
    if location.is_empty() || location.contains("://") {
        return None;
    }
    // Relative path: replace the last segment of the base path.
    let path = strip_query(&rest[authority_end..]);
    let dir = match path.rfind('/') {
        Some(i) => &path[..=i],
        None => "/",
    };
    Some(format!("{scheme}://{authority}{dir}{location}"))
}

fn strip_query(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

/// `url` with `pairs` added to its query, percent-encoded.
fn append_query(url: &str, pairs: &[(&str, &str)]) -> String {
    let mut out = url.to_string();
    let mut sep = if url.contains('?') { '&' } else { '?' };
    for (k, v) in pairs {
        out.push(sep);
        out.push_str(&percent_encode(k));
        out.push('=');
        out.push_str(&percent_encode(v));
        sep = '&';
    }
    out
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_hosts() {
        assert_eq!(host_of_url("https://a.b:5000/v2/x?y"), "a.b:5000");
        assert_eq!(host_of_url("http://u:p@h/x"), "h");
        assert_eq!(host_of_authority("[::1]:5000"), "::1");
        assert_eq!(host_of_authority("localhost:5000"), "localhost");
        assert!(is_loopback("127.0.0.5") && is_loopback("::1") && is_loopback("LOCALHOST"));
        assert!(!is_loopback("10.0.0.1") && !is_loopback("example.com"));
        assert!(url_is_loopback("http://localhost:5000/v2/"));
        assert!(url_is_loopback("http://[::1]:5000/v2/"));
        assert!(url_is_loopback("https://127.0.0.1/v2/"));
        assert!(!url_is_loopback("https://localhost.example.com:443/v2/"));
        assert!(host_listed("reg:5000", &["reg".into()]));
        assert!(host_listed("reg:5000", &["http://reg:5000/".into()]));
        assert!(!host_listed("reg:5000", &["reg:5001".into()]));
        assert_eq!(origin("https://h/x"), origin("https://H:443/y"));
        assert_ne!(origin("http://h/x"), origin("https://h/x"));
        assert_ne!(
            origin("http://127.0.0.1:1/x"),
            origin("http://localhost:1/x")
        );
    }

    #[test]
    fn resolves_locations() {
        let b = "https://r.io/v2/a/blobs/sha256:1?x=1";
        assert_eq!(
            resolve_location(b, "https://s3/x?sig").unwrap(),
            "https://s3/x?sig"
        );
        assert_eq!(resolve_location(b, "//cdn/y").unwrap(), "https://cdn/y");
        assert_eq!(resolve_location(b, "/z").unwrap(), "https://r.io/z");
        assert_eq!(
            resolve_location(b, "q").unwrap(),
            "https://r.io/v2/a/blobs/q"
        );
        assert!(resolve_location(b, "").is_none());
    }

    #[test]
    fn content_range_and_query() {
        assert_eq!(
            parse_content_range("bytes 10-99/100"),
            Some((10, Some(100)))
        );
        assert_eq!(parse_content_range("bytes 10-99/*"), Some((10, None)));
        assert_eq!(parse_content_range("bytes 99-10/100"), None);
        assert_eq!(parse_content_range("items 1-2/3"), None);
        assert_eq!(
            append_query("https://a/token?x=1", &[("scope", "repository:a/b:pull")]),
            "https://a/token?x=1&scope=repository%3Aa%2Fb%3Apull"
        );
    }

    #[test]
    fn names() {
        assert!(check_repository("library/busybox").is_ok());
        assert!(check_repository("a.b/c-d/e_f").is_ok());
        for bad in ["", "A/b", "a//b", "a/../b", "-a", "a?b", "a/b/"] {
            assert!(check_repository(bad).is_err(), "{bad}");
        }
        assert!(check_tag("v1.0_rc-1").is_ok());
        assert!(check_tag("../x").is_err() && check_tag("").is_err() && check_tag("-x").is_err());
    }

    #[test]
    fn media_types() {
        assert_eq!(
            manifest_media_type(MEDIA_TYPE_DOCKER_MANIFEST, b"{}").unwrap(),
            MEDIA_TYPE_DOCKER_MANIFEST
        );
        assert_eq!(
            manifest_media_type("application/json", br#"{"manifests":[]}"#).unwrap(),
            MEDIA_TYPE_OCI_INDEX
        );
        assert_eq!(
            manifest_media_type("", br#"{"mediaType":"x/y","layers":[]}"#).unwrap(),
            "x/y"
        );
        assert!(manifest_media_type("", br#"{"schemaVersion":1}"#).is_err());
        assert!(manifest_media_type(
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            b"{}"
        )
        .is_err());
    }

    #[test]
    fn client_is_shareable() {
        fn check<T: Clone + Send + Sync + 'static>() {}
        check::<Client>();
        check::<Manifest>();
    }

    #[test]
    fn client_schemes() {
        let c = Client::new("localhost:5000", ClientOptions::default()).unwrap();
        assert_eq!(c.base_url(), "http://localhost:5000");
        let c = Client::new("docker.io", ClientOptions::default()).unwrap();
        assert_eq!(c.base_url(), "https://registry-1.docker.io");
        let opts = ClientOptions {
            insecure_hosts: vec!["reg.lan".into()],
            ..ClientOptions::default()
        };
        let c = Client::new("reg.lan:5000", opts).unwrap();
        assert_eq!(c.base_url(), "http://reg.lan:5000");
        let c = Client::new("https://localhost:5000", ClientOptions::default()).unwrap();
        assert_eq!(c.base_url(), "https://localhost:5000");
        assert!(Client::new("a/b", ClientOptions::default()).is_err());
        assert!(Client::new("", ClientOptions::default()).is_err());
    }
}
