//! Arbitrary bytes as a layer stream: unpack_layer must return Ok or Err, never panic
//! (libFuzzer reports a panic or abort as a crash), and never write outside dest.

#![no_main]

use std::fs;
use std::path::Path;

use berth_image::unpack::{unpack_layer, UnpackOptions};
use libfuzzer_sys::fuzz_target;

/// Sorted listing of everything under `dir`, with sizes.
fn listing(dir: &Path, out: &mut Vec<(String, u64)>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue;
        };
        out.push((p.display().to_string(), m.len()));
        if m.is_dir() {
            listing(&p, out);
        }
    }
    out.sort();
}

fuzz_target!(|data: &[u8]| {
    let tmp = tempfile::tempdir().expect("tempdir");
    let victim = tmp.path().join("victim");
    fs::create_dir_all(victim.join("dir")).expect("victim");
    fs::write(victim.join("file"), "victim").expect("victim file");
    let mut before = Vec::new();
    listing(&victim, &mut before);

    for overlay_whiteouts in [false, true] {
        let dest = tmp.path().join(if overlay_whiteouts {
            "overlay"
        } else {
            "apply"
        });
        fs::create_dir(&dest).expect("dest");
        let opts = UnpackOptions {
            overlay_whiteouts,
            id_shift: None,
        };
        let _ = unpack_layer(data, &dest, &opts);

        let mut after = Vec::new();
        listing(&victim, &mut after);
        assert_eq!(before, after, "the victim next to dest changed");
        for name in fs::read_dir(tmp.path()).expect("tmp").flatten() {
            let n = name.file_name();
            assert!(
                n == "victim" || n == "apply" || n == "overlay",
                "unexpected {:?} next to dest",
                n
            );
        }
    }
});
