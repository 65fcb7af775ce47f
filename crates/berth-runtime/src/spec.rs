//! Loading and validating a bundle's config.json.
//!
//! Deserialisation goes through `serde_path_to_error`, so a malformed config names the
//! field (`process.user.uid: invalid type: string "x", expected u32`), not just a column.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SpecError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: field `{field}`: {message}")]
    Parse {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("invalid {path}: {field}: {reason}")]
    Invalid {
        path: PathBuf,
        field: String,
        reason: String,
    },
}

/// Reads and validates `<bundle>/config.json`.
pub fn load(bundle: &Path) -> Result<Spec, SpecError> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(|source| SpecError::Read {
        path: path.clone(),
        source,
    })?;
    let spec = parse(&path, &text)?;
    validate(&path, bundle, &spec)?;
    Ok(spec)
}

/// The spec types, for callers that build or read parts of a spec.
pub use oci_spec::runtime as oci;

/// Parses spec JSON, naming the offending field on error.
pub fn parse(path: &Path, text: &[u8]) -> Result<Spec, SpecError> {
    let de = &mut serde_json::Deserializer::from_slice(text);
    parse_as(path, de)
}

/// Deserialises any part of a spec (a process for `exec --process`, resources for
/// `update -r`), naming the offending field on error.
pub fn parse_as<'de, T: serde::Deserialize<'de>>(
    path: &Path,
    de: &mut serde_json::Deserializer<serde_json::de::SliceRead<'de>>,
) -> Result<T, SpecError> {
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        SpecError::Parse {
            path: path.to_path_buf(),
            field: if field.is_empty() || field == "." {
                "(top level)".into()
            } else {
                field
            },
            message: e.into_inner().to_string(),
        }
    })
}

/// Checks what serde cannot: required sections, consistent namespaces and id maps.
pub fn validate(path: &Path, bundle: &Path, spec: &Spec) -> Result<(), SpecError> {
    let invalid = |field: &str, reason: String| SpecError::Invalid {
        path: path.to_path_buf(),
        field: field.to_string(),
        reason,
    };
    if !spec.version().starts_with("1.") {
        return Err(invalid(
            "ociVersion",
            format!("unsupported version {:?} (want 1.x)", spec.version()),
        ));
    }
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| invalid("root", "missing".into()))?;
    let rootfs = rootfs_path(bundle, spec);
    if !rootfs.is_dir() {
        return Err(invalid(
            "root.path",
            format!("{} is not a directory", root.path().display()),
        ));
    }
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| invalid("process", "missing".into()))?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(invalid("process.args", "must name a program".into()));
    }
    if !process.cwd().is_absolute() {
        return Err(invalid(
            "process.cwd",
            format!("{} is not absolute", process.cwd().display()),
        ));
    }
    let linux = spec
        .linux()
        .as_ref()
        .ok_or_else(|| invalid("linux", "missing".into()))?;
    let mut seen = HashSet::new();
    let mut has_user = false;
    for ns in linux.namespaces().iter().flatten() {
        if !seen.insert(ns.typ()) {
            return Err(invalid(
                "linux.namespaces",
                format!("namespace {:?} listed twice", ns.typ()),
            ));
        }
        if ns.typ() == LinuxNamespaceType::User {
            has_user = ns.path().is_none();
        }
        if let Some(p) = ns.path() {
            if !p.is_absolute() {
                return Err(invalid(
                    "linux.namespaces",
                    format!("{:?} path {} is not absolute", ns.typ(), p.display()),
                ));
            }
        }
    }
    let uid_maps = linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty());
    let gid_maps = linux.gid_mappings().as_ref().is_some_and(|m| !m.is_empty());
    if has_user && (!uid_maps || !gid_maps) {
        return Err(invalid(
            "linux.uidMappings",
            "a new user namespace needs both uidMappings and gidMappings".into(),
        ));
    }
    if !has_user && (uid_maps || gid_maps) && !seen.contains(&LinuxNamespaceType::User) {
        return Err(invalid(
            "linux.uidMappings",
            "id mappings given without a user namespace".into(),
        ));
    }
    for m in spec.mounts().iter().flatten() {
        if !m.destination().is_absolute() {
            return Err(invalid(
                "mounts",
                format!("destination {} is not absolute", m.destination().display()),
            ));
        }
    }
    if let Some(h) = spec.hostname() {
        if !h.is_empty() && !seen.contains(&LinuxNamespaceType::Uts) {
            return Err(invalid(
                "hostname",
                "setting a hostname needs a new uts namespace".into(),
            ));
        }
    }
    Ok(())
}

/// The rootfs directory: `root.path`, relative to the bundle unless absolute.
pub fn rootfs_path(bundle: &Path, spec: &Spec) -> PathBuf {
    let p = spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .unwrap_or_else(|| PathBuf::from("rootfs"));
    if p.is_absolute() {
        p
    } else {
        bundle.join(p)
    }
}

/// docker's default capability set (moby `oci.DefaultCapabilities`), also the engine's.
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// A default spec for a bundle, like `runc spec`: every namespace, docker's default
/// capabilities, masked and read-only /proc paths, no_new_privs. With `userns`, container
/// root maps to the unprivileged host range 100000-165535.
pub fn example(args: &[String], userns: bool) -> serde_json::Value {
    let caps = DEFAULT_CAPABILITIES;
    let mut namespaces = vec![
        serde_json::json!({"type": "pid"}),
        serde_json::json!({"type": "network"}),
        serde_json::json!({"type": "ipc"}),
        serde_json::json!({"type": "uts"}),
        serde_json::json!({"type": "mount"}),
        serde_json::json!({"type": "cgroup"}),
    ];
    if userns {
        namespaces.push(serde_json::json!({"type": "user"}));
    }
    let mut v = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "berth",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": namespaces,
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                "/proc/scsi", "/sys/devices/virtual/powercap"
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
            ]
        }
    });
    if userns {
        v["linux"]["uidMappings"] =
            serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        v["linux"]["gidMappings"] =
            serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    }
    v
}

/// The cgroup resources to apply: the spec's, with the device rules every container
/// needs appended after the spec's own (so a leading "deny all" doesn't block /dev/null),
/// plus an allow rule per device the spec creates, as runc does.
pub fn cgroup_resources(spec: &Spec) -> Option<oci::LinuxResources> {
    let linux = spec.linux().as_ref()?;
    let mut res = linux.resources().clone()?;
    let mut rules: Vec<serde_json::Value> = res
        .devices()
        .iter()
        .flatten()
        .filter_map(|d| serde_json::to_value(d).ok())
        .collect();
    if rules.is_empty() {
        return Some(res);
    }
    let allow = |typ: &str, major: Option<i64>, minor: Option<i64>, access: &str| {
        let mut v = serde_json::json!({"allow": true, "type": typ, "access": access});
        if let Some(m) = major {
            v["major"] = m.into();
        }
        if let Some(m) = minor {
            v["minor"] = m.into();
        }
        v
    };
    // mknod of anything (access still needs a rule), then the standard devices.
    rules.push(allow("c", None, None, "m"));
    rules.push(allow("b", None, None, "m"));
    for (major, minor) in [
        (1, 3),
        (1, 5),
        (1, 7),
        (1, 8),
        (1, 9),
        (5, 0),
        (5, 1),
        (5, 2),
    ] {
        rules.push(allow("c", Some(major), Some(minor), "rwm"));
    }
    rules.push(allow("c", Some(136), None, "rwm")); // /dev/pts/*
    for d in linux.devices().iter().flatten() {
        let typ = match d.typ() {
            oci::LinuxDeviceType::B => "b",
            oci::LinuxDeviceType::P => continue,
            _ => "c",
        };
        rules.push(allow(typ, Some(d.major()), Some(d.minor()), "rwm"));
    }
    let devices = serde_json::from_value(serde_json::Value::Array(rules)).ok()?;
    res.set_devices(Some(devices));
    Some(res)
}

/// Whether the spec asks for a namespace of this type (new or joined).
pub fn has_namespace(spec: &Spec, typ: LinuxNamespaceType) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| ns.iter().any(|n| n.typ() == typ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal(extra: &str) -> String {
        format!(
            r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs"}},
            "process":{{"args":["sh"],"cwd":"/","user":{{"uid":0,"gid":0}}}},
            "linux":{{"namespaces":[{{"type":"pid"}},{{"type":"mount"}}]}}{extra}}}"#
        )
    }

    #[test]
    fn parse_error_names_the_field() {
        let text = r#"{"ociVersion":"1.0.2","process":{"user":{"uid":"root","gid":0},"cwd":"/"}}"#;
        let err = parse(Path::new("c.json"), text.as_bytes()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("process.user.uid"), "{msg}");
    }

    #[test]
    fn malformed_json_is_reported() {
        let err = parse(Path::new("c.json"), b"{\"ociVersion\": ").unwrap_err();
        assert!(err.to_string().starts_with("parsing c.json"), "{err}");
    }

    #[test]
    fn validate_rejects_duplicates_and_missing_maps() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rootfs")).unwrap();
        let ok = parse(Path::new("c"), minimal("").as_bytes()).unwrap();
        validate(Path::new("c"), dir.path(), &ok).unwrap();

        let dup = minimal("")
            .replace(r#"{"type":"mount"}"#, r#"{"type":"pid"}"#)
            .into_bytes();
        let spec = parse(Path::new("c"), &dup).unwrap();
        let err = validate(Path::new("c"), dir.path(), &spec).unwrap_err();
        assert!(err.to_string().contains("listed twice"), "{err}");

        let user = minimal("")
            .replace(r#"{"type":"mount"}"#, r#"{"type":"user"}"#)
            .into_bytes();
        let spec = parse(Path::new("c"), &user).unwrap();
        let err = validate(Path::new("c"), dir.path(), &spec).unwrap_err();
        assert!(err.to_string().contains("uidMappings"), "{err}");
    }

    #[test]
    fn default_devices_are_allowed_after_deny_all() {
        let spec = parse(
            Path::new("c"),
            minimal("")
                .replace(
                    r#""linux":{"#,
                    r#""linux":{"resources":{"devices":[{"allow":false,"access":"rwm"}]},"devices":[{"path":"/dev/fuse","type":"c","major":10,"minor":229}],"#,
                )
                .as_bytes(),
        )
        .unwrap();
        let res = cgroup_resources(&spec).unwrap();
        let rules = res.devices().as_ref().unwrap();
        assert!(!rules[0].allow());
        let allowed: Vec<(Option<i64>, Option<i64>)> =
            rules[1..].iter().map(|r| (r.major(), r.minor())).collect();
        assert!(allowed.contains(&(Some(1), Some(3))));
        assert!(allowed.contains(&(Some(10), Some(229))));
    }

    #[test]
    fn validate_rejects_relative_cwd_and_missing_rootfs() {
        let dir = tempfile::tempdir().unwrap();
        let spec = parse(Path::new("c"), minimal("").as_bytes()).unwrap();
        let err = validate(Path::new("c"), dir.path(), &spec).unwrap_err();
        assert!(err.to_string().contains("root.path"), "{err}");
        std::fs::create_dir(dir.path().join("rootfs")).unwrap();
        let rel = minimal("").replace(r#""cwd":"/""#, r#""cwd":"tmp""#);
        let spec = parse(Path::new("c"), rel.as_bytes()).unwrap();
        let err = validate(Path::new("c"), dir.path(), &spec).unwrap_err();
        assert!(err.to_string().contains("process.cwd"), "{err}");
    }
}
