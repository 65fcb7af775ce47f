//! Small read/write helpers for cgroup control files, with errors that name the file.
//!
//! A cgroup file parses each write(2) as one value, so a value is always written in one
//! call; files are opened O_WRONLY|O_TRUNC without O_CREAT (so a missing knob is ENOENT, and
//! the same code works on the regular files of test layouts).

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::CgroupError;

pub(crate) fn is_enoent(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

pub(crate) fn errno(e: &io::Error) -> Option<i32> {
    e.raw_os_error()
}

fn open_w(path: &Path) -> io::Result<File> {
    OpenOptions::new().write(true).truncate(true).open(path)
}

/// Writes all of `value` with a single write(2).
fn write_once(f: &mut File, value: &str) -> io::Result<()> {
    let n = f.write(value.as_bytes())?;
    if n != value.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("short write ({n} of {} bytes)", value.len()),
        ));
    }
    Ok(())
}

/// Writes `value` to `dir/file`, keeping the raw io::Error so callers can react to a
/// particular errno (EINVAL ordering retries, ENOENT for absent knobs).
pub(crate) fn try_write(dir: &Path, file: &str, value: &str) -> Result<(), (PathBuf, io::Error)> {
    let path = dir.join(file);
    match open_w(&path).and_then(|mut f| write_once(&mut f, value)) {
        Ok(()) => Ok(()),
        Err(e) => Err((path, e)),
    }
}

pub(crate) fn write_err(path: PathBuf, value: &str, source: io::Error) -> CgroupError {
    CgroupError::Write {
        path,
        value: value.to_string(),
        source,
    }
}

/// Writes `value` to `dir/file`.
pub(crate) fn write(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    try_write(dir, file, value).map_err(|(p, e)| write_err(p, value, e))
}

/// Writes a value that needs a kernel feature: a missing file becomes an error saying
/// that `what` is not supported, instead of a bare ENOENT.
pub(crate) fn write_feature(
    dir: &Path,
    file: &str,
    value: &str,
    what: &str,
) -> Result<(), CgroupError> {
    match try_write(dir, file, value) {
        Ok(()) => Ok(()),
        Err((path, e)) if is_enoent(&e) => Err(CgroupError::Unsupported {
            path,
            what: what.to_string(),
        }),
        Err((path, e)) => Err(write_err(path, value, e)),
    }
}

/// A control file that takes one rule per write (devices.allow, io.max, ...): opened once,
/// written once per rule, in order.
pub(crate) struct RuleWriter {
    path: PathBuf,
    file: Option<File>,
}

impl RuleWriter {
    pub(crate) fn new(dir: &Path, file: &str) -> Self {
        RuleWriter {
            path: dir.join(file),
            file: None,
        }
    }

    #[cfg(test)]
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one rule. The newline is stripped by the kernel; it keeps the rules apart
    /// in the regular files of test layouts.
    pub(crate) fn write(&mut self, rule: &str) -> Result<(), CgroupError> {
        let line = format!("{rule}\n");
        let res = match &mut self.file {
            Some(f) => write_once(f, &line),
            None => open_w(&self.path).and_then(|mut f| {
                let r = write_once(&mut f, &line);
                self.file = Some(f);
                r
            }),
        };
        res.map_err(|e| write_err(self.path.clone(), rule, e))
    }

    /// Like [`write`](Self::write), but an absent file means the feature `what` is missing.
    pub(crate) fn write_feature(&mut self, rule: &str, what: &str) -> Result<(), CgroupError> {
        match self.write(rule) {
            Err(CgroupError::Write { path, source, .. }) if is_enoent(&source) => {
                Err(CgroupError::Unsupported {
                    path,
                    what: what.to_string(),
                })
            }
            r => r,
        }
    }
}

pub(crate) fn read(dir: &Path, file: &str) -> Result<String, CgroupError> {
    let path = dir.join(file);
    read_path(&path)
}

pub(crate) fn read_path(path: &Path) -> Result<String, CgroupError> {
    let mut s = String::new();
    File::open(path)
        .and_then(|mut f| f.read_to_string(&mut s))
        .map_err(|source| CgroupError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(s)
}

/// Reads `dir/file`; None if it does not exist.
pub(crate) fn read_opt(dir: &Path, file: &str) -> Result<Option<String>, CgroupError> {
    match read(dir, file) {
        Ok(s) => Ok(Some(s)),
        Err(CgroupError::Read { source, .. }) if is_enoent(&source) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A number in a cgroup file; "max" (or v1's near-2^63 "unlimited") is None.
pub(crate) fn parse_limit(s: &str) -> Option<u64> {
    let s = s.trim();
    if s == "max" {
        return None;
    }
    // v1 reports "no limit" as PAGE_COUNTER_MAX rounded to pages (9223372036854771712).
    s.parse::<u64>().ok().filter(|v| *v < (1u64 << 62))
}

/// mkdir -p `dir`, but never above `stop` (a mount point, which must exist). Returns the
/// directories it created, outermost first (the cpuset copy needs to know them).
pub(crate) fn mkdir_p(dir: &Path, stop: &Path) -> Result<Vec<PathBuf>, CgroupError> {
    let mut created = Vec::new();
    mkdir_rec(dir, stop, &mut created).map_err(|source| CgroupError::Create {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(created)
}

fn mkdir_rec(dir: &Path, stop: &Path, created: &mut Vec<PathBuf>) -> io::Result<()> {
    let b = {
        let mut b = DirBuilder::new();
        b.mode(0o755);
        b
    };
    match b.create(dir) {
        Ok(()) => {
            created.push(dir.to_path_buf());
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) if is_enoent(&e) && dir != stop && dir.starts_with(stop) => {
            // The mount point itself is never created: missing means the hierarchy is gone.
            let parent = dir.parent().filter(|p| *p != stop).ok_or(e)?;
            mkdir_rec(parent, stop, created)?;
            match b.create(dir) {
                Ok(()) => {
                    created.push(dir.to_path_buf());
                    Ok(())
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// How often and how long rmdir waits for a cgroup whose last processes are still exiting:
/// short at first (the usual wait is well under a millisecond), doubling up to 20 ms, about
/// 1 s in all.
const RMDIR_RETRIES: u32 = 64;
const RMDIR_FIRST_DELAY: Duration = Duration::from_micros(250);
const RMDIR_MAX_DELAY: Duration = Duration::from_millis(20);

/// Removes cgroup `dir` and its child cgroups (depth first). A cgroup directory holds only
/// kernel files besides child cgroups, so rmdir works on it as soon as it has no children
/// and no processes. A missing directory is success: destroy must be idempotent.
pub(crate) fn remove_cgroup(dir: &Path) -> Result<(), CgroupError> {
    let rm_err = |source| CgroupError::Remove {
        path: dir.to_path_buf(),
        source,
    };
    match std::fs::remove_dir(dir) {
        Ok(()) => return Ok(()),
        Err(e) if is_enoent(&e) => return Ok(()),
        Err(e) if matches!(errno(&e), Some(libc::EBUSY) | Some(libc::ENOTEMPTY)) => {}
        Err(e) => return Err(rm_err(e)),
    }
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for ent in entries {
                let ent = ent.map_err(rm_err)?;
                if ent.file_type().map_err(rm_err)?.is_dir() {
                    remove_cgroup(&ent.path())?;
                }
            }
        }
        Err(e) if is_enoent(&e) => return Ok(()),
        Err(e) => return Err(rm_err(e)),
    }
    let mut attempt = 0;
    let mut delay = RMDIR_FIRST_DELAY;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if is_enoent(&e) => return Ok(()),
            Err(e) if errno(&e) == Some(libc::EBUSY) && attempt + 1 < RMDIR_RETRIES => {
                attempt += 1;
                std::thread::sleep(delay);
                delay = (delay * 2).min(RMDIR_MAX_DELAY);
            }
            Err(e) => return Err(rm_err(e)),
        }
    }
}

/// The pids in `dir`'s cgroup.procs and in those of its child cgroups. A cgroup that
/// disappears while being walked (its processes exited) is skipped.
pub(crate) fn collect_pids(dir: &Path, out: &mut Vec<i32>) -> Result<(), CgroupError> {
    let procs = match read_opt(dir, "cgroup.procs")? {
        Some(s) => s,
        None => return Ok(()),
    };
    for l in procs.lines() {
        if let Ok(p) = l.trim().parse() {
            out.push(p);
        }
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if is_enoent(&e) => return Ok(()),
        Err(source) => {
            return Err(CgroupError::Read {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    for ent in entries.flatten() {
        if ent.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            collect_pids(&ent.path(), out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_and_errors_name_the_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("memory.max"), "old value long").unwrap();
        write(d.path(), "memory.max", "100").unwrap();
        assert_eq!(
            std::fs::read_to_string(d.path().join("memory.max")).unwrap(),
            "100"
        );

        let e = write(d.path(), "nope", "1").unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("writing \"1\" to "), "{msg}");
        assert!(msg.contains("/nope"), "{msg}");
        let e = write_feature(d.path(), "cpu.idle", "1", "cpu idle").unwrap_err();
        assert!(matches!(e, CgroupError::Unsupported { .. }), "{e}");
        assert!(e.to_string().contains("cpu.idle"), "{e}");
        assert!(!d.path().join("nope").exists(), "never creates files");
    }

    #[test]
    fn rule_writer_writes_each_rule() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("devices.allow"), "").unwrap();
        let mut w = RuleWriter::new(d.path(), "devices.allow");
        w.write("c 1:3 rwm").unwrap();
        w.write("b 8:0 r").unwrap();
        assert_eq!(
            std::fs::read_to_string(w.path()).unwrap(),
            "c 1:3 rwm\nb 8:0 r\n"
        );
        let mut w = RuleWriter::new(d.path(), "io.max");
        assert!(matches!(
            w.write_feature("8:0 rbps=1", "io"),
            Err(CgroupError::Unsupported { .. })
        ));
    }

    #[test]
    fn limits() {
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("9223372036854771712\n"), None);
        assert_eq!(parse_limit("1048576\n"), Some(1048576));
        assert_eq!(parse_limit("garbage"), None);
    }

    #[test]
    fn mkdir_p_reports_created_and_stops_at_mount() {
        let d = tempfile::tempdir().unwrap();
        let leaf = d.path().join("a/b/c");
        let created = mkdir_p(&leaf, d.path()).unwrap();
        assert_eq!(
            created,
            vec![d.path().join("a"), d.path().join("a/b"), leaf.clone()]
        );
        assert!(mkdir_p(&leaf, d.path()).unwrap().is_empty());
        let missing = d.path().join("nomount");
        assert!(matches!(
            mkdir_p(&missing.join("x"), &missing),
            Err(CgroupError::Create { .. })
        ));
    }

    #[test]
    fn remove_is_idempotent() {
        let d = tempfile::tempdir().unwrap();
        let leaf = d.path().join("x/y");
        std::fs::create_dir_all(&leaf).unwrap();
        remove_cgroup(&d.path().join("x")).unwrap();
        assert!(!d.path().join("x").exists());
        remove_cgroup(&d.path().join("x")).unwrap();
    }
}
