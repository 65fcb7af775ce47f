//! `ps`: the processes in a container's cgroup.

use std::path::Path;

use crate::error::Result;
use crate::state::Status;

pub fn ps(root: &Path, id: &str) -> Result<Vec<i32>> {
    let (saved, status) = super::load(root, id)?;
    if status == Status::Stopped {
        return Ok(Vec::new());
    }
    match &saved.cgroup {
        Some(cg) => Ok(cg.pids()?),
        None => Ok(vec![saved.pid]),
    }
}
