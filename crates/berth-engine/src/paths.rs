//! Where the engine keeps things. Persistent state lives under the root (default
//! /var/lib/berth: images, container records, logs, snapshots' upper dirs); transient state
//! under the run dir (default /run/berth: the runtime's state), which a reboot empties —
//! that is how a rebooted host's containers are recognised as exited.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Paths {
    pub root: PathBuf,
    pub run: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            root: PathBuf::from("/var/lib/berth"),
            run: PathBuf::from("/run/berth"),
        }
    }
}

impl Paths {
    pub fn new(root: &Path, run: &Path) -> Paths {
        Paths {
            root: root.to_path_buf(),
            run: run.to_path_buf(),
        }
    }

    pub fn images(&self) -> PathBuf {
        self.root.join("image")
    }

    pub fn containers(&self) -> PathBuf {
        self.root.join("containers")
    }

    /// A container's persistent directory: record, logs, exit status, snapshot.
    pub fn container(&self, id: &str) -> PathBuf {
        self.containers().join(id)
    }

    /// The monitor's directory: logs, exit.json, attach socket.
    pub fn userdata(&self, id: &str) -> PathBuf {
        self.container(id).join("userdata")
    }

    /// The OCI bundle handed to the runtime (config.json; rootfs is the snapshot).
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.container(id).join("bundle")
    }

    pub fn snapshot(&self, id: &str) -> PathBuf {
        self.container(id).join("snapshot")
    }

    /// The runtime's state root (`berth-runtime --root`).
    pub fn runtime_root(&self) -> PathBuf {
        self.run.join("runtime")
    }

    pub fn networks(&self) -> PathBuf {
        self.root.join("networks")
    }

    pub fn userns_db(&self) -> PathBuf {
        self.root.join("userns.json")
    }

    pub fn auth_file(&self) -> PathBuf {
        self.root.join("auth.json")
    }

    pub fn lock_file(&self) -> PathBuf {
        self.root.join("containers.lock")
    }
}
