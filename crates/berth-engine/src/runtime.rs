//! Talking to berth-runtime the way podman talks to runc: as a separate program, with
//! runc's command line. Read-only queries (state, cgroup stats) use the runtime crate's
//! library directly, which forks nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum RuntimeError {
    #[error("running {runtime} {verb} {id}: {source}")]
    Spawn {
        runtime: PathBuf,
        verb: &'static str,
        id: String,
        source: std::io::Error,
    },
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

    fn run(&self, verb: &'static str, id: &str, args: &[&str]) -> Result<(), RuntimeError> {
        let out = Command::new(&self.binary)
            .arg("--root")
            .arg(&self.root)
            .arg(verb)
            .args(args)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|source| RuntimeError::Spawn {
                runtime: self.binary.clone(),
                verb,
                id: id.to_string(),
                source,
            })?;
        if out.status.success() {
            return Ok(());
        }
        let msg = String::from_utf8_lossy(&out.stderr);
        let msg = msg.trim().trim_start_matches("berth-runtime: ").to_string();
        Err(RuntimeError::Failed {
            verb,
            id: id.to_string(),
            message: if msg.is_empty() {
                format!("exited with {}", out.status)
            } else {
                msg
            },
        })
    }

    pub fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.run("start", id, &[])
    }

    pub fn kill(&self, id: &str, signal: &str, all: bool) -> Result<(), RuntimeError> {
        let mut a = vec![];
        if all {
            a.push("--all");
        }
        // runc's layout: kill [--all] ID SIGNAL.
        let out = Command::new(&self.binary)
            .arg("--root")
            .arg(&self.root)
            .arg("kill")
            .args(&a)
            .arg(id)
            .arg(signal)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|source| RuntimeError::Spawn {
                runtime: self.binary.clone(),
                verb: "kill",
                id: id.to_string(),
                source,
            })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(RuntimeError::Failed {
                verb: "kill",
                id: id.to_string(),
                message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }

    pub fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        self.run("delete", id, &["--force"])
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
