//! The generated program run by a small interpreter of the opcodes it uses, against a
//! direct statement of the semantics over many rule lists; then the real thing: loaded
//! into the kernel (its verifier), attached to a cgroup on this host's cgroup2 mount, and
//! a process in that cgroup refused a device the rules don't allow.

use std::path::PathBuf;
use std::process::Command;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceCgroupBuilder, LinuxDeviceType};

use super::*;

/// Runs `prog` on a device access; true: allowed.
fn run(prog: &[Insn], dev_type: i32, access: i32, major: i32, minor: i32) -> bool {
    let ctx = [
        ((access << 16) | dev_type) as u32,
        major as u32,
        minor as u32,
    ];
    let mut r = [0u64; 11];
    let mut pc = 0usize;
    for _ in 0..prog.len() {
        let i = prog[pc];
        let (dst, src) = ((i.regs & 0x0f) as usize, (i.regs >> 4) as usize);
        let mut next = pc + 1;
        match i.code {
            LDX_W => {
                assert_eq!(src, 1, "loads only from the context");
                r[dst] = u64::from(ctx[i.off as usize / 4]);
            }
            AND_K => r[dst] = (r[dst] as u32 & i.imm as u32) as u64,
            RSH_K => r[dst] = ((r[dst] as u32) >> i.imm) as u64,
            MOV_K => r[dst] = i.imm as u32 as u64,
            MOV_X => r[dst] = r[src] as u32 as u64,
            JEQ_K | JNE_K | JNE_X => {
                let other = if i.code == JNE_X {
                    r[src]
                } else {
                    i.imm as i64 as u64
                };
                if (r[dst] == other) == (i.code == JEQ_K) {
                    next = (pc as i64 + 1 + i64::from(i.off)) as usize;
                }
            }
            EXIT => return r[0] != 0,
            c => panic!("opcode {c:#x} not expected"),
        }
        pc = next;
        assert!(pc < prog.len(), "ran off the end");
    }
    panic!("no exit (a backward jump?)");
}

fn dev(
    allow: bool,
    t: Option<LinuxDeviceType>,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> LinuxDeviceCgroup {
    let mut b = LinuxDeviceCgroupBuilder::default()
        .allow(allow)
        .access(access.to_string());
    if let Some(t) = t {
        b = b.typ(t);
    }
    if let Some(m) = major {
        b = b.major(m);
    }
    if let Some(m) = minor {
        b = b.minor(m);
    }
    b.build().unwrap()
}

/// What the rules mean (module docs): the last matching rule decides; allow rules must
/// cover the access, deny rules only touch it; otherwise allowed.
fn reference(rules: &[LinuxDeviceCgroup], t: i32, access: i32, major: i32, minor: i32) -> bool {
    for d in rules.iter().rev() {
        let Some(r) = rule(d).unwrap() else { continue };
        let matches = r.dev_type.is_none_or(|x| x == t)
            && r.major.is_none_or(|x| x == major)
            && r.minor.is_none_or(|x| x == minor)
            && if r.allow {
                access & !r.access == 0
            } else {
                access & r.access != 0
            };
        if matches {
            return r.allow;
        }
    }
    true
}

const C: Option<LinuxDeviceType> = Some(LinuxDeviceType::C);
const B: Option<LinuxDeviceType> = Some(LinuxDeviceType::B);

/// An engine's usual list: deny everything, mknod of any char/block device, then the
/// standard devices.
fn engine_rules() -> Vec<LinuxDeviceCgroup> {
    vec![
        dev(false, None, None, None, "rwm"),
        dev(true, C, None, None, "m"),
        dev(true, B, None, None, "m"),
        dev(true, C, Some(1), Some(3), "rwm"),
        dev(true, C, Some(1), Some(5), "rwm"),
        dev(true, C, Some(5), Some(0), "rwm"),
        dev(true, C, Some(136), None, "rwm"),
    ]
}

const R: i32 = ACC_READ;
const W: i32 = ACC_WRITE;
const M: i32 = ACC_MKNOD;

#[test]
fn an_engines_rules_allow_the_standard_devices_and_nothing_else() {
    let p = program(&engine_rules()).unwrap();
    assert!(run(&p, DEV_CHAR, R | W, 1, 3), "/dev/null");
    assert!(run(&p, DEV_CHAR, R, 136, 7), "a pty");
    assert!(run(&p, DEV_CHAR, M, 10, 200), "mknod of any char device");
    assert!(!run(&p, DEV_CHAR, R, 10, 200), "reading /dev/net/tun");
    assert!(!run(&p, DEV_BLOCK, R | W, 8, 0), "/dev/sda");
    assert!(run(&p, DEV_BLOCK, M, 8, 0), "mknod of a block device");
    assert!(!run(&p, DEV_CHAR, R, 1, 1), "/dev/mem");
}

#[test]
fn the_last_matching_rule_decides() {
    // A reset at the end overrides everything before it, as on v1.
    let mut rules = engine_rules();
    rules.push(dev(true, None, None, None, "rwm"));
    let p = program(&rules).unwrap();
    assert!(run(&p, DEV_BLOCK, R | W, 8, 0));
    rules.push(dev(false, None, None, None, "rwm"));
    let p = program(&rules).unwrap();
    assert!(!run(&p, DEV_CHAR, R, 1, 3));
    // A deny after an allow of the same device wins.
    let p = program(&[
        dev(true, C, Some(1), Some(3), "rwm"),
        dev(false, C, Some(1), Some(3), "w"),
    ])
    .unwrap();
    assert!(run(&p, DEV_CHAR, R, 1, 3));
    assert!(!run(&p, DEV_CHAR, R | W, 1, 3), "a partial deny touches rw");
}

#[test]
fn no_rules_allow_everything_and_fifos_are_not_devices() {
    let p = program(&[]).unwrap();
    assert!(run(&p, DEV_BLOCK, R | W | M, 8, 0));
    let p = program(&[dev(false, Some(LinuxDeviceType::P), None, None, "rwm")]).unwrap();
    assert!(run(&p, DEV_CHAR, R, 1, 3));
}

#[test]
fn bad_rules_are_refused_with_what_was_wrong() {
    let e = program(&[dev(true, C, Some(1), Some(3), "rx")]).unwrap_err();
    assert!(e.to_string().contains("\"rx\""), "{e}");
    let e = program(&[dev(true, C, Some(1 << 40), None, "r")]).unwrap_err();
    assert!(e.to_string().contains("major"), "{e}");
}

#[test]
fn the_program_means_what_the_rules_say() {
    // Every list of up to three rules from a pool, against every request in a small
    // domain (both types, every access, devices matched and not).
    let pool = vec![
        dev(false, None, None, None, "rwm"),
        dev(true, None, None, None, "rwm"),
        dev(true, C, None, None, "m"),
        dev(true, C, Some(1), Some(3), "rw"),
        dev(false, C, Some(1), None, "w"),
        dev(true, B, Some(8), None, "r"),
        dev(false, None, None, Some(3), "m"),
        dev(true, C, Some(1), Some(3), "r"),
    ];
    let mut lists: Vec<Vec<LinuxDeviceCgroup>> = vec![vec![]];
    for a in &pool {
        lists.push(vec![a.clone()]);
        for b in &pool {
            lists.push(vec![a.clone(), b.clone()]);
            for c in &pool {
                lists.push(vec![a.clone(), b.clone(), c.clone()]);
            }
        }
    }
    let mut checked = 0;
    for rules in &lists {
        let p = program(rules).unwrap();
        for t in [DEV_BLOCK, DEV_CHAR] {
            for access in 1..=ACC_ALL {
                for (major, minor) in [(1, 3), (1, 5), (8, 0), (8, 3)] {
                    assert_eq!(
                        run(&p, t, access, major, minor),
                        reference(rules, t, access, major, minor),
                        "rules {rules:?}, type {t} access {access} {major}:{minor}"
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 30_000, "{checked}");
}

/// A cgroup of its own on the cgroup2 mount, removed at the end (its processes have
/// exited by then).
struct TestCgroup(PathBuf);

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// The cgroup2 mount: /sys/fs/cgroup on a v2 host, /sys/fs/cgroup/unified on a hybrid one.
fn cgroup2_mount() -> Option<PathBuf> {
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("cgroup.procs").exists() && p.join("cgroup.subtree_control").exists())
}

/// Moves a shell into `cg` and tries two devices; its exit status says what happened.
/// (`head`, not a redirection: a failed redirection makes sh itself exit.)
fn try_devices(cg: &std::path::Path) -> i32 {
    let script = format!(
        "echo $$ > {} || exit 90; head -c 0 /dev/null || exit 91; head -c 0 /dev/zero && exit 92; exit 0",
        cg.join("cgroup.procs").display()
    );
    Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .status()
        .unwrap()
        .code()
        .unwrap_or(-1)
}

#[test]
fn the_kernel_enforces_the_filter_and_an_update_replaces_it() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipping: needs root");
        return;
    }
    let Some(mount) = cgroup2_mount() else {
        eprintln!("skipping: no cgroup2 mount");
        return;
    };
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let cg = TestCgroup(mount.join(format!("berth-devtest-{}-{n}", std::process::id())));
    std::fs::create_dir(&cg.0).unwrap();
    // /dev/null but not /dev/zero (1:5).
    let rules = vec![
        dev(false, None, None, None, "rwm"),
        dev(true, C, Some(1), Some(3), "rwm"),
    ];
    apply(&cg.0, &rules).unwrap();
    let count = || {
        let f = std::fs::File::open(&cg.0).unwrap();
        attached(f.as_raw_fd(), &cg.0).unwrap().len()
    };
    assert_eq!(count(), 1);
    assert_eq!(
        try_devices(&cg.0),
        0,
        "/dev/null refused or /dev/zero allowed"
    );
    // An update: the new program replaces the old one, now /dev/zero is allowed too.
    let mut more = rules.clone();
    more.push(dev(true, C, Some(1), Some(5), "r"));
    apply(&cg.0, &more).unwrap();
    assert_eq!(count(), 1, "the replaced program is still attached");
    assert_eq!(
        try_devices(&cg.0),
        92,
        "/dev/zero still refused after the update"
    );
}

#[test]
fn a_program_the_verifier_refuses_is_reported_with_its_log() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipping: needs root");
        return;
    }
    // Falls off the end without an exit.
    let bad = [insn(MOV_K, 0, 0, 0, 1)];
    let e = load(&bad, std::path::Path::new("/sys/fs/cgroup/x")).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("loading the device filter for cgroup /sys/fs/cgroup/x"),
        "{text}"
    );
    assert!(text.contains("verifier"), "{text}");
}
