//! `meta.json`: image records and tags. Readers hold a shared flock of `store.lock`,
//! writers an exclusive one for the whole read-modify-write, and a write is temp + fsync +
//! rename, so readers see the old or the new file, never a torn one.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};

use serde::{Deserialize, Serialize};

use super::{fsync_dir, io_err, Layer, Result, Store, StoreError, TempGuard};
use crate::digest::Digest;
use crate::store::FileLock;

const META_VERSION: u32 = 1;

fn meta_version() -> u32 {
    META_VERSION
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Meta {
    #[serde(default = "meta_version")]
    pub version: u32,
    /// Keyed by manifest digest.
    #[serde(default)]
    pub images: BTreeMap<Digest, ImageRecord>,
    /// "docker.io/library/busybox:latest" → manifest digest.
    #[serde(default)]
    pub tags: BTreeMap<String, Digest>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ImageRecord {
    pub config: Digest,
    #[serde(default)]
    pub media_type: String,
    pub layers: Vec<Layer>,
    #[serde(default)]
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// When the image was recorded here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added: Option<String>,
}

impl Meta {
    /// The tags pointing at `manifest`, sorted.
    pub fn tags_of(&self, manifest: &Digest) -> Vec<String> {
        self.tags
            .iter()
            .filter(|(_, m)| *m == manifest)
            .map(|(t, _)| t.clone())
            .collect()
    }
}

impl Store {
    fn meta_path(&self) -> std::path::PathBuf {
        self.root.join("meta.json")
    }

    fn meta_lock(&self, exclusive: bool) -> Result<FileLock> {
        let path = self.root.join("store.lock");
        let l = if exclusive {
            FileLock::exclusive(&path)
        } else {
            FileLock::shared(&path)
        };
        l.map_err(io_err("locking", &path))
    }

    /// A consistent snapshot of the metadata.
    pub(crate) fn read_meta(&self) -> Result<Meta> {
        let _lock = self.meta_lock(false)?;
        self.load_meta()
    }

    /// Read-modify-write under the exclusive lock; nothing is written if `f` fails.
    pub(crate) fn update_meta<T>(&self, f: impl FnOnce(&mut Meta) -> Result<T>) -> Result<T> {
        let _lock = self.meta_lock(true)?;
        let mut meta = self.load_meta()?;
        let out = f(&mut meta)?;
        self.write_meta(&meta)?;
        Ok(out)
    }

    fn load_meta(&self) -> Result<Meta> {
        let path = self.meta_path();
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Meta::default()),
            Err(e) => return Err(io_err("reading", &path)(e)),
        };
        // Never fall back to an empty store on a parse error: that would lose every image
        // at the next write.
        let meta: Meta = serde_json::from_slice(&data).map_err(|e| StoreError::CorruptMeta {
            path: path.clone(),
            reason: format!("not valid json: {e}"),
        })?;
        if meta.version > META_VERSION {
            return Err(StoreError::CorruptMeta {
                path,
                reason: format!(
                    "format version {} is newer than this berth understands ({META_VERSION})",
                    meta.version
                ),
            });
        }
        Ok(meta)
    }

    fn write_meta(&self, meta: &Meta) -> Result<()> {
        let path = self.meta_path();
        let mut tmp = TempGuard::new(Store::temp_path(&self.root, "meta.json"));
        let data = serde_json::to_vec_pretty(meta).map_err(|e| StoreError::CorruptMeta {
            path: path.clone(),
            reason: format!("serialising: {e}"),
        })?;
        let tmp_path = tmp.path().to_path_buf();
        let mut f = fs::File::create(&tmp_path).map_err(io_err("creating", &tmp_path))?;
        f.write_all(&data)
            .and_then(|()| f.sync_all())
            .map_err(io_err("writing", &tmp_path))?;
        fs::rename(&tmp_path, &path).map_err(io_err("renaming into place", &path))?;
        tmp.disarm();
        fsync_dir(&self.root)
    }
}
