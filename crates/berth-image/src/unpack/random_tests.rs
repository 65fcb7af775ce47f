//! A stable-Rust stand-in for the cargo-fuzz target (fuzz/): deterministic, xorshift-driven
//! mutations of valid and hostile layers, several thousand of them within a time budget.
//! Every case must end in Ok or Err: no panic, and nothing written outside dest.

use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::time::Instant;

use tar::Header;

use super::hostile_tests::{arena_in, assert_no_pwned_outside, snapshot, PWNED};
use super::tests::{every_kind, gzip, whiteout_layer, zstd, Tb};
use super::*;

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const NAMES: &[&str] = &[
    "../victim/berth-hostile-pwned",
    "/etc/berth-hostile-pwned",
    "a/../../victim/berth-hostile-pwned",
    "l/berth-hostile-pwned",
    "l",
    "l/",
    "a",
    "a/b",
    ".",
    "./",
    "",
    "..",
    ".wh..",
    ".wh...",
    "../.wh.victim",
    "a/.wh..wh..opq",
    ".wh..wh..opq",
    "l/.wh.file",
    "etc/passwd",
    "//a//b//",
];

const LINKS: &[&str] = &[
    "../victim",
    "../victim/file",
    "/etc",
    "/etc/passwd",
    "l",
    "a",
    "a/b",
    ".",
    "..",
    "",
    "l/file",
];

const TYPES: &[u8] = b"0123456789xgLKSVDMN\0";

fn seeds() -> Vec<Vec<u8>> {
    let mut seeds = vec![
        every_kind(),
        whiteout_layer(),
        Tb::new()
            .symlink("l", "../victim")
            .dir("a")
            .file("a/b", b"data")
            .hardlink("h", "a/b")
            .file("l/file", b"x")
            .finish(),
    ];
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile");
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "tar"))
        .collect();
    names.sort();
    seeds.extend(names.iter().map(|p| fs::read(p).unwrap()));
    seeds
}

fn set_field(block: &mut [u8], off: usize, len: usize, value: &[u8]) {
    let field = &mut block[off..off + len];
    field.fill(0);
    let n = value.len().min(len);
    field[..n].copy_from_slice(&value[..n]);
}

/// One header-aware or blind mutation; headers keep a valid checksum so that the
/// mutation reaches the unpacker rather than dying in the tar parser.
fn mutate(rng: &mut XorShift, data: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    let blocks = data.len() / 512;
    match rng.below(8) {
        0 => {
            for _ in 0..1 + rng.below(8) {
                if !data.is_empty() {
                    let i = rng.below(data.len());
                    data[i] ^= 1 << rng.below(8);
                }
            }
        }
        1 => {
            let n = rng.below(data.len() + 1);
            data.truncate(n);
        }
        2 if blocks > 0 => {
            // Copy a block of another seed over one of ours (mixes headers and data).
            let other = rng.pick(seeds);
            if other.len() >= 512 {
                let from = rng.below(other.len() / 512) * 512;
                let to = rng.below(blocks) * 512;
                data[to..to + 512].copy_from_slice(&other[from..from + 512]);
            }
        }
        _ if blocks > 0 => {
            let at = rng.below(blocks) * 512;
            let block = &mut data[at..at + 512];
            match rng.below(7) {
                0 => set_field(block, 0, 100, rng.pick(NAMES).as_bytes()),
                1 => block[156] = *rng.pick(TYPES),
                2 => set_field(block, 157, 100, rng.pick(LINKS).as_bytes()),
                3 => {
                    let size = [0u64, 1, 511, 512, 513, 1 << 20, 0o77777777777][rng.below(7)];
                    set_field(block, 124, 12, format!("{size:011o}").as_bytes());
                }
                4 => {
                    let id = [0u64, 1, 65535, 65536, 0o7777777][rng.below(5)];
                    set_field(block, 108, 8, format!("{id:07o}").as_bytes());
                }
                5 => {
                    // Symlink planted to the victim, then the next entry goes through it.
                    set_field(block, 0, 100, b"l");
                    block[156] = b'2';
                    set_field(block, 157, 100, b"../victim");
                }
                _ => set_field(
                    block,
                    100,
                    8,
                    format!("{:07o}", rng.next() & 0o7777).as_bytes(),
                ),
            }
            let mut h = Header::new_old();
            h.as_mut_bytes().copy_from_slice(block);
            h.set_cksum();
            block.copy_from_slice(h.as_bytes());
        }
        _ => {}
    }
}

#[test]
fn random_mutations_never_panic_nor_escape() {
    let seeds = seeds();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    // A fixed, deterministic number of cases (same inputs every run), not a time budget:
    // a loaded CI machine must not change what the test checks.
    const CASES: u32 = 300;
    let start = Instant::now();
    // On tmpfs when there is one: thousands of create/delete cycles are cheap there, and
    // ext4 without a journal slows down inode allocation after mass deletes.
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let (tmp, _) = arena_in(&base);
    let dest = tmp.path().join("dest");
    let before = snapshot(tmp.path(), &dest);
    let mut cases = 0u32;
    let mut oks = 0u32;
    while cases < CASES {
        let mut data = rng.pick(&seeds).clone();
        for _ in 0..1 + rng.below(4) {
            mutate(&mut rng, &mut data, &seeds);
        }
        let data = match rng.below(6) {
            0 => gzip(&data),
            1 => zstd(&data),
            _ => data,
        };
        let opts = UnpackOptions {
            overlay_whiteouts: rng.below(2) == 0,
            id_shift: (rng.below(4) == 0).then_some(IdShift {
                uid: 100_000,
                gid: 100_000,
                size: 65536,
            }),
        };
        let _ = fs::remove_dir_all(&dest);
        fs::create_dir(&dest).unwrap();
        let result =
            panic::catch_unwind(AssertUnwindSafe(|| unpack_layer(&data[..], &dest, &opts)));
        match result {
            Ok(Ok(_)) => oks += 1,
            Ok(Err(e)) => assert!(!e.to_string().is_empty()),
            Err(_) => {
                let path = std::env::temp_dir().join(format!("berth-unpack-panic-{cases}.bin"));
                let _ = fs::write(&path, &data);
                panic!("case {cases} panicked; input saved to {}", path.display());
            }
        }
        assert_eq!(
            snapshot(tmp.path(), &dest),
            before,
            "case {cases}: something outside dest changed"
        );
        assert_no_pwned_outside(tmp.path());
        cases += 1;
    }
    eprintln!(
        "{cases} cases ({oks} unpacked cleanly) in {:?}",
        start.elapsed()
    );
    assert!(!Path::new("/").join(PWNED).exists());
}
