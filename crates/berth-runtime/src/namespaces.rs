//! Creating and joining namespaces.
//!
//! Order matters (as in runc's nsexec): namespaces given by path are joined first, while we
//! still hold host capabilities; then a new user namespace is unshared (the parent writes its
//! id maps); then the remaining new namespaces are unshared together. A joined user namespace
//! is entered before the other joined ones, since it owns them.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::stat::Mode;
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum NamespaceError {
    #[error("opening {kind} namespace {path}: {source}")]
    Open {
        kind: &'static str,
        path: PathBuf,
        source: nix::Error,
    },
    #[error("joining {kind} namespace {path}: {source}")]
    Join {
        kind: &'static str,
        path: PathBuf,
        source: nix::Error,
    },
    #[error("creating namespaces ({kinds}): {source}")]
    Unshare { kinds: String, source: nix::Error },
    #[error("writing time namespace offsets: {0}")]
    TimeOffsets(std::io::Error),
}

pub fn flag(t: LinuxNamespaceType) -> CloneFlags {
    match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        // nix has no constant for CLONE_NEWTIME.
        LinuxNamespaceType::Time => CloneFlags::from_bits_retain(libc::CLONE_NEWTIME),
    }
}

/// The name under /proc/PID/ns/.
pub fn proc_name(t: LinuxNamespaceType) -> &'static str {
    match t {
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Time => "time",
    }
}

/// Joins the namespace at `path`.
pub fn join(t: LinuxNamespaceType, path: &Path) -> Result<(), NamespaceError> {
    let fd = open(t, path)?;
    enter(t, &fd, path)
}

/// Opens a namespace handle (to enter later, e.g. before /proc changes under us).
pub fn open(t: LinuxNamespaceType, path: &Path) -> Result<OwnedFd, NamespaceError> {
    nix::fcntl::open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()).map_err(|source| {
        NamespaceError::Open {
            kind: proc_name(t),
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Enters an opened namespace; `path` is for the error message.
pub fn enter(t: LinuxNamespaceType, fd: &OwnedFd, path: &Path) -> Result<(), NamespaceError> {
    setns(fd.as_fd(), flag(t)).map_err(|source| NamespaceError::Join {
        kind: proc_name(t),
        path: path.to_path_buf(),
        source,
    })
}

/// Joins every namespace given by path, the user namespace first.
pub fn join_paths(namespaces: &[LinuxNamespace]) -> Result<(), NamespaceError> {
    let mut with_path: Vec<&LinuxNamespace> =
        namespaces.iter().filter(|n| n.path().is_some()).collect();
    with_path.sort_by_key(|n| n.typ() != LinuxNamespaceType::User);
    // Open all first: joining a mount namespace changes what later paths resolve to.
    let mut handles = Vec::new();
    for ns in with_path {
        if let Some(p) = ns.path() {
            handles.push((ns.typ(), open(ns.typ(), p)?, p));
        }
    }
    for (t, fd, p) in &handles {
        enter(*t, fd, p)?;
    }
    Ok(())
}

/// Unshares the given set of new namespaces in one call.
pub fn unshare_new(flags: CloneFlags) -> Result<(), NamespaceError> {
    if flags.is_empty() {
        return Ok(());
    }
    unshare(flags).map_err(|source| NamespaceError::Unshare {
        kinds: describe(flags),
        source,
    })
}

/// Flags of the namespaces to create (those without a path), minus the user namespace.
pub fn new_flags(namespaces: &[LinuxNamespace]) -> CloneFlags {
    namespaces
        .iter()
        .filter(|n| n.path().is_none() && n.typ() != LinuxNamespaceType::User)
        .fold(CloneFlags::empty(), |acc, n| acc | flag(n.typ()))
}

pub fn wants_new(namespaces: &[LinuxNamespace], t: LinuxNamespaceType) -> bool {
    namespaces
        .iter()
        .any(|n| n.typ() == t && n.path().is_none())
}

fn describe(flags: CloneFlags) -> String {
    use LinuxNamespaceType::*;
    [User, Mount, Pid, Network, Uts, Ipc, Cgroup, Time]
        .into_iter()
        .filter(|t| flags.contains(flag(*t)))
        .map(proc_name)
        .collect::<Vec<_>>()
        .join(",")
}

/// Writes monotonic/boottime offsets of a freshly unshared time namespace (before any
/// process enters it).
pub fn write_time_offsets(
    offsets: &std::collections::HashMap<String, oci_spec::runtime::LinuxTimeOffset>,
) -> Result<(), NamespaceError> {
    let mut text = String::new();
    for (clock, off) in offsets {
        text.push_str(&format!(
            "{} {} {}\n",
            clock,
            off.secs().unwrap_or(0),
            off.nanosecs().unwrap_or(0)
        ));
    }
    if text.is_empty() {
        return Ok(());
    }
    std::fs::write("/proc/self/timens_offsets", text).map_err(NamespaceError::TimeOffsets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_flags_skip_user_and_paths() {
        let ns: Vec<LinuxNamespace> = serde_json::from_str(
            r#"[{"type":"user"},{"type":"pid"},{"type":"network","path":"/run/netns/x"},{"type":"mount"}]"#,
        )
        .unwrap();
        let f = new_flags(&ns);
        assert_eq!(f, CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNS);
        assert!(wants_new(&ns, LinuxNamespaceType::User));
        assert!(!wants_new(&ns, LinuxNamespaceType::Network));
        assert_eq!(describe(f), "mnt,pid");
    }
}
