//! Per-container overlay snapshots: a container's rootfs is an overlayfs whose lower
//! directories are the image's unpacked layers (shared by every container of the image)
//! and whose upper/work directories belong to the container.
//!
//! Layout of a snapshot directory:
//! ```text
//! dir/merged    the rootfs (overlay mount point)
//! dir/upper     the container's changes          (absent when read-only)
//! dir/work      overlayfs scratch space          (absent when read-only)
//! dir/lower/N   layer N, idmapped                (only with an id mapping)
//! ```
//!
//! With an id mapping, overlayfs itself cannot be idmapped (EINVAL on this kernel), so
//! each layer gets an idmapped bind mount (`open_tree(OPEN_TREE_CLONE)` +
//! `mount_setattr(MOUNT_ATTR_IDMAP)` + `move_mount`) and the overlay stacks those. The
//! layers on disk stay owned by 0..65535; through the mounts they read as the container's
//! host range, and copy-up writes into an upper directory owned by the range's root.
//!
//! Every mount made here is set MS_PRIVATE. Mounts still propagate *into* peers of the
//! parent mount when they are attached if that parent is shared: the engine should keep
//! its snapshot root on a private mount (containers-storage does the same).

use std::ffi::CString;
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rustix::fs::{Gid, Uid, CWD};
use rustix::io::Errno;
use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MountPropagationFlags, MoveMountFlags,
    OpenTreeFlags, UnmountFlags,
};
use thiserror::Error;

/// A range of ids: container ids `container_id..container_id+size` are host ids
/// `host_id..host_id+size` (one line of /proc/PID/uid_map).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMapping {
    pub container_id: u32,
    pub host_id: u32,
    pub size: u32,
}

#[derive(Debug, Clone, Copy)]
pub struct SnapshotSpec<'a> {
    /// Unpacked layer directories, bottom layer first.
    pub layers: &'a [PathBuf],
    /// The container's snapshot directory (see the module docs for what goes in it).
    pub dir: &'a Path,
    /// uid and gid mappings of the container's user namespace, if any.
    pub idmap: Option<(&'a [IdMapping], &'a [IdMapping])>,
    /// No upper directory: the rootfs cannot be written.
    pub read_only: bool,
}

#[derive(Debug, Error)]
pub enum SnapshotError {
    #[error("snapshot {}: no layers", dir.display())]
    NoLayers { dir: PathBuf },
    #[error("snapshot {}: invalid id mapping: {reason}", dir.display())]
    IdMap { dir: PathBuf, reason: String },
    #[error("snapshot {}: already mounted", dir.display())]
    AlreadyMounted { dir: PathBuf },
    #[error("{op} {}: {}", path.display(), errno_name(*errno))]
    Io {
        op: &'static str,
        path: PathBuf,
        errno: Errno,
    },
    #[error("creating user namespace for the id mapping: {op}: {}", errno_name(*errno))]
    Userns { op: &'static str, errno: Errno },
    #[error("{} is still mounted; not removing snapshot {}", mount.display(), dir.display())]
    StillMounted { mount: PathBuf, dir: PathBuf },
}

fn errno_name(e: Errno) -> String {
    format!("{:?}", nix::errno::Errno::from_raw(e.raw_os_error()))
}

fn io_errno(e: &io::Error) -> Errno {
    Errno::from_io_error(e).unwrap_or(Errno::IO)
}

fn err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> SnapshotError + 'a {
    move |errno| SnapshotError::Io {
        op,
        path: path.to_path_buf(),
        errno,
    }
}

fn ioerr<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SnapshotError + 'a {
    move |e| err(op, path)(io_errno(&e))
}

/// Undoes a half-made snapshot when `mount` fails: unmounts what this call mounted and
/// removes the directory if this call created it (an existing upper is the container's
/// data and is kept).
struct Guard<'a> {
    dir: &'a Path,
    mounted: Vec<PathBuf>,
    created_dir: bool,
    armed: bool,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if self.created_dir {
            let _ = unmount(self.dir);
            return;
        }
        for m in self.mounted.iter().rev() {
            let _ = rustix::mount::unmount(m, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW);
        }
    }
}

fn mkdir(path: &Path, mode: u32) -> Result<(), SnapshotError> {
    match fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(ioerr("creating directory", path)(e)),
    }
    // Not subject to the umask: the rootfs path must stay reachable (755).
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(ioerr("setting mode of", path))
}

/// Mounts the snapshot described by `spec` and returns the rootfs (`dir/merged`).
///
/// An existing `dir` is reused (its upper directory keeps the container's changes, e.g.
/// after a reboot); a mounted one is refused.
pub fn mount(spec: &SnapshotSpec<'_>) -> Result<PathBuf, SnapshotError> {
    let dir = spec.dir;
    if spec.layers.is_empty() {
        return Err(SnapshotError::NoLayers {
            dir: dir.to_path_buf(),
        });
    }
    let host_root = match spec.idmap {
        Some((uids, gids)) => Some((root_of(dir, "uid", uids)?, root_of(dir, "gid", gids)?)),
        None => None,
    };
    let created_dir = fs::symlink_metadata(dir).is_err();
    let mut guard = Guard {
        dir,
        mounted: Vec::new(),
        created_dir,
        armed: true,
    };
    fs::create_dir_all(dir).map_err(ioerr("creating snapshot directory", dir))?;
    let merged = dir.join("merged");
    if !mounts_under(&merged)?.is_empty() {
        guard.armed = false;
        return Err(SnapshotError::AlreadyMounted {
            dir: dir.to_path_buf(),
        });
    }
    mkdir(&merged, 0o755)?;

    let lowers: Vec<PathBuf> = match spec.idmap {
        None => spec.layers.to_vec(),
        Some((uids, gids)) => {
            let userns = userns_fd(uids, gids)?;
            let base = dir.join("lower");
            // Stale idmapped layers of a crashed mount: ours, replace them.
            for m in mounts_under(&base)? {
                let _ = rustix::mount::unmount(&m, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW);
            }
            mkdir(&base, 0o700)?;
            let mut lowers = Vec::with_capacity(spec.layers.len());
            for (i, layer) in spec.layers.iter().enumerate() {
                let target = base.join(i.to_string());
                mkdir(&target, 0o755)?;
                let tree = clone_tree(layer, Some(userns.as_fd()))?;
                attach(&tree, &target)?;
                guard.mounted.push(target.clone());
                lowers.push(target);
            }
            lowers
        }
    };

    if spec.read_only && lowers.len() == 1 {
        // Overlayfs wants two lower layers when there is no upper: a read-only bind of
        // the single layer is the same thing. (An idmapped layer keeps its idmap.)
        let tree = clone_tree(&lowers[0], None)?;
        attach(&tree, &merged)?;
    } else {
        let upper = if spec.read_only {
            None
        } else {
            let upper = dir.join("upper");
            let work = dir.join("work");
            for d in [&upper, &work] {
                mkdir(d, 0o755)?;
                if let Some((uid, gid)) = host_root {
                    rustix::fs::chown(
                        d.as_path(),
                        Some(Uid::from_raw(uid)),
                        Some(Gid::from_raw(gid)),
                    )
                    .map_err(err("setting owner of", d))?;
                }
            }
            Some((upper, work))
        };
        mount_overlay(
            &lowers,
            upper.as_ref().map(|(u, w)| (u.as_path(), w.as_path())),
            &merged,
        )?;
    }
    guard.mounted.push(merged.clone());
    guard.armed = false;
    Ok(merged)
}

/// Host id of container id 0 in `maps`: the owner of upper/work.
fn root_of(dir: &Path, kind: &str, maps: &[IdMapping]) -> Result<u32, SnapshotError> {
    let bad = |reason: String| SnapshotError::IdMap {
        dir: dir.to_path_buf(),
        reason,
    };
    if maps.is_empty() {
        return Err(bad(format!("no {kind} mappings")));
    }
    for m in maps {
        if m.size == 0
            || m.container_id.checked_add(m.size - 1).is_none()
            || m.host_id.checked_add(m.size - 1).is_none()
        {
            return Err(bad(format!("{kind} mapping {m:?} is empty or overflows")));
        }
    }
    maps.iter()
        .find(|m| m.container_id == 0)
        .map(|m| m.host_id)
        .ok_or_else(|| bad(format!("container {kind} 0 is not mapped")))
}

/// Unmounts everything under `dir` (merged, lower/*, anything else) and removes the
/// directory. Idempotent: a missing directory, or one half made by a crashed `mount`,
/// is fine.
pub fn unmount(dir: &Path) -> Result<(), SnapshotError> {
    let real = match fs::canonicalize(dir) {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ioerr("resolving snapshot directory", dir)(e)),
    };
    // Deepest first; a few rounds in case mounts were stacked on one another.
    for _ in 0..8 {
        let mounts = mounts_under(&real)?;
        if mounts.is_empty() {
            break;
        }
        for m in mounts {
            match rustix::mount::unmount(&m, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW) {
                Ok(()) | Err(Errno::INVAL | Errno::NOENT) => {}
                Err(e) => return Err(err("unmounting", &m)(e)),
            }
        }
    }
    // Never delete across a mount: that would delete a layer.
    if let Some(m) = mounts_under(&real)?.into_iter().next() {
        return Err(SnapshotError::StillMounted {
            mount: m,
            dir: real.clone(),
        });
    }
    match fs::remove_dir_all(&real) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ioerr("removing snapshot directory", &real)(e)),
    }
}

/// Whether overlayfs over idmapped layers works here (probed once, with a throwaway
/// snapshot under the temp directory); the engine falls back to shifting ownership at
/// unpack time (`UnpackOptions::id_shift`) when it does not.
pub fn idmapped_supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| probe_idmapped().is_ok())
}

fn probe_idmapped() -> Result<(), SnapshotError> {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let base = std::env::temp_dir().join(format!("berth-idmap-probe-{}-{n}", std::process::id()));
    // Two distinct layers: overlayfs refuses the same directory twice (ELOOP).
    let layers = [base.join("layer0"), base.join("layer1")];
    for l in &layers {
        fs::create_dir_all(l).map_err(ioerr("creating directory", l))?;
    }
    let map = [IdMapping {
        container_id: 0,
        host_id: 100_000,
        size: 65536,
    }];
    let snap = base.join("snap");
    let res = mount(&SnapshotSpec {
        layers: &layers,
        dir: &snap,
        idmap: Some((&map, &map)),
        read_only: false,
    });
    let cleanup = unmount(&snap);
    let _ = fs::remove_dir_all(&base);
    res.and(cleanup)
}

// ---------------------------------------------------------------------------------------
// Mounting.

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn mount_setattr(fd: BorrowedFd<'_>, attr: &MountAttr) -> Result<(), Errno> {
    // SAFETY: mount_setattr(dfd, "", AT_EMPTY_PATH, attr, size) reads `size` bytes of
    // `attr`, which lives across the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io_errno(&io::Error::last_os_error()))
    }
}

/// A detached, private, read-only bind of `path`, idmapped through `userns` if given.
fn clone_tree(path: &Path, userns: Option<BorrowedFd<'_>>) -> Result<OwnedFd, SnapshotError> {
    let tree = rustix::mount::open_tree(
        CWD,
        path,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )
    .map_err(err("cloning mount of layer", path))?;
    let mut attr = MountAttr {
        attr_set: MountAttrFlags::MOUNT_ATTR_RDONLY.bits() as u64,
        attr_clr: 0,
        propagation: libc::MS_PRIVATE,
        userns_fd: 0,
    };
    if let Some(ns) = userns {
        attr.attr_set |= MountAttrFlags::MOUNT_ATTR_IDMAP.bits() as u64;
        attr.userns_fd = ns.as_raw_fd() as u64;
    }
    mount_setattr(tree.as_fd(), &attr).map_err(err("idmapping mount of layer", path))?;
    Ok(tree)
}

fn attach(tree: &OwnedFd, target: &Path) -> Result<(), SnapshotError> {
    rustix::mount::move_mount(
        tree,
        c"",
        CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(err("attaching mount at", target))
}

/// The page-sized limit of mount(2)'s data argument, less the NUL.
const MOUNT_DATA_MAX: usize = 4095;

fn mount_overlay(
    lowers: &[PathBuf],
    upper: Option<(&Path, &Path)>,
    merged: &Path,
) -> Result<(), SnapshotError> {
    // lowerdir lists the top layer first.
    let top_first: Vec<&Path> = lowers.iter().rev().map(PathBuf::as_path).collect();
    let plain = |p: &Path| {
        !p.as_os_str()
            .as_bytes()
            .iter()
            .any(|b| matches!(b, b',' | b':' | b'\\' | b'\n'))
    };
    let mut data = b"lowerdir=".to_vec();
    for (i, l) in top_first.iter().enumerate() {
        if i > 0 {
            data.push(b':');
        }
        data.extend_from_slice(l.as_os_str().as_bytes());
    }
    if let Some((u, w)) = upper {
        data.extend_from_slice(b",upperdir=");
        data.extend_from_slice(u.as_os_str().as_bytes());
        data.extend_from_slice(b",workdir=");
        data.extend_from_slice(w.as_os_str().as_bytes());
    }
    let all_plain =
        top_first.iter().all(|p| plain(p)) && upper.is_none_or(|(u, w)| plain(u) && plain(w));
    if data.len() <= MOUNT_DATA_MAX && all_plain {
        let data =
            CString::new(data).map_err(|_| err("mounting overlay at", merged)(Errno::INVAL))?;
        rustix::mount::mount(
            c"overlay",
            merged,
            c"overlay",
            MountFlags::empty(),
            Some(data.as_c_str()),
        )
        .map_err(err("mounting overlay at", merged))?;
        rustix::mount::mount_change(merged, MountPropagationFlags::PRIVATE)
            .map_err(err("making mount private at", merged))?;
        return Ok(());
    }
    // Too long (or unescapable) for one option string: the new mount API takes one
    // layer per `lowerdir+` (Linux 6.8).
    let fs = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)
        .map_err(err("mounting overlay at", merged))?;
    for l in &top_first {
        rustix::mount::fsconfig_set_string(&fs, "lowerdir+", *l)
            .map_err(err("adding overlay lower layer", l))?;
    }
    if let Some((u, w)) = upper {
        rustix::mount::fsconfig_set_string(&fs, "upperdir", u)
            .map_err(err("setting overlay upper layer", u))?;
        rustix::mount::fsconfig_set_string(&fs, "workdir", w)
            .map_err(err("setting overlay work directory", w))?;
    }
    rustix::mount::fsconfig_create(&fs).map_err(err("mounting overlay at", merged))?;
    let mnt = rustix::mount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty())
        .map_err(err("mounting overlay at", merged))?;
    let attr = MountAttr {
        attr_set: 0,
        attr_clr: 0,
        propagation: libc::MS_PRIVATE,
        userns_fd: 0,
    };
    mount_setattr(mnt.as_fd(), &attr).map_err(err("making mount private at", merged))?;
    attach(&mnt, merged)
}

// ---------------------------------------------------------------------------------------
// A user namespace holding the mapping, for MOUNT_ATTR_IDMAP.

fn map_text(maps: &[IdMapping]) -> String {
    maps.iter()
        .map(|m| format!("{} {} {}\n", m.container_id, m.host_id, m.size))
        .collect()
}

/// Forks a child that unshares a user namespace and waits; writes its maps; returns an fd
/// of the namespace; kills the child (the fd keeps the namespace alive).
fn userns_fd(uids: &[IdMapping], gids: &[IdMapping]) -> Result<OwnedFd, SnapshotError> {
    let fail = |op| move |errno| SnapshotError::Userns { op, errno };
    let (uid_map, gid_map) = (map_text(uids), map_text(gids));
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| fail("pipe")(Errno::from_raw_os_error(e as i32)))?;
    // SAFETY: the child only makes raw syscalls (prctl, unshare, write, pause, _exit),
    // all async-signal-safe, so forking a multi-threaded process is fine.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(fail("fork")(io_errno(&io::Error::last_os_error())));
    }
    if pid == 0 {
        // SAFETY: see above; `ready_w` is a valid fd inherited from the parent.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            let status: i32 = if libc::unshare(libc::CLONE_NEWUSER) == 0 {
                0
            } else {
                *libc::__errno_location()
            };
            let bytes = status.to_ne_bytes();
            libc::write(ready_w.as_raw_fd(), bytes.as_ptr().cast(), bytes.len());
            loop {
                libc::pause();
            }
        }
    }
    drop(ready_w);
    let result = (|| {
        let mut status = [0u8; 4];
        let mut r = fs::File::from(ready_r);
        r.read_exact(&mut status)
            .map_err(|e| fail("waiting for child")(io_errno(&e)))?;
        let status = i32::from_ne_bytes(status);
        if status != 0 {
            return Err(fail("unshare")(Errno::from_raw_os_error(status)));
        }
        fs::write(format!("/proc/{pid}/uid_map"), &uid_map)
            .map_err(|e| fail("writing uid_map")(io_errno(&e)))?;
        fs::write(format!("/proc/{pid}/gid_map"), &gid_map)
            .map_err(|e| fail("writing gid_map")(io_errno(&e)))?;
        let ns = fs::File::open(format!("/proc/{pid}/ns/user"))
            .map_err(|e| fail("opening namespace")(io_errno(&e)))?;
        Ok(OwnedFd::from(ns))
    })();
    // SAFETY: `pid` is our child; kill and reap it whatever happened above.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        let mut st = 0;
        libc::waitpid(pid, &mut st, 0);
    }
    result
}

// ---------------------------------------------------------------------------------------
// /proc/self/mountinfo.

/// Mount points at or below `dir` (canonical), deepest (longest) first.
fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>, SnapshotError> {
    let info = Path::new("/proc/self/mountinfo");
    let text = fs::read(info).map_err(ioerr("reading", info))?;
    let dir = dir.as_os_str().as_bytes();
    let mut out: Vec<PathBuf> = Vec::new();
    for line in text.split(|&b| b == b'\n') {
        let Some(field) = line.split(|&b| b == b' ').nth(4) else {
            continue;
        };
        let point = unescape(field);
        let under =
            point.starts_with(dir) && (point.len() == dir.len() || point[dir.len()] == b'/');
        if under {
            out.push(PathBuf::from(std::ffi::OsStr::from_bytes(&point)));
        }
    }
    // Later mounts (stacked) come later in mountinfo: reverse, then stable-sort by depth.
    out.reverse();
    out.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    Ok(out)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\'
            && i + 3 < field.len()
            && field[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (field[i + 1] - b'0') as u32 * 64
                + (field[i + 2] - b'0') as u32 * 8
                + (field[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(field[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    //! Against the real kernel, as root. Every test works in its own temp dir and
    //! unmounts whatever is left under it when it ends, pass or fail.

    use std::collections::BTreeMap;
    use std::ffi::CString;
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::unpack::{unpack_layer, UnpackOptions};

    struct Arena {
        tmp: tempfile::TempDir,
    }

    impl Arena {
        fn new() -> Arena {
            Arena {
                tmp: tempfile::Builder::new()
                    .prefix("berth-snap-")
                    .tempdir()
                    .unwrap(),
            }
        }

        fn path(&self) -> &Path {
            self.tmp.path()
        }

        /// A layer unpacked (overlay whiteouts) from a tar built by `build`.
        fn layer(&self, name: &str, build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> PathBuf {
            let mut b = tar::Builder::new(Vec::new());
            build(&mut b);
            let data = b.into_inner().unwrap();
            let dest = self.path().join(name);
            fs::create_dir_all(&dest).unwrap();
            let opts = UnpackOptions {
                overlay_whiteouts: true,
                ..Default::default()
            };
            unpack_layer(&data[..], &dest, &opts).unwrap();
            dest
        }
    }

    impl Drop for Arena {
        fn drop(&mut self) {
            if let Ok(real) = fs::canonicalize(self.tmp.path()) {
                for m in mounts_under(&real).unwrap_or_default() {
                    let _ = rustix::mount::unmount(&m, UnmountFlags::DETACH);
                }
            }
        }
    }

    fn add(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], uid: u64) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(if path.ends_with('/') {
            tar::EntryType::Directory
        } else {
            tar::EntryType::Regular
        });
        h.set_mode(if path.ends_with('/') { 0o755 } else { 0o644 });
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_mtime(1_600_000_000);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, data).unwrap();
    }

    fn bottom(a: &Arena) -> PathBuf {
        a.layer("bottom", |b| {
            add(b, "etc/", b"", 0);
            add(b, "etc/os-release", b"bottom", 0);
            add(b, "etc/only-bottom", b"b", 0);
            add(b, "home/", b"", 0);
            add(b, "home/user-file", b"u", 1000);
            add(b, "gone", b"x", 0);
            add(b, "d/", b"", 0);
            add(b, "d/old", b"o", 0);
        })
    }

    fn top(a: &Arena) -> PathBuf {
        a.layer("top", |b| {
            add(b, "etc/os-release", b"top", 0);
            add(b, ".wh.gone", b"", 0);
            add(b, "d/.wh..wh..opq", b"", 0);
            add(b, "d/new", b"n", 0);
        })
    }

    /// Owner, mode and content of everything under `dir`.
    fn state(dir: &Path) -> BTreeMap<PathBuf, String> {
        fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
            for e in fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                let m = fs::symlink_metadata(&p).unwrap();
                let content = if m.is_file() {
                    fs::read(&p).unwrap()
                } else {
                    Vec::new()
                };
                out.insert(
                    p.clone(),
                    format!("{}:{} {:o} {:?}", m.uid(), m.gid(), m.mode(), content),
                );
                if m.is_dir() {
                    walk(&p, out);
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(dir, &mut out);
        out
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn assert_gone(dir: &Path) {
        let dir_bytes = dir.as_os_str().as_bytes();
        let info = fs::read("/proc/self/mountinfo").unwrap();
        for line in info.split(|&b| b == b'\n') {
            let point = line.split(|&b| b == b' ').nth(4).unwrap_or_default();
            assert!(
                !point.starts_with(dir_bytes),
                "still mounted: {}",
                String::from_utf8_lossy(line)
            );
        }
        assert!(!dir.exists(), "{} still exists", dir.display());
    }

    const RANGE: [IdMapping; 1] = [IdMapping {
        container_id: 0,
        host_id: 100_000,
        size: 65536,
    }];

    #[test]
    fn two_layers_merge_and_writes_go_to_upper() {
        let a = Arena::new();
        let layers = [bottom(&a), top(&a)];
        let before: Vec<_> = layers.iter().map(|l| state(l)).collect();
        let dir = a.path().join("snap");
        let merged = mount(&SnapshotSpec {
            layers: &layers,
            dir: &dir,
            idmap: None,
            read_only: false,
        })
        .unwrap();
        assert_eq!(merged, dir.join("merged"));
        assert_eq!(fs::read(merged.join("etc/os-release")).unwrap(), b"top");
        assert_eq!(fs::read(merged.join("etc/only-bottom")).unwrap(), b"b");
        assert!(
            !merged.join("gone").exists(),
            "whiteout hides the bottom file"
        );
        assert_eq!(
            names(&merged.join("d")),
            ["new"],
            "opaque directory hides the bottom contents"
        );

        fs::write(merged.join("etc/added"), "new").unwrap();
        fs::write(merged.join("etc/only-bottom"), "changed").unwrap();
        fs::remove_file(merged.join("etc/os-release")).unwrap();
        assert_eq!(fs::read(dir.join("upper/etc/added")).unwrap(), b"new");
        assert_eq!(
            fs::read(dir.join("upper/etc/only-bottom")).unwrap(),
            b"changed"
        );
        assert!(fs::symlink_metadata(dir.join("upper/etc/os-release"))
            .unwrap()
            .file_type()
            .is_char_device_like());
        let after: Vec<_> = layers.iter().map(|l| state(l)).collect();
        assert_eq!(before, after, "layers are never written");

        unmount(&dir).unwrap();
        assert_gone(&dir);
        unmount(&dir).unwrap();
        assert_eq!(before, layers.iter().map(|l| state(l)).collect::<Vec<_>>());
    }

    trait CharDev {
        fn is_char_device_like(&self) -> bool;
    }
    impl CharDev for fs::FileType {
        fn is_char_device_like(&self) -> bool {
            std::os::unix::fs::FileTypeExt::is_char_device(self)
        }
    }

    /// Runs `f` in a forked child with all ids set to host 100000; returns its exit code.
    fn as_range_root(f: impl FnOnce() -> i32) -> i32 {
        // SAFETY: the child only calls async-signal-safe libc functions (setgroups,
        // setresgid, setresuid, open, write, close, _exit) from `f`.
        unsafe {
            let pid = libc::fork();
            assert!(pid >= 0);
            if pid == 0 {
                let code = if libc::setgroups(0, std::ptr::null()) == 0
                    && libc::setresgid(100_000, 100_000, 100_000) == 0
                    && libc::setresuid(100_000, 100_000, 100_000) == 0
                {
                    f()
                } else {
                    99
                };
                libc::_exit(code);
            }
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
            libc::WEXITSTATUS(status)
        }
    }

    #[test]
    fn idmapped_layers_read_as_the_range_and_copy_up_writes_as_it() {
        let a = Arena::new();
        let layers = [bottom(&a), top(&a)];
        let before: Vec<_> = layers.iter().map(|l| state(l)).collect();
        let dir = a.path().join("snap");
        let merged = mount(&SnapshotSpec {
            layers: &layers,
            dir: &dir,
            idmap: Some((&RANGE, &RANGE)),
            read_only: false,
        })
        .unwrap();
        let m = fs::metadata(merged.join("etc/os-release")).unwrap();
        assert_eq!(
            (m.uid(), m.gid()),
            (100_000, 100_000),
            "layer file owned by 0 reads as the range root"
        );
        let m = fs::metadata(merged.join("home/user-file")).unwrap();
        assert_eq!((m.uid(), m.gid()), (101_000, 101_000));
        let m = fs::metadata(&merged).unwrap();
        assert_eq!(
            (m.uid(), m.gid()),
            (100_000, 100_000),
            "rootfs belongs to the range root"
        );
        assert_eq!(fs::read(merged.join("etc/os-release")).unwrap(), b"top");
        assert!(!merged.join("gone").exists());

        let new_file = CString::new(merged.join("new-by-range").as_os_str().as_bytes()).unwrap();
        let old_file = CString::new(merged.join("etc/only-bottom").as_os_str().as_bytes()).unwrap();
        let code = as_range_root(|| unsafe {
            let fd = libc::open(
                new_file.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                0o644,
            );
            if fd < 0 {
                return 1;
            }
            libc::write(fd, b"hi".as_ptr().cast(), 2);
            libc::close(fd);
            // Copy-up of a layer file the range owns.
            let fd = libc::open(old_file.as_ptr(), libc::O_WRONLY | libc::O_APPEND);
            if fd < 0 {
                return 2;
            }
            libc::write(fd, b"+".as_ptr().cast(), 1);
            libc::close(fd);
            0
        });
        assert_eq!(
            code, 0,
            "a process running as host uid 100000 writes the rootfs"
        );

        let up = fs::metadata(dir.join("upper/new-by-range")).unwrap();
        assert_eq!((up.uid(), up.gid()), (100_000, 100_000));
        let copied = fs::metadata(dir.join("upper/etc/only-bottom")).unwrap();
        assert_eq!(
            (copied.uid(), copied.gid()),
            (100_000, 100_000),
            "copy-up writes as the range"
        );
        assert_eq!(fs::read(dir.join("upper/etc/only-bottom")).unwrap(), b"b+");
        // The idmapped lower mounts are read-only; the layers on disk are untouched.
        assert!(fs::write(dir.join("lower/0/etc/x"), "x").is_err());
        let after: Vec<_> = layers.iter().map(|l| state(l)).collect();
        assert_eq!(
            before, after,
            "the shared layers stay owned by 0..65535 and unchanged"
        );
        assert_eq!(
            fs::metadata(layers[0].join("etc/only-bottom"))
                .unwrap()
                .uid(),
            0
        );

        unmount(&dir).unwrap();
        assert_gone(&dir);
    }

    #[test]
    fn read_only_snapshots() {
        let a = Arena::new();
        let layers = [bottom(&a), top(&a)];
        for (n, idmap) in [(2, false), (1, false), (1, true), (2, true)] {
            let dir = a.path().join(format!("ro-{n}-{idmap}"));
            let merged = mount(&SnapshotSpec {
                layers: &layers[..n],
                dir: &dir,
                idmap: idmap.then_some((&RANGE[..], &RANGE[..])),
                read_only: true,
            })
            .unwrap();
            let want: &[u8] = if n == 2 { b"top" } else { b"bottom" };
            assert_eq!(fs::read(merged.join("etc/os-release")).unwrap(), want);
            let err = fs::write(merged.join("x"), "x").unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{n} {idmap}");
            assert!(!dir.join("upper").exists());
            let uid = fs::metadata(merged.join("etc/os-release")).unwrap().uid();
            assert_eq!(uid, if idmap { 100_000 } else { 0 });
            unmount(&dir).unwrap();
            assert_gone(&dir);
        }
    }

    #[test]
    fn a_hundred_layers() {
        let a = Arena::new();
        // Long paths so that the lowerdir option cannot fit in a page.
        let base = a.path().join("l".repeat(60));
        let layers: Vec<PathBuf> = (0..100)
            .map(|i| {
                let dir = base.join(format!("layer-{i:03}"));
                fs::create_dir_all(&dir).unwrap();
                fs::write(dir.join(format!("f{i}")), i.to_string()).unwrap();
                fs::write(dir.join("common"), i.to_string()).unwrap();
                dir
            })
            .collect();
        for idmap in [false, true] {
            let dir = a.path().join(format!("snap-{idmap}"));
            let merged = mount(&SnapshotSpec {
                layers: &layers,
                dir: &dir,
                idmap: idmap.then_some((&RANGE[..], &RANGE[..])),
                read_only: false,
            })
            .unwrap_or_else(|e| panic!("idmap={idmap}: {e}"));
            assert_eq!(
                fs::read(merged.join("common")).unwrap(),
                b"99",
                "the last layer is on top"
            );
            for i in 0..100 {
                assert!(merged.join(format!("f{i}")).exists());
            }
            unmount(&dir).unwrap();
            assert_gone(&dir);
        }
    }

    #[test]
    fn failed_mount_leaves_nothing() {
        let a = Arena::new();
        let good = bottom(&a);
        let missing = a.path().join("missing");
        for idmap in [true, false] {
            let dir = a.path().join(format!("snap-{idmap}"));
            let layers = [good.clone(), missing.clone()];
            let err = mount(&SnapshotSpec {
                layers: &layers,
                dir: &dir,
                idmap: idmap.then_some((&RANGE[..], &RANGE[..])),
                read_only: false,
            })
            .unwrap_err();
            let msg = err.to_string();
            if idmap {
                assert_eq!(
                    msg,
                    format!("cloning mount of layer {}: ENOENT", missing.display())
                );
            } else {
                assert!(msg.starts_with("mounting overlay at "), "{msg}");
            }
            assert_gone(&dir);
        }
    }

    #[test]
    fn unmount_is_idempotent_and_cleans_half_made_snapshots() {
        let a = Arena::new();
        unmount(&a.path().join("never-made")).unwrap();
        // What a crash between two steps of `mount` leaves: one lower mounted, an upper.
        let layer = bottom(&a);
        let dir = a.path().join("half");
        fs::create_dir_all(dir.join("lower/0")).unwrap();
        fs::create_dir_all(dir.join("upper/etc")).unwrap();
        fs::create_dir_all(dir.join("merged")).unwrap();
        rustix::mount::mount_bind(&layer, dir.join("lower/0")).unwrap();
        rustix::mount::mount_bind(&layer, dir.join("merged")).unwrap();
        rustix::mount::mount_bind(&layer, dir.join("merged")).unwrap();
        let before = state(&layer);
        unmount(&dir).unwrap();
        assert_gone(&dir);
        assert_eq!(
            state(&layer),
            before,
            "unmount never deletes through a mount"
        );
        unmount(&dir).unwrap();
    }

    #[test]
    fn mounting_twice_is_refused_and_keeps_the_first() {
        let a = Arena::new();
        let layers = [bottom(&a), top(&a)];
        let dir = a.path().join("snap");
        let spec = SnapshotSpec {
            layers: &layers,
            dir: &dir,
            idmap: None,
            read_only: false,
        };
        let merged = mount(&spec).unwrap();
        fs::write(merged.join("mine"), "1").unwrap();
        assert!(matches!(
            mount(&spec),
            Err(SnapshotError::AlreadyMounted { .. })
        ));
        assert_eq!(fs::read(merged.join("mine")).unwrap(), b"1");
        // Unmounted without removal (e.g. after a reboot): mounting again keeps upper.
        rustix::mount::unmount(&merged, UnmountFlags::empty()).unwrap();
        let merged = mount(&spec).unwrap();
        assert_eq!(fs::read(merged.join("mine")).unwrap(), b"1");
        unmount(&dir).unwrap();
        assert_gone(&dir);
    }

    #[test]
    fn invalid_specs() {
        let a = Arena::new();
        let dir = a.path().join("snap");
        let err = mount(&SnapshotSpec {
            layers: &[],
            dir: &dir,
            idmap: None,
            read_only: false,
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("snapshot {}: no layers", dir.display())
        );
        let layers = [bottom(&a)];
        let no_root = [IdMapping {
            container_id: 1,
            host_id: 100_001,
            size: 10,
        }];
        let err = mount(&SnapshotSpec {
            layers: &layers,
            dir: &dir,
            idmap: Some((&no_root, &RANGE)),
            read_only: false,
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "snapshot {}: invalid id mapping: container uid 0 is not mapped",
                dir.display()
            )
        );
        assert!(!dir.exists());
    }

    #[test]
    fn idmapped_mounts_are_supported_here() {
        probe_idmapped().unwrap();
        assert!(idmapped_supported());
        assert!(idmapped_supported(), "cached");
    }

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape(br"/a\040b\134c\011"), b"/a b\\c\t");
        assert_eq!(unescape(br"/plain"), b"/plain");
        assert_eq!(unescape(br"/trailing\04"), br"/trailing\04");
    }
}
