//! Garbage collection and crash cleanup.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::Path;

use super::{
    fsync_dir, io_err, pid_alive, remove_tree, temp_owner, tree_size, FileLock, Result, Store,
};
use crate::digest::Digest;

/// What [`Store::gc`] deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    pub blobs_removed: usize,
    pub layers_removed: usize,
    /// Partial downloads and temporaries of dead processes.
    pub temps_removed: usize,
    pub bytes_freed: u64,
}

impl std::fmt::Display for GcReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Deleted {} blobs, {} layers, {} temporaries\nTotal reclaimed space: {}",
            self.blobs_removed,
            self.layers_removed,
            self.temps_removed,
            human_size(self.bytes_freed)
        )
    }
}

/// "12.3MB", as docker prints sizes (powers of 1000).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
            + UNITS[u]
    }
}

fn is_digest_hex(name: &str) -> bool {
    name.len() == 64
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn entries(dir: &Path) -> Result<Vec<(String, std::path::PathBuf)>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(io_err("listing", dir)(e)),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(io_err("listing", dir))?;
        if let Some(name) = e.file_name().to_str() {
            out.push((name.to_string(), e.path()));
        }
    }
    Ok(out)
}

impl Store {
    /// Removes temporaries (`*.tmp-<pid>-<n>`) whose writer is dead: crash leftovers.
    pub(crate) fn remove_stale_temps(&self) -> Result<GcReport> {
        let mut report = GcReport::default();
        for dir in [
            self.root.clone(),
            self.ingest_dir(),
            self.layers_dir(),
            self.blobs_dir(),
        ] {
            for (name, path) in entries(&dir)? {
                if temp_owner(&name).is_some_and(|pid| !pid_alive(pid)) {
                    let size = tree_size(&path);
                    // Another cleaner (open or gc elsewhere) may be at it too.
                    if let Err(e) = remove_tree(&path) {
                        if path.exists() {
                            return Err(io_err("removing stale temporary", &path)(e));
                        }
                    }
                    report.temps_removed += 1;
                    report.bytes_freed += size;
                }
            }
        }
        Ok(report)
    }

    /// Deletes every blob and unpacked layer that no image record references (layers in
    /// `keep_layers`, used by containers, are kept), partial downloads nobody is resuming
    /// right now, and crash leftovers. Waits for running [`Lease`](super::Lease)s (pulls,
    /// loads) to finish, and holds new ones off while it runs.
    pub fn gc(&self, keep_layers: &HashSet<Digest>) -> Result<GcReport> {
        let gc_lock = self.root.join("gc.lock");
        let _gc = FileLock::exclusive(&gc_lock).map_err(io_err("locking", &gc_lock))?;
        // No lease is held, so nothing can add references until we are done; tag and rmi
        // only move or drop them.
        let meta = self.read_meta()?;
        let mut blobs: HashSet<&str> = HashSet::new();
        let mut layers: HashSet<&str> = keep_layers.iter().map(|d| d.hex()).collect();
        for (manifest, r) in &meta.images {
            blobs.insert(manifest.hex());
            blobs.insert(r.config.hex());
            for l in &r.layers {
                blobs.insert(l.blob.hex());
                layers.insert(l.diff_id.hex());
            }
        }

        let mut report = self.remove_stale_temps()?;
        for (name, path) in entries(&self.ingest_dir())? {
            if let Some(hex) = name.strip_suffix(".partial") {
                // Double-check that no ingest (of a process that took no lease) is writing it.
                let lock_path = self.ingest_dir().join(format!("{hex}.lock"));
                if let Some(lock) =
                    FileLock::try_exclusive(&lock_path).map_err(io_err("locking", &lock_path))?
                {
                    let size = tree_size(&path);
                    fs::remove_file(&path).map_err(io_err("removing", &path))?;
                    report.temps_removed += 1;
                    report.bytes_freed += size;
                    lock.unlink();
                }
            }
        }

        for (name, path) in entries(&self.blobs_dir())? {
            if is_digest_hex(&name) && !blobs.contains(name.as_str()) {
                let size = tree_size(&path);
                fs::remove_file(&path).map_err(io_err("removing", &path))?;
                report.blobs_removed += 1;
                report.bytes_freed += size;
            }
        }
        fsync_dir(&self.blobs_dir())?;

        for (name, path) in entries(&self.layers_dir())? {
            if is_digest_hex(&name) && path.is_dir() && !layers.contains(name.as_str()) {
                // Rename first: a layer directory that exists must be complete, and deleting
                // a tree in place is not atomic. A crash mid-delete leaves a temporary.
                let doomed = Store::temp_path(&self.layers_dir(), &name);
                fs::rename(&path, &doomed).map_err(io_err("renaming for removal", &path))?;
                let size = tree_size(&doomed);
                remove_tree(&doomed).map_err(io_err("removing", &doomed))?;
                report.layers_removed += 1;
                report.bytes_freed += size;
            }
        }
        fsync_dir(&self.layers_dir())?;

        // Lock files nobody holds (left by crashed or lock-only users).
        for dir in [self.ingest_dir(), self.layers_dir()] {
            for (name, path) in entries(&dir)? {
                if name.ends_with(".lock") {
                    if let Some(lock) =
                        FileLock::try_exclusive(&path).map_err(io_err("locking", &path))?
                    {
                        lock.unlink();
                    }
                }
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_prints_like_docker() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(12_300_000), "12.3MB");
        assert_eq!(human_size(1_000), "1kB");
        let r = GcReport {
            blobs_removed: 3,
            layers_removed: 2,
            temps_removed: 1,
            bytes_freed: 1_500,
        };
        assert_eq!(
            r.to_string(),
            "Deleted 3 blobs, 2 layers, 1 temporaries\nTotal reclaimed space: 1.5kB"
        );
    }
}
