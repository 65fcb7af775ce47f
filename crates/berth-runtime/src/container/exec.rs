//! `exec`: run another process in a running container's namespaces and cgroup.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::unistd::{ForkResult, Pid};
use oci_spec::runtime::{LinuxNamespaceType, Process};

use crate::error::{sys, Error, Result};
use crate::init::exit;
use crate::state::Status;
use crate::sync::{self, Channel, Msg};
use crate::{console, fds, namespaces, process};

#[derive(Debug, Clone)]
pub struct ExecOpts {
    pub root: PathBuf,
    pub id: String,
    pub process: Process,
    pub detach: bool,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub preserve_fds: u32,
}

/// Returns the process's exit, or `Exit::Code(0)` once it runs when detached.
pub fn exec(opts: &ExecOpts) -> Result<super::Exit> {
    let (saved, status) = super::load(&opts.root, &opts.id)?;
    if status != Status::Running && status != Status::Created {
        return Err(super::bad_status(&opts.id, status, "cannot exec into it"));
    }
    let terminal = opts.process.terminal().unwrap_or(false);
    let console = match (&opts.console_socket, terminal) {
        (Some(p), true) => Some(console::connect(p)?),
        _ => None,
    };
    let nss: Vec<LinuxNamespaceType> = saved
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .map(|v| v.iter().map(|n| n.typ()).collect())
        .unwrap_or_default();
    let seccomp = saved
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.seccomp().as_ref())
        .map(|s| crate::bpf::Program::compile(s, Some(&opts.root)))
        .transpose()?;
    if !opts.detach {
        nix::sys::prctl::set_child_subreaper(true).map_err(sys("becoming child subreaper"))?;
    }
    let (parent, child) = sync::pair()?;
    let init_pid = saved.pid;
    // SAFETY: single-threaded; the child only runs the code below and _exits.
    let stage1 = match unsafe { nix::unistd::fork() }.map_err(sys("forking exec stage-1"))? {
        ForkResult::Child => {
            drop(parent);
            let r = exec_stage1(
                &child,
                init_pid,
                &nss,
                opts,
                console.as_ref(),
                seccomp.as_ref(),
            );
            if let Err(e) = r {
                let _ = child.send(&Msg::Error { msg: e.to_string() });
                exit(1);
            }
            exit(0)
        }
        ForkResult::Parent { child } => child,
    };
    drop(child);
    drop(console);
    let set = if opts.detach {
        None
    } else {
        Some(super::wait::block_signals()?)
    };
    let r = drive(&parent, stage1, &saved);
    let _ = nix::sys::wait::waitpid(stage1, None);
    let pid = match r {
        Ok(pid) => pid,
        Err(e) => {
            if let Some(s) = &set {
                let _ = s.thread_unblock();
            }
            return Err(e);
        }
    };
    if let Some(p) = &opts.pid_file {
        super::write_pid_file(p, pid)?;
    }
    match set {
        None => Ok(super::Exit::Code(0)),
        Some(set) => {
            let r = super::forward_and_wait(pid, &set);
            let _ = set.thread_unblock();
            r
        }
    }
}

fn drive(chan: &Channel, stage1: Pid, saved: &crate::state::Saved) -> Result<i32> {
    if let Some(cg) = &saved.cgroup {
        cg.apply(stage1.as_raw())?;
    }
    chan.send(&Msg::Go)?;
    let pid = match chan.expect("pid")? {
        Msg::Pid { pid } => pid,
        _ => unreachable!("expect checks the message kind"),
    };
    // The channel closes on a successful execve (close-on-exec); an error arrives first.
    match chan.recv()? {
        None => Ok(pid),
        Some(Msg::Error { msg }) => {
            let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
            Err(Error::Container(msg))
        }
        Some(got) => Err(sync::SyncError::Unexpected {
            expected: "exec",
            got,
        }
        .into()),
    }
}

fn exec_stage1(
    chan: &Channel,
    init_pid: i32,
    nss: &[LinuxNamespaceType],
    opts: &ExecOpts,
    console: Option<&OwnedFd>,
    seccomp: Option<&crate::bpf::Program>,
) -> Result<()> {
    chan.expect("go")?;
    // The user namespace owns the others: enter it first. Every handle is opened before
    // the first setns: once in the container's mount namespace, /proc is its own.
    let mut order: Vec<LinuxNamespaceType> = nss.to_vec();
    order.sort_by_key(|t| *t != LinuxNamespaceType::User);
    let mut handles = Vec::new();
    for t in order {
        let path = PathBuf::from(format!("/proc/{init_pid}/ns/{}", namespaces::proc_name(t)));
        if same_namespace(&path, t) {
            continue;
        }
        handles.push((t, namespaces::open(t, &path)?, path));
    }
    for (t, fd, path) in &handles {
        namespaces::enter(*t, fd, path)?;
    }
    drop(handles);
    // SAFETY: single-threaded; the child execs or _exits.
    match unsafe { nix::unistd::fork() }.map_err(sys("forking exec process"))? {
        ForkResult::Child => {
            let e = exec_process(chan, opts, console, seccomp);
            let _ = chan.send(&Msg::Error { msg: e.to_string() });
            exit(127)
        }
        ForkResult::Parent { child } => {
            chan.send(&Msg::Pid {
                pid: child.as_raw(),
            })?;
            Ok(())
        }
    }
}

/// Whether we are already in that namespace (e.g. the container shares the host's).
fn same_namespace(path: &Path, t: LinuxNamespaceType) -> bool {
    let mine = format!("/proc/self/ns/{}", namespaces::proc_name(t));
    match (std::fs::read_link(path), std::fs::read_link(mine)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn exec_process(
    _chan: &Channel,
    opts: &ExecOpts,
    console: Option<&OwnedFd>,
    seccomp: Option<&crate::bpf::Program>,
) -> Error {
    let p = &opts.process;
    let r = (|| -> Result<process::Prepared> {
        if let Some(sock) = console {
            nix::unistd::setsid().map_err(sys("creating session"))?;
            let size = p
                .console_size()
                .as_ref()
                .map(|b| (b.height() as u16, b.width() as u16));
            console::setup(sock, size)?;
        }
        process::set_rlimits(p)?;
        process::set_oom_score_adj(p)?;
        let prep = process::prepare(p)?;
        let nnp = p.no_new_privileges().unwrap_or(false);
        if !nnp {
            process::load_seccomp(seccomp)?;
        }
        process::set_credentials(p)?;
        process::enter_cwd(p)?;
        if nnp {
            process::set_no_new_privs(p)?;
            process::load_seccomp(seccomp)?;
        }
        fds::cloexec_from(3 + opts.preserve_fds).map_err(sys("marking fds close-on-exec"))?;
        fds::keep_preserved(opts.preserve_fds);
        Ok(prep)
    })();
    match r {
        Ok(prep) => process::exec(&prep).into(),
        Err(e) => e,
    }
}
