//! Image archives: `berth load` (docker-archive or oci-archive, plain or gzip'd), `berth
//! save` (docker-archive, as `docker load` and `podman load` read it) and `berth import`
//! (a rootfs tarball → a one-layer image).
//!
//! Archives are untrusted. Nothing is extracted to the filesystem: entries are kept in
//! memory (small ones) or in a private staging directory, looked up by normalised path (so
//! `..`, absolute paths and symlinks out of the archive are errors, never host paths), and
//! every digest is checked. Blobs enter the store only after the whole archive has been
//! read and its metadata validated; images are recorded only once every one of them is
//! complete, so a rejected archive records nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Cursor, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest, MediaType};
use serde::Deserialize;
use serde_json::json;
use thiserror::Error;

use crate::digest::{Digest, HashingReader};
use crate::reference::{Reference, ReferenceError};
use crate::store::{
    familiar, io_err, now_rfc3339, Image, Store, StoreError, TempGuard, MAX_METADATA_BLOB,
};

#[derive(Debug, Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{op}: {source}")]
    Io { op: String, source: io::Error },
    #[error("archive entry {path:?} points outside the archive (absolute or \"..\")")]
    UnsafePath { path: String },
    #[error("{referrer} refers to {path:?}, which is outside the archive")]
    UnsafeReference { referrer: String, path: String },
    #[error("{referrer} refers to {path:?}, which is not in the archive")]
    Missing { referrer: String, path: String },
    #[error("archive entry {path:?}: {reason}")]
    BadEntry { path: String, reason: String },
    #[error("archive entry {path:?}: digest mismatch: its name says {expected}, its content is {actual}")]
    BlobMismatch {
        path: String,
        expected: Digest,
        actual: Digest,
    },
    #[error(
        "layer {path:?}: content digest {actual} does not match the config's diff id {expected}"
    )]
    LayerMismatch {
        path: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error("not an image archive: {0}")]
    Format(String),
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("import: {0}")]
    Import(String),
    #[error("invalid change {change:?}: {reason}")]
    Change { change: String, reason: String },
}

type Result<T, E = ArchiveError> = std::result::Result<T, E>;

fn io_op(op: impl Into<String>) -> impl FnOnce(io::Error) -> ArchiveError {
    let op = op.into();
    move |source| ArchiveError::Io { op, source }
}

fn invalid(what: impl Into<String>, reason: impl Into<String>) -> ArchiveError {
    ArchiveError::Invalid {
        what: what.into(),
        reason: reason.into(),
    }
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// Entries up to this size are kept in memory while reading an archive; bigger ones (layers)
/// are staged on disk.
const SMALL_ENTRY: u64 = 1 << 20;
/// Total memory for small entries; past it everything is staged.
const MEMORY_BUDGET: u64 = 64 << 20;
/// Entries in one archive: image archives hold a few per layer; millions are an attack on
/// our memory.
const MAX_ENTRIES: usize = 100_000;
/// Symlink hops followed when resolving an archive path.
const MAX_LINKS: usize = 16;

// ---------------------------------------------------------------------------------------
// Compression

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    fn sniff(magic: &[u8]) -> Compression {
        if magic.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    fn layer_media_type(self) -> MediaType {
        match self {
            Compression::None => MediaType::ImageLayer,
            Compression::Gzip => MediaType::ImageLayerGzip,
            Compression::Zstd => MediaType::ImageLayerZstd,
        }
    }
}

/// Reads up to 4 bytes of `r` to tell its compression, and returns a reader of the
/// decompressed stream (the sniffed bytes put back in front).
fn decompress<'a>(mut r: impl Read + 'a) -> io::Result<(Compression, Box<dyn Read + 'a>)> {
    let mut magic = [0u8; 4];
    let mut n = 0;
    while n < magic.len() {
        match r.read(&mut magic[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let c = Compression::sniff(&magic[..n]);
    let whole = Cursor::new(magic[..n].to_vec()).chain(r);
    let out: Box<dyn Read + 'a> = match c {
        Compression::None => Box::new(whole),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(whole)),
        Compression::Zstd => Box::new(zstd::Decoder::new(whole)?),
    };
    Ok((c, out))
}

fn read_magic(path: &Path) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(4);
    File::open(path)?.take(4).read_to_end(&mut buf)?;
    Ok(buf)
}

// ---------------------------------------------------------------------------------------
// Reading an archive

/// A file of the archive, by normalised path.
enum Entry {
    Mem(Vec<u8>),
    Staged {
        path: PathBuf,
        digest: Digest,
        size: u64,
    },
    /// A symlink or hard link, resolved to a normalised archive path.
    Link(String),
}

struct Entries {
    map: BTreeMap<String, Entry>,
}

/// "./a//b/./c" → "a/b/c"; None for absolute paths and any "..".
fn normalize(path: &str) -> Option<String> {
    if path.starts_with('/') {
        return None;
    }
    let mut parts = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

/// Resolves `path` lexically inside the archive, relative to directory `base` ("" = top):
/// ".." may climb back up, but not above the top. None for absolute paths and escapes.
fn resolve_inside(base: &str, path: &str) -> Option<String> {
    if path.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = base.split('/').filter(|c| !c.is_empty()).collect();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

/// The digest that a `blobs/sha256/<hex>` path names.
fn blob_name_digest(path: &str) -> Option<Digest> {
    let hex = path.strip_prefix("blobs/sha256/")?;
    format!("sha256:{hex}").parse().ok()
}

/// The digest that a docker-archive config name (`<hex>.json`) promises.
fn config_name_digest(path: &str) -> Option<Digest> {
    let hex = path.strip_suffix(".json")?;
    format!("sha256:{hex}").parse().ok()
}

fn read_entries(staging: &Path, r: impl Read) -> Result<Entries> {
    let (_, r) = decompress(r).map_err(io_op("reading the archive"))?;
    let mut ar = tar::Archive::new(r);
    let mut map = BTreeMap::new();
    let mut in_memory = 0u64;
    let mut staged = 0u64;
    for (i, ent) in ar
        .entries()
        .map_err(io_op("reading the archive"))?
        .enumerate()
    {
        if i >= MAX_ENTRIES {
            return Err(ArchiveError::Format(format!(
                "more than {MAX_ENTRIES} entries"
            )));
        }
        let mut ent = ent.map_err(io_op("reading the archive"))?;
        let raw = String::from_utf8_lossy(&ent.path_bytes()).into_owned();
        let path = normalize(&raw).ok_or_else(|| ArchiveError::UnsafePath { path: raw.clone() })?;
        let kind = ent.header().entry_type();
        match kind {
            tar::EntryType::Directory | tar::EntryType::XGlobalHeader => continue,
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = ent
                    .link_name_bytes()
                    .map(|t| String::from_utf8_lossy(&t).into_owned())
                    .unwrap_or_default();
                // Symlinks are relative to their directory, hard links to the archive root.
                let base = match path.rsplit_once('/') {
                    Some((dir, _)) if kind == tar::EntryType::Symlink => dir,
                    _ => "",
                };
                let resolved =
                    resolve_inside(base, &target).ok_or_else(|| ArchiveError::UnsafePath {
                        path: format!("{raw} -> {target}"),
                    })?;
                map.insert(path, Entry::Link(resolved));
                continue;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {}
            other => {
                return Err(ArchiveError::BadEntry {
                    path: raw,
                    reason: format!("unsupported entry type {other:?} in an image archive"),
                })
            }
        }
        if path.is_empty() {
            return Err(ArchiveError::BadEntry {
                path: raw,
                reason: "a file without a name".into(),
            });
        }
        // The entry's size, PAX overrides included.
        let size = ent.size();
        let expected = blob_name_digest(&path);
        let entry = if size <= SMALL_ENTRY && in_memory + size <= MEMORY_BUDGET {
            let mut data = Vec::with_capacity(size as usize);
            ent.read_to_end(&mut data)
                .map_err(io_op(format!("reading archive entry {raw:?}")))?;
            in_memory += size;
            if let Some(expected) = expected {
                let actual = Digest::of(&data);
                if actual != expected {
                    return Err(ArchiveError::BlobMismatch {
                        path,
                        expected,
                        actual,
                    });
                }
            }
            Entry::Mem(data)
        } else {
            let file_path = staging.join(staged.to_string());
            staged += 1;
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&file_path)
                .map_err(io_err("creating", &file_path))?;
            let mut hr = HashingReader::new(&mut ent);
            io::copy(&mut hr, &mut f).map_err(io_op(format!("staging archive entry {raw:?}")))?;
            let (digest, size) = hr.finish();
            if let Some(expected) = expected {
                if digest != expected {
                    return Err(ArchiveError::BlobMismatch {
                        path,
                        expected,
                        actual: digest,
                    });
                }
            }
            Entry::Staged {
                path: file_path,
                digest,
                size,
            }
        };
        map.insert(path, entry);
    }
    Ok(Entries { map })
}

impl Entries {
    /// The file at `path` (as a manifest names it), following links.
    fn get(&self, path: &str, referrer: &str) -> Result<(String, &Entry)> {
        let mut p = resolve_inside("", path).ok_or_else(|| ArchiveError::UnsafeReference {
            referrer: referrer.into(),
            path: path.into(),
        })?;
        for _ in 0..MAX_LINKS {
            match self.map.get(&p) {
                Some(Entry::Link(target)) => p = target.clone(),
                Some(e) => return Ok((p, e)),
                None => break,
            }
        }
        Err(ArchiveError::Missing {
            referrer: referrer.into(),
            path: path.into(),
        })
    }

    fn contains(&self, path: &str) -> bool {
        self.map.contains_key(path)
    }

    /// A small file's content (a manifest or config).
    fn bytes(&self, path: &str, referrer: &str) -> Result<Vec<u8>> {
        let (p, data) = match self.get(path, referrer)? {
            (p, Entry::Mem(d)) => (p, d.clone()),
            (
                p,
                Entry::Staged {
                    path: file, size, ..
                },
            ) => {
                if *size > MAX_METADATA_BLOB {
                    return Err(invalid(
                        format!("archive entry {p:?}"),
                        format!("{size} bytes is too large for a manifest or config"),
                    ));
                }
                let data =
                    fs::read(file).map_err(io_op(format!("reading staged archive entry {p:?}")))?;
                (p, data)
            }
            (_, Entry::Link(_)) => {
                return Err(ArchiveError::Missing {
                    referrer: referrer.into(),
                    path: path.into(),
                })
            }
        };
        // Entries were checked against their own names when read; a link named
        // blobs/sha256/<x> that leads to other content is caught here.
        if let Some(expected) = normalize(path).as_deref().and_then(blob_name_digest) {
            let actual = Digest::of(&data);
            if actual != expected {
                return Err(ArchiveError::BlobMismatch {
                    path: p,
                    expected,
                    actual,
                });
            }
        }
        Ok(data)
    }

    /// Digest, size and compression of a file.
    fn describe(&self, path: &str, referrer: &str) -> Result<(String, Digest, u64, Compression)> {
        match self.get(path, referrer)? {
            (p, Entry::Mem(d)) => Ok((p, Digest::of(d), d.len() as u64, Compression::sniff(d))),
            (
                p,
                Entry::Staged {
                    path: file,
                    digest,
                    size,
                },
            ) => {
                let magic = read_magic(file)
                    .map_err(io_op(format!("reading staged archive entry {p:?}")))?;
                Ok((p, digest.clone(), *size, Compression::sniff(&magic)))
            }
            (_, Entry::Link(_)) => Err(ArchiveError::Missing {
                referrer: referrer.into(),
                path: path.into(),
            }),
        }
    }

    /// Puts the file at (resolved) `path` into the store as blob `digest`.
    fn store(&self, store: &Store, path: &str, digest: &Digest) -> Result<()> {
        if store.has_blob(digest) {
            return Ok(());
        }
        match self.map.get(path) {
            Some(Entry::Mem(d)) => {
                store.put_blob_bytes(d, Some(digest))?;
            }
            Some(Entry::Staged { path: file, .. }) => {
                // Staged files were hashed while written; make them durable, then rename.
                File::open(file)
                    .and_then(|f| f.sync_all())
                    .map_err(io_err("syncing", file))?;
                store.install_blob(file, digest)?;
            }
            _ => {
                return Err(ArchiveError::Missing {
                    referrer: "the archive".into(),
                    path: path.into(),
                })
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Load

/// One image of an archive, validated against the archive's content, not yet stored.
struct Planned {
    /// The manifest entry (oci-archive), or None: synthesise one (docker-archive).
    manifest: Option<(String, Digest)>,
    config: Vec<u8>,
    config_digest: Digest,
    layers: Vec<PlannedLayer>,
    tags: Vec<Reference>,
}

struct PlannedLayer {
    path: String,
    blob: Digest,
    size: u64,
    media_type: String,
    diff_id: Digest,
}

#[derive(Deserialize)]
struct DockerManifestItem {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

fn parse_config(bytes: &[u8], what: &str) -> Result<(ImageConfiguration, Vec<Digest>)> {
    let config: ImageConfiguration = serde_json::from_slice(bytes)
        .map_err(|e| invalid(what, format!("not an image config: {e}")))?;
    let diff_ids = config
        .rootfs()
        .diff_ids()
        .iter()
        .map(|d| {
            d.parse()
                .map_err(|_| invalid(what, format!("diff id {d:?} is not a sha256 digest")))
        })
        .collect::<Result<Vec<Digest>>>()?;
    Ok((config, diff_ids))
}

fn plan_docker(entries: &Entries) -> Result<Vec<Planned>> {
    let items: Vec<DockerManifestItem> =
        serde_json::from_slice(&entries.bytes("manifest.json", "the archive")?).map_err(|e| {
            invalid(
                "manifest.json",
                format!("not a docker-archive manifest: {e}"),
            )
        })?;
    if items.is_empty() {
        return Err(invalid("manifest.json", "lists no images"));
    }
    let mut out = Vec::new();
    for item in items {
        let (config_path, _) = entries.get(&item.config, "manifest.json")?;
        let config = entries.bytes(&item.config, "manifest.json")?;
        let config_digest = Digest::of(&config);
        let named = config_name_digest(&config_path).or_else(|| blob_name_digest(&config_path));
        if let Some(expected) = named {
            if expected != config_digest {
                return Err(ArchiveError::BlobMismatch {
                    path: config_path,
                    expected,
                    actual: config_digest,
                });
            }
        }
        let what = format!("image config {config_path:?}");
        let (_, diff_ids) = parse_config(&config, &what)?;
        if diff_ids.len() != item.layers.len() {
            return Err(invalid(
                "manifest.json",
                format!(
                    "image {} lists {} layers, but its config lists {} diff ids",
                    item.config,
                    item.layers.len(),
                    diff_ids.len()
                ),
            ));
        }
        let mut layers = Vec::new();
        for (layer, diff_id) in item.layers.iter().zip(diff_ids) {
            let (path, blob, size, compression) = entries.describe(layer, "manifest.json")?;
            // An uncompressed layer is its own diff: check now. Compressed ones are checked
            // when unpacked.
            if compression == Compression::None && blob != diff_id {
                return Err(ArchiveError::LayerMismatch {
                    path,
                    expected: diff_id,
                    actual: blob,
                });
            }
            layers.push(PlannedLayer {
                path,
                blob,
                size,
                media_type: compression.layer_media_type().to_string(),
                diff_id,
            });
        }
        let tags = item
            .repo_tags
            .unwrap_or_default()
            .iter()
            .map(|t| t.parse::<Reference>())
            .collect::<Result<Vec<_>, _>>()?;
        out.push(Planned {
            manifest: None,
            config,
            config_digest,
            layers,
            tags,
        });
    }
    Ok(out)
}

/// The platform berth runs images for, in OCI terms.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

fn oci_digest(d: &oci_spec::image::Digest, what: &str) -> Result<Digest> {
    d.to_string()
        .parse()
        .map_err(|_| invalid(what, format!("digest {d} is not a sha256 digest")))
}

fn is_index_type(m: &MediaType) -> bool {
    matches!(m, MediaType::ImageIndex)
        || matches!(m, MediaType::Other(s) if s == DOCKER_MANIFEST_LIST)
}

fn is_manifest_type(m: &MediaType) -> bool {
    matches!(m, MediaType::ImageManifest)
        || matches!(m, MediaType::Other(s) if s == DOCKER_MANIFEST)
}

fn platform_matches(d: &oci_spec::image::Descriptor) -> bool {
    d.platform().as_ref().is_none_or(|p| {
        p.os().to_string() == "linux" && p.architecture().to_string() == host_arch()
    })
}

/// The tag an index entry carries: containerd's full name, or the OCI ref name when it is a
/// full reference. A bare ref name ("latest") names no repository, so it tags nothing.
fn oci_tag(d: &oci_spec::image::Descriptor) -> Result<Option<Reference>> {
    let Some(ann) = d.annotations() else {
        return Ok(None);
    };
    if let Some(name) = ann.get(CONTAINERD_NAME) {
        return Ok(Some(name.parse()?));
    }
    match ann.get(REF_NAME) {
        Some(name) if name.contains('/') || name.contains(':') => Ok(Some(name.parse()?)),
        _ => Ok(None),
    }
}

fn plan_oci(entries: &Entries) -> Result<Vec<Planned>> {
    let layout: serde_json::Value =
        serde_json::from_slice(&entries.bytes("oci-layout", "the archive")?)
            .map_err(|e| invalid("oci-layout", format!("not valid json: {e}")))?;
    let version = layout
        .get("imageLayoutVersion")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    if !version.starts_with("1.") {
        return Err(invalid(
            "oci-layout",
            format!("unsupported image layout version {version:?}"),
        ));
    }
    let index: ImageIndex = serde_json::from_slice(&entries.bytes("index.json", "the archive")?)
        .map_err(|e| invalid("index.json", format!("not an image index: {e}")))?;
    let mut out = Vec::new();
    for desc in index.manifests() {
        if !platform_matches(desc) {
            continue;
        }
        let tag = oci_tag(desc)?;
        let mut manifest_desc = desc.clone();
        // A nested index (a multi-platform image): take the host's manifest.
        for _ in 0..4 {
            if !is_index_type(manifest_desc.media_type()) {
                break;
            }
            let d = oci_digest(manifest_desc.digest(), "index.json")?;
            let path = format!("blobs/sha256/{}", d.hex());
            let nested: ImageIndex = serde_json::from_slice(&entries.bytes(&path, "index.json")?)
                .map_err(|e| {
                invalid(format!("index {d}"), format!("not an image index: {e}"))
            })?;
            let candidates: Vec<_> = nested
                .manifests()
                .iter()
                .filter(|m| is_manifest_type(m.media_type()) || is_index_type(m.media_type()))
                .collect();
            manifest_desc = match candidates
                .iter()
                .find(|m| m.platform().is_some() && platform_matches(m))
            {
                Some(m) => (*m).clone(),
                None if candidates.len() == 1 && candidates[0].platform().is_none() => {
                    candidates[0].clone()
                }
                None => {
                    return Err(invalid(
                        format!("index {d}"),
                        format!("has no image for linux/{}", host_arch()),
                    ))
                }
            };
        }
        if !is_manifest_type(manifest_desc.media_type()) {
            // Artifacts (signatures, attestations) are not images: skip them.
            continue;
        }
        let digest = oci_digest(manifest_desc.digest(), "index.json")?;
        let manifest_path = format!("blobs/sha256/{}", digest.hex());
        let what = format!("manifest {digest}");
        let manifest: ImageManifest =
            serde_json::from_slice(&entries.bytes(&manifest_path, "index.json")?)
                .map_err(|e| invalid(&what, format!("not an image manifest: {e}")))?;
        let config_digest = oci_digest(manifest.config().digest(), &what)?;
        let config = entries.bytes(&format!("blobs/sha256/{}", config_digest.hex()), &what)?;
        let (_, diff_ids) = parse_config(&config, &format!("image config {config_digest}"))?;
        if diff_ids.len() != manifest.layers().len() {
            return Err(invalid(
                &what,
                format!(
                    "{} layers, but config {config_digest} lists {} diff ids",
                    manifest.layers().len(),
                    diff_ids.len()
                ),
            ));
        }
        let mut layers = Vec::new();
        for (l, diff_id) in manifest.layers().iter().zip(diff_ids) {
            let blob = oci_digest(l.digest(), &what)?;
            let (path, actual, size, _) =
                entries.describe(&format!("blobs/sha256/{}", blob.hex()), &what)?;
            if actual != blob {
                // Reached through a link to another blob.
                return Err(ArchiveError::BlobMismatch {
                    path,
                    expected: blob,
                    actual,
                });
            }
            layers.push(PlannedLayer {
                path,
                blob,
                size,
                media_type: l.media_type().to_string(),
                diff_id,
            });
        }
        out.push(Planned {
            manifest: Some((entries.get(&manifest_path, &what)?.0, digest)),
            config,
            config_digest,
            layers,
            tags: tag.into_iter().collect(),
        });
    }
    if out.is_empty() {
        return Err(invalid(
            "index.json",
            format!("has no image for linux/{}", host_arch()),
        ));
    }
    Ok(out)
}

/// An OCI image manifest for a config and layers (docker-archives carry none).
fn synth_manifest(
    config_digest: &Digest,
    config_size: u64,
    layers: &[(String, &Digest, u64)],
) -> Vec<u8> {
    let layers: Vec<_> = layers
        .iter()
        .map(|(media_type, d, size)| json!({"mediaType": media_type, "digest": d.to_string(), "size": size}))
        .collect();
    let m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest.to_string(), "size": config_size},
        "layers": layers,
    });
    // serde_json's map is ordered: the same image always gets the same manifest digest.
    m.to_string().into_bytes()
}

/// `berth load`: reads a docker-archive (manifest.json + configs + layer tars, as `docker
/// save` writes, old or OCI-style) or an oci-archive (oci-layout + index.json + blobs/), plain
/// or gzip'd; stores its blobs, unpacks its layers and records and tags its images.
/// docker-archive images are tagged from RepoTags, oci-archive ones from the
/// `io.containerd.image.name` or a full `org.opencontainers.image.ref.name` annotation.
pub fn load(store: &Store, r: impl Read) -> Result<Vec<Image>> {
    let _lease = store.lease()?;
    let staging = TempGuard::new(Store::temp_path(&store.ingest_dir(), "load"));
    fs::create_dir(staging.path()).map_err(io_err("creating", staging.path()))?;
    let entries = read_entries(staging.path(), r)?;

    let planned = if entries.contains("manifest.json") {
        plan_docker(&entries)?
    } else if entries.contains("index.json") {
        plan_oci(&entries)?
    } else {
        return Err(ArchiveError::Format(
            "neither manifest.json (docker-archive) nor index.json (oci-archive) at its top".into(),
        ));
    };

    // Everything checks out as far as the archive can tell: store, unpack, validate.
    let mut ready = Vec::new();
    for p in &planned {
        store.put_blob_bytes(&p.config, Some(&p.config_digest))?;
        for l in &p.layers {
            entries.store(store, &l.path, &l.blob)?;
        }
        let manifest = match &p.manifest {
            Some((path, d)) => {
                entries.store(store, path, d)?;
                d.clone()
            }
            None => {
                let layers: Vec<_> = p
                    .layers
                    .iter()
                    .map(|l| (l.media_type.clone(), &l.blob, l.size))
                    .collect();
                let m = synth_manifest(&p.config_digest, p.config.len() as u64, &layers);
                store.put_blob_bytes(&m, None)?
            }
        };
        for l in &p.layers {
            store.ensure_layer(&l.blob, &l.diff_id)?;
        }
        store.check_image(&manifest)?;
        ready.push((manifest, &p.tags));
    }
    let mut images = Vec::new();
    for (manifest, tags) in ready {
        images.push(store.commit_image(&manifest, tags)?);
    }
    Ok(images)
}

// ---------------------------------------------------------------------------------------
// Save

fn file_header(size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// `berth save`: writes the images named (tags, references or ids) as one docker-archive,
/// which `docker load`, `podman load` and [`load`] read. An image named by tag carries that
/// tag; one named by id carries all its tags. Layers are written uncompressed, as docker
/// does, each once.
pub fn save(store: &Store, images: &[&str], w: impl Write) -> Result<()> {
    let _lease = store.lease()?;
    // manifest digest → (image, RepoTags), in the order first named.
    let mut order: Vec<Digest> = Vec::new();
    let mut chosen: HashMap<Digest, (Image, BTreeSet<String>)> = HashMap::new();
    for name in images {
        let img = store.resolve(name)?;
        let by_tag = name
            .parse::<Reference>()
            .ok()
            .filter(|r| r.digest.is_none())
            .map(|r| format!("{}/{}:{}", r.registry, r.repository, r.tag_or_default()))
            .filter(|k| img.tags.contains(k));
        let tags: Vec<String> = match by_tag {
            Some(k) => vec![k],
            None => img.tags.clone(),
        };
        let slot = chosen
            .entry(img.manifest_digest.clone())
            .or_insert_with(|| {
                order.push(img.manifest_digest.clone());
                (img, BTreeSet::new())
            });
        slot.1.extend(tags.iter().map(|t| familiar(t)));
    }

    let mut b = tar::Builder::new(w);
    let mut written: BTreeSet<String> = BTreeSet::new();
    let mut manifest = Vec::new();
    for m in &order {
        let (img, tags) = &chosen[m];
        let config_name = format!("{}.json", img.id.hex());
        if written.insert(config_name.clone()) {
            let config = store.read_blob(&img.id)?;
            b.append_data(
                &mut file_header(config.len() as u64, 0o644),
                &config_name,
                &config[..],
            )
            .map_err(io_op("writing the archive"))?;
        }
        let mut layer_paths = Vec::new();
        for l in &img.layers {
            let dir = l.diff_id.hex().to_string();
            let path = format!("{dir}/layer.tar");
            if written.insert(path.clone()) {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                h.set_mode(0o755);
                h.set_mtime(0);
                b.append_data(&mut h, format!("{dir}/"), io::empty())
                    .map_err(io_op("writing the archive"))?;
                append_layer(store, &mut b, l, &path)?;
            }
            layer_paths.push(path);
        }
        let repo_tags: Option<Vec<&String>> = if tags.is_empty() {
            None
        } else {
            Some(tags.iter().collect())
        };
        manifest.push(json!({"Config": config_name, "RepoTags": repo_tags, "Layers": layer_paths}));
    }
    let manifest =
        serde_json::to_vec(&manifest).map_err(|e| invalid("manifest.json", e.to_string()))?;
    b.append_data(
        &mut file_header(manifest.len() as u64, 0o644),
        "manifest.json",
        &manifest[..],
    )
    .map_err(io_op("writing the archive"))?;
    b.into_inner()
        .and_then(|mut w| w.flush())
        .map_err(io_op("writing the archive"))?;
    Ok(())
}

/// Appends a layer as an uncompressed tar: the blob itself if it is one, else decompressed
/// into a temporary first (a tar header needs the size up front), checking the diff id.
fn append_layer<W: Write>(
    store: &Store,
    b: &mut tar::Builder<W>,
    l: &crate::store::Layer,
    path: &str,
) -> Result<()> {
    let mut blob = store.open_blob(&l.blob)?;
    let magic = read_magic(&store.blob_path(&l.blob))
        .map_err(io_op(format!("reading layer {}", l.blob)))?;
    if Compression::sniff(&magic) == Compression::None {
        let size = store.blob_size(&l.blob)?;
        return b
            .append_data(&mut file_header(size, 0o644), path, &mut blob)
            .map_err(io_op("writing the archive"));
    }
    let tmp = TempGuard::new(Store::temp_path(&store.ingest_dir(), "save"));
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp.path())
        .map_err(io_err("creating", tmp.path()))?;
    let (_, dec) =
        decompress(&mut blob).map_err(io_op(format!("decompressing layer {}", l.blob)))?;
    let mut hr = HashingReader::new(dec);
    io::copy(&mut hr, &mut f).map_err(io_op(format!("decompressing layer {}", l.blob)))?;
    let (diff_id, size) = hr.finish();
    if diff_id != l.diff_id {
        return Err(StoreError::DiffIdMismatch {
            blob: l.blob.clone(),
            expected: l.diff_id.clone(),
            actual: diff_id,
        }
        .into());
    }
    f.rewind().map_err(io_err("reading", tmp.path()))?;
    b.append_data(&mut file_header(size, 0o644), path, &mut f)
        .map_err(io_op("writing the archive"))
}

// ---------------------------------------------------------------------------------------
// Import

/// Config changes for [`import`], as `docker import --change` takes them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportChanges {
    pub cmd: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    /// "KEY=value".
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// "80/tcp".
    pub exposed_ports: Vec<String>,
    /// History comment (`docker import --message`).
    pub message: Option<String>,
}

impl ImportChanges {
    /// Applies one Dockerfile-style change: `CMD`, `ENTRYPOINT` (JSON array or shell
    /// form), `ENV k=v ...` or `ENV k v`, `WORKDIR`, `USER`, `LABEL k=v ...`, `EXPOSE p[/proto] ...`.
    pub fn apply(&mut self, change: &str) -> Result<()> {
        let err = |reason: &str| ArchiveError::Change {
            change: change.to_string(),
            reason: reason.to_string(),
        };
        let change_t = change.trim();
        let (instr, rest) = change_t
            .split_once(char::is_whitespace)
            .unwrap_or((change_t, ""));
        let rest = rest.trim();
        if rest.is_empty() {
            return Err(err("missing arguments"));
        }
        let command = || -> Result<Vec<String>> {
            if rest.starts_with('[') {
                serde_json::from_str::<Vec<String>>(rest)
                    .map_err(|_| err("not a JSON array of strings"))
            } else {
                Ok(vec!["/bin/sh".into(), "-c".into(), rest.into()])
            }
        };
        let pairs = |what: &str| -> Result<Vec<(String, String)>> {
            let first = rest.split_whitespace().next().unwrap_or("");
            if first.contains('=') {
                rest.split_whitespace()
                    .map(|kv| {
                        kv.split_once('=')
                            .filter(|(k, _)| !k.is_empty())
                            .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
                            .ok_or_else(|| err(&format!("{what} wants key=value pairs")))
                    })
                    .collect()
            } else {
                let (k, v) = rest
                    .split_once(char::is_whitespace)
                    .ok_or_else(|| err(&format!("{what} wants a value")))?;
                Ok(vec![(k.to_string(), v.trim().to_string())])
            }
        };
        match instr.to_ascii_uppercase().as_str() {
            "CMD" => self.cmd = Some(command()?),
            "ENTRYPOINT" => self.entrypoint = Some(command()?),
            "ENV" => {
                for (k, v) in pairs("ENV")? {
                    self.env
                        .retain(|e| e.split_once('=').map(|(ek, _)| ek) != Some(k.as_str()));
                    self.env.push(format!("{k}={v}"));
                }
            }
            "LABEL" => self.labels.extend(pairs("LABEL")?),
            "WORKDIR" => self.workdir = Some(rest.to_string()),
            "USER" => self.user = Some(rest.to_string()),
            "EXPOSE" => {
                for p in rest.split_whitespace() {
                    let (port, proto) = p.split_once('/').unwrap_or((p, "tcp"));
                    if port.parse::<u16>().is_err() || !["tcp", "udp", "sctp"].contains(&proto) {
                        return Err(err("EXPOSE wants port[/tcp|udp|sctp]"));
                    }
                    self.exposed_ports.push(format!("{port}/{proto}"));
                }
            }
            _ => {
                return Err(err(
                    "supported: CMD, ENTRYPOINT, ENV, LABEL, WORKDIR, USER, EXPOSE",
                ))
            }
        }
        Ok(())
    }

    fn config_json(&self) -> serde_json::Value {
        let mut c = serde_json::Map::new();
        if let Some(cmd) = &self.cmd {
            c.insert("Cmd".into(), json!(cmd));
        }
        if let Some(ep) = &self.entrypoint {
            c.insert("Entrypoint".into(), json!(ep));
        }
        if !self.env.is_empty() {
            c.insert("Env".into(), json!(self.env));
        }
        if let Some(w) = &self.workdir {
            c.insert("WorkingDir".into(), json!(w));
        }
        if let Some(u) = &self.user {
            c.insert("User".into(), json!(u));
        }
        if !self.labels.is_empty() {
            c.insert("Labels".into(), json!(self.labels));
        }
        if !self.exposed_ports.is_empty() {
            let ports: serde_json::Map<_, _> = self
                .exposed_ports
                .iter()
                .map(|p| (p.clone(), json!({})))
                .collect();
            c.insert("ExposedPorts".into(), serde_json::Value::Object(ports));
        }
        serde_json::Value::Object(c)
    }
}

/// `berth import`: a rootfs tarball (plain, gzip or zstd) becomes a one-layer image with a
/// minimal config (linux, the host's architecture, `changes` applied), tagged `tag` if given.
/// The tarball is stored as it came (compressed stays compressed) and unpacked.
pub fn import(
    store: &Store,
    r: impl Read,
    tag: Option<&Reference>,
    changes: &ImportChanges,
) -> Result<Image> {
    let _lease = store.lease()?;
    let mut staged = TempGuard::new(Store::temp_path(&store.ingest_dir(), "import"));
    let staged_path = staged.path().to_path_buf();
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&staged_path)
        .map_err(io_err("creating", &staged_path))?;
    let mut hr = HashingReader::new(r);
    io::copy(&mut hr, &mut f).map_err(io_op("reading the rootfs tarball"))?;
    let (blob, size) = hr.finish();
    if size == 0 {
        return Err(ArchiveError::Import("the rootfs tarball is empty".into()));
    }
    f.rewind().map_err(io_err("reading", &staged_path))?;
    let (compression, dec) = decompress(&mut f).map_err(io_op("reading the rootfs tarball"))?;
    let diff_id = tar_digest(dec)?;
    f.sync_all().map_err(io_err("syncing", &staged_path))?;
    drop(f);
    store.install_blob(&staged_path, &blob)?;
    staged.disarm();
    store.ensure_layer(&blob, &diff_id)?;

    let now = now_rfc3339();
    let mut history = json!({"created": now, "created_by": "berth import"});
    if let Some(m) = &changes.message {
        history["comment"] = json!(m);
    }
    let config = json!({
        "architecture": host_arch(),
        "os": "linux",
        "created": now,
        "config": changes.config_json(),
        "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]},
        "history": [history],
    });
    let config = config.to_string().into_bytes();
    let config_digest = store.put_blob_bytes(&config, None)?;
    let media_type = compression.layer_media_type().to_string();
    let manifest = synth_manifest(
        &config_digest,
        config.len() as u64,
        &[(media_type, &blob, size)],
    );
    let manifest_digest = store.put_blob_bytes(&manifest, None)?;
    Ok(store.commit_image(
        &manifest_digest,
        tag.map(std::slice::from_ref).unwrap_or(&[]),
    )?)
}

/// Reads a whole tar stream, checking that it is one, and returns its digest (a diff id).
fn tar_digest(r: impl Read) -> Result<Digest> {
    let bad = |e: io::Error| {
        ArchiveError::Import(format!(
            "the rootfs tarball is not a valid tar archive: {e}"
        ))
    };
    let mut hr = HashingReader::new(r);
    {
        let mut ar = tar::Archive::new(&mut hr);
        let mut n = 0usize;
        for ent in ar.entries().map_err(bad)? {
            let mut ent = ent.map_err(bad)?;
            io::copy(&mut ent, &mut io::sink()).map_err(bad)?;
            n += 1;
        }
        if n == 0 {
            return Err(ArchiveError::Import(
                "the rootfs tarball has no entries".into(),
            ));
        }
    }
    // The diff id covers the whole stream, end-of-archive blocks and padding included.
    io::copy(&mut hr, &mut io::sink()).map_err(bad)?;
    Ok(hr.finish().0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_rejects_escapes() {
        assert_eq!(normalize("./a//b/./c").as_deref(), Some("a/b/c"));
        assert_eq!(normalize("manifest.json").as_deref(), Some("manifest.json"));
        assert_eq!(normalize("./").as_deref(), Some(""));
        for bad in ["/etc/passwd", "../x", "a/../../x", "a/.."] {
            assert_eq!(normalize(bad), None, "{bad}");
        }
        assert_eq!(resolve_inside("a/b", "../c/d").as_deref(), Some("a/c/d"));
        assert_eq!(resolve_inside("a", "../x").as_deref(), Some("x"));
        assert_eq!(resolve_inside("a", "../../x"), None);
        assert_eq!(resolve_inside("", "/etc/passwd"), None);
    }

    #[test]
    fn familiar_names() {
        assert_eq!(
            familiar("docker.io/library/busybox:latest"),
            "busybox:latest"
        );
        assert_eq!(familiar("docker.io/user/app:v1"), "user/app:v1");
        assert_eq!(familiar("localhost:5000/x:y"), "localhost:5000/x:y");
    }

    #[test]
    fn changes_parse_like_docker() {
        let mut c = ImportChanges::default();
        c.apply(r#"CMD ["/bin/sh", "-c", "echo hi"]"#).unwrap();
        c.apply("ENTRYPOINT /init --flag").unwrap();
        c.apply("ENV A=1 B=two").unwrap();
        c.apply("ENV A 3").unwrap();
        c.apply("workdir /srv").unwrap();
        c.apply("USER 1000:1000").unwrap();
        c.apply("LABEL org.x=y").unwrap();
        c.apply("EXPOSE 80 53/udp").unwrap();
        assert_eq!(
            c.cmd.as_deref(),
            Some(&["/bin/sh".to_string(), "-c".into(), "echo hi".into()][..])
        );
        assert_eq!(c.entrypoint.as_ref().unwrap()[2], "/init --flag");
        assert_eq!(c.env, vec!["B=two".to_string(), "A=3".into()]);
        assert_eq!(c.workdir.as_deref(), Some("/srv"));
        assert_eq!(c.labels["org.x"], "y");
        assert_eq!(c.exposed_ports, vec!["80/tcp".to_string(), "53/udp".into()]);
        let cfg = c.config_json();
        assert_eq!(cfg["WorkingDir"], "/srv");
        assert!(cfg["ExposedPorts"]["53/udp"].is_object());
        for bad in ["RUN x", "CMD", "CMD [1]", "EXPOSE http", "ENV A=1 junk"] {
            assert!(c.apply(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn compression_sniffing() {
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(
            Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(Compression::sniff(b"ustar"), Compression::None);
        assert_eq!(Compression::sniff(&[]), Compression::None);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"hello").unwrap();
        let data = gz.finish().unwrap();
        let (c, mut r) = decompress(&data[..]).unwrap();
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!((c, s.as_str()), (Compression::Gzip, "hello"));
    }
}
