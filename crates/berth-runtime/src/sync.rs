//! The channel between the runtime and the processes it forks (stage-1 and init).
//!
//! A SOCK_SEQPACKET socketpair carrying one small JSON message per packet: message
//! boundaries come for free, and an init that dies closes its end, which the parent sees as
//! end-of-file instead of hanging.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SyncError {
    #[error("creating sync socketpair: {0}")]
    Create(nix::Error),
    #[error("sending {what} on sync socket: {source}")]
    Send {
        what: &'static str,
        source: nix::Error,
    },
    #[error("receiving from sync socket: {0}")]
    Recv(nix::Error),
    #[error("container process exited before reporting {expected}")]
    Eof { expected: &'static str },
    #[error("decoding sync message: {0}")]
    Decode(serde_json::Error),
    #[error("expected {expected} from container process, got {got:?}")]
    Unexpected { expected: &'static str, got: Msg },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Msg {
    /// Parent → child: the cgroup is set, go on.
    Go,
    /// Child → parent: I unshared a user namespace; write my id maps.
    MapIds,
    /// Parent → child: maps written.
    MapsWritten,
    /// Stage-1 → parent: the init's pid, in the parent's pid namespace.
    Pid { pid: i32 },
    /// Init → parent: mounts are prepared; run createRuntime/prestart hooks.
    RunHooks,
    /// Parent → init: hooks done; the state JSON for the init's own hooks.
    HooksDone { state: String },
    /// Init → parent: everything set up, waiting for `start`.
    Ready,
    /// Any → parent: a step failed; the message names the step and object.
    Error { msg: String },
}

impl Msg {
    fn name(&self) -> &'static str {
        match self {
            Msg::Go => "go",
            Msg::MapIds => "map_ids",
            Msg::MapsWritten => "maps_written",
            Msg::Pid { .. } => "pid",
            Msg::RunHooks => "run_hooks",
            Msg::HooksDone { .. } => "hooks_done",
            Msg::Ready => "ready",
            Msg::Error { .. } => "error",
        }
    }
}

pub struct Channel {
    fd: OwnedFd,
}

/// Creates a connected pair (parent end, child end), close-on-exec.
pub fn pair() -> Result<(Channel, Channel), SyncError> {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(SyncError::Create)?;
    Ok((Channel { fd: a }, Channel { fd: b }))
}

impl Channel {
    pub fn send(&self, msg: &Msg) -> Result<(), SyncError> {
        let buf = serde_json::to_vec(msg).map_err(SyncError::Decode)?;
        loop {
            match nix::unistd::write(self.fd.as_fd(), &buf) {
                Ok(_) => return Ok(()),
                Err(nix::Error::EINTR) => continue,
                Err(source) => {
                    return Err(SyncError::Send {
                        what: msg.name(),
                        source,
                    })
                }
            }
        }
    }

    /// Receives one message; `None` on end-of-file.
    pub fn recv(&self) -> Result<Option<Msg>, SyncError> {
        let mut buf = vec![0u8; 64 * 1024];
        let n = loop {
            match nix::unistd::read(self.fd.as_fd(), &mut buf) {
                Ok(n) => break n,
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(SyncError::Recv(e)),
            }
        };
        if n == 0 {
            return Ok(None);
        }
        serde_json::from_slice(&buf[..n])
            .map(Some)
            .map_err(SyncError::Decode)
    }

    /// Receives the expected message; an `Error` from the other side becomes `Err(msg)`.
    pub fn expect(&self, expected: &'static str) -> Result<Msg, ExpectError> {
        match self.recv()? {
            None => Err(SyncError::Eof { expected }.into()),
            Some(Msg::Error { msg }) => Err(ExpectError::Remote(msg)),
            Some(m) if m.name() == expected => Ok(m),
            Some(got) => Err(SyncError::Unexpected { expected, got }.into()),
        }
    }

    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }
}

/// What `expect` can fail with: a local channel problem, or the remote side's own error.
#[derive(Debug, Error)]
pub enum ExpectError {
    #[error(transparent)]
    Sync(#[from] SyncError),
    #[error("{0}")]
    Remote(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_eof() {
        let (a, b) = pair().unwrap();
        a.send(&Msg::Pid { pid: 42 }).unwrap();
        assert_eq!(b.expect("pid").unwrap(), Msg::Pid { pid: 42 });
        a.send(&Msg::Error {
            msg: "mounting proc at /x: EPERM".into(),
        })
        .unwrap();
        match b.expect("ready") {
            Err(ExpectError::Remote(m)) => assert_eq!(m, "mounting proc at /x: EPERM"),
            other => panic!("unexpected {other:?}"),
        }
        a.send(&Msg::Go).unwrap();
        assert!(matches!(
            b.expect("ready"),
            Err(ExpectError::Sync(SyncError::Unexpected { .. }))
        ));
        drop(a);
        assert!(matches!(
            b.expect("ready"),
            Err(ExpectError::Sync(SyncError::Eof { .. }))
        ));
    }
}
