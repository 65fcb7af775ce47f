//! A container's cgroup, on cgroup v1 (one directory per mounted hierarchy) or cgroup v2
//! (one directory in the unified hierarchy).
//!
//! [`Cgroup::new`] only computes paths (from /proc/self/mountinfo and /proc/self/cgroup, read
//! once); the value is serialisable so `create` can persist it in state.json and later
//! invocations (`kill`, `pause`, `update`, `delete`, `ps`) act on the very same directories
//! without re-resolving a relative cgroupsPath from a different process.
//!
//! Layout: `mountinfo` (where the hierarchies are), `path` (cgroupsPath → cgroup path),
//! `v1`/`v2` (what to write where), `fs` (file helpers with errors naming the file).

mod devices_bpf;
mod fs;
pub mod mountinfo;
pub mod path;
pub mod prewarm;
mod v1;
mod v2;

#[cfg(test)]
mod tests;

use std::io;
use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxResources;
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use mountinfo::{Hierarchy, V1Hierarchy, V2Hierarchy};
pub use path::{expand_slice, resolve_cgroups_path, CgroupPath};

#[derive(Debug, Error)]
pub enum CgroupError {
    #[error("reading {}: {source}", .path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("writing {value:?} to {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        value: String,
        source: io::Error,
    },
    #[error("creating cgroup {}: {source}", .path.display())]
    Create { path: PathBuf, source: io::Error },
    #[error("removing cgroup {}: {source}", .path.display())]
    Remove { path: PathBuf, source: io::Error },
    #[error("invalid cgroupsPath {path:?}: {reason}")]
    InvalidPath { path: String, reason: String },
    #[error("no usable cgroup hierarchy: {0}")]
    NoHierarchy(String),
    #[error("the {controller} cgroup controller is not mounted, but {what} was requested")]
    ControllerMissing { controller: String, what: String },
    #[error("{}: no such file, {what} is not supported on this host", .path.display())]
    Unsupported { path: PathBuf, what: String },
    #[error("invalid {what}: {reason}")]
    InvalidResource { what: String, reason: String },
    #[error("setting memory limit to {limit} in {}: the cgroup uses {usage} bytes and cannot be shrunk below the new limit", .path.display())]
    MemoryBelowUsage {
        path: PathBuf,
        limit: i64,
        usage: String,
    },
    #[error("freezing {}: still {state:?} after {secs}s", .path.display())]
    FreezeTimeout {
        path: PathBuf,
        state: String,
        secs: u64,
    },
    #[error("freezing {}: unexpected state {state:?}", .path.display())]
    FreezerState { path: PathBuf, state: String },
    #[error("{step} cgroup {}: {source}", .path.display())]
    DeviceFilter {
        step: String,
        path: PathBuf,
        source: io::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupMode {
    V1,
    V2,
}

/// The host's cgroup mode: v2 iff cgroup2 is mounted at /sys/fs/cgroup (a hybrid host's
/// /sys/fs/cgroup/unified does not count).
pub fn detect_mode() -> Result<CgroupMode, CgroupError> {
    Ok(mountinfo::detect_mode_from(&mountinfo::read_mountinfo()?))
}

/// Whether `devices` rules are enforced on cgroup v2: yes, by an eBPF program attached to
/// the cgroup (BPF_CGROUP_DEVICE, see `devices_bpf`). The runtime reports this in
/// `features`.
pub fn v2_devices_supported() -> bool {
    true
}

/// The container's directory in one v1 hierarchy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct V1Dir {
    /// The hierarchy's controllers: ["memory"], ["cpu", "cpuacct"], ["name=systemd"].
    pub controllers: Vec<String>,
    pub mount_point: PathBuf,
    /// The cgroup path within the hierarchy ("/process_api/x/berth/c1").
    pub path: String,
    /// `mount_point` + `path`.
    pub dir: PathBuf,
}

impl V1Dir {
    /// The name of the hierarchy's directory under /sys/fs/cgroup ("memory", "cpu,cpuacct",
    /// "systemd").
    pub fn mount_name(&self) -> String {
        self.mount_point
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    pub fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
enum Layout {
    V1 {
        dirs: Vec<V1Dir>,
    },
    V2 {
        mount_point: PathBuf,
        path: String,
        dir: PathBuf,
    },
}

/// The inputs that place a container's cgroup, as one value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupConfig {
    /// The spec's linux.cgroupsPath (None or "" for the default "berth/<id>").
    pub cgroups_path: Option<String>,
    pub container_id: String,
    /// --systemd-cgroup: cgroupsPath is "slice:prefix:name".
    pub systemd: bool,
}

impl CgroupConfig {
    /// Places the cgroup in `hierarchy` (see [`Cgroup::with_hierarchy`]).
    pub fn place(&self, hierarchy: &Hierarchy) -> Result<Cgroup, CgroupError> {
        Cgroup::with_hierarchy(
            hierarchy,
            self.cgroups_path.as_deref(),
            &self.container_id,
            self.systemd,
        )
    }
}

/// One container's cgroup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cgroup {
    layout: Layout,
}

/// A point-in-time reading for `berth stats`; None where the controller or file is absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Total CPU time consumed, nanoseconds.
    pub cpu_usage_ns: Option<u64>,
    pub memory_usage_bytes: Option<u64>,
    /// None when unlimited.
    pub memory_limit_bytes: Option<u64>,
    pub pids_current: Option<u64>,
    /// None when unlimited.
    pub pids_limit: Option<u64>,
}

fn join_cgroup(mount_point: &Path, path: &str) -> PathBuf {
    mount_point.join(path.trim_start_matches('/'))
}

impl Cgroup {
    /// Computes the container's cgroup directories for this host. Reads /proc/self/mountinfo
    /// and /proc/self/cgroup once; touches nothing else.
    pub fn new(
        cgroups_path: Option<&str>,
        container_id: &str,
        systemd_form: bool,
    ) -> Result<Self, CgroupError> {
        Self::with_hierarchy(
            &Hierarchy::current()?,
            cgroups_path,
            container_id,
            systemd_form,
        )
    }

    /// [`new`](Self::new) on an explicit layout (tests build one from text with
    /// [`Hierarchy::parse`] and [`Hierarchy::with_root`]).
    pub fn with_hierarchy(
        hierarchy: &Hierarchy,
        cgroups_path: Option<&str>,
        container_id: &str,
        systemd_form: bool,
    ) -> Result<Self, CgroupError> {
        let cp = CgroupPath::parse(cgroups_path, container_id, systemd_form)?;
        let layout = match (hierarchy.mode, &hierarchy.v2) {
            (CgroupMode::V2, Some(h)) => {
                let path = cp.resolve_v2(&h.own);
                Layout::V2 {
                    dir: join_cgroup(&h.mount_point, &path),
                    mount_point: h.mount_point.clone(),
                    path,
                }
            }
            (CgroupMode::V2, None) => {
                return Err(CgroupError::NoHierarchy(
                    "cgroup v2 mode without a cgroup2 mount".into(),
                ))
            }
            (CgroupMode::V1, _) => {
                if hierarchy.v1.is_empty() {
                    return Err(CgroupError::NoHierarchy(
                        "no cgroup v1 hierarchy is mounted".into(),
                    ));
                }
                let dirs = hierarchy
                    .v1
                    .iter()
                    .map(|h| {
                        let path = cp.resolve(&h.own);
                        V1Dir {
                            controllers: h.controllers.clone(),
                            mount_point: h.mount_point.clone(),
                            dir: join_cgroup(&h.mount_point, &path),
                            path,
                        }
                    })
                    .collect();
                Layout::V1 { dirs }
            }
        };
        Ok(Cgroup { layout })
    }

    pub fn mode(&self) -> CgroupMode {
        match self.layout {
            Layout::V1 { .. } => CgroupMode::V1,
            Layout::V2 { .. } => CgroupMode::V2,
        }
    }

    /// Creates the directories (mkdir -p). v1: new cpuset directories get the cpus/mems of
    /// their parent, or no task could join them. v2: the parents delegate the controllers
    /// the container may be limited by.
    pub fn create(&self) -> Result<(), CgroupError> {
        match &self.layout {
            Layout::V1 { dirs } => v1::create(dirs),
            Layout::V2 {
                mount_point, dir, ..
            } => v2::create(mount_point, dir),
        }
    }

    /// Moves process `pid` (and so its future children) into the cgroup.
    pub fn apply(&self, pid: i32) -> Result<(), CgroupError> {
        let pid = pid.to_string();
        match &self.layout {
            Layout::V1 { dirs } => dirs
                .iter()
                .try_for_each(|d| fs::write(&d.dir, "cgroup.procs", &pid)),
            Layout::V2 { dir, .. } => fs::write(dir, "cgroup.procs", &pid),
        }
    }

    /// Writes the spec's resources (create, and `update`). Values that are unset are not
    /// written.
    pub fn set(&self, res: &LinuxResources) -> Result<(), CgroupError> {
        match &self.layout {
            Layout::V1 { dirs } => v1::set(dirs, res),
            Layout::V2 { dir, .. } => v2::set(dir, res),
        }
    }

    /// The processes in the cgroup and its child cgroups (sorted, no duplicates). A cgroup
    /// that no longer exists has none.
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        let dir = match &self.layout {
            Layout::V1 { dirs } => match v1::pids_dir(dirs) {
                Some(d) => d,
                None => return Ok(Vec::new()),
            },
            Layout::V2 { dir, .. } => dir.as_path(),
        };
        let mut out = Vec::new();
        fs::collect_pids(dir, &mut out)?;
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// Freezes every process of the cgroup; returns once the kernel reports it frozen.
    pub fn freeze(&self) -> Result<(), CgroupError> {
        match &self.layout {
            Layout::V1 { dirs } => v1::freeze(dirs),
            Layout::V2 { dir, .. } => v2::freeze(dir),
        }
    }

    pub fn thaw(&self) -> Result<(), CgroupError> {
        match &self.layout {
            Layout::V1 { dirs } => v1::thaw(dirs),
            Layout::V2 { dir, .. } => v2::thaw(dir),
        }
    }

    /// Whether the cgroup is frozen (false when it, or the freezer, does not exist).
    pub fn is_frozen(&self) -> Result<bool, CgroupError> {
        match &self.layout {
            Layout::V1 { dirs } => v1::is_frozen(dirs),
            Layout::V2 { dir, .. } => v2::is_frozen(dir),
        }
    }

    pub fn stats(&self) -> Result<Stats, CgroupError> {
        match &self.layout {
            Layout::V1 { dirs } => v1::stats(dirs),
            Layout::V2 { dir, .. } => v2::stats(dir),
        }
    }

    /// Removes the container's directories, child cgroups first. Callers kill the processes
    /// first; directories still busy with exiting processes are retried for a while. Already
    /// removed directories are fine: delete is idempotent.
    /// Containers live under a shared "berth" directory (the default "berth/<id>", the
    /// engine's "/berth/<id>"); the last one out removes it, so nothing stays behind.
    /// Best effort: rmdir fails harmlessly while other containers still use it, and a
    /// concurrent create recreates it (mkdir_p retries on ENOENT).
    fn prune(&self, dir: &Path) {
        if let Some(parent) = dir.parent() {
            if parent.file_name().is_some_and(|n| n == "berth") {
                let _ = std::fs::remove_dir(parent);
            }
        }
    }

    pub fn destroy(&self) -> Result<(), CgroupError> {
        match &self.layout {
            Layout::V1 { dirs } => {
                // Try every hierarchy even if one fails, so a retry has less left to do.
                let mut first_err = None;
                for d in dirs {
                    if let Err(e) = fs::remove_cgroup(&d.dir) {
                        first_err.get_or_insert(e);
                    }
                    self.prune(&d.dir);
                }
                first_err.map_or(Ok(()), Err)
            }
            Layout::V2 { dir, .. } => {
                fs::remove_cgroup(dir)?;
                self.prune(dir);
                Ok(())
            }
        }
    }

    /// v1: (directory name under /sys/fs/cgroup, host directory of the container's cgroup)
    /// per hierarchy, for mounting cgroupfs into the container. Empty on v2.
    pub fn v1_mounts(&self) -> Vec<(String, PathBuf)> {
        self.v1_dirs()
            .iter()
            .map(|d| (d.mount_name(), d.dir.clone()))
            .collect()
    }

    /// v1: the container's directory in every hierarchy. Empty on v2.
    pub fn v1_dirs(&self) -> &[V1Dir] {
        match &self.layout {
            Layout::V1 { dirs } => dirs,
            Layout::V2 { .. } => &[],
        }
    }

    /// v2: the container's cgroup directory.
    pub fn v2_path(&self) -> Option<PathBuf> {
        match &self.layout {
            Layout::V1 { .. } => None,
            Layout::V2 { dir, .. } => Some(dir.clone()),
        }
    }

    /// The cgroup path inside the hierarchy ("/berth/c1"): on v1, that of the memory
    /// hierarchy (else the first), since relative paths differ per hierarchy.
    pub fn cgroup_path(&self) -> &str {
        match &self.layout {
            Layout::V1 { dirs } => dirs
                .iter()
                .find(|d| d.has("memory"))
                .or(dirs.first())
                .map_or("/", |d| &d.path),
            Layout::V2 { path, .. } => path,
        }
    }
}
