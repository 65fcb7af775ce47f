//! Safe layer unpacking: an OCI layer (tar, optionally gzip or zstd) written into a
//! directory such that every byte lands under that directory, whatever the archive says.
//!
//! How: `dest` is opened once; every directory is then reached from that fd with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` and every node is created with an
//! `*at()` call that never follows its last component (see `fsops`). Paths are first
//! cleaned lexically (`path`): a leading `/` is dropped the way docker does, `..` that would
//! climb above the root is rejected. An entry whose parent is a symlink (even one pointing
//! inside the layer) is rejected, like containerd does, rather than resolved.
//!
//! The stream is hashed while it is read: `diff_id` is the sha256 of the uncompressed tar,
//! `compressed_digest` that of the bytes as given; both cover trailing padding.

mod entry;
mod fsops;
mod path;

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod random_tests;
#[cfg(test)]
mod tests;

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use thiserror::Error;

use crate::digest::{Digest, Hasher, HashingReader};

/// Chunks of tar stream handed from the reading thread to the writing one, and how many
/// may be in flight; and the copy buffer for file contents. Large, so that big files move
/// in few syscalls.
const CHUNK: usize = 256 * 1024;
const QUEUE: usize = 16;
const COPY_BUF: usize = 1024 * 1024;

/// Shifts ownership into a host id range: container id `n` is written as `base + n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdShift {
    /// Host uid of container uid 0.
    pub uid: u32,
    /// Host gid of container gid 0.
    pub gid: u32,
    /// Number of ids in the range; an entry owned by an id `>= size` is an error.
    pub size: u32,
}

#[derive(Debug, Clone, Default)]
pub struct UnpackOptions {
    /// Shift every uid/gid by this map when writing (fallback for kernels without
    /// idmapped mounts); `None` keeps the tar's ownership.
    pub id_shift: Option<IdShift>,
    /// Write overlayfs whiteouts (char device 0:0 for `.wh.name`, xattr
    /// `trusted.overlay.opaque=y` for `.wh..wh..opq`) instead of applying them: the
    /// layer then is an overlay lower directory of its own.
    pub overlay_whiteouts: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackReport {
    /// sha256 of the uncompressed tar stream.
    pub diff_id: Digest,
    /// sha256 of the stream as read.
    pub compressed_digest: Digest,
    /// Bytes read from the stream.
    pub compressed_size: u64,
    /// Tar entries processed (extension headers not counted).
    pub entries: u64,
}

/// Compression of a layer stream, detected from its first bytes (the media type is not
/// trusted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Detects compression from the first bytes of a stream (4 are enough).
pub fn detect(magic: &[u8]) -> Compression {
    if magic.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// Why an entry was refused. These are properties of the archive, not of the host.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Rejection {
    #[error("path escapes the layer")]
    Escapes,
    #[error("path contains a NUL byte")]
    Nul,
    #[error("path too long")]
    TooLong,
    #[error("path goes through symlink {0:?}")]
    ThroughSymlink(String),
    #[error("path goes through {0:?}, which is not a directory")]
    ThroughNonDir(String),
    #[error("entry would replace the layer root")]
    ReplacesRoot,
    #[error("hardlink target {0:?} escapes the layer")]
    LinkEscapes(String),
    #[error("hardlink target {0:?} is not an earlier entry of this layer")]
    LinkNotInLayer(String),
    #[error("hardlink target {target:?} goes through symlink {symlink:?}")]
    LinkThroughSymlink { target: String, symlink: String },
    #[error("hardlink target {target:?} goes through {component:?}, which is not a directory")]
    LinkThroughNonDir { target: String, component: String },
    #[error("invalid whiteout {0:?}")]
    Whiteout(String),
    #[error("{kind} {id} is outside the id shift range (size {size})")]
    IdOutOfRange {
        kind: &'static str,
        id: u64,
        size: u32,
    },
    #[error("{kind} {id} does not fit in 32 bits")]
    IdTooLarge { kind: &'static str, id: u64 },
    #[error("unsupported entry type {0:?}")]
    UnsupportedType(char),
    #[error("sparse file too large")]
    SparseTooLarge,
    #[error("invalid header: {0}")]
    Header(String),
}

#[derive(Debug, Error)]
pub enum UnpackError {
    #[error("opening layer destination {}: {}", path.display(), errno_name(*errno))]
    Dest { path: PathBuf, errno: Errno },
    #[error("reading layer: {0}")]
    Read(#[source] io::Error),
    #[error("reading layer entry {entry:?}: {source}")]
    ReadEntry {
        entry: String,
        #[source]
        source: io::Error,
    },
    #[error("layer entry {entry:?}: {reason}")]
    Rejected { entry: String, reason: Rejection },
    #[error("unpacking layer entry {entry:?}: {op}: {}", errno_name(*errno))]
    Io {
        entry: String,
        op: &'static str,
        errno: Errno,
    },
}

impl UnpackError {
    /// The refusal, if the archive itself was refused (as opposed to an I/O failure).
    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            UnpackError::Rejected { reason, .. } => Some(reason),
            _ => None,
        }
    }
}

/// `EEXIST` rather than "File exists (os error 17)": short, and what one greps for.
pub(crate) fn errno_name(e: Errno) -> String {
    format!("{:?}", nix::errno::Errno::from_raw(e.raw_os_error()))
}

/// Unpacks one layer stream into `dest` (an existing directory, normally empty).
///
/// Two threads: the caller's reads, decompresses and hashes the stream while a scoped
/// worker parses the tar and writes the files, so that inflating and hashing overlap the
/// file system work. On error `dest` holds a partial layer: the caller unpacks into a
/// fresh directory and discards it on failure.
pub fn unpack_layer(
    reader: impl Read,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackReport, UnpackError> {
    let root = rustix::fs::open(
        dest,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| UnpackError::Dest {
        path: dest.to_path_buf(),
        errno,
    })?;

    let (tx, rx) = mpsc::sync_channel::<io::Result<Vec<u8>>>(QUEUE);
    let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
    let abort = AtomicBool::new(false);
    std::thread::scope(|s| {
        let worker = s.spawn(|| {
            let mut archive = tar::Archive::new(ChanReader {
                rx,
                free: free_tx,
                cur: Vec::new(),
                pos: 0,
            });
            let r = entry::Unpacker::new(root, opts).run(&mut archive);
            if r.is_err() {
                // Before the channel closes: the reader must stop, not drain the stream.
                abort.store(true, Ordering::SeqCst);
            }
            r
        });
        let produced = produce(reader, tx, free_rx, &abort);
        let entries = match worker.join() {
            Ok(r) => r?,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        let (diff_id, compressed_digest, compressed_size) = produced.map_err(UnpackError::Read)?;
        Ok(UnpackReport {
            diff_id,
            compressed_digest,
            compressed_size,
            entries,
        })
    })
}

/// Reads, decompresses and hashes the whole stream, passing the tar bytes on in chunks.
/// Keeps hashing to the end after the worker is done (padding after the end-of-archive
/// blocks counts in the digests); stops early if the worker failed.
fn produce(
    reader: impl Read,
    tx: SyncSender<io::Result<Vec<u8>>>,
    free: Receiver<Vec<u8>>,
    abort: &AtomicBool,
) -> io::Result<(Digest, Digest, u64)> {
    let mut compressed = HashingReader::new(reader);
    let mut magic = [0u8; 4];
    let n = match read_up_to(&mut compressed, &mut magic) {
        Ok(n) => n,
        Err(e) => {
            let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string())));
            return Err(e);
        }
    };
    let head = &magic[..n];
    let raw = head.chain(&mut compressed);
    let mut decoded: Box<dyn Read + '_> = match detect(head) {
        Compression::None => Box::new(raw),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(raw)),
        Compression::Zstd => match zstd::Decoder::new(raw) {
            Ok(d) => Box::new(d),
            Err(e) => {
                let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                return Err(e);
            }
        },
    };
    let mut diff = Hasher::new();
    let mut sending = true;
    loop {
        if abort.load(Ordering::SeqCst) {
            return Err(io::Error::other("unpacking stopped"));
        }
        let mut buf = match free.try_recv() {
            Ok(mut spent) => {
                spent.resize(CHUNK, 0);
                spent
            }
            Err(_) => vec![0; CHUNK],
        };
        let n = match decoded.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                if sending {
                    let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                }
                return Err(e);
            }
        };
        diff.update(&buf[..n]);
        buf.truncate(n);
        if sending && tx.send(Ok(buf)).is_err() {
            sending = false;
        }
    }
    drop(tx);
    drop(decoded);
    // A decompressor stops at the end of its stream; what follows still counts.
    io::copy(&mut compressed, &mut io::sink())?;
    let (compressed_digest, compressed_size) = compressed.finish();
    Ok((diff.finish(), compressed_digest, compressed_size))
}

/// The worker's end of the channel, as a reader for the tar parser. Spent buffers go back
/// to the reading thread for reuse.
struct ChanReader {
    rx: Receiver<io::Result<Vec<u8>>>,
    free: Sender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for ChanReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(Ok(next)) => {
                    let spent = std::mem::replace(&mut self.cur, next);
                    let _ = self.free.send(spent);
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
