//! Device rules on cgroup v2: v2 has no devices controller; the kernel instead asks an eBPF
//! program of type `BPF_PROG_TYPE_CGROUP_DEVICE` attached to the cgroup (runc, crun and
//! youki do the same). The program is generated here from the OCI rules, loaded with
//! bpf(2) and attached with `BPF_F_ALLOW_MULTI`; programs attached before (an earlier
//! `update`) are detached after the new one is in place, so there is no moment without a
//! filter. The attachment keeps the program alive: nothing is pinned, and removing the
//! cgroup removes it.
//!
//! Semantics are v1's, so one spec means the same on both: rules apply in order, the last
//! one that matches decides (a later `a *:* rwm` overrides everything before it, as v1's
//! reset does); an allow rule matches a request whose access it covers entirely, a deny
//! rule one whose access it touches at all (v1's partial match for exceptions to allow);
//! with no rule matching, access is allowed (a fresh v1 cgroup allows everything; OCI
//! engines start with a deny-all rule). FIFO rules (`p`) are not device accesses and are
//! skipped, as on v1.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use super::CgroupError;

// bpf(2) commands, program and attach types, flags (include/uapi/linux/bpf.h).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

// bpf_cgroup_dev_ctx: access_type = (access << 16) | type; then major, minor.
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;
const ACC_ALL: i32 = ACC_MKNOD | ACC_READ | ACC_WRITE;

/// One eBPF instruction, as the kernel reads it.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Insn {
    pub code: u8,
    /// dst in the low nibble, src in the high one.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

// Opcodes used here: 32-bit loads and ALU, 64-bit jumps (the values are zero-extended).
pub(crate) const LDX_W: u8 = 0x61; // dst = *(u32 *)(src + off)
pub(crate) const AND_K: u8 = 0x54; // dst &= imm (32-bit)
pub(crate) const RSH_K: u8 = 0x74; // dst >>= imm (32-bit)
pub(crate) const MOV_K: u8 = 0xb4; // dst = imm (32-bit)
pub(crate) const MOV_X: u8 = 0xbc; // dst = src (32-bit)
pub(crate) const JEQ_K: u8 = 0x15; // if dst == imm goto +off
pub(crate) const JNE_K: u8 = 0x55; // if dst != imm goto +off
pub(crate) const JNE_X: u8 = 0x5d; // if dst != src goto +off
pub(crate) const EXIT: u8 = 0x95;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

/// A rule reduced to what the program compares: None fields are wildcards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rule {
    dev_type: Option<i32>,
    major: Option<i32>,
    minor: Option<i32>,
    access: i32,
    allow: bool,
}

fn invalid(reason: String) -> CgroupError {
    CgroupError::InvalidResource {
        what: "device rule".to_string(),
        reason,
    }
}

fn rule(d: &LinuxDeviceCgroup) -> Result<Option<Rule>, CgroupError> {
    let dev_type = match d.typ() {
        None | Some(LinuxDeviceType::A) => None,
        Some(LinuxDeviceType::B) => Some(DEV_BLOCK),
        Some(LinuxDeviceType::C) | Some(LinuxDeviceType::U) => Some(DEV_CHAR),
        Some(LinuxDeviceType::P) => return Ok(None),
    };
    let number = |n: Option<i64>, what: &str| -> Result<Option<i32>, CgroupError> {
        match n.filter(|n| *n >= 0) {
            None => Ok(None),
            Some(n) => i32::try_from(n)
                .map(Some)
                .map_err(|_| invalid(format!("{what} number {n} is out of range"))),
        }
    };
    let mut access = 0;
    for c in d
        .access()
        .as_deref()
        .filter(|a| !a.is_empty())
        .unwrap_or("rwm")
        .chars()
    {
        access |= match c {
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            'm' => ACC_MKNOD,
            _ => {
                return Err(invalid(format!(
                    "access {:?} is not made of r, w and m",
                    d.access().as_deref().unwrap_or("")
                )))
            }
        };
    }
    Ok(Some(Rule {
        dev_type,
        major: number(d.major(), "major")?,
        minor: number(d.minor(), "minor")?,
        access,
        allow: d.allow(),
    }))
}

/// The instructions of one rule: on a match return its verdict, else fall through to
/// the next block. Registers: R2 type, R3 access, R4 major, R5 minor; R1 scratch.
fn block(r: &Rule) -> Vec<Insn> {
    // Each test jumps past the block's end: `off` = instructions left after this one.
    let mut tests: Vec<(u8, u8, u8, i32)> = Vec::new();
    if let Some(t) = r.dev_type {
        tests.push((JNE_K, 2, 0, t));
    }
    // A rule for every access: an allow covers any request, a deny touches any.
    if r.access != ACC_ALL {
        tests.push((MOV_X, 1, 3, 0));
        tests.push((AND_K, 1, 0, r.access));
        if r.allow {
            // The request's access must be within the rule's: (R3 & a) == R3.
            tests.push((JNE_X, 1, 3, 0));
        } else {
            // Any overlap denies: (R3 & a) != 0.
            tests.push((JEQ_K, 1, 0, 0));
        }
    }
    if let Some(m) = r.major {
        tests.push((JNE_K, 4, 0, m));
    }
    if let Some(m) = r.minor {
        tests.push((JNE_K, 5, 0, m));
    }
    let len = tests.len() + 2;
    let mut out: Vec<Insn> = tests
        .iter()
        .enumerate()
        .map(|(i, &(code, dst, src, imm))| {
            let is_jump = matches!(code, JNE_K | JNE_X | JEQ_K);
            let off = if is_jump { (len - i - 1) as i16 } else { 0 };
            let imm = if code == JNE_X { 0 } else { imm };
            insn(code, dst, src, off, imm)
        })
        .collect();
    out.push(insn(MOV_K, 0, 0, 0, i32::from(r.allow)));
    out.push(insn(EXIT, 0, 0, 0, 0));
    out
}

/// The program for `rules` (see the module docs for the semantics).
pub(crate) fn program(rules: &[LinuxDeviceCgroup]) -> Result<Vec<Insn>, CgroupError> {
    let mut p = vec![
        insn(LDX_W, 2, 1, 0, 0),
        insn(AND_K, 2, 0, 0, 0xffff),
        insn(LDX_W, 3, 1, 0, 0),
        insn(RSH_K, 3, 0, 0, 16),
        insn(LDX_W, 4, 1, 4, 0),
        insn(LDX_W, 5, 1, 8, 0),
    ];
    let parsed: Vec<Rule> = rules
        .iter()
        .map(rule)
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect();
    // The last rule that matches decides, so the last one is tested first. A rule that
    // matches everything ends the program: the verifier refuses unreachable code.
    for r in parsed.iter().rev() {
        p.extend(block(r));
        if r.dev_type.is_none() && r.major.is_none() && r.minor.is_none() && r.access == ACC_ALL {
            return Ok(p);
        }
    }
    p.push(insn(MOV_K, 0, 0, 0, 1));
    p.push(insn(EXIT, 0, 0, 0, 0));
    Ok(p)
}

fn bpf_err(step: &str, dir: &Path, source: io::Error) -> CgroupError {
    CgroupError::DeviceFilter {
        step: step.to_string(),
        path: dir.to_path_buf(),
        source,
    }
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a repr(C) bpf_attr prefix of the size passed, zero-padded.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

#[repr(C)]
#[derive(Default)]
struct LoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct GetFdAttr {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

/// Loads `insns`; the verifier's log is in the error when it refuses.
pub(crate) fn load(insns: &[Insn], dir: &Path) -> Result<OwnedFd, CgroupError> {
    let license = c"Apache";
    let mut log = vec![0u8; 64 * 1024];
    let mut name = [0u8; 16];
    name[..12].copy_from_slice(b"berth_device");
    let mut attr = LoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        prog_name: name,
        expected_attach_type: BPF_CGROUP_DEVICE,
        ..Default::default()
    };
    match bpf(BPF_PROG_LOAD, &mut attr) {
        // SAFETY: a new fd the kernel just returned, owned by nobody else.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }),
        Err(e) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]).trim().to_string();
            let e = if text.is_empty() {
                e
            } else {
                io::Error::new(e.kind(), format!("{e}; verifier: {text}"))
            };
            Err(bpf_err("loading the device filter for", dir, e))
        }
    }
}

/// Ids of the device programs attached to the cgroup `dir_fd`.
pub(crate) fn attached(dir_fd: RawFd, dir: &Path) -> Result<Vec<u32>, CgroupError> {
    let mut ids = vec![0u32; 64];
    let mut attr = QueryAttr {
        target_fd: dir_fd as u32,
        attach_type: BPF_CGROUP_DEVICE,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    bpf(BPF_PROG_QUERY, &mut attr).map_err(|e| bpf_err("listing the device filters of", dir, e))?;
    ids.truncate(attr.prog_cnt as usize);
    Ok(ids)
}

/// Compiles `rules`, attaches the program to the cgroup `dir` and detaches the ones it
/// replaces.
pub(crate) fn apply(dir: &Path, rules: &[LinuxDeviceCgroup]) -> Result<(), CgroupError> {
    let prog = load(&program(rules)?, dir)?;
    let dir_file = std::fs::File::open(dir).map_err(|e| bpf_err("opening", dir, e))?;
    let dir_fd = dir_file.as_raw_fd();
    let old = attached(dir_fd, dir)?;
    let mut attr = AttachAttr {
        target_fd: dir_fd as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..Default::default()
    };
    bpf(BPF_PROG_ATTACH, &mut attr)
        .map_err(|e| bpf_err("attaching the device filter to", dir, e))?;
    for id in old {
        let mut get = GetFdAttr {
            prog_id: id,
            ..Default::default()
        };
        let fd = match bpf(BPF_PROG_GET_FD_BY_ID, &mut get) {
            // SAFETY: a new fd from the kernel.
            Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd as RawFd) },
            // Detached meanwhile (another update): nothing to do.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(bpf_err("finding the replaced device filter of", dir, e)),
        };
        let mut detach = AttachAttr {
            target_fd: dir_fd as u32,
            attach_bpf_fd: fd.as_raw_fd() as u32,
            attach_type: BPF_CGROUP_DEVICE,
            ..Default::default()
        };
        match bpf(BPF_PROG_DETACH, &mut detach) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(bpf_err("detaching the replaced device filter of", dir, e)),
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "devices_bpf_tests.rs"]
mod tests;
