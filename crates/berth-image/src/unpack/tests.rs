//! Round trips of every kind of entry, digests, whiteouts in both modes, id shifting and
//! replacement rules. Run as root (devices, ownership, trusted.* xattrs).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

use super::*;

// ---------------------------------------------------------------------------------------
// Building archives byte by byte, so that hostile names survive (tar::Builder refuses them).

pub(super) struct Tb {
    out: Vec<u8>,
}

pub(super) struct E<'a> {
    pub kind: EntryType,
    pub path: &'a [u8],
    pub link: Option<&'a [u8]>,
    pub data: &'a [u8],
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub dev: (u32, u32),
}

impl<'a> E<'a> {
    pub fn new(kind: EntryType, path: &'a str) -> E<'a> {
        E {
            kind,
            path: path.as_bytes(),
            link: None,
            data: b"",
            mode: if kind == EntryType::Directory {
                0o755
            } else {
                0o644
            },
            uid: 0,
            gid: 0,
            mtime: 1_600_000_000,
            dev: (0, 0),
        }
    }
}

impl Tb {
    pub fn new() -> Tb {
        Tb { out: Vec::new() }
    }

    fn block(&mut self, h: &Header, data: &[u8]) {
        self.out.extend_from_slice(h.as_bytes());
        self.out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.out.extend(std::iter::repeat_n(0, pad));
    }

    fn long(&mut self, kind: u8, value: &[u8]) {
        let mut h = Header::new_gnu();
        h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        h.set_entry_type(EntryType::new(kind));
        h.set_mode(0o644);
        let mut data = value.to_vec();
        data.push(0);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.block(&h, &data);
    }

    /// A PAX extended header for the next entry.
    pub fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Tb {
        let mut data = Vec::new();
        for (k, v) in records {
            // "len key=value\n" where len counts itself.
            let body = k.len() + v.len() + 3;
            let mut len = body + 1;
            while len != body + len.to_string().len() {
                len = body + len.to_string().len();
            }
            data.extend_from_slice(format!("{len} {k}=").as_bytes());
            data.extend_from_slice(v);
            data.push(b'\n');
        }
        let mut h = Header::new_ustar();
        h.as_old_mut().name[..9].copy_from_slice(b"PaxHeader");
        h.set_entry_type(EntryType::XHeader);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.block(&h, &data);
        self
    }

    pub fn add(&mut self, e: E<'_>) -> &mut Tb {
        let mut h = Header::new_gnu();
        if e.path.len() > 100 {
            self.long(b'L', e.path);
            h.as_old_mut().name.copy_from_slice(&e.path[..100]);
        } else {
            h.as_old_mut().name[..e.path.len()].copy_from_slice(e.path);
        }
        if let Some(link) = e.link {
            if link.len() > 100 {
                self.long(b'K', link);
                h.as_old_mut().linkname.copy_from_slice(&link[..100]);
            } else {
                h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
            }
        }
        h.set_entry_type(e.kind);
        h.set_mode(e.mode);
        h.set_uid(e.uid);
        h.set_gid(e.gid);
        h.set_mtime(e.mtime);
        h.set_size(e.data.len() as u64);
        if matches!(e.kind, EntryType::Char | EntryType::Block) {
            h.set_device_major(e.dev.0).unwrap();
            h.set_device_minor(e.dev.1).unwrap();
        }
        h.set_cksum();
        self.block(&h, e.data);
        self
    }

    pub fn file(&mut self, path: &str, data: &[u8]) -> &mut Tb {
        self.add(E {
            data,
            ..E::new(EntryType::Regular, path)
        })
    }

    pub fn dir(&mut self, path: &str) -> &mut Tb {
        self.add(E::new(EntryType::Directory, path))
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Tb {
        self.add(E {
            link: Some(target.as_bytes()),
            mode: 0o777,
            ..E::new(EntryType::Symlink, path)
        })
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Tb {
        self.add(E {
            link: Some(target.as_bytes()),
            ..E::new(EntryType::Link, path)
        })
    }

    /// End-of-archive blocks plus padding to a 10 KiB record, as GNU tar writes.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.out);
        out.extend(std::iter::repeat_n(0, 1024));
        let rem = out.len() % 10240;
        if rem != 0 {
            out.extend(std::iter::repeat_n(0, 10240 - rem));
        }
        out
    }
}

pub(super) fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub(super) fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 1).unwrap()
}

/// A fresh `<tmp>/dest` to unpack into.
pub(super) fn scratch() -> (tempfile::TempDir, PathBuf) {
    scratch_in(&std::env::temp_dir())
}

pub(super) fn scratch_in(base: &Path) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::Builder::new()
        .prefix("berth-unpack-")
        .tempdir_in(base)
        .unwrap();
    let dest = tmp.path().join("dest");
    fs::create_dir(&dest).unwrap();
    (tmp, dest)
}

fn unpack(data: &[u8], dest: &Path, opts: &UnpackOptions) -> Result<UnpackReport, UnpackError> {
    unpack_layer(data, dest, opts)
}

fn lxattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    match rustix::fs::lgetxattr(path, name, &mut buf[..]) {
        Ok(n) => {
            buf.truncate(n);
            Some(buf)
        }
        Err(_) => None,
    }
}

fn meta(p: &Path) -> fs::Metadata {
    fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

// ---------------------------------------------------------------------------------------

/// A v2 file capability: cap_net_bind_service, effective.
fn cap_net_bind() -> Vec<u8> {
    let mut v = Vec::new();
    for w in [0x0200_0001u32, 1 << 10, 0, 0, 0] {
        v.extend_from_slice(&w.to_le_bytes());
    }
    v
}

pub(super) fn every_kind() -> Vec<u8> {
    let long_dir = "d".repeat(120);
    let long_file = format!("{long_dir}/{}", "f".repeat(150));
    let mut t = Tb::new();
    t.add(E {
        mtime: 1000,
        ..E::new(EntryType::Directory, "etc/")
    });
    t.add(E {
        data: b"root:x:0:0::/root:/bin/sh\n",
        mtime: 2000,
        ..E::new(EntryType::Regular, "etc/passwd")
    });
    // No entry for "bin": the parent is created implicitly.
    t.add(E {
        data: b"#!/bin/sh\n",
        mode: 0o4755,
        ..E::new(EntryType::Regular, "bin/su")
    });
    t.hardlink("bin/su-again", "bin/su");
    t.add(E {
        mode: 0o1777,
        ..E::new(EntryType::Directory, "tmp")
    });
    t.add(E {
        link: Some(b"/usr/share/zoneinfo/UTC"),
        uid: 1,
        gid: 2,
        mtime: 3000,
        ..E::new(EntryType::Symlink, "etc/localtime")
    });
    t.add(E {
        mode: 0o666,
        dev: (1, 3),
        ..E::new(EntryType::Char, "dev/null")
    });
    t.add(E {
        mode: 0o660,
        dev: (8, 0),
        gid: 6,
        ..E::new(EntryType::Block, "dev/sda")
    });
    t.add(E {
        mode: 0o600,
        ..E::new(EntryType::Fifo, "run/fifo")
    });
    t.add(E {
        data: b"mine",
        uid: 1000,
        gid: 1001,
        mode: 0o2750,
        ..E::new(EntryType::Regular, "home/u/file")
    });
    let cap = cap_net_bind();
    t.pax(&[
        ("SCHILY.xattr.user.note", b"hello"),
        ("SCHILY.xattr.security.capability", &cap),
        (
            "SCHILY.xattr.security.selinux",
            b"system_u:object_r:bin_t:s0",
        ),
        ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
        ("mtime", b"1700000000.25"),
    ]);
    t.file("usr/bin/ping", b"\x7fELF");
    t.pax(&[("SCHILY.xattr.user.dir", b"d")]);
    t.dir("usr/share");
    t.file(&long_file, b"long");
    t.pax(&[(
        "path",
        format!("pax/{}/{}", "p".repeat(200), "q".repeat(100)).as_bytes(),
    )]);
    t.file("ignored-name", b"pax");
    t.add(E {
        data: b"old",
        ..E::new(EntryType::Continuous, "contiguous")
    });
    t.add(E {
        mtime: 4000,
        ..E::new(EntryType::Directory, "./")
    });
    t.finish()
}

fn check_every_kind(dest: &Path, shift: u32) {
    let m = meta(&dest.join("etc/passwd"));
    assert_eq!(
        fs::read(dest.join("etc/passwd")).unwrap(),
        b"root:x:0:0::/root:/bin/sh\n"
    );
    assert_eq!(m.mode() & 0o7777, 0o644);
    assert_eq!(m.mtime(), 2000);
    assert_eq!((m.uid(), m.gid()), (shift, shift));

    let etc = meta(&dest.join("etc"));
    assert!(etc.is_dir());
    assert_eq!(
        etc.mtime(),
        1000,
        "directory mtime is set after its contents"
    );

    let su = meta(&dest.join("bin/su"));
    assert_eq!(su.mode() & 0o7777, 0o4755, "setuid survives chown");
    let again = meta(&dest.join("bin/su-again"));
    assert_eq!(su.ino(), again.ino());
    assert_eq!(su.nlink(), 2);
    let bin = meta(&dest.join("bin"));
    assert_eq!(bin.mode() & 0o7777, 0o755);
    assert_eq!(
        (bin.uid(), bin.gid()),
        (shift, shift),
        "implicit parents belong to the layer root"
    );

    assert_eq!(meta(&dest.join("tmp")).mode() & 0o7777, 0o1777);

    let lt = meta(&dest.join("etc/localtime"));
    assert!(lt.file_type().is_symlink());
    assert_eq!(
        fs::read_link(dest.join("etc/localtime")).unwrap(),
        Path::new("/usr/share/zoneinfo/UTC")
    );
    assert_eq!((lt.uid(), lt.gid()), (shift + 1, shift + 2));
    assert_eq!(lt.mtime(), 3000);

    let null = meta(&dest.join("dev/null"));
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
    assert_eq!(
        null.mode() & 0o7777,
        0o666,
        "device mode is not subject to the umask"
    );
    let sda = meta(&dest.join("dev/sda"));
    assert!(sda.file_type().is_block_device());
    assert_eq!(sda.rdev(), rustix::fs::makedev(8, 0));
    assert_eq!(sda.gid(), shift + 6);
    assert!(meta(&dest.join("run/fifo")).file_type().is_fifo());

    let f = meta(&dest.join("home/u/file"));
    assert_eq!((f.uid(), f.gid()), (shift + 1000, shift + 1001));
    assert_eq!(f.mode() & 0o7777, 0o2750);

    let ping = dest.join("usr/bin/ping");
    assert_eq!(lxattr(&ping, "user.note").as_deref(), Some(&b"hello"[..]));
    assert_eq!(lxattr(&ping, "security.capability"), Some(cap_net_bind()));
    assert_eq!(lxattr(&ping, "security.selinux"), None);
    assert_eq!(lxattr(&ping, "trusted.overlay.redirect"), None);
    let pm = meta(&ping);
    assert_eq!((pm.mtime(), pm.mtime_nsec()), (1_700_000_000, 250_000_000));
    assert_eq!(
        lxattr(&dest.join("usr/share"), "user.dir").as_deref(),
        Some(&b"d"[..])
    );

    let long_file = dest.join("d".repeat(120)).join("f".repeat(150));
    assert_eq!(fs::read(long_file).unwrap(), b"long");
    let pax = dest.join("pax").join("p".repeat(200)).join("q".repeat(100));
    assert_eq!(fs::read(pax).unwrap(), b"pax");
    assert!(!dest.join("ignored-name").exists());
    assert_eq!(fs::read(dest.join("contiguous")).unwrap(), b"old");
    assert_eq!(meta(dest).mtime(), 4000, "the root entry applies to dest");
}

#[test]
fn every_kind_round_trips_plain_gzip_zstd() {
    let tar = every_kind();
    for (name, data) in [
        ("plain", tar.clone()),
        ("gzip", gzip(&tar)),
        ("zstd", zstd(&tar)),
    ] {
        let (_tmp, dest) = scratch();
        let report = unpack(&data, &dest, &UnpackOptions::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(report.diff_id, Digest::of(&tar), "{name}");
        assert_eq!(report.compressed_digest, Digest::of(&data), "{name}");
        assert_eq!(report.compressed_size, data.len() as u64, "{name}");
        assert_eq!(report.entries, 16, "{name}");
        check_every_kind(&dest, 0);
    }
}

#[test]
fn id_shift_moves_every_owner_into_the_range() {
    let tar = every_kind();
    let (_tmp, dest) = scratch();
    let opts = UnpackOptions {
        id_shift: Some(IdShift {
            uid: 100_000,
            gid: 100_000,
            size: 65536,
        }),
        ..Default::default()
    };
    unpack(&tar, &dest, &opts).unwrap();
    check_every_kind(&dest, 100_000);

    let tar = Tb::new()
        .add(E {
            uid: 70_000,
            ..E::new(EntryType::Regular, "big/uid")
        })
        .finish();
    let (_tmp, dest) = scratch();
    let err = unpack(&tar, &dest, &opts).unwrap_err();
    assert_eq!(
        err.to_string(),
        "layer entry \"big/uid\": uid 70000 is outside the id shift range (size 65536)"
    );
}

#[test]
fn detect_magic() {
    assert_eq!(detect(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
    assert_eq!(detect(&[0x28, 0xb5, 0x2f, 0xfd]), Compression::Zstd);
    assert_eq!(detect(b"etc/"), Compression::None);
    assert_eq!(detect(&[0x1f]), Compression::None);
    assert_eq!(detect(&[]), Compression::None);
}

#[test]
fn empty_and_padded_streams() {
    let (_tmp, dest) = scratch();
    let r = unpack(b"", &dest, &UnpackOptions::default()).unwrap();
    assert_eq!((r.entries, r.diff_id.clone()), (0, Digest::of(b"")));
    // Bytes after the end-of-archive blocks still count in diff_id.
    let mut tar = Tb::new().file("a", b"a").finish();
    tar.extend_from_slice(&[0u8; 4096]);
    let data = gzip(&tar);
    let r = unpack(&data, &dest, &UnpackOptions::default()).unwrap();
    assert_eq!(r.diff_id, Digest::of(&tar));
    assert_eq!(r.compressed_digest, Digest::of(&data));
}

#[test]
fn multi_member_gzip_and_multi_frame_zstd() {
    let a = Tb::new().file("a", b"a").finish();
    // Two gzip members holding one tar: what `pigz --independent`-like tools produce.
    let (first, second) = a.split_at(700);
    let mut data = gzip(first);
    data.extend_from_slice(&gzip(second));
    let (_tmp, dest) = scratch();
    let r = unpack(&data, &dest, &UnpackOptions::default()).unwrap();
    assert_eq!(r.diff_id, Digest::of(&a));
    assert_eq!(fs::read(dest.join("a")).unwrap(), b"a");
    let mut data = zstd(first);
    data.extend_from_slice(&zstd(second));
    let (_tmp, dest) = scratch();
    assert_eq!(
        unpack(&data, &dest, &UnpackOptions::default())
            .unwrap()
            .diff_id,
        Digest::of(&a)
    );
}

#[test]
fn corrupt_streams_are_errors() {
    let tar = Tb::new().file("a", &[7u8; 5000]).finish();
    let (_tmp, dest) = scratch();
    // Truncated inside the file data.
    let err = unpack(&tar[..2000], &dest, &UnpackOptions::default()).unwrap_err();
    assert!(
        err.to_string().starts_with("reading layer entry \"a\""),
        "{err}"
    );
    let mut gz = gzip(&tar);
    let n = gz.len();
    gz.truncate(n / 2);
    assert!(unpack(&gz, &dest, &UnpackOptions::default()).is_err());
    let mut bad = tar.clone();
    bad[10] ^= 0xff;
    let err = unpack(&bad, &dest, &UnpackOptions::default()).unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
    assert!(matches!(
        unpack_layer(&b""[..], &dest.join("missing"), &UnpackOptions::default()),
        Err(UnpackError::Dest { .. })
    ));
}

#[test]
fn gnu_sparse_file_is_written_with_holes() {
    let mut h = Header::new_gnu();
    h.as_old_mut().name[..6].copy_from_slice(b"sparse");
    h.set_entry_type(EntryType::GNUSparse);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(1024);
    {
        let gnu = h.as_gnu_mut().unwrap();
        gnu.sparse[0].set_offset(0);
        gnu.sparse[0].set_length(512);
        gnu.sparse[1].set_offset(1 << 20);
        gnu.sparse[1].set_length(512);
        gnu.set_real_size((1 << 20) + 512);
    }
    h.set_cksum();
    let mut tar = h.as_bytes().to_vec();
    tar.extend_from_slice(&[b'a'; 512]);
    tar.extend_from_slice(&[b'b'; 512]);
    tar.extend_from_slice(&[0; 1024]);
    let (_tmp, dest) = scratch();
    unpack(&tar, &dest, &UnpackOptions::default()).unwrap();
    let data = fs::read(dest.join("sparse")).unwrap();
    assert_eq!(data.len(), (1 << 20) + 512);
    assert!(data[..512].iter().all(|&b| b == b'a'));
    assert!(data[512..1 << 20].iter().all(|&b| b == 0));
    assert!(data[1 << 20..].iter().all(|&b| b == b'b'));
    assert!(
        meta(&dest.join("sparse")).blocks() * 512 < 1 << 20,
        "the hole is not written"
    );
}

fn populate(dest: &Path, files: &[&str]) {
    for f in files {
        let p = dest.join(f);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, f).unwrap();
    }
}

fn tree(dest: &Path) -> BTreeMap<String, String> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            let m = meta(&p);
            let kind = if m.is_dir() {
                walk(base, &p, out);
                "dir".to_string()
            } else if m.file_type().is_char_device() {
                format!("chr {}", m.rdev())
            } else if m.file_type().is_symlink() {
                format!("-> {}", fs::read_link(&p).unwrap().display())
            } else {
                format!("file {}", String::from_utf8_lossy(&fs::read(&p).unwrap()))
            };
            out.insert(rel, kind);
        }
    }
    let mut out = BTreeMap::new();
    walk(dest, dest, &mut out);
    out
}

pub(super) fn whiteout_layer() -> Vec<u8> {
    Tb::new()
        .dir("a")
        .file("a/.wh.x", b"")
        .file("b/kept-before-opq", b"k")
        .file("b/.wh..wh..opq", b"")
        .file("b/new", b"n")
        .file(".wh.gone-dir", b"")
        .file("c/.wh..wh.plnk", b"")
        .finish()
}

#[test]
fn whiteouts_applied() {
    let (_tmp, dest) = scratch();
    populate(&dest, &["a/x", "a/y", "b/z", "b/sub/deep", "gone-dir/f/g"]);
    unpack(&whiteout_layer(), &dest, &UnpackOptions::default()).unwrap();
    let got = tree(&dest);
    let want: BTreeMap<String, String> = [
        ("a", "dir"),
        ("a/y", "file a/y"),
        ("b", "dir"),
        ("b/kept-before-opq", "file k"),
        ("b/new", "file n"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(got, want);
}

#[test]
fn whiteouts_as_overlay_markers() {
    let (_tmp, dest) = scratch();
    let opts = UnpackOptions {
        overlay_whiteouts: true,
        ..Default::default()
    };
    unpack(&whiteout_layer(), &dest, &opts).unwrap();
    let got = tree(&dest);
    assert_eq!(got["a/x"], "chr 0", "whiteout is char device 0:0");
    assert_eq!(got["gone-dir"], "chr 0");
    assert_eq!(got["b/new"], "file n");
    assert_eq!(got["b/kept-before-opq"], "file k");
    assert!(!got.contains_key("b/.wh..wh..opq"));
    assert!(!got.contains_key("c/.wh..wh.plnk"));
    assert_eq!(
        lxattr(&dest.join("b"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(lxattr(&dest.join("a"), "trusted.overlay.opaque"), None);
}

#[test]
fn replacement_rules() {
    let (tmp, dest) = scratch();
    let outside = tmp.path().join("outside");
    fs::write(&outside, "victim").unwrap();
    populate(&dest, &["was-dir/child/grandchild", "was-file"]);
    std::os::unix::fs::symlink(&outside, dest.join("was-link")).unwrap();
    std::os::unix::fs::symlink(&outside, dest.join("link-to-dir")).unwrap();
    let tar = Tb::new()
        .file("was-dir", b"now a file")
        .dir("was-file")
        .file("was-link", b"replaced")
        .dir("link-to-dir")
        .file("link-to-dir/inside", b"in")
        .symlink("was-file", "elsewhere")
        .finish();
    unpack(&tar, &dest, &UnpackOptions::default()).unwrap();
    assert_eq!(fs::read(dest.join("was-dir")).unwrap(), b"now a file");
    assert_eq!(
        fs::read_link(dest.join("was-file")).unwrap(),
        Path::new("elsewhere")
    );
    assert!(meta(&dest.join("was-link")).is_file());
    assert_eq!(fs::read(dest.join("was-link")).unwrap(), b"replaced");
    assert!(meta(&dest.join("link-to-dir")).is_dir());
    assert_eq!(fs::read(&outside).unwrap(), b"victim");
}

#[test]
fn parent_cache_does_not_outlive_a_replaced_directory() {
    let (tmp, dest) = scratch();
    fs::create_dir(tmp.path().join("victim")).unwrap();
    let tar = Tb::new()
        .dir("a")
        .dir("a/b")
        .file("a/b/one", b"1")
        .symlink("a", "../victim")
        .file("a/b/two", b"2")
        .finish();
    let err = unpack(&tar, &dest, &UnpackOptions::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "layer entry \"a/b/two\": path goes through symlink \"a\""
    );
    assert_eq!(fs::read_dir(tmp.path().join("victim")).unwrap().count(), 0);
}

#[test]
fn messages_name_the_entry() {
    let (_tmp, dest) = scratch();
    let tar = Tb::new().file("../etc/passwd", b"x").finish();
    let err = unpack(&tar, &dest, &UnpackOptions::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "layer entry \"../etc/passwd\": path escapes the layer"
    );
    assert_eq!(err.rejection(), Some(&Rejection::Escapes));

    let tar = Tb::new().file("f", b"x").file("f/g", b"y").finish();
    let err = unpack(&tar, &dest, &UnpackOptions::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "layer entry \"f/g\": path goes through \"f\", which is not a directory"
    );

    let tar = Tb::new().hardlink("h", "nowhere").finish();
    let err = unpack(&tar, &dest, &UnpackOptions::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "layer entry \"h\": hardlink target \"nowhere\" is not an earlier entry of this layer"
    );
    let tar = Tb::new()
        .add(E::new(EntryType::new(b'V'), "label"))
        .finish();
    let err = unpack(&tar, &dest, &UnpackOptions::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "layer entry \"label\": unsupported entry type 'V'"
    );
}

#[test]
fn io_errors_say_what_was_done() {
    let (_tmp, dest) = scratch();
    // A name longer than NAME_MAX passes the lexical check only up to 255 bytes.
    let name = "n".repeat(255);
    let tar = Tb::new().file(&name, b"ok").finish();
    unpack(&tar, &dest, &UnpackOptions::default()).unwrap();
    let e = UnpackError::Io {
        entry: "a/b".into(),
        op: "creating file",
        errno: rustix::io::Errno::EXIST,
    };
    assert_eq!(
        e.to_string(),
        "unpacking layer entry \"a/b\": creating file: EEXIST"
    );
}

#[test]
fn absolute_paths_land_inside() {
    let (_tmp, dest) = scratch();
    let tar = Tb::new()
        .file("/abs/file", b"x")
        .hardlink("/abs/link", "/abs/file")
        .finish();
    unpack(&tar, &dest, &UnpackOptions::default()).unwrap();
    assert_eq!(fs::read(dest.join("abs/file")).unwrap(), b"x");
    assert_eq!(meta(&dest.join("abs/link")).nlink(), 2);
}

#[test]
fn modes_are_exact_whatever_the_umask() {
    let (_tmp, dest) = scratch();
    let tar = Tb::new()
        .add(E {
            mode: 0o777,
            ..E::new(EntryType::Regular, "all")
        })
        .add(E {
            mode: 0o777,
            ..E::new(EntryType::Directory, "d")
        })
        .finish();
    unpack(&tar, &dest, &UnpackOptions::default()).unwrap();
    assert_eq!(
        fs::metadata(dest.join("all")).unwrap().permissions().mode() & 0o7777,
        0o777
    );
    assert_eq!(
        fs::metadata(dest.join("d")).unwrap().permissions().mode() & 0o7777,
        0o777
    );
}

/// Throughput on a real layer: `BERTH_UNPACK_BENCH=/path/layer.tar.gz cargo test --release
/// -p berth-image unpack::tests::bench -- --ignored --nocapture` (dest: a temp dir next to
/// the layer, removed afterwards). On ext4 without a journal, inode allocation is slow for
/// ~30 s after mass deletes (ext4 skips recently deleted inodes): leave time between runs.
#[test]
#[ignore]
fn bench() {
    let Ok(layer) = std::env::var("BERTH_UNPACK_BENCH") else {
        eprintln!("set BERTH_UNPACK_BENCH to a layer file");
        return;
    };
    let layer = PathBuf::from(layer);
    {
        let overlay_whiteouts = true;
        let tmp = tempfile::Builder::new()
            .prefix("berth-unpack-bench-")
            .tempdir_in(layer.parent().unwrap())
            .unwrap();
        let file = fs::File::open(&layer).unwrap();
        let start = std::time::Instant::now();
        let opts = UnpackOptions {
            overlay_whiteouts,
            ..Default::default()
        };
        let r = unpack_layer(file, tmp.path(), &opts).unwrap();
        let secs = start.elapsed().as_secs_f64();
        let uncompressed = fs::metadata(&layer).map(|m| m.len()).unwrap_or(0);
        eprintln!(
            "{} entries, {:.1} MB compressed in {secs:.2}s: {:.0} MB/s compressed ({uncompressed} bytes read)",
            r.entries,
            r.compressed_size as f64 / 1e6,
            r.compressed_size as f64 / 1e6 / secs,
        );
    }
}
