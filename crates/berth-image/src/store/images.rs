//! Image records and tags: commit, tag, resolve, list, remove (docker rmi semantics).

use std::collections::BTreeSet;

use oci_spec::image::{ImageConfiguration, ImageManifest, MediaType};

use super::meta::{ImageRecord, Meta};
use super::{now_rfc3339, Image, Layer, Result, Store, StoreError};
use crate::digest::Digest;
use crate::reference::Reference;

pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub(crate) const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const DOCKER_LAYER_FOREIGN: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// What [`Store::remove`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removed {
    /// Tags removed, full references.
    pub untagged: Vec<String>,
    /// Image ids (config digests) whose records were deleted. Their blobs and layers stay
    /// until [`Store::gc`].
    pub deleted: Vec<Digest>,
}

impl std::fmt::Display for Removed {
    /// As `docker rmi` prints it: "Untagged: busybox:latest" / "Deleted: sha256:…" lines.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lines = self
            .untagged
            .iter()
            .map(|t| format!("Untagged: {}", familiar(t)))
            .chain(self.deleted.iter().map(|d| format!("Deleted: {d}")));
        for (i, l) in lines.enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            f.write_str(&l)?;
        }
        Ok(())
    }
}

/// docker's short form of a tag: "busybox:latest", "user/app:v1", "quay.io/x/y:z".
pub fn familiar(key: &str) -> String {
    match key.strip_prefix("docker.io/") {
        Some(short) => short.strip_prefix("library/").unwrap_or(short).to_string(),
        None => key.to_string(),
    }
}

/// An image checked against its blobs, ready to record.
pub(crate) struct Checked {
    pub record: ImageRecord,
    pub config: ImageConfiguration,
}

/// The key of a tag in meta.json: "docker.io/library/busybox:latest".
pub(crate) fn tag_key(r: &Reference) -> String {
    format!("{}/{}:{}", r.registry, r.repository, r.tag_or_default())
}

/// "docker.io/library/busybox" of "docker.io/library/busybox:latest".
fn tag_repository(key: &str) -> &str {
    key.rsplit_once(':').map(|(n, _)| n).unwrap_or(key)
}

fn parse_digest(d: &oci_spec::image::Digest) -> Option<Digest> {
    d.to_string().parse().ok()
}

fn is_layer_media_type(m: &MediaType) -> bool {
    match m {
        MediaType::ImageLayer
        | MediaType::ImageLayerGzip
        | MediaType::ImageLayerZstd
        | MediaType::ImageLayerNonDistributable
        | MediaType::ImageLayerNonDistributableGzip
        | MediaType::ImageLayerNonDistributableZstd => true,
        MediaType::Other(s) => s == DOCKER_LAYER_GZIP || s == DOCKER_LAYER_FOREIGN,
        _ => false,
    }
}

/// How a name given by a user matched.
enum Found {
    /// Through this tag, to this manifest.
    Tag(String, Digest),
    /// By image id (all the manifests sharing that config) or by manifest digest.
    Manifests(Vec<Digest>),
}

fn is_lower_hex(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Resolution order, as docker: a full id (64 hex, or anything "sha256:"-prefixed) is an
/// id; otherwise a reference (tag or `name@digest`); otherwise a short id of >= 12 hex.
fn lookup(meta: &Meta, name: &str) -> Result<Found> {
    let not_found = || StoreError::ImageNotFound(name.to_string());
    let explicit = name.strip_prefix("sha256:");
    let hex = explicit.unwrap_or(name);
    let hexish = is_lower_hex(hex);
    if explicit.is_some() || (hexish && hex.len() == 64) {
        return if hexish && hex.len() >= 12 {
            by_id(meta, name, hex)
        } else {
            Err(not_found())
        };
    }
    match name.parse::<Reference>() {
        Ok(r) => {
            if let Some(d) = &r.digest {
                if meta.images.contains_key(d) {
                    return Ok(Found::Manifests(vec![d.clone()]));
                }
            } else {
                let key = tag_key(&r);
                if let Some(m) = meta.tags.get(&key) {
                    return Ok(Found::Tag(key, m.clone()));
                }
            }
            if hexish && hex.len() >= 12 {
                by_id(meta, name, hex)
            } else {
                Err(not_found())
            }
        }
        Err(_) if hexish && hex.len() >= 12 => by_id(meta, name, hex),
        Err(e) => Err(e.into()),
    }
}

fn by_id(meta: &Meta, name: &str, hex: &str) -> Result<Found> {
    let ids: BTreeSet<&Digest> = meta
        .images
        .values()
        .filter(|r| r.config.hex().starts_with(hex))
        .map(|r| &r.config)
        .collect();
    match ids.len() {
        0 => {
            // A full manifest digest works too (what `pull` prints).
            let m = meta.images.keys().find(|m| m.hex() == hex);
            m.map(|m| Found::Manifests(vec![m.clone()]))
                .ok_or_else(|| StoreError::ImageNotFound(name.to_string()))
        }
        1 => {
            let id = ids.into_iter().next().cloned();
            Ok(Found::Manifests(
                meta.images
                    .iter()
                    .filter(|(_, r)| Some(&r.config) == id.as_ref())
                    .map(|(m, _)| m.clone())
                    .collect(),
            ))
        }
        _ => Err(StoreError::AmbiguousId {
            id: name.to_string(),
            matches: ids.iter().map(|d| d.to_string()).collect(),
        }),
    }
}

/// Of several manifests with one config, the one to show: most tags, then digest order.
fn best(meta: &Meta, manifests: &[Digest]) -> Option<Digest> {
    manifests
        .iter()
        .max_by_key(|m| (meta.tags_of(m).len(), std::cmp::Reverse((*m).clone())))
        .cloned()
}

impl Store {
    /// Checks that the manifest `digest` and everything it references are present and
    /// well-formed: media types, sizes, a parseable config whose diff ids match the layers.
    pub(crate) fn check_image(&self, digest: &Digest) -> Result<Checked> {
        let bad = |reason: String| StoreError::InvalidManifest {
            digest: digest.clone(),
            reason,
        };
        let bytes = self.read_blob(digest)?;
        let raw: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| bad(format!("not valid json: {e}")))?;
        let declared = raw.get("mediaType").and_then(|m| m.as_str()).unwrap_or("");
        if raw.get("manifests").is_some()
            || declared == MediaType::ImageIndex.as_ref()
            || declared == DOCKER_MANIFEST_LIST
        {
            return Err(bad(
                "is an image index, not an image manifest (pick a platform first)".into(),
            ));
        }
        let manifest: ImageManifest = serde_json::from_slice(&bytes)
            .map_err(|e| bad(format!("not an image manifest: {e}")))?;
        if manifest.schema_version() != 2 {
            return Err(bad(format!(
                "schema version {} (want 2)",
                manifest.schema_version()
            )));
        }
        let media_type = match manifest.media_type() {
            None | Some(MediaType::ImageManifest) => MediaType::ImageManifest.to_string(),
            Some(MediaType::Other(s)) if s == DOCKER_MANIFEST => s.clone(),
            Some(m) => return Err(bad(format!("unsupported media type {m}"))),
        };
        let cfg = manifest.config();
        match cfg.media_type() {
            MediaType::ImageConfig => {}
            MediaType::Other(s) if s == DOCKER_CONFIG => {}
            m => {
                return Err(bad(format!(
                    "config has media type {m}, not an image config"
                )))
            }
        }
        let config_digest = parse_digest(cfg.digest()).ok_or_else(|| {
            bad(format!(
                "config digest {} is not a sha256 digest",
                cfg.digest()
            ))
        })?;
        let present = |d: &Digest, want: u64, what: &str| -> Result<()> {
            let size = self.blob_size(d)?;
            if size != want {
                return Err(bad(format!(
                    "{what} {d} is {size} bytes, the manifest says {want}"
                )));
            }
            Ok(())
        };
        present(&config_digest, cfg.size(), "config")?;

        let config_bytes = self.read_blob(&config_digest)?;
        let bad_config = |reason: String| StoreError::InvalidConfig {
            digest: config_digest.clone(),
            reason,
        };
        let config: ImageConfiguration = serde_json::from_slice(&config_bytes)
            .map_err(|e| bad_config(format!("not an image config: {e}")))?;
        if config.rootfs().typ() != "layers" {
            return Err(bad_config(format!(
                "rootfs type {:?} (want \"layers\")",
                config.rootfs().typ()
            )));
        }
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != manifest.layers().len() {
            return Err(bad(format!(
                "{} layers, but config {config_digest} lists {} diff ids",
                manifest.layers().len(),
                diff_ids.len()
            )));
        }
        let mut layers = Vec::with_capacity(diff_ids.len());
        for (l, diff) in manifest.layers().iter().zip(diff_ids) {
            let blob = parse_digest(l.digest()).ok_or_else(|| {
                bad(format!(
                    "layer digest {} is not a sha256 digest",
                    l.digest()
                ))
            })?;
            if !is_layer_media_type(l.media_type()) {
                return Err(bad(format!(
                    "layer {blob} has media type {}, not a layer",
                    l.media_type()
                )));
            }
            present(&blob, l.size(), "layer")?;
            let diff_id: Digest = diff
                .parse()
                .map_err(|_| bad_config(format!("diff id {diff:?} is not a sha256 digest")))?;
            layers.push(Layer {
                blob,
                diff_id,
                size: l.size(),
                media_type: l.media_type().to_string(),
            });
        }
        let record = ImageRecord {
            config: config_digest,
            media_type,
            size: layers.iter().map(|l| l.size).sum(),
            layers,
            created: config.created().clone(),
            added: Some(now_rfc3339()),
        };
        Ok(Checked { record, config })
    }

    /// Records the image whose manifest blob is `manifest_digest` (config and layer blobs
    /// must be present) and points `tags` at it (moving them from other images). A
    /// reference with a digest and no tag adds no tag: such an image is found by digest.
    pub fn commit_image(&self, manifest_digest: &Digest, tags: &[Reference]) -> Result<Image> {
        let _lease = self.lease()?;
        let checked = self.check_image(manifest_digest)?;
        let keys: Vec<String> = tags
            .iter()
            .filter(|r| r.tag.is_some() || r.digest.is_none())
            .map(tag_key)
            .collect();
        let (record, tags) = self.update_meta(|meta| {
            let record = meta
                .images
                .entry(manifest_digest.clone())
                .or_insert(checked.record)
                .clone();
            for k in keys {
                meta.tags.insert(k, manifest_digest.clone());
            }
            Ok((record, meta.tags_of(manifest_digest)))
        })?;
        Ok(make_image(manifest_digest, &record, checked.config, tags))
    }

    /// Points the tag `target` at the image `source` names (a tag, reference or id).
    pub fn tag(&self, source: &str, target: &Reference) -> Result<()> {
        if target.digest.is_some() {
            return Err(StoreError::InvalidTag {
                target: target.to_string(),
                reason: "a tag cannot contain a digest",
            });
        }
        self.update_meta(|meta| {
            let manifest = match lookup(meta, source)? {
                Found::Tag(_, m) => m,
                Found::Manifests(ms) => {
                    best(meta, &ms).ok_or_else(|| StoreError::ImageNotFound(source.to_string()))?
                }
            };
            meta.tags.insert(tag_key(target), manifest);
            Ok(())
        })
    }

    /// Finds an image by full reference, short name ("busybox" =
    /// docker.io/library/busybox:latest), `name@digest`, or image id (config digest; full,
    /// or a prefix of at least 12 hex digits; "sha256:" optional).
    pub fn resolve(&self, name_or_id: &str) -> Result<Image> {
        let meta = self.read_meta()?;
        let manifest = match lookup(&meta, name_or_id)? {
            Found::Tag(_, m) => m,
            Found::Manifests(ms) => {
                best(&meta, &ms).ok_or_else(|| StoreError::ImageNotFound(name_or_id.to_string()))?
            }
        };
        self.image_of(&meta, &manifest)
            .ok_or_else(|| StoreError::ImageNotFound(name_or_id.to_string()))?
    }

    /// Every recorded image, newest first.
    pub fn list(&self) -> Result<Vec<Image>> {
        let meta = self.read_meta()?;
        let mut out = Vec::with_capacity(meta.images.len());
        for m in meta.images.keys() {
            if let Some(img) = self.image_of(&meta, m) {
                out.push(img?);
            }
        }
        out.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| a.id.cmp(&b.id)));
        Ok(out)
    }

    fn image_of(&self, meta: &Meta, manifest: &Digest) -> Option<Result<Image>> {
        let record = meta.images.get(manifest)?;
        Some(
            self.read_config(&record.config)
                .map(|config| make_image(manifest, record, config, meta.tags_of(manifest))),
        )
    }

    fn read_config(&self, d: &Digest) -> Result<ImageConfiguration> {
        serde_json::from_slice(&self.read_blob(d)?).map_err(|e| StoreError::InvalidConfig {
            digest: d.clone(),
            reason: format!("not an image config: {e}"),
        })
    }

    /// `docker rmi`. By tag: removes the tag, and the image record too once it has no tag
    /// left. By id (or digest): removes the image and all its tags, unless they span several
    /// repositories and `force` is false. Blobs and unpacked layers are left to [`Store::gc`];
    /// whether containers still use the image is the caller's check.
    pub fn remove(&self, name_or_id: &str, force: bool) -> Result<Removed> {
        self.update_meta(|meta| {
            let mut removed = Removed::default();
            let manifests = match lookup(meta, name_or_id)? {
                Found::Tag(key, m) => {
                    meta.tags.remove(&key);
                    removed.untagged.push(key);
                    if !meta.tags_of(&m).is_empty() {
                        return Ok(removed);
                    }
                    vec![m]
                }
                Found::Manifests(ms) => {
                    let tags: Vec<String> = ms.iter().flat_map(|m| meta.tags_of(m)).collect();
                    let repos: BTreeSet<&str> = tags.iter().map(|t| tag_repository(t)).collect();
                    if repos.len() > 1 && !force {
                        let id = ms
                            .first()
                            .and_then(|m| meta.images.get(m))
                            .map(|r| r.config.clone())
                            .ok_or_else(|| StoreError::ImageNotFound(name_or_id.to_string()))?;
                        return Err(StoreError::RemoveConflict {
                            name: name_or_id.to_string(),
                            id,
                            tags,
                        });
                    }
                    for t in &tags {
                        meta.tags.remove(t);
                    }
                    removed.untagged = tags;
                    ms
                }
            };
            for m in manifests {
                if let Some(r) = meta.images.remove(&m) {
                    if !removed.deleted.contains(&r.config) {
                        removed.deleted.push(r.config);
                    }
                }
            }
            Ok(removed)
        })
    }
}

fn make_image(
    manifest: &Digest,
    record: &ImageRecord,
    config: ImageConfiguration,
    tags: Vec<String>,
) -> Image {
    Image {
        id: record.config.clone(),
        manifest_digest: manifest.clone(),
        config,
        layers: record.layers.clone(),
        tags,
        size: record.size,
        created: record.created.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> Digest {
        format!("sha256:{}", c.to_string().repeat(64))
            .parse()
            .unwrap()
    }

    fn meta() -> Meta {
        let mut m = Meta::default();
        for (manifest, config) in [('1', 'a'), ('2', 'b'), ('3', 'a')] {
            m.images.insert(
                d(manifest),
                ImageRecord {
                    config: d(config),
                    media_type: String::new(),
                    layers: vec![],
                    size: 0,
                    created: None,
                    added: None,
                },
            );
        }
        m.tags
            .insert("docker.io/library/busybox:latest".into(), d('1'));
        m.tags.insert("localhost/x:y".into(), d('2'));
        m
    }

    fn manifests(f: Found) -> Vec<Digest> {
        match f {
            Found::Tag(_, m) => vec![m],
            Found::Manifests(ms) => ms,
        }
    }

    #[test]
    fn lookup_by_name_and_id() {
        let m = meta();
        assert_eq!(manifests(lookup(&m, "busybox").unwrap()), vec![d('1')]);
        assert_eq!(
            manifests(lookup(&m, "docker.io/library/busybox:latest").unwrap()),
            vec![d('1')]
        );
        assert_eq!(
            manifests(lookup(&m, "localhost/x:y").unwrap()),
            vec![d('2')]
        );
        assert_eq!(manifests(lookup(&m, "bbbbbbbbbbbb").unwrap()), vec![d('2')]);
        assert_eq!(
            manifests(lookup(&m, &format!("sha256:{}", "b".repeat(64))).unwrap()),
            vec![d('2')]
        );
        // Two manifests share config a: an id names both.
        assert_eq!(
            manifests(lookup(&m, "aaaaaaaaaaaaaa").unwrap()),
            vec![d('1'), d('3')]
        );
        assert_eq!(best(&m, &[d('1'), d('3')]), Some(d('1')));
        // A manifest digest works too.
        assert_eq!(
            manifests(lookup(&m, &"3".repeat(64)).unwrap()),
            vec![d('3')]
        );
        for missing in [
            "nope",
            "bbbb",
            "sha256:bbbb",
            "cccccccccccc",
            "localhost/x:z",
        ] {
            assert!(
                matches!(lookup(&m, missing), Err(StoreError::ImageNotFound(n)) if n == missing),
                "{missing}"
            );
        }
        assert!(matches!(lookup(&m, "UPPER"), Err(StoreError::Reference(_))));
    }

    #[test]
    fn ambiguous_short_id() {
        let mut m = meta();
        let c1: Digest = format!("sha256:{}{}", "e".repeat(12), "1".repeat(52))
            .parse()
            .unwrap();
        let c2: Digest = format!("sha256:{}{}", "e".repeat(12), "2".repeat(52))
            .parse()
            .unwrap();
        for (man, cfg) in [(d('7'), c1), (d('8'), c2)] {
            let mut r = m.images[&d('1')].clone();
            r.config = cfg;
            m.images.insert(man, r);
        }
        assert!(matches!(
            lookup(&m, "eeeeeeeeeeee"),
            Err(StoreError::AmbiguousId { .. })
        ));
        assert!(lookup(&m, "eeeeeeeeeeee1").is_ok());
    }

    #[test]
    fn removed_prints_like_docker() {
        let r = Removed {
            untagged: vec![
                "docker.io/library/busybox:latest".into(),
                "localhost/x:y".into(),
            ],
            deleted: vec![d('a')],
        };
        assert_eq!(
            r.to_string(),
            format!(
                "Untagged: busybox:latest\nUntagged: localhost/x:y\nDeleted: sha256:{}",
                "a".repeat(64)
            )
        );
        assert_eq!(familiar("docker.io/user/app:v1"), "user/app:v1");
    }

    #[test]
    fn tag_repository_keeps_ports() {
        assert_eq!(
            tag_repository("localhost:5000/a/b:v1"),
            "localhost:5000/a/b"
        );
        assert_eq!(
            tag_repository("docker.io/library/busybox:latest"),
            "docker.io/library/busybox"
        );
    }
}
