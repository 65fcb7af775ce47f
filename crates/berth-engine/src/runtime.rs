//! Talking to berth-runtime. Creating a container (and exec) goes through the monitor,
//! which runs the runtime as a separate, sealed program with runc's command line, the way
//! conmon runs runc. Everything else (state, start, kill, delete, cgroup stats) uses the
//! runtime crate's library directly, which execs nothing.

use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum RuntimeError {
    #[error("{verb} {id}: {message}")]
    Failed {
        verb: &'static str,
        id: String,
        message: String,
    },
    #[error(transparent)]
    Lib(#[from] berth_runtime::Error),
}

#[derive(Debug, Clone)]
pub struct Runtime {
    pub binary: PathBuf,
    pub root: PathBuf,
}

/// Live status as the runtime sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Live {
    Created,
    Running,
    Paused,
    /// Stopped, or unknown to the runtime (removed, or the host rebooted).
    Stopped,
}

impl Runtime {
    /// Finds berth-runtime next to the running executable, then on PATH.
    pub fn locate(root: &Path) -> Runtime {
        Runtime {
            binary: sibling("berth-runtime"),
            root: root.to_path_buf(),
        }
    }

    /// Wraps a library call's error with the verb and container it concerned.
    fn lib<T>(
        verb: &'static str,
        id: &str,
        r: berth_runtime::error::Result<T>,
    ) -> Result<T, RuntimeError> {
        r.map_err(|e| RuntimeError::Failed {
            verb,
            id: id.to_string(),
            message: e.to_string(),
        })
    }

    // start, kill and delete run in this process through the runtime's library: they
    // create no namespaces and exec nothing from the container, and a fork+exec of the
    // runtime binary costs several milliseconds each. create and exec (which do) go
    // through the monitor and the sealed runtime binary.

    pub fn start(&self, id: &str) -> Result<(), RuntimeError> {
        Self::lib("start", id, berth_runtime::container::start(&self.root, id))
    }

    pub fn kill(&self, id: &str, signal: &str, all: bool) -> Result<(), RuntimeError> {
        let sig = Self::lib("kill", id, berth_runtime::container::parse_signal(signal))?;
        Self::lib(
            "kill",
            id,
            berth_runtime::container::kill(&self.root, id, sig, all),
        )
    }

    pub fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        Self::lib(
            "delete",
            id,
            berth_runtime::container::delete(&self.root, id, true),
        )
    }

    pub fn live(&self, id: &str) -> Live {
        match berth_runtime::container::load(&self.root, id) {
            Ok((_, st)) => match st {
                berth_runtime::state::Status::Created | berth_runtime::state::Status::Creating => {
                    Live::Created
                }
                berth_runtime::state::Status::Running => Live::Running,
                berth_runtime::state::Status::Paused => Live::Paused,
                berth_runtime::state::Status::Stopped => Live::Stopped,
            },
            Err(_) => Live::Stopped,
        }
    }

    /// The init pid while the container is alive.
    pub fn pid(&self, id: &str) -> Option<i32> {
        match berth_runtime::container::load(&self.root, id) {
            Ok((s, st)) if st != berth_runtime::state::Status::Stopped => Some(s.pid),
            _ => None,
        }
    }

    /// The container's cgroup, for stats and OOM detection.
    pub fn cgroup(&self, id: &str) -> Option<berth_runtime::cgroups::Cgroup> {
        berth_runtime::container::load(&self.root, id)
            .ok()
            .and_then(|(s, _)| s.cgroup)
    }
}

/// A helper binary installed next to the running executable (target/debug in tests,
/// /usr/local/bin when installed), else found on PATH by name.
pub fn sibling(name: &str) -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            let p = dir.join(name);
            if p.exists() {
                return p;
            }
            // Integration tests run from target/<profile>/deps.
            if let Some(up) = dir.parent() {
                let p = up.join(name);
                if p.exists() {
                    return p;
                }
            }
        }
    }
    PathBuf::from(name)
}
