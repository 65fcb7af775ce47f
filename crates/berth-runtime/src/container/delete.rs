//! `delete`: remove a stopped (or, with --force, any) container: processes, cgroup,
//! poststop hooks, state directory. Idempotent after a crash.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::error::{Error, Result};
use crate::hooks;
use crate::state::{self, Saved, StateError, Status};

pub fn delete(root: &Path, id: &str, force: bool) -> Result<()> {
    let saved = match Saved::load(root, id) {
        Ok(s) => s,
        // runc: deleting a container that is already gone succeeds with --force.
        Err(StateError::NotFound(_)) if force => {
            let _ = std::fs::remove_dir_all(state::dir(root, id));
            return Ok(());
        }
        Err(StateError::Parse { .. }) if force => {
            return std::fs::remove_dir_all(state::dir(root, id)).map_err(|e| Error::Sys {
                op: format!("removing state of {id}"),
                errno: crate::rootfs::io_errno(e),
            });
        }
        Err(e) => return Err(e.into()),
    };
    let status = saved.status(root);
    match status {
        Status::Stopped | Status::Created => {}
        _ if force => {}
        _ => {
            return Err(super::bad_status(
                id,
                status,
                "stop it first or use --force",
            ));
        }
    }
    if status != Status::Stopped {
        let _ = kill(Pid::from_raw(saved.pid), Signal::SIGKILL);
        if let Some(cg) = &saved.cgroup {
            super::create::kill_cgroup(cg);
        }
        if !super::wait_gone(|| saved.init_alive(), Duration::from_secs(10)) {
            return Err(Error::Container(format!(
                "container {id:?}: init (pid {}) did not exit after SIGKILL",
                saved.pid
            )));
        }
    }
    if let Some(cg) = &saved.cgroup {
        // Other processes of a shared PID namespace may still sit in the cgroup.
        super::create::kill_cgroup(cg);
        cg.destroy()?;
        crate::debug::step(|| "cgroup removed".into());
    }
    if let Some(h) = saved
        .spec
        .hooks()
        .as_ref()
        .and_then(|h| h.poststop().as_ref())
    {
        if let Err(e) = hooks::run("poststop", h, &saved.oci_state(Status::Stopped).to_string()) {
            eprintln!("berth: warning: {e}");
        }
    }
    std::fs::remove_dir_all(saved.dir(root)).map_err(|e| Error::Sys {
        op: format!("removing state directory {}", saved.dir(root).display()),
        errno: crate::rootfs::io_errno(e),
    })
}
