//! Per-container host id ranges for user namespaces (podman's `--userns=auto`).
//!
//! Each container gets its own range of host ids (65536 by default, so that images'
//! `nobody` at 65534 is mapped); container id 0 maps to the range's start, for both uids
//! and gids. Ranges never overlap, so one container's root can't own another's files.
//!
//! Allocations persist in a JSON file (`Paths::userns_db`) changed only under an exclusive
//! flock on `<db>.lock` and replaced atomically (write temp, fsync, rename, fsync dir), so
//! concurrent `berth run`s in threads or processes get disjoint ranges and a crash leaves
//! the old or the new file, never a torn one. A corrupt file is an error, never reset:
//! forgetting live ranges would hand them out twice.
//!
//! ## The pool
//!
//! If /etc/subuid and /etc/subgid have an entry for `berth` (else `containers`, podman's
//! convention), the pool is that range (the part common to both files). Otherwise it is
//! [`DEFAULT_POOL_START`]..+[`DEFAULT_POOL_SIZE`] = 0x70000000..0x7FFF0000: 4095 ranges of
//! 65536 above useradd's SUB_UID_MAX (600100000), below 2^31 (ids some tools treat as
//! signed), and in the block systemd leaves unused (its nspawn ranges end at 0x6FFFFFFF,
//! its "foreign" range starts at 0x7FFF0000). Any /etc/subuid or /etc/subgid entry that
//! still overlaps it is left alone.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Ids per container unless configured otherwise.
pub const DEFAULT_RANGE_SIZE: u32 = 65536;
pub const DEFAULT_POOL_START: u32 = 0x7000_0000;
pub const DEFAULT_POOL_SIZE: u32 = 0x0FFF_0000;
/// /etc/subuid users whose entry becomes the pool, in order of preference.
pub const SUBID_USERS: [&str; 2] = ["berth", "containers"];

#[derive(Debug, Error)]
pub enum UsernsError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing the id range database {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("no free range of {size} ids left in the user namespace pool {start}-{end} ({used} ranges allocated); remove containers, or give berth a bigger range in /etc/subuid and /etc/subgid")]
    Exhausted {
        size: u32,
        start: u64,
        end: u64,
        used: usize,
    },
    #[error("invalid user namespace configuration: {0}")]
    Config(String),
    #[error("{path} line {line}: {reason}")]
    SubId {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> UsernsError {
    let path = path.to_path_buf();
    move |source| UsernsError::Io { op, path, source }
}

/// Host ids `start .. start+size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IdRange {
    pub start: u32,
    pub size: u32,
}

impl IdRange {
    /// One past the last id (u64: a range may end at 2^32).
    pub fn end(&self) -> u64 {
        self.start as u64 + self.size as u64
    }

    pub fn overlaps(&self, other: &IdRange) -> bool {
        (self.start as u64) < other.end() && (other.start as u64) < self.end()
    }
}

/// Where ranges come from, minus ranges that belong to someone else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub start: u32,
    pub size: u32,
    /// Never handed out (other users' /etc/subuid entries inside the pool).
    pub reserved: Vec<IdRange>,
}

impl Default for Pool {
    fn default() -> Self {
        Pool {
            start: DEFAULT_POOL_START,
            size: DEFAULT_POOL_SIZE,
            reserved: Vec::new(),
        }
    }
}

fn parse_subid(path: &Path) -> Result<Vec<(String, IdRange)>, UsernsError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("reading", path)(e)),
    };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason: &str| UsernsError::SubId {
            path: path.to_path_buf(),
            line: i + 1,
            reason: reason.to_string(),
        };
        let f: Vec<&str> = line.split(':').collect();
        let [name, start, count] = f.as_slice() else {
            return Err(bad("expected name:start:count"));
        };
        let start: u32 = start.parse().map_err(|_| bad("start is not a number"))?;
        let count: u32 = count.parse().map_err(|_| bad("count is not a number"))?;
        if start as u64 + count as u64 > u32::MAX as u64 {
            return Err(bad("range goes past the last id"));
        }
        out.push((name.to_string(), IdRange { start, size: count }));
    }
    Ok(out)
}

impl Pool {
    /// The system's pool: see the module documentation.
    pub fn system() -> Result<Pool, UsernsError> {
        Pool::from_subid_files(Path::new("/etc/subuid"), Path::new("/etc/subgid"))
    }

    pub fn from_subid_files(subuid: &Path, subgid: &Path) -> Result<Pool, UsernsError> {
        let uids = parse_subid(subuid)?;
        let gids = parse_subid(subgid)?;
        for user in SUBID_USERS {
            let u = uids.iter().find(|(n, _)| n == user).map(|(_, r)| *r);
            let g = gids.iter().find(|(n, _)| n == user).map(|(_, r)| *r);
            match (u, g) {
                (Some(u), Some(g)) => {
                    // Uids and gids share one host range, so use what both files grant.
                    let start = u.start.max(g.start);
                    let end = u.end().min(g.end());
                    if end <= start as u64 {
                        return Err(UsernsError::Config(format!(
                            "the {user} entries of {} ({}+{}) and {} ({}+{}) don't overlap",
                            subuid.display(),
                            u.start,
                            u.size,
                            subgid.display(),
                            g.start,
                            g.size
                        )));
                    }
                    return Ok(Pool {
                        start,
                        size: (end - start as u64) as u32,
                        reserved: Vec::new(),
                    });
                }
                (Some(_), None) | (None, Some(_)) => {
                    return Err(UsernsError::Config(format!(
                        "{user} has an entry in only one of {} and {}; add it to both",
                        subuid.display(),
                        subgid.display()
                    )))
                }
                (None, None) => {}
            }
        }
        let mut pool = Pool::default();
        let whole = IdRange {
            start: pool.start,
            size: pool.size,
        };
        pool.reserved = uids
            .into_iter()
            .chain(gids)
            .map(|(_, r)| r)
            .filter(|r| r.overlaps(&whole))
            .collect();
        pool.reserved.sort();
        pool.reserved.dedup();
        Ok(pool)
    }

    fn end(&self) -> u64 {
        self.start as u64 + self.size as u64
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Db {
    version: u32,
    #[serde(default)]
    allocations: BTreeMap<String, IdRange>,
}

/// The allocator over one database file.
#[derive(Debug, Clone)]
pub struct Allocator {
    db: PathBuf,
    lock: PathBuf,
    pool: Pool,
    range_size: u32,
}

/// The flock on `<db>.lock`, released on drop.
struct Locked {
    _file: nix::fcntl::Flock<File>,
}

impl Allocator {
    pub fn new(db: &Path, pool: Pool, range_size: u32) -> Result<Allocator, UsernsError> {
        if range_size == 0 {
            return Err(UsernsError::Config("the id range size is 0".into()));
        }
        if range_size > pool.size {
            return Err(UsernsError::Config(format!(
                "the id range size {range_size} is larger than the pool ({} ids)",
                pool.size
            )));
        }
        let mut lock = db.as_os_str().to_owned();
        lock.push(".lock");
        Ok(Allocator {
            db: db.to_path_buf(),
            lock: PathBuf::from(lock),
            pool,
            range_size,
        })
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn range_size(&self) -> u32 {
        self.range_size
    }

    fn lock(&self) -> Result<Locked, UsernsError> {
        if let Some(dir) = self.lock.parent() {
            std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        }
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock)
            .map_err(io("opening", &self.lock))?;
        let f =
            nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| {
                UsernsError::Io {
                    op: "locking",
                    path: self.lock.clone(),
                    source: std::io::Error::from(e),
                }
            })?;
        Ok(Locked { _file: f })
    }

    fn load(&self, _held: &Locked) -> Result<Db, UsernsError> {
        let bytes = match std::fs::read(&self.db) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Db {
                    version: 1,
                    ..Default::default()
                })
            }
            Err(e) => return Err(io("reading", &self.db)(e)),
        };
        serde_json::from_slice(&bytes).map_err(|source| UsernsError::Parse {
            path: self.db.clone(),
            source,
        })
    }

    fn save(&self, _held: &Locked, db: &Db) -> Result<(), UsernsError> {
        let mut tmp = self.db.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let bytes = serde_json::to_vec_pretty(db).map_err(|source| UsernsError::Parse {
            path: self.db.clone(),
            source,
        })?;
        let mut f = File::create(&tmp).map_err(io("creating", &tmp))?;
        f.write_all(&bytes).map_err(io("writing", &tmp))?;
        f.sync_all().map_err(io("syncing", &tmp))?;
        std::fs::rename(&tmp, &self.db).map_err(io("renaming into", &self.db))?;
        if let Some(dir) = self.db.parent() {
            // The rename is durable only once the directory is synced.
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io("syncing", dir))?;
        }
        Ok(())
    }

    /// The container's range, allocating one (first fit) if it has none yet.
    pub fn allocate(&self, container_id: &str) -> Result<IdRange, UsernsError> {
        let held = self.lock()?;
        let mut db = self.load(&held)?;
        if let Some(r) = db.allocations.get(container_id) {
            return Ok(*r);
        }
        let r = self.first_fit(&db)?;
        db.allocations.insert(container_id.to_string(), r);
        self.save(&held, &db)?;
        Ok(r)
    }

    fn first_fit(&self, db: &Db) -> Result<IdRange, UsernsError> {
        let mut taken: Vec<IdRange> = db
            .allocations
            .values()
            .chain(self.pool.reserved.iter())
            .copied()
            .collect();
        taken.sort();
        let size = self.range_size as u64;
        let mut candidate = self.pool.start as u64;
        for t in &taken {
            if candidate + size <= t.start as u64 {
                break;
            }
            candidate = candidate.max(t.end());
        }
        if candidate + size > self.pool.end() {
            return Err(UsernsError::Exhausted {
                size: self.range_size,
                start: self.pool.start as u64,
                end: self.pool.end() - 1,
                used: db.allocations.len(),
            });
        }
        Ok(IdRange {
            start: candidate as u32,
            size: self.range_size,
        })
    }

    pub fn get(&self, container_id: &str) -> Result<Option<IdRange>, UsernsError> {
        let held = self.lock()?;
        Ok(self.load(&held)?.allocations.get(container_id).copied())
    }

    pub fn list(&self) -> Result<BTreeMap<String, IdRange>, UsernsError> {
        let held = self.lock()?;
        Ok(self.load(&held)?.allocations)
    }

    /// Frees the container's range; false if it had none.
    pub fn release(&self, container_id: &str) -> Result<bool, UsernsError> {
        let held = self.lock()?;
        let mut db = self.load(&held)?;
        if db.allocations.remove(container_id).is_none() {
            return Ok(false);
        }
        self.save(&held, &db)?;
        Ok(true)
    }

    /// Startup recovery: frees every range whose container is not in `live`; returns the
    /// ids released.
    pub fn release_all_except<S: AsRef<str>>(
        &self,
        live: &[S],
    ) -> Result<Vec<String>, UsernsError> {
        let held = self.lock()?;
        let mut db = self.load(&held)?;
        let dead: Vec<String> = db
            .allocations
            .keys()
            .filter(|id| !live.iter().any(|l| l.as_ref() == id.as_str()))
            .cloned()
            .collect();
        if dead.is_empty() {
            return Ok(dead);
        }
        for id in &dead {
            db.allocations.remove(id);
        }
        self.save(&held, &db)?;
        Ok(dead)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_pool(ranges: u32, size: u32) -> Pool {
        Pool {
            start: 100_000,
            size: ranges * size,
            reserved: Vec::new(),
        }
    }

    fn assert_disjoint(ranges: &[IdRange]) {
        for (i, a) in ranges.iter().enumerate() {
            for b in &ranges[i + 1..] {
                assert!(!a.overlaps(b), "{a:?} overlaps {b:?}");
            }
        }
    }

    #[test]
    fn allocate_is_idempotent_and_release_frees() {
        let d = tempfile::tempdir().unwrap();
        let a = Allocator::new(
            &d.path().join("userns.json"),
            Pool::default(),
            DEFAULT_RANGE_SIZE,
        )
        .unwrap();
        let r1 = a.allocate("c1").unwrap();
        assert_eq!(
            r1,
            IdRange {
                start: DEFAULT_POOL_START,
                size: 65536
            }
        );
        assert_eq!(a.allocate("c1").unwrap(), r1);
        let r2 = a.allocate("c2").unwrap();
        assert_eq!(r2.start as u64, r1.end());
        assert_eq!(a.get("c2").unwrap(), Some(r2));
        assert!(a.release("c1").unwrap());
        assert!(!a.release("c1").unwrap());
        // The freed range is reused first.
        assert_eq!(a.allocate("c3").unwrap(), r1);
        assert_eq!(a.list().unwrap().len(), 2);
        // The file is plain JSON other tools can read.
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.path().join("userns.json")).unwrap()).unwrap();
        assert_eq!(v["allocations"]["c2"]["start"], r2.start);
    }

    #[test]
    fn exhaustion_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        let a = Allocator::new(&d.path().join("db"), small_pool(3, 10), 10).unwrap();
        for i in 0..3 {
            a.allocate(&format!("c{i}")).unwrap();
        }
        let e = a.allocate("c3").unwrap_err().to_string();
        assert_eq!(
            e,
            "no free range of 10 ids left in the user namespace pool 100000-100029 (3 ranges allocated); remove containers, or give berth a bigger range in /etc/subuid and /etc/subgid"
        );
        assert!(Allocator::new(&d.path().join("db"), small_pool(1, 10), 11).is_err());
        assert!(Allocator::new(&d.path().join("db"), small_pool(1, 10), 0).is_err());
    }

    #[test]
    fn release_all_except_keeps_live_ones() {
        let d = tempfile::tempdir().unwrap();
        let a = Allocator::new(&d.path().join("db"), small_pool(10, 10), 10).unwrap();
        for id in ["a", "b", "c", "d"] {
            a.allocate(id).unwrap();
        }
        let mut gone = a.release_all_except(&["b", "d", "zz"]).unwrap();
        gone.sort();
        assert_eq!(gone, ["a", "c"]);
        let left: Vec<_> = a.list().unwrap().into_keys().collect();
        assert_eq!(left, ["b", "d"]);
        assert!(a.release_all_except(&["b", "d"]).unwrap().is_empty());
    }

    #[test]
    fn a_corrupt_database_is_an_error_not_a_reset() {
        let d = tempfile::tempdir().unwrap();
        let db = d.path().join("db");
        std::fs::write(&db, "{not json").unwrap();
        let a = Allocator::new(&db, small_pool(10, 10), 10).unwrap();
        let e = a.allocate("x").unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("parsing the id range database {}", db.display())),
            "{e}"
        );
    }

    #[test]
    fn pool_from_subid_files() {
        let d = tempfile::tempdir().unwrap();
        let (su, sg) = (d.path().join("subuid"), d.path().join("subgid"));
        // No files: the default pool.
        assert_eq!(Pool::from_subid_files(&su, &sg).unwrap(), Pool::default());
        // A berth entry wins over containers; uid and gid ranges are intersected.
        std::fs::write(
            &su,
            "alice:100000:65536\ncontainers:200000:1000000\nberth:3000000:655360\n",
        )
        .unwrap();
        std::fs::write(
            &sg,
            "# comment\nberth:3065536:1000000\ncontainers:200000:1000000\n",
        )
        .unwrap();
        let p = Pool::from_subid_files(&su, &sg).unwrap();
        assert_eq!((p.start, p.size), (3065536, 655360 - 65536));
        // Only containers.
        std::fs::write(&su, "containers:200000:1000000\n").unwrap();
        std::fs::write(&sg, "containers:200000:1000000\n").unwrap();
        let p = Pool::from_subid_files(&su, &sg).unwrap();
        assert_eq!((p.start, p.size), (200000, 1000000));
        // In one file only: an error naming both.
        std::fs::write(&sg, "").unwrap();
        assert!(Pool::from_subid_files(&su, &sg)
            .unwrap_err()
            .to_string()
            .contains("only one of"));
        // Someone else's entry inside the default pool is reserved and skipped.
        std::fs::write(&su, format!("bob:{}:65536\n", DEFAULT_POOL_START)).unwrap();
        std::fs::write(&sg, "bob:100000:65536\n").unwrap();
        let p = Pool::from_subid_files(&su, &sg).unwrap();
        assert_eq!(p.reserved.len(), 1);
        let a = Allocator::new(&d.path().join("db"), p, DEFAULT_RANGE_SIZE).unwrap();
        assert_eq!(a.allocate("x").unwrap().start, DEFAULT_POOL_START + 65536);
        // Malformed lines name the file and line.
        std::fs::write(&su, "ok:1:1\nbad line\n").unwrap();
        let e = Pool::from_subid_files(&su, &sg).unwrap_err().to_string();
        assert!(
            e.ends_with("subuid line 2: expected name:start:count"),
            "{e}"
        );
    }

    #[test]
    fn threads_get_disjoint_ranges() {
        let d = tempfile::tempdir().unwrap();
        let db = d.path().join("db");
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let db = db.clone();
                std::thread::spawn(move || {
                    // Each thread its own allocator: its own lock file description.
                    let a = Allocator::new(&db, small_pool(100, 1000), 1000).unwrap();
                    (0..10)
                        .map(|i| a.allocate(&format!("t{t}-{i}")).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<IdRange> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        assert_eq!(all.len(), 80);
        assert_disjoint(&all);
        let a = Allocator::new(&db, small_pool(100, 1000), 1000).unwrap();
        let mut stored: Vec<IdRange> = a.list().unwrap().into_values().collect();
        all.sort();
        stored.sort();
        assert_eq!(all, stored);
    }

    const CHILD_ENV: &str = "BERTH_USERNS_TEST_CHILD_DB";

    /// Not a test on its own: the body of the child processes of
    /// `processes_get_disjoint_ranges` (does nothing unless the env var is set).
    #[test]
    fn child_process_allocates() {
        let Ok(db) = std::env::var(CHILD_ENV) else {
            return;
        };
        let tag = std::env::var("BERTH_USERNS_TEST_CHILD_TAG").unwrap();
        let a = Allocator::new(Path::new(&db), small_pool(200, 1000), 1000).unwrap();
        for i in 0..20 {
            a.allocate(&format!("{tag}-{i}")).unwrap();
        }
    }

    #[test]
    fn processes_get_disjoint_ranges() {
        let d = tempfile::tempdir().unwrap();
        let db = d.path().join("db");
        let exe = std::env::current_exe().unwrap();
        let children: Vec<_> = (0..3)
            .map(|i| {
                std::process::Command::new(&exe)
                    .args([
                        "--exact",
                        "userns::tests::child_process_allocates",
                        "--quiet",
                    ])
                    .env(CHILD_ENV, &db)
                    .env("BERTH_USERNS_TEST_CHILD_TAG", format!("p{i}"))
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let a = Allocator::new(&db, small_pool(200, 1000), 1000).unwrap();
        for i in 0..20 {
            a.allocate(&format!("parent-{i}")).unwrap();
        }
        for mut c in children {
            assert!(c.wait().unwrap().success());
        }
        let all: Vec<IdRange> = a.list().unwrap().into_values().collect();
        assert_eq!(all.len(), 80);
        assert_disjoint(&all);
    }

    /// A small deterministic PRNG (xorshift64*), so the randomized test needs no crate and
    /// fails reproducibly.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
    }

    #[test]
    fn random_allocate_release_sequences_never_overlap() {
        for seed in [1u64, 0xdead_beef, 42] {
            let d = tempfile::tempdir().unwrap();
            let capacity = 12u32;
            let mut pool = small_pool(capacity + 2, 16);
            // A reserved range in the middle breaks alignment on purpose.
            pool.reserved = vec![IdRange {
                start: pool.start + 40,
                size: 20,
            }];
            let pool_range = IdRange {
                start: pool.start,
                size: pool.size,
            };
            let reserved = pool.reserved[0];
            let a = Allocator::new(&d.path().join("db"), pool, 16).unwrap();
            let mut model: BTreeMap<String, IdRange> = BTreeMap::new();
            let mut rng = Rng(seed);
            for _ in 0..400 {
                let id = format!("c{}", rng.next() % 20);
                if matches!(rng.next() % 3, 0) {
                    let had = model.remove(&id).is_some();
                    assert_eq!(a.release(&id).unwrap(), had);
                } else {
                    match a.allocate(&id) {
                        Ok(r) => {
                            if let Some(old) = model.get(&id) {
                                assert_eq!(*old, r, "allocate must be idempotent");
                            }
                            model.insert(id, r);
                        }
                        Err(UsernsError::Exhausted { used, .. }) => {
                            assert!(!model.contains_key(&id));
                            assert_eq!(used, model.len());
                            // Brute force: no free run of 16 ids may exist anywhere.
                            let free = |x: u64| {
                                !model
                                    .values()
                                    .chain([&reserved])
                                    .any(|r| x >= r.start as u64 && x < r.end())
                            };
                            let mut run = 0;
                            for x in pool_range.start as u64..pool_range.end() {
                                run = if free(x) { run + 1 } else { 0 };
                                assert!(run < 16, "exhausted with a free run ending at {x}");
                            }
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
                let stored = a.list().unwrap();
                assert_eq!(stored, model);
                let ranges: Vec<IdRange> = stored.into_values().collect();
                assert_disjoint(&ranges);
                for r in &ranges {
                    assert!(r.start >= pool_range.start && r.end() <= pool_range.end());
                    assert!(!r.overlaps(&reserved));
                }
            }
        }
    }
}
