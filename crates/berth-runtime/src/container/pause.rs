//! `pause` / `resume`: the freezer cgroup.

use std::path::Path;

use crate::error::{Error, Result};
use crate::state::Status;

pub fn pause(root: &Path, id: &str) -> Result<()> {
    let (saved, status) = super::load(root, id)?;
    if status != Status::Running {
        return Err(super::bad_status(
            id,
            status,
            "only a running container can be paused",
        ));
    }
    let cg = saved
        .cgroup
        .as_ref()
        .ok_or_else(|| Error::Invalid(format!("container {id:?} has no cgroup")))?;
    Ok(cg.freeze()?)
}

pub fn resume(root: &Path, id: &str) -> Result<()> {
    let (saved, status) = super::load(root, id)?;
    if status != Status::Paused {
        return Err(super::bad_status(
            id,
            status,
            "only a paused container can be resumed",
        ));
    }
    let cg = saved
        .cgroup
        .as_ref()
        .ok_or_else(|| Error::Invalid(format!("container {id:?} has no cgroup")))?;
    Ok(cg.thaw()?)
}
