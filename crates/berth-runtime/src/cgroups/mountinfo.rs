//! Where the cgroup hierarchies are: /proc/self/mountinfo (mount points, v1 controllers)
//! joined with /proc/self/cgroup (our own place in each hierarchy).
//!
//! Both files are read once per [`Hierarchy::current`]; everything else here is pure text
//! processing so it is unit-tested on lines taken from real machines.

use std::path::{Path, PathBuf};

use super::{CgroupError, CgroupMode};

/// Where cgroup2 must be mounted for the host to count as "unified" (pure v2). A hybrid
/// host also mounts cgroup2 (at /sys/fs/cgroup/unified), but without usable controllers.
pub const UNIFIED_MOUNTPOINT: &str = "/sys/fs/cgroup";

/// One cgroup or cgroup2 line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    /// Field 4: the directory of the hierarchy that is mounted (not "/" in a container
    /// that got a bind of its own cgroup).
    pub root: String,
    /// Field 5, unescaped.
    pub mount_point: String,
    pub v2: bool,
    /// v1 only: the controllers of the hierarchy ("cpu", "cpuacct", "name=systemd").
    pub controllers: Vec<String>,
}

/// mountinfo, reduced to what cgroups need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mounts {
    pub cgroups: Vec<CgroupMount>,
    /// The file system type of the topmost mount at [`UNIFIED_MOUNTPOINT`], if any.
    pub unified_fstype: Option<String>,
}

/// Options of a v1 cgroup superblock that are not controllers.
const NON_CONTROLLER_OPTS: &[&str] = &[
    "rw",
    "ro",
    "none",
    "all",
    "noprefix",
    "clone_children",
    "cpuset_v2_mode",
    "xattr",
    "favordynmods",
    "nofavordynmods",
];

/// Undoes the octal escapes (`\040` for a space) the kernel uses in mountinfo paths.
fn unescape(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_string();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The controllers named by a v1 superblock's options ("rw,cpu,cpuacct" → cpu, cpuacct).
pub fn v1_controllers(super_opts: &str) -> Vec<String> {
    super_opts
        .split(',')
        .filter(|o| !o.is_empty() && !NON_CONTROLLER_OPTS.contains(o))
        .filter(|o| o.starts_with("name=") || !o.contains('='))
        .map(str::to_string)
        .collect()
}

/// Parses mountinfo text. Lines that do not parse are skipped: they cannot be cgroup
/// mounts we could use, and one odd line must not stop a container from starting.
pub fn parse_mountinfo(text: &str) -> Mounts {
    let mut m = Mounts::default();
    for line in text.lines() {
        // id parent maj:min root mount_point opts [optional...] - fstype source super_opts
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let mut pre_f = pre.split(' ');
        let (Some(_), Some(_), Some(_), Some(root), Some(mp)) = (
            pre_f.next(),
            pre_f.next(),
            pre_f.next(),
            pre_f.next(),
            pre_f.next(),
        ) else {
            continue;
        };
        let mut post_f = post.split(' ');
        let (Some(fstype), Some(_source)) = (post_f.next(), post_f.next()) else {
            continue;
        };
        let super_opts = post_f.next().unwrap_or("");
        let mount_point = unescape(mp);
        if mount_point == UNIFIED_MOUNTPOINT {
            // Later lines are mounted on top of earlier ones: the last one is visible.
            m.unified_fstype = Some(fstype.to_string());
        }
        let v2 = match fstype {
            "cgroup" => false,
            "cgroup2" => true,
            _ => continue,
        };
        m.cgroups.push(CgroupMount {
            root: unescape(root),
            mount_point,
            v2,
            controllers: if v2 {
                Vec::new()
            } else {
                v1_controllers(super_opts)
            },
        });
    }
    m
}

/// One line of /proc/self/cgroup: `hierarchy-id:controllers:path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcCgroup {
    pub id: u32,
    /// Empty for the cgroup2 line ("0::/path").
    pub controllers: Vec<String>,
    pub path: String,
}

pub fn parse_proc_cgroup(text: &str) -> Vec<ProcCgroup> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.splitn(3, ':');
            let id = f.next()?.parse().ok()?;
            let ctrls = f.next()?;
            let path = f.next()?;
            Some(ProcCgroup {
                id,
                controllers: ctrls
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_string)
                    .collect(),
                path: path.to_string(),
            })
        })
        .collect()
}

/// A mounted v1 hierarchy and the current process's cgroup in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1Hierarchy {
    pub controllers: Vec<String>,
    pub mount_point: PathBuf,
    /// Our cgroup, relative to the mounted directory ("/" when we sit at its root).
    pub own: String,
}

/// The cgroup2 mount and the current process's cgroup in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V2Hierarchy {
    pub mount_point: PathBuf,
    pub own: String,
}

/// The host's cgroup layout as seen by this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub mode: CgroupMode,
    /// v1 mode: every mounted v1 hierarchy (named ones such as name=systemd included).
    pub v1: Vec<V1Hierarchy>,
    /// v2 mode: the unified hierarchy.
    pub v2: Option<V2Hierarchy>,
}

/// `own` (from /proc/self/cgroup) relative to the mounted directory `root`: in a container
/// given a bind of /docker/abc, our "/docker/abc/x" is "/x" under the mount point.
fn relative_to_root(own: &str, root: &str) -> String {
    if root == "/" || root.is_empty() {
        return own.to_string();
    }
    match own.strip_prefix(root) {
        Some("") => "/".to_string(),
        Some(rest) if rest.starts_with('/') => rest.to_string(),
        _ => own.to_string(),
    }
}

fn same_set(a: &[String], b: &[String]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
}

impl Hierarchy {
    /// The `cgroup.procs` of the caller's own cgroup in one hierarchy (v2, or the first v1
    /// hierarchy): writing 0 there is a migration that changes nothing.
    pub fn own_procs_file(&self) -> Option<PathBuf> {
        let (mount, own) = match (&self.v2, self.v1.first()) {
            (Some(v2), _) => (&v2.mount_point, &v2.own),
            (None, Some(v1)) => (&v1.mount_point, &v1.own),
            (None, None) => return None,
        };
        Some(mount.join(own.trim_start_matches('/')).join("cgroup.procs"))
    }

    /// Reads /proc/self/mountinfo and /proc/self/cgroup (once each).
    pub fn current() -> Result<Self, CgroupError> {
        let mi = read_proc("/proc/self/mountinfo")?;
        let cg = read_proc("/proc/self/cgroup")?;
        Self::parse(&mi, &cg)
    }

    /// Builds the layout from the text of mountinfo and /proc/self/cgroup.
    pub fn parse(mountinfo: &str, proc_cgroup: &str) -> Result<Self, CgroupError> {
        let mounts = parse_mountinfo(mountinfo);
        let procs = parse_proc_cgroup(proc_cgroup);
        let v1_mounts: Vec<&CgroupMount> = mounts.cgroups.iter().filter(|m| !m.v2).collect();
        let unified = mounts.unified_fstype.as_deref() == Some("cgroup2");
        // No v1 hierarchy and cgroup2 mounted somewhere else than /sys/fs/cgroup: that
        // cgroup2 is all there is, so use it rather than failing.
        let v2_elsewhere = !unified
            && v1_mounts
                .iter()
                .all(|m| m.controllers.iter().all(|c| c.starts_with("name=")));
        if unified || v2_elsewhere {
            let m = if unified {
                mounts
                    .cgroups
                    .iter()
                    .rev()
                    .find(|m| m.v2 && m.mount_point == UNIFIED_MOUNTPOINT)
            } else {
                mounts.cgroups.iter().find(|m| m.v2)
            };
            if let Some(m) = m {
                let own = procs
                    .iter()
                    .find(|p| p.id == 0)
                    .map(|p| p.path.as_str())
                    .unwrap_or("/");
                return Ok(Hierarchy {
                    mode: CgroupMode::V2,
                    v1: Vec::new(),
                    v2: Some(V2Hierarchy {
                        mount_point: PathBuf::from(&m.mount_point),
                        own: relative_to_root(own, &m.root),
                    }),
                });
            }
        }
        let mut v1: Vec<(V1Hierarchy, bool)> = Vec::new();
        for m in v1_mounts {
            if m.controllers.is_empty() {
                continue;
            }
            // The same hierarchy can be mounted several times (bind mounts): keep the first,
            // unless a later one is the conventional /sys/fs/cgroup/<name>.
            let conventional = m.mount_point.starts_with("/sys/fs/cgroup/");
            if let Some((_, was_conventional)) = v1
                .iter()
                .find(|(h, _)| same_set(&h.controllers, &m.controllers))
            {
                if *was_conventional || !conventional {
                    continue;
                }
                v1.retain(|(h, _)| !same_set(&h.controllers, &m.controllers));
            }
            let own = procs
                .iter()
                .find(|p| same_set(&p.controllers, &m.controllers))
                .or_else(|| {
                    procs
                        .iter()
                        .find(|p| p.controllers.iter().any(|c| m.controllers.contains(c)))
                })
                .map(|p| p.path.as_str())
                .unwrap_or("/");
            v1.push((
                V1Hierarchy {
                    controllers: m.controllers.clone(),
                    mount_point: PathBuf::from(&m.mount_point),
                    own: relative_to_root(own, &m.root),
                },
                conventional,
            ));
        }
        if v1.is_empty() {
            return Err(CgroupError::NoHierarchy(
                "no cgroup v1 controller or cgroup2 mount in /proc/self/mountinfo".into(),
            ));
        }
        Ok(Hierarchy {
            mode: CgroupMode::V1,
            v1: v1.into_iter().map(|(h, _)| h).collect(),
            v2: None,
        })
    }

    /// Re-anchors every mount point under `root` (a tempdir laid out like a cgroupfs), so
    /// tests run the real code on regular files.
    pub fn with_root(mut self, root: &Path) -> Self {
        let rebase = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
        for h in &mut self.v1 {
            h.mount_point = rebase(&h.mount_point);
        }
        if let Some(h) = &mut self.v2 {
            h.mount_point = rebase(&h.mount_point);
        }
        self
    }
}

/// The mode of the host: unified iff cgroup2 is what is mounted at /sys/fs/cgroup.
pub fn detect_mode_from(mountinfo: &str) -> CgroupMode {
    if parse_mountinfo(mountinfo).unified_fstype.as_deref() == Some("cgroup2") {
        CgroupMode::V2
    } else {
        CgroupMode::V1
    }
}

fn read_proc(path: &str) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: PathBuf::from(path),
        source,
    })
}

pub(crate) fn read_mountinfo() -> Result<String, CgroupError> {
    read_proc("/proc/self/mountinfo")
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// This machine (2026-11): v1 controllers each mounted alone, hybrid cgroup2 at unified.
    pub const HYBRID_MOUNTINFO: &str = "\
22 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    pub const HYBRID_CGROUP: &str = "\
9:name=systemd:/
8:pids:/
7:blkio:/
6:freezer:/
5:devices:/
4:memory:/process_api/e44d149bea88185a9076dea06cd77834
3:cpuset:/
2:cpuacct:/
1:cpu:/
0::/
";

    /// A systemd v1 host (Ubuntu 20.04 style): co-mounted cpu,cpuacct and net_cls,net_prio.
    const UBUNTU_V1_MOUNTINFO: &str = "\
25 22 0:23 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:25 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
30 25 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,cpu,cpuacct
31 25 0:29 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,net_cls,net_prio
32 25 0:30 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,memory
33 25 0:31 / /sys/fs/cgroup/cpuset rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup rw,cpuset,clone_children
34 25 0:32 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:18 - cgroup cgroup rw,pids
";
    const UBUNTU_V1_CGROUP: &str = "\
12:pids:/user.slice/user-1000.slice/session-2.scope
6:cpuset:/
5:memory:/user.slice/user-1000.slice/session-2.scope
4:net_cls,net_prio:/
3:cpu,cpuacct:/user.slice
1:name=systemd:/user.slice/user-1000.slice/session-2.scope
0::/user.slice/user-1000.slice/session-2.scope
";

    pub const V2_MOUNTINFO: &str = "\
24 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw
30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";
    pub const V2_CGROUP: &str = "0::/user.slice/user-1000.slice/session-3.scope\n";

    #[test]
    fn parses_this_machine() {
        let m = parse_mountinfo(HYBRID_MOUNTINFO);
        assert_eq!(m.unified_fstype.as_deref(), Some("tmpfs"));
        assert_eq!(m.cgroups.len(), 10);
        assert_eq!(m.cgroups[8].controllers, vec!["name=systemd"]);
        assert!(m.cgroups[9].v2);
        assert_eq!(detect_mode_from(HYBRID_MOUNTINFO), CgroupMode::V1);

        let h = Hierarchy::parse(HYBRID_MOUNTINFO, HYBRID_CGROUP).unwrap();
        assert_eq!(h.mode, CgroupMode::V1);
        assert!(h.v2.is_none());
        assert_eq!(h.v1.len(), 9, "the hybrid cgroup2 mount is ignored");
        let mem = h.v1.iter().find(|x| x.controllers == ["memory"]).unwrap();
        assert_eq!(mem.mount_point, Path::new("/sys/fs/cgroup/memory"));
        assert_eq!(mem.own, "/process_api/e44d149bea88185a9076dea06cd77834");
        let sd =
            h.v1.iter()
                .find(|x| x.controllers == ["name=systemd"])
                .unwrap();
        assert_eq!(sd.mount_point, Path::new("/sys/fs/cgroup/systemd"));
        assert_eq!(sd.own, "/");
    }

    #[test]
    fn parses_comounted_v1() {
        let h = Hierarchy::parse(UBUNTU_V1_MOUNTINFO, UBUNTU_V1_CGROUP).unwrap();
        assert_eq!(h.mode, CgroupMode::V1);
        let cpu =
            h.v1.iter()
                .find(|x| x.controllers.contains(&"cpu".to_string()))
                .unwrap();
        assert_eq!(cpu.controllers, vec!["cpu", "cpuacct"]);
        assert_eq!(cpu.mount_point, Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(cpu.own, "/user.slice");
        let cpuset = h.v1.iter().find(|x| x.controllers == ["cpuset"]).unwrap();
        assert_eq!(
            cpuset.own, "/",
            "clone_children is an option, not a controller"
        );
        let sd =
            h.v1.iter()
                .find(|x| x.controllers == ["name=systemd"])
                .unwrap();
        assert_eq!(sd.own, "/user.slice/user-1000.slice/session-2.scope");
        assert_eq!(h.v1.len(), 6);
    }

    #[test]
    fn parses_pure_v2() {
        assert_eq!(detect_mode_from(V2_MOUNTINFO), CgroupMode::V2);
        let h = Hierarchy::parse(V2_MOUNTINFO, V2_CGROUP).unwrap();
        assert_eq!(h.mode, CgroupMode::V2);
        let v2 = h.v2.unwrap();
        assert_eq!(v2.mount_point, Path::new("/sys/fs/cgroup"));
        assert_eq!(v2.own, "/user.slice/user-1000.slice/session-3.scope");
        assert!(h.v1.is_empty());
    }

    #[test]
    fn nested_container_mount_root_is_stripped() {
        let mi = "\
50 40 0:32 /docker/abc /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup rw,memory
";
        let h = Hierarchy::parse(mi, "4:memory:/docker/abc/sub\n").unwrap();
        assert_eq!(h.v1[0].own, "/sub");
        let h = Hierarchy::parse(mi, "4:memory:/docker/abc\n").unwrap();
        assert_eq!(h.v1[0].own, "/");
    }

    #[test]
    fn unescapes_and_dedups() {
        let mi = "\
60 1 0:32 / /mnt/my\\040cg rw - cgroup cgroup rw,memory
61 1 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
62 1 0:32 / /other rw - cgroup cgroup rw,memory
";
        let m = parse_mountinfo(mi);
        assert_eq!(m.cgroups[0].mount_point, "/mnt/my cg");
        let h = Hierarchy::parse(mi, "4:memory:/\n").unwrap();
        assert_eq!(h.v1.len(), 1);
        assert_eq!(h.v1[0].mount_point, Path::new("/sys/fs/cgroup/memory"));
    }

    #[test]
    fn overmounted_unified_root_and_errors() {
        // cgroup2 covered by a tmpfs: the tmpfs is what is visible.
        let mi = "\
30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw
31 30 0:27 / /sys/fs/cgroup rw - tmpfs tmpfs rw
32 31 0:28 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
";
        assert_eq!(detect_mode_from(mi), CgroupMode::V1);
        let h = Hierarchy::parse(mi, "1:pids:/\n").unwrap();
        assert_eq!(h.mode, CgroupMode::V1);
        // Nothing at all is an error, not a silent V1 with no directories.
        assert!(matches!(
            Hierarchy::parse("", ""),
            Err(CgroupError::NoHierarchy(_))
        ));
        // cgroup2 elsewhere and no v1 controllers: use it.
        let h =
            Hierarchy::parse("30 23 0:26 / /run/cg2 rw - cgroup2 cgroup2 rw\n", "0::/x\n").unwrap();
        assert_eq!(h.mode, CgroupMode::V2);
    }

    #[test]
    fn with_root_rebases() {
        let h = Hierarchy::parse(V2_MOUNTINFO, V2_CGROUP)
            .unwrap()
            .with_root(Path::new("/tmp/x"));
        assert_eq!(h.v2.unwrap().mount_point, Path::new("/tmp/x/sys/fs/cgroup"));
    }

    #[test]
    fn proc_cgroup_lines() {
        let p = parse_proc_cgroup("3:cpu,cpuacct:/a:b\n0::/\ngarbage\n");
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].controllers, vec!["cpu", "cpuacct"]);
        assert_eq!(p[0].path, "/a:b");
        assert!(p[1].controllers.is_empty());
    }
}
