//! The hostile corpus (tests/hostile/*.tar, made by tests/hostile/make.py) as regression
//! tests: each is unpacked, in both whiteout modes, into `<tmp>/dest` next to a victim
//! directory; the expected error must name the entry (or, for `ok` cases, the entry must
//! land inside dest), and nothing outside dest may change.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::*;

pub(super) const PWNED: &str = "berth-hostile-pwned";

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile")
}

/// Everything under `root` except `skip`: type, mode, owner, size, mtime, content.
pub(super) fn snapshot(root: &Path, skip: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(dir: &Path, skip: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if p == skip {
                continue;
            }
            let Ok(m) = fs::symlink_metadata(&p) else {
                continue;
            };
            let mut desc = format!(
                "{:o} {}:{} {} {}.{}",
                m.mode(),
                m.uid(),
                m.gid(),
                m.size(),
                m.mtime(),
                m.mtime_nsec()
            );
            if m.is_file() {
                desc.push_str(&format!(" {:?}", fs::read(&p).unwrap_or_default()));
            } else if m.file_type().is_symlink() {
                desc.push_str(&format!(" -> {:?}", fs::read_link(&p).ok()));
            }
            out.insert(p.clone(), desc);
            if m.is_dir() {
                walk(&p, skip, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, skip, &mut out);
    out
}

/// `<tmp>/dest` (empty) and `<tmp>/victim/{file, dir/inner}`.
pub(super) fn arena() -> (tempfile::TempDir, PathBuf) {
    arena_in(&std::env::temp_dir())
}

pub(super) fn arena_in(base: &Path) -> (tempfile::TempDir, PathBuf) {
    let (tmp, dest) = super::tests::scratch_in(base);
    let victim = tmp.path().join("victim");
    fs::create_dir_all(victim.join("dir")).unwrap();
    fs::write(victim.join("file"), "victim").unwrap();
    fs::write(victim.join("dir/inner"), "inner").unwrap();
    (tmp, dest)
}

/// Places an escaping write would reach besides the arena.
pub(super) fn assert_no_pwned_outside(tmp: &Path) {
    for p in [
        tmp.parent().unwrap().join(PWNED),
        Path::new("/").join(PWNED),
        Path::new("/etc").join(PWNED),
        tmp.join(PWNED),
    ] {
        assert!(
            fs::symlink_metadata(&p).is_err(),
            "{} was created",
            p.display()
        );
    }
}

struct Case {
    file: String,
    ok: bool,
    what: String,
}

fn cases() -> Vec<Case> {
    let text = fs::read_to_string(corpus_dir().join("cases.txt")).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let mut it = l.splitn(3, '\t');
            let (file, expect, what) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
            assert!(expect == "ok" || expect == "error", "{l}");
            Case {
                file: file.to_string(),
                ok: expect == "ok",
                what: what.to_string(),
            }
        })
        .collect()
}

#[test]
fn corpus_is_complete_and_small() {
    let listed: Vec<String> = cases().into_iter().map(|c| c.file).collect();
    let mut on_disk: Vec<String> = fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tar"))
        .collect();
    on_disk.sort();
    let mut listed_sorted = listed.clone();
    listed_sorted.sort();
    assert_eq!(
        listed_sorted, on_disk,
        "cases.txt and the .tar files disagree: run make.py"
    );
    for name in &on_disk {
        assert!(
            fs::metadata(corpus_dir().join(name)).unwrap().len() < 10 * 1024,
            "{name}"
        );
    }
    assert!(on_disk.len() >= 11);
}

#[test]
fn hostile_corpus() {
    for case in cases() {
        let data = fs::read(corpus_dir().join(&case.file)).unwrap();
        for overlay_whiteouts in [false, true] {
            let label = format!("{} (overlay_whiteouts={overlay_whiteouts})", case.file);
            let (tmp, dest) = arena();
            let before = snapshot(tmp.path(), &dest);
            let opts = UnpackOptions {
                overlay_whiteouts,
                ..Default::default()
            };
            let res = unpack_layer(&data[..], &dest, &opts);
            assert_eq!(
                snapshot(tmp.path(), &dest),
                before,
                "{label}: something outside dest changed"
            );
            assert_no_pwned_outside(tmp.path());
            if case.ok {
                if let Err(e) = &res {
                    panic!("{label}: {e}");
                }
                let m = fs::symlink_metadata(dest.join(&case.what))
                    .unwrap_or_else(|e| panic!("{label}: {e}"));
                assert!(m.is_file(), "{label}: {} is not a regular file", case.what);
            } else {
                let err = match res {
                    Ok(_) => panic!("{label}: unpacked without error"),
                    Err(e) => e,
                };
                let msg = err.to_string();
                assert!(msg.contains(&format!("{:?}", case.what)), "{label}: {msg}");
                assert!(err.rejection().is_some(), "{label}: not a rejection: {msg}");
            }
        }
    }
}
