//! Container records: one `container.json` per container under the root, written
//! atomically, with names unique across containers (checked under a lock).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::paths::Paths;

#[derive(Debug, Error)]
pub enum RecordError {
    #[error("no such container: {0}")]
    NotFound(String),
    #[error("container name {name:?} is already in use by container {id}")]
    NameInUse { name: String, id: String },
    #[error("invalid container name {0:?}: use [a-zA-Z0-9][a-zA-Z0-9_.-]*")]
    InvalidName(String),
    #[error("{prefix:?} matches several containers ({ids}); use more characters")]
    Ambiguous { prefix: String, ids: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RecordError {
    let path = path.to_path_buf();
    move |source| RecordError::Io { op, path, source }
}

/// What the engine remembers of a container. Its live status is not stored: it comes from
/// the runtime's state and the monitor's exit.json.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ContainerRecord {
    pub id: String,
    pub name: String,
    /// The image as the user named it, and its id (config digest).
    pub image: String,
    pub image_id: String,
    /// Layer diff ids, bottom first: these layers stay in the store while the container exists.
    #[serde(default)]
    pub layers: Vec<String>,
    pub created: String,
    /// Entrypoint + command as run (for `ps` and `inspect`).
    pub command: Vec<String>,
    #[serde(default)]
    pub auto_remove: bool,
    #[serde(default)]
    pub terminal: bool,
    #[serde(default)]
    pub stdin: bool,
    /// Host uid/gid base of the container's user namespace (None: host user namespace).
    #[serde(default)]
    pub userns_base: Option<u32>,
    #[serde(default)]
    pub userns_size: Option<u32>,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub started_at: Option<String>,
    #[serde(default)]
    pub monitor_pid: Option<i32>,
    /// How many times the container was started (restart counts).
    #[serde(default)]
    pub start_count: u32,
    /// Ports, networks and other engine extensions, as JSON, so newer fields don't need a
    /// record format change.
    #[serde(default)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

pub struct Records {
    paths: Paths,
}

/// An exclusive lock over all records (name uniqueness); released on drop.
pub struct Lock {
    _file: nix::fcntl::Flock<File>,
}

impl Records {
    pub fn new(paths: &Paths) -> Result<Records, RecordError> {
        let dir = paths.containers();
        std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        Ok(Records {
            paths: paths.clone(),
        })
    }

    pub fn lock(&self) -> Result<Lock, RecordError> {
        let p = self.paths.lock_file();
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io("opening", &p))?;
        let f =
            nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| {
                RecordError::Io {
                    op: "locking",
                    path: p.clone(),
                    source: std::io::Error::from_raw_os_error(e as i32),
                }
            })?;
        Ok(Lock { _file: f })
    }

    pub fn path(&self, id: &str) -> PathBuf {
        self.paths.container(id).join("container.json")
    }

    pub fn save(&self, r: &ContainerRecord) -> Result<(), RecordError> {
        let dir = self.paths.container(&r.id);
        std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        let path = self.path(&r.id);
        let tmp = dir.join(".container.json.tmp");
        let bytes = serde_json::to_vec_pretty(r).map_err(|source| RecordError::Parse {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&tmp, bytes).map_err(io("writing", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io("renaming into", &path))
    }

    /// Saves a record only if the container still exists: a container with --rm can be
    /// removed by its monitor's exit command while we are still updating it.
    pub fn update(&self, r: &ContainerRecord) -> Result<(), RecordError> {
        if !self.path(&r.id).exists() {
            return Err(RecordError::NotFound(r.id.clone()));
        }
        self.save(r)
    }

    pub fn load(&self, id: &str) -> Result<ContainerRecord, RecordError> {
        let path = self.path(id);
        let mut s = String::new();
        match File::open(&path) {
            Ok(mut f) => f.read_to_string(&mut s).map_err(io("reading", &path))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RecordError::NotFound(id.to_string()))
            }
            Err(e) => return Err(io("opening", &path)(e)),
        };
        serde_json::from_str(&s).map_err(|source| RecordError::Parse { path, source })
    }

    /// Every record, oldest first. Unreadable directories (a crash mid-create) are skipped.
    pub fn all(&self) -> Result<Vec<ContainerRecord>, RecordError> {
        let dir = self.paths.containers();
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir)
            .map_err(io("listing", &dir))?
            .flatten()
        {
            if let Some(id) = e.file_name().to_str() {
                if let Ok(r) = self.load(id) {
                    out.push(r);
                }
            }
        }
        out.sort_by(|a, b| a.created.cmp(&b.created));
        Ok(out)
    }

    /// Finds a container by full id, name, or unique id prefix (as docker does).
    pub fn find(&self, key: &str) -> Result<ContainerRecord, RecordError> {
        if key.len() == 64 {
            if let Ok(r) = self.load(key) {
                return Ok(r);
            }
        }
        let all = self.all()?;
        if let Some(r) = all.iter().find(|r| r.name == key) {
            return Ok(r.clone());
        }
        let matches: Vec<&ContainerRecord> = all
            .iter()
            .filter(|r| !key.is_empty() && r.id.starts_with(key))
            .collect();
        match matches.len() {
            0 => Err(RecordError::NotFound(key.to_string())),
            1 => Ok(matches[0].clone()),
            _ => Err(RecordError::Ambiguous {
                prefix: key.to_string(),
                ids: matches
                    .iter()
                    .map(|r| &r.id[..12])
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Checks a requested name (call with the lock held, then save the record).
    pub fn check_name(&self, name: &str) -> Result<(), RecordError> {
        let ok = !name.is_empty()
            && name.len() <= 128
            && name.as_bytes()[0].is_ascii_alphanumeric()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !ok {
            return Err(RecordError::InvalidName(name.to_string()));
        }
        if let Some(r) = self.all()?.into_iter().find(|r| r.name == name) {
            return Err(RecordError::NameInUse {
                name: name.to_string(),
                id: r.id[..12.min(r.id.len())].to_string(),
            });
        }
        Ok(())
    }

    pub fn remove(&self, id: &str) -> Result<(), RecordError> {
        let dir = self.paths.container(id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("removing", &dir)(e)),
        }
    }
}

/// A new random container id: 64 hex digits, as docker's.
pub fn new_id() -> Result<String, RecordError> {
    let mut b = [0u8; 32];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(io("reading", Path::new("/dev/urandom")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// docker-style generated names: adjective_noun, unique among existing containers.
pub fn generate_name(id: &str, taken: &dyn Fn(&str) -> bool) -> String {
    const ADJ: &[&str] = &[
        "brave", "calm", "eager", "fond", "gentle", "happy", "keen", "lucid", "merry", "nimble",
        "proud", "quiet", "rapid", "sharp", "tidy", "vivid", "wise", "young", "zesty", "bold",
    ];
    const NOUN: &[&str] = &[
        "anchor", "buoy", "canal", "delta", "estuary", "fjord", "galley", "harbor", "isle",
        "jetty", "keel", "lagoon", "mast", "narrows", "oar", "pier", "quay", "reef", "sail",
        "tide",
    ];
    let seed = u64::from_str_radix(&id[..12.min(id.len())], 16).unwrap_or(0);
    for i in 0..400u64 {
        let n = seed.wrapping_add(i.wrapping_mul(7919));
        let name = format!(
            "{}_{}",
            ADJ[(n % 20) as usize],
            NOUN[((n / 20) % 20) as usize]
        );
        if !taken(&name) {
            return name;
        }
    }
    format!("berth_{}", &id[..12.min(id.len())])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records() -> (tempfile::TempDir, Records) {
        let d = tempfile::tempdir().unwrap();
        let p = Paths::new(&d.path().join("lib"), &d.path().join("run"));
        let r = Records::new(&p).unwrap();
        (d, r)
    }

    fn rec(id: &str, name: &str, created: &str) -> ContainerRecord {
        ContainerRecord {
            id: id.to_string(),
            name: name.to_string(),
            created: created.to_string(),
            ..Default::default()
        }
    }

    #[test]
    fn find_by_name_id_and_prefix() {
        let (_d, r) = records();
        let a = format!("aa11{}", "0".repeat(60));
        let b = format!("aa22{}", "0".repeat(60));
        r.save(&rec(&a, "web", "1")).unwrap();
        r.save(&rec(&b, "db", "2")).unwrap();
        assert_eq!(r.find("web").unwrap().id, a);
        assert_eq!(r.find(&b).unwrap().name, "db");
        assert_eq!(r.find("aa2").unwrap().id, b);
        assert!(matches!(r.find("aa"), Err(RecordError::Ambiguous { .. })));
        assert!(matches!(r.find("zz"), Err(RecordError::NotFound(_))));
        assert_eq!(r.all().unwrap().len(), 2);
        r.remove(&a).unwrap();
        assert!(r.find("web").is_err());
    }

    #[test]
    fn names_are_unique_and_valid() {
        let (_d, r) = records();
        let _l = r.lock().unwrap();
        r.check_name("web").unwrap();
        r.save(&rec(&"1".repeat(64), "web", "1")).unwrap();
        assert!(matches!(
            r.check_name("web"),
            Err(RecordError::NameInUse { .. })
        ));
        assert!(matches!(
            r.check_name("-x"),
            Err(RecordError::InvalidName(_))
        ));
        assert!(matches!(
            r.check_name("a/b"),
            Err(RecordError::InvalidName(_))
        ));
    }

    #[test]
    fn ids_and_generated_names() {
        let id = new_id().unwrap();
        assert_eq!(id.len(), 64);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        let n = generate_name(&id, &|_| false);
        assert!(n.contains('_'));
        let first = n.clone();
        let n2 = generate_name(&id, &|x| x == first);
        assert_ne!(n2, first);
    }
}
