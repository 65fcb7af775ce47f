//! Tests of the public API: fake layouts in tempdirs (shared helpers for v1.rs/v2.rs tests),
//! and live tests on this host's real cgroup v1 hierarchy (root only, skipped elsewhere).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};

use oci_spec::runtime::{
    LinuxBlockIoBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType,
    LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder, LinuxThrottleDeviceBuilder,
    LinuxWeightDeviceBuilder,
};
use tempfile::TempDir;

use super::mountinfo::tests::{HYBRID_CGROUP, HYBRID_MOUNTINFO, V2_CGROUP, V2_MOUNTINFO};
use super::*;

/// Creates empty `files` in `dir` (and `dir` itself): the fake kernel's control files.
pub(crate) fn touch(dir: &Path, files: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    for f in files {
        std::fs::write(dir.join(f), "").unwrap();
    }
}

pub(crate) fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.join(file).display()))
}

/// This host's v1 layout under a tempdir, with the container "c1" at the default path.
/// Regular directories get no control files by themselves, so the cpuset levels are
/// pre-created with empty cpus/mems, as the kernel would make them.
pub(crate) fn v1_fake() -> (TempDir, Cgroup) {
    let tmp = tempfile::tempdir().unwrap();
    let h = Hierarchy::parse(HYBRID_MOUNTINFO, HYBRID_CGROUP)
        .unwrap()
        .with_root(tmp.path());
    for v in &h.v1 {
        std::fs::create_dir_all(&v.mount_point).unwrap();
    }
    let cg = Cgroup::with_hierarchy(&h, None, "c1", false).unwrap();
    let cpuset = cg.v1_dirs().iter().find(|d| d.has("cpuset")).unwrap();
    std::fs::write(cpuset.mount_point.join("cpuset.cpus"), "0-1\n").unwrap();
    std::fs::write(cpuset.mount_point.join("cpuset.mems"), "0\n").unwrap();
    touch(
        cpuset.dir.parent().unwrap(),
        &["cpuset.cpus", "cpuset.mems"],
    );
    touch(&cpuset.dir, &["cpuset.cpus", "cpuset.mems"]);
    (tmp, cg)
}

/// A pure v2 layout under a tempdir whose root offers most controllers.
pub(crate) fn v2_fake(cgroups_path: Option<&str>) -> (TempDir, Cgroup) {
    let tmp = tempfile::tempdir().unwrap();
    let h = Hierarchy::parse(V2_MOUNTINFO, V2_CGROUP)
        .unwrap()
        .with_root(tmp.path());
    let root = &h.v2.as_ref().unwrap().mount_point;
    std::fs::create_dir_all(root).unwrap();
    std::fs::write(
        root.join("cgroup.controllers"),
        "cpuset cpu io memory hugetlb pids\n",
    )
    .unwrap();
    std::fs::write(root.join("cgroup.subtree_control"), "").unwrap();
    let cg = Cgroup::with_hierarchy(&h, cgroups_path, "c1", false).unwrap();
    (tmp, cg)
}

#[test]
fn v1_paths_are_per_hierarchy() {
    let h = Hierarchy::parse(HYBRID_MOUNTINFO, HYBRID_CGROUP).unwrap();
    let cg = Cgroup::with_hierarchy(&h, None, "c1", false).unwrap();
    assert_eq!(cg.mode(), CgroupMode::V1);
    assert!(cg.v2_path().is_none());
    let mounts = cg.v1_mounts();
    assert_eq!(mounts.len(), 9);
    let get = |n: &str| {
        mounts
            .iter()
            .find(|(m, _)| m == n)
            .map(|(_, p)| p.clone())
            .unwrap()
    };
    assert_eq!(
        get("memory"),
        Path::new("/sys/fs/cgroup/memory/process_api/e44d149bea88185a9076dea06cd77834/berth/c1")
    );
    assert_eq!(get("cpu"), Path::new("/sys/fs/cgroup/cpu/berth/c1"));
    assert_eq!(get("systemd"), Path::new("/sys/fs/cgroup/systemd/berth/c1"));
    assert_eq!(
        cg.cgroup_path(),
        "/process_api/e44d149bea88185a9076dea06cd77834/berth/c1"
    );

    let cg = Cgroup::with_hierarchy(&h, Some("/x/c1"), "c1", false).unwrap();
    assert!(cg
        .v1_mounts()
        .iter()
        .all(|(n, p)| *p == Path::new("/sys/fs/cgroup").join(n).join("x/c1")));
    let cg = Cgroup::with_hierarchy(&h, Some("machine.slice:libpod:abc"), "abc", true).unwrap();
    assert_eq!(cg.cgroup_path(), "/machine.slice/libpod-abc.scope");
    assert!(matches!(
        Cgroup::with_hierarchy(&h, Some("/a/../b"), "c1", false),
        Err(CgroupError::InvalidPath { .. })
    ));
}

#[test]
fn v2_paths() {
    let h = Hierarchy::parse(V2_MOUNTINFO, V2_CGROUP).unwrap();
    let cg = Cgroup::with_hierarchy(&h, None, "c1", false).unwrap();
    assert_eq!(cg.mode(), CgroupMode::V2);
    assert!(cg.v1_mounts().is_empty());
    // Relative: below the parent of our own cgroup (session-3.scope holds processes).
    assert_eq!(
        cg.v2_path().unwrap(),
        Path::new("/sys/fs/cgroup/user.slice/user-1000.slice/berth/c1")
    );
    let cg = Cgroup::with_hierarchy(&h, Some("/abs/c1"), "c1", false).unwrap();
    assert_eq!(cg.v2_path().unwrap(), Path::new("/sys/fs/cgroup/abs/c1"));
    let cfg = CgroupConfig {
        cgroups_path: Some(":berth:c1".into()),
        container_id: "c1".into(),
        systemd: true,
    };
    assert_eq!(
        cfg.place(&h).unwrap().v2_path().unwrap(),
        Path::new("/sys/fs/cgroup/system.slice/berth-c1.scope")
    );
}

#[test]
fn serde_round_trip() {
    for h in [
        Hierarchy::parse(HYBRID_MOUNTINFO, HYBRID_CGROUP).unwrap(),
        Hierarchy::parse(V2_MOUNTINFO, V2_CGROUP).unwrap(),
    ] {
        let cg = Cgroup::with_hierarchy(&h, Some("/berth/x"), "x", false).unwrap();
        let json = serde_json::to_string(&cg).unwrap();
        let back: Cgroup = serde_json::from_str(&json).unwrap();
        assert_eq!(back, cg);
        assert_eq!(back.mode(), h.mode);
    }
    let json = serde_json::to_value(Stats::default()).unwrap();
    assert!(json.get("cpu_usage_ns").is_some());
}

#[test]
fn fake_v1_lifecycle_pids_and_destroy() {
    let (_tmp, cg) = v1_fake();
    cg.create().unwrap();
    for (_, d) in cg.v1_mounts() {
        assert!(d.is_dir(), "{}", d.display());
        std::fs::write(d.join("cgroup.procs"), "").unwrap();
    }
    cg.apply(4242).unwrap();
    let pids_dir = cg
        .v1_dirs()
        .iter()
        .find(|d| d.has("pids"))
        .unwrap()
        .dir
        .clone();
    assert_eq!(read(&pids_dir, "cgroup.procs"), "4242");
    assert_eq!(cg.pids().unwrap(), vec![4242]);
    // Regular files block rmdir on a fake layout: clear them to check removal order.
    for (_, d) in cg.v1_mounts() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
    }
    std::fs::create_dir(pids_dir.join("child")).unwrap();
    cg.destroy().unwrap();
    assert!(cg.v1_mounts().iter().all(|(_, d)| !d.exists()));
    cg.destroy().unwrap();
    assert_eq!(
        cg.pids().unwrap(),
        Vec::<i32>::new(),
        "a removed cgroup has no processes"
    );
    assert!(!cg.is_frozen().unwrap());
    cg.thaw().unwrap();
}

// ---------------------------------------------------------------------------------------
// Live tests on the host's cgroup v1 hierarchy.

static SEQ: AtomicU32 = AtomicU32::new(0);

fn unique(tag: &str) -> String {
    format!(
        "berth-test-{tag}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Root, and a v1 host with the memory controller mounted at /sys/fs/cgroup/memory.
fn live() -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping live cgroup test: not root");
        return false;
    }
    let Ok(h) = Hierarchy::current() else {
        eprintln!("skipping live cgroup test: no cgroup hierarchy");
        return false;
    };
    let ok = h.mode == CgroupMode::V1
        && h.v1
            .iter()
            .any(|v| v.mount_point == Path::new("/sys/fs/cgroup/memory"));
    if !ok {
        eprintln!("skipping live cgroup test: /sys/fs/cgroup/memory is not a cgroup v1 mount");
    }
    ok
}

/// Kills the test's child and removes the cgroup even when an assertion fails.
struct Guard {
    cg: Cgroup,
    child: Option<Child>,
    extra_dirs: Vec<PathBuf>,
}

impl Guard {
    fn new(cg: Cgroup) -> Self {
        Guard {
            cg,
            child: None,
            extra_dirs: Vec::new(),
        }
    }

    fn spawn(&mut self) -> i32 {
        let child = Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawning sleep");
        let pid = child.id() as i32;
        self.child = Some(child);
        pid
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = self.cg.thaw();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.kill();
        let _ = self.cg.destroy();
        for d in self.extra_dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

fn dir_of<'a>(cg: &'a Cgroup, controller: &str) -> &'a Path {
    &cg.v1_dirs().iter().find(|d| d.has(controller)).unwrap().dir
}

/// (major, minor) of the first whole disk in /proc/partitions.
fn first_disk() -> Option<(i64, i64)> {
    let text = std::fs::read_to_string("/proc/partitions").ok()?;
    text.lines().skip(2).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        match f[..] {
            [maj, "0", _, _] => Some((maj.parse().ok()?, 0)),
            _ => None,
        }
    })
}

fn proc_cgroup_line(pid: i32, controller: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    text.lines()
        .find(|l| l.split(':').nth(1) == Some(controller))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn live_v1_full_cycle() {
    if !live() {
        return;
    }
    let name = format!("/{}", unique("full"));
    let cg = Cgroup::new(Some(&name), "c1", false).unwrap();
    assert_eq!(cg.mode(), CgroupMode::V1);
    let mut g = Guard::new(cg.clone());
    cg.create().unwrap();
    for (_, d) in cg.v1_mounts() {
        assert!(d.is_dir(), "{}", d.display());
    }
    let root_cpus = std::fs::read_to_string("/sys/fs/cgroup/cpuset/cpuset.cpus").unwrap();
    assert_eq!(
        read(dir_of(&cg, "cpuset"), "cpuset.cpus"),
        root_cpus,
        "cpuset copied from the parent"
    );

    let res = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(64 << 20)
                .swap(128 << 20)
                .reservation(32 << 20)
                .build()
                .unwrap(),
        )
        .cpu(
            LinuxCpuBuilder::default()
                .shares(512u64)
                .quota(50000)
                .period(100000u64)
                .cpus("0")
                .mems("0")
                .build()
                .unwrap(),
        )
        .pids(LinuxPidsBuilder::default().limit(50).build().unwrap())
        .devices(vec![
            LinuxDeviceCgroupBuilder::default()
                .allow(false)
                .access("rwm")
                .build()
                .unwrap(),
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(LinuxDeviceType::C)
                .major(1)
                .minor(3)
                .access("rwm")
                .build()
                .unwrap(),
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(LinuxDeviceType::C)
                .major(136)
                .access("rw")
                .build()
                .unwrap(),
        ])
        .build()
        .unwrap();
    cg.set(&res).unwrap();
    let mem = dir_of(&cg, "memory");
    assert_eq!(
        read(mem, "memory.limit_in_bytes").trim(),
        (64u64 << 20).to_string()
    );
    if mem.join("memory.memsw.limit_in_bytes").exists() {
        assert_eq!(
            read(mem, "memory.memsw.limit_in_bytes").trim(),
            (128u64 << 20).to_string()
        );
    }
    assert_eq!(
        read(mem, "memory.soft_limit_in_bytes").trim(),
        (32u64 << 20).to_string()
    );
    let cpu = dir_of(&cg, "cpu");
    assert_eq!(read(cpu, "cpu.shares").trim(), "512");
    assert_eq!(read(cpu, "cpu.cfs_quota_us").trim(), "50000");
    assert_eq!(read(cpu, "cpu.cfs_period_us").trim(), "100000");
    assert_eq!(read(dir_of(&cg, "cpuset"), "cpuset.cpus").trim(), "0");
    assert_eq!(read(dir_of(&cg, "pids"), "pids.max").trim(), "50");
    assert_eq!(
        read(dir_of(&cg, "devices"), "devices.list"),
        "c 1:3 rwm\nc 136:* rw\n"
    );

    let pid = g.spawn();
    cg.apply(pid).unwrap();
    assert!(proc_cgroup_line(pid, "memory").ends_with(&format!(":memory:{name}")));
    assert!(proc_cgroup_line(pid, "name=systemd").ends_with(&format!(":name=systemd:{name}")));
    assert_eq!(cg.pids().unwrap(), vec![pid]);

    let st = cg.stats().unwrap();
    assert_eq!(st.pids_current, Some(1));
    assert_eq!(st.pids_limit, Some(50));
    assert_eq!(st.memory_limit_bytes, Some(64 << 20));
    assert!(st.cpu_usage_ns.is_some());

    assert!(!cg.is_frozen().unwrap());
    cg.freeze().unwrap();
    assert!(cg.is_frozen().unwrap());
    cg.thaw().unwrap();
    assert!(!cg.is_frozen().unwrap());

    // Block io on the host's first disk, when there is one: bfq weight and throttling.
    if let Some((maj, min)) = first_disk() {
        let bio = LinuxResourcesBuilder::default()
            .block_io(
                LinuxBlockIoBuilder::default()
                    .weight(500u16)
                    .throttle_read_bps_device(vec![LinuxThrottleDeviceBuilder::default()
                        .major(maj)
                        .minor(min)
                        .rate(1048576u64)
                        .build()
                        .unwrap()])
                    .throttle_write_iops_device(vec![LinuxThrottleDeviceBuilder::default()
                        .major(maj)
                        .minor(min)
                        .rate(100u64)
                        .build()
                        .unwrap()])
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        cg.set(&bio).unwrap();
        let blk = dir_of(&cg, "blkio");
        assert_eq!(
            read(blk, "blkio.throttle.read_bps_device"),
            format!("{maj}:{min} 1048576\n")
        );
        assert_eq!(
            read(blk, "blkio.throttle.write_iops_device"),
            format!("{maj}:{min} 100\n")
        );
        if blk.join("blkio.bfq.weight").exists() {
            let w = read(blk, "blkio.bfq.weight");
            assert!(w.contains("500"), "{w}");
        }
        // A per-device weight needs the device to be scheduled by BFQ; otherwise the
        // kernel says EOPNOTSUPP, reported with the file's name.
        let wd = LinuxResourcesBuilder::default()
            .block_io(
                LinuxBlockIoBuilder::default()
                    .weight_device(vec![LinuxWeightDeviceBuilder::default()
                        .major(maj)
                        .minor(min)
                        .weight(200u16)
                        .build()
                        .unwrap()])
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let sched = std::fs::read_to_string(format!("/sys/dev/block/{maj}:{min}/queue/scheduler"))
            .unwrap_or_default();
        match cg.set(&wd) {
            Ok(()) => assert!(
                !sched.contains("[bfq]") || read(blk, "blkio.bfq.weight_device").contains("200")
            ),
            Err(e) => {
                assert!(!sched.contains("[bfq]"), "{e}");
                assert!(e.to_string().contains("blkio.bfq.weight_device"), "{e}");
            }
        }
    }

    // Update: raising memory above the current memory+swap needs memsw written first.
    let up = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(256 << 20)
                .swap(512 << 20)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    cg.set(&up).unwrap();
    assert_eq!(
        read(mem, "memory.limit_in_bytes").trim(),
        (256u64 << 20).to_string()
    );
    let down = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(32 << 20)
                .swap(32 << 20)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    cg.set(&down).unwrap();
    assert_eq!(
        read(mem, "memory.limit_in_bytes").trim(),
        (32u64 << 20).to_string()
    );

    g.kill();
    cg.destroy().unwrap();
    for (_, d) in cg.v1_mounts() {
        assert!(!d.exists(), "{} still exists", d.display());
    }
    cg.destroy().unwrap();
}

#[test]
fn live_v1_default_path_nested_children() {
    if !live() {
        return;
    }
    let id = unique("rel");
    let cg = Cgroup::new(None, &id, false).unwrap();
    let h = Hierarchy::current().unwrap();
    let mut g = Guard::new(cg.clone());
    for v in &h.v1 {
        // The "berth" level is shared with real containers; remove it only if empty.
        g.extra_dirs.push(
            v.mount_point
                .join(v.own.trim_start_matches('/'))
                .join("berth"),
        );
    }
    let own_mem = &h
        .v1
        .iter()
        .find(|v| v.controllers == ["memory"])
        .unwrap()
        .own;
    assert_eq!(
        dir_of(&cg, "memory"),
        Path::new("/sys/fs/cgroup/memory")
            .join(own_mem.trim_start_matches('/'))
            .join("berth")
            .join(&id)
    );
    cg.create().unwrap();
    let pid = g.spawn();
    cg.apply(pid).unwrap();
    // A child cgroup made inside the container (as nested runtimes do): pids() looks into
    // it and destroy() removes it.
    let sub = dir_of(&cg, "pids").join("sub");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("cgroup.procs"), pid.to_string()).unwrap();
    assert_eq!(read(dir_of(&cg, "pids"), "cgroup.procs"), "");
    assert_eq!(cg.pids().unwrap(), vec![pid]);
    g.kill();
    cg.destroy().unwrap();
    assert!(!sub.exists());
    assert!(cg.v1_mounts().iter().all(|(_, d)| !d.exists()));
}

#[test]
fn live_v1_errors_name_files() {
    if !live() {
        return;
    }
    let name = format!("/{}", unique("err"));
    let cg = Cgroup::new(Some(&name), "c1", false).unwrap();
    let _g = Guard::new(cg.clone());
    cg.create().unwrap();
    let bad = LinuxResourcesBuilder::default()
        .cpu(LinuxCpuBuilder::default().cpus("4096").build().unwrap())
        .build()
        .unwrap();
    let e = cg.set(&bad).unwrap_err().to_string();
    assert!(
        e.starts_with("writing \"4096\" to /sys/fs/cgroup/cpuset/"),
        "{e}"
    );
    assert!(e.contains("cpuset.cpus"), "{e}");
}
