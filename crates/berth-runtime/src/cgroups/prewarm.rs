//! Moving a process into a cgroup (a write to `cgroup.procs`, v1 or v2) takes the kernel's
//! global cgroup_threadgroup_rwsem for writing, and the first writer after a quiet period
//! waits for an RCU grace period (rcu_sync): 7-12 ms on this kind of machine, the largest
//! single cost of `create`. Writers that arrive while that grace period is in progress, or
//! shortly after it, share it. So `create` starts a throw-away child at once that "moves"
//! itself into the cgroup it already is in (writes 0 to its own `cgroup.procs`, a no-op
//! migration); by the time the init is placed, the grace period is mostly or fully over.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;

use nix::unistd::{fork, ForkResult, Pid};

use super::mountinfo::Hierarchy;

/// The child doing the no-op migration; reaped on drop.
pub struct Prewarm(Option<Pid>);

impl Prewarm {
    /// Forks the child. Safe in a multi-threaded process too: the child only makes
    /// async-signal-safe calls. Best effort: without a cgroup hierarchy or on fork failure
    /// nothing happens.
    pub fn start() -> Prewarm {
        let Some(procs) = Hierarchy::current().ok().and_then(|h| h.own_procs_file()) else {
            return Prewarm(None);
        };
        let Ok(path) = CString::new(procs.as_os_str().as_bytes()) else {
            return Prewarm(None);
        };
        // SAFETY: the child only calls open/write/_exit (async-signal-safe).
        match unsafe { fork() } {
            Ok(ForkResult::Child) => unsafe {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd >= 0 {
                    libc::write(fd, b"0".as_ptr().cast(), 1);
                }
                libc::_exit(0)
            },
            Ok(ForkResult::Parent { child }) => Prewarm(Some(child)),
            Err(_) => Prewarm(None),
        }
    }
}

impl Drop for Prewarm {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            let _ = nix::sys::wait::waitpid(pid, None);
        }
    }
}
