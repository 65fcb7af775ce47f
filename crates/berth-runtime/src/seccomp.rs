//! Seccomp: turns the spec's `linux.seccomp` into a libseccomp filter and loads it.
//!
//! Behaviour follows runc: syscall names libseccomp does not know are skipped (profiles list
//! syscalls newer than the library), a rule whose action equals the default action is dropped
//! (libseccomp rejects it), and args sharing an index become one rule per arg (libseccomp
//! cannot AND two comparisons of the same argument). As in crun (not runc), an `errnoRet` on
//! an action that takes none is an error: the runtime spec requires it.

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
    ScmpVersion,
};
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};
use thiserror::Error;

type LibError = libseccomp::error::SeccompError;

/// Syscalls take at most six arguments.
const MAX_ARGS: usize = 6;

/// Above this many syscall names, ask libseccomp for a binary-tree filter (as runc does);
/// libseccomp <= 2.5.4 misbehaves with the optimisation on an empty rule set.
const OPTIMIZE_THRESHOLD: usize = 32;

#[derive(Debug, Error)]
pub enum SeccompError {
    #[error("seccomp: creating filter (default action {action}): {}", describe(.source))]
    Init { action: String, source: LibError },
    #[error("seccomp: SCMP_ACT_NOTIFY {context} is not supported: berth has no seccomp listener support")]
    NotifyUnsupported { context: String },
    #[error(
        "seccomp: {field} {value} is out of range (the seccomp return data is 16 bits, max 65535)"
    )]
    ErrnoOutOfRange { field: String, value: u32 },
    #[error("seccomp: {field} is set but action {action} takes no errno")]
    UnusedErrno { field: String, action: String },
    #[error("seccomp: unknown architecture {arch} (not supported by libseccomp {version})")]
    UnknownArch { arch: String, version: String },
    #[error("seccomp: adding architecture {arch}: its byte order differs from the filter's other architectures")]
    ArchByteOrder { arch: String },
    #[error("seccomp: adding architecture {arch}: {}", describe(.source))]
    AddArch { arch: String, source: LibError },
    #[error("seccomp: setting flag {flag}: {}", describe(.source))]
    Flag { flag: String, source: LibError },
    #[error("seccomp: setting filter attribute {attr}: {}", describe(.source))]
    Attr {
        attr: &'static str,
        source: LibError,
    },
    #[error("seccomp: empty syscall name in syscalls[{entry}]")]
    EmptyName { entry: usize },
    #[error("seccomp: syscalls[{entry}]: argument index {index} out of range (syscalls take at most 6 arguments)")]
    ArgIndex { entry: usize, index: usize },
    #[error("seccomp: adding rule for syscall {name:?} (action {action}): {}", describe(.source))]
    AddRule {
        name: String,
        action: String,
        source: LibError,
    },
    #[error("seccomp: loading filter: {}", describe(.source))]
    Load { source: LibError },
}

/// libseccomp's own messages are capitalised library prose; prefer the errno's description
/// ("invalid argument") so messages read like the rest of the crate's.
fn describe(e: &LibError) -> String {
    let text = match e.sysrawrc() {
        Some(rc) => nix::errno::Errno::from_raw(-rc).desc().to_string(),
        None => e.to_string(),
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

/// What the runtime's `features` verb reports under `linux.seccomp`, as OCI names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Features {
    /// Same as [`enabled`].
    pub enabled: bool,
    pub actions: Vec<String>,
    pub operators: Vec<String>,
    pub archs: Vec<String>,
    /// The flags this libseccomp and kernel can set (a subset of the known ones).
    pub flags: Vec<String>,
}

/// Seccomp support is compiled in (libseccomp is linked).
pub fn enabled() -> bool {
    true
}

const ALL_ARCHS: [Arch; 23] = [
    Arch::ScmpArchX86,
    Arch::ScmpArchX86_64,
    Arch::ScmpArchX32,
    Arch::ScmpArchArm,
    Arch::ScmpArchAarch64,
    Arch::ScmpArchMips,
    Arch::ScmpArchMips64,
    Arch::ScmpArchMips64n32,
    Arch::ScmpArchMipsel,
    Arch::ScmpArchMipsel64,
    Arch::ScmpArchMipsel64n32,
    Arch::ScmpArchPpc,
    Arch::ScmpArchPpc64,
    Arch::ScmpArchPpc64le,
    Arch::ScmpArchS390,
    Arch::ScmpArchS390x,
    Arch::ScmpArchParisc,
    Arch::ScmpArchParisc64,
    Arch::ScmpArchRiscv64,
    Arch::ScmpArchLoongarch64,
    Arch::ScmpArchM68k,
    Arch::ScmpArchSh,
    Arch::ScmpArchSheb,
];

const ALL_FLAGS: [LinuxSeccompFilterFlag; 4] = [
    LinuxSeccompFilterFlag::SeccompFilterFlagLog,
    LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow,
    LinuxSeccompFilterFlag::SeccompFilterFlagTsync,
    LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv,
];

pub fn features() -> Features {
    let api = libseccomp::get_api();
    let mut actions: Vec<String> = [
        "SCMP_ACT_ALLOW",
        "SCMP_ACT_ERRNO",
        "SCMP_ACT_KILL",
        "SCMP_ACT_KILL_THREAD",
        "SCMP_ACT_TRAP",
        "SCMP_ACT_TRACE",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // KILL_PROCESS and LOG need kernel 4.14, which libseccomp reports as API level 3.
    // NOTIFY is left out: there is no listener support.
    if api >= 3 {
        actions.push("SCMP_ACT_KILL_PROCESS".into());
        actions.push("SCMP_ACT_LOG".into());
    }
    actions.sort();

    let mut operators: Vec<String> = [
        LinuxSeccompOperator::ScmpCmpNe,
        LinuxSeccompOperator::ScmpCmpLt,
        LinuxSeccompOperator::ScmpCmpLe,
        LinuxSeccompOperator::ScmpCmpEq,
        LinuxSeccompOperator::ScmpCmpGe,
        LinuxSeccompOperator::ScmpCmpGt,
        LinuxSeccompOperator::ScmpCmpMaskedEq,
    ]
    .iter()
    .map(|o| o.to_string())
    .collect();
    operators.sort();

    // An arch this libseccomp build lacks cannot resolve even `read`.
    let mut archs: Vec<String> = ALL_ARCHS
        .iter()
        .filter(|a| ScmpSyscall::from_name_by_arch("read", scmp_arch(**a)).is_ok())
        .map(|a| a.to_string())
        .collect();
    archs.sort();

    // As runc: a flag is supported if it can be set on a fresh filter.
    let mut flags: Vec<String> = ALL_FLAGS
        .iter()
        .filter(|f| {
            ScmpFilterContext::new(ScmpAction::Allow)
                .is_ok_and(|mut ctx| set_flag(&mut ctx, **f).is_ok())
        })
        .map(|f| f.to_string())
        .collect();
    flags.sort();

    Features {
        enabled: enabled(),
        actions,
        operators,
        archs,
        flags,
    }
}

fn scmp_arch(a: Arch) -> ScmpArch {
    match a {
        Arch::ScmpArchNative => ScmpArch::Native,
        Arch::ScmpArchX86 => ScmpArch::X86,
        Arch::ScmpArchX86_64 => ScmpArch::X8664,
        Arch::ScmpArchX32 => ScmpArch::X32,
        Arch::ScmpArchArm => ScmpArch::Arm,
        Arch::ScmpArchAarch64 => ScmpArch::Aarch64,
        Arch::ScmpArchMips => ScmpArch::Mips,
        Arch::ScmpArchMips64 => ScmpArch::Mips64,
        Arch::ScmpArchMips64n32 => ScmpArch::Mips64N32,
        Arch::ScmpArchMipsel => ScmpArch::Mipsel,
        Arch::ScmpArchMipsel64 => ScmpArch::Mipsel64,
        Arch::ScmpArchMipsel64n32 => ScmpArch::Mipsel64N32,
        Arch::ScmpArchPpc => ScmpArch::Ppc,
        Arch::ScmpArchPpc64 => ScmpArch::Ppc64,
        Arch::ScmpArchPpc64le => ScmpArch::Ppc64Le,
        Arch::ScmpArchS390 => ScmpArch::S390,
        Arch::ScmpArchS390x => ScmpArch::S390X,
        Arch::ScmpArchParisc => ScmpArch::Parisc,
        Arch::ScmpArchParisc64 => ScmpArch::Parisc64,
        Arch::ScmpArchRiscv64 => ScmpArch::Riscv64,
        Arch::ScmpArchLoongarch64 => ScmpArch::Loongarch64,
        Arch::ScmpArchM68k => ScmpArch::M68k,
        Arch::ScmpArchSh => ScmpArch::Sh,
        Arch::ScmpArchSheb => ScmpArch::Sheb,
    }
}

fn compare_op(op: LinuxSeccompOperator, value: u64) -> ScmpCompareOp {
    match op {
        LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
        LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
        LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
        LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
        LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
        LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
        // The spec's `value` is the mask; `valueTwo` is compared against the masked arg.
        LinuxSeccompOperator::ScmpCmpMaskedEq => ScmpCompareOp::MaskedEqual(value),
    }
}

/// Converts a spec action; `field` names the errno field and `context` the rule, for errors.
fn action(
    act: LinuxSeccompAction,
    errno_ret: Option<u32>,
    field: impl Fn() -> String,
    context: impl Fn() -> String,
) -> Result<ScmpAction, SeccompError> {
    let data = |default: u32| -> Result<u16, SeccompError> {
        let value = errno_ret.unwrap_or(default);
        u16::try_from(value).map_err(|_| SeccompError::ErrnoOutOfRange {
            field: field(),
            value,
        })
    };
    let eperm = libc::EPERM as u32;
    let takes_no_errno = || -> Result<(), SeccompError> {
        match errno_ret {
            Some(_) => Err(SeccompError::UnusedErrno {
                field: field(),
                action: act.to_string(),
            }),
            None => Ok(()),
        }
    };
    Ok(match act {
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(i32::from(data(eperm)?)),
        // runc passes errnoRet as the tracer's message, EPERM if unset.
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(data(eperm)?),
        LinuxSeccompAction::ScmpActNotify => {
            return Err(SeccompError::NotifyUnsupported { context: context() })
        }
        other => {
            takes_no_errno()?;
            match other {
                LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
                    ScmpAction::KillThread
                }
                LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
                LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
                LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
                _ => ScmpAction::Allow,
            }
        }
    })
}

/// The spec's name for an action, with its errno/trace data: `SCMP_ACT_ERRNO(1)`.
fn action_label(act: LinuxSeccompAction, resolved: ScmpAction) -> String {
    match resolved {
        ScmpAction::Errno(n) => format!("{act}({n})"),
        ScmpAction::Trace(n) => format!("{act}({n})"),
        _ => act.to_string(),
    }
}

fn set_flag(ctx: &mut ScmpFilterContext, flag: LinuxSeccompFilterFlag) -> Result<(), SeccompError> {
    let res = match flag {
        LinuxSeccompFilterFlag::SeccompFilterFlagLog => ctx.set_ctl_log(true),
        LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => ctx.set_ctl_ssb(true),
        LinuxSeccompFilterFlag::SeccompFilterFlagTsync => ctx.set_ctl_tsync(true),
        LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => ctx.set_ctl_waitkill(true),
    };
    res.map(drop).map_err(|source| SeccompError::Flag {
        flag: flag.to_string(),
        source,
    })
}

/// Builds the filter described by the spec's `linux.seccomp` section, without loading it.
pub fn build(spec: &LinuxSeccomp) -> Result<ScmpFilterContext, SeccompError> {
    let default_act = spec.default_action();
    let default = action(
        default_act,
        spec.default_errno_ret(),
        || "defaultErrnoRet".into(),
        || "as defaultAction".into(),
    )?;
    let mut ctx = ScmpFilterContext::new(default).map_err(|source| SeccompError::Init {
        action: action_label(default_act, default),
        source,
    })?;

    // no_new_privs follows process.noNewPrivileges and is set by the runtime, not here.
    ctx.set_ctl_nnp(false)
        .map_err(|source| SeccompError::Attr {
            attr: "no_new_privs",
            source,
        })?;
    // Report the kernel's errno from load (EPERM, EINVAL) instead of ECANCELED. Older
    // libseccomp lacks the attribute; it only affects error detail, so failure is ignored.
    let _ = ctx.set_api_sysrawrc(true);

    for &arch in spec.architectures().iter().flatten() {
        // add_arch is a no-op for an arch already present (the native one).
        if let Err(source) = ctx.add_arch(scmp_arch(arch)) {
            let arch = arch.to_string();
            return Err(match source.sysrawrc().map(|rc| -rc) {
                Some(libc::EINVAL) => SeccompError::UnknownArch {
                    arch,
                    version: ScmpVersion::current()
                        .map(|v| v.to_string())
                        .unwrap_or_else(|_| "in use".into()),
                },
                // A filter cannot mix big- and little-endian architectures.
                Some(libc::EDOM) => SeccompError::ArchByteOrder { arch },
                _ => SeccompError::AddArch { arch, source },
            });
        }
    }

    for &flag in spec.flags().iter().flatten() {
        set_flag(&mut ctx, flag)?;
    }

    let syscalls = spec.syscalls().as_deref().unwrap_or_default();
    let names: usize = syscalls.iter().map(|s| s.names().len()).sum();
    if names > OPTIMIZE_THRESHOLD {
        // Only speed is at stake; an older libseccomp without it still builds a valid filter.
        let _ = ctx.set_ctl_optimize(2);
    }

    let mut conds: Vec<ScmpArgCompare> = Vec::with_capacity(MAX_ARGS);
    for (entry, sc) in syscalls.iter().enumerate() {
        let act = action(
            sc.action(),
            sc.errno_ret(),
            || format!("syscalls[{entry}].errnoRet"),
            || format!("for syscalls {:?}", sc.names()),
        )?;

        conds.clear();
        let mut per_index = [0u8; MAX_ARGS];
        for arg in sc.args().iter().flatten() {
            let index = arg.index();
            let count = per_index
                .get_mut(index)
                .ok_or(SeccompError::ArgIndex { entry, index })?;
            *count = count.saturating_add(1);
            conds.push(ScmpArgCompare::new(
                index as u32,
                compare_op(arg.op(), arg.value()),
                if arg.op() == LinuxSeccompOperator::ScmpCmpMaskedEq {
                    arg.value_two().unwrap_or(0)
                } else {
                    arg.value()
                },
            ));
        }
        // libseccomp cannot AND two comparisons of one argument; like runc, fall back to
        // one rule per comparison (OR) when any index repeats.
        let split = per_index.iter().any(|&c| c > 1);

        if act == default {
            // Redundant, and libseccomp refuses it.
            continue;
        }

        for name in sc.names() {
            if name.is_empty() {
                return Err(SeccompError::EmptyName { entry });
            }
            // Names unknown to libseccomp are newer than it; skip, as runc does. Names it
            // knows but the native arch lacks resolve to pseudo-numbers it translates.
            let Ok(nr) = ScmpSyscall::from_name(name) else {
                continue;
            };
            let added = if split {
                conds
                    .iter()
                    .try_for_each(|c| ctx.add_rule_conditional(act, nr, &[*c]).map(drop))
            } else {
                ctx.add_rule_conditional(act, nr, &conds).map(drop)
            };
            added.map_err(|source| SeccompError::AddRule {
                name: name.clone(),
                action: action_label(sc.action(), act),
                source,
            })?;
        }
    }
    Ok(ctx)
}

/// Builds the filter and loads it into the calling thread (all threads with TSYNC). Needs
/// no_new_privs or CAP_SYS_ADMIN, which is the caller's business.
pub fn load(spec: &LinuxSeccomp) -> Result<(), SeccompError> {
    build(spec)?
        .load()
        .map_err(|source| SeccompError::Load { source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult};
    use std::io::{Read, Seek};

    fn spec(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).expect("test spec parses")
    }

    fn build_err(json: &str) -> String {
        match build(&spec(json)) {
            Ok(_) => panic!("expected an error building {json}"),
            Err(e) => e.to_string(),
        }
    }

    /// libseccomp's pseudo-code rendering of the filter, to check which rules were added.
    fn pfc(ctx: &ScmpFilterContext) -> String {
        let mut f = tempfile::tempfile().unwrap();
        ctx.export_pfc(&f).unwrap();
        f.rewind().unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        s
    }

    fn libseccomp_at_least(major: u32, minor: u32) -> bool {
        libseccomp::check_version(ScmpVersion::from((major, minor, 0))).unwrap()
    }

    /// Runs `f` in a forked child with no_new_privs set and core dumps off, after loading
    /// `spec`; the child exits with `f`'s result (100 if loading failed).
    fn in_child(spec: &LinuxSeccomp, f: impl FnOnce() -> i32) -> WaitStatus {
        // SAFETY: the child only calls into libseccomp (glibc malloc is fork-safe) and the
        // syscalls under test, then _exits without unwinding into the test harness.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
                    let _ = nix::sys::resource::setrlimit(
                        nix::sys::resource::Resource::RLIMIT_CORE,
                        0,
                        0,
                    );
                    match load(spec) {
                        Ok(()) => f(),
                        Err(_) => 100,
                    }
                }))
                .unwrap_or(101);
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => waitpid(child, None).unwrap(),
        }
    }

    #[test]
    fn default_allow_with_errno_and_trace_rules() {
        let ctx = build(&spec(
            r#"{
                "defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
                "syscalls": [
                    {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                    {"names": ["rmdir"], "action": "SCMP_ACT_ERRNO"},
                    {"names": ["personality"], "action": "SCMP_ACT_TRACE", "errnoRet": 5},
                    {"names": ["getppid"], "action": "SCMP_ACT_TRACE"}
                ]
            }"#,
        ))
        .unwrap();
        assert_eq!(ctx.get_act_default().unwrap(), ScmpAction::Allow);
        assert!(!ctx.get_ctl_nnp().unwrap());
        assert!(ctx.is_arch_present(ScmpArch::X86).unwrap());
        assert!(ctx.is_arch_present(ScmpArch::X32).unwrap());
        let text = pfc(&ctx);
        for want in [
            "\"mkdir\"",
            "\"mkdirat\"",
            "ERRNO(13)",
            "ERRNO(1)",
            "TRACE(5)",
            "TRACE(1)",
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
    }

    #[test]
    fn default_action_errno() {
        let ctx = build(&spec(r#"{"defaultAction": "SCMP_ACT_ERRNO"}"#)).unwrap();
        assert_eq!(
            ctx.get_act_default().unwrap(),
            ScmpAction::Errno(libc::EPERM)
        );
        let ctx = build(&spec(
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 6}"#,
        ))
        .unwrap();
        assert_eq!(
            ctx.get_act_default().unwrap(),
            ScmpAction::Errno(libc::ENXIO)
        );
        let ctx = build(&spec(r#"{"defaultAction": "SCMP_ACT_KILL"}"#)).unwrap();
        assert_eq!(ctx.get_act_default().unwrap(), ScmpAction::KillThread);
    }

    #[test]
    fn rule_equal_to_default_is_skipped() {
        // EPERM rule under an EPERM default: libseccomp would refuse it.
        let ctx = build(&spec(
            r#"{
                "defaultAction": "SCMP_ACT_ERRNO",
                "syscalls": [
                    {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"},
                    {"names": ["rmdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                    {"names": ["read"], "action": "SCMP_ACT_ALLOW"}
                ]
            }"#,
        ))
        .unwrap();
        let text = pfc(&ctx);
        assert!(!text.contains("\"mkdir\""), "{text}");
        assert!(text.contains("\"rmdir\""), "{text}");
        assert!(text.contains("\"read\""), "{text}");
    }

    #[test]
    fn unknown_syscall_is_skipped() {
        let ctx = build(&spec(
            r#"{
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["no_such_syscall_berth", "mkdir"], "action": "SCMP_ACT_KILL"}]
            }"#,
        ))
        .unwrap();
        let text = pfc(&ctx);
        assert!(text.contains("\"mkdir\""), "{text}");
        assert!(!text.contains("no_such_syscall_berth"), "{text}");
    }

    #[test]
    fn duplicate_index_args_split_into_rules() {
        let ctx = build(&spec(
            r#"{
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [
                    {"names": ["umask"], "action": "SCMP_ACT_ERRNO", "args": [
                        {"index": 0, "value": 18, "op": "SCMP_CMP_EQ"},
                        {"index": 0, "value": 63, "op": "SCMP_CMP_EQ"}
                    ]},
                    {"names": ["personality"], "action": "SCMP_ACT_ERRNO", "args": [
                        {"index": 0, "value": 255, "valueTwo": 8, "op": "SCMP_CMP_MASKED_EQ"},
                        {"index": 1, "value": 7, "op": "SCMP_CMP_NE"}
                    ]}
                ]
            }"#,
        ))
        .unwrap();
        let text = pfc(&ctx);
        // Both comparisons of a0 survive (one rule each); libseccomp would reject them ANDed.
        assert!(text.contains("$a0.lo32 == 18"), "{text}");
        assert!(text.contains("$a0.lo32 == 63"), "{text}");
        // MASKED_EQ: value is the mask, valueTwo the datum.
        assert!(text.contains("$a0.lo32 & 0x000000ff == 8"), "{text}");
    }

    #[test]
    fn notify_is_rejected() {
        let msg = build_err(
            r#"{
                "defaultAction": "SCMP_ACT_ALLOW",
                "listenerPath": "/run/agent.sock",
                "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]
            }"#,
        );
        assert!(msg.starts_with("seccomp: SCMP_ACT_NOTIFY"), "{msg}");
        assert!(
            msg.contains("\"mkdir\"") && msg.contains("not supported"),
            "{msg}"
        );
        let msg = build_err(r#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#);
        assert!(
            msg.contains("defaultAction") && msg.contains("not supported"),
            "{msg}"
        );
    }

    #[test]
    fn invalid_combinations_are_errors() {
        let cases = [
            (
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"],
                    "action": "SCMP_ACT_ERRNO", "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}"#,
                "seccomp: syscalls[0]: argument index 6 out of range",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"],
                    "action": "SCMP_ACT_ERRNO", "errnoRet": 70000}]}"#,
                "seccomp: syscalls[0].errnoRet 70000 is out of range",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"],
                    "action": "SCMP_ACT_ALLOW", "errnoRet": 1}]}"#,
                "seccomp: syscalls[0].errnoRet is set but action SCMP_ACT_ALLOW takes no errno",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_KILL_PROCESS", "defaultErrnoRet": 1}"#,
                "seccomp: defaultErrnoRet is set but action SCMP_ACT_KILL_PROCESS takes no errno",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read", ""],
                    "action": "SCMP_ACT_KILL"}]}"#,
                "seccomp: empty syscall name in syscalls[0]",
            ),
        ];
        for (json, want) in cases {
            let msg = build_err(json);
            assert!(msg.starts_with(want), "got {msg:?}, want {want:?}");
        }
        if !libseccomp_at_least(2, 6) {
            let msg = build_err(
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]}"#,
            );
            assert!(
                msg.starts_with("seccomp: setting flag SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV: "),
                "{msg}"
            );
            let msg = build_err(
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_LOONGARCH64"]}"#,
            );
            assert!(
                msg.starts_with("seccomp: unknown architecture SCMP_ARCH_LOONGARCH64"),
                "{msg}"
            );
        }
    }

    #[test]
    fn flags_set_filter_attributes() {
        let ctx = build(&spec(
            r#"{
                "defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_NATIVE", "SCMP_ARCH_X86_64"],
                "flags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
                          "SECCOMP_FILTER_FLAG_TSYNC"]
            }"#,
        ))
        .unwrap();
        assert!(ctx.get_ctl_log().unwrap());
        assert!(ctx.get_ctl_ssb().unwrap());
        assert!(ctx.get_ctl_tsync().unwrap());
        assert!(!ctx.get_ctl_nnp().unwrap());
    }

    #[test]
    fn long_profiles_get_the_binary_tree_filter() {
        let names: Vec<String> = (0..40).map(|i| format!("\"{}\"", SYSCALLS[i])).collect();
        let json = format!(
            r#"{{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38,
                "syscalls": [{{"names": [{}], "action": "SCMP_ACT_ALLOW"}}]}}"#,
            names.join(",")
        );
        let ctx = build(&spec(&json)).unwrap();
        assert_eq!(ctx.get_ctl_optimize().unwrap(), 2);
    }

    const SYSCALLS: [&str; 40] = [
        "read",
        "write",
        "close",
        "fstat",
        "lseek",
        "mmap",
        "mprotect",
        "munmap",
        "brk",
        "rt_sigaction",
        "rt_sigprocmask",
        "rt_sigreturn",
        "ioctl",
        "pread64",
        "pwrite64",
        "readv",
        "writev",
        "access",
        "pipe",
        "select",
        "sched_yield",
        "mremap",
        "msync",
        "mincore",
        "madvise",
        "dup",
        "dup2",
        "pause",
        "nanosleep",
        "getitimer",
        "alarm",
        "setitimer",
        "getpid",
        "sendfile",
        "socket",
        "connect",
        "accept",
        "sendto",
        "recvfrom",
        "exit_group",
    ];

    #[test]
    fn add_rule_error_message() {
        // libseccomp refuses a rule equal to the default action: a real library error.
        let mut ctx = ScmpFilterContext::new(ScmpAction::Allow).unwrap();
        let source = ctx
            .add_rule(ScmpAction::Allow, ScmpSyscall::from_name("open").unwrap())
            .unwrap_err();
        let e = SeccompError::AddRule {
            name: "open".into(),
            action: action_label(LinuxSeccompAction::ScmpActErrno, ScmpAction::Errno(1)),
            source,
        };
        assert_eq!(
            e.to_string(),
            "seccomp: adding rule for syscall \"open\" (action SCMP_ACT_ERRNO(1)): permission denied"
        );
    }

    #[test]
    fn features_lists_oci_names() {
        let f = features();
        assert!(enabled() && f.enabled);
        assert!(f.actions.contains(&"SCMP_ACT_ERRNO".to_string()));
        assert!(!f.actions.contains(&"SCMP_ACT_NOTIFY".to_string()));
        assert_eq!(f.operators.len(), 7);
        assert!(f.operators.contains(&"SCMP_CMP_MASKED_EQ".to_string()));
        assert!(f.archs.contains(&"SCMP_ARCH_X86_64".to_string()));
        assert!(f.flags.contains(&"SECCOMP_FILTER_FLAG_LOG".to_string()));
        // Every reported flag is accepted by build(); every reported arch is known to
        // libseccomp, though one of the other byte order cannot join the native one.
        let json = serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "flags": f.flags});
        build(&serde_json::from_value(json).unwrap()).unwrap();
        for arch in &f.archs {
            let json =
                serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": [arch]});
            match build(&serde_json::from_value(json).unwrap()) {
                Ok(_) | Err(SeccompError::ArchByteOrder { .. }) => {}
                Err(e) => panic!("{arch}: {e}"),
            }
        }
        if cfg!(target_endian = "little") {
            let msg = build_err(
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_S390X"]}"#,
            );
            assert!(
                msg.starts_with("seccomp: adding architecture SCMP_ARCH_S390X: its byte order"),
                "{msg}"
            );
        }
    }

    #[test]
    fn kernel_errno_rule() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("blocked");
        let spec = spec(
            r#"{
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]
            }"#,
        );
        let status = in_child(&spec, || match std::fs::create_dir(&target) {
            Ok(()) => 0,
            Err(e) => e.raw_os_error().unwrap_or(255),
        });
        assert!(matches!(status, WaitStatus::Exited(_, 13)), "{status:?}");
        assert!(!target.exists());
        // The parent is unfiltered.
        std::fs::create_dir(&target).unwrap();
    }

    #[test]
    fn kernel_kill_process() {
        let spec = spec(
            r#"{
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_KILL_PROCESS"}]
            }"#,
        );
        let status = in_child(&spec, || {
            unsafe { libc::getppid() };
            0
        });
        assert!(
            matches!(status, WaitStatus::Signaled(_, nix::sys::signal::SIGSYS, _)),
            "{status:?}"
        );
    }

    #[test]
    fn kernel_load_needs_nnp_or_cap_sys_admin() {
        let spec = spec(r#"{"defaultAction": "SCMP_ACT_ALLOW"}"#);
        // SAFETY: as in_child; this child skips no_new_privs on purpose.
        let status = match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                let dropped = caps::drop(
                    None,
                    caps::CapSet::Effective,
                    caps::Capability::CAP_SYS_ADMIN,
                );
                let code = match (dropped, load(&spec)) {
                    (Ok(()), Err(e))
                        if e.to_string() == "seccomp: loading filter: permission denied" =>
                    {
                        0
                    }
                    _ => 1,
                };
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => waitpid(child, None).unwrap(),
        };
        assert!(matches!(status, WaitStatus::Exited(_, 0)), "{status:?}");
    }

    #[test]
    fn kernel_arg_conditions() {
        // umask: two comparisons of a0 (OR, one rule each); getpriority: a0 AND a1.
        let spec = spec(
            r#"{
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [
                    {"names": ["umask"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13, "args": [
                        {"index": 0, "value": 18, "op": "SCMP_CMP_EQ"},
                        {"index": 0, "value": 63, "op": "SCMP_CMP_EQ"}
                    ]},
                    {"names": ["getpriority"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13, "args": [
                        {"index": 0, "value": 0, "op": "SCMP_CMP_EQ"},
                        {"index": 1, "value": 12345, "op": "SCMP_CMP_EQ"}
                    ]}
                ]
            }"#,
        );
        let status = in_child(&spec, || {
            let eacces = |r: libc::c_long| r == -1 && nix::errno::Errno::last_raw() == libc::EACCES;
            let sys = |nr: libc::c_long, a: libc::c_long, b: libc::c_long| unsafe {
                libc::syscall(nr, a, b)
            };
            let checks = [
                eacces(sys(libc::SYS_umask, 0o22, 0)),
                eacces(sys(libc::SYS_umask, 0o77, 0)),
                !eacces(sys(libc::SYS_umask, 0o07, 0)),
                eacces(sys(libc::SYS_getpriority, 0, 12345)),
                !eacces(sys(libc::SYS_getpriority, 0, 0)),
                !eacces(sys(libc::SYS_getpriority, 1, 12345)),
            ];
            checks
                .iter()
                .enumerate()
                .map(|(i, &ok)| i32::from(ok) << i)
                .sum()
        });
        assert!(
            matches!(status, WaitStatus::Exited(_, 0b11_1111)),
            "{status:?}"
        );
    }
}
