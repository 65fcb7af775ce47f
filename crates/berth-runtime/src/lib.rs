//! berth-runtime: turns an OCI bundle (config.json + rootfs) into a running container.
//!
//! Organised as in youki: one file per lifecycle verb under `container/`, one file per
//! kernel concern (namespaces, id maps, rootfs, cgroups, capabilities, seccomp, ...), and a
//! `thiserror` enum per module folded into [`Error`].

pub mod bpf;
pub mod capabilities;
pub mod cgroups;
pub mod console;
pub mod container;
pub mod debug;
pub mod error;
pub mod fds;
pub mod hooks;
pub mod idmap;
mod init;
pub mod namespaces;
pub mod process;
pub mod rootfs;
pub mod sealed;
pub mod seccomp;
pub mod spec;
pub mod state;
pub mod sync;

pub use error::{Error, Result};
