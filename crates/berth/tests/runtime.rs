//! The runtime against the real kernel, as root: each test runs a busybox container and
//! checks from inside it. Every test uses its own state root and container ids, and the
//! `Runtime` guard deletes what it created even when an assertion fails.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::json;

fn sh(script: &str) -> Vec<&str> {
    vec!["sh", "-c", script]
}

#[test]
fn run_prints_from_inside_its_namespaces() {
    if !can_run() {
        return;
    }
    let rt = Runtime::new();
    let mut b = Bundle::new(
        &sh("echo pid=$$; hostname; cat /proc/self/uid_map; id -u"),
        true,
    );
    b.spec["hostname"] = json!("inside");
    let id = unique_id("ns");
    let (code, out, err) = rt.run_bundle(&b, &id);
    assert_eq!(code, 0, "stderr: {err}");
    assert!(out.contains("pid=1\n"), "{out}");
    assert!(out.contains("inside\n"), "{out}");
    let map: Vec<&str> = out.lines().nth(2).unwrap().split_whitespace().collect();
    assert_eq!(map, ["0", "100000", "65536"], "{out}");
    assert!(out.ends_with("0\n"), "{out}");
    // run deletes the container afterwards.
    assert!(!rt.state_dir(&id).exists());
}

#[test]
fn every_namespace_differs_from_the_host() {
    if !can_run() {
        return;
    }
    let rt = Runtime::new();
    let b = Bundle::new(
        &sh("for n in user pid net mnt uts ipc cgroup; do readlink /proc/self/ns/$n; done"),
        true,
    );
    let (code, out, err) = rt.run_bundle(&b, &unique_id("nsall"));
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 7, "{out}");
    for (n, inside) in ["user", "pid", "net", "mnt", "uts", "ipc", "cgroup"]
        .iter()
        .zip(lines)
    {
        let host = std::fs::read_link(format!("/proc/self/ns/{n}")).unwrap();
        assert_ne!(
            host.to_str().unwrap(),
            inside,
            "{n} namespace is the host's"
        );
    }
}

#[test]
fn exit_code_is_the_containers() {
    if !can_run() {
        return;
    }
    let rt = Runtime::new();
    let b = Bundle::new(&sh("exit 42"), false);
    let (code, _, err) = rt.run_bundle(&b, &unique_id("exit"));
    assert_eq!(code, 42, "{err}");
}

#[test]
fn state_machine_create_start_kill_delete() {
    if !can_run() {
        return;
    }
    let rt = Runtime::new();
    let b = Bundle::new(&["sleep", "30"], true);
    b.write();
    let id = unique_id("life");
    let pidfile = b.path().join("pid");
    rt.ok(&[
        "create",
        "--bundle",
        b.path().to_str().unwrap(),
        "--pid-file",
        pidfile.to_str().unwrap(),
        &id,
    ]);
    let st = rt.state(&id);
    assert_eq!(st["status"], "created");
    assert_eq!(st["id"], id.as_str());
    let pid = st["pid"].as_i64().unwrap();
    assert_eq!(std::fs::read_to_string(&pidfile).unwrap(), pid.to_string());
    // Starting twice is refused; deleting a running one needs --force.
    rt.ok(&["start", &id]);
    assert_eq!(rt.status(&id), "running");
    let err = rt.fails(&["start", &id]);
    assert!(
        err.contains("only a created container can be started"),
        "{err}"
    );
    let err = rt.fails(&["delete", &id]);
    assert!(err.contains("is running"), "{err}");
    rt.ok(&["kill", &id, "KILL"]);
    assert!(wait_status(&rt, &id, "stopped"), "container did not stop");
    let err = rt.fails(&["kill", &id]);
    assert!(err.contains("stopped"), "{err}");
    rt.ok(&["delete", &id]);
    let err = rt.fails(&["state", &id]);
    assert!(err.contains("does not exist"), "{err}");
    assert!(find_cgroup_dirs(&id).is_empty(), "cgroup left behind");
    // --force on a missing container succeeds, like runc.
    rt.ok(&["delete", "--force", &id]);
}

fn wait_status(rt: &Runtime, id: &str, want: &str) -> bool {
    for _ in 0..200 {
        if rt.status(id) == want {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[test]
fn delete_of_created_container_kills_its_init() {
    if !can_run() {
        return;
    }
    let rt = Runtime::new();
    let b = Bundle::new(&["true"], false);
    b.write();
    let id = unique_id("delcreated");
    rt.ok(&["create", "--bundle", b.path().to_str().unwrap(), &id]);
    let pid = rt.state(&id)["pid"].as_i64().unwrap();
    rt.ok(&["delete", &id]);
    assert!(!Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid));
    assert!(find_cgroup_dirs(&id).is_empty());
}

fn is_zombie(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.contains(") Z "))
        .unwrap_or(true)
}

#[test]
fn capabilities_no_new_privs_and_rlimits() {
    if !can_run() {
        return;
    }
    let rt = Runtime::new();
    let mut b = Bundle::new(&sh("grep -E '^(CapEff|CapBnd|CapPrm|CapInh|CapAmb|NoNewPrivs)' /proc/self/status; ulimit -n; ulimit -Hn"), true);
    b.spec["process"]["capabilities"] = json!({
        "bounding": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
        "effective": ["CAP_CHOWN", "CAP_KILL"],
        "permitted": ["CAP_CHOWN", "CAP_KILL"],
        "inheritable": [],
        "ambient": []
    });
    b.spec["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": 321, "hard": 654}]);
    let (code, out, err) = rt.run_bundle(&b, &unique_id("caps"));
    assert_eq!(code, 0, "{err}");
    // CAP_CHOWN = bit 0, CAP_KILL = 5, CAP_NET_BIND_SERVICE = 10.
    assert!(out.contains("CapEff:\t0000000000000021"), "{out}");
    assert!(out.contains("CapPrm:\t0000000000000021"), "{out}");
    assert!(out.contains("CapBnd:\t0000000000000421"), "{out}");
    assert!(out.contains("CapInh:\t0000000000000000"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("\n321\n654\n"), "{out}");
}

#[test]
fn non_root_user_and_groups_and_umask() {
    if !can_run() {
        return;
    }
    let rt = Runtime::new();
    let mut b = Bundle::new(
        &sh("id -u; id -g; id -G; umask; grep -E 'CapBnd|CapEff' /proc/self/status"),
        true,
    );
    b.spec["process"]["user"] =
        json!({"uid": 1000, "gid": 1000, "additionalGids": [10, 20], "umask": 63});
    let (code, out, err) = rt.run_bundle(&b, &unique_id("user"));
    assert_eq!(code, 0, "{err}");
    let l: Vec<&str> = out.lines().collect();
    assert_eq!(l[0], "1000");
    assert_eq!(l[1], "1000");
    assert!(l[2].contains("10") && l[2].contains("20"), "{out}");
    assert_eq!(l[3], "0077");
    // The bounding set is the spec's; execve as a non-root user without ambient
    // capabilities leaves the effective set empty (kernel semantics, as with runc).
    assert!(
        l[4].starts_with("CapEff:") && l[4].ends_with("0000000000000000"),
        "{out}"
    );
    assert!(
        l[5].starts_with("CapBnd:") && l[5].ends_with("00000000a80425fb"),
        "{out}"
    );
}

#[test]
fn cgroup_limits_are_written_and_removed() {
    if !can_run() {
        return;
    }
    let rt = Runtime::new();
    let mut b = Bundle::new(&sh("cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.shares; cat /proc/self/cgroup | grep memory"), true);
    b.spec["linux"]["resources"] = json!({
        "memory": {"limit": 67108864},
        "pids": {"limit": 33},
        "cpu": {"quota": 50000, "period": 100000, "shares": 512}
    });
    let id = unique_id("cg");
    b.spec["linux"]["cgroupsPath"] = json!(format!("/berth-test-{id}"));
    let (code, out, err) = rt.run_bundle(&b, &id);
    assert_eq!(code, 0, "{err}");
    let l: Vec<&str> = out.lines().collect();
    assert_eq!(&l[..4], ["67108864", "33", "50000", "512"], "{out}");
    // The cgroup namespace roots the container at its own cgroup.
    assert!(l[4].ends_with(":memory:/"), "{out}");
    assert!(!Path::new(&format!("/sys/fs/cgroup/memory/berth-test-{id}")).exists());
}

#[test]
fn pids_limit_is_enforced() {
    if !can_run() {
        return;
    }
    let rt = Runtime::new();
    // A subshell forks until the limit stops it (busybox sh exits on a failed fork); the
    // outer shell then reads the counters with builtins only.
    let mut b = Bundle::new(&sh("(for i in 1 2 3 4 5 6 7 8; do sleep 5 & done); read c < /sys/fs/cgroup/pids/pids.current; read m < /sys/fs/cgroup/pids/pids.max; echo $c $m"), false);
    b.spec["linux"]["resources"] = json!({"pids": {"limit": 4}});
    let (code, out, err) = rt.run_bundle(&b, &unique_id("pids"));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("can't fork"),
        "no fork failed under pids.max=4: {err}"
    );
    let v: Vec<u32> = out.split_whitespace().map(|x| x.parse().unwrap()).collect();
    assert_eq!(v[1], 4, "{out}");
    assert!(v[0] <= 4, "{out}");
}

#[test]
fn seccomp_denies_with_the_given_errno() {
    if !can_run() {
        return;
    }
    let rt = Runtime::new();
    let mut b = Bundle::new(
        &sh("mkdir /tmp/x 2>&1; echo rc=$?; touch /tmp/y && echo touched"),
        false,
    );
    b.spec["root"]["readonly"] = json!(false);
    b.spec["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    });
    let (code, out, err) = rt.run_bundle(&b, &unique_id("seccomp"));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Operation not permitted"), "{out}");
    assert!(out.contains("rc=1"), "{out}");
    assert!(out.contains("touched"), "{out}");
}

#[test]
fn masked_and_readonly_paths_and_readonly_root() {
    if !can_run() {
        return;
    }
    let rt = Runtime::new();
    let b = Bundle::new(&sh("wc -c < /proc/timer_list; ls /sys/firmware | wc -l; echo 1 > /proc/sys/kernel/domainname 2>/dev/null || echo ro-sys; touch /newfile 2>/dev/null || echo ro-root"), true);
    let (code, out, err) = rt.run_bundle(&b, &unique_id("mask"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "0\n0\nro-sys\nro-root\n");
}

#[test]
fn bind_mounts_with_options() {
    if !can_run() {
        return;
    }
    let rt = Runtime::new();
    let host = tempfile::tempdir().unwrap();
    std::fs::set_permissions(host.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(host.path().join("hello"), "from host\n").unwrap();
    let rw = tempfile::tempdir().unwrap();
    std::fs::set_permissions(rw.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut b = Bundle::new(&sh("cat /data/hello; touch /data/x 2>/dev/null || echo ro; echo written > /out/file; grep ' /data ' /proc/self/mountinfo"), false);
    b.spec["mounts"].as_array_mut().unwrap().push(json!({"destination": "/data", "type": "bind", "source": host.path(), "options": ["rbind", "ro", "nosuid", "nodev"]}));
    b.spec["mounts"].as_array_mut().unwrap().push(json!({"destination": "/deep/new/out", "type": "bind", "source": rw.path(), "options": ["bind"]}));
    b.spec["mounts"].as_array_mut().unwrap().push(json!({"destination": "/out", "type": "bind", "source": rw.path(), "options": ["bind", "rw"]}));
    let (code, out, err) = rt.run_bundle(&b, &unique_id("bind"));
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("from host\nro\n"), "{out}");
    assert!(out.contains(" ro,nosuid,nodev"), "{out}");
    assert_eq!(
        std::fs::read_to_string(rw.path().join("file")).unwrap(),
        "written\n"
    );
    assert!(!host.path().join("x").exists());
}

#[test]
fn symlinked_mount_target_stays_inside_rootfs() {
    if !can_run() {
        return;
    }
    let rt = Runtime::new();
    let victim = tempfile::tempdir().unwrap();
    let b = Bundle::new(&sh("ls /evil/target 2>&1 | head -1"), false);
    // The image points /evil at a host directory; the mount must land inside the rootfs.
    std::os::unix::fs::symlink(victim.path(), b.rootfs().join("evil")).unwrap();
    let mut b = b;
    b.spec["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "/evil/target", "type": "tmpfs", "source": "tmpfs"}));
    let (code, _, err) = rt.run_bundle(&b, &unique_id("symlink"));
    assert_eq!(code, 0, "{err}");
    assert!(
        std::fs::read_dir(victim.path()).unwrap().next().is_none(),
        "wrote outside the rootfs"
    );
    let inside = b
        .rootfs()
        .join(victim.path().strip_prefix("/").unwrap())
        .join("target");
    assert!(inside.is_dir(), "{inside:?}");
}

#[test]
fn proc_symlink_is_not_followed_to_the_host() {
    if !can_run() {
        return;
    }
    let rt = Runtime::new();
    let b = Bundle::new(&sh("cat /proc/self/uid_map | wc -l"), true);
    std::fs::remove_dir(b.rootfs().join("proc")).unwrap();
    std::os::unix::fs::symlink("/etc", b.rootfs().join("proc")).unwrap();
    let host_etc_before = std::fs::read_dir("/etc").unwrap().count();
    let (code, out, err) = rt.run_bundle(&b, &unique_id("procsym"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "1");
    assert_eq!(std::fs::read_dir("/etc").unwrap().count(), host_etc_before);
}

#[test]
fn devices_and_dev_symlinks() {
    if !can_run() {
        return;
    }
    for userns in [false, true] {
        let rt = Runtime::new();
        let b = Bundle::new(&sh("echo x > /dev/null && head -c 4 /dev/zero | wc -c; ls -l /dev/ptmx /dev/fd | wc -l; test -c /dev/urandom && echo chr"), userns);
        let (code, out, err) = rt.run_bundle(&b, &unique_id("dev"));
        assert_eq!(code, 0, "userns={userns}: {err}");
        assert_eq!(out, "4\n2\nchr\n", "userns={userns}");
    }
}

#[test]
fn failed_create_reports_the_step_and_leaves_nothing() {
    if !can_run() {
        return;
    }
    let rt = Runtime::new();
    let mut b = Bundle::new(&["no-such-program"], true);
    let id = unique_id("fail");
    b.spec["linux"]["cgroupsPath"] = json!(format!("/berth-test-{id}"));
    b.write();
    let err = rt.fails(&["create", "--bundle", b.path().to_str().unwrap(), &id]);
    assert!(
        err.contains("exec: \"no-such-program\": executable file not found in $PATH"),
        "{err}"
    );
    assert!(!rt.state_dir(&id).exists(), "state dir left behind");
    assert!(find_cgroup_dirs(&id).is_empty(), "cgroup left behind");

    // A mount failure inside the init names the mount and the errno.
    b.spec["process"]["args"] = json!(["true"]);
    b.spec["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "/x", "type": "nosuchfs", "source": "none"}));
    b.write();
    let err = rt.fails(&["create", "--bundle", b.path().to_str().unwrap(), &id]);
    assert!(
        err.contains("mounting nosuchfs at") && err.contains("/x: ENODEV"),
        "{err}"
    );
    assert!(!rt.state_dir(&id).exists());
    assert!(find_cgroup_dirs(&id).is_empty());
}

#[test]
fn invalid_config_names_the_field() {
    if !can_run() {
        return;
    }
    let rt = Runtime::new();
    let mut b = Bundle::new(&["true"], false);
    b.spec["process"]["user"]["uid"] = json!("root");
    let id = unique_id("badcfg");
    b.write();
    let err = rt.fails(&["create", "--bundle", b.path().to_str().unwrap(), &id]);
    assert!(err.contains("process.user.uid"), "{err}");
    assert!(!rt.state_dir(&id).exists());
    let err = rt.fails(&[
        "create",
        "--bundle",
        b.path().to_str().unwrap(),
        "../escape",
    ]);
    assert!(err.contains("invalid container id"), "{err}");
    // A duplicate id is refused and the existing container untouched.
    b.spec["process"]["user"]["uid"] = json!(0);
    b.spec["process"]["args"] = json!(["sleep", "10"]);
    b.write();
    rt.ok(&["create", "--bundle", b.path().to_str().unwrap(), &id]);
    let err = rt.fails(&["create", "--bundle", b.path().to_str().unwrap(), &id]);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(rt.status(&id), "created");
}

#[test]
fn exec_joins_the_container() {
    if !can_run() {
        return;
    }
    let rt = Runtime::new();
    let mut b = Bundle::new(&["sleep", "30"], true);
    b.spec["hostname"] = json!("exec-host");
    b.write();
    let id = unique_id("exec");
    rt.ok(&[
        "run",
        "--detach",
        "--bundle",
        b.path().to_str().unwrap(),
        &id,
    ]);
    let out = rt.ok(&[
        "exec",
        "--env",
        "FOO=bar",
        &id,
        "sh",
        "-c",
        "hostname; echo $FOO; cat /proc/1/cmdline | tr '\\0' ' '; echo; cat /proc/self/uid_map",
    ]);
    let l: Vec<&str> = out.lines().collect();
    assert_eq!(l[0], "exec-host");
    assert_eq!(l[1], "bar");
    assert_eq!(l[2].trim(), "sleep 30");
    assert!(l[3].contains("100000"), "{out}");
    let code = rt.run(&["exec", &id, "sh", "-c", "exit 7"]).status.code();
    assert_eq!(code, Some(7));
    let err = rt.fails(&["exec", &id, "nope"]);
    assert!(err.contains("executable file not found"), "{err}");
    // The exec'd process is in the container's cgroup.
    let out = rt.ok(&[
        "exec",
        "--user",
        "1000:1000",
        &id,
        "sh",
        "-c",
        "id -u; cat /proc/self/cgroup | grep pids",
    ]);
    assert!(out.starts_with("1000\n"), "{out}");
    assert!(out.trim_end().ends_with(":pids:/"), "{out}");
    // --process with a JSON file, detached with a pid file.
    let proc_json = b.path().join("p.json");
    std::fs::write(
        &proc_json,
        json!({"args": ["sleep", "5"], "cwd": "/", "user": {"uid": 0, "gid": 0}}).to_string(),
    )
    .unwrap();
    let pidfile = b.path().join("exec.pid");
    rt.ok(&[
        "exec",
        "--detach",
        "--pid-file",
        pidfile.to_str().unwrap(),
        "--process",
        proc_json.to_str().unwrap(),
        &id,
    ]);
    let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().parse().unwrap();
    let pids: Vec<i32> = serde_json::from_str(&rt.ok(&["ps", "--format", "json", &id])).unwrap();
    assert!(pids.contains(&pid), "{pids:?} lacks {pid}");
    rt.ok(&["delete", "--force", &id]);
}

#[test]
fn pause_resume_and_update() {
    if !can_run() {
        return;
    }
    let rt = Runtime::new();
    let b = Bundle::new(&["sleep", "30"], false);
    b.write();
    let id = unique_id("pause");
    rt.ok(&["run", "-d", "--bundle", b.path().to_str().unwrap(), &id]);
    rt.ok(&["pause", &id]);
    assert_eq!(rt.status(&id), "paused");
    let err = rt.fails(&["exec", &id, "true"]);
    assert!(err.contains("paused"), "{err}");
    rt.ok(&["resume", &id]);
    assert_eq!(rt.status(&id), "running");
    rt.ok(&["update", "--memory", "96m", "--pids-limit", "17", &id]);
    let out = rt.ok(&[
        "exec",
        &id,
        "cat",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
        "/sys/fs/cgroup/pids/pids.max",
    ]);
    assert_eq!(out, format!("{}\n17\n", 96 << 20));
    let list: serde_json::Value =
        serde_json::from_str(&rt.ok(&["list", "--format", "json"])).unwrap();
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["status"], "running");
    rt.ok(&["kill", "--all", &id, "SIGKILL"]);
    assert!(wait_status(&rt, &id, "stopped"));
    rt.ok(&["delete", &id]);
}

#[test]
fn hooks_run_in_order_with_state() {
    if !can_run() {
        return;
    }
    let rt = Runtime::new();
    let log = tempfile::tempdir().unwrap();
    let l = log.path().join("log");
    let hook = |name: &str| json!({"path": "/bin/sh", "args": ["sh", "-c", format!("echo {name} $(cat | grep -o '\"status\":\"[a-z]*\"') >> {}", l.display())]});
    let mut b = Bundle::new(&["true"], false);
    b.spec["root"]["readonly"] = json!(false);
    b.spec["hooks"] = json!({
        "prestart": [hook("prestart")],
        "createRuntime": [hook("createRuntime")],
        // Runs in the container's namespaces before pivot_root: it sees the host's paths
        // but the container's hostname.
        "createContainer": [{"path": "/bin/sh", "args": ["sh", "-c", format!("echo createContainer $(hostname) >> {}", l.display())]}],
        // Runs inside the container after pivot_root: only the container's files exist.
        "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "cat > /tmp/start-state"]}],
        "poststart": [hook("poststart")],
        "poststop": [hook("poststop")]
    });
    let (code, _, err) = rt.run_bundle(&b, &unique_id("hooks"));
    assert_eq!(code, 0, "{err}");
    let got = std::fs::read_to_string(&l).unwrap();
    assert_eq!(got, "prestart \"status\":\"creating\"\ncreateRuntime \"status\":\"creating\"\ncreateContainer berth\npoststart \"status\":\"running\"\npoststop \"status\":\"stopped\"\n");
    let start_state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(b.rootfs().join("tmp/start-state")).unwrap())
            .unwrap();
    assert!(start_state["id"].as_str().unwrap().starts_with("hooks-"));

    // A failing createRuntime hook aborts create and cleans up.
    b.spec["hooks"] = json!({"createRuntime": [{"path": "/bin/false"}]});
    b.write();
    let id = unique_id("hookfail");
    let err = rt.fails(&["create", "--bundle", b.path().to_str().unwrap(), &id]);
    assert!(
        err.contains("createRuntime hook /bin/false failed"),
        "{err}"
    );
    assert!(!rt.state_dir(&id).exists());
}

#[test]
fn only_stdio_and_preserved_fds_reach_the_container() {
    if !can_run() {
        return;
    }
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let rt = Runtime::new();
    let b = Bundle::new(
        &sh("ls /proc/self/fd | sort -n | tr '\\n' ' '; echo via-fd3 >&3"),
        false,
    );
    b.write();
    let out_file = tempfile::NamedTempFile::new().unwrap();
    let leak = std::fs::File::open("/etc/hostname").unwrap();
    let f3 = out_file.reopen().unwrap();
    let (f3_raw, leak_raw) = (f3.as_raw_fd(), leak.as_raw_fd());
    let id = unique_id("fds");
    rt.track(&id);
    let mut cmd = rt.cmd();
    cmd.args([
        "run",
        "--preserve-fds",
        "1",
        "--bundle",
        b.path().to_str().unwrap(),
        &id,
    ]);
    // SAFETY: dup2 in the child before exec; fd 3 = our file, fd 4 = a "leaked" host fd.
    unsafe {
        cmd.pre_exec(move || {
            libc::dup2(f3_raw, 3);
            libc::dup2(leak_raw, 4);
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 0-2, the preserved 3, and ls's own directory fd; never the leaked 4 or runtime fds.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "0 1 2 3 4 ",
        "fd 4 is ls's own dir fd"
    );
    assert_eq!(
        std::fs::read_to_string(out_file.path()).unwrap(),
        "via-fd3\n"
    );
}

#[test]
fn cwd_through_a_leaked_fd_is_refused() {
    if !can_run() {
        return;
    }
    // CVE-2024-21626: cwd /proc/self/fd/N must never resolve to a host directory.
    let rt = Runtime::new();
    for n in 3..9 {
        let mut b = Bundle::new(&sh("pwd; ls .. | head -3"), false);
        b.spec["process"]["cwd"] = json!(format!("/proc/self/fd/{n}"));
        let (code, out, err) = rt.run_bundle(&b, &unique_id("cwd"));
        if code == 0 {
            assert!(!out.contains("(unreachable)"), "fd {n}: {out}");
            assert!(
                !out.contains("berth-test-root"),
                "fd {n} reached the host state dir: {out}"
            );
        } else {
            assert!(
                err.contains("working directory") || err.contains("changing directory"),
                "fd {n}: {err}"
            );
        }
    }
}

#[test]
fn init_runs_from_a_protected_copy() {
    if !can_run() {
        return;
    }
    // CVE-2019-5736: keep a handle on the runtime binary the container sees as
    // /proc/<init>/exe, wait for the runtime to be gone, then reopen it for writing.
    // A private copy of the binary, so no other test's process is executing it when we
    // try the write (that would only fail with ETXTBSY, for the wrong reason).
    let copy_dir = tempfile::tempdir().unwrap();
    let copy = copy_dir.path().join("berth");
    std::fs::copy(berth_bin(), &copy).unwrap();
    let rt = Runtime::new();
    let runtime = |args: &[&str]| {
        let out = std::process::Command::new(&copy)
            .arg("oci")
            .arg("--root")
            .arg(rt.root.path())
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(out.success(), "{args:?}");
    };
    let b = Bundle::new(&["true"], true);
    b.write();
    let id = unique_id("sealed");
    rt.track(&id);
    runtime(&["create", "--bundle", b.path().to_str().unwrap(), &id]);
    let pid = rt.state(&id)["pid"].as_i64().unwrap();
    let handle = nix::fcntl::open(
        format!("/proc/{pid}/exe").as_str(),
        nix::fcntl::OFlag::O_PATH,
        nix::sys::stat::Mode::empty(),
    )
    .unwrap();
    runtime(&["delete", &id]);
    let reopen = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&handle));
    let err = std::fs::OpenOptions::new()
        .write(true)
        .open(&reopen)
        .unwrap_err();
    let code = err.raw_os_error().unwrap();
    // EROFS: read-only clone; EPERM: sealed memfd. ETXTBSY would only mean "busy right now".
    assert!(
        code == libc::EROFS || code == libc::EPERM,
        "reopened the runtime binary: {err}"
    );
}

#[test]
fn runc_layout_under_the_berth_runtime_name() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("berth-runtime");
    std::os::unix::fs::symlink(berth_bin(), &link).unwrap();
    let out = std::process::Command::new(&link)
        .arg("features")
        .output()
        .unwrap();
    assert!(out.status.success());
    let f: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(f["ociVersionMax"], "1.2.0");
    assert!(f["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .contains(&json!("user")));
    assert_eq!(f["linux"]["seccomp"]["enabled"], true);
    let root = tempfile::tempdir().unwrap();
    let b = Bundle::new(&sh("echo via-runc-layout"), false);
    b.write();
    let id = unique_id("layout");
    let out = std::process::Command::new(&link)
        .args([
            "--root",
            root.path().to_str().unwrap(),
            "--log-format",
            "json",
            "run",
            &id,
            "--bundle",
            b.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "via-runc-layout\n");
}

#[test]
fn errors_go_to_the_log_file_as_json() {
    if !can_run() {
        return;
    }
    let rt = Runtime::new();
    let log = rt.root.path().join("log.json");
    let out = rt
        .cmd()
        .args([
            "--log",
            log.to_str().unwrap(),
            "--log-format",
            "json",
            "state",
            "nope",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let line: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(line["level"], "error");
    assert!(line["msg"]
        .as_str()
        .unwrap()
        .contains("\"nope\" does not exist"));
}

#[test]
fn terminal_via_console_socket() {
    if !can_run() {
        return;
    }
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::io::{IoSliceMut, Read};
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::net::UnixListener;

    let rt = Runtime::new();
    let mut b = Bundle::new(&sh("tty; test -t 0 && echo stdin-is-tty; stty size"), true);
    b.spec["process"]["terminal"] = json!(true);
    b.spec["process"]["consoleSize"] = json!({"height": 33, "width": 101});
    b.write();
    let sock_path = b.path().join("console.sock");
    let listener = UnixListener::bind(&sock_path).unwrap();
    let receiver = std::thread::spawn(move || -> OwnedFd {
        let (conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 256];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = recvmsg::<()>(
            std::os::fd::AsRawFd::as_raw_fd(&conn),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )
        .unwrap();
        for c in msg.cmsgs().unwrap() {
            if let ControlMessageOwned::ScmRights(fds) = c {
                // SAFETY: the fd was just received and is ours.
                return unsafe { OwnedFd::from_raw_fd(fds[0]) };
            }
        }
        panic!("no fd received");
    });
    let id = unique_id("tty");
    rt.ok(&[
        "create",
        "--console-socket",
        sock_path.to_str().unwrap(),
        "--bundle",
        b.path().to_str().unwrap(),
        &id,
    ]);
    let master = receiver.join().unwrap();
    rt.ok(&["start", &id]);
    let mut f = std::fs::File::from(master);
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    // Reading the master ends with EIO once the container side closes.
    for _ in 0..100 {
        match f.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    let out = String::from_utf8_lossy(&out).replace('\r', "");
    assert!(out.contains("/dev/pts/0"), "{out}");
    assert!(out.contains("stdin-is-tty"), "{out}");
    assert!(out.contains("33 101"), "{out}");
    rt.ok(&["delete", "--force", &id]);
}

#[test]
fn sysctl_hostname_domainname_and_readonly_proc_sys() {
    if !can_run() {
        return;
    }
    let rt = Runtime::new();
    let mut b = Bundle::new(&sh("cat /proc/sys/net/ipv4/ip_unprivileged_port_start; hostname; cat /proc/sys/kernel/domainname"), true);
    b.spec["linux"]["sysctl"] = json!({"net.ipv4.ip_unprivileged_port_start": "80"});
    b.spec["hostname"] = json!("h1");
    b.spec["domainname"] = json!("example.test");
    let (code, out, err) = rt.run_bundle(&b, &unique_id("sysctl"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "80\nh1\nexample.test\n");
    // The host's value is untouched: the sysctl is per network namespace.
    let host = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start").unwrap();
    assert_ne!(host.trim(), "80");
}

#[test]
fn joins_a_network_namespace_by_path() {
    if !can_run() {
        return;
    }
    struct NetNs(String);
    impl Drop for NetNs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .status();
        }
    }
    let name = unique_id("berth-test-netns");
    let st = std::process::Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .unwrap();
    assert!(st.success());
    let ns = NetNs(name);
    let path = format!("/run/netns/{}", ns.0);
    let want = std::fs::metadata(&path)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
    let rt = Runtime::new();
    // A user namespace too: the path is joined while still host root, then userns unshared.
    let mut b = Bundle::new(&sh("readlink /proc/self/ns/net"), true);
    for n in b.spec["linux"]["namespaces"].as_array_mut().unwrap() {
        if n["type"] == "network" {
            n["path"] = json!(path);
        }
    }
    let (code, out, err) = rt.run_bundle(&b, &unique_id("netns"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), format!("net:[{want}]"));
}

#[test]
fn time_namespace_offsets() {
    if !can_run() {
        return;
    }
    let rt = Runtime::new();
    let mut b = Bundle::new(&sh("cut -d. -f1 /proc/uptime"), false);
    b.spec["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "time"}));
    b.spec["linux"]["timeOffsets"] = json!({"boottime": {"secs": 86400000, "nanosecs": 0}});
    let (code, out, err) = rt.run_bundle(&b, &unique_id("time"));
    assert_eq!(code, 0, "{err}");
    let inside: u64 = out.trim().parse().unwrap();
    assert!(
        inside >= 86_400_000,
        "uptime {inside} lacks the boottime offset"
    );
}

#[test]
fn no_pivot_and_oom_score_adj() {
    if !can_run() {
        return;
    }
    let rt = Runtime::new();
    let mut b = Bundle::new(
        &sh("cat /proc/self/oom_score_adj; ls /; grep -c ' / ' /proc/self/mountinfo"),
        false,
    );
    b.spec["process"]["oomScoreAdj"] = json!(500);
    b.write();
    let id = unique_id("nopivot");
    let out = rt.ok(&[
        "run",
        "--no-pivot",
        "--bundle",
        b.path().to_str().unwrap(),
        &id,
    ]);
    let l: Vec<&str> = out.lines().collect();
    assert_eq!(l[0], "500");
    assert!(
        l.contains(&"bin") && !l.contains(&"boot") && !l.contains(&"home"),
        "{out}"
    );
}

#[test]
fn spec_devices_and_root_propagation() {
    if !can_run() {
        return;
    }
    let rt = Runtime::new();
    let mut b = Bundle::new(&sh("stat -c '%F %t:%T %a %u' /dev/mynull; echo ok > /dev/mynull && echo wrote; awk '$5 == \"/\" {print $7}' /proc/self/mountinfo"), false);
    // A device of the spec's own, with mode and owner; the cgroup allows it automatically
    // even after the spec's "deny all".
    b.spec["linux"]["devices"] = json!([{"path": "/dev/mynull", "type": "c", "major": 1, "minor": 3, "fileMode": 0o620, "uid": 7}]);
    b.spec["linux"]["rootfsPropagation"] = json!("private");
    let (code, out, err) = rt.run_bundle(&b, &unique_id("devs"));
    assert_eq!(code, 0, "{err}");
    let l: Vec<&str> = out.lines().collect();
    assert_eq!(l[0], "character special file 1:3 620 7", "{out}");
    assert_eq!(l[1], "wrote");
    // Private: no "shared:N" or "master:N" tag on the root mount.
    assert!(
        !l[2].starts_with("shared:") && !l[2].starts_with("master:"),
        "{out}"
    );
}

#[test]
fn run_forwards_signals_to_the_container() {
    if !can_run() {
        return;
    }
    let rt = Runtime::new();
    // PID 1 ignores signals it has no handler for, so the script installs one.
    let b = Bundle::new(&sh("trap 'exit 3' TERM; echo ready; sleep 30 & wait"), true);
    b.write();
    let id = unique_id("sig");
    rt.track(&id);
    let mut child = rt
        .cmd()
        .args(["run", "--bundle", b.path().to_str().unwrap(), &id])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "ready\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(3));
    assert!(
        !rt.state_dir(&id).exists(),
        "run did not delete the container"
    );
}
