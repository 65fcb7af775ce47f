//! Re-executing the runtime from a copy the container cannot write (CVE-2019-5736).
//!
//! A process in the container can reach the runtime binary through /proc/PID/exe while the
//! runtime joins the container, keep an O_PATH fd to it, and reopen it for writing once the
//! runtime has exited. We therefore re-exec before touching any container:
//!
//! 1. Preferred (cheap, ~0.1 ms): a detached, read-only bind mount of our own binary
//!    (`open_tree(OPEN_TREE_CLONE)` + `mount_setattr(MOUNT_ATTR_RDONLY)`), executed with
//!    execveat. /proc/PID/exe then resolves on that mount, and every reopen for writing
//!    fails with EROFS. The mount is attached nowhere, so no mount table changes.
//! 2. Fallback (kernels or contexts without the new mount API): a sealed memfd copy
//!    (F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL), as runc did for years.
//!
//! "Already protected" is decided from /proc/self/exe itself (read-only mount or sealed
//! memfd), not from an environment variable a caller could set.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::statvfs::{fstatvfs, FsFlags};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SealError {
    #[error("{op} for the protected runtime copy: {source}")]
    Io { op: &'static str, source: Errno },
}

fn io(op: &'static str) -> impl FnOnce(Errno) -> SealError {
    move |source| SealError::Io { op, source }
}

fn io_err(op: &'static str) -> impl FnOnce(std::io::Error) -> SealError {
    move |e| SealError::Io {
        op,
        source: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    }
}

const SEALS: SealFlag = SealFlag::from_bits_truncate(
    SealFlag::F_SEAL_SEAL.bits()
        | SealFlag::F_SEAL_SHRINK.bits()
        | SealFlag::F_SEAL_GROW.bits()
        | SealFlag::F_SEAL_WRITE.bits(),
);

/// Whether the running executable can't be written: on a read-only mount, or a sealed memfd.
pub fn is_protected() -> bool {
    let Ok(f) = std::fs::File::open("/proc/self/exe") else {
        return false;
    };
    if fstatvfs(f.as_fd()).is_ok_and(|s| s.flags().contains(FsFlags::ST_RDONLY)) {
        return true;
    }
    match fcntl(f.as_fd(), FcntlArg::F_GET_SEALS) {
        Ok(bits) => SealFlag::from_bits_truncate(bits).contains(SEALS),
        Err(_) => false,
    }
}

/// Replaces the current process with a protected copy of itself, same argv and
/// environment. Returns immediately when already protected, otherwise only on error.
pub fn ensure_sealed() -> Result<(), SealError> {
    if is_protected() {
        return Ok(());
    }
    let (args, env) = argv_envp();
    if let Ok(fd) = readonly_clone(c"/proc/self/exe") {
        // Falls through to the memfd copy if this exec fails.
        let _ = execveat_empty(&fd, &args, &env);
    }
    let mfd = sealed_memfd()?;
    let err = nix::unistd::fexecve(mfd.as_fd(), &args, &env).unwrap_err();
    Err(SealError::Io {
        op: "re-executing",
        source: err,
    })
}

/// A detached read-only bind mount of `path` (our own /proc/self/exe).
fn readonly_clone(path: &std::ffi::CStr) -> Result<OwnedFd, Errno> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    // SAFETY: open_tree takes a path and flags and returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    let fd = Errno::result(fd)? as i32;
    // SAFETY: the kernel just gave us this fd and nobody else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr reads `size` bytes of attr.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    Errno::result(r)?;
    Ok(fd)
}

fn execveat_empty(fd: &OwnedFd, args: &[CString], env: &[CString]) -> Errno {
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: NULL-terminated argv/envp of live CStrings; returns only on failure.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            fd.as_raw_fd(),
            c"".as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    Errno::last()
}

fn sealed_memfd() -> Result<OwnedFd, SealError> {
    let exe = std::fs::File::open("/proc/self/exe").map_err(io_err("opening /proc/self/exe"))?;
    let len = exe
        .metadata()
        .map_err(io_err("reading size of /proc/self/exe"))?
        .len() as usize;
    let mfd = memfd_create(
        c"berth-runtime",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .map_err(io("creating memfd"))?;
    let mut copied = 0usize;
    while copied < len {
        let n = nix::sys::sendfile::sendfile(mfd.as_fd(), exe.as_fd(), None, len - copied)
            .map_err(io("copying /proc/self/exe"))?;
        if n == 0 {
            break;
        }
        copied += n;
    }
    fcntl(mfd.as_fd(), FcntlArg::F_ADD_SEALS(SEALS)).map_err(io("sealing memfd"))?;
    Ok(mfd)
}

fn argv_envp() -> (Vec<CString>, Vec<CString>) {
    let args = std::env::args_os()
        .filter_map(|a| CString::new(a.into_encoded_bytes()).ok())
        .collect();
    let env = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv = k.into_encoded_bytes();
            kv.push(b'=');
            kv.extend(v.into_encoded_bytes());
            CString::new(kv).ok()
        })
        .collect();
    (args, env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memfd_copy_is_sealed_against_writes() {
        use std::io::Write;
        let mfd = sealed_memfd().unwrap();
        let path = format!("/proc/self/fd/{}", mfd.as_raw_fd());
        // Opening is allowed; every write (and truncation) is refused by the seals.
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let err = f.write_all(b"x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
        assert!(f.set_len(0).is_err());
    }

    #[test]
    fn readonly_clone_refuses_writes() {
        if !nix::unistd::Uid::effective().is_root() {
            return;
        }
        // A file nobody executes, so the refusal can only come from the mount.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bin");
        std::fs::write(&file, b"#!/bin/sh\n").unwrap();
        let c = CString::new(file.to_str().unwrap()).unwrap();
        let fd = readonly_clone(&c).unwrap();
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let err = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
        // The file itself stays writable through its own path.
        std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    }
}
