//! The last steps before execve, shared by a container's init and by `exec`: rlimits,
//! oom score, credentials, capabilities, no_new_privs, seccomp, working directory, and the
//! program lookup in the container's PATH.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::{PosixRlimitType, Process};
use thiserror::Error;

use crate::bpf::{BpfError, Program};
use crate::capabilities::{self, CapError};

#[derive(Debug, Error)]
pub enum ProcessError {
    #[error("{op}: {errno}")]
    Sys { op: String, errno: Errno },
    #[error(transparent)]
    Caps(#[from] CapError),
    #[error(transparent)]
    Seccomp(#[from] BpfError),
    #[error("exec: {0:?}: executable file not found in $PATH")]
    NotFound(String),
    #[error("exec: {0:?}: permission denied")]
    NotExecutable(String),
    #[error("working directory {0} is outside the container")]
    CwdEscape(String),
    #[error("invalid {what}: contains a NUL byte")]
    Nul { what: &'static str },
}

fn sys(op: impl Into<String>) -> impl FnOnce(Errno) -> ProcessError {
    let op = op.into();
    move |errno| ProcessError::Sys { op, errno }
}

/// Everything decided before the irreversible steps, so errors surface before `Ready`.
pub struct Prepared {
    pub program: CString,
    pub args: Vec<CString>,
    pub env: Vec<CString>,
}

pub fn set_rlimits(p: &Process) -> Result<(), ProcessError> {
    for r in p.rlimits().iter().flatten() {
        let res = rlimit_resource(r.typ());
        let lim = libc::rlimit {
            rlim_cur: r.soft(),
            rlim_max: r.hard(),
        };
        // SAFETY: setrlimit reads the struct we pass.
        let rc = unsafe { libc::setrlimit(res, &lim) };
        Errno::result(rc).map_err(sys(format!(
            "setting rlimit {:?} to soft={} hard={}",
            r.typ(),
            r.soft(),
            r.hard()
        )))?;
    }
    Ok(())
}

fn rlimit_resource(t: PosixRlimitType) -> libc::__rlimit_resource_t {
    use PosixRlimitType::*;
    match t {
        RlimitCpu => libc::RLIMIT_CPU,
        RlimitFsize => libc::RLIMIT_FSIZE,
        RlimitData => libc::RLIMIT_DATA,
        RlimitStack => libc::RLIMIT_STACK,
        RlimitCore => libc::RLIMIT_CORE,
        RlimitRss => libc::RLIMIT_RSS,
        RlimitNproc => libc::RLIMIT_NPROC,
        RlimitNofile => libc::RLIMIT_NOFILE,
        RlimitMemlock => libc::RLIMIT_MEMLOCK,
        RlimitAs => libc::RLIMIT_AS,
        RlimitLocks => libc::RLIMIT_LOCKS,
        RlimitSigpending => libc::RLIMIT_SIGPENDING,
        RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        RlimitNice => libc::RLIMIT_NICE,
        RlimitRtprio => libc::RLIMIT_RTPRIO,
        RlimitRttime => libc::RLIMIT_RTTIME,
    }
}

pub fn set_oom_score_adj(p: &Process) -> Result<(), ProcessError> {
    if let Some(adj) = p.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string()).map_err(|e| {
            sys(format!("writing {adj} to /proc/self/oom_score_adj"))(Errno::from_raw(
                e.raw_os_error().unwrap_or(libc::EIO),
            ))
        })?;
    }
    Ok(())
}

/// Resolves the program in the container (call after pivot_root or setns into its mount
/// namespace) and builds argv/envp.
pub fn prepare(p: &Process) -> Result<Prepared, ProcessError> {
    let args = p.args().clone().unwrap_or_default();
    let env = p.env().clone().unwrap_or_default();
    let argv0 = args.first().cloned().unwrap_or_default();
    let path_var = env
        .iter()
        .find_map(|kv| kv.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    let program = lookup(&argv0, path_var, p.cwd())?;
    let cstr = |s: &str, what| CString::new(s).map_err(|_| ProcessError::Nul { what });
    Ok(Prepared {
        program: CString::new(program.as_os_str().as_bytes())
            .map_err(|_| ProcessError::Nul { what: "program" })?,
        args: args
            .iter()
            .map(|a| cstr(a, "process.args"))
            .collect::<Result<_, _>>()?,
        env: env
            .iter()
            .map(|a| cstr(a, "process.env"))
            .collect::<Result<_, _>>()?,
    })
}

fn lookup(argv0: &str, path_var: &str, cwd: &Path) -> Result<PathBuf, ProcessError> {
    let check = |p: &Path| -> Option<Result<PathBuf, ProcessError>> {
        let meta = std::fs::metadata(p).ok()?;
        if meta.is_dir() {
            return None;
        }
        match nix::unistd::access(p, nix::unistd::AccessFlags::X_OK) {
            Ok(()) => Some(Ok(p.to_path_buf())),
            Err(_) => Some(Err(ProcessError::NotExecutable(argv0.to_string()))),
        }
    };
    if argv0.contains('/') {
        let p = if argv0.starts_with('/') {
            PathBuf::from(argv0)
        } else {
            cwd.join(argv0)
        };
        return check(&p).unwrap_or_else(|| Err(ProcessError::NotFound(argv0.to_string())));
    }
    let mut denied = None;
    for dir in path_var.split(':').filter(|d| !d.is_empty()) {
        match check(&Path::new(dir).join(argv0)) {
            Some(Ok(p)) => return Ok(p),
            Some(Err(e)) => denied = Some(e),
            None => {}
        }
    }
    Err(denied.unwrap_or_else(|| ProcessError::NotFound(argv0.to_string())))
}

/// Credentials and capabilities: bounding set, groups, gid, uid (keeping capabilities
/// across the switch), then the exact capability sets and ambient ones.
pub fn set_credentials(p: &Process) -> Result<(), ProcessError> {
    let caps = capabilities::resolve(p.capabilities().as_ref())?;
    capabilities::drop_bounding(&caps)?;
    let user = p.user();
    let groups: Vec<Gid> = user
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| Gid::from_raw(*g))
        .collect();
    // setgroups is denied in user namespaces whose creator wrote "deny"; an empty list then
    // is not worth failing over.
    match nix::unistd::setgroups(&groups) {
        Ok(()) => {}
        Err(Errno::EPERM) if groups.is_empty() => {}
        Err(e) => return Err(sys(format!("setting supplementary groups {groups:?}"))(e)),
    }
    nix::sys::prctl::set_keepcaps(true).map_err(sys("setting keepcaps"))?;
    let gid = Gid::from_raw(user.gid());
    nix::unistd::setresgid(gid, gid, gid).map_err(sys(format!("setting gid to {gid}")))?;
    let uid = Uid::from_raw(user.uid());
    nix::unistd::setresuid(uid, uid, uid).map_err(sys(format!("setting uid to {uid}")))?;
    capabilities::apply(&caps)?;
    nix::sys::prctl::set_keepcaps(false).map_err(sys("clearing keepcaps"))?;
    if let Some(mask) = user.umask() {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
    }
    Ok(())
}

/// Changes to the working directory and checks it is inside the container: a leaked host
/// directory fd would show as "(unreachable)/..." (CVE-2024-21626).
pub fn enter_cwd(p: &Process) -> Result<(), ProcessError> {
    let cwd = p.cwd();
    nix::unistd::chdir(cwd).map_err(sys(format!("changing directory to {}", cwd.display())))?;
    let here = nix::unistd::getcwd().map_err(sys("reading working directory"))?;
    if !here.is_absolute() || here.starts_with("(unreachable)") {
        return Err(ProcessError::CwdEscape(here.display().to_string()));
    }
    Ok(())
}

pub fn set_no_new_privs(p: &Process) -> Result<(), ProcessError> {
    if p.no_new_privileges().unwrap_or(false) {
        nix::sys::prctl::set_no_new_privs().map_err(sys("setting no_new_privs"))?;
    }
    Ok(())
}

pub fn load_seccomp(p: Option<&Program>) -> Result<(), ProcessError> {
    if let Some(p) = p {
        p.load()?;
    }
    Ok(())
}

/// execve; returns only on failure.
pub fn exec(prep: &Prepared) -> ProcessError {
    let err = nix::unistd::execve(&prep.program, &prep.args, &prep.env).unwrap_err();
    let prog = prep.program.to_string_lossy().into_owned();
    match err {
        Errno::ENOENT => ProcessError::NotFound(prog),
        Errno::EACCES => ProcessError::NotExecutable(prog),
        e => ProcessError::Sys {
            op: format!("exec {prog}"),
            errno: e,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_uses_path_and_reports_missing() {
        let p = lookup("sh", "/nonexistent:/bin", Path::new("/")).unwrap();
        assert_eq!(p, PathBuf::from("/bin/sh"));
        let e = lookup("no-such-program-x", "/bin", Path::new("/")).unwrap_err();
        assert!(e.to_string().contains("executable file not found"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("data");
        std::fs::write(&f, "not a program").unwrap();
        let e = lookup(f.to_str().unwrap(), "/bin", Path::new("/")).unwrap_err();
        assert!(matches!(e, ProcessError::NotExecutable(_)), "{e}");
    }
}
