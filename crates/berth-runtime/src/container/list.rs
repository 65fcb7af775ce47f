//! `list`: every container under the state root.

use std::path::Path;

use serde::Serialize;

use crate::error::Result;
use crate::state::{self, Saved};

#[derive(Debug, Serialize)]
pub struct ListEntry {
    pub id: String,
    pub pid: i32,
    pub status: String,
    pub bundle: String,
    pub created: String,
    pub owner: String,
}

pub fn list(root: &Path) -> Result<Vec<ListEntry>> {
    let mut out = Vec::new();
    for id in state::list_ids(root)? {
        // A container removed meanwhile is simply not listed.
        let Ok(s) = Saved::load(root, &id) else {
            continue;
        };
        let status = s.status(root);
        out.push(ListEntry {
            pid: if status == state::Status::Stopped {
                0
            } else {
                s.pid
            },
            status: status.to_string(),
            bundle: s.bundle.display().to_string(),
            created: s.created.clone(),
            owner: if s.owner.is_empty() {
                "root".into()
            } else {
                s.owner.clone()
            },
            id,
        });
    }
    Ok(out)
}
