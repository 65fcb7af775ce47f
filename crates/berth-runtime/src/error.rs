//! The crate's error: each module's own error folded in. Messages are lowercase and name
//! what was being done to what (`mounting proc at /run/x/rootfs/proc: EPERM`).

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Cgroup(#[from] crate::cgroups::CgroupError),
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    #[error(transparent)]
    Bpf(#[from] crate::bpf::BpfError),
    #[error(transparent)]
    Namespace(#[from] crate::namespaces::NamespaceError),
    #[error(transparent)]
    IdMap(#[from] crate::idmap::IdMapError),
    #[error(transparent)]
    Rootfs(#[from] crate::rootfs::RootfsError),
    #[error(transparent)]
    Process(#[from] crate::process::ProcessError),
    #[error(transparent)]
    Caps(#[from] crate::capabilities::CapError),
    #[error(transparent)]
    Hook(#[from] crate::hooks::HookError),
    #[error(transparent)]
    Console(#[from] crate::console::ConsoleError),
    #[error(transparent)]
    Sync(#[from] crate::sync::SyncError),
    #[error(transparent)]
    Seal(#[from] crate::sealed::SealError),
    /// A step of the container's own setup failed; the message came from inside.
    #[error("{0}")]
    Container(String),
    /// The container is not in a state that allows the operation.
    #[error("container {id:?} is {status}: {what}")]
    BadStatus {
        id: String,
        status: crate::state::Status,
        what: String,
    },
    #[error("{op}: {errno}")]
    Sys {
        op: String,
        errno: nix::errno::Errno,
    },
    #[error("{0}")]
    Invalid(String),
}

impl From<crate::sync::ExpectError> for Error {
    fn from(e: crate::sync::ExpectError) -> Self {
        match e {
            crate::sync::ExpectError::Sync(s) => Error::Sync(s),
            crate::sync::ExpectError::Remote(m) => Error::Container(m),
        }
    }
}

pub fn sys(op: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> Error {
    let op = op.into();
    move |errno| Error::Sys { op, errno }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
