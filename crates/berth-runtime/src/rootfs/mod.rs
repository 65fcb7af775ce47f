//! The container's root filesystem, as an explicit list of steps run in order inside the
//! new mount namespace (bubblewrap style): make `/` a slave, bind the rootfs onto itself,
//! mount the spec's mounts (targets resolved inside the rootfs), create devices, pivot_root,
//! then mask and protect paths.

mod devices;
pub mod options;
pub mod safe_path;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::statvfs::{statvfs, FsFlags};
use oci_spec::runtime::{Mount, Spec};
use rustix::fs::OFlags;
use thiserror::Error;

pub use devices::{create_devices, setup_dev_symlinks};
use options::MountOptions;

use crate::cgroups::Cgroup;

#[derive(Debug, Error)]
pub enum RootfsError {
    #[error("{op} {what} at {target}: {errno}")]
    Step {
        op: &'static str,
        what: String,
        target: PathBuf,
        errno: Errno,
    },
    #[error("mount {target}: {reason}")]
    Invalid { target: PathBuf, reason: String },
}

fn step(
    op: &'static str,
    what: impl Into<String>,
    target: &Path,
) -> impl FnOnce(Errno) -> RootfsError {
    let what = what.into();
    let target = target.to_path_buf();
    move |errno| RootfsError::Step {
        op,
        what,
        target,
        errno,
    }
}

pub(crate) fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// What the mount steps need to know beyond the spec.
pub struct Context<'a> {
    pub spec: &'a Spec,
    pub bundle: &'a Path,
    pub rootfs: &'a Path,
    /// Inside a new user namespace: devices are bind-mounted, not created with mknod.
    pub in_userns: bool,
    pub cgroup: Option<&'a Cgroup>,
    pub new_cgroupns: bool,
}

/// Steps before pivot_root: propagation, rootfs bind, spec mounts, devices.
pub fn prepare(ctx: &Context<'_>) -> Result<(), RootfsError> {
    let linux = ctx.spec.linux().as_ref();
    let prop = linux
        .and_then(|l| l.rootfs_propagation().as_deref())
        .and_then(options::propagation)
        .unwrap_or(MsFlags::MS_SLAVE | MsFlags::MS_REC);
    // Keep our mounts from propagating to the host (and the host's into us, unless asked).
    let host_prop = if prop.contains(MsFlags::MS_SHARED) {
        MsFlags::MS_SLAVE | MsFlags::MS_REC
    } else {
        prop
    };
    mount(None::<&str>, "/", None::<&str>, host_prop, None::<&str>).map_err(step(
        "setting propagation of",
        "/",
        Path::new("/"),
    ))?;
    // pivot_root needs the new root to be a mount point.
    mount(
        Some(ctx.rootfs),
        ctx.rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(step(
        "bind-mounting rootfs",
        ctx.rootfs.display().to_string(),
        ctx.rootfs,
    ))?;
    let root = rustix::fs::open(
        ctx.rootfs,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| step("opening rootfs", "", ctx.rootfs)(Errno::from_raw(e.raw_os_error())))?;

    let mut dev_is_bind = false;
    for m in ctx.spec.mounts().iter().flatten() {
        let opts = MountOptions::parse(m.options().as_deref().unwrap_or(&[]));
        if m.destination() == Path::new("/dev") && (opts.bind || m.typ().as_deref() == Some("bind"))
        {
            dev_is_bind = true;
        }
        mount_one(ctx, root.as_fd(), m, &opts)?;
    }
    if !dev_is_bind {
        create_devices(ctx, root.as_fd())?;
        setup_dev_symlinks(ctx.rootfs, root.as_fd())?;
    }
    Ok(())
}

fn mount_one(
    ctx: &Context<'_>,
    root: BorrowedFd<'_>,
    m: &Mount,
    opts: &MountOptions,
) -> Result<(), RootfsError> {
    let dest = m.destination();
    let target_display = ctx.rootfs.join(dest.strip_prefix("/").unwrap_or(dest));
    let typ = m
        .typ()
        .as_deref()
        .unwrap_or(if opts.bind { "bind" } else { "" });
    if typ == "cgroup" || typ == "cgroup2" {
        return mount_cgroup(ctx, root, m, opts, &target_display);
    }
    let bind = opts.bind || typ == "bind";
    let source = m.source().clone().unwrap_or_else(|| PathBuf::from(typ));
    if bind {
        let src = if source.is_absolute() {
            source.clone()
        } else {
            ctx.bundle.join(&source)
        };
        let meta = std::fs::metadata(&src).map_err(|e| {
            step("bind-mounting", src.display().to_string(), &target_display)(io_errno(e))
        })?;
        let target = if meta.is_dir() {
            safe_path::mkdir_all(root, dest, 0o755)
        } else {
            safe_path::create_file(root, dest, 0o644)
        }
        .map_err(|e| {
            step(
                "creating mount target for",
                src.display().to_string(),
                &target_display,
            )(io_errno(e))
        })?;
        return bind_mount(&src, root, dest, &target, opts, &target_display);
    }
    let target = safe_path::mkdir_all(root, dest, 0o755)
        .map_err(|e| step("creating mount target for", typ, &target_display)(io_errno(e)))?;
    let tpath = safe_path::fd_path(&target);
    let data = if opts.data.is_empty() {
        None
    } else {
        Some(opts.data.as_str())
    };
    let flags = opts.flags & !MsFlags::MS_REMOUNT;
    match mount(Some(&source), &tpath, Some(typ), flags, data) {
        Ok(()) => {}
        // Without a network namespace of our own, sysfs can't be mounted: bind the host's
        // (read-only when asked), as runc does.
        Err(Errno::EPERM) if typ == "sysfs" => {
            let ro = MountOptions {
                flags: opts.flags | MsFlags::MS_RDONLY,
                bind: true,
                recursive: true,
                ..Default::default()
            };
            return bind_mount(Path::new("/sys"), root, dest, &target, &ro, &target_display);
        }
        Err(Errno::EPERM) if typ == "mqueue" => {
            let o = MountOptions {
                flags: opts.flags,
                bind: true,
                ..Default::default()
            };
            return bind_mount(
                Path::new("/dev/mqueue"),
                root,
                dest,
                &target,
                &o,
                &target_display,
            );
        }
        Err(e) => return Err(step("mounting", typ, &target_display)(e)),
    }
    if opts.propagation.is_empty() {
        return Ok(());
    }
    let mounted = reopen(root, dest, &target_display)?;
    apply_propagation(&safe_path::fd_path(&mounted), opts, &target_display)
}

/// Re-resolves `dest` inside the root: an fd opened before a mount still points at the
/// covered directory, while remounts and propagation changes must reach the new mount.
fn reopen(root: BorrowedFd<'_>, dest: &Path, display: &Path) -> Result<OwnedFd, RootfsError> {
    safe_path::open(root, dest, OFlags::PATH)
        .map_err(|e| step("re-opening", "mount", display)(io_errno(e)))
}

/// Binds `src` onto the opened `target` (which is `dest` in `root`), then remounts to apply
/// flags. A remount inside a user namespace must keep the flags the kernel locked on the
/// source (nosuid, nodev, ...), so they are read back with statvfs and kept.
pub(crate) fn bind_mount(
    src: &Path,
    root: BorrowedFd<'_>,
    dest: &Path,
    target: &OwnedFd,
    opts: &MountOptions,
    display: &Path,
) -> Result<(), RootfsError> {
    let mut flags = MsFlags::MS_BIND;
    if opts.recursive {
        flags |= MsFlags::MS_REC;
    }
    mount(
        Some(src),
        &safe_path::fd_path(target),
        None::<&str>,
        flags,
        None::<&str>,
    )
    .map_err(step("bind-mounting", src.display().to_string(), display))?;
    if !opts.needs_remount() && opts.propagation.is_empty() {
        return Ok(());
    }
    let mounted = reopen(root, dest, display)?;
    let mpath = safe_path::fd_path(&mounted);
    if opts.needs_remount() {
        remount_bind(display, &mpath, opts.flags)?;
    }
    apply_propagation(&mpath, opts, display)
}

/// Remounts the bind mount at `path` with `flags`, keeping locked flags.
pub(crate) fn remount_bind(display: &Path, path: &Path, flags: MsFlags) -> Result<(), RootfsError> {
    let locked = statvfs(path)
        .map(|s| locked_flags(s.flags()))
        .map_err(step("reading flags of", "mount", display))?;
    let f = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | (flags & !MsFlags::MS_REC & !MsFlags::MS_REMOUNT)
        | locked;
    mount(None::<&str>, path, None::<&str>, f, None::<&str>).map_err(step(
        "remounting",
        format!("{flags:?}"),
        display,
    ))
}

fn locked_flags(f: FsFlags) -> MsFlags {
    let mut m = MsFlags::empty();
    for (fs, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(fs) {
            m |= ms;
        }
    }
    m
}

fn apply_propagation(tpath: &Path, opts: &MountOptions, display: &Path) -> Result<(), RootfsError> {
    for p in &opts.propagation {
        // The target fd points under the mount; go through the mount point's path instead.
        mount(None::<&str>, tpath, None::<&str>, *p, None::<&str>).map_err(step(
            "setting propagation of",
            "mount",
            display,
        ))?;
    }
    Ok(())
}

/// cgroup mounts: on v1, a tmpfs with each controller's container directory bound into it
/// (what runc does); on v2, cgroup2 itself in a new cgroup namespace, else a bind.
fn mount_cgroup(
    ctx: &Context<'_>,
    root: BorrowedFd<'_>,
    m: &Mount,
    opts: &MountOptions,
    display: &Path,
) -> Result<(), RootfsError> {
    let Some(cg) = ctx.cgroup else { return Ok(()) };
    let dest = m.destination();
    let target = safe_path::mkdir_all(root, dest, 0o755)
        .map_err(|e| step("creating mount target for", "cgroup", display)(io_errno(e)))?;
    let tpath = safe_path::fd_path(&target);
    let ro = opts.flags.contains(MsFlags::MS_RDONLY);
    let base = opts.flags & (MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC);
    if let Some(host) = cg.v2_path() {
        let r = if ctx.new_cgroupns {
            mount(
                Some("cgroup2"),
                &tpath,
                Some("cgroup2"),
                opts.flags,
                None::<&str>,
            )
        } else {
            Err(Errno::EPERM)
        };
        if r.is_err() {
            let o = MountOptions {
                flags: opts.flags,
                bind: true,
                recursive: true,
                ..Default::default()
            };
            bind_mount(&host, root, dest, &target, &o, display)?;
        }
        return Ok(());
    }
    mount(Some("tmpfs"), &tpath, Some("tmpfs"), base, Some("mode=755")).map_err(step(
        "mounting",
        "tmpfs for cgroups",
        display,
    ))?;
    for (name, host) in cg.v1_mounts() {
        let sub = dest.join(&name);
        let sub_display = display.join(&name);
        let fd = safe_path::mkdir_all(root, &sub, 0o755).map_err(|e| {
            step(
                "creating mount target for",
                format!("cgroup {name}"),
                &sub_display,
            )(io_errno(e))
        })?;
        let o = MountOptions {
            flags: base
                | if ro {
                    MsFlags::MS_RDONLY
                } else {
                    MsFlags::empty()
                },
            bind: true,
            ..Default::default()
        };
        bind_mount(&host, root, &sub, &fd, &o, &sub_display)?;
        // Co-mounted controllers ("cpu,cpuacct") are also reachable by each name.
        if name.contains(',') {
            for part in name.split(',') {
                let link = ctx
                    .rootfs
                    .join(dest.strip_prefix("/").unwrap_or(dest))
                    .join(part);
                let _ = std::os::unix::fs::symlink(&name, link);
            }
        }
    }
    if ro {
        let mounted = reopen(root, dest, display)?;
        remount_bind(
            display,
            &safe_path::fd_path(&mounted),
            base | MsFlags::MS_RDONLY,
        )?;
    }
    Ok(())
}

/// Switches the root to the prepared rootfs. pivot_root(".", ".") stacks the old root
/// under the new one, which is then detached, so no host path stays reachable.
pub fn pivot(rootfs: &Path, no_pivot: bool) -> Result<(), RootfsError> {
    nix::unistd::chdir(rootfs).map_err(step("changing directory to", "rootfs", rootfs))?;
    if no_pivot {
        mount(
            Some(rootfs),
            "/",
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(step("moving", "rootfs", Path::new("/")))?;
        nix::unistd::chroot(".").map_err(step("chroot into", "rootfs", rootfs))?;
    } else {
        nix::unistd::pivot_root(".", ".").map_err(step("pivot_root into", "rootfs", rootfs))?;
        // The old root must not propagate our unmount back to the host.
        mount(
            None::<&str>,
            ".",
            None::<&str>,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(step("setting propagation of", "old root", Path::new("/")))?;
        umount2(".", MntFlags::MNT_DETACH).map_err(step(
            "unmounting",
            "old root",
            Path::new("/"),
        ))?;
    }
    nix::unistd::chdir("/").map_err(step("changing directory to", "/", Path::new("/")))
}

/// After pivot_root: masked and read-only paths, read-only root, root propagation.
pub fn finalize(spec: &Spec) -> Result<(), RootfsError> {
    let root = rustix::fs::open(
        "/",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| step("opening", "/", Path::new("/"))(Errno::from_raw(e.raw_os_error())))?;
    let linux = spec.linux().as_ref();
    for p in linux
        .and_then(|l| l.readonly_paths().as_ref())
        .into_iter()
        .flatten()
    {
        readonly_path(root.as_fd(), Path::new(p))?;
    }
    for p in linux
        .and_then(|l| l.masked_paths().as_ref())
        .into_iter()
        .flatten()
    {
        mask_path(root.as_fd(), Path::new(p))?;
    }
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        remount_bind(Path::new("/"), Path::new("/"), MsFlags::MS_RDONLY)?;
    }
    if let Some(p) = linux.and_then(|l| l.rootfs_propagation().as_deref()) {
        let flags = options::propagation(p).ok_or_else(|| RootfsError::Invalid {
            target: "/".into(),
            reason: format!("unknown rootfsPropagation {p:?}"),
        })?;
        mount(None::<&str>, "/", None::<&str>, flags, None::<&str>).map_err(step(
            "setting propagation of",
            p,
            Path::new("/"),
        ))?;
    }
    Ok(())
}

fn readonly_path(root: BorrowedFd<'_>, p: &Path) -> Result<(), RootfsError> {
    let fd = match safe_path::open(root, p, OFlags::PATH | OFlags::NOFOLLOW) {
        Ok(fd) => fd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(step("opening read-only path", "", p)(io_errno(e))),
    };
    let o = MountOptions {
        flags: MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        bind: true,
        recursive: true,
        ..Default::default()
    };
    bind_mount(&safe_path::fd_path(&fd), root, p, &fd, &o, p)
}

fn mask_path(root: BorrowedFd<'_>, p: &Path) -> Result<(), RootfsError> {
    let fd = match safe_path::open(root, p, OFlags::PATH | OFlags::NOFOLLOW) {
        Ok(fd) => fd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(step("opening masked path", "", p)(io_errno(e))),
    };
    let tpath = safe_path::fd_path(&fd);
    let is_dir = rustix::fs::fstat(&fd)
        .map(|s| rustix::fs::FileType::from_raw_mode(s.st_mode) == rustix::fs::FileType::Directory)
        .unwrap_or(false);
    let r = if is_dir {
        mount(
            Some("tmpfs"),
            &tpath,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            Some("size=0"),
        )
    } else {
        mount(
            Some("/dev/null"),
            &tpath,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    };
    r.map_err(step("masking", p.display().to_string(), p))
}
