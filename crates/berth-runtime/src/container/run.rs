//! `run`: create + start, then (unless detached) wait, forwarding signals, and delete.

use crate::error::{sys, Result};

use super::{create, delete, start, CreateOpts, Exit};

/// Returns the container's exit (detached: `Exit::Code(0)` once started).
pub fn run(opts: &CreateOpts, detach: bool) -> Result<Exit> {
    if detach {
        create(opts)?;
        if let Err(e) = start(&opts.root, &opts.id) {
            let _ = delete(&opts.root, &opts.id, true);
            return Err(e);
        }
        return Ok(Exit::Code(0));
    }
    // As subreaper we inherit the init when stage-1 exits, and can wait for it.
    nix::sys::prctl::set_child_subreaper(true).map_err(sys("becoming child subreaper"))?;
    let saved = create(opts)?;
    let set = super::wait::block_signals()?;
    let r = start(&opts.root, &opts.id).and_then(|_| {
        crate::debug::step(|| "started".into());
        super::forward_and_wait(saved.pid, &set)
    });
    crate::debug::step(|| "container exited".into());
    let _ = set.thread_unblock();
    let d = delete(&opts.root, &opts.id, true);
    crate::debug::step(|| "deleted".into());
    let exit = r?;
    d?;
    Ok(exit)
}
