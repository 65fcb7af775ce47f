//! A compiled seccomp filter: the BPF program libseccomp generates for the spec's
//! `linux.seccomp`, compiled by the runtime before it forks the container's processes and
//! loaded by them with one seccomp(2) call right before execve.
//!
//! Compiling docker's default profile takes libseccomp ~15 ms here, which would otherwise
//! sit between `start` and the container's first instruction. So compiled programs are
//! cached under the runtime's state root, keyed by the exact input (the profile's JSON, the
//! libseccomp version and the native architecture): a cache file holds that input and is
//! only used when it matches byte for byte, so a hash collision or a stale file can at worst
//! cost a recompile. The state root is root-only, like the state files the runtime trusts.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use libseccomp::ScmpVersion;
use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompFilterFlag};
use thiserror::Error;

use crate::seccomp::{self, SeccompError};

/// Name of the cache directory under the runtime root (an id `validate_id` refuses).
pub const CACHE_DIR: &str = ".seccomp-cache";
/// Beyond this many cached programs the cache is emptied (profiles rarely vary).
const CACHE_MAX: usize = 64;
const MAGIC: &[u8; 8] = b"berthbpf";

#[derive(Debug, Error)]
pub enum BpfError {
    #[error(transparent)]
    Build(#[from] SeccompError),
    #[error("seccomp: exporting the compiled filter: {0}")]
    Export(String),
    #[error("seccomp: loading filter ({len} instructions): {errno}")]
    Load {
        len: usize,
        errno: nix::errno::Errno,
    },
    #[error("seccomp: the compiled filter is malformed ({0} bytes is not whole instructions)")]
    Malformed(usize),
}

/// A seccomp BPF program and the seccomp(2) flags to load it with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    code: Vec<libc::sock_filter>,
    flags: libc::c_ulong,
}

impl Program {
    /// Compiles `spec`, through the cache in `root` when given (cache failures only cost
    /// a compile: the runtime must work on a read-only or full state dir too).
    pub fn compile(spec: &LinuxSeccomp, root: Option<&Path>) -> Result<Program, BpfError> {
        let flags = filter_flags(spec);
        let key = cache_key(spec);
        let path = root.zip(key.as_ref()).map(|(r, k)| cache_path(r, k));
        if let (Some(p), Some(k)) = (&path, &key) {
            if let Some(code) = read_cached(p, k) {
                return Ok(Program { code, flags });
            }
        }
        let ctx = seccomp::build(spec)?;
        let bytes = export(&ctx)?;
        let code = decode(&bytes)?;
        if let (Some(p), Some(k)) = (&path, &key) {
            let _ = write_cached(p, k, &bytes);
        }
        Ok(Program { code, flags })
    }

    pub fn len(&self) -> usize {
        self.code.len()
    }

    pub fn is_empty(&self) -> bool {
        self.code.is_empty()
    }

    /// Loads the filter into the calling thread. Needs no_new_privs or CAP_SYS_ADMIN.
    pub fn load(&self) -> Result<(), BpfError> {
        let prog = libc::sock_fprog {
            len: self.code.len() as libc::c_ushort,
            filter: self.code.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: prog points at self.code, alive for the call; the kernel copies it.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                self.flags,
                &prog as *const libc::sock_fprog,
            )
        };
        if rc < 0 {
            return Err(BpfError::Load {
                len: self.code.len(),
                errno: nix::errno::Errno::last(),
            });
        }
        Ok(())
    }
}

/// The seccomp(2) flags libseccomp would pass for the spec's filter attributes.
fn filter_flags(spec: &LinuxSeccomp) -> libc::c_ulong {
    spec.flags()
        .iter()
        .flatten()
        .map(|f| match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => libc::SECCOMP_FILTER_FLAG_TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
            }
            // SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV (only meaningful with a listener).
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => 1 << 5,
        })
        .fold(0, |a, f| a | f)
}

/// The exact input the program depends on; None if it cannot be serialized (no caching).
fn cache_key(spec: &LinuxSeccomp) -> Option<Vec<u8>> {
    let mut key = serde_json::to_vec(spec).ok()?;
    let v = ScmpVersion::current().ok()?;
    key.extend_from_slice(format!("\0libseccomp {v}\0{}", std::env::consts::ARCH).as_bytes());
    Some(key)
}

fn cache_path(root: &Path, key: &[u8]) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    root.join(CACHE_DIR)
        .join(format!("{:016x}.bpf", h.finish()))
}

/// File layout: MAGIC, u64 LE key length, key, BPF bytes.
fn read_cached(path: &Path, key: &[u8]) -> Option<Vec<libc::sock_filter>> {
    let mut data = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .read_to_end(&mut data)
        .ok()?;
    let rest = data.strip_prefix(MAGIC.as_slice())?;
    let (len, rest) = rest.split_first_chunk::<8>()?;
    let len = usize::try_from(u64::from_le_bytes(*len)).ok()?;
    let (stored, bpf) = (rest.get(..len)?, rest.get(len..)?);
    if stored != key {
        return None;
    }
    decode(bpf).ok().filter(|c| !c.is_empty())
}

fn write_cached(path: &Path, key: &[u8], bpf: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    if std::fs::read_dir(dir)?.count() >= CACHE_MAX {
        for e in std::fs::read_dir(dir)?.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let mut tmp = tempfile_in(dir)?;
    tmp.0.write_all(MAGIC)?;
    tmp.0.write_all(&(key.len() as u64).to_le_bytes())?;
    tmp.0.write_all(key)?;
    tmp.0.write_all(bpf)?;
    // Concurrent writers of one key write the same bytes: whichever rename wins is right.
    std::fs::rename(&tmp.1, path)
}

fn tempfile_in(dir: &Path) -> std::io::Result<(std::fs::File, PathBuf)> {
    let p = dir.join(format!(
        ".tmp-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)?;
    Ok((f, p))
}

/// libseccomp 2.5 can only export to a file descriptor: a memfd, read back.
fn export(ctx: &libseccomp::ScmpFilterContext) -> Result<Vec<u8>, BpfError> {
    let fd = rustix::fs::memfd_create("berth-seccomp", rustix::fs::MemfdFlags::CLOEXEC)
        .map_err(|e| BpfError::Export(format!("memfd_create: {e}")))?;
    ctx.export_bpf(fd.as_fd())
        .map_err(|e| BpfError::Export(e.to_string()))?;
    let mut f = std::fs::File::from(fd);
    let mut bytes = Vec::new();
    f.seek(SeekFrom::Start(0))
        .and_then(|_| f.read_to_end(&mut bytes))
        .map_err(|e| BpfError::Export(format!("reading it back: {e}")))?;
    Ok(bytes)
}

fn decode(bytes: &[u8]) -> Result<Vec<libc::sock_filter>, BpfError> {
    const INSN: usize = std::mem::size_of::<libc::sock_filter>();
    if !bytes.len().is_multiple_of(INSN) || bytes.len() / INSN > u16::MAX as usize {
        return Err(BpfError::Malformed(bytes.len()));
    }
    Ok(bytes
        .chunks_exact(INSN)
        .map(|c| libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).unwrap()
    }

    const PROFILE: &str = r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":1,
        "architectures":["SCMP_ARCH_X86_64"],
        "syscalls":[{"names":["read","write","exit_group","getpid"],"action":"SCMP_ACT_ALLOW"}]}"#;

    #[test]
    fn cache_round_trip_gives_the_same_program() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(PROFILE);
        let fresh = Program::compile(&s, Some(dir.path())).unwrap();
        assert!(!fresh.is_empty());
        let files: Vec<_> = std::fs::read_dir(dir.path().join(CACHE_DIR))
            .unwrap()
            .collect();
        assert_eq!(files.len(), 1);
        let cached = Program::compile(&s, Some(dir.path())).unwrap();
        assert_eq!(fresh, cached);
        assert_eq!(fresh, Program::compile(&s, None).unwrap());
    }

    #[test]
    fn a_cache_file_for_other_input_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let a = spec(PROFILE);
        let b = spec(&PROFILE.replace("\"getpid\"", "\"getppid\""));
        let pa = Program::compile(&a, Some(dir.path())).unwrap();
        // Plant a's program under b's file name: b must not load it.
        let kb = cache_key(&b).unwrap();
        let from = cache_path(dir.path(), &cache_key(&a).unwrap());
        std::fs::copy(&from, cache_path(dir.path(), &kb)).unwrap();
        let pb = Program::compile(&b, Some(dir.path())).unwrap();
        assert_ne!(pa, pb);
        assert_eq!(pb, Program::compile(&b, None).unwrap());
    }

    #[test]
    fn corrupt_cache_files_are_recompiled() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(PROFILE);
        let good = Program::compile(&s, None).unwrap();
        let p = cache_path(dir.path(), &cache_key(&s).unwrap());
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        for junk in [
            &b""[..],
            b"berthbpf",
            b"berthbpf\xff\xff\xff\xff\xff\xff\xff\xff",
        ] {
            std::fs::write(&p, junk).unwrap();
            assert_eq!(Program::compile(&s, Some(dir.path())).unwrap(), good);
        }
    }

    #[test]
    fn flags_follow_the_spec() {
        let s = spec(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","flags":["SECCOMP_FILTER_FLAG_LOG","SECCOMP_FILTER_FLAG_SPEC_ALLOW"]}"#,
        );
        assert_eq!(
            filter_flags(&s),
            libc::SECCOMP_FILTER_FLAG_LOG | libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
        );
    }

    /// The loaded program filters: getpid gets EPERM (errno 1) from the default action
    /// once `getpid` is not allowed.
    #[test]
    fn loaded_program_enforces_the_profile() {
        use nix::sys::wait::{waitpid, WaitStatus};
        use nix::unistd::{fork, ForkResult};
        let s = spec(&PROFILE.replace(",\"getpid\"", ""));
        let p = Program::compile(&s, None).unwrap();
        // SAFETY: the child only makes raw syscalls and _exits.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                // SAFETY: plain prctl/syscalls in the child.
                unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
                if p.load().is_err() {
                    unsafe { libc::_exit(100) };
                }
                let r = unsafe { libc::syscall(libc::SYS_getpid) };
                let e = nix::errno::Errno::last_raw();
                unsafe {
                    libc::_exit(if r == -1 && e == libc::EPERM {
                        0
                    } else if r == -1 {
                        10 + e
                    } else {
                        1
                    })
                };
            }
            ForkResult::Parent { child } => {
                assert_eq!(waitpid(child, None).unwrap(), WaitStatus::Exited(child, 0));
            }
        }
    }
}
