//! Lexical clean-up of entry paths. Nothing here touches the file system: the result is a
//! relative path with no `.`, `..` or empty components, which the fd walk in `fsops` then
//! resolves without following symlinks.

use super::Rejection;

/// Longest accepted entry path, in bytes (PATH_MAX less the NUL).
pub(crate) const MAX_PATH: usize = 4095;
/// Longest file name the kernel accepts (NAME_MAX).
const MAX_NAME: usize = 255;

/// Cleans a raw tar path: leading `/` are dropped (docker does the same, so `/a` lands at
/// `dest/a`), `.` and empty components vanish, `..` pops a component and is rejected when
/// it would climb above the layer root. Returns `""` for the root itself.
pub(crate) fn clean(raw: &[u8]) -> Result<Vec<u8>, Rejection> {
    if raw.contains(&0) {
        return Err(Rejection::Nul);
    }
    if raw.len() > MAX_PATH {
        return Err(Rejection::TooLong);
    }
    let mut out: Vec<u8> = Vec::with_capacity(raw.len());
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => match out.iter().rposition(|&b| b == b'/') {
                Some(i) => out.truncate(i),
                None if !out.is_empty() => out.clear(),
                None => return Err(Rejection::Escapes),
            },
            name => {
                if name.len() > MAX_NAME {
                    return Err(Rejection::TooLong);
                }
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(name);
            }
        }
    }
    Ok(out)
}

/// Splits a cleaned, non-empty path into its parent (`""` for the root) and its last
/// component.
pub(crate) fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

/// Joins a cleaned directory path and a name.
pub(crate) fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(dir.len() + 1 + name.len());
    out.extend_from_slice(dir);
    if !dir.is_empty() {
        out.push(b'/');
    }
    out.extend_from_slice(name);
    out
}

/// For messages: paths are bytes, shown lossily.
pub(crate) fn show(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_and_rejects() {
        let ok = |raw: &str, want: &str| {
            assert_eq!(clean(raw.as_bytes()).unwrap(), want.as_bytes(), "{raw}")
        };
        ok("a/b", "a/b");
        ok("./a//b/", "a/b");
        ok("/etc/passwd", "etc/passwd");
        ok("a/../b", "b");
        ok("a/b/../../c", "c");
        ok(".", "");
        ok("./", "");
        ok("a/..", "");
        for bad in ["..", "../x", "/../x", "a/../../x", "a/b/../../../x", "./.."] {
            assert_eq!(clean(bad.as_bytes()), Err(Rejection::Escapes), "{bad}");
        }
        assert_eq!(clean(b"a\0b"), Err(Rejection::Nul));
        assert_eq!(clean(&[b'a'; 256]), Err(Rejection::TooLong));
        assert_eq!(clean(&vec![b'a'; MAX_PATH + 1]), Err(Rejection::TooLong));
    }

    #[test]
    fn split_and_join() {
        assert_eq!(split(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(split(b"c"), (&b""[..], &b"c"[..]));
        assert_eq!(join(b"", b"c"), b"c");
        assert_eq!(join(b"a/b", b"c"), b"a/b/c");
    }
}
