//! Resolving paths inside the container's rootfs without escaping it.
//!
//! Every mount target is opened with openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS), so a
//! symlink planted in the image (`/proc -> /host/etc`) is resolved as if the rootfs were `/`
//! (CVE-2021-30465 class). The kernel then mounts onto the opened object through its
//! /proc/self/fd magic link, so nothing can swap the path between check and use.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{openat2, Mode, OFlags, ResolveFlags};

fn resolve_flags() -> ResolveFlags {
    ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS
}

/// Opens `path` (absolute or relative; always taken relative to `root`) inside `root`.
pub fn open(root: BorrowedFd<'_>, path: &Path, flags: OFlags) -> io::Result<OwnedFd> {
    let rel = relative(path);
    loop {
        match openat2(
            root,
            rel.as_path(),
            flags | OFlags::CLOEXEC,
            Mode::empty(),
            resolve_flags(),
        ) {
            Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => continue,
            r => return r.map_err(io::Error::from),
        }
    }
}

/// Creates every missing directory of `path` inside `root` and returns an O_PATH fd of it.
/// A dangling symlink on the way is followed the way RESOLVE_IN_ROOT would (its target taken
/// inside the root) and the target is created there, never on the host.
pub fn mkdir_all(root: BorrowedFd<'_>, path: &Path, mode: u32) -> io::Result<OwnedFd> {
    mkdir_all_depth(root, &relative(path), mode, 0)
}

/// Linux's own limit on symlinks followed in one lookup.
const MAX_LINKS: usize = 40;

fn mkdir_all_depth(
    root: BorrowedFd<'_>,
    rel: &Path,
    mode: u32,
    links: usize,
) -> io::Result<OwnedFd> {
    let mut prefix = PathBuf::new();
    let mut cur = open(root, Path::new("."), OFlags::PATH | OFlags::DIRECTORY)?;
    let comps: Vec<_> = rel.components().collect();
    for (i, comp) in comps.iter().enumerate() {
        let Component::Normal(name) = comp else {
            prefix.push(comp);
            continue;
        };
        prefix.push(name);
        match open(root, &prefix, OFlags::PATH | OFlags::DIRECTORY) {
            Ok(fd) => {
                cur = fd;
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        match rustix::fs::mkdirat(cur.as_fd(), *name, Mode::from_raw_mode(mode)) {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST) => {
                // A dangling symlink: continue from where it points, inside the root.
                let target = rustix::fs::readlinkat(cur.as_fd(), *name, Vec::new())
                    .map_err(io::Error::from)?;
                if links >= MAX_LINKS {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = PathBuf::from(std::ffi::OsStr::from_bytes(target.as_bytes()));
                let mut next = if target.is_absolute() {
                    relative(&target)
                } else {
                    prefix.parent().unwrap_or(Path::new("")).join(target)
                };
                for rest in &comps[i + 1..] {
                    next.push(rest);
                }
                return mkdir_all_depth(root, &next, mode, links + 1);
            }
            Err(e) => return Err(e.into()),
        }
        cur = open(root, &prefix, OFlags::PATH | OFlags::DIRECTORY)?;
    }
    Ok(cur)
}

/// Creates (if missing) a regular file at `path` inside `root`, with its parents, and returns
/// an O_PATH fd of it. Used as the target of file bind mounts and device binds.
pub fn create_file(root: BorrowedFd<'_>, path: &Path, mode: u32) -> io::Result<OwnedFd> {
    let rel = relative(path);
    if let Ok(fd) = open(root, &rel, OFlags::PATH) {
        return Ok(fd);
    }
    let parent = rel.parent().unwrap_or(Path::new(""));
    let name = rel
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let dir = mkdir_all(root, parent, 0o755)?;
    // O_NOFOLLOW|O_EXCL: never create through a dangling symlink.
    match rustix::fs::openat(
        dir.as_fd(),
        name,
        OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::WRONLY | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    ) {
        Ok(_) | Err(rustix::io::Errno::EXIST) => {}
        Err(e) => return Err(e.into()),
    }
    open(root, &rel, OFlags::PATH)
}

/// The path through which the kernel reaches an opened fd (for mount(2) targets).
pub fn fd_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Strips leading `/` so `Path::join`-style use can't replace the root.
fn relative(path: &Path) -> PathBuf {
    let rel: PathBuf = path
        .components()
        .filter(|c| !matches!(c, Component::RootDir | Component::CurDir))
        .collect();
    if rel.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        rel
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn root_fd(dir: &Path) -> OwnedFd {
        rustix::fs::open(dir, OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap()
    }

    #[test]
    fn absolute_symlink_stays_inside_root() {
        let outside = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        symlink(outside.path(), root.path().join("escape")).unwrap();
        let fd = root_fd(root.path());
        mkdir_all(fd.as_fd(), Path::new("/escape/proc"), 0o755).unwrap();
        // The directory was created inside the rootfs, where the link resolves to.
        assert!(!outside.path().join("proc").exists());
        let inner = root
            .path()
            .join(outside.path().strip_prefix("/").unwrap())
            .join("proc");
        assert!(inner.is_dir(), "{inner:?}");
    }

    #[test]
    fn dotdot_cannot_climb_out() {
        let root = tempfile::tempdir().unwrap();
        let fd = root_fd(root.path());
        symlink("../../../../../../etc", root.path().join("up")).unwrap();
        // ../.. from the root stays at the root, so "up/passwd" is <root>/etc/passwd.
        let err = open(fd.as_fd(), Path::new("up/passwd"), OFlags::RDONLY).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn create_file_does_not_follow_dangling_symlink() {
        let outside = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let target = outside.path().join("owned");
        symlink(&target, root.path().join("f")).unwrap();
        let fd = root_fd(root.path());
        // Resolves to <root>/<outside>/owned (inside root), never to the host path.
        let _ = create_file(fd.as_fd(), Path::new("/f"), 0o644);
        assert!(!target.exists());
    }
}
