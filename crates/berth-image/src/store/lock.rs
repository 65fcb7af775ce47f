//! flock(2)-based locks. flock locks belong to an open file description, so they exclude
//! both other processes and other threads of this process (each lock opens its own fd),
//! and the kernel drops them when the holder dies: a crash never leaves a lock held.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

/// A held lock on a lock file; released when dropped.
#[derive(Debug)]
pub(crate) struct FileLock {
    _file: File,
    path: PathBuf,
}

impl FileLock {
    /// Blocks until the exclusive lock on `path` is held.
    pub(crate) fn exclusive(path: &Path) -> io::Result<FileLock> {
        Self::acquire(path, FlockOperation::LockExclusive).and_then(blocking_held)
    }

    /// Blocks until a shared lock on `path` is held.
    pub(crate) fn shared(path: &Path) -> io::Result<FileLock> {
        Self::acquire(path, FlockOperation::LockShared).and_then(blocking_held)
    }

    /// The exclusive lock if nobody holds `path` now, else None.
    pub(crate) fn try_exclusive(path: &Path) -> io::Result<Option<FileLock>> {
        Self::acquire(path, FlockOperation::NonBlockingLockExclusive)
    }

    fn acquire(path: &Path, op: FlockOperation) -> io::Result<Option<FileLock>> {
        loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_CLOEXEC)
                .open(path)?;
            loop {
                match flock(&file, op) {
                    Ok(()) => break,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(rustix::io::Errno::WOULDBLOCK) => return Ok(None),
                    Err(e) => return Err(e.into()),
                }
            }
            // Lock files are unlinked by their last holder (see `unlink`). If that happened
            // while we waited, we hold a lock on an orphaned inode that a newcomer would not
            // see: start again on whatever the path names now.
            let held = file.metadata()?;
            match std::fs::metadata(path) {
                Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {
                    return Ok(Some(FileLock {
                        _file: file,
                        path: path.to_path_buf(),
                    }))
                }
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Removes the lock file while still holding it, then releases the lock. Safe with the
    /// inode check in `acquire`: waiters on the old inode retry on the path.
    pub(crate) fn unlink(self) {
        // Best effort: a leftover lock file is harmless (gc removes it).
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A blocking flock never reports "would block"; map the impossible case to an error.
fn blocking_held(l: Option<FileLock>) -> io::Result<FileLock> {
    l.ok_or_else(|| io::Error::from(io::ErrorKind::WouldBlock))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn exclusive_excludes_threads_and_survives_unlink() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let inside = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let path = path.clone();
                let inside = inside.clone();
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        let l = FileLock::exclusive(&path).unwrap();
                        assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                        std::thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                        l.unlink();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }

    #[test]
    fn shared_and_try_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.lock");
        let a = FileLock::shared(&path).unwrap();
        let b = FileLock::shared(&path).unwrap();
        assert!(FileLock::try_exclusive(&path).unwrap().is_none());
        drop((a, b));
        assert!(FileLock::try_exclusive(&path).unwrap().is_some());
    }
}
