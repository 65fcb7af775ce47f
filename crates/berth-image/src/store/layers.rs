//! Unpacked layers: `layers/<diff_id hex>/fs`, each unpacked once and shared read-only by
//! every image and container that uses it.

use std::fs::{self, DirBuilder};
use std::io::BufReader;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::{fsync_dir, io_err, FileLock, Result, Store, StoreError, TempGuard};
use crate::digest::Digest;
use crate::unpack::{unpack_layer, UnpackOptions};

impl Store {
    /// Unpacks layer blob `blob` unless done already, and returns its root directory.
    /// The unpacked stream's digest must equal `diff_id` (from the image config), else
    /// nothing is kept. Unpacking goes to `layers/<hex>.tmp-<pid>-<n>` and is renamed into
    /// place whole, under a per-layer lock, so one layer is unpacked once even when several
    /// processes ask for it at the same time, and a crash leaves only the temporary.
    pub fn ensure_layer(&self, blob: &Digest, diff_id: &Digest) -> Result<PathBuf> {
        let dir = self.layers_dir().join(diff_id.hex());
        let fs_path = dir.join("fs");
        if dir.is_dir() {
            return Ok(fs_path);
        }
        let _lease = self.lease()?;
        let lock_path = self.layers_dir().join(format!("{}.lock", diff_id.hex()));
        let lock = FileLock::exclusive(&lock_path).map_err(io_err("locking", &lock_path))?;
        if dir.is_dir() {
            lock.unlink();
            return Ok(fs_path);
        }
        let result = self.unpack_into_place(blob, diff_id, &dir);
        // Success or not, nobody needs this lock file any more.
        lock.unlink();
        result.map(|()| fs_path)
    }

    fn unpack_into_place(&self, blob: &Digest, diff_id: &Digest, dir: &Path) -> Result<()> {
        let file = self.open_blob(blob)?;

        let mut tmp = TempGuard::new(Store::temp_path(&self.layers_dir(), diff_id.hex()));
        let tmp_dir = tmp.path().to_path_buf();
        let tmp_fs = tmp_dir.join("fs");
        for d in [&tmp_dir, &tmp_fs] {
            DirBuilder::new()
                .mode(0o755)
                .create(d)
                .map_err(io_err("creating", d))?;
        }
        let opts = UnpackOptions {
            id_shift: None,
            overlay_whiteouts: true,
        };
        let report = unpack_layer(BufReader::new(file), &tmp_fs, &opts).map_err(|source| {
            StoreError::Unpack {
                blob: blob.clone(),
                path: dir.join("fs"),
                source: Box::new(source),
            }
        })?;
        // The blob was verified when stored; this catches it rotting on disk since.
        if report.compressed_digest != *blob {
            return Err(StoreError::DigestMismatch {
                what: format!(
                    "stored layer blob {} is corrupt",
                    self.blob_path(blob).display()
                ),
                expected: blob.clone(),
                actual: report.compressed_digest,
            });
        }
        if report.diff_id != *diff_id {
            return Err(StoreError::DiffIdMismatch {
                blob: blob.clone(),
                expected: diff_id.clone(),
                actual: report.diff_id,
            });
        }
        // One syncfs instead of an fsync per file: the layer's content must be on disk
        // before the rename publishes it, or a crash could leave a "complete" layer with
        // empty files.
        let d = fs::File::open(&tmp_dir).map_err(io_err("opening", &tmp_dir))?;
        rustix::fs::syncfs(&d).map_err(|e| io_err("syncing", &tmp_dir)(e.into()))?;
        fs::rename(&tmp_dir, dir).map_err(io_err("renaming into place", dir))?;
        tmp.disarm();
        fsync_dir(&self.layers_dir())?;
        Ok(())
    }

    /// Unpacks layer blob `blob` into `dest` (which must not exist) with every owner
    /// shifted into a container's id range: the chowned copy a container gets where the
    /// kernel cannot present shared layers through idmapped mounts. The stream must match
    /// `diff_id`; on any error `dest` is removed.
    pub fn unpack_shifted(
        &self,
        blob: &Digest,
        diff_id: &Digest,
        dest: &Path,
        shift: crate::unpack::IdShift,
    ) -> Result<()> {
        let file = self.open_blob(blob)?;
        DirBuilder::new()
            .mode(0o755)
            .create(dest)
            .map_err(io_err("creating", dest))?;
        let opts = UnpackOptions {
            id_shift: Some(shift),
            overlay_whiteouts: true,
        };
        let r = unpack_layer(BufReader::new(file), dest, &opts)
            .map_err(|source| StoreError::Unpack {
                blob: blob.clone(),
                path: dest.to_path_buf(),
                source: Box::new(source),
            })
            .and_then(|report| {
                if report.diff_id != *diff_id {
                    return Err(StoreError::DiffIdMismatch {
                        blob: blob.clone(),
                        expected: diff_id.clone(),
                        actual: report.diff_id,
                    });
                }
                Ok(())
            });
        if r.is_err() {
            let _ = fs::remove_dir_all(dest);
        }
        r
    }

    /// Whether the layer is unpacked.
    pub fn has_layer(&self, diff_id: &Digest) -> bool {
        self.layers_dir().join(diff_id.hex()).is_dir()
    }
}
