//! Writing a child's uid/gid maps from the parent.
//!
//! The parent is privileged in the parent user namespace, so it can write arbitrary maps
//! (more than one line, ranges other than its own uid) and leaves setgroups allowed, which
//! the container needs for `additionalGids`.

use std::path::PathBuf;

use oci_spec::runtime::LinuxIdMapping;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum IdMapError {
    #[error("writing {path} ({map:?}): {source}")]
    Write {
        path: PathBuf,
        map: String,
        source: std::io::Error,
    },
}

/// Formats mappings the way /proc/PID/uid_map wants them.
pub fn format(maps: &[LinuxIdMapping]) -> String {
    maps.iter()
        .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
        .collect()
}

/// Writes uid and gid maps for `pid`.
pub fn write(pid: i32, uids: &[LinuxIdMapping], gids: &[LinuxIdMapping]) -> Result<(), IdMapError> {
    for (file, maps) in [("uid_map", uids), ("gid_map", gids)] {
        let path = PathBuf::from(format!("/proc/{pid}/{file}"));
        let map = format(maps);
        std::fs::write(&path, &map).map_err(|source| IdMapError::Write { path, map, source })?;
    }
    Ok(())
}

/// Maps a container id to the host id, if it is mapped.
pub fn to_host(maps: &[LinuxIdMapping], id: u32) -> Option<u32> {
    maps.iter().find_map(|m| {
        let off = id.checked_sub(m.container_id())?;
        (off < m.size()).then(|| m.host_id() + off)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn maps() -> Vec<LinuxIdMapping> {
        serde_json::from_str(
            r#"[{"containerID":0,"hostID":100000,"size":1000},{"containerID":1000,"hostID":2000,"size":1}]"#,
        )
        .unwrap()
    }

    #[test]
    fn formats_lines() {
        assert_eq!(format(&maps()), "0 100000 1000\n1000 2000 1\n");
    }

    #[test]
    fn maps_ids_to_host() {
        let m = maps();
        assert_eq!(to_host(&m, 0), Some(100000));
        assert_eq!(to_host(&m, 999), Some(100999));
        assert_eq!(to_host(&m, 1000), Some(2000));
        assert_eq!(to_host(&m, 1001), None);
    }
}
