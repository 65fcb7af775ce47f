//! `create`: everything up to a container whose init waits for `start`.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::sys::signal::{kill, Signal};
use nix::sys::stat::Mode;
use nix::unistd::{ForkResult, Pid};
use oci_spec::runtime::Spec;
use rustix::fs::OFlags;

use crate::cgroups::Cgroup;
use crate::error::{sys, Error, Result};
use crate::init::{self, InitArgs};
use crate::state::{self, Saved, Status, EXEC_FIFO};
use crate::sync::{self, Msg};
use crate::{console, debug, hooks, idmap, spec};

#[derive(Debug, Clone, Default)]
pub struct CreateOpts {
    pub root: PathBuf,
    pub id: String,
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub preserve_fds: u32,
    pub no_pivot: bool,
    pub no_new_keyring: bool,
    /// cgroupsPath is in systemd's "slice:prefix:name" form (`--systemd-cgroup`).
    pub systemd_cgroup: bool,
}

/// Undoes a half-made container when create fails: init, cgroup, state directory.
struct Undo {
    dir: Option<PathBuf>,
    cgroup: Option<Cgroup>,
    init: Option<i32>,
}

impl Drop for Undo {
    fn drop(&mut self) {
        if let Some(pid) = self.init {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if let Some(cg) = &self.cgroup {
            kill_cgroup(cg);
            let _ = cg.destroy();
        }
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

pub(crate) fn kill_cgroup(cg: &Cgroup) {
    if let Ok(pids) = cg.pids() {
        for p in pids {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
    }
    if cg.is_frozen().unwrap_or(false) {
        let _ = cg.thaw();
    }
}

pub fn create(opts: &CreateOpts) -> Result<Saved> {
    state::validate_id(&opts.id)?;
    // Reaped when create returns, long after the init has been placed in its cgroup.
    let _prewarm = crate::cgroups::prewarm::Prewarm::start();
    let bundle = std::fs::canonicalize(&opts.bundle).map_err(|e| Error::Sys {
        op: format!("resolving bundle {}", opts.bundle.display()),
        errno: crate::rootfs::io_errno(e),
    })?;
    let spec = spec::load(&bundle)?;
    debug::step(|| format!("loaded {}/config.json", bundle.display()));
    let rootfs = spec::rootfs_path(&bundle, &spec);
    let rootfs = std::fs::canonicalize(&rootfs).unwrap_or(rootfs);

    std::fs::create_dir_all(&opts.root).map_err(|e| Error::Sys {
        op: format!("creating state root {}", opts.root.display()),
        errno: crate::rootfs::io_errno(e),
    })?;
    let dir = state::dir(&opts.root, &opts.id);
    match nix::unistd::mkdir(&dir, Mode::from_bits_truncate(0o711)) {
        Ok(()) => {}
        Err(nix::errno::Errno::EEXIST) => {
            return Err(state::StateError::Exists(opts.id.clone()).into())
        }
        Err(e) => {
            return Err(sys(format!("creating state directory {}", dir.display()))(
                e,
            ))
        }
    }
    let mut undo = Undo {
        dir: Some(dir.clone()),
        cgroup: None,
        init: None,
    };

    let linux = spec.linux().as_ref();
    let cg_path = linux
        .and_then(|l| l.cgroups_path().as_ref())
        .map(|p| p.to_string_lossy().into_owned());
    let cgroup = Cgroup::new(cg_path.as_deref(), &opts.id, opts.systemd_cgroup)?;
    cgroup.create()?;
    debug::step(|| "cgroup created".into());
    undo.cgroup = Some(cgroup.clone());
    if let Some(res) = spec::cgroup_resources(&spec) {
        cgroup.set(&res)?;
        debug::step(|| "cgroup limits written".into());
    }

    let fifo_path = dir.join(EXEC_FIFO);
    nix::unistd::mkfifo(&fifo_path, Mode::from_bits_truncate(0o622))
        .map_err(sys(format!("creating {}", fifo_path.display())))?;
    // mkfifo honours the umask; the init may run as an unprivileged host uid.
    nix::sys::stat::fchmodat(
        nix::fcntl::AT_FDCWD,
        &fifo_path,
        Mode::from_bits_truncate(0o622),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )
    .map_err(sys(format!("setting mode of {}", fifo_path.display())))?;
    let fifo: OwnedFd = rustix::fs::open(
        &fifo_path,
        OFlags::PATH | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| Error::Sys {
        op: format!("opening {}", fifo_path.display()),
        errno: nix::errno::Errno::from_raw(e.raw_os_error()),
    })?;
    let terminal = spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    let console = match (&opts.console_socket, terminal) {
        (Some(p), true) => Some(console::connect(p)?),
        (None, true) => {
            return Err(Error::Invalid(
                "process.terminal is set: --console-socket is required".into(),
            ))
        }
        _ => None,
    };

    let mut saved = Saved {
        id: opts.id.clone(),
        pid: 0,
        pid_start: 0,
        bundle: bundle.clone(),
        rootfs: rootfs.clone(),
        created: state::now_rfc3339(),
        cgroup: Some(cgroup.clone()),
        annotations: spec.annotations().clone().unwrap_or_default(),
        spec: spec.clone(),
        owner: String::new(),
    };

    // Compiled here, not in the init: between `start` and execve there is only a load.
    let seccomp = linux
        .and_then(|l| l.seccomp().as_ref())
        .map(|s| crate::bpf::Program::compile(s, Some(&opts.root)))
        .transpose()?;
    debug::step(|| "seccomp compiled".into());
    let (parent, child) = sync::pair()?;
    let args = InitArgs {
        id: &opts.id,
        spec: &spec,
        bundle: &bundle,
        rootfs: &rootfs,
        cgroup: Some(&cgroup),
        fifo: Some(&fifo),
        console: console.as_ref(),
        preserve_fds: opts.preserve_fds,
        no_pivot: opts.no_pivot,
        no_new_keyring: opts.no_new_keyring,
        seccomp: seccomp.as_ref(),
    };
    // SAFETY: the runtime is single-threaded; the child runs stage-1 and _exits.
    let stage1 = match unsafe { nix::unistd::fork() }.map_err(sys("forking stage-1"))? {
        ForkResult::Child => {
            drop(parent);
            init::stage1(&child, &args)
        }
        ForkResult::Parent { child: pid } => pid,
    };
    drop(child);
    drop(console);
    let result = drive(&parent, stage1, &cgroup, &spec, &mut saved, &opts.root);
    // stage-1 exits right after reporting; reap it whatever happened.
    if result.is_err() {
        let _ = kill(stage1, Signal::SIGKILL);
    }
    let _ = nix::sys::wait::waitpid(stage1, None);
    if saved.pid > 0 {
        undo.init = Some(saved.pid);
    }
    result?;
    saved.save(&opts.root)?;
    if let Some(p) = &opts.pid_file {
        super::write_pid_file(p, saved.pid)?;
    }
    undo.dir = None;
    undo.cgroup = None;
    undo.init = None;
    Ok(saved)
}

/// The parent's half of the conversation with stage-1 and the init.
fn drive(
    chan: &sync::Channel,
    stage1: Pid,
    cgroup: &Cgroup,
    spec: &Spec,
    saved: &mut Saved,
    root: &Path,
) -> Result<()> {
    // In the cgroup before unsharing, so the cgroup namespace is rooted at it.
    cgroup.apply(stage1.as_raw())?;
    debug::step(|| format!("stage-1 {stage1} added to cgroup"));
    chan.send(&Msg::Go)?;
    let linux = spec.linux().as_ref();
    let mut msg = chan.recv()?;
    if msg == Some(Msg::MapIds) {
        let uids = linux
            .and_then(|l| l.uid_mappings().clone())
            .unwrap_or_default();
        let gids = linux
            .and_then(|l| l.gid_mappings().clone())
            .unwrap_or_default();
        idmap::write(stage1.as_raw(), &uids, &gids)?;
        chan.send(&Msg::MapsWritten)?;
        msg = chan.recv()?;
    }
    match msg {
        Some(Msg::Pid { pid }) => {
            debug::step(|| format!("init is pid {pid}"));
            saved.pid = pid
        }
        Some(Msg::Error { msg }) => return Err(Error::Container(msg)),
        None => return Err(sync::SyncError::Eof { expected: "pid" }.into()),
        Some(got) => {
            return Err(sync::SyncError::Unexpected {
                expected: "pid",
                got,
            }
            .into())
        }
    }
    saved.pid_start = state::proc_stat(saved.pid).map(|s| s.1).unwrap_or(0);
    chan.expect("run_hooks")?;
    debug::step(|| "init mounted the rootfs".into());
    let state_json = saved.oci_state(Status::Creating).to_string();
    if let Some(h) = spec.hooks().as_ref() {
        #[allow(deprecated)]
        if let Some(pre) = h.prestart() {
            hooks::run("prestart", pre, &state_json)?;
        }
        if let Some(cr) = h.create_runtime() {
            hooks::run("createRuntime", cr, &state_json)?;
        }
    }
    chan.send(&Msg::HooksDone {
        state: saved.oci_state(Status::Created).to_string(),
    })?;
    chan.expect("ready")?;
    debug::step(|| "init ready".into());
    let _ = root;
    Ok(())
}
