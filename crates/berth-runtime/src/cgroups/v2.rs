//! cgroup v2: one directory; OCI's v1-shaped values are converted the way runc and crun
//! do (cpu.shares → cpu.weight, memory+swap → swap alone, blkio weight → io.weight).
//!
//! Only unit-tested on file layouts here: on the development host every controller is bound
//! to v1, so the cgroup2 mount has none. The device filter (devices_bpf) is tested on that
//! mount for real: eBPF programs attach to any cgroup2 directory.

use std::path::Path;
use std::time::{Duration, Instant};

use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxMemory, LinuxResources};

use super::fs::{self, errno, is_enoent, try_write, write_err, RuleWriter};
use super::v1::{
    check_shares, check_swappiness, hugepage_size, pids_max, rdma_rule, write_idle, FREEZE_TIMEOUT,
};
use super::{CgroupError, Stats};

/// Controllers a container can be limited by, delegated from the root down to its parent.
const WANTED: &[&str] = &[
    "cpuset", "cpu", "io", "memory", "hugetlb", "pids", "rdma", "misc",
];

fn invalid(what: &str, reason: impl Into<String>) -> CgroupError {
    CgroupError::InvalidResource {
        what: what.to_string(),
        reason: reason.into(),
    }
}

/// "max" for -1 (unlimited), as cgroup v2 spells it.
fn num(v: i64) -> String {
    if v == -1 {
        "max".to_string()
    } else {
        v.to_string()
    }
}

/// mkdir -p, then enable the wanted controllers in every ancestor's cgroup.subtree_control
/// (a controller is usable in a cgroup only if all its ancestors delegate it).
///
/// Fast path (every container after the first under the same parent): the parent already
/// delegates everything the root offers → two reads, no writes. Errors enabling controllers
/// are ignored as runc does (a cgroup with processes, or a controller the parent does not
/// have): a resource that then cannot be set fails in `set`, naming its file.
/// Threaded and "domain invalid" cgroups are not handled.
pub(super) fn create(mount_point: &Path, dir: &Path) -> Result<(), CgroupError> {
    fs::mkdir_p(dir, mount_point)?;
    let Some(parent) = dir.parent().filter(|p| p.starts_with(mount_point)) else {
        return Ok(());
    };
    let offered = fs::read_opt(mount_point, "cgroup.controllers")?.unwrap_or_default();
    let wanted: Vec<&str> = offered
        .split_whitespace()
        .filter(|c| WANTED.contains(c))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let enabled = fs::read_opt(parent, "cgroup.subtree_control")?.unwrap_or_default();
    if wanted
        .iter()
        .all(|w| enabled.split_whitespace().any(|e| e == *w))
    {
        return Ok(());
    }
    let line = wanted
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ");
    let rel = parent.strip_prefix(mount_point).unwrap_or(Path::new(""));
    let mut level = mount_point.to_path_buf();
    let mut levels = vec![level.clone()];
    for c in rel.components() {
        level.push(c);
        levels.push(level.clone());
    }
    for l in &levels {
        if try_write(l, "cgroup.subtree_control", &line).is_err() {
            // One refused controller fails the whole write: enable the others one by one.
            for c in &wanted {
                let _ = try_write(l, "cgroup.subtree_control", &format!("+{c}"));
            }
        }
    }
    Ok(())
}

pub(super) fn set(dir: &Path, res: &LinuxResources) -> Result<(), CgroupError> {
    // Check the unified keys before writing anything.
    let unified = res.unified().as_ref().filter(|u| !u.is_empty());
    if let Some(u) = unified {
        for k in u.keys() {
            if k.is_empty() || k.contains('/') || k == "." || k == ".." || k.starts_with('.') {
                return Err(invalid(
                    "unified key",
                    format!("{k:?} is not a cgroup file name"),
                ));
            }
        }
    }
    if let Some(m) = res.memory() {
        set_memory(dir, m)?;
    }
    if let Some(c) = res.cpu() {
        set_cpu(dir, c)?;
    }
    if let Some(p) = res.pids() {
        fs::write_feature(
            dir,
            "pids.max",
            &pids_max(p.limit()),
            "a pids limit (pids controller not enabled)",
        )?;
    }
    if let Some(b) = res.block_io() {
        set_io(dir, b)?;
    }
    if let Some(h) = res.hugepage_limits().as_ref().filter(|h| !h.is_empty()) {
        for l in h {
            let size = hugepage_size(l.page_size())?;
            let v = if l.limit() < 0 {
                "max".to_string()
            } else {
                l.limit().to_string()
            };
            let what = format!(
                "a {size} hugepage limit (hugetlb controller not enabled, or no such page size)"
            );
            fs::write_feature(dir, &format!("hugetlb.{size}.max"), &v, &what)?;
        }
    }
    if let Some(rdma) = res.rdma().as_ref().filter(|r| !r.is_empty()) {
        let mut w = RuleWriter::new(dir, "rdma.max");
        for (dev, l) in rdma {
            if let Some(rule) = rdma_rule(dev, l.hca_handles(), l.hca_objects()) {
                w.write_feature(&rule, "rdma limits (rdma controller not enabled)")?;
            }
        }
    }
    // Device rules: v2 has no controller for them; an eBPF program attached to the
    // cgroup decides (devices_bpf).
    if let Some(rules) = res.devices().as_ref().filter(|r| !r.is_empty()) {
        super::devices_bpf::apply(dir, rules)?;
    }
    // Network class ids and priorities have no v2 controller (runc ignores them too).
    if let Some(u) = unified {
        // Last, so that explicit keys override the converted values (runc's order).
        for (k, v) in u {
            fs::write_feature(
                dir,
                k,
                v,
                &format!("unified key {k:?} (its controller is not enabled)"),
            )?;
        }
    }
    Ok(())
}

/// OCI swap is memory+swap (v1's meaning); v2's memory.swap.max is swap alone.
/// None: leave memory.swap.max alone. (runc's ConvertMemorySwapToCgroupV2Value.)
pub(super) fn swap_to_v2(
    swap: Option<i64>,
    memory: Option<i64>,
) -> Result<Option<i64>, CgroupError> {
    match (swap, memory) {
        // Unlimited memory, swap unset: both unlimited, as on v1.
        (None, Some(-1)) => Ok(Some(-1)),
        (None, _) => Ok(None),
        (Some(-1), _) => Ok(Some(-1)),
        (Some(s), Some(-1)) => Ok(Some(s)),
        (Some(_), None) => Err(invalid(
            "memory swap",
            "a swap limit needs a memory limit on cgroup v2",
        )),
        (Some(_), Some(m)) if m < 0 => Err(invalid("memory limit", format!("{m}"))),
        (Some(s), Some(m)) if s < m => Err(invalid(
            "memory swap",
            format!("memory+swap limit {s} is below the memory limit {m}"),
        )),
        (Some(s), Some(m)) => Ok(Some(s - m)),
    }
}

fn set_memory(dir: &Path, m: &LinuxMemory) -> Result<(), CgroupError> {
    let limit = m.limit().filter(|v| *v != 0);
    let swap = m.swap().filter(|v| *v != 0);
    let reservation = m.reservation().filter(|v| *v != 0);
    // Swappiness has no v2 knob: ignored, but an impossible value is still an error.
    check_swappiness(m)?;
    if let Some(s) = swap_to_v2(swap, limit)? {
        let v = num(s);
        match try_write(dir, "memory.swap.max", &v) {
            Ok(()) => {}
            // No swap accounting: "unlimited" and "none" need no enforcing.
            Err((_, e)) if is_enoent(&e) && (v == "max" || v == "0") => {}
            Err((path, e)) if is_enoent(&e) => {
                return Err(CgroupError::Unsupported {
                    path,
                    what: "a swap limit (swap accounting is off)".into(),
                })
            }
            Err((path, e)) => return Err(write_err(path, &v, e)),
        }
    }
    if let Some(l) = limit {
        fs::write_feature(
            dir,
            "memory.max",
            &num(l),
            "a memory limit (memory controller not enabled)",
        )?;
    }
    if let Some(r) = reservation {
        fs::write_feature(
            dir,
            "memory.low",
            &num(r),
            "a memory reservation (memory controller not enabled)",
        )?;
    }
    // disableOOMKiller has no v2 equivalent (runc and crun ignore it too).
    Ok(())
}

/// runc's linear map of cpu.shares [2, 262144] onto cpu.weight [1, 10000].
pub(super) fn shares_to_weight(shares: u64) -> u64 {
    1 + ((shares - 2) * 9999) / 262142
}

fn set_cpu(dir: &Path, c: &LinuxCpu) -> Result<(), CgroupError> {
    if c.realtime_runtime().is_some_and(|v| v != 0) || c.realtime_period().is_some_and(|v| v != 0) {
        return Err(invalid(
            "cpu realtime limits",
            "cgroup v2 has no realtime bandwidth control",
        ));
    }
    if let Some(s) = c.shares().filter(|v| *v != 0) {
        check_shares(s)?;
        fs::write_feature(
            dir,
            "cpu.weight",
            &shares_to_weight(s).to_string(),
            "cpu shares (cpu controller not enabled)",
        )?;
    }
    if let Some(i) = c.idle() {
        write_idle(dir, i)?;
    }
    let quota = c.quota().filter(|v| *v != 0);
    let period = c.period().filter(|v| *v != 0);
    // A larger burst can be refused while the old quota stands: written again after it.
    let mut burst_again = None;
    if let Some(b) = c.burst() {
        let v = b.to_string();
        match try_write(dir, "cpu.max.burst", &v) {
            Ok(()) => {}
            // No burst knob before Linux 5.14: ignored, as runc does.
            Err((_, e)) if is_enoent(&e) => {}
            Err((_, e)) if errno(&e) == Some(libc::EINVAL) && quota.is_some() => {
                burst_again = Some(v)
            }
            Err((path, e)) => return Err(write_err(path, &v, e)),
        }
    }
    if quota.is_some() || period.is_some() {
        let mut v = match quota {
            Some(q) if q > 0 => q.to_string(),
            _ => "max".to_string(),
        };
        if let Some(p) = period {
            v.push_str(&format!(" {p}"));
        }
        fs::write_feature(
            dir,
            "cpu.max",
            &v,
            "a cpu quota (cpu controller not enabled)",
        )?;
        if let Some(b) = burst_again {
            fs::write(dir, "cpu.max.burst", &b)?;
        }
    }
    if let Some(v) = c.cpus().as_deref().filter(|s| !s.is_empty()) {
        fs::write_feature(
            dir,
            "cpuset.cpus",
            v,
            "a cpuset (cpuset controller not enabled)",
        )?;
    }
    if let Some(v) = c.mems().as_deref().filter(|s| !s.is_empty()) {
        fs::write_feature(
            dir,
            "cpuset.mems",
            v,
            "a cpuset (cpuset controller not enabled)",
        )?;
    }
    Ok(())
}

/// blkio weight [10, 1000] → io.weight [1, 10000] (runc's ConvertBlkIOToIOWeightValue).
pub(super) fn blkio_to_io_weight(w: u16) -> Result<u64, CgroupError> {
    if !(10..=1000).contains(&w) {
        return Err(invalid(
            "block io weight",
            format!("{w} is outside 10..=1000"),
        ));
    }
    Ok(1 + (u64::from(w) - 10) * 9999 / 990)
}

fn set_io(dir: &Path, b: &LinuxBlockIo) -> Result<(), CgroupError> {
    let weight = b.weight().filter(|w| *w != 0);
    let wdev: Vec<_> = b
        .weight_device()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter(|d| d.weight().is_some())
        .collect();
    // leafWeight has no v2 equivalent: ignored (runc too).
    if weight.is_some() || !wdev.is_empty() {
        // BFQ takes the OCI values as they are (same 1..1000 scale, per-device
        // "MAJ:MIN W" lines in the same file); without BFQ, io.weight with converted values.
        let mut bfq = RuleWriter::new(dir, "io.bfq.weight");
        let first = weight.map(|w| w.to_string()).or_else(|| {
            wdev.first().map(|d| {
                format!(
                    "{}:{} {}",
                    d.major(),
                    d.minor(),
                    d.weight().unwrap_or_default()
                )
            })
        });
        let has_bfq = match first.as_deref().map(|v| bfq.write(v)) {
            Some(Ok(())) => true,
            Some(Err(CgroupError::Write { source, .. })) if is_enoent(&source) => false,
            Some(Err(e)) => return Err(e),
            None => false,
        };
        if has_bfq {
            let skip = usize::from(weight.is_none());
            for d in wdev.iter().skip(skip) {
                bfq.write(&format!(
                    "{}:{} {}",
                    d.major(),
                    d.minor(),
                    d.weight().unwrap_or_default()
                ))?;
            }
        } else {
            let mut w = RuleWriter::new(dir, "io.weight");
            const WHAT: &str =
                "a block io weight (io controller not enabled, or no weight-based io scheduling)";
            if let Some(v) = weight {
                w.write_feature(&format!("default {}", blkio_to_io_weight(v)?), WHAT)?;
            }
            for d in &wdev {
                let v = blkio_to_io_weight(d.weight().unwrap_or_default())?;
                w.write_feature(&format!("{}:{} {v}", d.major(), d.minor()), WHAT)?;
            }
        }
    }
    let throttles = [
        ("rbps", b.throttle_read_bps_device()),
        ("wbps", b.throttle_write_bps_device()),
        ("riops", b.throttle_read_iops_device()),
        ("wiops", b.throttle_write_iops_device()),
    ];
    let mut max = RuleWriter::new(dir, "io.max");
    for (key, list) in throttles {
        for t in list.as_deref().unwrap_or_default() {
            max.write_feature(
                &format!("{}:{} {key}={}", t.major(), t.minor(), t.rate()),
                "block io throttling (io controller not enabled)",
            )?;
        }
    }
    Ok(())
}

/// Freezes through cgroup.freeze and waits for cgroup.events to say "frozen 1" (the
/// kernel freezes asynchronously). On timeout the cgroup is thawed again.
pub(super) fn freeze(dir: &Path) -> Result<(), CgroupError> {
    match try_write(dir, "cgroup.freeze", "1") {
        Ok(()) => {}
        Err((path, e)) if is_enoent(&e) => {
            return Err(CgroupError::Unsupported {
                path,
                what: "freezing (cgroup.freeze needs Linux 5.2)".into(),
            })
        }
        Err((path, e)) => return Err(write_err(path, "1", e)),
    }
    wait_frozen(dir, FREEZE_TIMEOUT).inspect_err(|_| {
        let _ = try_write(dir, "cgroup.freeze", "0");
    })
}

/// The value of the "frozen" line of cgroup.events, if there is one.
fn events_frozen(events: &str) -> Option<bool> {
    events
        .lines()
        .find_map(|l| l.strip_prefix("frozen "))
        .map(|v| v.trim() == "1")
}

pub(super) fn wait_frozen(dir: &Path, timeout: Duration) -> Result<(), CgroupError> {
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_micros(100);
    loop {
        let events = fs::read(dir, "cgroup.events")?;
        match events_frozen(&events) {
            Some(true) => return Ok(()),
            Some(false) => {}
            None => {
                let path = dir.join("cgroup.events");
                return Err(CgroupError::FreezerState {
                    path,
                    state: "no \"frozen\" line".into(),
                });
            }
        }
        if Instant::now() >= deadline {
            return Err(CgroupError::FreezeTimeout {
                path: dir.join("cgroup.events"),
                state: "frozen 0".into(),
                secs: timeout.as_secs(),
            });
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(10));
    }
}

/// Thaws; a cgroup that is gone (or a kernel without cgroup.freeze) has nothing frozen.
pub(super) fn thaw(dir: &Path) -> Result<(), CgroupError> {
    match try_write(dir, "cgroup.freeze", "0") {
        Ok(()) => Ok(()),
        Err((_, e)) if is_enoent(&e) => Ok(()),
        Err((path, e)) => Err(write_err(path, "0", e)),
    }
}

/// cgroup.events' "frozen" also counts a frozen ancestor; cgroup.freeze is the fallback.
pub(super) fn is_frozen(dir: &Path) -> Result<bool, CgroupError> {
    if let Some(f) = fs::read_opt(dir, "cgroup.events")?
        .as_deref()
        .and_then(events_frozen)
    {
        return Ok(f);
    }
    Ok(fs::read_opt(dir, "cgroup.freeze")?.is_some_and(|s| s.trim() == "1"))
}

pub(super) fn stats(dir: &Path) -> Result<Stats, CgroupError> {
    let num = |file: &str| -> Result<Option<u64>, CgroupError> {
        Ok(fs::read_opt(dir, file)?.and_then(|s| fs::parse_limit(&s)))
    };
    let cpu = fs::read_opt(dir, "cpu.stat")?.and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|us| us.saturating_mul(1000))
    });
    Ok(Stats {
        cpu_usage_ns: cpu,
        memory_usage_bytes: num("memory.current")?,
        memory_limit_bytes: num("memory.max")?,
        pids_current: num("pids.current")?,
        pids_limit: num("pids.max")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroups::tests::{read, touch, v2_fake};
    use oci_spec::runtime::{
        LinuxBlockIoBuilder, LinuxCpuBuilder, LinuxHugepageLimitBuilder, LinuxMemoryBuilder,
        LinuxPidsBuilder, LinuxResourcesBuilder, LinuxThrottleDeviceBuilder,
        LinuxWeightDeviceBuilder,
    };
    use std::collections::HashMap;

    const LEAF_FILES: &[&str] = &[
        "memory.max",
        "memory.low",
        "memory.swap.max",
        "cpu.weight",
        "cpu.max",
        "cpu.max.burst",
        "cpuset.cpus",
        "cpuset.mems",
        "pids.max",
        "io.max",
        "io.weight",
        "hugetlb.2MB.max",
        "cgroup.freeze",
        "cgroup.events",
        "cgroup.procs",
        "memory.current",
        "pids.current",
        "cpu.stat",
    ];

    #[test]
    fn conversions() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262144), 10000);
        assert_eq!(blkio_to_io_weight(10).unwrap(), 1);
        assert_eq!(blkio_to_io_weight(500).unwrap(), 4950);
        assert_eq!(blkio_to_io_weight(1000).unwrap(), 10000);
        assert!(blkio_to_io_weight(5).is_err());

        let mb = 1 << 20;
        assert_eq!(swap_to_v2(None, Some(mb)).unwrap(), None);
        assert_eq!(swap_to_v2(None, Some(-1)).unwrap(), Some(-1));
        assert_eq!(swap_to_v2(Some(-1), Some(mb)).unwrap(), Some(-1));
        assert_eq!(swap_to_v2(Some(3 * mb), Some(mb)).unwrap(), Some(2 * mb));
        assert_eq!(swap_to_v2(Some(mb), Some(mb)).unwrap(), Some(0));
        assert_eq!(swap_to_v2(Some(mb), Some(-1)).unwrap(), Some(mb));
        assert!(swap_to_v2(Some(mb), None).is_err());
        assert!(swap_to_v2(Some(mb), Some(2 * mb)).is_err());
    }

    #[test]
    fn create_delegates_controllers() {
        let (tmp, cg) = v2_fake(Some("/berth/c1"));
        let root = tmp.path().join("sys/fs/cgroup");
        let mid = root.join("berth");
        std::fs::create_dir_all(&mid).unwrap();
        touch(&mid, &["cgroup.subtree_control", "cgroup.controllers"]);
        cg.create().unwrap();
        assert!(cg.v2_path().unwrap().is_dir());
        // Root offers "cpuset cpu io memory hugetlb pids rdma misc" minus what v2_fake left out.
        let want = "+cpuset +cpu +io +memory +hugetlb +pids";
        assert_eq!(read(&root, "cgroup.subtree_control"), want);
        assert_eq!(read(&mid, "cgroup.subtree_control"), want);
        // Fast path: already delegated → nothing written (make root's file unwritable-looking
        // by removing it; the second create must not need it).
        std::fs::write(
            mid.join("cgroup.subtree_control"),
            "cpuset cpu io memory hugetlb pids\n",
        )
        .unwrap();
        std::fs::remove_file(root.join("cgroup.subtree_control")).unwrap();
        cg.create().unwrap();
        assert_eq!(
            read(&mid, "cgroup.subtree_control"),
            "cpuset cpu io memory hugetlb pids\n"
        );
    }

    #[test]
    fn set_writes_converted_values() {
        let (_tmp, cg) = v2_fake(Some("/berth/c1"));
        cg.create().unwrap();
        let dir = cg.v2_path().unwrap();
        touch(&dir, LEAF_FILES);
        let res = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(64 << 20)
                    .swap(96 << 20)
                    .reservation(32 << 20)
                    .swappiness(60u64)
                    .disable_oom_killer(true)
                    .build()
                    .unwrap(),
            )
            .cpu(
                LinuxCpuBuilder::default()
                    .shares(1024u64)
                    .quota(50000)
                    .period(100000u64)
                    .burst(2000u64)
                    .cpus("0-1")
                    .mems("0")
                    .build()
                    .unwrap(),
            )
            .pids(LinuxPidsBuilder::default().limit(100).build().unwrap())
            .block_io(
                LinuxBlockIoBuilder::default()
                    .weight(500u16)
                    .weight_device(vec![LinuxWeightDeviceBuilder::default()
                        .major(8)
                        .minor(0)
                        .weight(100u16)
                        .build()
                        .unwrap()])
                    .throttle_read_bps_device(vec![LinuxThrottleDeviceBuilder::default()
                        .major(8)
                        .minor(0)
                        .rate(1048576u64)
                        .build()
                        .unwrap()])
                    .throttle_write_iops_device(vec![LinuxThrottleDeviceBuilder::default()
                        .major(8)
                        .minor(0)
                        .rate(100u64)
                        .build()
                        .unwrap()])
                    .build()
                    .unwrap(),
            )
            .hugepage_limits(vec![LinuxHugepageLimitBuilder::default()
                .page_size("2MB")
                .limit(-1)
                .build()
                .unwrap()])
            // No device rules: they attach an eBPF program, which needs a real cgroup
            // (devices_bpf's tests).
            .unified(HashMap::from([(
                "memory.high".to_string(),
                "50000000".to_string(),
            )]))
            .build()
            .unwrap();
        // memory.high does not exist yet: the unified write names it.
        let e = cg.set(&res).unwrap_err();
        assert!(e.to_string().contains("memory.high"), "{e}");
        touch(&dir, &["memory.high"]);
        cg.set(&res).unwrap();
        assert_eq!(read(&dir, "memory.max"), (64 << 20).to_string());
        assert_eq!(read(&dir, "memory.swap.max"), (32 << 20).to_string());
        assert_eq!(read(&dir, "memory.low"), (32 << 20).to_string());
        assert_eq!(read(&dir, "cpu.weight"), "39");
        assert_eq!(read(&dir, "cpu.max"), "50000 100000");
        assert_eq!(read(&dir, "cpu.max.burst"), "2000");
        assert_eq!(read(&dir, "cpuset.cpus"), "0-1");
        assert_eq!(read(&dir, "cpuset.mems"), "0");
        assert_eq!(read(&dir, "pids.max"), "100");
        assert_eq!(
            read(&dir, "io.weight"),
            "default 4950\n8:0 910\n",
            "no io.bfq.weight: converted io.weight"
        );
        assert_eq!(read(&dir, "io.max"), "8:0 rbps=1048576\n8:0 wiops=100\n");
        assert_eq!(read(&dir, "hugetlb.2MB.max"), "max");
        assert_eq!(read(&dir, "memory.high"), "50000000");
    }

    #[test]
    fn unlimited_and_partial_values() {
        let (_tmp, cg) = v2_fake(Some("/c2"));
        cg.create().unwrap();
        let dir = cg.v2_path().unwrap();
        touch(
            &dir,
            &["memory.max", "cpu.max", "pids.max", "io.bfq.weight"],
        );
        let res = LinuxResourcesBuilder::default()
            .memory(LinuxMemoryBuilder::default().limit(-1).build().unwrap())
            .cpu(LinuxCpuBuilder::default().period(50000u64).build().unwrap())
            .pids(LinuxPidsBuilder::default().limit(-1).build().unwrap())
            .block_io(
                LinuxBlockIoBuilder::default()
                    .weight(300u16)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        // No memory.swap.max (swap accounting off): unlimited swap is skipped silently.
        cg.set(&res).unwrap();
        assert_eq!(read(&dir, "memory.max"), "max");
        assert_eq!(read(&dir, "cpu.max"), "max 50000");
        assert_eq!(read(&dir, "pids.max"), "max");
        assert_eq!(
            read(&dir, "io.bfq.weight"),
            "300\n",
            "bfq takes the value unconverted"
        );
        assert!(!dir.join("memory.swap.max").exists());

        let quota_only = LinuxResourcesBuilder::default()
            .cpu(LinuxCpuBuilder::default().quota(20000).build().unwrap())
            .build()
            .unwrap();
        cg.set(&quota_only).unwrap();
        assert_eq!(read(&dir, "cpu.max"), "20000");
    }

    #[test]
    fn refusals() {
        let (_tmp, cg) = v2_fake(Some("/c3"));
        cg.create().unwrap();
        let dir = cg.v2_path().unwrap();
        touch(&dir, &["memory.max"]);
        let swap = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(1 << 20)
                    .swap(2 << 20)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let e = cg.set(&swap).unwrap_err();
        assert!(
            matches!(e, CgroupError::Unsupported { .. })
                && e.to_string().contains("memory.swap.max"),
            "{e}"
        );
        for key in ["../x", "a/b", "..", ""] {
            let r = LinuxResourcesBuilder::default()
                .unified(HashMap::from([(key.to_string(), "1".to_string())]))
                .build()
                .unwrap();
            assert!(
                matches!(cg.set(&r), Err(CgroupError::InvalidResource { .. })),
                "{key}"
            );
        }
        let rt = LinuxResourcesBuilder::default()
            .cpu(
                LinuxCpuBuilder::default()
                    .realtime_period(1000u64)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        assert!(matches!(
            cg.set(&rt),
            Err(CgroupError::InvalidResource { .. })
        ));
        let pids = LinuxResourcesBuilder::default()
            .pids(LinuxPidsBuilder::default().limit(5).build().unwrap())
            .build()
            .unwrap();
        let e = cg.set(&pids).unwrap_err();
        assert!(
            e.to_string().contains("pids.max") && e.to_string().contains("pids controller"),
            "{e}"
        );
        let hp = LinuxResourcesBuilder::default()
            .hugepage_limits(vec![LinuxHugepageLimitBuilder::default()
                .page_size("../2MB")
                .limit(1)
                .build()
                .unwrap()])
            .build()
            .unwrap();
        assert!(matches!(
            cg.set(&hp),
            Err(CgroupError::InvalidResource { .. })
        ));
    }

    #[test]
    fn freeze_thaw_stats() {
        let (_tmp, cg) = v2_fake(Some("/c4"));
        cg.create().unwrap();
        let dir = cg.v2_path().unwrap();
        touch(&dir, LEAF_FILES);
        std::fs::write(dir.join("cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
        cg.freeze().unwrap();
        assert_eq!(read(&dir, "cgroup.freeze"), "1");
        assert!(cg.is_frozen().unwrap());
        cg.thaw().unwrap();
        assert_eq!(read(&dir, "cgroup.freeze"), "0");
        std::fs::write(dir.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        assert!(!cg.is_frozen().unwrap());
        let e = wait_frozen(&dir, Duration::from_millis(30)).unwrap_err();
        assert!(matches!(e, CgroupError::FreezeTimeout { .. }), "{e}");

        std::fs::write(dir.join("cpu.stat"), "usage_usec 1500\nuser_usec 1000\n").unwrap();
        std::fs::write(dir.join("memory.current"), "4096\n").unwrap();
        std::fs::write(dir.join("memory.max"), "max\n").unwrap();
        std::fs::write(dir.join("pids.current"), "3\n").unwrap();
        std::fs::write(dir.join("pids.max"), "100\n").unwrap();
        let s = cg.stats().unwrap();
        assert_eq!(
            s,
            Stats {
                cpu_usage_ns: Some(1_500_000),
                memory_usage_bytes: Some(4096),
                memory_limit_bytes: None,
                pids_current: Some(3),
                pids_limit: Some(100)
            }
        );
        std::fs::write(dir.join("cgroup.procs"), "12\n7\n").unwrap();
        let child = dir.join("sub");
        std::fs::create_dir(&child).unwrap();
        std::fs::write(child.join("cgroup.procs"), "30\n7\n").unwrap();
        assert_eq!(cg.pids().unwrap(), vec![7, 12, 30]);
    }
}
