//! One attach client: frames out (container output, then the exit code), frames in
//! (stdin data, close stdin, resize). Every frame is `[u8 kind][u32 BE len][len bytes]`.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::sys;

pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const EXIT: u8 = 3;
pub const STDIN: u8 = 0;
pub const CLOSE_STDIN: u8 = 4;
pub const RESIZE: u8 = 5;

/// Output queued beyond this for any client pauses reading the container's output, so a
/// slow reader slows the container instead of growing the monitor (docker does the same).
pub const OUT_HIGH: usize = 64 * 1024;
/// Largest client frame accepted; bigger is a protocol error.
pub const IN_MAX: usize = 64 * 1024;
/// A client that accepts no output for this long while it holds the container back is
/// dropped.
pub const STALL_MS: i64 = 30_000;

#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    Stdin(&'a [u8]),
    CloseStdin,
    Resize { rows: u16, cols: u16 },
}

pub struct Client {
    fd: OwnedFd,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    /// Bytes of `out` already sent.
    sent: usize,
    /// Monotonic ms since which queued output has made no progress.
    stalled_since: Option<i64>,
}

impl Client {
    pub fn new(fd: OwnedFd) -> Client {
        Client {
            fd,
            inbuf: Vec::new(),
            out: Vec::new(),
            sent: 0,
            stalled_since: None,
        }
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn pending(&self) -> usize {
        self.out.len() - self.sent
    }

    pub fn stalled_since(&self) -> Option<i64> {
        self.stalled_since
    }

    pub fn queue(&mut self, kind: u8, payload: &[u8]) {
        if self.sent > 0 && self.sent * 2 >= self.out.len() {
            self.out.drain(..self.sent);
            self.sent = 0;
        }
        push_frame(&mut self.out, kind, payload);
    }

    /// Writes what the socket takes without blocking.
    pub fn flush(&mut self, now_ms: i64) -> io::Result<()> {
        while self.pending() > 0 {
            match sys::write(self.fd(), &self.out[self.sent..]) {
                Ok(n) => {
                    self.sent += n;
                    self.stalled_since = None;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.stalled_since.get_or_insert(now_ms);
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        self.out.clear();
        self.sent = 0;
        self.stalled_since = None;
        if self.out.capacity() > 4 * OUT_HIGH {
            self.out.shrink_to(OUT_HIGH / 4);
        }
        Ok(())
    }

    /// Reads what is available and hands each complete frame to `handle`. Ok(false) when
    /// the client closed its end.
    pub fn read(&mut self, handle: &mut dyn FnMut(Request<'_>)) -> io::Result<bool> {
        let mut buf = [0u8; 4096];
        let n = match sys::read(self.fd(), &mut buf) {
            Ok(0) => return Ok(false),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) => return Err(e),
        };
        self.inbuf.extend_from_slice(&buf[..n]);
        let used = parse(&self.inbuf, handle)?;
        self.inbuf.drain(..used);
        Ok(true)
    }
}

pub fn push_frame(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

/// Handles every complete frame in `buf`; returns how many bytes they used.
fn parse(buf: &[u8], handle: &mut dyn FnMut(Request<'_>)) -> io::Result<usize> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let mut at = 0;
    while buf.len() - at >= 5 {
        let kind = buf[at];
        let len = u32::from_be_bytes([buf[at + 1], buf[at + 2], buf[at + 3], buf[at + 4]]) as usize;
        if len > IN_MAX {
            return Err(bad("attach frame too large"));
        }
        if buf.len() - at - 5 < len {
            break;
        }
        let p = &buf[at + 5..at + 5 + len];
        match (kind, len) {
            (STDIN, _) => handle(Request::Stdin(p)),
            (CLOSE_STDIN, 0) => handle(Request::CloseStdin),
            (RESIZE, 4) => handle(Request::Resize {
                rows: u16::from_be_bytes([p[0], p[1]]),
                cols: u16::from_be_bytes([p[2], p[3]]),
            }),
            _ => return Err(bad("unknown attach frame")),
        }
        at += 5 + len;
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(buf: &[u8]) -> (io::Result<usize>, Vec<String>) {
        let mut got = Vec::new();
        let r = parse(buf, &mut |r| got.push(format!("{r:?}")));
        (r, got)
    }

    #[test]
    fn parses_frames_and_keeps_incomplete_tail() {
        let mut b = Vec::new();
        push_frame(&mut b, STDIN, b"hi\n");
        push_frame(&mut b, RESIZE, &[0, 40, 0, 100]);
        push_frame(&mut b, CLOSE_STDIN, b"");
        let whole = b.len();
        push_frame(&mut b, STDIN, b"partial");
        b.truncate(b.len() - 2);
        let (r, got) = collect(&b);
        assert_eq!(r.unwrap(), whole);
        assert_eq!(
            got,
            [
                "Stdin([104, 105, 10])",
                "Resize { rows: 40, cols: 100 }",
                "CloseStdin"
            ]
        );
    }

    #[test]
    fn rejects_unknown_and_oversized_frames() {
        assert!(collect(&[9, 0, 0, 0, 0]).0.is_err());
        assert!(collect(&[RESIZE, 0, 0, 0, 2, 1, 2]).0.is_err());
        assert!(collect(&[STDIN, 0xff, 0, 0, 0]).0.is_err());
        assert_eq!(collect(&[STDIN, 0, 0]).0.unwrap(), 0);
    }
}
