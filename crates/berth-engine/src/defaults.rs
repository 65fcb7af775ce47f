//! The security and environment defaults every container gets, as docker/moby's
//! `oci/defaults.go` sets them: capabilities, masked and read-only /proc and /sys paths,
//! the standard mounts, PATH, and the device cgroup's "deny all" (the runtime appends the
//! standard device allows after it, see `berth_runtime::spec::cgroup_resources`).
//!
//! rlimits differ from docker on purpose: podman's defaults (nofile 1048576, nproc
//! 4194304) capped at the host's current hard limits, because the engine runs without
//! CAP_SYS_RESOURCE on some hosts and could not raise a hard limit anyway.

use berth_runtime::spec::oci::{LinuxDeviceCgroup, Mount, PosixRlimit};
use serde_json::json;

/// docker's default capability set (moby `oci.DefaultCapabilities`).
pub use berth_runtime::spec::DEFAULT_CAPABILITIES;

/// Every capability Linux knows (up to CAP_CHECKPOINT_RESTORE, Linux 5.9), in number
/// order: what `--cap-add ALL` grants and what `--cap-add` accepts.
pub const ALL_CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Paths under /proc and /sys that leak host information or let a container poke the
/// host's hardware: hidden (an empty read-only file or tmpfs is mounted over them).
pub const MASKED_PATHS: [&str; 11] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// /proc paths that stay visible but read-only (writing them would change the host).
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// PATH for images that set none (moby `oci.DefaultPathEnv`).
pub const DEFAULT_PATH_ENV: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// docker's default /dev/shm size.
pub const SHM_SIZE: u64 = 64 << 20;

/// Group of /dev/pts/* (the `tty` group in every common distribution).
pub const TTY_GID: u32 = 5;

/// podman's default rlimits, before capping at the host's hard limits.
pub const DEFAULT_NOFILE: u64 = 1_048_576;
pub const DEFAULT_NPROC: u64 = 4_194_304;

fn mount(destination: &str, typ: &str, source: &str, options: &[&str]) -> Mount {
    // The JSON shape is the spec's; going through serde keeps this independent of the
    // builder API and can't fail for these literal values.
    serde_json::from_value(json!({
        "destination": destination,
        "type": typ,
        "source": source,
        "options": options,
    }))
    .expect("literal mount is valid")
}

/// The standard mounts, in the order they must be made (/dev before /dev/pts, ...).
///
/// `tty_gid_mapped`: whether gid 5 exists in the container (always true without a user
/// namespace; with one, only if the gid map covers 5). devpts refuses a `gid=` option
/// naming an unmapped group, so without it the pty group is left to the kernel's default.
pub fn default_mounts(tty_gid_mapped: bool) -> Vec<Mount> {
    let shm_size = format!("size={}k", SHM_SIZE / 1024);
    let mut devpts = vec![
        "nosuid",
        "noexec",
        "newinstance",
        "ptmxmode=0666",
        "mode=0620",
    ];
    let gid_opt = format!("gid={TTY_GID}");
    if tty_gid_mapped {
        devpts.push(&gid_opt);
    }
    vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount("/dev/pts", "devpts", "devpts", &devpts),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", &shm_size],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        ),
    ]
}

/// The device cgroup rules: deny everything; the runtime appends the standard devices
/// (null, zero, full, random, urandom, tty, pts, ptmx) after this rule.
pub fn device_rules() -> Vec<LinuxDeviceCgroup> {
    serde_json::from_value(json!([{"allow": false, "access": "rwm"}]))
        .expect("literal device rule is valid")
}

/// What the engine needs to know about the host to pick limits it can actually apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLimits {
    /// The engine's current hard RLIMIT_NOFILE (u64::MAX for unlimited).
    pub nofile_hard: u64,
    /// The engine's current hard RLIMIT_NPROC.
    pub nproc_hard: u64,
    /// Whether the memory cgroup can limit swap (v1 `memory.memsw.*` or v2
    /// `memory.swap.max`); docker only defaults memory+swap to twice the memory then.
    pub swap_accounting: bool,
}

impl Default for HostLimits {
    /// Generous limits, for tests and callers that build specs for another host.
    fn default() -> Self {
        HostLimits {
            nofile_hard: DEFAULT_NOFILE,
            nproc_hard: DEFAULT_NPROC,
            swap_accounting: true,
        }
    }
}

impl HostLimits {
    /// Reads the engine's own hard limits with getrlimit and probes swap accounting.
    /// A failed getrlimit (which can't happen for these resources) falls back to the
    /// conservative 1024.
    pub fn detect() -> HostLimits {
        use nix::sys::resource::{getrlimit, Resource};
        let hard = |r| getrlimit(r).map(|(_, h)| h).unwrap_or(1024);
        HostLimits {
            nofile_hard: hard(Resource::RLIMIT_NOFILE),
            nproc_hard: hard(Resource::RLIMIT_NPROC),
            swap_accounting: swap_accounting(std::path::Path::new("/sys/fs/cgroup")),
        }
    }
}

/// Whether the memory controller under `cgroup_root` can limit swap: on v1 the memsw files
/// exist; on v2 the root has no memory.swap.max, so look for it in a child cgroup.
pub fn swap_accounting(cgroup_root: &std::path::Path) -> bool {
    if cgroup_root
        .join("memory/memory.memsw.limit_in_bytes")
        .exists()
    {
        return true;
    }
    let v2_memory = std::fs::read_to_string(cgroup_root.join("cgroup.controllers"))
        .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"));
    v2_memory
        && std::fs::read_dir(cgroup_root).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.path().join("memory.swap.max").exists())
        })
}

/// RLIMIT_NOFILE and RLIMIT_NPROC at podman's defaults, never above what the host allows
/// (raising a hard limit needs CAP_SYS_RESOURCE, which the engine may lack).
pub fn default_rlimits(host: &HostLimits) -> Vec<PosixRlimit> {
    let nofile = DEFAULT_NOFILE.min(host.nofile_hard);
    let nproc = DEFAULT_NPROC.min(host.nproc_hard);
    serde_json::from_value(json!([
        {"type": "RLIMIT_NOFILE", "soft": nofile, "hard": nofile},
        {"type": "RLIMIT_NPROC", "soft": nproc, "hard": nproc},
    ]))
    .expect("literal rlimits are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_tables_agree_with_the_spec_types() {
        // Every name must deserialize as oci-spec's Capability.
        for c in ALL_CAPABILITIES {
            let _: berth_runtime::spec::oci::Capability = serde_json::from_value(json!(c)).unwrap();
        }
        for c in DEFAULT_CAPABILITIES {
            assert!(ALL_CAPABILITIES.contains(&c), "{c}");
        }
        let mut all = ALL_CAPABILITIES.to_vec();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 41);
    }

    #[test]
    fn mounts_in_order_with_tty_gid_only_when_mapped() {
        let m = default_mounts(true);
        let dests: Vec<_> = m.iter().map(|m| m.destination().clone()).collect();
        assert_eq!(
            dests,
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/sys",
                "/sys/fs/cgroup"
            ]
            .map(std::path::PathBuf::from)
        );
        let opts = |m: &Mount| m.options().clone().unwrap_or_default();
        assert!(opts(&m[2]).contains(&"gid=5".to_string()));
        assert!(opts(&m[3]).contains(&"size=65536k".to_string()));
        assert!(opts(&m[5]).contains(&"ro".to_string()));
        assert!(opts(&m[6]).contains(&"ro".to_string()));
        let m = default_mounts(false);
        assert!(!opts(&m[2]).iter().any(|o| o.starts_with("gid=")));
    }

    #[test]
    fn rlimits_are_capped_at_the_host_hard_limit() {
        let r = default_rlimits(&HostLimits {
            nofile_hard: 20000,
            nproc_hard: u64::MAX,
            swap_accounting: false,
        });
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            json!([
                {"type": "RLIMIT_NOFILE", "soft": 20000, "hard": 20000},
                {"type": "RLIMIT_NPROC", "soft": 4194304, "hard": 4194304},
            ])
        );
        let host = HostLimits::detect();
        assert!(host.nofile_hard > 0);
    }

    #[test]
    fn swap_accounting_on_v1_and_v2_layouts() {
        let d = tempfile::tempdir().unwrap();
        assert!(!swap_accounting(d.path()));
        std::fs::write(d.path().join("cgroup.controllers"), "cpu io memory pids\n").unwrap();
        assert!(!swap_accounting(d.path()));
        std::fs::create_dir(d.path().join("system.slice")).unwrap();
        std::fs::write(d.path().join("system.slice/memory.swap.max"), "max\n").unwrap();
        assert!(swap_accounting(d.path()));
        let v1 = tempfile::tempdir().unwrap();
        std::fs::create_dir(v1.path().join("memory")).unwrap();
        std::fs::write(v1.path().join("memory/memory.memsw.limit_in_bytes"), "").unwrap();
        assert!(swap_accounting(v1.path()));
    }

    #[test]
    fn devices_deny_all() {
        let v = serde_json::to_value(device_rules()).unwrap();
        assert_eq!(v, json!([{"allow": false, "access": "rwm"}]));
    }
}
