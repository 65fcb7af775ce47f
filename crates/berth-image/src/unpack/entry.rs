//! One tar entry at a time: decide what it is, then create it through `fsops`.

use std::collections::HashSet;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{
    self as rfs, AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid, XattrFlags,
};
use rustix::io::Errno;
use tar::EntryType;

use super::fsops::{self, cstr, Dirs, WalkError, DIR_FLAGS};
use super::path::{clean, join, show, split};
use super::{Rejection, UnpackError, UnpackOptions, COPY_BUF};

const WHITEOUT: &[u8] = b".wh.";
const WHITEOUT_META: &[u8] = b".wh..wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";
/// Expanded size limit of a GNU sparse file: its holes are cheap on disk, but the tar
/// reader hands them over as zeros, so an absurd size would only burn time.
const MAX_SPARSE: u64 = 16 << 30;

/// What is applied to every node, read from the header before the data.
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: Timespec,
    xattrs: Vec<(CString, Vec<u8>)>,
}

pub(super) struct Unpacker<'o> {
    dirs: Dirs,
    opts: &'o UnpackOptions,
    /// Every path this layer has written: hardlinks may only point at these, and an
    /// opaque whiteout (applied) keeps them.
    seen: HashSet<Vec<u8>>,
    /// Directory mtimes, set at the end: creating their contents would change them.
    dir_times: Vec<(Vec<u8>, Timespec)>,
    buf: Vec<u8>,
    can_mknod: bool,
}

/// Error constructors; `raw` is the entry's path as it appears in the archive.
fn rejected(raw: &[u8], reason: Rejection) -> UnpackError {
    UnpackError::Rejected {
        entry: show(raw),
        reason,
    }
}

fn io_err<'a>(raw: &'a [u8], op: &'static str) -> impl FnOnce(Errno) -> UnpackError + 'a {
    move |errno| UnpackError::Io {
        entry: show(raw),
        op,
        errno,
    }
}

fn walk_err(raw: &[u8], e: WalkError) -> UnpackError {
    match e {
        WalkError::Symlink(p) => rejected(raw, Rejection::ThroughSymlink(show(&p))),
        WalkError::NotDir(p) => rejected(raw, Rejection::ThroughNonDir(show(&p))),
        WalkError::Io(op, errno) => io_err(raw, op)(errno),
    }
}

/// Runs `create`; if the name is taken, removes what is there (a whole tree for a
/// directory, the symlink itself for a symlink) and runs it once more. Returns whether
/// a directory was removed, since that can leave the directory cache stale.
fn replacing<T>(
    dir: BorrowedFd<'_>,
    name: &CStr,
    mut create: impl FnMut() -> Result<T, Errno>,
) -> Result<(T, bool), (&'static str, Errno)> {
    match create() {
        Ok(t) => Ok((t, false)),
        Err(Errno::EXIST) => {
            let removed_dir =
                fsops::remove_all(dir, name).map_err(|e| ("removing existing path", e))?;
            let t = create().map_err(|e| ("creating", e))?;
            Ok((t, removed_dir))
        }
        Err(e) => Err(("creating", e)),
    }
}

impl<'o> Unpacker<'o> {
    pub(super) fn new(root: OwnedFd, opts: &'o UnpackOptions) -> Unpacker<'o> {
        let implicit_owner = opts.id_shift.map(|s| (s.uid, s.gid));
        Unpacker {
            dirs: Dirs::new(root, implicit_owner),
            opts,
            seen: HashSet::new(),
            dir_times: Vec::new(),
            buf: vec![0; COPY_BUF],
            can_mknod: rustix::process::geteuid().is_root(),
        }
    }

    pub(super) fn run<R: Read>(
        mut self,
        archive: &mut tar::Archive<R>,
    ) -> Result<u64, UnpackError> {
        let mut count = 0;
        for entry in archive.entries().map_err(UnpackError::Read)? {
            let mut entry = entry.map_err(UnpackError::Read)?;
            self.entry(&mut entry)?;
            count += 1;
        }
        self.finish_dirs()?;
        Ok(count)
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let kind = entry.header().entry_type();
        if kind == EntryType::XGlobalHeader {
            return Ok(());
        }
        let raw = entry.path_bytes().into_owned();
        let path = clean(&raw).map_err(|r| rejected(&raw, r))?;
        let (dir, name) = split(&path);

        if name.starts_with(WHITEOUT) {
            let meta = self.meta(&raw, entry)?;
            return self.whiteout(&raw, dir, name, &meta);
        }
        if path.is_empty() {
            if kind != EntryType::Directory {
                return Err(rejected(&raw, Rejection::ReplacesRoot));
            }
            let meta = self.meta(&raw, entry)?;
            return self.root_dir(&raw, &meta);
        }
        let meta = self.meta(&raw, entry)?;
        match kind {
            EntryType::Directory => self.directory(&raw, &path, &meta)?,
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.file(&raw, &path, &meta, entry)?
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| {
                        rejected(&raw, Rejection::Header("symlink without a target".into()))
                    })?
                    .into_owned();
                self.symlink(&raw, &path, &target, &meta)?
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| {
                        rejected(&raw, Rejection::Header("hardlink without a target".into()))
                    })?
                    .into_owned();
                self.hardlink(&raw, &path, &target)?
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let (ft, dev) = match kind {
                    EntryType::Fifo => (FileType::Fifo, 0),
                    _ => {
                        let h = entry.header();
                        let bad =
                            |_| rejected(&raw, Rejection::Header("invalid device numbers".into()));
                        let major = h.device_major().map_err(bad)?;
                        let minor = h.device_minor().map_err(bad)?;
                        let (Some(major), Some(minor)) = (major, minor) else {
                            return Err(rejected(
                                &raw,
                                Rejection::Header("device without numbers".into()),
                            ));
                        };
                        let ft = if kind == EntryType::Char {
                            FileType::CharacterDevice
                        } else {
                            FileType::BlockDevice
                        };
                        (ft, rfs::makedev(major, minor))
                    }
                };
                // Without CAP_MKNOD device nodes cannot exist; skip them like rootless
                // podman does rather than fail the whole image.
                if ft != FileType::Fifo && !self.can_mknod {
                    return Ok(());
                }
                self.node(&raw, &path, ft, dev, &meta)?
            }
            other => {
                return Err(rejected(
                    &raw,
                    Rejection::UnsupportedType(other.as_byte() as char),
                ))
            }
        }
        self.seen.insert(path);
        Ok(())
    }

    fn meta<R: Read>(
        &self,
        raw: &[u8],
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<Meta, UnpackError> {
        let bad = |what: &str| rejected(raw, Rejection::Header(format!("invalid {what}")));
        let h = entry.header();
        let old = h.as_old();
        // An empty numeric field reads as 0, as in Go's archive/tar (docker's writer).
        let num = |r: io::Result<u64>, field: &[u8], what: &str| match r {
            Ok(n) => Ok(n),
            Err(_) if field.iter().all(|&b| b == 0 || b == b' ') => Ok(0),
            Err(_) => Err(bad(what)),
        };
        let mode = num(h.mode().map(u64::from), &old.mode, "mode")? as u32 & 0o7777;
        let uid = self.shift_id(raw, "uid", num(h.uid(), &old.uid, "uid")?)?;
        let gid = self.shift_id(raw, "gid", num(h.gid(), &old.gid, "gid")?)?;
        let mut mtime = Timespec {
            tv_sec: i64::try_from(num(h.mtime(), &old.mtime, "mtime")?).unwrap_or(i64::MAX),
            tv_nsec: 0,
        };
        let mut xattrs = Vec::new();
        if let Some(pax) = entry.pax_extensions().map_err(|_| bad("pax header"))? {
            for ext in pax {
                let ext = ext.map_err(|_| bad("pax header"))?;
                let key = ext.key_bytes();
                if key == b"mtime" {
                    if let Some(t) = parse_pax_time(ext.value_bytes()) {
                        mtime = t;
                    }
                } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    if wanted_xattr(name) {
                        if let Ok(name) = CString::new(name) {
                            xattrs.push((name, ext.value_bytes().to_vec()));
                        }
                    }
                }
            }
        }
        Ok(Meta {
            uid,
            gid,
            mode,
            mtime,
            xattrs,
        })
    }

    fn shift_id(&self, raw: &[u8], kind: &'static str, id: u64) -> Result<u32, UnpackError> {
        match self.opts.id_shift {
            None => {
                u32::try_from(id).map_err(|_| rejected(raw, Rejection::IdTooLarge { kind, id }))
            }
            Some(s) => {
                let base = if kind == "uid" { s.uid } else { s.gid };
                if id >= u64::from(s.size) {
                    return Err(rejected(
                        raw,
                        Rejection::IdOutOfRange {
                            kind,
                            id,
                            size: s.size,
                        },
                    ));
                }
                u32::try_from(id)
                    .ok()
                    .and_then(|id| base.checked_add(id))
                    .ok_or_else(|| rejected(raw, Rejection::IdTooLarge { kind, id }))
            }
        }
    }

    /// The parent directory of `path`, created if missing.
    fn parent(&mut self, raw: &[u8], dir: &[u8]) -> Result<BorrowedFd<'_>, UnpackError> {
        match self.dirs.open(dir, true) {
            Ok(Some(fd)) => Ok(fd),
            Ok(None) => Err(io_err(raw, "opening parent directory")(Errno::NOENT)),
            Err(e) => Err(walk_err(raw, e)),
        }
    }

    fn root_dir(&mut self, raw: &[u8], meta: &Meta) -> Result<(), UnpackError> {
        let root = self.dirs.root();
        set_owner_mode(raw, root, meta)?;
        set_xattrs_fd(raw, root, meta)?;
        self.dir_times.push((Vec::new(), meta.mtime));
        Ok(())
    }

    fn directory(&mut self, raw: &[u8], path: &[u8], meta: &Meta) -> Result<(), UnpackError> {
        let (dir, name) = split(path);
        let cname = cstr(name).map_err(io_err(raw, "creating directory"))?;
        let mut stale = false;
        let parent = self.parent(raw, dir)?;
        match rfs::mkdirat(parent, &cname, Mode::from_raw_mode(0o700)) {
            Ok(()) => {}
            // An existing directory is kept (its contents too); anything else goes.
            Err(Errno::EXIST) => {
                let st = rfs::statat(parent, &cname, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(io_err(raw, "inspecting existing path"))?;
                if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
                    stale = fsops::remove_all(parent, &cname)
                        .map_err(io_err(raw, "removing existing path"))?;
                    rfs::mkdirat(parent, &cname, Mode::from_raw_mode(0o700))
                        .map_err(io_err(raw, "creating directory"))?;
                }
            }
            Err(e) => return Err(io_err(raw, "creating directory")(e)),
        }
        let fd = rfs::openat(parent, &cname, DIR_FLAGS, Mode::empty())
            .map_err(io_err(raw, "opening directory"))?;
        set_owner_mode(raw, fd.as_fd(), meta)?;
        set_xattrs_fd(raw, fd.as_fd(), meta)?;
        if stale {
            self.dirs.invalidate();
        }
        // The next entries are most likely this directory's children.
        self.dirs.remember(path, fd);
        self.dir_times.push((path.to_vec(), meta.mtime));
        Ok(())
    }

    fn file<R: Read>(
        &mut self,
        raw: &[u8],
        path: &[u8],
        meta: &Meta,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<(), UnpackError> {
        if entry.header().entry_type() == EntryType::GNUSparse {
            let real = entry.header().as_gnu().and_then(|g| g.real_size().ok());
            match real {
                Some(size) if size <= MAX_SPARSE => {}
                Some(_) => return Err(rejected(raw, Rejection::SparseTooLarge)),
                None => {
                    return Err(rejected(
                        raw,
                        Rejection::Header("invalid sparse header".into()),
                    ))
                }
            }
        }
        let (dir, name) = split(path);
        let cname = cstr(name).map_err(io_err(raw, "creating file"))?;
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let parent = match self.dirs.open(dir, true) {
            Ok(Some(fd)) => fd,
            Ok(None) => return Err(io_err(raw, "opening parent directory")(Errno::NOENT)),
            Err(e) => return Err(walk_err(raw, e)),
        };
        // O_EXCL|O_NOFOLLOW: an existing symlink is replaced, never written through.
        let (fd, stale) = replacing(parent, &cname, || {
            rfs::openat(parent, &cname, flags, Mode::from_raw_mode(0o600))
        })
        .map_err(|(op, e)| io_err(raw, op)(e))?;
        if stale {
            self.dirs.invalidate();
        }
        let mut file = File::from(fd);
        let sparse = entry.header().entry_type() == EntryType::GNUSparse;
        let mut written: u64 = 0;
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(UnpackError::ReadEntry {
                        entry: show(raw),
                        source,
                    })
                }
            };
            let chunk = &self.buf[..n];
            // The holes of a sparse file arrive as zeros: skip over them instead.
            let r = if sparse && chunk.iter().all(|&b| b == 0) {
                file.seek(SeekFrom::Current(n as i64)).map(drop)
            } else {
                file.write_all(chunk)
            };
            r.map_err(|e| {
                io_err(raw, "writing file")(Errno::from_io_error(&e).unwrap_or(Errno::IO))
            })?;
            written += n as u64;
        }
        if sparse {
            // A trailing hole exists only once the size says so.
            file.set_len(written).map_err(|e| {
                io_err(raw, "writing file")(Errno::from_io_error(&e).unwrap_or(Errno::IO))
            })?;
        }
        // The tar reader ends a short entry silently at end of stream.
        if entry.header().entry_type() != EntryType::GNUSparse && written < entry.size() {
            return Err(UnpackError::ReadEntry {
                entry: show(raw),
                source: io::Error::new(io::ErrorKind::UnexpectedEof, "layer ends inside the file"),
            });
        }
        set_owner_mode(raw, file.as_fd(), meta)?;
        set_xattrs_fd(raw, file.as_fd(), meta)?;
        let times = Timestamps {
            last_access: meta.mtime,
            last_modification: meta.mtime,
        };
        rfs::futimens(&file, &times).map_err(io_err(raw, "setting times"))?;
        Ok(())
    }

    fn symlink(
        &mut self,
        raw: &[u8],
        path: &[u8],
        target: &[u8],
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        let (dir, name) = split(path);
        let cname = cstr(name).map_err(io_err(raw, "creating symlink"))?;
        let ctarget = cstr(target).map_err(io_err(raw, "creating symlink"))?;
        let parent = match self.dirs.open(dir, true) {
            Ok(Some(fd)) => fd,
            Ok(None) => return Err(io_err(raw, "opening parent directory")(Errno::NOENT)),
            Err(e) => return Err(walk_err(raw, e)),
        };
        let ((), stale) = replacing(parent, &cname, || rfs::symlinkat(&ctarget, parent, &cname))
            .map_err(|(op, e)| io_err(raw, op)(e))?;
        set_node_meta(raw, parent, name, &cname, meta, false)?;
        if stale {
            self.dirs.invalidate();
        }
        Ok(())
    }

    fn node(
        &mut self,
        raw: &[u8],
        path: &[u8],
        ft: FileType,
        dev: u64,
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        let (dir, name) = split(path);
        let cname = cstr(name).map_err(io_err(raw, "creating node"))?;
        let parent = match self.dirs.open(dir, true) {
            Ok(Some(fd)) => fd,
            Ok(None) => return Err(io_err(raw, "opening parent directory")(Errno::NOENT)),
            Err(e) => return Err(walk_err(raw, e)),
        };
        let ((), stale) = replacing(parent, &cname, || {
            rfs::mknodat(parent, &cname, ft, Mode::from_raw_mode(0o600), dev)
        })
        .map_err(|(op, e)| io_err(raw, op)(e))?;
        set_node_meta(raw, parent, name, &cname, meta, true)?;
        if stale {
            self.dirs.invalidate();
        }
        Ok(())
    }

    fn hardlink(&mut self, raw: &[u8], path: &[u8], target_raw: &[u8]) -> Result<(), UnpackError> {
        let target = clean(target_raw).map_err(|r| {
            let reason = match r {
                Rejection::Escapes => Rejection::LinkEscapes(show(target_raw)),
                other => other,
            };
            rejected(raw, reason)
        })?;
        // Only to what this layer wrote: never to a file of the host or an older layer.
        if target.is_empty() || !self.seen.contains(&target) {
            return Err(rejected(raw, Rejection::LinkNotInLayer(show(target_raw))));
        }
        if target == path {
            return Ok(());
        }
        let (tdir, tname) = split(&target);
        let ctname = cstr(tname).map_err(io_err(raw, "creating hardlink"))?;
        // The target's directory is opened on its own (not through the one-entry cache),
        // with the same no-symlink walk.
        let tparent = match self.dirs.open(tdir, false) {
            Ok(Some(fd)) => rustix::io::fcntl_dupfd_cloexec(fd, 0)
                .map_err(io_err(raw, "opening hardlink target directory"))?,
            Ok(None) => return Err(rejected(raw, Rejection::LinkNotInLayer(show(target_raw)))),
            Err(WalkError::Symlink(p)) => {
                return Err(rejected(
                    raw,
                    Rejection::LinkThroughSymlink {
                        target: show(target_raw),
                        symlink: show(&p),
                    },
                ))
            }
            Err(WalkError::NotDir(p)) => {
                return Err(rejected(
                    raw,
                    Rejection::LinkThroughNonDir {
                        target: show(target_raw),
                        component: show(&p),
                    },
                ))
            }
            Err(WalkError::Io(op, e)) => return Err(io_err(raw, op)(e)),
        };
        let (dir, name) = split(path);
        let cname = cstr(name).map_err(io_err(raw, "creating hardlink"))?;
        let parent = self.parent(raw, dir)?;
        // Flags 0: a symlink target is linked itself, not followed.
        let ((), stale) = replacing(parent, &cname, || {
            rfs::linkat(&tparent, &ctname, parent, &cname, AtFlags::empty())
        })
        .map_err(|(op, e)| {
            io_err(
                raw,
                if op == "creating" {
                    "creating hardlink"
                } else {
                    op
                },
            )(e)
        })?;
        if stale {
            self.dirs.invalidate();
        }
        Ok(())
    }

    fn whiteout(
        &mut self,
        raw: &[u8],
        dir: &[u8],
        name: &[u8],
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        let overlay = self.opts.overlay_whiteouts;
        if name == OPAQUE {
            if overlay {
                let fd = self.parent(raw, dir)?;
                rfs::fsetxattr(fd, c"trusted.overlay.opaque", b"y", XattrFlags::empty())
                    .map_err(io_err(raw, "setting opaque xattr"))?;
            } else {
                let fd = match self.dirs.open(dir, false) {
                    Ok(Some(fd)) => fd,
                    Ok(None) => return Ok(()),
                    Err(e) => return Err(walk_err(raw, e)),
                };
                let fd = rfs::openat(fd, c".", DIR_FLAGS, Mode::empty())
                    .map_err(io_err(raw, "opening directory"))?;
                let seen = &self.seen;
                // What this layer already put there stays: only older content is hidden.
                fsops::empty_dir(fd, |child| seen.contains(&join(dir, child)))
                    .map_err(io_err(raw, "emptying opaque directory"))?;
                self.dirs.invalidate();
            }
            return Ok(());
        }
        // Other `.wh..wh.*` names are aufs bookkeeping (hardlink dirs): nothing to do.
        if name.starts_with(WHITEOUT_META) {
            return Ok(());
        }
        let victim = &name[WHITEOUT.len()..];
        if victim.is_empty() || victim == b"." || victim == b".." {
            return Err(rejected(raw, Rejection::Whiteout(show(name))));
        }
        let cvictim = cstr(victim).map_err(io_err(raw, "creating whiteout"))?;
        if overlay {
            let parent = self.parent(raw, dir)?;
            let ((), stale) = replacing(parent, &cvictim, || {
                rfs::mknodat(
                    parent,
                    &cvictim,
                    FileType::CharacterDevice,
                    Mode::empty(),
                    0,
                )
            })
            .map_err(|(op, e)| {
                io_err(
                    raw,
                    if op == "creating" {
                        "creating whiteout"
                    } else {
                        op
                    },
                )(e)
            })?;
            rfs::chownat(
                parent,
                &cvictim,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(io_err(raw, "setting owner"))?;
            if stale {
                self.dirs.invalidate();
            }
        } else {
            let parent = match self.dirs.open(dir, false) {
                Ok(Some(fd)) => fd,
                Ok(None) => return Ok(()),
                Err(e) => return Err(walk_err(raw, e)),
            };
            let removed_dir =
                fsops::remove_all(parent, &cvictim).map_err(io_err(raw, "applying whiteout"))?;
            if removed_dir {
                self.dirs.invalidate();
            }
        }
        Ok(())
    }

    /// Directory times last, deepest first (reverse order of appearance).
    fn finish_dirs(&mut self) -> Result<(), UnpackError> {
        let times = std::mem::take(&mut self.dir_times);
        for (path, mtime) in times.iter().rev() {
            let ts = Timestamps {
                last_access: *mtime,
                last_modification: *mtime,
            };
            if path.is_empty() {
                rfs::futimens(self.dirs.root(), &ts).map_err(io_err(b".", "setting times"))?;
                continue;
            }
            let (dir, name) = split(path);
            // A later entry may have removed or replaced the directory: nothing to do then.
            let parent = match self.dirs.open(dir, false) {
                Ok(Some(fd)) => fd,
                Ok(None) | Err(WalkError::Symlink(_) | WalkError::NotDir(_)) => continue,
                Err(e) => return Err(walk_err(path, e)),
            };
            match rfs::utimensat(
                parent,
                OsStr::from_bytes(name),
                &ts,
                AtFlags::SYMLINK_NOFOLLOW,
            ) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => return Err(io_err(path, "setting times")(e)),
            }
        }
        Ok(())
    }
}

/// Owner first: chown clears setuid/setgid, so the mode is set after it.
fn set_owner_mode(raw: &[u8], fd: BorrowedFd<'_>, meta: &Meta) -> Result<(), UnpackError> {
    rfs::fchown(
        fd,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
    )
    .map_err(io_err(raw, "setting owner"))?;
    rfs::fchmod(fd, Mode::from_raw_mode(meta.mode)).map_err(io_err(raw, "setting mode"))?;
    Ok(())
}

/// Owner, mode (not for symlinks), xattrs and times of a node that cannot be opened for
/// writing, by name in its trusted parent, never following it.
fn set_node_meta(
    raw: &[u8],
    parent: BorrowedFd<'_>,
    name: &[u8],
    cname: &CStr,
    meta: &Meta,
    chmod: bool,
) -> Result<(), UnpackError> {
    rfs::chownat(
        parent,
        cname,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(io_err(raw, "setting owner"))?;
    if chmod {
        fsops::chmod_nofollow(parent, cname, meta.mode).map_err(io_err(raw, "setting mode"))?;
    }
    for (key, value) in &meta.xattrs {
        match fsops::lsetxattr_at(parent, name, key, value) {
            // user.* xattrs are not allowed on symlinks and special files; nor is any
            // xattr on a file system without them. Neither is worth failing the image for.
            Ok(()) | Err(Errno::OPNOTSUPP | Errno::PERM) => {}
            Err(e) => return Err(io_err(raw, "setting xattr")(e)),
        }
    }
    let ts = Timestamps {
        last_access: meta.mtime,
        last_modification: meta.mtime,
    };
    rfs::utimensat(parent, cname, &ts, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(io_err(raw, "setting times"))?;
    Ok(())
}

fn set_xattrs_fd(raw: &[u8], fd: BorrowedFd<'_>, meta: &Meta) -> Result<(), UnpackError> {
    for (key, value) in &meta.xattrs {
        match rfs::fsetxattr(fd, key, value, XattrFlags::empty()) {
            Ok(()) | Err(Errno::OPNOTSUPP) => {}
            Err(e) => return Err(io_err(raw, "setting xattr")(e)),
        }
    }
    Ok(())
}

/// Which xattrs of an archive are applied: file capabilities yes, other `security.*`
/// (SELinux/SMACK labels of the build host) no, and never overlayfs' own attributes,
/// which in a lower layer would steer overlayfs (redirects, metacopy, opaque).
fn wanted_xattr(name: &[u8]) -> bool {
    if name == b"security.capability" {
        return true;
    }
    !(name.starts_with(b"security.")
        || name.starts_with(b"trusted.overlay.")
        || name.starts_with(b"user.overlay."))
}

/// PAX times are decimal seconds with an optional fraction: `1700000000.123456789`.
fn parse_pax_time(v: &[u8]) -> Option<Timespec> {
    let s = std::str::from_utf8(v).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    // Digits only: a second sign ("--9223372036854775808") would overflow below.
    if secs.is_empty() || !secs.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = secs.parse().ok()?;
    let mut nanos: i64 = 0;
    for (i, c) in frac.bytes().take(9).enumerate() {
        if !c.is_ascii_digit() {
            return None;
        }
        nanos += i64::from(c - b'0') * 10i64.pow(8 - i as u32);
    }
    Some(if neg {
        if nanos == 0 {
            Timespec {
                tv_sec: -secs,
                tv_nsec: 0,
            }
        } else {
            Timespec {
                tv_sec: -secs - 1,
                tv_nsec: 1_000_000_000 - nanos,
            }
        }
    } else {
        Timespec {
            tv_sec: secs,
            tv_nsec: nanos,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        let t = parse_pax_time(b"1700000000.5").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (1_700_000_000, 500_000_000));
        let t = parse_pax_time(b"12").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (12, 0));
        let t = parse_pax_time(b"-1.25").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (-2, 750_000_000));
        assert!(parse_pax_time(b"x").is_none());
        assert!(parse_pax_time(b"1.x").is_none());
        assert!(parse_pax_time(b"--9223372036854775808").is_none());
        assert!(parse_pax_time(b"-9223372036854775807.5").is_some());
    }

    #[test]
    fn xattr_filter() {
        assert!(wanted_xattr(b"security.capability"));
        assert!(wanted_xattr(b"user.foo"));
        assert!(wanted_xattr(b"system.posix_acl_access"));
        assert!(!wanted_xattr(b"security.selinux"));
        assert!(!wanted_xattr(b"trusted.overlay.redirect"));
        assert!(!wanted_xattr(b"trusted.overlay.opaque"));
    }
}
