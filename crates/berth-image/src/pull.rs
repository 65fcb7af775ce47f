//! `berth pull`: registry → store. Manifest (platform chosen from an index), config, then
//! layers downloaded in parallel, each resumed from a partial if a previous pull was cut
//! off, verified, and unpacked as soon as it is complete. Concurrent pulls of one image
//! share the work: each blob is ingested under a per-digest lock, so it is downloaded once.

use std::sync::Mutex;

use oci_spec::image::{ImageManifest, MediaType};
use thiserror::Error;

use crate::digest::Digest;
use crate::reference::Reference;
use crate::registry::{self, Client, RegistryError};
use crate::store::{Image, Store, StoreError};

#[derive(Debug, Error)]
pub enum PullError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("pulling {reference}: manifest {digest}: {reason}")]
    BadManifest {
        reference: String,
        digest: Digest,
        reason: String,
    },
}

/// What a pull reports as it goes (the CLI draws progress bars or prints lines).
pub trait Progress: Sync {
    fn resolved(&self, _reference: &Reference, _manifest: &Digest) {}
    /// A layer's download begins (not called for a layer already in the store).
    fn layer_started(&self, _digest: &Digest, _size: u64) {}
    fn layer_bytes(&self, _digest: &Digest, _done: u64) {}
    fn layer_done(&self, _digest: &Digest, _already_present: bool) {}
}

/// No output.
pub struct Quiet;
impl Progress for Quiet {}

pub struct PullOptions<'a> {
    pub os: &'a str,
    pub arch: &'a str,
    pub variant: Option<&'a str>,
    /// Parallel layer downloads.
    pub threads: usize,
}

impl Default for PullOptions<'_> {
    fn default() -> Self {
        let (os, arch, variant) = registry::host_platform();
        PullOptions {
            os,
            arch,
            variant,
            threads: 4,
        }
    }
}

fn is_index(media_type: &str) -> bool {
    media_type == "application/vnd.oci.image.index.v1+json"
        || media_type == "application/vnd.docker.distribution.manifest.list.v2+json"
}

pub fn pull(
    store: &Store,
    client: &Client,
    reference: &Reference,
    opts: &PullOptions<'_>,
    progress: &dyn Progress,
) -> Result<Image, PullError> {
    // Holds gc off until the image is recorded (its blobs are unreferenced until then).
    let _lease = store.lease()?;
    let repo = &reference.repository;
    let mut m = client.get_manifest(repo, &reference.api_reference())?;
    if is_index(&m.media_type) {
        let desc = registry::select_platform(&m.bytes, opts.os, opts.arch, opts.variant)?;
        let digest: Digest =
            desc.digest()
                .to_string()
                .parse()
                .map_err(|_| PullError::BadManifest {
                    reference: reference.to_string(),
                    digest: m.digest.clone(),
                    reason: format!("index entry has an invalid digest {}", desc.digest()),
                })?;
        m = client.get_manifest(repo, &digest.to_string())?;
    }
    progress.resolved(reference, &m.digest);
    let bad = |reason: String| PullError::BadManifest {
        reference: reference.to_string(),
        digest: m.digest.clone(),
        reason,
    };
    let manifest: ImageManifest =
        serde_json::from_slice(&m.bytes).map_err(|e| bad(format!("not an image manifest: {e}")))?;
    store.put_blob(&mut &m.bytes[..], Some(&m.digest))?;

    let config_digest: Digest = manifest
        .config()
        .digest()
        .to_string()
        .parse()
        .map_err(|_| bad("config has an invalid digest".into()))?;
    fetch(
        store,
        client,
        repo,
        &config_digest,
        manifest.config().size(),
        &|| {},
        &|_| {},
    )?;
    let config: oci_spec::image::ImageConfiguration =
        serde_json::from_slice(&store.read_blob(&config_digest)?).map_err(|e| {
            bad(format!(
                "config {config_digest} is not an image config: {e}"
            ))
        })?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(bad(format!(
            "{} layers but the config lists {} diff ids",
            manifest.layers().len(),
            diff_ids.len()
        )));
    }

    let mut layers = Vec::new();
    for (l, diff) in manifest.layers().iter().zip(diff_ids) {
        let diff_id: Digest = diff
            .parse()
            .map_err(|_| bad(format!("config lists an invalid diff id {diff}")))?;
        let d: Digest = l
            .digest()
            .to_string()
            .parse()
            .map_err(|_| bad(format!("layer {} has an invalid digest", l.digest())))?;
        if matches!(
            l.media_type(),
            MediaType::ImageLayerNonDistributable
                | MediaType::ImageLayerNonDistributableGzip
                | MediaType::ImageLayerNonDistributableZstd
        ) && l.urls().as_ref().is_some_and(|u| !u.is_empty())
        {
            return Err(bad(format!(
                "layer {d} is foreign (non-distributable); not supported"
            )));
        }
        layers.push((d, l.size(), diff_id));
    }

    // Parallel downloads: a shared queue of layers, `threads` workers.
    let queue = Mutex::new(layers.clone().into_iter());
    let first_err: Mutex<Option<PullError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..opts.threads.max(1).min(layers.len().max(1)) {
            s.spawn(|| loop {
                let next = queue.lock().map(|mut q| q.next()).unwrap_or(None);
                let Some((digest, size, diff_id)) = next else {
                    break;
                };
                if first_err.lock().map(|e| e.is_some()).unwrap_or(true) {
                    break;
                }
                // Unpack right after download, overlapping with the other downloads.
                let r = fetch(
                    store,
                    client,
                    repo,
                    &digest,
                    size,
                    &|| progress.layer_started(&digest, size),
                    &|n| progress.layer_bytes(&digest, n),
                )
                .and_then(|present| {
                    store.ensure_layer(&digest, &diff_id)?;
                    Ok(present)
                });
                match r {
                    Ok(present) => progress.layer_done(&digest, present),
                    Err(e) => {
                        if let Ok(mut slot) = first_err.lock() {
                            slot.get_or_insert(e);
                        }
                        break;
                    }
                }
            });
        }
    });
    if let Some(e) = first_err.into_inner().ok().flatten() {
        return Err(e);
    }
    Ok(store.commit_image(&m.digest, std::slice::from_ref(reference))?)
}

/// Downloads one blob into the store unless present; true if it already was. `started`
/// is called when a download begins (not for a blob already present).
fn fetch(
    store: &Store,
    client: &Client,
    repo: &str,
    digest: &Digest,
    size: u64,
    started: &dyn Fn(),
    progress: &dyn Fn(u64),
) -> Result<bool, PullError> {
    let mut ingest = store.begin_ingest(digest)?;
    if ingest.already_present() {
        return Ok(true);
    }
    started();
    let offset = ingest.partial_len();
    let hasher = ingest.prefix_hasher();
    let mut report = |n: u64| progress(n);
    match client.fetch_blob(
        repo,
        digest,
        Some(size),
        offset,
        hasher,
        ingest.writer(),
        &mut report,
    ) {
        Ok(()) => {}
        // Bad bytes must not seed the next resume; a cut connection keeps its partial.
        Err(e @ (RegistryError::DigestMismatch { .. } | RegistryError::SizeMismatch { .. })) => {
            ingest.discard();
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    }
    ingest.commit()?;
    Ok(false)
}
