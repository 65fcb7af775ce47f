//! Device nodes under the container's /dev: the default set every container gets, plus the
//! spec's devices. Inside a user namespace mknod is not allowed, so the host's node is
//! bind-mounted onto an empty file instead (what runc and crun do).

use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::mount::MsFlags;
use nix::sys::stat::{makedev, mknodat, Mode, SFlag};
use oci_spec::runtime::LinuxDeviceType;
use rustix::fs::OFlags;

use super::options::MountOptions;
use super::{bind_mount, io_errno, safe_path, step, Context, RootfsError};

struct Dev<'a> {
    path: &'a Path,
    kind: SFlag,
    major: u64,
    minor: u64,
    mode: u32,
    uid: Option<u32>,
    gid: Option<u32>,
}

const DEFAULTS: &[(&str, u64, u64)] = &[
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

pub fn create_devices(ctx: &Context<'_>, root: BorrowedFd<'_>) -> Result<(), RootfsError> {
    let spec_devs = ctx.spec.linux().as_ref().and_then(|l| l.devices().as_ref());
    for (p, major, minor) in DEFAULTS {
        let path = Path::new(p);
        // A spec device at the same path wins.
        if spec_devs.is_some_and(|d| d.iter().any(|d| d.path() == path)) {
            continue;
        }
        let dev = Dev {
            path,
            kind: SFlag::S_IFCHR,
            major: *major,
            minor: *minor,
            mode: 0o666,
            uid: None,
            gid: None,
        };
        create(ctx, root, &dev)?;
    }
    for d in spec_devs.into_iter().flatten() {
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            LinuxDeviceType::A => {
                return Err(RootfsError::Invalid {
                    target: d.path().clone(),
                    reason: "device type \"a\" is only valid in cgroup rules".into(),
                })
            }
        };
        let dev = Dev {
            path: d.path(),
            kind,
            major: d.major() as u64,
            minor: d.minor() as u64,
            mode: d.file_mode().unwrap_or(0o666) & 0o7777,
            uid: d.uid(),
            gid: d.gid(),
        };
        create(ctx, root, &dev)?;
    }
    Ok(())
}

fn create(ctx: &Context<'_>, root: BorrowedFd<'_>, d: &Dev<'_>) -> Result<(), RootfsError> {
    let display = ctx.rootfs.join(d.path.strip_prefix("/").unwrap_or(d.path));
    if ctx.in_userns {
        let target = safe_path::create_file(root, d.path, 0o000).map_err(|e| {
            step(
                "creating device target",
                d.path.display().to_string(),
                &display,
            )(io_errno(e))
        })?;
        let o = MountOptions {
            flags: MsFlags::empty(),
            bind: true,
            ..Default::default()
        };
        return bind_mount(d.path, root, d.path, &target, &o, &display);
    }
    let parent = d.path.parent().unwrap_or(Path::new("/"));
    let name = d.path.file_name().ok_or_else(|| RootfsError::Invalid {
        target: d.path.to_path_buf(),
        reason: "device path has no file name".into(),
    })?;
    let dir = safe_path::mkdir_all(root, parent, 0o755).map_err(|e| {
        step(
            "creating directory for device",
            d.path.display().to_string(),
            &display,
        )(io_errno(e))
    })?;
    // O_PATH fds can't be used with mknodat; open the directory for real.
    let dirfd = safe_path::open(root, parent, OFlags::DIRECTORY | OFlags::RDONLY).map_err(|e| {
        step(
            "opening directory for device",
            d.path.display().to_string(),
            &display,
        )(io_errno(e))
    })?;
    drop(dir);
    let _ = nix::unistd::unlinkat(dirfd.as_fd(), name, nix::unistd::UnlinkatFlags::NoRemoveDir);
    mknodat(
        dirfd.as_fd(),
        name,
        d.kind,
        Mode::from_bits_truncate(d.mode),
        makedev(d.major, d.minor),
    )
    .map_err(step(
        "creating device",
        d.path.display().to_string(),
        &display,
    ))?;
    // mknod is subject to the umask: set the mode explicitly.
    nix::sys::stat::fchmodat(
        dirfd.as_fd(),
        name,
        Mode::from_bits_truncate(d.mode),
        nix::sys::stat::FchmodatFlags::NoFollowSymlink,
    )
    .or_else(|e| {
        if e == Errno::EOPNOTSUPP {
            Ok(())
        } else {
            Err(e)
        }
    })
    .map_err(step(
        "setting mode of device",
        d.path.display().to_string(),
        &display,
    ))?;
    if d.uid.is_some() || d.gid.is_some() {
        nix::unistd::fchownat(
            dirfd.as_fd(),
            name,
            d.uid.map(nix::unistd::Uid::from_raw),
            d.gid.map(nix::unistd::Gid::from_raw),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(step(
            "changing owner of device",
            d.path.display().to_string(),
            &display,
        ))?;
    }
    Ok(())
}

/// /dev/fd, /dev/std{in,out,err} and /dev/ptmx, as every runtime provides.
pub fn setup_dev_symlinks(rootfs: &Path, root: BorrowedFd<'_>) -> Result<(), RootfsError> {
    let dev = safe_path::open(root, Path::new("/dev"), OFlags::DIRECTORY | OFlags::RDONLY);
    let Ok(dev) = dev else { return Ok(()) };
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        if name == "ptmx" {
            // A bind-mounted or created /dev/ptmx would bypass the container's devpts.
            let _ =
                nix::unistd::unlinkat(dev.as_fd(), name, nix::unistd::UnlinkatFlags::NoRemoveDir);
        }
        match nix::unistd::symlinkat(target, dev.as_fd(), name) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => {
                return Err(step(
                    "creating symlink",
                    target,
                    &rootfs.join("dev").join(name),
                )(e))
            }
        }
    }
    Ok(())
}
