//! Seccomp profiles: docker/moby's default profile, and `--security-opt seccomp=FILE`.
//!
//! The default is moby's `profiles/seccomp/default.json` (as of moby 26): an allow-list
//! whose default action is EPERM, with rules that depend on the container's capabilities
//! (CAP_SYS_ADMIN allows mount/setns/unshare and namespace-creating clone; CAP_SYS_PTRACE
//! allows ptrace and process_vm_*; ...), on the host architecture, and on the kernel
//! version. It is kept here in moby's own "docker format" ([`DockerProfile`]: syscall groups
//! with `includes`/`excludes` filters and an `archMap`), and [`render`] evaluates that
//! format exactly as moby's `setupSeccomp` does into the OCI `linux.seccomp` the runtime
//! loads. Profile files go through the same path; an OCI-format file is the same format
//! without the filters, so both are accepted.
//!
//! Names unknown to the host's libseccomp are skipped by the runtime, so the list may name
//! syscalls newer than the kernel.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use berth_runtime::spec::oci::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::request::SeccompMode;

#[derive(Debug, Error)]
pub enum SeccompProfileError {
    #[error("reading seccomp profile {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing seccomp profile {path}: field `{field}`: {message}")]
    Parse {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("invalid seccomp profile {path}: {field}: {reason}")]
    Invalid {
        path: PathBuf,
        field: String,
        reason: String,
    },
}

/// A seccomp profile in docker's format (a superset of the OCI `linux.seccomp` object).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DockerProfile {
    pub default_action: LinuxSeccompAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_errno_ret: Option<u32>,
    /// OCI style: the exact list. Exclusive with `arch_map`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architectures: Option<Vec<Arch>>,
    /// docker style: the native architecture's entry picks the list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch_map: Option<Vec<ArchMapEntry>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<Vec<LinuxSeccompFilterFlag>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener_path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener_metadata: Option<String>,
    #[serde(default)]
    pub syscalls: Vec<DockerSyscall>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ArchMapEntry {
    pub architecture: Arch,
    #[serde(default)]
    pub sub_architectures: Option<Vec<Arch>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DockerSyscall {
    /// Legacy single-name form. Exclusive with `names`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    pub action: LinuxSeccompAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno_ret: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<LinuxSeccompArg>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "Filter::is_empty")]
    pub includes: Filter,
    #[serde(default, skip_serializing_if = "Filter::is_empty")]
    pub excludes: Filter,
}

/// When a syscall group applies. In `includes` every condition must hold (all caps
/// present, the native arch listed, kernel at least minKernel); in `excludes` any one
/// holding drops the group.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Filter {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caps: Vec<String>,
    /// Go architecture names (`amd64`, `arm64`, ...), compared with the native one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arches: Vec<String>,
    /// `major.minor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_kernel: Option<String>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.caps.is_empty() && self.arches.is_empty() && self.min_kernel.is_none()
    }
}

/// What a profile is evaluated against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// Go's name for the native architecture (what `includes.arches` lists).
    pub go_arch: String,
    /// libseccomp's name for it (what `archMap` keys on).
    pub native: Arch,
    /// (major, minor) of the running kernel.
    pub kernel: (u32, u32),
}

impl Platform {
    /// The host the engine runs on (it is compiled for it).
    pub fn host() -> Platform {
        let (go, native) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", Arch::ScmpArchX86_64),
            "x86" => ("386", Arch::ScmpArchX86),
            "aarch64" => ("arm64", Arch::ScmpArchAarch64),
            "arm" => ("arm", Arch::ScmpArchArm),
            "riscv64" => ("riscv64", Arch::ScmpArchRiscv64),
            "s390x" => ("s390x", Arch::ScmpArchS390x),
            "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", Arch::ScmpArchPpc64le),
            "powerpc64" => ("ppc64", Arch::ScmpArchPpc64),
            "loongarch64" => ("loong64", Arch::ScmpArchLoongarch64),
            "mips64" if cfg!(target_endian = "little") => ("mips64le", Arch::ScmpArchMipsel64),
            "mips64" => ("mips64", Arch::ScmpArchMips64),
            other => (other, Arch::ScmpArchNative),
        };
        let kernel = nix::sys::utsname::uname()
            .ok()
            .and_then(|u| parse_kernel(&u.release().to_string_lossy()))
            .unwrap_or((0, 0));
        Platform {
            go_arch: go.to_string(),
            native,
            kernel,
        }
    }
}

/// "6.18.44-fc" → (6, 18); "4.8" → (4, 8).
pub fn parse_kernel(s: &str) -> Option<(u32, u32)> {
    let mut it = s.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Some((major, minor))
}

/// Allowed for every container (moby's first group).
#[rustfmt::skip]
const ALLOWED: &[&str] = &[
    "accept", "accept4", "access", "adjtimex", "alarm", "bind", "brk", "cachestat",
    "capget", "capset", "chdir", "chmod", "chown", "chown32", "clock_adjtime",
    "clock_adjtime64", "clock_getres", "clock_getres_time64", "clock_gettime",
    "clock_gettime64", "clock_nanosleep", "clock_nanosleep_time64", "close", "close_range",
    "connect", "copy_file_range", "creat", "dup", "dup2", "dup3", "epoll_create",
    "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait", "epoll_pwait2",
    "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "execve", "execveat", "exit",
    "exit_group", "faccessat", "faccessat2", "fadvise64", "fadvise64_64", "fallocate",
    "fanotify_mark", "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown", "fchown32",
    "fchownat", "fcntl", "fcntl64", "fdatasync", "fgetxattr", "flistxattr", "flock", "fork",
    "fremovexattr", "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64",
    "fsync", "ftruncate", "ftruncate64", "futex", "futex_requeue", "futex_time64",
    "futex_wait", "futex_waitv", "futex_wake", "futimesat", "getcpu", "getcwd", "getdents",
    "getdents64", "getegid", "getegid32", "geteuid", "geteuid32", "getgid", "getgid32",
    "getgroups", "getgroups32", "getitimer", "getpeername", "getpgid", "getpgrp", "getpid",
    "getppid", "getpriority", "getrandom", "getresgid", "getresgid32", "getresuid",
    "getresuid32", "getrlimit", "get_robust_list", "getrusage", "getsid", "getsockname",
    "getsockopt", "get_thread_area", "gettid", "gettimeofday", "getuid", "getuid32",
    "getxattr", "inotify_add_watch", "inotify_init", "inotify_init1", "inotify_rm_watch",
    "io_cancel", "ioctl", "io_destroy", "io_getevents", "io_pgetevents",
    "io_pgetevents_time64", "ioprio_get", "ioprio_set", "io_setup", "io_submit",
    "io_uring_enter", "io_uring_register", "io_uring_setup", "ipc", "kill",
    "landlock_add_rule", "landlock_create_ruleset", "landlock_restrict_self", "lchown",
    "lchown32", "lgetxattr", "link", "linkat", "listen", "listxattr", "llistxattr",
    "_llseek", "lremovexattr", "lseek", "lsetxattr", "lstat", "lstat64", "madvise",
    "map_shadow_stack", "membarrier", "memfd_create", "memfd_secret", "mincore", "mkdir",
    "mkdirat", "mknod", "mknodat", "mlock", "mlock2", "mlockall", "mmap", "mmap2",
    "mprotect", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive",
    "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "mremap",
    "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock", "munlockall", "munmap",
    "name_to_handle_at", "nanosleep", "newfstatat", "_newselect", "open", "openat",
    "openat2", "pause", "pidfd_open", "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc",
    "pkey_free", "pkey_mprotect", "poll", "ppoll", "ppoll_time64", "prctl", "pread64",
    "preadv", "preadv2", "prlimit64", "process_mrelease", "pselect6", "pselect6_time64",
    "pwrite64", "pwritev", "pwritev2", "read", "readahead", "readlink", "readlinkat",
    "readv", "recv", "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg",
    "remap_file_pages", "removexattr", "rename", "renameat", "renameat2", "restart_syscall",
    "rmdir", "rseq", "rt_sigaction", "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo",
    "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait", "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo", "sched_getaffinity", "sched_getattr", "sched_getparam",
    "sched_get_priority_max", "sched_get_priority_min", "sched_getscheduler",
    "sched_rr_get_interval", "sched_rr_get_interval_time64", "sched_setaffinity",
    "sched_setattr", "sched_setparam", "sched_setscheduler", "sched_yield", "seccomp",
    "select", "semctl", "semget", "semop", "semtimedop", "semtimedop_time64", "send",
    "sendfile", "sendfile64", "sendmmsg", "sendmsg", "sendto", "setfsgid", "setfsgid32",
    "setfsuid", "setfsuid32", "setgid", "setgid32", "setgroups", "setgroups32", "setitimer",
    "setpgid", "setpriority", "setregid", "setregid32", "setresgid", "setresgid32",
    "setresuid", "setresuid32", "setreuid", "setreuid32", "setrlimit", "set_robust_list",
    "setsid", "setsockopt", "set_thread_area", "set_tid_address", "setuid", "setuid32",
    "setxattr", "shmat", "shmctl", "shmdt", "shmget", "shutdown", "sigaltstack", "signalfd",
    "signalfd4", "sigprocmask", "sigreturn", "socketcall", "socketpair", "splice", "stat",
    "stat64", "statfs", "statfs64", "statx", "symlink", "symlinkat", "sync",
    "sync_file_range", "syncfs", "sysinfo", "tee", "tgkill", "time", "timer_create",
    "timer_delete", "timer_getoverrun", "timer_gettime", "timer_gettime64", "timer_settime",
    "timer_settime64", "timerfd_create", "timerfd_gettime", "timerfd_gettime64",
    "timerfd_settime", "timerfd_settime64", "times", "tkill", "truncate", "truncate64",
    "ugetrlimit", "umask", "uname", "unlink", "unlinkat", "utime", "utimensat",
    "utimensat_time64", "utimes", "vfork", "vmsplice", "wait4", "waitid", "waitpid",
    "write", "writev",
];

/// Syscalls a capability unlocks (moby's capability-gated groups, in its order).
const BY_CAPABILITY: &[(&str, &[&str])] = &[
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    (
        "CAP_SYS_MODULE",
        &["delete_module", "init_module", "finit_module"],
    ),
    ("CAP_SYS_PACCT", &["acct"]),
    (
        "CAP_SYS_PTRACE",
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    (
        "CAP_SYS_TIME",
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    (
        "CAP_SYS_NICE",
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
];

/// Architecture-specific syscalls (Go arch names).
const BY_ARCH: &[(&[&str], &[&str])] = &[
    (&["ppc64le"], &["sync_file_range2", "swapcontext"]),
    (
        &["arm", "arm64"],
        &[
            "arm_fadvise64_64",
            "arm_sync_file_range",
            "sync_file_range2",
            "breakpoint",
            "cacheflush",
            "set_tls",
        ],
    ),
    (&["amd64", "x32"], &["arch_prctl"]),
    (&["amd64", "x32", "x86"], &["modify_ldt"]),
    (
        &["s390", "s390x"],
        &[
            "s390_pci_mmio_read",
            "s390_pci_mmio_write",
            "s390_runtime_instr",
        ],
    ),
    (&["riscv64"], &["riscv_flush_icache"]),
];

/// personality(2) values allowed without privileges: PER_LINUX, PER_LINUX32,
/// UNAME26, UNAME26|PER_LINUX32, and 0xffffffff (query the current persona).
const PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID |
/// CLONE_NEWNET | CLONE_NEWCGROUP: clone may set none of these without CAP_SYS_ADMIN.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

/// AF_VSOCK: sockets to the hypervisor are refused.
const AF_VSOCK: u64 = 40;

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn allow(list: &[&str]) -> DockerSyscall {
    DockerSyscall {
        name: None,
        names: names(list),
        action: LinuxSeccompAction::ScmpActAllow,
        errno_ret: None,
        args: Vec::new(),
        comment: None,
        includes: Filter::default(),
        excludes: Filter::default(),
    }
}

fn arg(index: usize, value: u64, op: &str) -> LinuxSeccompArg {
    serde_json::from_value(serde_json::json!({"index": index, "value": value, "op": op}))
        .expect("literal seccomp argument is valid")
}

fn arches(list: &[&str]) -> Vec<String> {
    names(list)
}

/// moby's default profile.
pub fn default_profile() -> DockerProfile {
    let mut syscalls = vec![allow(ALLOWED)];

    // Cross-process memory access and ptrace became safe to allow on 4.8, which closed the
    // seccomp bypass through ptrace.
    let mut g = allow(&["process_vm_readv", "process_vm_writev", "ptrace"]);
    g.includes.min_kernel = Some("4.8".into());
    syscalls.push(g);

    let mut g = allow(&["socket"]);
    g.args = vec![arg(0, AF_VSOCK, "SCMP_CMP_NE")];
    syscalls.push(g);

    for p in PERSONALITIES {
        let mut g = allow(&["personality"]);
        g.args = vec![arg(0, p, "SCMP_CMP_EQ")];
        syscalls.push(g);
    }

    for (arch_list, list) in BY_ARCH {
        let mut g = allow(list);
        g.includes.arches = arches(arch_list);
        syscalls.push(g);
    }

    // DAC_READ_SEARCH and SYS_ADMIN first, then clone's conditional rules, then the rest,
    // as moby orders them.
    for (cap, list) in &BY_CAPABILITY[..2] {
        let mut g = allow(list);
        g.includes.caps = vec![cap.to_string()];
        syscalls.push(g);
    }

    // Without CAP_SYS_ADMIN clone may not create namespaces. s390 swaps clone's first two
    // arguments.
    let mut g = allow(&["clone"]);
    g.args = vec![arg(0, CLONE_NAMESPACE_FLAGS, "SCMP_CMP_MASKED_EQ")];
    g.excludes.caps = vec!["CAP_SYS_ADMIN".into()];
    g.excludes.arches = arches(&["s390", "s390x"]);
    syscalls.push(g);
    let mut g = allow(&["clone"]);
    g.args = vec![arg(1, CLONE_NAMESPACE_FLAGS, "SCMP_CMP_MASKED_EQ")];
    g.comment = Some("s390 parameter ordering for clone is different".into());
    g.includes.arches = arches(&["s390", "s390x"]);
    g.excludes.caps = vec!["CAP_SYS_ADMIN".into()];
    syscalls.push(g);
    // clone3's flags are behind a pointer seccomp can't inspect: make it ENOSYS so libc
    // falls back to clone, whose flags can be checked.
    let mut g = allow(&["clone3"]);
    g.action = LinuxSeccompAction::ScmpActErrno;
    g.errno_ret = Some(libc::ENOSYS as u32);
    g.excludes.caps = vec!["CAP_SYS_ADMIN".into()];
    syscalls.push(g);

    for (cap, list) in &BY_CAPABILITY[2..] {
        let mut g = allow(list);
        g.includes.caps = vec![cap.to_string()];
        syscalls.push(g);
    }

    let map = |a: Arch, subs: &[Arch]| ArchMapEntry {
        architecture: a,
        sub_architectures: if subs.is_empty() {
            None
        } else {
            Some(subs.to_vec())
        },
    };
    DockerProfile {
        default_action: LinuxSeccompAction::ScmpActErrno,
        default_errno_ret: Some(libc::EPERM as u32),
        architectures: None,
        arch_map: Some(vec![
            map(
                Arch::ScmpArchX86_64,
                &[Arch::ScmpArchX86, Arch::ScmpArchX32],
            ),
            map(Arch::ScmpArchAarch64, &[Arch::ScmpArchArm]),
            map(
                Arch::ScmpArchMips64,
                &[Arch::ScmpArchMips, Arch::ScmpArchMips64n32],
            ),
            map(
                Arch::ScmpArchMips64n32,
                &[Arch::ScmpArchMips, Arch::ScmpArchMips64],
            ),
            map(
                Arch::ScmpArchMipsel64,
                &[Arch::ScmpArchMipsel, Arch::ScmpArchMipsel64n32],
            ),
            map(
                Arch::ScmpArchMipsel64n32,
                &[Arch::ScmpArchMipsel, Arch::ScmpArchMipsel64],
            ),
            map(Arch::ScmpArchS390x, &[Arch::ScmpArchS390]),
            map(Arch::ScmpArchRiscv64, &[]),
        ]),
        flags: None,
        listener_path: None,
        listener_metadata: None,
        syscalls,
    }
}

/// Parses a docker- or OCI-format profile; errors name the file and the JSON field.
pub fn parse_profile(path: &Path, bytes: &[u8]) -> Result<DockerProfile, SeccompProfileError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let profile: DockerProfile = serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        SeccompProfileError::Parse {
            path: path.to_path_buf(),
            field: if field.is_empty() || field == "." {
                "(top level)".into()
            } else {
                field
            },
            message: e.into_inner().to_string(),
        }
    })?;
    validate(path, &profile)?;
    Ok(profile)
}

/// Reads and parses a profile file (`--security-opt seccomp=FILE`).
pub fn load_file(path: &Path) -> Result<DockerProfile, SeccompProfileError> {
    let bytes = std::fs::read(path).map_err(|source| SeccompProfileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_profile(path, &bytes)
}

fn validate(path: &Path, p: &DockerProfile) -> Result<(), SeccompProfileError> {
    let invalid = |field: String, reason: &str| SeccompProfileError::Invalid {
        path: path.to_path_buf(),
        field,
        reason: reason.to_string(),
    };
    if p.architectures.is_some() && p.arch_map.is_some() {
        return Err(invalid(
            "architectures".into(),
            "both architectures and archMap are set; use one",
        ));
    }
    for (i, s) in p.syscalls.iter().enumerate() {
        match (&s.name, s.names.is_empty()) {
            (Some(_), false) => {
                return Err(invalid(
                    format!("syscalls[{i}]"),
                    "both name and names are set; use one",
                ))
            }
            (None, true) => {
                return Err(invalid(format!("syscalls[{i}].names"), "no syscall named"))
            }
            _ => {}
        }
        if let Some(j) = s.names.iter().position(|n| n.is_empty()) {
            return Err(invalid(format!("syscalls[{i}].names[{j}]"), "empty name"));
        }
        if let Some(j) = s.args.iter().position(|a| a.index() > 5) {
            return Err(invalid(
                format!("syscalls[{i}].args[{j}].index"),
                "syscalls take at most 6 arguments (index 0 to 5)",
            ));
        }
        for (which, f) in [("includes", &s.includes), ("excludes", &s.excludes)] {
            if let Some(k) = &f.min_kernel {
                if !k.contains('.') || parse_kernel(k).is_none() {
                    return Err(invalid(
                        format!("syscalls[{i}].{which}.minKernel"),
                        "expected major.minor, such as 4.8",
                    ));
                }
            }
        }
    }
    Ok(())
}

fn kernel_at_least(platform: &Platform, min: &str) -> bool {
    parse_kernel(min).is_some_and(|m| platform.kernel >= m)
}

/// Evaluates a docker-format profile for a container's capabilities (its bounding set,
/// `CAP_`-prefixed) on a platform, as moby's setupSeccomp does.
pub fn render(profile: &DockerProfile, caps: &[String], platform: &Platform) -> LinuxSeccomp {
    let caps: HashSet<&str> = caps.iter().map(String::as_str).collect();
    let architectures: Vec<Arch> = match (&profile.architectures, &profile.arch_map) {
        (Some(a), _) => a.clone(),
        (None, Some(map)) => map
            .iter()
            .find(|e| e.architecture == platform.native)
            .map(|e| {
                std::iter::once(e.architecture)
                    .chain(e.sub_architectures.iter().flatten().copied())
                    .collect()
            })
            .unwrap_or_default(),
        (None, None) => Vec::new(),
    };
    let mut syscalls = Vec::new();
    for s in &profile.syscalls {
        let ex = &s.excludes;
        if ex.arches.contains(&platform.go_arch)
            || ex.caps.iter().any(|c| caps.contains(c.as_str()))
            || ex
                .min_kernel
                .as_deref()
                .is_some_and(|k| kernel_at_least(platform, k))
        {
            continue;
        }
        let inc = &s.includes;
        if (!inc.arches.is_empty() && !inc.arches.contains(&platform.go_arch))
            || !inc.caps.iter().all(|c| caps.contains(c.as_str()))
            || inc
                .min_kernel
                .as_deref()
                .is_some_and(|k| !kernel_at_least(platform, k))
        {
            continue;
        }
        let names = match &s.name {
            Some(n) => vec![n.clone()],
            None => s.names.clone(),
        };
        let mut v = serde_json::json!({"names": names, "action": s.action});
        if let Some(e) = s.errno_ret {
            v["errnoRet"] = e.into();
        }
        if !s.args.is_empty() {
            v["args"] = serde_json::to_value(&s.args).unwrap_or_default();
        }
        syscalls.push(v);
    }
    let mut v = serde_json::json!({
        "defaultAction": profile.default_action,
        "syscalls": syscalls,
    });
    if let Some(e) = profile.default_errno_ret {
        v["defaultErrnoRet"] = e.into();
    }
    if !architectures.is_empty() {
        v["architectures"] = serde_json::to_value(&architectures).unwrap_or_default();
    }
    if let Some(f) = &profile.flags {
        v["flags"] = serde_json::to_value(f).unwrap_or_default();
    }
    if let Some(l) = &profile.listener_path {
        v["listenerPath"] = serde_json::to_value(l).unwrap_or_default();
    }
    if let Some(m) = &profile.listener_metadata {
        v["listenerMetadata"] = m.clone().into();
    }
    // Every part came from typed values of the same spec types, so this can't fail.
    serde_json::from_value(v).expect("rendered seccomp profile is valid")
}

/// The default profile for these capabilities on this host.
pub fn default_for_caps(caps: &[String]) -> LinuxSeccomp {
    render(&default_profile(), caps, &Platform::host())
}

/// The `linux.seccomp` for a request's seccomp mode: None when unconfined.
pub fn for_mode(
    mode: &SeccompMode,
    caps: &[String],
) -> Result<Option<LinuxSeccomp>, SeccompProfileError> {
    Ok(match mode {
        SeccompMode::Unconfined => None,
        SeccompMode::Default => Some(default_for_caps(caps)),
        SeccompMode::File(path) => Some(render(&load_file(path)?, caps, &Platform::host())),
    })
}

/// The built-in profile as docker-format JSON (for `berth info`-style output and docs).
pub fn default_profile_json() -> serde_json::Value {
    serde_json::to_value(default_profile()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::defaults::DEFAULT_CAPABILITIES;

    fn amd64() -> Platform {
        Platform {
            go_arch: "amd64".into(),
            native: Arch::ScmpArchX86_64,
            kernel: (6, 1),
        }
    }

    fn default_caps() -> Vec<String> {
        DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect()
    }

    fn with(extra: &[&str]) -> Vec<String> {
        let mut c = default_caps();
        c.extend(extra.iter().map(|s| s.to_string()));
        c
    }

    fn json(s: &LinuxSeccomp) -> serde_json::Value {
        serde_json::to_value(s).unwrap()
    }

    /// Rules naming `name`, as JSON.
    fn rules_for(s: &LinuxSeccomp, name: &str) -> Vec<serde_json::Value> {
        json(s)["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["names"].as_array().unwrap().iter().any(|n| n == name))
            .cloned()
            .collect()
    }

    #[test]
    fn default_action_archs_and_core_allow_list() {
        let s = render(&default_profile(), &default_caps(), &amd64());
        let v = json(&s);
        assert_eq!(v["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(v["defaultErrnoRet"], 1);
        assert_eq!(
            v["architectures"],
            serde_json::json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
        );
        let first = &v["syscalls"][0];
        assert_eq!(first["action"], "SCMP_ACT_ALLOW");
        let n = first["names"].as_array().unwrap();
        assert!(n.len() > 300, "{}", n.len());
        for must in [
            "read",
            "write",
            "execve",
            "openat",
            "futex",
            "clock_gettime",
            "io_uring_setup",
        ] {
            assert!(n.iter().any(|x| x == must), "{must}");
        }
        for never in [
            "mount",
            "umount2",
            "unshare",
            "setns",
            "reboot",
            "init_module",
            "kexec_load",
            "bpf",
            "keyctl",
            "add_key",
            "userfaultfd",
            "open_by_handle_at",
            "swapon",
            "pivot_root",
        ] {
            assert!(rules_for(&s, never).is_empty(), "{never} must be denied");
        }
        let p = Platform {
            go_arch: "arm64".into(),
            native: Arch::ScmpArchAarch64,
            kernel: (6, 1),
        };
        let v = json(&render(&default_profile(), &default_caps(), &p));
        assert_eq!(
            v["architectures"],
            serde_json::json!(["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"])
        );
    }

    #[test]
    fn the_allow_list_has_no_duplicates() {
        let mut seen = HashSet::new();
        for n in ALLOWED {
            assert!(seen.insert(n), "{n} listed twice");
        }
    }

    #[test]
    fn conditional_rules_follow_capabilities() {
        let p = amd64();
        let base = render(&default_profile(), &default_caps(), &p);
        // clone only without namespace flags, clone3 ENOSYS, no mount.
        let clone = rules_for(&base, "clone");
        assert_eq!(clone.len(), 1);
        assert_eq!(
            clone[0]["args"],
            serde_json::json!([{"index": 0, "value": 2114060288u64, "op": "SCMP_CMP_MASKED_EQ"}])
        );
        let clone3 = rules_for(&base, "clone3");
        assert_eq!(clone3.len(), 1);
        assert_eq!(clone3[0]["action"], "SCMP_ACT_ERRNO");
        assert_eq!(clone3[0]["errnoRet"], 38);
        assert!(rules_for(&base, "mount").is_empty());
        // chroot comes with the default CAP_SYS_CHROOT.
        assert_eq!(rules_for(&base, "chroot").len(), 1);
        // socket: anything but AF_VSOCK.
        assert_eq!(
            rules_for(&base, "socket")[0]["args"],
            serde_json::json!([{"index": 0, "value": 40, "op": "SCMP_CMP_NE"}])
        );
        assert_eq!(rules_for(&base, "personality").len(), 5);
        assert_eq!(rules_for(&base, "arch_prctl").len(), 1);
        assert!(rules_for(&base, "set_tls").is_empty());
        // ptrace from the kernel >= 4.8 rule only.
        assert_eq!(rules_for(&base, "ptrace").len(), 1);
        let old = Platform {
            kernel: (4, 4),
            ..amd64()
        };
        assert!(rules_for(&render(&default_profile(), &default_caps(), &old), "ptrace").is_empty());

        let admin = render(&default_profile(), &with(&["CAP_SYS_ADMIN"]), &p);
        let clone = rules_for(&admin, "clone");
        assert_eq!(clone.len(), 1);
        assert!(
            clone[0].get("args").is_none(),
            "unconditional clone with SYS_ADMIN"
        );
        assert_eq!(rules_for(&admin, "clone3")[0]["action"], "SCMP_ACT_ALLOW");
        for n in ["mount", "umount2", "setns", "unshare", "sethostname"] {
            assert_eq!(rules_for(&admin, n).len(), 1, "{n}");
        }
        let ptrace = render(&default_profile(), &with(&["CAP_SYS_PTRACE"]), &p);
        assert_eq!(rules_for(&ptrace, "process_vm_writev").len(), 2);
        assert_eq!(rules_for(&ptrace, "kcmp").len(), 1);
        for (cap, sys) in [
            ("CAP_SYS_MODULE", "finit_module"),
            ("CAP_SYS_BOOT", "reboot"),
            ("CAP_SYS_TIME", "clock_settime"),
            ("CAP_SYS_NICE", "mbind"),
            ("CAP_SYS_RAWIO", "iopl"),
            ("CAP_SYS_PACCT", "acct"),
            ("CAP_SYS_TTY_CONFIG", "vhangup"),
            ("CAP_SYSLOG", "syslog"),
            ("CAP_BPF", "bpf"),
            ("CAP_PERFMON", "perf_event_open"),
            ("CAP_DAC_READ_SEARCH", "open_by_handle_at"),
        ] {
            assert!(rules_for(&base, sys).is_empty(), "{sys} without {cap}");
            let s = render(&default_profile(), &with(&[cap]), &p);
            assert_eq!(rules_for(&s, sys).len(), 1, "{sys} with {cap}");
        }
        // Dropping CAP_SYS_CHROOT drops chroot.
        let no_chroot: Vec<String> = default_caps()
            .into_iter()
            .filter(|c| c != "CAP_SYS_CHROOT")
            .collect();
        assert!(rules_for(&render(&default_profile(), &no_chroot, &p), "chroot").is_empty());
    }

    #[test]
    fn s390_uses_the_second_clone_argument() {
        let p = Platform {
            go_arch: "s390x".into(),
            native: Arch::ScmpArchS390x,
            kernel: (6, 1),
        };
        let s = render(&default_profile(), &default_caps(), &p);
        let clone = rules_for(&s, "clone");
        assert_eq!(clone.len(), 1);
        assert_eq!(clone[0]["args"][0]["index"], 1);
        assert_eq!(
            json(&s)["architectures"],
            serde_json::json!(["SCMP_ARCH_S390X", "SCMP_ARCH_S390"])
        );
    }

    #[test]
    fn the_runtime_builds_a_filter_from_every_rendering() {
        // libseccomp must accept what we produce, with and without the gated groups.
        for caps in [
            default_caps(),
            with(&["CAP_SYS_ADMIN", "CAP_SYS_PTRACE"]),
            crate::defaults::ALL_CAPABILITIES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            Vec::new(),
        ] {
            let s = default_for_caps(&caps);
            berth_runtime::seccomp::build(&s).unwrap_or_else(|e| panic!("{caps:?}: {e}"));
        }
    }

    #[test]
    fn default_profile_round_trips_as_docker_json() {
        let v = default_profile_json();
        assert_eq!(v["defaultAction"], "SCMP_ACT_ERRNO");
        assert!(v["archMap"].is_array());
        let back = parse_profile(Path::new("x.json"), v.to_string().as_bytes()).unwrap();
        assert_eq!(back, default_profile());
    }

    #[test]
    fn profile_files_docker_and_oci_formats() {
        let d = tempfile::tempdir().unwrap();
        let docker = d.path().join("docker.json");
        std::fs::write(
            &docker,
            r#"{"defaultAction":"SCMP_ACT_ALLOW",
                "archMap":[{"architecture":"SCMP_ARCH_X86_64","subArchitectures":["SCMP_ARCH_X86"]}],
                "syscalls":[
                  {"name":"chmod","action":"SCMP_ACT_ERRNO","errnoRet":13},
                  {"names":["mount"],"action":"SCMP_ACT_ERRNO","excludes":{"caps":["CAP_SYS_ADMIN"]}},
                  {"names":["kexec_load"],"action":"SCMP_ACT_KILL","includes":{"minKernel":"99.0"}}
                ]}"#,
        )
        .unwrap();
        let p = load_file(&docker).unwrap();
        let s = render(&p, &default_caps(), &amd64());
        let v = json(&s);
        assert_eq!(v["defaultAction"], "SCMP_ACT_ALLOW");
        assert_eq!(
            v["architectures"],
            serde_json::json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"])
        );
        assert_eq!(v["syscalls"].as_array().unwrap().len(), 2);
        assert_eq!(v["syscalls"][0]["names"], serde_json::json!(["chmod"]));
        let s = render(&p, &with(&["CAP_SYS_ADMIN"]), &amd64());
        assert_eq!(json(&s)["syscalls"].as_array().unwrap().len(), 1);

        let oci = d.path().join("oci.json");
        std::fs::write(
            &oci,
            r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":1,
                "architectures":["SCMP_ARCH_X86_64"],
                "syscalls":[{"names":["read","write"],"action":"SCMP_ACT_ALLOW",
                             "args":[{"index":0,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#,
        )
        .unwrap();
        let s = for_mode(&SeccompMode::File(oci.clone()), &default_caps())
            .unwrap()
            .unwrap();
        let v = json(&s);
        assert_eq!(v["architectures"], serde_json::json!(["SCMP_ARCH_X86_64"]));
        assert_eq!(v["syscalls"][0]["args"][0]["value"], 1);
        assert!(for_mode(&SeccompMode::Unconfined, &default_caps())
            .unwrap()
            .is_none());
    }

    #[test]
    fn profile_errors_name_the_file_and_field() {
        let p = Path::new("/etc/p.json");
        let e = parse_profile(p, br#"{"defaultAction":"SCMP_ACT_NOPE"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "parsing seccomp profile /etc/p.json: field `defaultAction`: unknown variant"
            ),
            "{e}"
        );
        let e = parse_profile(p, br#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["x"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":"one","op":"SCMP_CMP_EQ"}]}]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("field `syscalls[0].args[0].value`"), "{e}");
        let e = parse_profile(p, br#"{"defaultAction":"SCMP_ACT_ERRNO","syscal":[]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `syscal`"), "{e}");
        let e = parse_profile(
            p,
            br#"{"defaultAction":"SCMP_ACT_ERRNO","architectures":[],"archMap":[]}"#,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(e, "invalid seccomp profile /etc/p.json: architectures: both architectures and archMap are set; use one");
        let e = parse_profile(p, br#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"name":"a","names":["b"],"action":"SCMP_ACT_ALLOW"}]}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with("syscalls[0]: both name and names are set; use one"),
            "{e}"
        );
        let e = parse_profile(p, br#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["a"],"action":"SCMP_ACT_ALLOW","args":[{"index":6,"value":0,"op":"SCMP_CMP_EQ"}]}]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("syscalls[0].args[0].index"), "{e}");
        let e = parse_profile(p, br#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["a"],"action":"SCMP_ACT_ALLOW","includes":{"minKernel":"four"}}]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("includes.minKernel"), "{e}");
        let e = load_file(Path::new("/nonexistent/p.json"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("reading seccomp profile /nonexistent/p.json: "),
            "{e}"
        );
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(parse_kernel("6.18.44-fc-v595"), Some((6, 18)));
        assert_eq!(parse_kernel("4.8"), Some((4, 8)));
        assert_eq!(parse_kernel("5"), Some((5, 0)));
        assert_eq!(parse_kernel("x"), None);
        assert!(Platform::host().kernel >= (3, 0));
    }
}
