//! A container's state on disk: `<root>/<id>/state.json` (written atomically) and the
//! `exec.fifo` that holds a created container's init until `start`.
//!
//! The status is never stored: it is derived from the init process (alive? the same process,
//! by start time?), the fifo and the freezer, so a crash can't leave a stale status behind.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::cgroups::Cgroup;

pub const STATE_FILE: &str = "state.json";
pub const EXEC_FIFO: &str = "exec.fifo";

#[derive(Debug, Error)]
pub enum StateError {
    #[error("container {0:?} does not exist")]
    NotFound(String),
    #[error("container {0:?} already exists")]
    Exists(String),
    #[error("invalid container id {id:?}: {reason}")]
    InvalidId { id: String, reason: &'static str },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// What the runtime remembers about a container between invocations.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Saved {
    pub id: String,
    pub pid: i32,
    /// Start time of the init (field 22 of /proc/PID/stat): tells a recycled pid apart.
    pub pid_start: u64,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    pub cgroup: Option<Cgroup>,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    /// The spec as created: exec needs the namespaces and process defaults, delete the
    /// poststop hooks; the bundle may be gone by then.
    pub spec: Spec,
    #[serde(default)]
    pub owner: String,
}

/// Checks a container id: it names a directory, so only a safe alphabet.
pub fn validate_id(id: &str) -> Result<(), StateError> {
    let bad = |reason| StateError::InvalidId {
        id: id.to_string(),
        reason,
    };
    if id.is_empty() {
        return Err(bad("empty"));
    }
    if id.len() > 1024 {
        return Err(bad("longer than 1024 bytes"));
    }
    if id == "." || id == ".." {
        return Err(bad("not a name"));
    }
    if id == crate::bpf::CACHE_DIR {
        return Err(bad("reserved for the runtime's seccomp cache"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_+-.".contains(&b))
    {
        return Err(bad(
            "only letters, digits, '_', '+', '-' and '.' are allowed",
        ));
    }
    Ok(())
}

pub fn dir(root: &Path, id: &str) -> PathBuf {
    root.join(id)
}

impl Saved {
    pub fn load(root: &Path, id: &str) -> Result<Saved, StateError> {
        validate_id(id)?;
        let path = dir(root, id).join(STATE_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StateError::NotFound(id.to_string()))
            }
            Err(source) => {
                return Err(StateError::Io {
                    op: "reading",
                    path,
                    source,
                })
            }
        };
        serde_json::from_slice(&bytes).map_err(|source| StateError::Parse { path, source })
    }

    /// Writes state.json through a temporary file and rename, so readers never see half.
    pub fn save(&self, root: &Path) -> Result<(), StateError> {
        let d = dir(root, &self.id);
        let tmp = d.join(".state.json.tmp");
        let path = d.join(STATE_FILE);
        let bytes = serde_json::to_vec(self).map_err(|source| StateError::Parse {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&tmp, bytes).map_err(|source| StateError::Io {
            op: "writing",
            path: tmp.clone(),
            source,
        })?;
        std::fs::rename(&tmp, &path).map_err(|source| StateError::Io {
            op: "renaming into",
            path,
            source,
        })
    }

    pub fn dir(&self, root: &Path) -> PathBuf {
        dir(root, &self.id)
    }

    /// Whether the recorded init is still the same live (non-zombie) process.
    pub fn init_alive(&self) -> bool {
        match proc_stat(self.pid) {
            Some((state, start)) => start == self.pid_start && state != 'Z' && state != 'X',
            None => false,
        }
    }

    pub fn status(&self, root: &Path) -> Status {
        if self.pid <= 0 || !self.init_alive() {
            return Status::Stopped;
        }
        if self.dir(root).join(EXEC_FIFO).exists() {
            return Status::Created;
        }
        if let Some(cg) = &self.cgroup {
            if cg.is_frozen().unwrap_or(false) {
                return Status::Paused;
            }
        }
        Status::Running
    }

    /// The OCI state document (`state` verb and hooks' stdin).
    pub fn oci_state(&self, status: Status) -> serde_json::Value {
        let mut v = serde_json::json!({
            "ociVersion": "1.2.0",
            "id": self.id,
            "status": status.to_string(),
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "created": self.created,
            "owner": self.owner,
        });
        if status != Status::Stopped {
            v["pid"] = self.pid.into();
        } else {
            v["pid"] = 0.into();
        }
        if !self.annotations.is_empty() {
            v["annotations"] = serde_json::to_value(&self.annotations).unwrap_or_default();
        }
        v
    }
}

/// (state char, start time in clock ticks) of a process, from /proc/PID/stat.
pub fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: split after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    let state = fields.next()?.chars().next()?;
    // rest starts at field 3; start time is field 22.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// Lists container ids under `root`.
pub fn list_ids(root: &Path) -> Result<Vec<String>, StateError> {
    let rd = match std::fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(StateError::Io {
                op: "listing",
                path: root.to_path_buf(),
                source,
            })
        }
    };
    let mut ids: Vec<String> = rd
        .flatten()
        .filter(|e| e.path().join(STATE_FILE).exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    ids.sort();
    Ok(ids)
}

/// Current time as RFC 3339 with nanoseconds, UTC (what runc writes in `created`).
pub fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs() as i64, d.subsec_nanos())
}

pub fn rfc3339(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86400);
    let sod = secs.rem_euclid(86400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        validate_id("abc-1.2_x+y").unwrap();
        for bad in ["", "..", "a/b", "a b", "x\n"] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(1_709_251_199, 5), "2024-02-29T23:59:59.000000005Z");
        assert_eq!(rfc3339(951_782_400, 0), "2000-02-29T00:00:00.000000000Z");
    }

    #[test]
    fn proc_stat_of_self() {
        let (state, start) = proc_stat(std::process::id() as i32).unwrap();
        assert!(state == 'R' || state == 'S', "{state}");
        assert!(start > 0);
        assert!(proc_stat(i32::MAX).is_none());
    }
}
