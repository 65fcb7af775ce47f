//! The content-addressed image store, shared by every image and container on the host.
//!
//! Layout under the root (`<berth root>/image`):
//! - `blobs/sha256/<hex>`: immutable, verified blobs (manifests, configs, compressed layers);
//! - `ingest/`: `<hex>.partial` resumable downloads, `<hex>.lock` per-digest ingest locks,
//!   and `*.tmp-<pid>-<n>` temporaries;
//! - `layers/<diff_id hex>/fs`: each layer unpacked once (overlay whiteouts), renamed into
//!   place whole; `layers/<hex>.lock` serialises unpacking of one layer;
//! - `meta.json`: image records and tags, rewritten (temp + rename) under `store.lock`;
//! - `gc.lock`: shared by operations that add content ([`Lease`]), exclusive for [`Store::gc`],
//!   so gc never deletes a blob between its download and the image commit that references it.
//!
//! Every change becomes visible by one rename, after an fsync, so a crash at any point leaves
//! at worst temporaries (named with the writer's pid; [`Store::open`] and [`Store::gc`] remove
//! those of dead processes) and never a half-written blob, layer or metadata file.

mod blobs;
mod gc;
mod images;
mod layers;
mod lock;
mod meta;

use std::fs::{self, DirBuilder, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::digest::Digest;
use crate::reference::ReferenceError;

pub use blobs::{Ingest, IngestWriter};
pub use gc::{human_size, GcReport};
pub use images::{familiar, Removed};
pub(crate) use lock::FileLock;

/// Largest blob [`Store::read_blob`] returns: manifests and configs are kilobytes; anything
/// bigger is a layer or an attack.
pub const MAX_METADATA_BLOB: u64 = 16 << 20;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("blob {0} is not in the store")]
    BlobNotFound(Digest),
    #[error(
        "blob {digest} is {size} bytes, over the {limit}-byte limit for manifests and configs"
    )]
    BlobTooLarge {
        digest: Digest,
        size: u64,
        limit: u64,
    },
    #[error("manifest {digest}: {reason}")]
    InvalidManifest { digest: Digest, reason: String },
    #[error("image config {digest}: {reason}")]
    InvalidConfig { digest: Digest, reason: String },
    #[error("unpacking layer {blob} into {}: {source}", path.display())]
    Unpack {
        blob: Digest,
        path: PathBuf,
        source: Box<crate::unpack::UnpackError>,
    },
    #[error(
        "layer {blob}: unpacked content has diff id {actual}, but the image config says {expected}"
    )]
    DiffIdMismatch {
        blob: Digest,
        expected: Digest,
        actual: Digest,
    },
    #[error("image {0:?} not found")]
    ImageNotFound(String),
    #[error("short id {id:?} matches several images: {}", matches.join(", "))]
    AmbiguousId { id: String, matches: Vec<String> },
    #[error("unable to remove image {name:?} ({id}): it is tagged in several repositories ({}); remove the tags one by one or force", tags.join(", "))]
    RemoveConflict {
        name: String,
        id: Digest,
        tags: Vec<String>,
    },
    #[error("tagging {target}: {reason}")]
    InvalidTag {
        target: String,
        reason: &'static str,
    },
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("image metadata {}: {reason}", path.display())]
    CorruptMeta { path: PathBuf, reason: String },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Maps an io::Error to [`StoreError::Io`] naming the operation and the path.
pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The store. Cheap to clone; all state is on disk, so any number of `Store`s, in any
/// number of threads and processes, may use one root at once.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// Keeps [`Store::gc`] from running while held: take one around a multi-step operation (a
/// pull or a load: blobs first, image record last) so that its blobs are not collected
/// before the record that references them exists. Never call `gc` while holding one.
#[derive(Debug)]
pub struct Lease {
    _lock: FileLock,
}

/// An image as recorded in the store.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// The image id, as docker shows it: the config digest.
    pub id: Digest,
    pub manifest_digest: Digest,
    pub config: oci_spec::image::ImageConfiguration,
    pub layers: Vec<Layer>,
    /// Full references: "docker.io/library/busybox:latest".
    pub tags: Vec<String>,
    /// Sum of the layer blob sizes (compressed, as stored).
    pub size: u64,
    /// From the config.
    pub created: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    /// The stored (usually compressed) blob.
    pub blob: Digest,
    /// Digest of the uncompressed tar: names the unpacked layer.
    pub diff_id: Digest,
    pub size: u64,
    pub media_type: String,
}

impl Store {
    /// Opens (creating if needed) the store at `root`, and removes temporaries left by dead
    /// processes. Partial downloads are kept, for resume.
    pub fn open(root: &Path) -> Result<Store> {
        let store = Store {
            root: root.to_path_buf(),
        };
        // The berth root above us (e.g. /var/lib/berth) on a fresh host.
        if let Some(parent) = root.parent() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(parent)
                .map_err(io_err("creating", parent))?;
        }
        // Layers are lower dirs of containers running in user namespaces: their path must
        // be traversable by everyone. Blobs and ingest stay private.
        for (dir, mode) in [
            (store.root.clone(), 0o711),
            (store.root.join("blobs"), 0o700),
            (store.blobs_dir(), 0o700),
            (store.ingest_dir(), 0o700),
            (store.layers_dir(), 0o711),
        ] {
            match DirBuilder::new().mode(mode).create(&dir) {
                Ok(()) => fs::set_permissions(&dir, fs::Permissions::from_mode(mode))
                    .map_err(io_err("setting the mode of", &dir))?,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err("creating", &dir)(e)),
            }
        }
        // Best effort: a leftover that cannot be removed now is retried by gc, which reports it.
        let _ = store.remove_stale_temps();
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob `d` lives (whether or not it is present).
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.blobs_dir().join(d.hex())
    }

    /// The unpacked layer's root directory (present once [`Store::ensure_layer`] returned).
    pub fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.layers_dir().join(diff_id.hex()).join("fs")
    }

    /// Holds gc off until dropped; see [`Lease`].
    pub fn lease(&self) -> Result<Lease> {
        let path = self.root.join("gc.lock");
        let lock = FileLock::shared(&path).map_err(io_err("locking", &path))?;
        Ok(Lease { _lock: lock })
    }

    pub(crate) fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    pub(crate) fn ingest_dir(&self) -> PathBuf {
        self.root.join("ingest")
    }

    pub(crate) fn layers_dir(&self) -> PathBuf {
        self.root.join("layers")
    }

    /// A fresh temporary path in `dir`; the name carries our pid so that cleanup can tell
    /// a crashed writer's leftovers from a live writer's work.
    pub(crate) fn temp_path(dir: &Path, prefix: &str) -> PathBuf {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        dir.join(format!("{prefix}.tmp-{}-{n}", std::process::id()))
    }
}

/// The pid in a temporary's name (`<anything>.tmp-<pid>-<n>`).
pub(crate) fn temp_owner(name: &str) -> Option<i32> {
    let (_, rest) = name.rsplit_once(".tmp-")?;
    let pid = rest.split('-').next()?;
    pid.parse().ok().filter(|p| *p > 0)
}

/// Whether `pid` is a live process (EPERM means it exists but is not ours to signal).
pub(crate) fn pid_alive(pid: i32) -> bool {
    if pid == std::process::id() as i32 {
        return true;
    }
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// fsync a directory, making the renames and unlinks in it durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing directory", dir))
}

/// Removes a file or a whole tree. Unpacked layers may hold directories without write
/// permission (mode 0555 and the like), which remove_dir_all cannot empty unless we are
/// root; make directories writable and retry.
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return fs::remove_file(path);
    }
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            make_dirs_writable(path);
            fs::remove_dir_all(path)
        }
        Err(e) => Err(e),
    }
}

/// Walks a tree without recursion (unpacked layers can be arbitrarily deep), calling `f`
/// on every entry, directories before their contents.
fn walk(root: &Path, mut f: impl FnMut(&Path, &fs::Metadata)) {
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = fs::symlink_metadata(&p) else {
            continue;
        };
        f(&p, &meta);
        if meta.is_dir() {
            if let Ok(rd) = fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        }
    }
}

fn make_dirs_writable(path: &Path) {
    walk(path, |p, m| {
        if m.is_dir() {
            let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o700));
        }
    });
}

/// Size in bytes of a file or tree (regular files' lengths), for gc reports.
pub(crate) fn tree_size(path: &Path) -> u64 {
    let mut total = 0;
    walk(path, |_, m| {
        if m.is_file() {
            total += m.len();
        }
    });
    total
}

/// Deletes a temporary on drop unless disarmed: error paths clean up after themselves.
pub(crate) struct TempGuard {
    path: Option<PathBuf>,
}

impl TempGuard {
    pub(crate) fn new(path: PathBuf) -> TempGuard {
        TempGuard { path: Some(path) }
    }

    pub(crate) fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }

    pub(crate) fn disarm(&mut self) {
        self.path = None;
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = remove_tree(&p);
        }
    }
}

/// The current time as RFC 3339 UTC ("2026-11-29T10:00:00Z"), for image records and configs.
pub(crate) fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339(secs)
}

pub(crate) fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_carry_the_pid() {
        let p = Store::temp_path(Path::new("/x"), "abc");
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(temp_owner(name), Some(std::process::id() as i32));
        assert_eq!(temp_owner("meta.json.tmp-42-7"), Some(42));
        assert_eq!(temp_owner("abc.partial"), None);
        assert_eq!(temp_owner("x.tmp-zz-1"), None);
        assert!(pid_alive(std::process::id() as i32));
    }

    #[test]
    fn rfc3339_known_values() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_798_761_599), "2026-12-31T23:59:59Z");
    }
}
