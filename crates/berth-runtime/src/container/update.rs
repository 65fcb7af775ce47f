//! `update`: change a live container's cgroup resources.

use std::path::Path;

use oci_spec::runtime::LinuxResources;

use crate::error::{Error, Result};
use crate::state::Status;

pub fn update(root: &Path, id: &str, res: &LinuxResources) -> Result<()> {
    let (saved, status) = super::load(root, id)?;
    if status == Status::Stopped {
        return Err(super::bad_status(
            id,
            status,
            "cannot update a stopped container",
        ));
    }
    let cg = saved
        .cgroup
        .as_ref()
        .ok_or_else(|| Error::Invalid(format!("container {id:?} has no cgroup")))?;
    // Only the fields given are written; the rest of the cgroup stays as it is.
    Ok(cg.set(res)?)
}
