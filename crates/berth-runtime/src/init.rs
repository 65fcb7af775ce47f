//! The processes the runtime forks to build a container.
//!
//! stage-1 runs in the runtime's namespaces: joins the namespaces given by path, unshares
//! the user namespace (the parent writes its id maps), unshares the rest and forks the init,
//! which is PID 1 of a new PID namespace. The init then runs the setup steps in order and
//! waits on the exec fifo for `start`. Any error travels to the parent over the sync
//! channel as a message naming the step, so the caller sees it instead of "exit status 1".

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::unistd::{ForkResult, Gid, Uid};
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use rustix::fs::OFlags;

use crate::cgroups::Cgroup;
use crate::error::{sys, Error, Result};
use crate::sync::{Channel, Msg};
use crate::{console, debug, fds, hooks, namespaces, process, rootfs};

/// What the init needs; it is a forked copy of the parent, so this is plain memory.
pub struct InitArgs<'a> {
    pub id: &'a str,
    pub spec: &'a Spec,
    pub bundle: &'a Path,
    pub rootfs: &'a Path,
    pub cgroup: Option<&'a Cgroup>,
    pub fifo: Option<&'a OwnedFd>,
    pub console: Option<&'a OwnedFd>,
    pub preserve_fds: u32,
    pub no_pivot: bool,
    pub no_new_keyring: bool,
    /// linux.seccomp, compiled by the runtime before forking.
    pub seccomp: Option<&'a crate::bpf::Program>,
}

/// Leaves a forked child without running destructors or atexit handlers of the parent.
pub fn exit(code: i32) -> ! {
    // SAFETY: _exit is always safe; it never returns.
    unsafe { libc::_exit(code) }
}

/// stage-1: namespaces, then fork the init. Never returns.
pub fn stage1(chan: &Channel, args: &InitArgs<'_>) -> ! {
    let r = stage1_inner(chan, args);
    match r {
        Ok(()) => exit(0),
        Err(e) => {
            let _ = chan.send(&Msg::Error { msg: e.to_string() });
            exit(1)
        }
    }
}

fn stage1_inner(chan: &Channel, args: &InitArgs<'_>) -> Result<()> {
    chan.expect("go")?;
    let linux = args.spec.linux().as_ref();
    let nss = linux
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    namespaces::join_paths(&nss)?;
    let joined_user = nss
        .iter()
        .any(|n| n.typ() == LinuxNamespaceType::User && n.path().is_some());
    if joined_user {
        // Host root's ids mean nothing in a joined user namespace: act as its root, as
        // runc does, so files made in the idmapped rootfs get mapped owners.
        become_root()?;
    }
    if namespaces::wants_new(&nss, LinuxNamespaceType::User) {
        namespaces::unshare_new(CloneFlags::CLONE_NEWUSER)?;
        chan.send(&Msg::MapIds)?;
        chan.expect("maps_written")?;
        become_root()?;
    }
    let flags = namespaces::new_flags(&nss);
    namespaces::unshare_new(flags)?;
    debug::step(|| "stage-1: namespaces unshared".into());
    if namespaces::wants_new(&nss, LinuxNamespaceType::Time) {
        if let Some(off) = linux.and_then(|l| l.time_offsets().as_ref()) {
            namespaces::write_time_offsets(off)?;
        }
    }
    // The parent must hear the init's pid before anything the init says: the init waits
    // on this pipe until stage-1 has sent it (or died).
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(sys("creating the pid-sent pipe"))?;
    // SAFETY: single-threaded process; the child only runs our init code and _exits.
    match unsafe { nix::unistd::fork() }.map_err(sys("forking container init"))? {
        ForkResult::Child => {
            drop(ready_w);
            let mut b = [0u8; 1];
            let _ = nix::unistd::read(&ready_r, &mut b);
            drop(ready_r);
            init(chan, args)
        }
        ForkResult::Parent { child } => {
            drop(ready_r);
            chan.send(&Msg::Pid {
                pid: child.as_raw(),
            })?;
            let _ = nix::unistd::write(&ready_w, b"1");
            Ok(())
        }
    }
}

/// Switches to uid/gid 0 of the new user namespace, when 0 is mapped.
fn become_root() -> Result<()> {
    let root_mapped = |file: &str| {
        std::fs::read_to_string(file)
            .map(|m| {
                m.lines().any(|l| {
                    let f: Vec<u64> = l
                        .split_whitespace()
                        .filter_map(|x| x.parse().ok())
                        .collect();
                    f.len() == 3 && f[0] == 0
                })
            })
            .unwrap_or(false)
    };
    if root_mapped("/proc/self/gid_map") {
        nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
            .map_err(sys("setting gid 0 in the user namespace"))?;
    }
    if root_mapped("/proc/self/uid_map") {
        nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
            .map_err(sys("setting uid 0 in the user namespace"))?;
    }
    Ok(())
}

/// The container's init. Never returns.
fn init(chan: &Channel, args: &InitArgs<'_>) -> ! {
    let r = init_setup(chan, args);
    match r {
        Ok(prepared) => {
            // Past Ready, the parent is gone: errors can only go to our stderr.
            let e = finish(args, prepared);
            eprintln!("berth: {e}");
            exit(127)
        }
        Err(e) => {
            let _ = chan.send(&Msg::Error { msg: e.to_string() });
            exit(1)
        }
    }
}

struct Ready {
    prep: process::Prepared,
    fifo_dir: Option<OwnedFd>,
    state: String,
}

fn init_setup(chan: &Channel, args: &InitArgs<'_>) -> Result<Ready> {
    let spec = args.spec;
    let linux = spec.linux().as_ref();
    let nss = linux
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    let proc_spec = spec
        .process()
        .as_ref()
        .ok_or_else(|| Error::Invalid("config.json: process: missing".into()))?;
    nix::unistd::setsid().map_err(sys("creating session"))?;
    // Early, so createContainer hooks already see the container's names.
    if let Some(h) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        nix::unistd::sethostname(h).map_err(sys(format!("setting hostname {h:?}")))?;
    }
    if let Some(d) = spec.domainname().as_deref().filter(|d| !d.is_empty()) {
        set_domainname(d)?;
    }
    // The host's /proc/self/fd, opened now: after pivot_root it is our only way to reopen
    // the exec fifo, whether or not the container mounts a /proc.
    let fifo_dir = match args.fifo {
        Some(_) => Some(
            rustix::fs::open(
                "/proc/self/fd",
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map_err(|e| Error::Sys {
                op: "opening /proc/self/fd".into(),
                errno: Errno::from_raw(e.raw_os_error()),
            })?,
        ),
        None => None,
    };
    let in_userns = namespaces::wants_new(&nss, LinuxNamespaceType::User)
        || nss
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::User && n.path().is_some());
    let ctx = rootfs::Context {
        spec,
        bundle: args.bundle,
        rootfs: args.rootfs,
        in_userns,
        cgroup: args.cgroup,
        new_cgroupns: namespaces::wants_new(&nss, LinuxNamespaceType::Cgroup),
    };
    debug::step(|| "init: preparing rootfs".into());
    rootfs::prepare(&ctx)?;

    chan.send(&Msg::RunHooks)?;
    let state = match chan.expect("hooks_done")? {
        Msg::HooksDone { state } => state,
        _ => unreachable!("expect checks the message kind"),
    };
    if let Some(h) = spec
        .hooks()
        .as_ref()
        .and_then(|h| h.create_container().as_ref())
    {
        hooks::run("createContainer", h, &state)?;
    }
    rootfs::pivot(args.rootfs, args.no_pivot)?;
    debug::step(|| "init: pivoted".into());

    if proc_spec.terminal().unwrap_or(false) {
        let sock = args.console.ok_or_else(|| {
            Error::Invalid("process.terminal is set but no --console-socket was given".into())
        })?;
        let size = proc_spec
            .console_size()
            .as_ref()
            .map(|b| (b.height() as u16, b.width() as u16));
        let slave = console::setup(sock, size)?;
        mount_console(&slave)?;
    }
    // Before finalize: /proc/sys becomes read-only there.
    if let Some(sysctl) = linux.and_then(|l| l.sysctl().as_ref()) {
        write_sysctls(sysctl)?;
    }
    rootfs::finalize(spec)?;
    if !args.no_new_keyring {
        join_session_keyring(args.id)?;
    }
    process::set_rlimits(proc_spec)?;
    process::set_oom_score_adj(proc_spec)?;
    let prep = process::prepare(proc_spec)?;
    let nnp = proc_spec.no_new_privileges().unwrap_or(false);
    if !nnp {
        // Without no_new_privs, loading seccomp needs CAP_SYS_ADMIN: do it before dropping.
        process::load_seccomp(args.seccomp)?;
    }
    process::set_credentials(proc_spec)?;
    process::enter_cwd(proc_spec)?;
    fds::cloexec_from(3 + args.preserve_fds).map_err(sys("marking fds close-on-exec"))?;
    fds::keep_preserved(args.preserve_fds);
    chan.send(&Msg::Ready)?;
    Ok(Ready {
        prep,
        fifo_dir,
        state,
    })
}

/// After `Ready`: wait for `start` on the fifo, then startContainer hooks, late seccomp,
/// execve.
fn finish(args: &InitArgs<'_>, r: Ready) -> Error {
    if let (Some(fifo), Some(dir)) = (args.fifo, r.fifo_dir.as_ref()) {
        let name = fifo.as_raw_fd().to_string();
        // Blocks until `start` opens the read end.
        let w = match rustix::fs::openat(
            dir.as_fd(),
            name.as_str(),
            OFlags::WRONLY | OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        ) {
            Ok(w) => w,
            Err(e) => {
                return Error::Sys {
                    op: "opening exec fifo".into(),
                    errno: Errno::from_raw(e.raw_os_error()),
                }
            }
        };
        if let Err(e) = rustix::io::write(&w, b"0") {
            return Error::Sys {
                op: "writing exec fifo".into(),
                errno: Errno::from_raw(e.raw_os_error()),
            };
        }
    }
    let spec = args.spec;
    if let Some(h) = spec
        .hooks()
        .as_ref()
        .and_then(|h| h.start_container().as_ref())
    {
        if let Err(e) = hooks::run("startContainer", h, &r.state) {
            return e.into();
        }
    }
    let proc_spec = match spec.process().as_ref() {
        Some(p) => p,
        None => return Error::Invalid("process missing".into()),
    };
    if proc_spec.no_new_privileges().unwrap_or(false) {
        if let Err(e) = process::set_no_new_privs(proc_spec) {
            return e.into();
        }
        if let Err(e) = process::load_seccomp(args.seccomp) {
            return e.into();
        }
    }
    process::exec(&r.prep).into()
}

/// Binds the pty slave over /dev/console, as runc does.
fn mount_console(slave: &str) -> Result<()> {
    let root = rustix::fs::open(
        "/",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| Error::Sys {
        op: "opening /".into(),
        errno: Errno::from_raw(e.raw_os_error()),
    })?;
    let target = rootfs::safe_path::create_file(root.as_fd(), Path::new("/dev/console"), 0o600)
        .map_err(|e| Error::Sys {
            op: "creating /dev/console".into(),
            errno: rootfs::io_errno(e),
        })?;
    nix::mount::mount(
        Some(slave),
        &rootfs::safe_path::fd_path(&target),
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(sys(format!("bind-mounting {slave} at /dev/console")))
}

fn write_sysctls(sysctl: &std::collections::HashMap<String, String>) -> Result<()> {
    for (k, v) in sysctl {
        if k.contains("..") || k.starts_with('/') {
            return Err(Error::Invalid(format!("linux.sysctl: invalid key {k:?}")));
        }
        let path = PathBuf::from("/proc/sys").join(k.replace('.', "/"));
        std::fs::write(&path, v).map_err(|e| Error::Sys {
            op: format!("writing sysctl {k}={v} to {}", path.display()),
            errno: rootfs::io_errno(e),
        })?;
    }
    Ok(())
}

fn set_domainname(d: &str) -> Result<()> {
    // SAFETY: setdomainname reads len bytes from the pointer.
    let r = unsafe { libc::setdomainname(d.as_ptr().cast(), d.len()) };
    Errno::result(r)
        .map(drop)
        .map_err(sys(format!("setting domainname {d:?}")))
}

/// A session keyring of its own, so the container doesn't share the host's (runc default).
fn join_session_keyring(id: &str) -> Result<()> {
    let name = std::ffi::CString::new(format!("_ses.{id}"))
        .map_err(|_| Error::Invalid("container id contains NUL".into()))?;
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    // SAFETY: keyctl(JOIN_SESSION_KEYRING, name) reads a NUL-terminated string.
    let r = unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, name.as_ptr()) };
    match Errno::result(r) {
        Ok(_) | Err(Errno::ENOSYS) => Ok(()),
        Err(e) => Err(Error::Sys {
            op: "joining a new session keyring".into(),
            errno: e,
        }),
    }
}
