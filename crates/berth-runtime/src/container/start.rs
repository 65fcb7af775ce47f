//! `start`: release a created container's init by reading its exec fifo.

use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use rustix::fs::OFlags;

use crate::error::{Error, Result};
use crate::hooks;
use crate::state::{Status, EXEC_FIFO};

/// How long `start` waits for an init that is alive but not yet at the fifo.
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub fn start(root: &Path, id: &str) -> Result<()> {
    let (saved, status) = super::load(root, id)?;
    if status != Status::Created {
        return Err(super::bad_status(
            id,
            status,
            "only a created container can be started",
        ));
    }
    let fifo_path = saved.dir(root).join(EXEC_FIFO);
    let fifo = rustix::fs::open(
        &fifo_path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| Error::Sys {
        op: format!("opening {}", fifo_path.display()),
        errno: nix::errno::Errno::from_raw(e.raw_os_error()),
    })?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let mut fds = [PollFd::new(fifo.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(100u16)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => {}
            Ok(_) => {
                let mut b = [0u8; 1];
                match rustix::io::read(&fifo, &mut b) {
                    Ok(1) => break,
                    Ok(_) => {
                        return Err(Error::Container(format!(
                            "container {id:?} init exited before start"
                        )))
                    }
                    Err(rustix::io::Errno::AGAIN) => {}
                    Err(e) => {
                        return Err(Error::Sys {
                            op: "reading exec fifo".into(),
                            errno: nix::errno::Errno::from_raw(e.raw_os_error()),
                        })
                    }
                }
            }
            Err(e) => {
                return Err(Error::Sys {
                    op: "waiting on exec fifo".into(),
                    errno: e,
                })
            }
        }
        if !saved.init_alive() {
            return Err(Error::Container(format!(
                "container {id:?} init exited before start"
            )));
        }
        if Instant::now() >= deadline {
            return Err(Error::Container(format!(
                "container {id:?}: init did not reach the exec fifo within {}s",
                START_TIMEOUT.as_secs()
            )));
        }
    }
    let _ = std::fs::remove_file(&fifo_path);
    if let Some(h) = saved
        .spec
        .hooks()
        .as_ref()
        .and_then(|h| h.poststart().as_ref())
    {
        // The spec says a failing poststart hook is logged, not fatal.
        if let Err(e) = hooks::run(
            "poststart",
            h,
            &saved.oci_state(Status::Running).to_string(),
        ) {
            eprintln!("berth: warning: {e}");
        }
    }
    Ok(())
}
