//! The lifecycle verbs, one file each, as runc's CLI exposes them.

mod create;
mod delete;
mod exec;
mod features;
mod kill;
mod list;
mod pause;
mod ps;
mod run;
mod start;
mod update;
mod wait;

pub use create::{create, CreateOpts};
pub use delete::delete;
pub use exec::{exec, ExecOpts};
pub use features::features;
pub use kill::{kill, parse_signal};
pub use list::{list, ListEntry};
pub use pause::{pause, resume};
pub use ps::ps;
pub use run::run;
pub use start::start;
pub use update::update;
pub use wait::{forward_and_wait, wait_gone, Exit};

use std::path::Path;

use crate::state::{Saved, Status};
use crate::{Error, Result};

/// Loads a container and its current status.
pub fn load(root: &Path, id: &str) -> Result<(Saved, Status)> {
    let s = Saved::load(root, id)?;
    let st = s.status(root);
    Ok((s, st))
}

/// The OCI state JSON of a container (the `state` verb).
pub fn state(root: &Path, id: &str) -> Result<serde_json::Value> {
    let (s, st) = load(root, id)?;
    Ok(s.oci_state(st))
}

pub(crate) fn bad_status(id: &str, status: Status, what: &str) -> Error {
    Error::BadStatus {
        id: id.to_string(),
        status,
        what: what.to_string(),
    }
}

/// Writes a pid file atomically (podman and conmon read it as soon as we exit).
pub fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    let tmp = path.with_extension("berth-tmp");
    std::fs::write(&tmp, pid.to_string())
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| Error::Sys {
            op: format!("writing pid file {}", path.display()),
            errno: crate::rootfs::io_errno(e),
        })
}
