//! A real `docker-registry` on loopback for CLI tests (berth-testkit's), and a busybox
//! image pushed to it with `skopeo`: the image is an OCI layout built with tar and gzip,
//! its digests computed with berth-image. Everything listens on 127.0.0.1 only; the
//! registry is killed by its PID on drop.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

use berth_image::digest::Digest;
use serde_json::json;

// The registry process and `skopeo copy` are shared with berth-image's tests.
pub use berth_testkit::registry::{push, Registry};

fn write_blob(layout: &Path, bytes: &[u8]) -> Digest {
    let d = Digest::of(bytes);
    std::fs::write(layout.join("blobs/sha256").join(d.hex()), bytes).expect("writing blob");
    d
}

/// An OCI layout under `dir/layout` holding `tag`: a one-layer busybox image (the
/// gzip'd tarball of common::make_rootfs), `sh` as its command. Returns the layout path.
pub fn busybox_layout(dir: &Path, tag: &str) -> std::path::PathBuf {
    let tar = crate::common::busybox_tar(dir);
    let raw = std::fs::read(&tar).expect("reading the busybox tarball");
    let gz = Command::new("gzip")
        .args(["-n", "-c"])
        .arg(&tar)
        .output()
        .expect("running gzip");
    assert!(gz.status.success(), "gzip failed");
    let layout = dir.join("layout");
    std::fs::create_dir_all(layout.join("blobs/sha256")).expect("creating the layout");
    let layer = write_blob(&layout, &gz.stdout);
    let config = serde_json::to_vec(&json!({
        "architecture": berth_image::registry::host_platform().1,
        "os": "linux",
        "config": {"Cmd": ["sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [Digest::of(&raw).to_string()]},
    }))
    .expect("config json");
    let config_digest = write_blob(&layout, &config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest.to_string(),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": layer.to_string(),
            "size": gz.stdout.len(),
        }],
    }))
    .expect("manifest json");
    let manifest_digest = write_blob(&layout, &manifest);
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("writing oci-layout");
    let index = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest.to_string(),
        "size": manifest.len(),
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }]});
    std::fs::write(layout.join("index.json"), index.to_string()).expect("writing index.json");
    std::fs::remove_file(&tar).expect("removing the busybox tarball");
    layout
}
