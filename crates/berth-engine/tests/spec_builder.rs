//! The engine's pure pipeline end to end, through the public API only: flags → request →
//! user resolved in the image → id range allocated → spec → config.json that the runtime
//! loads and validates.

use std::path::Path;

use berth_engine::defaults::HostLimits;
use berth_engine::request::{resolve_user, RunFlags, RunRequest};
use berth_engine::spec_builder::{build_spec, user_to_resolve, BuildContext};
use berth_engine::userns::{Allocator, Pool, DEFAULT_RANGE_SIZE};
use oci_spec::image::ImageConfiguration;

const ID: &str = "feedfacefeedfacefeedfacefeedfacefeedfacefeedfacefeedfacefeedface";

fn image() -> ImageConfiguration {
    serde_json::from_value(serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": []},
        "config": {
            "User": "app",
            "Env": ["PATH=/usr/bin:/bin"],
            "Cmd": ["/bin/sh", "-c", "id"],
            "WorkingDir": "/home/app",
        },
    }))
    .unwrap()
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn flags_to_a_bundle_the_runtime_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    let rootfs = bundle.join("rootfs");
    write(
        &rootfs.join("etc/passwd"),
        "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
    );
    write(&rootfs.join("etc/group"), "app:x:1000:\nwheel:x:10:app\n");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let env_file = dir.path().join("app.env");
    write(&env_file, "# settings\nMODE=prod\nFROM_HOST\n");

    let flags = RunFlags {
        image: "example/app".into(),
        env: vec!["LEVEL=debug".into()],
        env_file: vec![env_file],
        volume: vec![format!("{}:/data:ro", data.display())],
        tmpfs: vec!["/tmp:size=16m".into()],
        memory: Some("128m".into()),
        cpus: Some("0.5".into()),
        pids_limit: Some(64),
        cap_drop: vec!["NET_RAW".into()],
        read_only: true,
        label: vec!["team=web".into()],
        ..Default::default()
    };
    let req = RunRequest::parse(&flags, &|k| (k == "FROM_HOST").then(|| "1".into())).unwrap();
    let img = image();

    let user_spec = user_to_resolve(&img, &req).unwrap();
    let user = resolve_user(&rootfs, &user_spec).unwrap();
    assert_eq!(
        (user.uid, user.gid, user.additional_gids.clone()),
        (1000, 1000, vec![10])
    );

    let alloc = Allocator::new(
        &dir.path().join("userns.json"),
        Pool::default(),
        DEFAULT_RANGE_SIZE,
    )
    .unwrap();
    let range = alloc.allocate(ID).unwrap();

    let mut ctx = BuildContext::new(&rootfs, ID, "/berth/feedfacefeed");
    ctx.id_range = Some(range);
    ctx.user = Some(user);
    ctx.host = HostLimits::detect();
    let (spec, warnings) = build_spec(&img, &req, &ctx).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");

    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&spec).unwrap(),
    )
    .unwrap();
    let loaded = berth_runtime::spec::load(&bundle).unwrap();
    let v = serde_json::to_value(&loaded).unwrap();
    let env: Vec<&str> = v["process"]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert_eq!(
        env,
        [
            "PATH=/usr/bin:/bin",
            "HOSTNAME=feedfacefeed",
            "MODE=prod",
            "FROM_HOST=1",
            "LEVEL=debug",
            "HOME=/home/app"
        ]
    );
    assert_eq!(v["process"]["cwd"], "/home/app");
    assert_eq!(
        v["process"]["user"]["additionalGids"],
        serde_json::json!([10])
    );
    assert_eq!(v["root"]["readonly"], true);
    assert_eq!(v["linux"]["uidMappings"][0]["hostID"], range.start);
    assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 50000);
    assert_eq!(v["linux"]["resources"]["pids"]["limit"], 64);
    assert_eq!(v["annotations"]["team"], "web");
    assert!(!v["process"]["capabilities"]["bounding"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c == "CAP_NET_RAW"));

    // Removing the container frees its range for the next one.
    assert!(alloc.release(ID).unwrap());
    assert_eq!(alloc.allocate("next").unwrap(), range);
}

#[test]
fn a_symlink_to_a_sensitive_host_path_is_refused_before_anything_else() {
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    let sneaky = dir.path().join("innocent");
    std::os::unix::fs::symlink("/etc", &sneaky).unwrap();
    let flags = RunFlags {
        image: "example/app".into(),
        volume: vec![format!("{}:/cfg", sneaky.display())],
        user: Some("0".into()),
        ..Default::default()
    };
    let req = RunRequest::parse(&flags, &|_| None).unwrap();
    let mut ctx = BuildContext::new(&rootfs, ID, "/berth/x");
    ctx.id_range = Some(berth_engine::userns::IdRange {
        start: 300_000,
        size: 65536,
    });
    let err = build_spec(&image(), &req, &ctx).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "refusing to mount {} (resolves to /etc): host path is sensitive (/etc holds host credentials and configuration); use --allow-sensitive-mount to override",
            sneaky.display()
        )
    );
}
