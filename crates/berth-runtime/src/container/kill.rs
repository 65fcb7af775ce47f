//! `kill`: signal a container's init, or with `--all` every process in its cgroup.

use std::path::Path;
use std::str::FromStr;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::error::{sys, Error, Result};
use crate::state::Status;

/// Parses "SIGTERM", "TERM", "term" or "15".
pub fn parse_signal(s: &str) -> Result<Signal> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n)
            .map_err(|_| Error::Invalid(format!("invalid signal number {n}")));
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    Signal::from_str(&name).map_err(|_| Error::Invalid(format!("invalid signal {s:?}")))
}

pub fn kill(root: &Path, id: &str, sig: Signal, all: bool) -> Result<()> {
    let (saved, status) = super::load(root, id)?;
    if status == Status::Stopped {
        return Err(super::bad_status(
            id,
            status,
            "cannot signal a stopped container",
        ));
    }
    if all {
        if let Some(cg) = &saved.cgroup {
            for p in cg.pids()? {
                let _ = signal::kill(Pid::from_raw(p), sig);
            }
            // Frozen tasks only act on SIGKILL once thawed.
            if status == Status::Paused && sig == Signal::SIGKILL {
                cg.thaw()?;
            }
            return Ok(());
        }
    }
    signal::kill(Pid::from_raw(saved.pid), sig)
        .map_err(sys(format!("sending {sig} to {id} (pid {})", saved.pid)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_and_number() {
        assert_eq!(parse_signal("SIGTERM").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("kill").unwrap(), Signal::SIGKILL);
        assert_eq!(parse_signal("9").unwrap(), Signal::SIGKILL);
        assert!(parse_signal("SIGNOPE").is_err());
        assert!(parse_signal("999").is_err());
    }
}
