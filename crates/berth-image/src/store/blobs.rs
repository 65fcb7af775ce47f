//! Blobs: written to `ingest/` first, verified, fsynced, then renamed into `blobs/sha256/`,
//! so a blob path that exists always holds exactly the content its name promises.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{
    fsync_dir, io_err, FileLock, Lease, Result, Store, StoreError, TempGuard, MAX_METADATA_BLOB,
};
use crate::digest::{Digest, Hasher};

const BUF: usize = 256 * 1024;

impl Store {
    /// Stores the content of `r`, returning its digest and size. With `expected`, the
    /// content must hash to it (else nothing is stored and the error names both digests);
    /// if that blob is already present, `r` is not read at all.
    pub fn put_blob(&self, r: &mut dyn Read, expected: Option<&Digest>) -> Result<(Digest, u64)> {
        if let Some(d) = expected {
            if let Ok(m) = fs::metadata(self.blob_path(d)) {
                return Ok((d.clone(), m.len()));
            }
        }
        let _lease = self.lease()?;
        let mut tmp = TempGuard::new(Store::temp_path(&self.ingest_dir(), "put"));
        let tmp_path = tmp.path().to_path_buf();
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp_path)
            .map_err(io_err("creating", &tmp_path))?;
        let mut hasher = Hasher::new();
        let mut buf = vec![0u8; BUF];
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err("reading blob content for", &tmp_path)(e)),
            };
            hasher.update(&buf[..n]);
            f.write_all(&buf[..n])
                .map_err(io_err("writing", &tmp_path))?;
        }
        let size = hasher.len();
        let actual = hasher.finish();
        if let Some(expected) = expected {
            if *expected != actual {
                return Err(StoreError::DigestMismatch {
                    what: "storing blob".into(),
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        f.sync_all().map_err(io_err("syncing", &tmp_path))?;
        drop(f);
        self.install_blob(&tmp_path, &actual)?;
        tmp.disarm();
        Ok((actual, size))
    }

    /// Stores an in-memory blob.
    pub fn put_blob_bytes(&self, data: &[u8], expected: Option<&Digest>) -> Result<Digest> {
        self.put_blob(&mut &data[..], expected).map(|(d, _)| d)
    }

    /// Renames a complete, synced, verified temporary file into place as blob `d`. If the
    /// blob is already there (a concurrent writer won), the temporary is removed instead.
    pub(crate) fn install_blob(&self, tmp: &Path, d: &Digest) -> Result<()> {
        let dest = self.blob_path(d);
        if dest.exists() {
            let _ = fs::remove_file(tmp);
            return Ok(());
        }
        fs::rename(tmp, &dest).map_err(io_err("renaming into place", &dest))?;
        fsync_dir(&self.blobs_dir())
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Size of a stored blob.
    pub fn blob_size(&self, d: &Digest) -> Result<u64> {
        let path = self.blob_path(d);
        match fs::metadata(&path) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(StoreError::BlobNotFound(d.clone()))
            }
            Err(e) => Err(io_err("reading", &path)(e)),
        }
    }

    /// Opens a stored blob for streaming (layers).
    pub fn open_blob(&self, d: &Digest) -> Result<File> {
        let path = self.blob_path(d);
        File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StoreError::BlobNotFound(d.clone())
            } else {
                io_err("opening", &path)(e)
            }
        })
    }

    /// Reads a small blob (manifest, config) whole, re-verifying its digest: these are
    /// parsed and trusted, and re-hashing a few kilobytes is cheap insurance against a
    /// corrupted disk.
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        let path = self.blob_path(d);
        let f = self.open_blob(d)?;
        let size = f.metadata().map_err(io_err("reading", &path))?.len();
        if size > MAX_METADATA_BLOB {
            return Err(StoreError::BlobTooLarge {
                digest: d.clone(),
                size,
                limit: MAX_METADATA_BLOB,
            });
        }
        let mut data = Vec::with_capacity(size as usize);
        f.take(MAX_METADATA_BLOB)
            .read_to_end(&mut data)
            .map_err(io_err("reading", &path))?;
        let actual = crate::digest::Digest::of(&data);
        if actual != *d {
            return Err(StoreError::DigestMismatch {
                what: format!("stored blob {} is corrupt", path.display()),
                expected: d.clone(),
                actual,
            });
        }
        Ok(data)
    }

    /// Starts (or resumes) ingesting blob `d`, holding its ingest lock: concurrent ingests
    /// of one digest, in threads or processes, queue here, and those that come after a
    /// commit find the blob [`Ingest::already_present`].
    pub fn begin_ingest(&self, d: &Digest) -> Result<Ingest> {
        let blob = self.blob_path(d);
        if let Ok(f) = File::open(&blob) {
            return Ok(Ingest::present(d, blob, f));
        }
        let lease = self.lease()?;
        let lock_path = self.ingest_dir().join(format!("{}.lock", d.hex()));
        let lock = FileLock::exclusive(&lock_path).map_err(io_err("locking", &lock_path))?;
        if let Ok(f) = File::open(&blob) {
            lock.unlink();
            return Ok(Ingest::present(d, blob, f));
        }
        let partial = self.ingest_dir().join(format!("{}.partial", d.hex()));
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o644)
            .open(&partial)
            .map_err(io_err("opening", &partial))?;
        let prefix = hash_file(&mut file).map_err(io_err("reading", &partial))?;
        let complete = !prefix.is_empty() && prefix.clone().finish() == *d;
        let ingest = Ingest {
            digest: d.clone(),
            blob: blob.clone(),
            partial,
            blobs_dir: self.blobs_dir(),
            writer: IngestWriter {
                file,
                hasher: prefix.clone(),
            },
            present: false,
            partial_len: prefix.len(),
            prefix,
            lock: Some(lock),
            _lease: Some(lease),
        };
        if complete {
            // Downloaded whole before an interruption kept it from being committed.
            ingest.commit()?;
            let f = File::open(&blob).map_err(io_err("opening", &blob))?;
            return Ok(Ingest::present(d, blob, f));
        }
        Ok(ingest)
    }
}

fn hash_file(f: &mut File) -> io::Result<Hasher> {
    f.seek(SeekFrom::Start(0))?;
    let mut h = Hasher::new();
    let mut buf = vec![0u8; BUF];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Ok(h),
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The write end of an [`Ingest`]: appends to the partial and hashes exactly the bytes the
/// file accepted.
pub struct IngestWriter {
    file: File,
    hasher: Hasher,
}

impl Write for IngestWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// A resumable ingest of one blob, holding the digest's lock. Write the rest of the content
/// with [`Ingest::writer`] (it appends to the partial), then [`Ingest::commit`]. Dropping it
/// without committing keeps the partial for the next attempt to resume.
pub struct Ingest {
    digest: Digest,
    blob: PathBuf,
    partial: PathBuf,
    blobs_dir: PathBuf,
    writer: IngestWriter,
    present: bool,
    partial_len: u64,
    prefix: Hasher,
    lock: Option<FileLock>,
    _lease: Option<Lease>,
}

impl Drop for Ingest {
    /// The partial stays for resume; the lock file goes (removed while held, which
    /// `FileLock` makes safe for waiters).
    fn drop(&mut self) {
        if let Some(lock) = self.lock.take() {
            lock.unlink();
        }
    }
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest")
            .field("digest", &self.digest)
            .field("present", &self.present)
            .field("partial_len", &self.partial_len)
            .finish()
    }
}

impl Ingest {
    fn present(d: &Digest, blob: PathBuf, f: File) -> Ingest {
        Ingest {
            digest: d.clone(),
            partial: blob.clone(),
            blobs_dir: PathBuf::new(),
            blob,
            writer: IngestWriter {
                file: f,
                hasher: Hasher::new(),
            },
            present: true,
            partial_len: 0,
            prefix: Hasher::new(),
            lock: None,
            _lease: None,
        }
    }

    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The blob is in the store: nothing to download.
    pub fn already_present(&self) -> bool {
        self.present
    }

    /// Bytes already downloaded by an earlier, interrupted attempt: resume from here.
    pub fn partial_len(&self) -> u64 {
        self.partial_len
    }

    /// The hash state of those bytes, to continue hashing the rest of the stream.
    pub fn prefix_hasher(&self) -> Hasher {
        self.prefix.clone()
    }

    /// Appends to the partial, hashing what it accepts. (For a present blob this is the
    /// blob opened read-only, so writes fail rather than touch it.)
    pub fn writer(&mut self) -> &mut IngestWriter {
        &mut self.writer
    }

    /// Verifies the whole partial against the digest and moves it into place. On a
    /// mismatch the partial is deleted (resuming it could never succeed) and the error names
    /// both digests.
    ///
    /// The digest is that of the prefix read back when the ingest began plus every byte
    /// the writer accepted since, so the blob is not read a second time; the partial's
    /// length must match that count (nothing else wrote to it: we hold its lock).
    pub fn commit(mut self) -> Result<()> {
        if self.present {
            return Ok(());
        }
        let partial = self.partial.clone();
        let file = &self.writer.file;
        file.sync_all().map_err(io_err("syncing", &partial))?;
        let on_disk = file.metadata().map_err(io_err("reading", &partial))?.len();
        let hasher = std::mem::take(&mut self.writer.hasher);
        let written = hasher.len();
        let actual = hasher.finish();
        if on_disk != written {
            let _ = fs::remove_file(&partial);
            return Err(StoreError::Io {
                op: "verifying",
                path: partial,
                source: io::Error::other(format!(
                    "the file holds {on_disk} bytes but {written} were written"
                )),
            });
        }
        if actual != self.digest {
            let _ = fs::remove_file(&partial);
            return Err(StoreError::DigestMismatch {
                what: format!("downloaded blob {}", partial.display()),
                expected: self.digest.clone(),
                actual,
            });
        }
        fs::rename(&partial, &self.blob).map_err(io_err("renaming into place", &self.blob))?;
        fsync_dir(&self.blobs_dir)
    }

    /// Gives up on this blob: deletes the partial so that the next attempt starts afresh
    /// (for a download that the registry answered with the wrong content).
    pub fn discard(self) {
        if !self.present {
            let _ = fs::remove_file(&self.partial);
        }
    }
}
