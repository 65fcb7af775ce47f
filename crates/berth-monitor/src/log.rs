//! The container log: docker json-file lines in STATE_DIR/ctr.log, rotated by size to
//! ctr.log.1 (one old file kept).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::{fmt, sys};

pub const LOG: &str = "ctr.log";
pub const LOG_OLD: &str = "ctr.log.1";
/// A line longer than this is written in pieces (docker's 16 KiB as well).
pub const LINE_MAX: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout = 1,
    Stderr = 2,
}

impl Stream {
    fn name(self) -> &'static [u8] {
        match self {
            Stream::Stdout => b"stdout",
            Stream::Stderr => b"stderr",
        }
    }
}

pub struct Logger {
    dir: OwnedFd,
    file: OwnedFd,
    size: u64,
    max: u64,
    /// Unterminated tail of the last read, per stream (index = stream - 1).
    partial: [Vec<u8>; 2],
    /// Reused for each JSON line, so steady-state logging does not allocate.
    entry: Vec<u8>,
}

impl Logger {
    /// Opens (appending to) `dir/ctr.log`. `max` = 0 disables rotation.
    pub fn open(dir: OwnedFd, max: u64) -> io::Result<Logger> {
        let file = open_log(&dir)?;
        let size = sys::fstat_size(file.as_raw_fd())?;
        Ok(Logger {
            dir,
            file,
            size,
            max,
            partial: [Vec::new(), Vec::new()],
            entry: Vec::new(),
        })
    }

    /// Logs `data` read from `stream`: one entry per complete line; an unterminated tail
    /// waits for more (or for `flush`), unless it reaches LINE_MAX.
    pub fn write(&mut self, stream: Stream, data: &[u8]) -> io::Result<()> {
        let idx = stream as usize - 1;
        let mut rest = data;
        let mut result = Ok(());
        while !rest.is_empty() {
            let room = LINE_MAX - self.partial[idx].len();
            let window = &rest[..room.min(rest.len())];
            match window.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    let r = if self.partial[idx].is_empty() {
                        self.emit(stream, &rest[..=i])
                    } else {
                        let mut line = std::mem::take(&mut self.partial[idx]);
                        line.extend_from_slice(&rest[..=i]);
                        let r = self.emit(stream, &line);
                        line.clear();
                        self.partial[idx] = line; // keep the allocation
                        r
                    };
                    result = result.and(r);
                    rest = &rest[i + 1..];
                }
                None => {
                    self.partial[idx].extend_from_slice(window);
                    rest = &rest[window.len()..];
                    if self.partial[idx].len() >= LINE_MAX {
                        result = result.and(self.flush_full(stream));
                    }
                }
            }
        }
        result
    }

    /// Writes out an unterminated tail as is (the pipe closed).
    pub fn flush(&mut self, stream: Stream) -> io::Result<()> {
        let idx = stream as usize - 1;
        if self.partial[idx].is_empty() {
            return Ok(());
        }
        let line = std::mem::take(&mut self.partial[idx]);
        self.emit(stream, &line)
    }

    /// A full buffer without newline: write it, cut at a UTF-8 boundary so a character is
    /// not split into two replacement characters.
    fn flush_full(&mut self, stream: Stream) -> io::Result<()> {
        let idx = stream as usize - 1;
        let mut buf = std::mem::take(&mut self.partial[idx]);
        let cut = utf8_cut(&buf);
        let r = self.emit(stream, &buf[..cut]);
        buf.drain(..cut);
        self.partial[idx] = buf;
        r
    }

    fn emit(&mut self, stream: Stream, line: &[u8]) -> io::Result<()> {
        let (secs, nanos) = sys::realtime();
        let mut e = std::mem::take(&mut self.entry);
        e.clear();
        e.extend_from_slice(b"{\"log\":");
        fmt::json_str(&mut e, line);
        e.extend_from_slice(b",\"stream\":\"");
        e.extend_from_slice(stream.name());
        e.extend_from_slice(b"\",\"time\":\"");
        fmt::rfc3339(&mut e, secs, nanos);
        e.extend_from_slice(b"\"}\n");
        let mut r = Ok(());
        if self.max > 0 && self.size > 0 && self.size + e.len() as u64 > self.max {
            r = self.rotate();
        }
        let w = sys::write_all(self.file.as_raw_fd(), &e);
        if w.is_ok() {
            self.size += e.len() as u64;
        }
        // Keep the buffer unless one huge line grew it far beyond a normal entry.
        if e.capacity() <= 4 * LINE_MAX {
            self.entry = e;
        }
        r.and(w)
    }

    fn rotate(&mut self) -> io::Result<()> {
        sys::rename_at(&self.dir, LOG, LOG_OLD)?;
        // Even if opening fails we keep writing to the renamed file: no output is lost.
        self.file = open_log(&self.dir)?;
        self.size = 0;
        Ok(())
    }
}

fn open_log(dir: &OwnedFd) -> io::Result<OwnedFd> {
    sys::open_at(
        dir,
        LOG,
        libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND,
        0o640,
    )
}

/// Length of the longest prefix of `buf` that does not end inside a UTF-8 sequence
/// (all of it if the tail is not a plausible sequence start).
fn utf8_cut(buf: &[u8]) -> usize {
    let n = buf.len();
    for back in 1..=3.min(n) {
        let b = buf[n - back];
        if b & 0xC0 == 0x80 {
            continue; // continuation byte: keep looking for the lead
        }
        let need = match b {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => return n,
        };
        return if need > back { n - back } else { n };
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn logger(dir: &Path, max: u64) -> Logger {
        let d = sys::open(dir, libc::O_RDONLY | libc::O_DIRECTORY, 0).unwrap();
        Logger::open(d, max).unwrap()
    }

    fn entries(path: &Path) -> Vec<(String, String)> {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let t = v["time"].as_str().unwrap();
                assert_eq!(t.len(), 30, "{t}");
                assert!(t.ends_with('Z'));
                (
                    v["stream"].as_str().unwrap().to_string(),
                    v["log"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    fn pair(s: &str, l: &str) -> (String, String) {
        (s.to_string(), l.to_string())
    }

    #[test]
    fn splits_lines_and_keeps_partials_per_stream() {
        let t = tempfile::tempdir().unwrap();
        let mut l = logger(t.path(), 0);
        l.write(Stream::Stdout, b"one\ntw").unwrap();
        l.write(Stream::Stderr, b"e1\n\"q\"\t\n").unwrap();
        l.write(Stream::Stdout, b"o\nthree").unwrap();
        l.flush(Stream::Stdout).unwrap();
        l.flush(Stream::Stderr).unwrap();
        assert_eq!(
            entries(&t.path().join(LOG)),
            vec![
                pair("stdout", "one\n"),
                pair("stderr", "e1\n"),
                pair("stderr", "\"q\"\t\n"),
                pair("stdout", "two\n"),
                pair("stdout", "three"),
            ]
        );
    }

    #[test]
    fn long_lines_are_cut_at_line_max_on_char_boundaries() {
        let t = tempfile::tempdir().unwrap();
        let mut l = logger(t.path(), 0);
        // 'é' is two bytes; LINE_MAX-1 'a's put an 'é' across the boundary.
        let mut data = vec![b'a'; LINE_MAX - 1];
        data.extend_from_slice("é".as_bytes());
        data.extend_from_slice(b"tail\n");
        l.write(Stream::Stdout, &data).unwrap();
        let e = entries(&t.path().join(LOG));
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].1.len(), LINE_MAX - 1);
        assert_eq!(e[1].1, "étail\n");
        // A complete line of exactly LINE_MAX bytes is one entry.
        let mut data = vec![b'b'; LINE_MAX - 1];
        data.push(b'\n');
        l.write(Stream::Stdout, &data).unwrap();
        assert_eq!(entries(&t.path().join(LOG)).len(), 3);
    }

    #[test]
    fn rotates_keeping_one_old_file() {
        let t = tempfile::tempdir().unwrap();
        let mut l = logger(t.path(), 300);
        for i in 0..40 {
            l.write(Stream::Stdout, format!("line {i}\n").as_bytes())
                .unwrap();
        }
        let cur = entries(&t.path().join(LOG));
        let old = entries(&t.path().join(LOG_OLD));
        assert!(std::fs::metadata(t.path().join(LOG)).unwrap().len() <= 300);
        assert!(std::fs::metadata(t.path().join(LOG_OLD)).unwrap().len() <= 300);
        let all: Vec<String> = old.into_iter().chain(cur).map(|(_, l)| l).collect();
        // The newest lines survive, in order, without gaps.
        assert_eq!(all.last().unwrap(), "line 39\n");
        let first: usize = all[0]["line ".len()..].trim().parse().unwrap();
        for (k, line) in all.iter().enumerate() {
            assert_eq!(line, &format!("line {}\n", first + k));
        }
    }

    #[test]
    fn utf8_cuts() {
        assert_eq!(utf8_cut(b"abc"), 3);
        assert_eq!(utf8_cut("abé".as_bytes()), 4);
        assert_eq!(utf8_cut(&"abé".as_bytes()[..3]), 2);
        assert_eq!(utf8_cut(&"a€".as_bytes()[..3]), 1);
        assert_eq!(utf8_cut(b"\xff"), 1);
    }
}
