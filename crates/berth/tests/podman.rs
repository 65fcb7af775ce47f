//! A real client: podman drives berth as its OCI runtime (`podman --runtime`), through
//! conmon, with a busybox image imported locally. Storage and run roots are private to the
//! test and removed afterwards, including any mount podman left under them.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::*;

struct Podman {
    dir: tempfile::TempDir,
    runtime: PathBuf,
}

impl Podman {
    fn new() -> Option<Podman> {
        if !can_run() {
            return None;
        }
        if Command::new("podman").arg("--version").output().is_err() {
            eprintln!("skipping: podman not installed");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("berth-podman-")
            .tempdir()
            .unwrap();
        let runtime = dir.path().join("berth-runtime");
        std::os::unix::fs::symlink(berth_bin(), &runtime).unwrap();
        Some(Podman { dir, runtime })
    }

    fn cmd(&self) -> Command {
        let d = self.dir.path();
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(d.join("storage"))
            .arg("--runroot")
            .arg(d.join("run"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .args([
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
                "--storage-driver",
                "vfs",
            ])
            .arg("--runtime")
            .arg(&self.runtime);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("running podman")
    }

    fn ok(&self, args: &[&str]) -> String {
        stdout_of_success("podman", args, self.run(args))
    }

    fn import_busybox(&self, tag: &str) {
        let tar = busybox_tar(self.dir.path());
        self.ok(&["import", tar.to_str().unwrap(), tag]);
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self
            .cmd()
            .args(["rm", "--all", "--force", "--time", "0"])
            .output();
        // podman leaves shm and storage mounts under its run root; unmount before removal.
        unmount_under(self.dir.path());
    }
}

const ULIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=20000:20000",
    "--ulimit",
    "nproc=32768:32768",
];

#[test]
fn podman_runs_execs_stops_and_removes_through_berth() {
    let Some(p) = Podman::new() else { return };
    let image = "localhost/berth-busybox:test";
    p.import_busybox(image);

    let mut args = vec!["run", "--rm", "--network", "none"];
    args.extend(ULIMITS);
    args.extend([image, "sh", "-c", "echo hello from berth; echo pid=$$"]);
    let out = p.ok(&args);
    assert_eq!(out, "hello from berth\npid=1\n");

    // A user namespace requested through podman reaches the kernel.
    let mut args = vec![
        "run",
        "--rm",
        "--network",
        "none",
        "--uidmap",
        "0:100000:65536",
        "--gidmap",
        "0:100000:65536",
    ];
    args.extend(ULIMITS);
    args.extend([image, "cat", "/proc/self/uid_map"]);
    let out = p.ok(&args);
    let map: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(map, ["0", "100000", "65536"]);

    let name = unique_id("podman");
    let mut args = vec!["run", "-d", "--name", &name, "--network", "none"];
    args.extend(ULIMITS);
    args.extend([image, "sleep", "60"]);
    p.ok(&args);
    let out = p.ok(&[
        "exec",
        &name,
        "sh",
        "-c",
        "echo in-exec; cat /proc/1/cmdline | tr '\\0' ' '",
    ]);
    assert_eq!(out, "in-exec\nsleep 60 ");
    let st = p.ok(&[
        "inspect",
        "--format",
        "{{.State.Status}} {{.OCIRuntime}}",
        &name,
    ]);
    assert!(st.starts_with("running "), "{st}");
    p.ok(&["stop", "--time", "1", &name]);
    let st = p.ok(&["inspect", "--format", "{{.State.Status}}", &name]);
    assert_eq!(st.trim(), "exited");
    p.ok(&["rm", &name]);
    let left = p.ok(&["ps", "-a", "-q"]);
    assert!(left.trim().is_empty(), "{left}");
}
