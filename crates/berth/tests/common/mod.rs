//! Test helpers: busybox bundles built from Debian's busybox-static, a runtime wrapper with
//! its own state root, and guards that delete containers even when a test fails.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

pub const BUSYBOX: &str = "/bin/busybox";

pub fn berth_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_berth"))
}

/// Skips (returns false) unless we are root with busybox-static installed.
pub fn can_run() -> bool {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipping: needs root");
        return false;
    }
    if !Path::new(BUSYBOX).exists() {
        eprintln!("skipping: {BUSYBOX} missing (apt-get install busybox-static)");
        return false;
    }
    true
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A unique container id: test name, our pid and a counter, so parallel tests never clash.
pub fn unique_id(tag: &str) -> String {
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A bundle in a temporary directory (mode 0755 all the way, so an unprivileged
/// container root can traverse it).
pub struct Bundle {
    pub dir: tempfile::TempDir,
    pub spec: Value,
}

impl Bundle {
    /// A busybox bundle; `userns` maps container root to host 100000-165535.
    pub fn new(args: &[&str], userns: bool) -> Bundle {
        let dir = tempfile::Builder::new()
            .prefix("berth-test-bundle-")
            .tempdir()
            .expect("creating bundle dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let rootfs = dir.path().join("rootfs");
        make_rootfs(&rootfs);
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let spec = berth_runtime::spec::example(&args, userns);
        let b = Bundle { dir, spec };
        if userns {
            chown_tree(&b.rootfs(), 100000, 100000);
        }
        b
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    /// Writes config.json from `self.spec`.
    pub fn write(&self) {
        std::fs::write(
            self.dir.path().join("config.json"),
            serde_json::to_vec_pretty(&self.spec).unwrap(),
        )
        .unwrap();
    }
}

pub fn make_rootfs(rootfs: &Path) {
    for d in ["bin", "proc", "sys", "dev", "etc", "tmp", "root"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::set_permissions(rootfs.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).expect("copying busybox");
    let list = Command::new(BUSYBOX).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet));
        }
    }
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )
    .unwrap();
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\nnobody:x:65534:\n").unwrap();
}

pub fn chown_tree(p: &Path, uid: u32, gid: u32) {
    let st = Command::new("chown")
        .args(["-R", "-h", &format!("{uid}:{gid}")])
        .arg(p)
        .status()
        .unwrap();
    assert!(st.success());
}

/// The runtime with a private state root; deletes every container it created on drop.
pub struct Runtime {
    pub root: tempfile::TempDir,
    created: std::cell::RefCell<Vec<String>>,
}

impl Runtime {
    pub fn new() -> Runtime {
        Runtime {
            root: tempfile::Builder::new()
                .prefix("berth-test-root-")
                .tempdir()
                .unwrap(),
            created: Default::default(),
        }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(berth_bin());
        c.arg("oci").arg("--root").arg(self.root.path());
        c
    }

    /// Runs `berth oci <args>`; remembers ids of create/run so Drop can clean up.
    pub fn run(&self, args: &[&str]) -> Output {
        if let Some(v) = args.first() {
            if *v == "create" || *v == "run" {
                if let Some(id) = args.last() {
                    self.created.borrow_mut().push(id.to_string());
                }
            }
        }
        output_via_files(self.cmd().args(args))
    }

    pub fn track(&self, id: &str) {
        self.created.borrow_mut().push(id.to_string());
    }

    /// Runs and asserts success, returning stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        stdout_of_success("berth oci", args, self.run(args))
    }

    /// Runs and asserts failure, returning stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "berth oci {args:?} should have failed; stdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn state(&self, id: &str) -> Value {
        serde_json::from_str(&self.ok(&["state", id])).unwrap()
    }

    pub fn status(&self, id: &str) -> String {
        self.state(id)["status"].as_str().unwrap().to_string()
    }

    /// `run` of a bundle, returning (exit code, stdout, stderr).
    pub fn run_bundle(&self, b: &Bundle, id: &str) -> (i32, String, String) {
        b.write();
        let out = self.run(&["run", "--bundle", b.path().to_str().unwrap(), id]);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn state_dir(&self, id: &str) -> PathBuf {
        self.root.path().join(id)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        for id in self.created.borrow().iter() {
            let _ = self
                .cmd()
                .args(["delete", "--force", id])
                .stderr(Stdio::null())
                .status();
        }
    }
}

pub fn read_all(mut f: std::fs::File) -> Vec<u8> {
    use std::io::{Read, Seek};
    let mut v = Vec::new();
    f.seek(std::io::SeekFrom::Start(0)).unwrap();
    f.read_to_end(&mut v).unwrap();
    v
}

/// Host cgroup directories of a container under a v1 controller (for leak checks).
/// Every cgroup directory named after `id`, in every hierarchy mounted under
/// /sys/fs/cgroup (v1 controllers, named hierarchies like systemd, and the unified one):
/// a check that looks at only some of them would pass with the rest left behind.
pub fn find_cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") else {
        return found;
    };
    for e in rd.flatten() {
        // cpu,cpuacct style links point at a hierarchy listed under its own name too.
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            walk(&e.path(), id, 0, &mut found);
        }
    }
    found
}

/// Removes the cgroup directories named after `id`, as a reboot would: deepest first,
/// retrying a few times (a killed task leaves its cgroups a moment after it dies).
pub fn remove_cgroup_dirs(id: &str) {
    for _ in 0..100 {
        let mut dirs = find_cgroup_dirs(id);
        if dirs.is_empty() {
            return;
        }
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            let _ = std::fs::remove_dir(&d);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("cgroups of {id} would not go: {:?}", find_cgroup_dirs(id));
}

fn walk(dir: &Path, id: &str, depth: usize, out: &mut Vec<PathBuf>) {
    if depth > 6 {
        return;
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            let p = e.path();
            if p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.contains(id))
            {
                out.push(p.clone());
            }
            walk(&p, id, depth + 1, out);
        }
    }
}

/// Detaches every mount under `dir`, deepest first (podman's and the engine's leftovers
/// when a test fails half-way).
pub fn unmount_under(dir: &Path) {
    let mut targets = mounts_under(dir);
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for t in targets {
        let _ = nix::mount::umount2(t.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Mount points under `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|t| t.starts_with(dir.to_str().unwrap_or("/nonexistent")))
        .map(String::from)
        .collect()
}

/// Runs `cmd` with stdout/stderr captured in files, not pipes: a created container's init
/// (or a detached monitor) inherits them and would hold a pipe open until it exits.
pub fn output_via_files(cmd: &mut Command) -> Output {
    let out = tempfile::tempfile().unwrap();
    let err = tempfile::tempfile().unwrap();
    let status = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(err.try_clone().unwrap())
        .status()
        .expect("running berth");
    Output {
        status,
        stdout: read_all(out),
        stderr: read_all(err),
    }
}

/// A berth of one test's own, driven as users do: private --root and --runroot under a
/// tempdir (mode 0755, so an unprivileged container root can traverse it). On drop it
/// removes every container and detaches what is still mounted under it, also when an
/// assertion failed. Test files add their own helpers in `impl Berth` blocks.
pub struct Berth {
    pub dir: tempfile::TempDir,
    /// Set on every command.
    env: Vec<(&'static str, &'static str)>,
}

impl Berth {
    /// `prefix` names the tempdir; `env` goes to every command.
    pub fn with(prefix: &str, env: &[(&'static str, &'static str)]) -> Berth {
        // The monitor is another package's binary: `cargo test -p berth` alone doesn't build it.
        let monitor = berth_bin().with_file_name("berth-monitor");
        assert!(
            monitor.exists(),
            "{} missing: run `cargo build --workspace` (or `cargo test --workspace`) first",
            monitor.display()
        );
        let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        Berth {
            dir,
            env: env.to_vec(),
        }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("lib")
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(berth_bin());
        c.envs(self.env.iter().copied())
            .arg("--root")
            .arg(self.root())
            .arg("--runroot")
            .arg(self.dir.path().join("run"));
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        output_via_files(self.cmd().args(args))
    }

    /// Runs and asserts success, returning stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        stdout_of_success("berth", args, self.run(args))
    }
}

impl Drop for Berth {
    fn drop(&mut self) {
        let ids = self.run(&["ps", "-aq"]);
        for id in String::from_utf8_lossy(&ids.stdout).lines() {
            let _ = self.run(&["rm", "-f", id]);
        }
        unmount_under(self.dir.path());
    }
}

/// The stdout of `o`, a run of `what args`, after asserting it succeeded (the message
/// carries both streams).
pub fn stdout_of_success(what: &str, args: &[&str], o: Output) -> String {
    assert!(
        o.status.success(),
        "{what} {args:?} failed: {}\nstdout: {}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A busybox rootfs as a tarball under `dir` (for `import`), the rootfs itself removed.
pub fn busybox_tar(dir: &Path) -> PathBuf {
    let rootfs = dir.join("image-rootfs");
    make_rootfs(&rootfs);
    let tar = dir.join("busybox.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::remove_dir_all(&rootfs).unwrap();
    tar
}
