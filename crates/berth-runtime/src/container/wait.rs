//! Waiting for processes: our own children (with signal forwarding, for `run` and `exec`
//! in the foreground) and other processes (polling /proc, for `delete --force`).

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::error::{sys, Result};

/// How a waited-for process ended, as a shell reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    pub fn code(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }
}

const FORWARDED: &[Signal] = &[
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGCONT,
    Signal::SIGTSTP,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
];

/// Blocks the signals that `forward_and_wait` will handle. Call before the child can exit.
pub fn block_signals() -> Result<SigSet> {
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(*s);
    }
    set.add(Signal::SIGCHLD);
    set.thread_block().map_err(sys("blocking signals"))?;
    Ok(set)
}

/// Forwards signals to `pid` until it exits; reaps everything reparented to us meanwhile
/// (we are a child subreaper). Returns its exit.
pub fn forward_and_wait(pid: i32, set: &SigSet) -> Result<Exit> {
    let target = Pid::from_raw(pid);
    loop {
        // Reap first: the child may have exited before we started waiting.
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(p, c)) if p == target => return Ok(Exit::Code(c)),
                Ok(WaitStatus::Signaled(p, s, _)) if p == target => {
                    return Ok(Exit::Signal(s as i32))
                }
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => break,
                Ok(_) => continue,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(sys("waiting for container process")(e)),
            }
        }
        let sig = set.wait().map_err(sys("waiting for signals"))?;
        if sig != Signal::SIGCHLD {
            let _ = kill(target, sig);
        }
    }
}

/// Polls until `alive()` is false or `timeout` passes; true if gone.
pub fn wait_gone(mut alive: impl FnMut() -> bool, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_micros(200);
    while alive() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
    true
}
