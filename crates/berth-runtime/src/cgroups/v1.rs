//! cgroup v1: one directory per mounted hierarchy; each resource goes to the hierarchy of its
//! controller. Write orders and retries follow runc's fs driver, where the kernel refuses
//! some intermediate states (memory above memory+swap, quota/period over the parent's).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::{
    LinuxBlockIo, LinuxCpu, LinuxDeviceCgroup, LinuxDeviceType, LinuxMemory, LinuxResources,
};

use super::fs::{self, errno, is_enoent, try_write, write_err, RuleWriter};
use super::{CgroupError, Stats, V1Dir};

fn find<'a>(dirs: &'a [V1Dir], controller: &str) -> Option<&'a Path> {
    dirs.iter()
        .find(|d| d.has(controller))
        .map(|d| d.dir.as_path())
}

/// The directory of `controller`, or an error saying it is needed for `what`.
fn need<'a>(dirs: &'a [V1Dir], controller: &str, what: &str) -> Result<&'a Path, CgroupError> {
    find(dirs, controller).ok_or_else(|| CgroupError::ControllerMissing {
        controller: controller.to_string(),
        what: what.to_string(),
    })
}

fn invalid(what: &str, reason: impl Into<String>) -> CgroupError {
    CgroupError::InvalidResource {
        what: what.to_string(),
        reason: reason.into(),
    }
}

pub(super) fn create(dirs: &[V1Dir]) -> Result<(), CgroupError> {
    for d in dirs {
        let created = fs::mkdir_p(&d.dir, &d.mount_point)?;
        if d.has("cpuset") {
            init_cpuset(d, &created)?;
        }
    }
    Ok(())
}

const CPUS: &str = "cpuset.cpus";
const MEMS: &str = "cpuset.mems";

/// A new v1 cpuset has empty cpus/mems, and a task cannot join a cpuset without them
/// (ENOSPC). Fill every new directory from its parent. Common case: the deepest existing
/// ancestor has values, read once and written into each new level.
fn init_cpuset(d: &V1Dir, created: &[PathBuf]) -> Result<(), CgroupError> {
    let base = match created.first() {
        Some(top) => top.parent().unwrap_or(&d.mount_point).to_path_buf(),
        None => d.dir.clone(),
    };
    let cpus = fs::read(&base, CPUS)?;
    let mems = fs::read(&base, MEMS)?;
    let (cpus, mems) = (cpus.trim(), mems.trim());
    if cpus.is_empty() || mems.is_empty() {
        // Some ancestor was made by someone who did not fill it: fix the whole chain.
        return fill_chain(&d.mount_point, &d.dir);
    }
    for dir in created {
        fs::write(dir, CPUS, cpus)?;
        fs::write(dir, MEMS, mems)?;
    }
    Ok(())
}

/// runc's walk: from the hierarchy root down to `leaf`, copy the parent's cpus/mems into
/// every level that has none.
fn fill_chain(root: &Path, leaf: &Path) -> Result<(), CgroupError> {
    let rel = leaf.strip_prefix(root).unwrap_or(Path::new(""));
    let mut parent = root.to_path_buf();
    let mut pv = (
        fs::read(root, CPUS)?.trim().to_string(),
        fs::read(root, MEMS)?.trim().to_string(),
    );
    for comp in rel.components() {
        let cur = parent.join(comp);
        let mut cv = (
            fs::read(&cur, CPUS)?.trim().to_string(),
            fs::read(&cur, MEMS)?.trim().to_string(),
        );
        if cv.0.is_empty() {
            fs::write(&cur, CPUS, &pv.0)?;
            cv.0 = pv.0.clone();
        }
        if cv.1.is_empty() {
            fs::write(&cur, MEMS, &pv.1)?;
            cv.1 = pv.1.clone();
        }
        parent = cur;
        pv = cv;
    }
    Ok(())
}

/// The directory whose cgroup.procs lists the container's processes.
pub(super) fn pids_dir(dirs: &[V1Dir]) -> Option<&Path> {
    ["pids", "memory", "freezer"]
        .iter()
        .find_map(|c| find(dirs, c))
        .or_else(|| dirs.first().map(|d| d.dir.as_path()))
}

pub(super) fn set(dirs: &[V1Dir], res: &LinuxResources) -> Result<(), CgroupError> {
    // Refuse before writing anything.
    if res.unified().as_ref().is_some_and(|u| !u.is_empty()) {
        return Err(invalid(
            "unified resources",
            "they need cgroup v2, and this host uses cgroup v1",
        ));
    }
    if let Some(m) = res.memory() {
        set_memory(dirs, m)?;
    }
    if let Some(c) = res.cpu() {
        set_cpu(dirs, c)?;
        set_cpuset(dirs, c)?;
    }
    if let Some(p) = res.pids() {
        let dir = need(dirs, "pids", "a pids limit")?;
        fs::write(dir, "pids.max", &pids_max(p.limit()))?;
    }
    if let Some(b) = res.block_io() {
        set_blkio(dirs, b)?;
    }
    if let Some(h) = res.hugepage_limits().as_ref().filter(|h| !h.is_empty()) {
        let dir = need(dirs, "hugetlb", "a hugepage limit")?;
        for l in h {
            let size = hugepage_size(l.page_size())?;
            let v = if l.limit() < 0 {
                "-1".to_string()
            } else {
                l.limit().to_string()
            };
            fs::write_feature(
                dir,
                &format!("hugetlb.{size}.limit_in_bytes"),
                &v,
                &format!("hugepage size {size}"),
            )?;
        }
    }
    if let Some(rules) = res.devices().as_ref().filter(|r| !r.is_empty()) {
        set_devices(need(dirs, "devices", "device rules")?, rules)?;
    }
    if let Some(n) = res.network() {
        if let Some(id) = n.class_id() {
            fs::write(
                need(dirs, "net_cls", "a network class id")?,
                "net_cls.classid",
                &id.to_string(),
            )?;
        }
        if let Some(prios) = n.priorities().as_ref().filter(|p| !p.is_empty()) {
            let mut w = RuleWriter::new(
                need(dirs, "net_prio", "network priorities")?,
                "net_prio.ifpriomap",
            );
            for p in prios {
                w.write(&format!("{} {}", p.name(), p.priority()))?;
            }
        }
    }
    if let Some(rdma) = res.rdma().as_ref().filter(|r| !r.is_empty()) {
        let mut w = RuleWriter::new(need(dirs, "rdma", "rdma limits")?, "rdma.max");
        for (dev, l) in rdma {
            if let Some(rule) = rdma_rule(dev, l.hca_handles(), l.hca_objects()) {
                w.write(&rule)?;
            }
        }
    }
    Ok(())
}

/// OCI pids.limit: <= 0 is unlimited.
pub(super) fn pids_max(limit: i64) -> String {
    if limit > 0 {
        limit.to_string()
    } else {
        "max".to_string()
    }
}

/// "2MB" as in the file names; anything with a path separator is refused.
pub(super) fn hugepage_size(s: &str) -> Result<&str, CgroupError> {
    if s.is_empty() || s.contains('/') || s.contains("..") || !s.ends_with('B') {
        return Err(invalid(
            "hugepage page size",
            format!("{s:?} is not a size like \"2MB\""),
        ));
    }
    Ok(s)
}

pub(super) fn rdma_rule(dev: &str, handles: Option<u32>, objects: Option<u32>) -> Option<String> {
    if handles.is_none() && objects.is_none() {
        return None;
    }
    let v = |x: Option<u32>| x.map_or_else(|| "max".to_string(), |n| n.to_string());
    Some(format!(
        "{dev} hca_handle={} hca_object={}",
        v(handles),
        v(objects)
    ))
}

/// Kernel range of cpu.shares; v1 clamps silently, so refuse instead of running with
/// another value than asked (runc reads the value back for the same reason).
pub(super) fn check_shares(s: u64) -> Result<(), CgroupError> {
    if !(2..=262144).contains(&s) {
        return Err(invalid("cpu shares", format!("{s} is outside 2..=262144")));
    }
    Ok(())
}

pub(super) fn check_swappiness(m: &LinuxMemory) -> Result<Option<u64>, CgroupError> {
    match m.swappiness() {
        Some(s) if s > 100 => Err(invalid(
            "memory swappiness",
            format!("{s} is outside 0..=100"),
        )),
        s => Ok(s),
    }
}

const LIMIT: &str = "memory.limit_in_bytes";
const MEMSW: &str = "memory.memsw.limit_in_bytes";

fn set_memory(dirs: &[V1Dir], m: &LinuxMemory) -> Result<(), CgroupError> {
    // 0 means unset, as in runc.
    let limit = m.limit().filter(|v| *v != 0);
    let mut swap = m.swap().filter(|v| *v != 0);
    let reservation = m.reservation().filter(|v| *v != 0);
    let swappiness = check_swappiness(m)?;
    let no_oom_kill = m.disable_oom_killer() == Some(true);
    if let (Some(l), Some(s)) = (limit, swap) {
        if l > 0 && s > 0 && s < l {
            return Err(invalid(
                "memory swap",
                format!("memory+swap limit {s} is below the memory limit {l}"),
            ));
        }
    }
    if limit.is_none()
        && swap.is_none()
        && reservation.is_none()
        && swappiness.is_none()
        && !no_oom_kill
    {
        return Ok(());
    }
    let dir = need(dirs, "memory", "a memory limit")?;
    // Unlimited memory with swap unset means unlimited swap too (runc).
    if limit == Some(-1) && swap.is_none() {
        swap = Some(-1);
    }
    match (limit, swap) {
        (Some(l), Some(s)) => {
            // The kernel keeps memory <= memory+swap at every step. Memory first suits a new
            // cgroup (both unlimited) and lowering; raising memory above the current
            // memory+swap fails with EINVAL, and then memory+swap must go first.
            match try_write(dir, LIMIT, &l.to_string()) {
                Ok(()) => set_memsw(dir, s, Some(l))?,
                Err((_, e)) if errno(&e) == Some(libc::EINVAL) => {
                    set_memsw(dir, s, Some(l))?;
                    set_limit(dir, l)?;
                }
                Err((path, e)) => return Err(limit_err(dir, path, l, e)),
            }
        }
        (Some(l), None) => set_limit(dir, l)?,
        (None, Some(s)) => set_memsw(dir, s, None)?,
        (None, None) => {}
    }
    if let Some(r) = reservation {
        fs::write(dir, "memory.soft_limit_in_bytes", &r.to_string())?;
    }
    if let Some(s) = swappiness {
        fs::write(dir, "memory.swappiness", &s.to_string())?;
    }
    if no_oom_kill {
        fs::write(dir, "memory.oom_control", "1")?;
    }
    // kernel/kernelTCP are deprecated (kernel memory is charged with user memory since
    // Linux 5.4, and runc ignores them too): not written.
    Ok(())
}

fn set_limit(dir: &Path, l: i64) -> Result<(), CgroupError> {
    let v = l.to_string();
    try_write(dir, LIMIT, &v).map_err(|(path, e)| limit_err(dir, path, l, e))
}

/// EBUSY on memory.limit_in_bytes: the kernel could not reclaim down to the new limit.
/// Say so with the current usage instead of a bare "device or resource busy".
fn limit_err(dir: &Path, path: PathBuf, l: i64, e: std::io::Error) -> CgroupError {
    if errno(&e) == Some(libc::EBUSY) {
        let usage = fs::read(dir, "memory.usage_in_bytes")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "?".into());
        return CgroupError::MemoryBelowUsage {
            path,
            limit: l,
            usage,
        };
    }
    write_err(path, &l.to_string(), e)
}

/// memory+swap; without swap accounting (no memsw file) only "no swap" (== limit) and
/// "unlimited" can be honoured, silently.
fn set_memsw(dir: &Path, s: i64, limit: Option<i64>) -> Result<(), CgroupError> {
    let v = s.to_string();
    match try_write(dir, MEMSW, &v) {
        Ok(()) => Ok(()),
        Err((_, e)) if is_enoent(&e) && (s == -1 || Some(s) == limit) => Ok(()),
        Err((path, e)) if is_enoent(&e) => Err(CgroupError::Unsupported {
            path,
            what: "a swap limit (swap accounting is off)".into(),
        }),
        Err((path, e)) => Err(write_err(path, &v, e)),
    }
}

fn set_cpu(dirs: &[V1Dir], c: &LinuxCpu) -> Result<(), CgroupError> {
    let shares = c.shares().filter(|v| *v != 0);
    let quota = c.quota().filter(|v| *v != 0);
    let period = c.period().filter(|v| *v != 0);
    let burst = c.burst();
    let idle = c.idle();
    let rt_period = c.realtime_period().filter(|v| *v != 0);
    let rt_runtime = c.realtime_runtime().filter(|v| *v != 0);
    if shares.is_none()
        && quota.is_none()
        && period.is_none()
        && burst.is_none()
        && idle.is_none()
        && rt_period.is_none()
        && rt_runtime.is_none()
    {
        return Ok(());
    }
    if let Some(s) = shares {
        check_shares(s)?;
    }
    let dir = need(dirs, "cpu", "a cpu limit")?;
    if let Some(s) = shares {
        fs::write(dir, "cpu.shares", &s.to_string())?;
    }
    // A smaller period (or larger burst) can be refused while the old quota stands
    // (quota/period would exceed the parent's): then it is written again after the quota.
    let mut period_again = None;
    if let Some(p) = period {
        let v = p.to_string();
        match try_write(dir, "cpu.cfs_period_us", &v) {
            Ok(()) => {}
            Err((_, e)) if errno(&e) == Some(libc::EINVAL) && quota.is_some() => {
                period_again = Some(v)
            }
            Err((path, e)) => return Err(write_err(path, &v, e)),
        }
    }
    let mut burst_again = None;
    if let Some(b) = burst {
        let v = b.to_string();
        match try_write(dir, "cpu.cfs_burst_us", &v) {
            Ok(()) => {}
            // No burst knob (before Linux 5.14): runc ignores it, so do we.
            Err((_, e)) if is_enoent(&e) => {}
            Err((_, e)) if errno(&e) == Some(libc::EINVAL) && quota.is_some() => {
                burst_again = Some(v)
            }
            Err((path, e)) => return Err(write_err(path, &v, e)),
        }
    }
    if let Some(q) = quota {
        fs::write(dir, "cpu.cfs_quota_us", &q.to_string())?;
        if let Some(v) = period_again {
            fs::write(dir, "cpu.cfs_period_us", &v)?;
        }
        if let Some(v) = burst_again {
            fs::write(dir, "cpu.cfs_burst_us", &v)?;
        }
    }
    if let Some(i) = idle {
        write_idle(dir, i)?;
    }
    set_rt(dir, rt_period, rt_runtime)
}

/// cpu.idle only exists since Linux 5.15; asking for the default (0) there is a no-op.
pub(super) fn write_idle(dir: &Path, idle: i64) -> Result<(), CgroupError> {
    let v = idle.to_string();
    match try_write(dir, "cpu.idle", &v) {
        Ok(()) => Ok(()),
        Err((_, e)) if is_enoent(&e) && idle == 0 => Ok(()),
        Err((path, e)) if is_enoent(&e) => Err(CgroupError::Unsupported {
            path,
            what: "cpu idle".into(),
        }),
        Err((path, e)) => Err(write_err(path, &v, e)),
    }
}

/// Realtime bandwidth: runtime must stay <= period, so when a new period is refused,
/// the runtime goes first.
fn set_rt(dir: &Path, period: Option<u64>, runtime: Option<i64>) -> Result<(), CgroupError> {
    const WHAT: &str = "realtime cpu scheduling (CONFIG_RT_GROUP_SCHED)";
    let runtime_v = runtime.map(|r| r.to_string());
    if let Some(p) = period {
        let v = p.to_string();
        match try_write(dir, "cpu.rt_period_us", &v) {
            Ok(()) => {}
            Err((path, e)) if is_enoent(&e) => {
                return Err(CgroupError::Unsupported {
                    path,
                    what: WHAT.into(),
                })
            }
            Err((_, e)) if errno(&e) == Some(libc::EINVAL) && runtime_v.is_some() => {
                fs::write_feature(
                    dir,
                    "cpu.rt_runtime_us",
                    runtime_v.as_deref().unwrap_or_default(),
                    WHAT,
                )?;
                return fs::write(dir, "cpu.rt_period_us", &v);
            }
            Err((path, e)) => return Err(write_err(path, &v, e)),
        }
    }
    if let Some(v) = runtime_v {
        fs::write_feature(dir, "cpu.rt_runtime_us", &v, WHAT)?;
    }
    Ok(())
}

fn set_cpuset(dirs: &[V1Dir], c: &LinuxCpu) -> Result<(), CgroupError> {
    let cpus = c.cpus().as_deref().filter(|s| !s.is_empty());
    let mems = c.mems().as_deref().filter(|s| !s.is_empty());
    if cpus.is_none() && mems.is_none() {
        return Ok(());
    }
    let dir = need(dirs, "cpuset", "a cpuset")?;
    if let Some(v) = cpus {
        fs::write(dir, CPUS, v)?;
    }
    if let Some(v) = mems {
        fs::write(dir, MEMS, v)?;
    }
    Ok(())
}

fn set_blkio(dirs: &[V1Dir], b: &LinuxBlockIo) -> Result<(), CgroupError> {
    let weight = b.weight().filter(|w| *w != 0);
    let leaf = b.leaf_weight().filter(|w| *w != 0);
    let none = |v: &Option<Vec<_>>| v.as_ref().is_none_or(|v: &Vec<_>| v.is_empty());
    let wdev = b.weight_device().as_deref().unwrap_or_default();
    let throttles = [
        (
            "blkio.throttle.read_bps_device",
            b.throttle_read_bps_device(),
        ),
        (
            "blkio.throttle.write_bps_device",
            b.throttle_write_bps_device(),
        ),
        (
            "blkio.throttle.read_iops_device",
            b.throttle_read_iops_device(),
        ),
        (
            "blkio.throttle.write_iops_device",
            b.throttle_write_iops_device(),
        ),
    ];
    if weight.is_none()
        && leaf.is_none()
        && wdev.is_empty()
        && throttles.iter().all(|(_, t)| none(t))
    {
        return Ok(());
    }
    let dir = need(dirs, "blkio", "a block io limit")?;
    // CFQ's blkio.weight, else BFQ's (the only proportional scheduler on newer kernels).
    if let Some(w) = weight {
        write_first(
            dir,
            &["blkio.weight", "blkio.bfq.weight"],
            &w.to_string(),
            "a block io weight",
        )?;
    }
    if let Some(w) = leaf {
        fs::write_feature(
            dir,
            "blkio.leaf_weight",
            &w.to_string(),
            "a block io leaf weight",
        )?;
    }
    for d in wdev {
        if let Some(w) = d.weight() {
            let v = format!("{}:{} {w}", d.major(), d.minor());
            write_first(
                dir,
                &[
                    "blkio.weight_device",
                    "blkio.bfq.weight_device",
                    "blkio.bfq.weight",
                ],
                &v,
                "a per-device block io weight",
            )?;
        }
        if let Some(w) = d.leaf_weight() {
            let v = format!("{}:{} {w}", d.major(), d.minor());
            fs::write_feature(
                dir,
                "blkio.leaf_weight_device",
                &v,
                "a per-device block io leaf weight",
            )?;
        }
    }
    for (file, list) in throttles {
        let Some(list) = list.as_ref().filter(|l| !l.is_empty()) else {
            continue;
        };
        let mut w = RuleWriter::new(dir, file);
        for t in list {
            w.write_feature(
                &format!("{}:{} {}", t.major(), t.minor(), t.rate()),
                "block io throttling",
            )?;
        }
    }
    Ok(())
}

/// Writes `value` to the first of `files` that exists.
fn write_first(dir: &Path, files: &[&str], value: &str, what: &str) -> Result<(), CgroupError> {
    for f in files {
        match try_write(dir, f, value) {
            Ok(()) => return Ok(()),
            Err((_, e)) if is_enoent(&e) => continue,
            Err((path, e)) => return Err(write_err(path, value, e)),
        }
    }
    Err(CgroupError::Unsupported {
        path: dir.join(files[0]),
        what: what.to_string(),
    })
}

/// An OCI device rule as the v1 devices controller reads it: "c 1:3 rwm", "a *:* rwm".
/// None for rules the controller cannot express (FIFOs are not device nodes).
pub(super) fn device_rule(d: &LinuxDeviceCgroup) -> Result<Option<String>, CgroupError> {
    let typ = match d.typ() {
        None | Some(LinuxDeviceType::A) => 'a',
        Some(LinuxDeviceType::B) => 'b',
        Some(LinuxDeviceType::C) | Some(LinuxDeviceType::U) => 'c',
        Some(LinuxDeviceType::P) => return Ok(None),
    };
    let num = |n: Option<i64>| {
        n.filter(|n| *n >= 0)
            .map_or_else(|| "*".to_string(), |n| n.to_string())
    };
    let access = d
        .access()
        .as_deref()
        .filter(|a| !a.is_empty())
        .unwrap_or("rwm");
    if !access.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
        return Err(invalid(
            "device rule access",
            format!("{access:?} is not made of r, w and m"),
        ));
    }
    Ok(Some(format!(
        "{typ} {}:{} {access}",
        num(d.major()),
        num(d.minor())
    )))
}

fn set_devices(dir: &Path, rules: &[LinuxDeviceCgroup]) -> Result<(), CgroupError> {
    // Rules apply in order (a later "a" resets the list), so each goes in its own write.
    let mut allow = RuleWriter::new(dir, "devices.allow");
    let mut deny = RuleWriter::new(dir, "devices.deny");
    for r in rules {
        if let Some(rule) = device_rule(r)? {
            if r.allow() {
                allow.write(&rule)?;
            } else {
                deny.write(&rule)?;
            }
        }
    }
    Ok(())
}

const FREEZER_STATE: &str = "freezer.state";
pub(super) const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);

/// Writes FROZEN until freezer.state reads FROZEN. A v1 freeze can stay FREEZING while
/// processes fork; like runc, re-write FROZEN, and now and then thaw and pause briefly so
/// new children can be caught too. On failure the cgroup is thawed, never left half frozen.
pub(super) fn freeze(dirs: &[V1Dir]) -> Result<(), CgroupError> {
    let dir = need(dirs, "freezer", "freezing")?;
    let deadline = Instant::now() + FREEZE_TIMEOUT;
    let thaw = || {
        let _ = fs::write(dir, FREEZER_STATE, "THAWED");
    };
    let mut i: u32 = 0;
    loop {
        if i % 50 == 49 {
            thaw();
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Err(e) = fs::write(dir, FREEZER_STATE, "FROZEN") {
            thaw();
            return Err(e);
        }
        if i >= 10 {
            // After the first quick retries, give a slow system time to settle.
            std::thread::sleep(Duration::from_micros(500));
        }
        let state = match fs::read(dir, FREEZER_STATE) {
            Ok(s) => s,
            Err(e) => {
                thaw();
                return Err(e);
            }
        };
        match state.trim() {
            "FROZEN" => return Ok(()),
            "FREEZING" => {}
            other => {
                let state = other.to_string();
                thaw();
                return Err(CgroupError::FreezerState {
                    path: dir.join(FREEZER_STATE),
                    state,
                });
            }
        }
        if Instant::now() >= deadline {
            thaw();
            return Err(CgroupError::FreezeTimeout {
                path: dir.join(FREEZER_STATE),
                state: "FREEZING".into(),
                secs: FREEZE_TIMEOUT.as_secs(),
            });
        }
        i += 1;
    }
}

/// Thaws; nothing to do without a freezer or once the cgroup is gone.
pub(super) fn thaw(dirs: &[V1Dir]) -> Result<(), CgroupError> {
    let Some(dir) = find(dirs, "freezer") else {
        return Ok(());
    };
    match try_write(dir, FREEZER_STATE, "THAWED") {
        Ok(()) => Ok(()),
        Err((_, e)) if is_enoent(&e) => Ok(()),
        Err((path, e)) => Err(write_err(path, "THAWED", e)),
    }
}

pub(super) fn is_frozen(dirs: &[V1Dir]) -> Result<bool, CgroupError> {
    let Some(dir) = find(dirs, "freezer") else {
        return Ok(false);
    };
    Ok(fs::read_opt(dir, FREEZER_STATE)?.is_some_and(|s| s.trim() == "FROZEN"))
}

pub(super) fn stats(dirs: &[V1Dir]) -> Result<Stats, CgroupError> {
    let num = |ctrl: &str, file: &str| -> Result<Option<u64>, CgroupError> {
        let Some(dir) = find(dirs, ctrl) else {
            return Ok(None);
        };
        Ok(fs::read_opt(dir, file)?.and_then(|s| fs::parse_limit(&s)))
    };
    let cpu = match find(dirs, "cpuacct") {
        Some(dir) => fs::read_opt(dir, "cpuacct.usage")?.and_then(|s| s.trim().parse().ok()),
        None => None,
    };
    Ok(Stats {
        cpu_usage_ns: cpu,
        memory_usage_bytes: num("memory", "memory.usage_in_bytes")?,
        memory_limit_bytes: num("memory", LIMIT)?,
        pids_current: num("pids", "pids.current")?,
        pids_limit: num("pids", "pids.max")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroups::tests::{read, touch, v1_fake};
    use oci_spec::runtime::{
        LinuxBlockIoBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxHugepageLimitBuilder,
        LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder, LinuxThrottleDeviceBuilder,
    };

    #[test]
    fn device_rules() {
        let rule = |allow,
                    typ: Option<LinuxDeviceType>,
                    major: Option<i64>,
                    minor: Option<i64>,
                    access: Option<&str>| {
            let mut b = LinuxDeviceCgroupBuilder::default().allow(allow);
            if let Some(t) = typ {
                b = b.typ(t);
            }
            if let Some(m) = major {
                b = b.major(m);
            }
            if let Some(m) = minor {
                b = b.minor(m);
            }
            if let Some(a) = access {
                b = b.access(a);
            }
            device_rule(&b.build().unwrap()).unwrap()
        };
        assert_eq!(
            rule(false, None, None, None, None).as_deref(),
            Some("a *:* rwm")
        );
        assert_eq!(
            rule(
                true,
                Some(LinuxDeviceType::C),
                Some(1),
                Some(3),
                Some("rwm")
            )
            .as_deref(),
            Some("c 1:3 rwm")
        );
        assert_eq!(
            rule(true, Some(LinuxDeviceType::B), Some(8), None, Some("r")).as_deref(),
            Some("b 8:* r")
        );
        assert_eq!(
            rule(true, Some(LinuxDeviceType::U), Some(5), Some(1), Some("")).as_deref(),
            Some("c 5:1 rwm")
        );
        assert_eq!(
            rule(true, Some(LinuxDeviceType::A), Some(-1), Some(-1), None).as_deref(),
            Some("a *:* rwm")
        );
        assert_eq!(rule(true, Some(LinuxDeviceType::P), None, None, None), None);
        let bad = LinuxDeviceCgroupBuilder::default()
            .access("rx")
            .build()
            .unwrap();
        assert!(device_rule(&bad).is_err());
    }

    #[test]
    fn set_on_fake_layout() {
        let (_tmp, cg) = v1_fake();
        cg.create().unwrap();
        let dir = |c: &str| cg.v1_dirs().iter().find(|d| d.has(c)).unwrap().dir.clone();
        touch(
            &dir("memory"),
            &[
                LIMIT,
                MEMSW,
                "memory.soft_limit_in_bytes",
                "memory.swappiness",
                "memory.oom_control",
            ],
        );
        touch(
            &dir("cpu"),
            &[
                "cpu.shares",
                "cpu.cfs_quota_us",
                "cpu.cfs_period_us",
                "cpu.cfs_burst_us",
            ],
        );
        touch(&dir("pids"), &["pids.max"]);
        touch(&dir("devices"), &["devices.allow", "devices.deny"]);
        touch(
            &dir("blkio"),
            &[
                "blkio.bfq.weight",
                "blkio.throttle.read_bps_device",
                "blkio.throttle.write_iops_device",
            ],
        );
        let res = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(64 << 20)
                    .swap(128 << 20)
                    .reservation(32 << 20)
                    .swappiness(10u64)
                    .disable_oom_killer(true)
                    .build()
                    .unwrap(),
            )
            .cpu(
                LinuxCpuBuilder::default()
                    .shares(512u64)
                    .quota(50000)
                    .period(100000u64)
                    .burst(1000u64)
                    .cpus("0")
                    .mems("0")
                    .build()
                    .unwrap(),
            )
            .pids(LinuxPidsBuilder::default().limit(0).build().unwrap())
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
            ])
            .block_io(
                LinuxBlockIoBuilder::default()
                    .weight(500u16)
                    .throttle_read_bps_device(vec![LinuxThrottleDeviceBuilder::default()
                        .major(8)
                        .minor(0)
                        .rate(1048576u64)
                        .build()
                        .unwrap()])
                    .throttle_write_iops_device(vec![
                        LinuxThrottleDeviceBuilder::default()
                            .major(8)
                            .minor(0)
                            .rate(10u64)
                            .build()
                            .unwrap(),
                        LinuxThrottleDeviceBuilder::default()
                            .major(8)
                            .minor(16)
                            .rate(20u64)
                            .build()
                            .unwrap(),
                    ])
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        cg.set(&res).unwrap();
        assert_eq!(read(&dir("memory"), LIMIT), (64 << 20).to_string());
        assert_eq!(read(&dir("memory"), MEMSW), (128 << 20).to_string());
        assert_eq!(
            read(&dir("memory"), "memory.soft_limit_in_bytes"),
            (32 << 20).to_string()
        );
        assert_eq!(read(&dir("memory"), "memory.swappiness"), "10");
        assert_eq!(read(&dir("memory"), "memory.oom_control"), "1");
        assert_eq!(read(&dir("cpu"), "cpu.shares"), "512");
        assert_eq!(read(&dir("cpu"), "cpu.cfs_quota_us"), "50000");
        assert_eq!(read(&dir("cpu"), "cpu.cfs_period_us"), "100000");
        assert_eq!(read(&dir("cpu"), "cpu.cfs_burst_us"), "1000");
        assert_eq!(read(&dir("cpuset"), CPUS), "0");
        assert_eq!(read(&dir("cpuset"), MEMS), "0");
        assert_eq!(read(&dir("pids"), "pids.max"), "max");
        assert_eq!(read(&dir("devices"), "devices.deny"), "a *:* rwm\n");
        assert_eq!(read(&dir("devices"), "devices.allow"), "c 1:3 rwm\n");
        assert_eq!(
            read(&dir("blkio"), "blkio.bfq.weight"),
            "500",
            "bfq when blkio.weight is absent"
        );
        assert_eq!(
            read(&dir("blkio"), "blkio.throttle.read_bps_device"),
            "8:0 1048576\n"
        );
        assert_eq!(
            read(&dir("blkio"), "blkio.throttle.write_iops_device"),
            "8:0 10\n8:16 20\n"
        );
        assert!(!dir("cpu").join("cpu.idle").exists());
    }

    #[test]
    fn cpuset_is_filled_from_parent() {
        let (_tmp, cg) = v1_fake();
        let d = cg.v1_dirs().iter().find(|d| d.has("cpuset")).unwrap();
        std::fs::write(d.mount_point.join(CPUS), "0-3\n").unwrap();
        std::fs::write(d.mount_point.join(MEMS), "0\n").unwrap();
        // The fake kernel does not create files in new directories: pre-create an empty
        // intermediate level the way an incautious tool would leave it.
        let mid = d.dir.parent().unwrap();
        touch(mid, &[CPUS, MEMS]);
        touch(&d.dir, &[CPUS, MEMS]);
        cg.create().unwrap();
        assert_eq!(read(mid, CPUS), "0-3");
        assert_eq!(read(&d.dir, CPUS), "0-3");
        assert_eq!(read(&d.dir, MEMS), "0");
    }

    #[test]
    fn memory_swap_cases() {
        let (_tmp, cg) = v1_fake();
        cg.create().unwrap();
        let mem = cg
            .v1_dirs()
            .iter()
            .find(|d| d.has("memory"))
            .unwrap()
            .dir
            .clone();
        touch(&mem, &[LIMIT]);
        let set = |l: Option<i64>, s: Option<i64>| {
            let mut b = LinuxMemoryBuilder::default();
            if let Some(l) = l {
                b = b.limit(l);
            }
            if let Some(s) = s {
                b = b.swap(s);
            }
            cg.set(
                &LinuxResourcesBuilder::default()
                    .memory(b.build().unwrap())
                    .build()
                    .unwrap(),
            )
        };
        // No memsw file (swap accounting off): "no swap" and "unlimited" pass silently.
        set(Some(1 << 20), Some(1 << 20)).unwrap();
        set(Some(-1), None).unwrap();
        assert_eq!(read(&mem, LIMIT), "-1");
        set(Some(1 << 20), Some(-1)).unwrap();
        let e = set(Some(1 << 20), Some(2 << 20)).unwrap_err();
        assert!(matches!(e, CgroupError::Unsupported { .. }), "{e}");
        assert!(e.to_string().contains("memory.memsw.limit_in_bytes"), "{e}");
        let e = set(Some(2 << 20), Some(1 << 20)).unwrap_err();
        assert!(matches!(e, CgroupError::InvalidResource { .. }), "{e}");
        let e = cg
            .set(
                &LinuxResourcesBuilder::default()
                    .memory(
                        LinuxMemoryBuilder::default()
                            .swappiness(101u64)
                            .build()
                            .unwrap(),
                    )
                    .build()
                    .unwrap(),
            )
            .unwrap_err();
        assert!(e.to_string().contains("swappiness"), "{e}");
    }

    #[test]
    fn missing_controllers_and_knobs_are_named() {
        let (_tmp, cg) = v1_fake();
        cg.create().unwrap();
        let hp = LinuxResourcesBuilder::default()
            .hugepage_limits(vec![LinuxHugepageLimitBuilder::default()
                .page_size("2MB")
                .limit(1 << 21)
                .build()
                .unwrap()])
            .build()
            .unwrap();
        let e = cg.set(&hp).unwrap_err();
        assert!(
            matches!(&e, CgroupError::ControllerMissing { controller, .. } if controller == "hugetlb"),
            "{e}"
        );
        let unified = LinuxResourcesBuilder::default()
            .unified(
                [("memory.max".to_string(), "1".to_string())]
                    .into_iter()
                    .collect::<std::collections::HashMap<_, _>>(),
            )
            .build()
            .unwrap();
        assert!(cg
            .set(&unified)
            .unwrap_err()
            .to_string()
            .contains("cgroup v2"));
        // blkio weight with neither weight file.
        let bw = LinuxResourcesBuilder::default()
            .block_io(
                LinuxBlockIoBuilder::default()
                    .weight(100u16)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let e = cg.set(&bw).unwrap_err();
        assert!(e.to_string().contains("blkio.weight"), "{e}");
        // rt runtime without the knob.
        let rt = LinuxResourcesBuilder::default()
            .cpu(
                LinuxCpuBuilder::default()
                    .realtime_runtime(1000)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let e = cg.set(&rt).unwrap_err();
        assert!(e.to_string().contains("cpu.rt_runtime_us"), "{e}");
        // Shares outside the kernel's range are refused rather than clamped.
        let sh = LinuxResourcesBuilder::default()
            .cpu(LinuxCpuBuilder::default().shares(1u64).build().unwrap())
            .build()
            .unwrap();
        assert!(matches!(
            cg.set(&sh),
            Err(CgroupError::InvalidResource { .. })
        ));
        // Nothing requested: nothing written, no error even though no file exists.
        cg.set(&LinuxResourcesBuilder::default().build().unwrap())
            .unwrap();
    }

    #[test]
    fn freeze_and_thaw_on_fake_layout() {
        let (_tmp, cg) = v1_fake();
        cg.create().unwrap();
        let fz = cg
            .v1_dirs()
            .iter()
            .find(|d| d.has("freezer"))
            .unwrap()
            .dir
            .clone();
        touch(&fz, &[FREEZER_STATE]);
        assert!(!cg.is_frozen().unwrap());
        cg.freeze().unwrap();
        assert!(cg.is_frozen().unwrap());
        cg.thaw().unwrap();
        assert_eq!(read(&fz, FREEZER_STATE), "THAWED");
        assert!(!cg.is_frozen().unwrap());
    }
}
