//! The only code in the unpacker that resolves paths. Every directory is reached from the
//! layer root fd with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so a symlink or a
//! `..` planted by an earlier entry can never redirect a write outside the layer; every
//! final component is then handled with an `*at()` call that does not follow it.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{self as rfs, AtFlags, Dir, Gid, Mode, OFlags, ResolveFlags, Uid};
use rustix::io::Errno;

/// Directories are opened for reading (not O_PATH) so that fsetxattr works on them.
pub(crate) const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// Why a directory of the layer could not be reached.
#[derive(Debug)]
pub(crate) enum WalkError {
    /// This prefix of the path is a symlink.
    Symlink(Vec<u8>),
    /// This prefix of the path exists and is not a directory.
    NotDir(Vec<u8>),
    Io(&'static str, Errno),
}

/// openat2 returns EAGAIN when a concurrent rename raced the lookup; retry a few times.
fn openat2_dir(base: BorrowedFd<'_>, path: &[u8]) -> Result<OwnedFd, Errno> {
    let mut tries = 0;
    loop {
        match rfs::openat2(
            base,
            OsStr::from_bytes(path),
            DIR_FLAGS,
            Mode::empty(),
            RESOLVE,
        ) {
            Err(Errno::AGAIN) if tries < 8 => tries += 1,
            r => return r,
        }
    }
}

/// The layer root and a one-entry cache of the last directory used as a parent (tar
/// streams list a directory's files together, so most entries hit it).
pub(crate) struct Dirs {
    root: OwnedFd,
    last: Option<(Vec<u8>, OwnedFd)>,
    /// Owner of directories created only because an entry needs them: the layer's root.
    implicit_owner: Option<(u32, u32)>,
}

impl Dirs {
    pub(crate) fn new(root: OwnedFd, implicit_owner: Option<(u32, u32)>) -> Dirs {
        Dirs {
            root,
            last: None,
            implicit_owner,
        }
    }

    pub(crate) fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// Forgets the cached directory; called whenever something is removed, since the
    /// cached fd could then point at a directory no longer in the tree.
    pub(crate) fn invalidate(&mut self) {
        self.last = None;
    }

    /// Caches `fd` as the directory at `path` (used right after creating a directory).
    pub(crate) fn remember(&mut self, path: &[u8], fd: OwnedFd) {
        self.last = Some((path.to_vec(), fd));
    }

    /// Opens directory `path` (cleaned; `""` is the root). Missing components are created
    /// (mode 0755, owned by the layer root) when `create`, else `Ok(None)` is returned.
    pub(crate) fn open(
        &mut self,
        path: &[u8],
        create: bool,
    ) -> Result<Option<BorrowedFd<'_>>, WalkError> {
        if path.is_empty() {
            return Ok(Some(self.root.as_fd()));
        }
        let hit = matches!(&self.last, Some((p, _)) if p == path);
        if !hit {
            let fd = match openat2_dir(self.root.as_fd(), path) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => match self.walk(path, create)? {
                    Some(fd) => fd,
                    None => return Ok(None),
                },
                // Find out which component is to blame, for the message.
                Err(Errno::LOOP | Errno::NOTDIR | Errno::XDEV) => {
                    return Err(match self.walk(path, false) {
                        Err(e) => e,
                        Ok(_) => WalkError::Io("opening directory", Errno::LOOP),
                    })
                }
                Err(e) => return Err(WalkError::Io("opening directory", e)),
            };
            self.last = Some((path.to_vec(), fd));
        }
        Ok(self.last.as_ref().map(|(_, fd)| fd.as_fd()))
    }

    /// Component-by-component walk: names the offending component, and creates missing
    /// directories when asked.
    fn walk(&self, path: &[u8], create: bool) -> Result<Option<OwnedFd>, WalkError> {
        let mut cur: Option<OwnedFd> = None;
        let mut end = 0;
        for comp in path.split(|&b| b == b'/') {
            end += comp.len();
            let prefix = &path[..end];
            end += 1;
            let base = cur.as_ref().map_or(self.root.as_fd(), |f| f.as_fd());
            let next = match openat2_dir(base, comp) {
                Ok(fd) => fd,
                Err(Errno::NOENT) if create => {
                    match rfs::mkdirat(base, OsStr::from_bytes(comp), Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(WalkError::Io("creating parent directory", e)),
                    }
                    let fd = openat2_dir(base, comp).map_err(|e| classify(e, prefix))?;
                    // mkdir is subject to the umask; say exactly what we mean.
                    rfs::fchmod(&fd, Mode::from_raw_mode(0o755))
                        .map_err(|e| WalkError::Io("setting mode of parent directory", e))?;
                    if let Some((uid, gid)) = self.implicit_owner {
                        rfs::fchown(&fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
                            .map_err(|e| WalkError::Io("setting owner of parent directory", e))?;
                    }
                    fd
                }
                Err(Errno::NOENT) => return Ok(None),
                // O_NOFOLLOW|O_DIRECTORY on a symlink says ENOTDIR: look at what it is.
                Err(e @ (Errno::NOTDIR | Errno::LOOP)) => {
                    return Err(
                        match rfs::statat(base, OsStr::from_bytes(comp), AtFlags::SYMLINK_NOFOLLOW)
                        {
                            Ok(st)
                                if rfs::FileType::from_raw_mode(st.st_mode)
                                    == rfs::FileType::Symlink =>
                            {
                                WalkError::Symlink(prefix.to_vec())
                            }
                            Ok(_) => WalkError::NotDir(prefix.to_vec()),
                            Err(_) => classify(e, prefix),
                        },
                    )
                }
                Err(e) => return Err(classify(e, prefix)),
            };
            cur = Some(next);
        }
        Ok(cur)
    }
}

fn classify(e: Errno, prefix: &[u8]) -> WalkError {
    match e {
        Errno::LOOP | Errno::XDEV => WalkError::Symlink(prefix.to_vec()),
        Errno::NOTDIR => WalkError::NotDir(prefix.to_vec()),
        e => WalkError::Io("opening directory", e),
    }
}

pub(crate) fn cstr(name: &[u8]) -> Result<CString, Errno> {
    CString::new(name).map_err(|_| Errno::INVAL)
}

/// Removes `name` in `dir` whatever it is, a whole tree for a directory, never following
/// symlinks. Returns whether a directory was removed. Holds O(1) fds however deep the tree.
pub(crate) fn remove_all(dir: BorrowedFd<'_>, name: &CStr) -> Result<bool, Errno> {
    match rfs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(false),
        Err(Errno::ISDIR) => {}
        Err(e) => return Err(e),
    }
    match rfs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
        Ok(()) => return Ok(true),
        Err(Errno::NOTEMPTY | Errno::EXIST) => {}
        Err(e) => return Err(e),
    }
    let fd = rfs::openat(dir, name, DIR_FLAGS, Mode::empty())?;
    empty_dir(fd, |_| false)?;
    rfs::unlinkat(dir, name, AtFlags::REMOVEDIR)?;
    Ok(true)
}

/// Removes every child of `top` except those for which `keep(name)` holds. Descends with
/// openat(O_NOFOLLOW) and climbs back with "..", keeping a stack of names instead of fds.
pub(crate) fn empty_dir(top: OwnedFd, keep: impl Fn(&[u8]) -> bool) -> Result<(), Errno> {
    let mut stack: Vec<CString> = Vec::new();
    let mut cur = top;
    loop {
        let mut descend = None;
        {
            let mut entries = Dir::read_from(&cur)?;
            while let Some(ent) = entries.read() {
                let ent = ent?;
                let name = ent.file_name();
                let bytes = name.to_bytes();
                if bytes == b"." || bytes == b".." || (stack.is_empty() && keep(bytes)) {
                    continue;
                }
                match rfs::unlinkat(&cur, name, AtFlags::empty()) {
                    Ok(()) | Err(Errno::NOENT) => {}
                    Err(Errno::ISDIR) => match rfs::unlinkat(&cur, name, AtFlags::REMOVEDIR) {
                        Ok(()) | Err(Errno::NOENT) => {}
                        Err(Errno::NOTEMPTY | Errno::EXIST) => {
                            descend = Some(name.to_owned());
                            break;
                        }
                        Err(e) => return Err(e),
                    },
                    Err(e) => return Err(e),
                }
            }
        }
        if let Some(sub) = descend {
            let next = rfs::openat(&cur, &sub, DIR_FLAGS, Mode::empty())?;
            stack.push(sub);
            cur = next;
            continue;
        }
        // `cur` is empty now: climb back and remove it.
        match stack.pop() {
            None => return Ok(()),
            Some(name) => {
                let parent = rfs::openat(&cur, c"..", DIR_FLAGS, Mode::empty())?;
                rfs::unlinkat(&parent, &name, AtFlags::REMOVEDIR)?;
                cur = parent;
            }
        }
    }
}

/// chmod without following a symlink in the last component: fchmodat2 (Linux 6.6), else
/// fchmodat (the callers just created the node themselves, so it is not a symlink).
pub(crate) fn chmod_nofollow(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> Result<(), Errno> {
    // SAFETY: fchmodat2(int dirfd, const char *path, mode_t mode, unsigned flags); `name`
    // is a valid NUL-terminated string that outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fchmodat2,
            dir.as_raw_fd(),
            name.as_ptr(),
            mode as libc::c_uint,
            libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
        )
    };
    if r == 0 {
        return Ok(());
    }
    match Errno::from_raw_os_error(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)) {
        Errno::NOSYS => rfs::chmodat(dir, name, Mode::from_raw_mode(mode), AtFlags::empty()),
        e => Err(e),
    }
}

/// lsetxattr on `name` in `dir`, for nodes that cannot be opened for writing (symlinks,
/// devices, fifos): the path goes through the magic link of the trusted parent fd and the
/// last component is not followed.
pub(crate) fn lsetxattr_at(
    dir: BorrowedFd<'_>,
    name: &[u8],
    key: &CStr,
    value: &[u8],
) -> Result<(), Errno> {
    let mut path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    path.extend_from_slice(name);
    rfs::lsetxattr(
        OsStr::from_bytes(&path),
        key,
        value,
        rfs::XattrFlags::empty(),
    )
}
