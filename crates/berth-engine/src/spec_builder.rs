//! Builds the OCI spec for a container from the image config, the user's request and the
//! security defaults: docker's semantics for the command, environment, working directory
//! and resources; docker's defaults for capabilities, seccomp, masked paths and mounts;
//! plus berth's own: no_new_privs on by default, a private user namespace range by
//! default, and refusal of sensitive host bind mounts (see `policy`).
//!
//! Pure apart from canonicalising bind sources, reading a `seccomp=FILE` profile, and
//! reading the host's hostname for `--network host`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use berth_runtime::spec::oci::{Mount, Spec};
use oci_spec::image::ImageConfiguration;
use serde_json::{json, Value};
use thiserror::Error;

use crate::defaults::{
    default_mounts, default_rlimits, device_rules, HostLimits, ALL_CAPABILITIES,
    DEFAULT_CAPABILITIES, DEFAULT_PATH_ENV, MASKED_PATHS, READONLY_PATHS, TTY_GID,
};
use crate::policy::{checked_binds, PolicyError};
use crate::request::{Cap, NetworkMode, ResolvedUser, RunRequest, UsernsMode};
use crate::seccomp_profile::{self, SeccompProfileError};
use crate::userns::IdRange;

/// Where the engine's init (`--init`) appears in the container. /dev is the container's
/// own tmpfs, so the mount target never touches the image.
pub const INIT_PATH: &str = "/dev/init";

#[derive(Debug, Error)]
pub enum SpecBuildError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Seccomp(#[from] SeccompProfileError),
    #[error(
        "no command to run: image {image} has no entrypoint or cmd; give one after the image name"
    )]
    NoCommand { image: String },
    #[error("user {spec:?} must be resolved against the image's /etc/passwd before building the spec (request::resolve_user)")]
    UserNotResolved { spec: String },
    #[error("--init needs the engine's init binary, and none is configured")]
    NoInitBinary,
    #[error("building the spec: {0}")]
    Context(String),
    #[error("building the spec: internal error: {0}")]
    Internal(String),
}

/// How the container gets its network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// A new network namespace (only loopback, unless someone configures it).
    New,
    /// The host's network namespace.
    Host,
    /// A namespace prepared by berth-net, joined by path.
    Join(PathBuf),
}

/// What the engine knows that the request doesn't.
#[derive(Debug, Clone)]
pub struct BuildContext {
    /// The container's root filesystem (the mounted snapshot).
    pub rootfs: PathBuf,
    pub container_id: String,
    pub name: String,
    /// Hostname when the request has none; None: the host's hostname with `--network
    /// host` (as docker), else the first 12 characters of the container id.
    pub hostname: Option<String>,
    /// The container's host id range; None exactly when the request says `--userns host`.
    pub id_range: Option<IdRange>,
    /// None: from the request (`none` → New, `host` → Host).
    pub network: Option<Network>,
    /// Passed to the runtime as linux.cgroupsPath (`/berth/<id>`).
    pub cgroups_path: String,
    /// The process user, resolved with `request::resolve_user` from [`user_to_resolve`];
    /// None means root, allowed only if neither the request nor the image names another.
    pub user: Option<ResolvedUser>,
    /// The host's limits; [`BuildContext::new`] detects them (getrlimit, cgroup files).
    pub host: HostLimits,
    /// The init binary for `--init` (statically linked; bind-mounted read-only).
    pub init_binary: Option<PathBuf>,
    /// Mounts from other parts of the engine (/etc/resolv.conf, /etc/hosts, ...), placed
    /// after the defaults and before the user's.
    pub extra_mounts: Vec<Mount>,
    /// Join this user namespace instead of making one (`--network container:X` shares X's
    /// user namespace, which owns X's network namespace); `id_range` is then X's range.
    pub user_ns_path: Option<String>,
}

impl BuildContext {
    pub fn new(rootfs: &Path, container_id: &str, cgroups_path: &str) -> BuildContext {
        BuildContext {
            rootfs: rootfs.to_path_buf(),
            container_id: container_id.to_string(),
            name: String::new(),
            hostname: None,
            id_range: None,
            network: None,
            cgroups_path: cgroups_path.to_string(),
            user: None,
            // Detected, not assumed: a hard rlimit above the engine's own can't be set
            // without CAP_SYS_RESOURCE, and the runtime would fail on it.
            host: HostLimits::detect(),
            init_binary: None,
            extra_mounts: Vec::new(),
            user_ns_path: None,
        }
    }
}

/// The user string to resolve against the image: `-u`, else the image's `User`.
pub fn user_to_resolve(image: &ImageConfiguration, req: &RunRequest) -> Option<String> {
    if let Some(u) = &req.user {
        return Some(u.to_string());
    }
    image
        .config()
        .as_ref()
        .and_then(|c| c.user().clone())
        .filter(|u| !u.is_empty())
}

fn is_root_spec(s: &str) -> bool {
    matches!(s, "root" | "0" | "0:0" | "root:root" | "root:0" | "0:root")
}

/// The final capability list, docker's TweakCapabilities: `--cap-add ALL` is every
/// capability but the dropped ones; `--cap-drop ALL` keeps only the added ones; otherwise
/// the defaults minus drops plus adds.
pub fn final_capabilities(add: &[Cap], drop: &[Cap]) -> Vec<String> {
    let named = |l: &[Cap]| -> Vec<String> {
        l.iter()
            .filter_map(|c| match c {
                Cap::Named(n) => Some(n.clone()),
                Cap::All => None,
            })
            .collect()
    };
    let (adds, drops) = (named(add), named(drop));
    let add_all = add.contains(&Cap::All);
    let drop_all = drop.contains(&Cap::All);
    let mut caps: Vec<String> = if add_all {
        ALL_CAPABILITIES
            .iter()
            .filter(|c| !drops.iter().any(|d| d == *c))
            .map(|c| c.to_string())
            .collect()
    } else if drop_all {
        adds
    } else {
        DEFAULT_CAPABILITIES
            .iter()
            .filter(|c| !drops.iter().any(|d| d == *c))
            .map(|c| c.to_string())
            .chain(adds)
            .collect()
    };
    let mut seen = std::collections::HashSet::new();
    caps.retain(|c| seen.insert(c.clone()));
    caps
}

/// Sets `k=v` in an ordered env list, replacing an existing key in place.
fn set_env(env: &mut Vec<(String, String)>, k: &str, v: &str) {
    match env.iter_mut().find(|(key, _)| key == k) {
        Some(slot) => slot.1 = v.to_string(),
        None => env.push((k.to_string(), v.to_string())),
    }
}

fn mount_json(m: &Mount) -> Result<Value, SpecBuildError> {
    serde_json::to_value(m).map_err(|e| SpecBuildError::Internal(e.to_string()))
}

/// Builds the spec. Returns it with warnings the user should see (sensitive mounts
/// allowed by flag, container root being host root, ...).
pub fn build_spec(
    image: &ImageConfiguration,
    req: &RunRequest,
    ctx: &BuildContext,
) -> Result<(Spec, Vec<String>), SpecBuildError> {
    let mut warnings = Vec::new();
    let config = image.config().clone().unwrap_or_default();

    // Bind mounts first: refusing a sensitive path is the most important answer.
    let (binds, policy_warnings) = checked_binds(&req.binds, req.allow_sensitive_mount)?;
    warnings.extend(policy_warnings);

    // User namespace.
    match (req.userns, &ctx.id_range) {
        (UsernsMode::Auto, None) => {
            return Err(SpecBuildError::Context(
                "--userns auto needs an allocated id range".into(),
            ))
        }
        (UsernsMode::Host, Some(_)) => {
            return Err(SpecBuildError::Context(
                "--userns host with an allocated id range".into(),
            ))
        }
        (UsernsMode::Host, None) => warnings.push(
            "container root is host root (--userns host): a process that escapes the container has root privileges on the host".into(),
        ),
        (UsernsMode::Auto, Some(_)) => {}
    }
    let range = ctx.id_range;

    // Command: --entrypoint replaces the image's entrypoint and drops its cmd; arguments
    // after the image replace the cmd.
    let entrypoint = match &req.entrypoint {
        Some(e) => e.clone(),
        None => config.entrypoint().clone().unwrap_or_default(),
    };
    let cmd = if !req.command.is_empty() {
        req.command.clone()
    } else if req.entrypoint.is_some() {
        Vec::new()
    } else {
        config.cmd().clone().unwrap_or_default()
    };
    let mut args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(SpecBuildError::NoCommand {
            image: req.image.clone(),
        });
    }
    if req.init {
        let mut with_init = vec![INIT_PATH.to_string(), "--".to_string()];
        with_init.append(&mut args);
        args = with_init;
    }

    // User.
    let user = match &ctx.user {
        Some(u) => u.clone(),
        None => match user_to_resolve(image, req) {
            Some(s) if !is_root_spec(&s) => {
                return Err(SpecBuildError::UserNotResolved { spec: s })
            }
            _ => ResolvedUser::root(),
        },
    };

    // Network and hostname.
    // Container mode's namespace path comes from the engine through ctx.network.
    let network = ctx.network.clone().unwrap_or(match req.network {
        NetworkMode::Host => Network::Host,
        NetworkMode::None
        | NetworkMode::Default
        | NetworkMode::Bridge(_)
        | NetworkMode::Container(_) => Network::New,
    });
    let hostname = match (&req.hostname, &ctx.hostname, &network) {
        (Some(h), _, _) | (None, Some(h), _) => h.clone(),
        (None, None, Network::Host) => nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| short_id(&ctx.container_id)),
        (None, None, _) => short_id(&ctx.container_id),
    };

    // Environment: docker's daemon defaults, then the image's, then the user's; HOME from
    // the passwd entry if still unset (what runc does at exec).
    let mut env: Vec<(String, String)> = Vec::new();
    set_env(&mut env, "PATH", DEFAULT_PATH_ENV);
    set_env(&mut env, "HOSTNAME", &hostname);
    if req.tty {
        set_env(&mut env, "TERM", "xterm");
    }
    for e in config.env().iter().flatten() {
        if let Some((k, v)) = e.split_once('=') {
            set_env(&mut env, k, v);
        }
    }
    for (k, v) in &req.env {
        set_env(&mut env, k, v);
    }
    if !env.iter().any(|(k, _)| k == "HOME") {
        let home = user.home.clone().unwrap_or_else(|| "/".into());
        set_env(&mut env, "HOME", &home);
    }
    let env: Vec<String> = env.into_iter().map(|(k, v)| format!("{k}={v}")).collect();

    let cwd = match (&req.workdir, config.working_dir().as_deref()) {
        (Some(w), _) => w.clone(),
        (None, Some(w)) if !w.is_empty() => {
            if w.starts_with('/') {
                w.to_string()
            } else {
                format!("/{w}")
            }
        }
        _ => "/".to_string(),
    };

    // Capabilities (root gets them in every set; others only in the bounding set, as
    // exec would leave them: moby's SetCapabilities).
    let caps = final_capabilities(&req.cap_add, &req.cap_drop);
    let capabilities = if user.uid == 0 {
        json!({"bounding": caps, "effective": caps, "permitted": caps})
    } else {
        json!({"bounding": caps})
    };

    let seccomp = seccomp_profile::for_mode(&req.seccomp, &caps)?;

    // Mounts: defaults not shadowed by the user's, the engine's extras, --init, then the
    // user's binds and tmpfs sorted parents first (docker's sortMounts).
    let mut user_mounts: Vec<(PathBuf, Value)> = Vec::new();
    for b in &binds {
        user_mounts.push((
            b.destination.clone(),
            json!({
                "destination": b.destination,
                "type": "bind",
                "source": b.source,
                "options": ["rbind", if b.readonly { "ro" } else { "rw" }, b.propagation.as_str()],
            }),
        ));
    }
    for t in &req.tmpfs {
        user_mounts.push((
            t.destination.clone(),
            json!({
                "destination": t.destination,
                "type": "tmpfs",
                "source": "tmpfs",
                "options": t.options,
            }),
        ));
    }
    user_mounts.sort_by_key(|(d, _)| d.components().count());
    let shadowed = |d: &Path| {
        user_mounts.iter().any(|(u, _)| u == d)
            || ctx.extra_mounts.iter().any(|m| m.destination() == d)
    };
    let tty_gid_mapped = range.is_none_or(|r| r.size > TTY_GID);
    let mut mounts: Vec<Value> = Vec::new();
    for m in default_mounts(tty_gid_mapped) {
        if !shadowed(m.destination()) {
            mounts.push(mount_json(&m)?);
        }
    }
    for m in &ctx.extra_mounts {
        mounts.push(mount_json(m)?);
    }
    if req.init {
        let init = ctx
            .init_binary
            .as_ref()
            .ok_or(SpecBuildError::NoInitBinary)?;
        if !init.is_absolute() {
            return Err(SpecBuildError::Context(format!(
                "the init binary path {} is not absolute",
                init.display()
            )));
        }
        mounts.push(json!({
            "destination": INIT_PATH,
            "type": "bind",
            "source": init,
            "options": ["bind", "ro", "nosuid", "nodev"],
        }));
    }
    mounts.extend(user_mounts.into_iter().map(|(_, v)| v));

    // Namespaces.
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
        json!({"type": "cgroup"}),
    ];
    match &network {
        Network::New => namespaces.push(json!({"type": "network"})),
        Network::Join(p) => namespaces.push(json!({"type": "network", "path": p})),
        Network::Host => {}
    }
    match (&ctx.user_ns_path, range) {
        (Some(p), _) => namespaces.push(json!({"type": "user", "path": p})),
        (None, Some(_)) => namespaces.push(json!({"type": "user"})),
        (None, None) => {}
    }

    // Resources.
    let r = &req.resources;
    let mut resources = json!({"devices": device_rules()});
    if r.memory.is_some() || r.memory_swap.is_some() {
        let mut mem = json!({});
        if let Some(m) = r.memory {
            mem["limit"] = m.into();
        }
        match r.memory_swap {
            Some(s) if !ctx.host.swap_accounting => {
                warnings.push(format!(
                    "--memory-swap {s} ignored: this kernel does not account swap, so memory is limited without swap"
                ));
            }
            Some(s) => mem["swap"] = s.into(),
            // docker's default: as much swap as memory.
            None if ctx.host.swap_accounting => {
                if let Some(m) = r.memory {
                    mem["swap"] = (m.saturating_mul(2)).into();
                }
            }
            None => {}
        }
        resources["memory"] = mem;
    }
    if r.cpu_quota.is_some() || r.cpuset_cpus.is_some() {
        let mut cpu = json!({});
        if let Some(q) = r.cpu_quota {
            cpu["quota"] = q.into();
        }
        if let Some(p) = r.cpu_period {
            cpu["period"] = p.into();
        }
        if let Some(c) = &r.cpuset_cpus {
            cpu["cpus"] = c.clone().into();
        }
        resources["cpu"] = cpu;
    }
    if let Some(p) = r.pids_limit {
        resources["pids"] = json!({"limit": p});
    }

    // Labels: the image's, overridden by the request's.
    let mut annotations: BTreeMap<String, String> = config
        .labels()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    annotations.extend(req.labels.clone());

    let mut linux = json!({
        "cgroupsPath": ctx.cgroups_path,
        "namespaces": namespaces,
        "resources": resources,
        "maskedPaths": MASKED_PATHS,
        "readonlyPaths": READONLY_PATHS,
    });
    if let (Some(r), None) = (range, &ctx.user_ns_path) {
        let map = json!([{"containerID": 0, "hostID": r.start, "size": r.size}]);
        linux["uidMappings"] = map.clone();
        linux["gidMappings"] = map;
    }
    if let Some(s) = seccomp {
        linux["seccomp"] =
            serde_json::to_value(s).map_err(|e| SpecBuildError::Internal(e.to_string()))?;
    }

    let mut process = json!({
        "terminal": req.tty,
        "user": {"uid": user.uid, "gid": user.gid},
        "args": args,
        "env": env,
        "cwd": cwd,
        "capabilities": capabilities,
        "rlimits": default_rlimits(&ctx.host),
        "noNewPrivileges": req.no_new_privileges,
    });
    if !user.additional_gids.is_empty() {
        process["user"]["additionalGids"] = json!(user.additional_gids);
    }

    let mut spec = json!({
        "ociVersion": "1.0.2",
        "process": process,
        "root": {"path": ctx.rootfs, "readonly": req.read_only},
        "hostname": hostname,
        "mounts": mounts,
        "linux": linux,
    });
    if !annotations.is_empty() {
        spec["annotations"] = json!(annotations);
    }
    let spec: Spec = serde_json::from_value(spec)
        .map_err(|e| SpecBuildError::Internal(format!("assembling the spec: {e}")))?;
    Ok((spec, warnings))
}

fn short_id(id: &str) -> String {
    id.chars().take(12).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::RunFlags;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn image(json: Value) -> ImageConfiguration {
        serde_json::from_value(json!({
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []},
            "config": json,
        }))
        .unwrap()
    }

    fn nginx() -> ImageConfiguration {
        image(json!({
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "NGINX_VERSION=1.25"],
            "Entrypoint": ["/docker-entrypoint.sh"],
            "Cmd": ["nginx", "-g", "daemon off;"],
            "WorkingDir": "/srv",
            "Labels": {"maintainer": "nginx", "tier": "image"},
        }))
    }

    fn req(f: impl FnOnce(&mut RunFlags)) -> RunRequest {
        let mut flags = RunFlags {
            image: "nginx".into(),
            ..Default::default()
        };
        f(&mut flags);
        RunRequest::parse(&flags, &|_| None).unwrap()
    }

    fn ctx(rootfs: &Path) -> BuildContext {
        let mut c = BuildContext::new(rootfs, ID, "/berth/0123456789ab");
        // Fixed limits, so results don't depend on the test host.
        c.host = HostLimits::default();
        c.id_range = Some(IdRange {
            start: 0x7000_0000,
            size: 65536,
        });
        c
    }

    fn build(img: &ImageConfiguration, r: &RunRequest, c: &BuildContext) -> (Value, Vec<String>) {
        let (spec, w) = build_spec(img, r, c).unwrap();
        // Whatever we build, the runtime must accept.
        let bundle = c.rootfs.parent().unwrap();
        berth_runtime::spec::validate(&bundle.join("config.json"), bundle, &spec).unwrap();
        (serde_json::to_value(&spec).unwrap(), w)
    }

    fn rootfs() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("rootfs")).unwrap();
        d
    }

    fn strings(v: &Value) -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn defaults_for_a_plain_run() {
        let d = rootfs();
        let c = ctx(&d.path().join("rootfs"));
        let (v, w) = build(&nginx(), &req(|_| {}), &c);
        assert!(w.is_empty(), "{w:?}");
        let p = &v["process"];
        assert_eq!(
            strings(&p["args"]),
            ["/docker-entrypoint.sh", "nginx", "-g", "daemon off;"]
        );
        assert_eq!(p["cwd"], "/srv");
        assert_eq!(p["user"], json!({"uid": 0, "gid": 0}));
        assert_eq!(p["terminal"], false);
        assert_eq!(p["noNewPrivileges"], true);
        assert_eq!(
            strings(&p["env"]),
            [
                "PATH=/usr/local/bin:/usr/bin:/bin",
                "HOSTNAME=0123456789ab",
                "NGINX_VERSION=1.25",
                "HOME=/root"
            ]
        );
        let mut bounding = strings(&p["capabilities"]["bounding"]);
        bounding.sort();
        let mut want: Vec<String> = DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(bounding, want);
        // (Capability sets serialise in hash order: compare as sets.)
        let mut effective = strings(&p["capabilities"]["effective"]);
        effective.sort();
        assert_eq!(effective, want);
        assert!(p["capabilities"].get("inheritable").is_none());
        assert!(p["capabilities"].get("ambient").is_none());
        assert_eq!(p["rlimits"][0]["type"], "RLIMIT_NOFILE");

        assert_eq!(v["hostname"], "0123456789ab");
        assert_eq!(v["root"]["readonly"], false);
        assert_eq!(
            v["annotations"],
            json!({"maintainer": "nginx", "tier": "image"})
        );

        let l = &v["linux"];
        assert_eq!(l["cgroupsPath"], "/berth/0123456789ab");
        let ns: Vec<_> = l["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            ns,
            ["pid", "ipc", "uts", "mount", "cgroup", "network", "user"]
        );
        assert_eq!(
            l["uidMappings"],
            json!([{"containerID": 0, "hostID": 1879048192u32, "size": 65536}])
        );
        assert_eq!(l["gidMappings"], l["uidMappings"]);
        assert_eq!(strings(&l["maskedPaths"]), MASKED_PATHS);
        assert_eq!(strings(&l["readonlyPaths"]), READONLY_PATHS);
        assert_eq!(
            l["resources"],
            json!({"devices": [{"allow": false, "access": "rwm"}]})
        );
        assert_eq!(l["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(l["seccomp"]["defaultErrnoRet"], 1);

        let dests: Vec<_> = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        assert_eq!(
            dests,
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/sys",
                "/sys/fs/cgroup"
            ]
        );
        assert!(strings(&v["mounts"][2]["options"]).contains(&"gid=5".to_string()));
    }

    #[test]
    fn command_entrypoint_and_env_merges() {
        let d = rootfs();
        let c = ctx(&d.path().join("rootfs"));
        let img = nginx();
        // Arguments replace the image's cmd, keep its entrypoint.
        let (v, _) = build(
            &img,
            &req(|f| f.command = vec!["nginx".into(), "-t".into()]),
            &c,
        );
        assert_eq!(
            strings(&v["process"]["args"]),
            ["/docker-entrypoint.sh", "nginx", "-t"]
        );
        // --entrypoint drops the image's cmd.
        let (v, _) = build(&img, &req(|f| f.entrypoint = Some("/bin/sh".into())), &c);
        assert_eq!(strings(&v["process"]["args"]), ["/bin/sh"]);
        let (v, _) = build(
            &img,
            &req(|f| {
                f.entrypoint = Some("/bin/sh".into());
                f.command = vec!["-c".into(), "echo hi".into()];
            }),
            &c,
        );
        assert_eq!(strings(&v["process"]["args"]), ["/bin/sh", "-c", "echo hi"]);
        // --entrypoint "" clears it; then arguments are the whole command.
        let (v, _) = build(
            &img,
            &req(|f| {
                f.entrypoint = Some(String::new());
                f.command = vec!["ls".into()];
            }),
            &c,
        );
        assert_eq!(strings(&v["process"]["args"]), ["ls"]);
        // Nothing at all to run.
        let e = build_spec(&image(json!({})), &req(|_| {}), &c)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "no command to run: image nginx has no entrypoint or cmd; give one after the image name");

        // Env: -e overrides the image by key, in place; TERM with -t; an image without PATH
        // gets the default; HOME from the request wins.
        let (v, _) = build(
            &image(json!({"Cmd": ["sh"], "Env": ["A=image", "B=image"]})),
            &req(|f| {
                f.env = vec!["B=flag".into(), "C=flag".into(), "HOME=/h".into()];
                f.tty = true;
                f.hostname = Some("web".into());
            }),
            &c,
        );
        assert_eq!(
            strings(&v["process"]["env"]),
            [
                &format!("PATH={DEFAULT_PATH_ENV}"),
                "HOSTNAME=web",
                "TERM=xterm",
                "A=image",
                "B=flag",
                "C=flag",
                "HOME=/h"
            ]
        );
        assert_eq!(v["process"]["terminal"], true);
        assert_eq!(v["hostname"], "web");

        // Working dir: flag > image > /; labels: flag over image.
        let (v, _) = build(
            &img,
            &req(|f| {
                f.workdir = Some("/w".into());
                f.label = vec!["tier=flag".into(), "new=1".into()];
            }),
            &c,
        );
        assert_eq!(v["process"]["cwd"], "/w");
        assert_eq!(
            v["annotations"],
            json!({"maintainer": "nginx", "tier": "flag", "new": "1"})
        );
        let (v, _) = build(&image(json!({"Cmd": ["sh"]})), &req(|_| {}), &c);
        assert_eq!(v["process"]["cwd"], "/");
        assert!(v.get("annotations").is_none());
    }

    #[test]
    fn capabilities_add_drop_and_all() {
        let named =
            |v: &[&str]| -> Vec<Cap> { v.iter().map(|s| Cap::Named(s.to_string())).collect() };
        let c = final_capabilities(
            &named(&["CAP_NET_ADMIN"]),
            &named(&["CAP_MKNOD", "CAP_NET_RAW"]),
        );
        assert!(c.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(!c.contains(&"CAP_MKNOD".to_string()));
        assert_eq!(c.len(), 13);
        assert_eq!(
            final_capabilities(&[Cap::All], &named(&["CAP_SYS_ADMIN"])).len(),
            40
        );
        assert_eq!(
            final_capabilities(&named(&["CAP_CHOWN"]), &[Cap::All]),
            ["CAP_CHOWN"]
        );
        assert!(final_capabilities(&[], &[Cap::All]).is_empty());
        // Adding one already present doesn't duplicate it.
        assert_eq!(final_capabilities(&named(&["CAP_KILL"]), &[]).len(), 14);

        let d = rootfs();
        let c = ctx(&d.path().join("rootfs"));
        let (v, _) = build(&nginx(), &req(|f| f.cap_add = vec!["sys_admin".into()]), &c);
        assert!(strings(&v["process"]["capabilities"]["effective"])
            .contains(&"CAP_SYS_ADMIN".to_string()));
        // The seccomp profile follows: mount allowed with CAP_SYS_ADMIN.
        let names: Vec<String> = v["linux"]["seccomp"]["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| strings(&r["names"]))
            .collect();
        assert!(names.contains(&"mount".to_string()));
        let (v, _) = build(&nginx(), &req(|f| f.cap_drop = vec!["ALL".into()]), &c);
        assert_eq!(v["process"]["capabilities"]["bounding"], json!([]));
    }

    #[test]
    fn non_root_users_get_ids_groups_home_and_no_effective_caps() {
        let d = rootfs();
        let mut c = ctx(&d.path().join("rootfs"));
        let img = image(json!({"Cmd": ["sh"], "User": "app"}));
        // An image user that wasn't resolved is an error, not root.
        let e = build_spec(&img, &req(|_| {}), &c).unwrap_err().to_string();
        assert!(e.starts_with("user \"app\" must be resolved"), "{e}");
        assert_eq!(user_to_resolve(&img, &req(|_| {})).as_deref(), Some("app"));
        assert_eq!(
            user_to_resolve(&img, &req(|f| f.user = Some("1:2".into()))).as_deref(),
            Some("1:2")
        );
        // ... unless it is root anyway.
        let root_img = image(json!({"Cmd": ["sh"], "User": "root"}));
        assert!(build_spec(&root_img, &req(|_| {}), &c).is_ok());

        c.user = Some(ResolvedUser {
            uid: 1000,
            gid: 1000,
            additional_gids: vec![27, 100],
            home: Some("/home/app".into()),
        });
        let (v, _) = build(&img, &req(|_| {}), &c);
        assert_eq!(
            v["process"]["user"],
            json!({"uid": 1000, "gid": 1000, "additionalGids": [27, 100]})
        );
        assert!(strings(&v["process"]["env"]).contains(&"HOME=/home/app".to_string()));
        let caps = &v["process"]["capabilities"];
        assert!(!strings(&caps["bounding"]).is_empty());
        assert!(caps.get("effective").is_none() && caps.get("permitted").is_none());
    }

    #[test]
    fn security_options() {
        let d = rootfs();
        let c = ctx(&d.path().join("rootfs"));
        let (v, _) = build(
            &nginx(),
            &req(|f| {
                f.security_opt = vec![
                    "no-new-privileges=false".into(),
                    "seccomp=unconfined".into(),
                ];
                f.read_only = true;
            }),
            &c,
        );
        assert_eq!(v["process"]["noNewPrivileges"], false);
        assert!(v["linux"].get("seccomp").is_none());
        assert_eq!(v["root"]["readonly"], true);
        // Masked and read-only paths stay whatever the flags.
        assert_eq!(strings(&v["linux"]["maskedPaths"]), MASKED_PATHS);

        let profile = d.path().join("p.json");
        std::fs::write(&profile, r#"{"defaultAction":"SCMP_ACT_LOG"}"#).unwrap();
        let (v, _) = build(
            &nginx(),
            &req(|f| f.security_opt = vec![format!("seccomp={}", profile.display())]),
            &c,
        );
        assert_eq!(v["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_LOG");
        let e = build_spec(
            &nginx(),
            &req(|f| f.security_opt = vec!["seccomp=/nonexistent.json".into()]),
            &c,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("reading seccomp profile /nonexistent.json"),
            "{e}"
        );
    }

    #[test]
    fn userns_host_warns_and_has_no_user_namespace() {
        let d = rootfs();
        let mut c = ctx(&d.path().join("rootfs"));
        // The request and the context must agree.
        let e = build_spec(&nginx(), &req(|f| f.userns = Some("host".into())), &c).unwrap_err();
        assert!(e
            .to_string()
            .contains("--userns host with an allocated id range"));
        c.id_range = None;
        let (v, w) = build(&nginx(), &req(|f| f.userns = Some("host".into())), &c);
        assert_eq!(w.len(), 1);
        assert!(w[0].starts_with("container root is host root"), "{w:?}");
        let ns: Vec<_> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert!(!ns.contains(&"user"));
        assert!(v["linux"].get("uidMappings").is_none());
        let e = build_spec(&nginx(), &req(|_| {}), &c)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--userns auto needs an allocated id range"),
            "{e}"
        );
    }

    #[test]
    fn small_id_ranges_leave_out_the_devpts_gid() {
        let d = rootfs();
        let mut c = ctx(&d.path().join("rootfs"));
        c.id_range = Some(IdRange {
            start: 200000,
            size: 1,
        });
        let (v, _) = build(&nginx(), &req(|_| {}), &c);
        assert!(!strings(&v["mounts"][2]["options"])
            .iter()
            .any(|o| o.starts_with("gid=")));
    }

    #[test]
    fn networks() {
        let d = rootfs();
        let mut c = ctx(&d.path().join("rootfs"));
        let (v, _) = build(&nginx(), &req(|f| f.network = "host".into()), &c);
        let ns: Vec<_> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert!(!ns.contains(&"network"));
        // docker: with the host's network, the host's hostname.
        let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
        assert_eq!(v["hostname"], host);
        c.network = Some(Network::Join("/run/netns/x".into()));
        let (v, _) = build(&nginx(), &req(|_| {}), &c);
        let net = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["type"] == "network")
            .unwrap()
            .clone();
        assert_eq!(net, json!({"type": "network", "path": "/run/netns/x"}));
    }

    #[test]
    fn resources() {
        let d = rootfs();
        let mut c = ctx(&d.path().join("rootfs"));
        let r = req(|f| {
            f.memory = Some("256m".into());
            f.cpus = Some("1.5".into());
            f.cpuset_cpus = Some("0-1".into());
            f.pids_limit = Some(100);
        });
        let (v, w) = build(&nginx(), &r, &c);
        assert!(w.is_empty());
        assert_eq!(
            v["linux"]["resources"],
            json!({
                "devices": [{"allow": false, "access": "rwm"}],
                "memory": {"limit": 268435456, "swap": 536870912},
                "cpu": {"quota": 150000, "period": 100000, "cpus": "0-1"},
                "pids": {"limit": 100},
            })
        );
        let r = req(|f| {
            f.memory = Some("256m".into());
            f.memory_swap = Some("-1".into());
        });
        let (v, _) = build(&nginx(), &r, &c);
        assert_eq!(
            v["linux"]["resources"]["memory"],
            json!({"limit": 268435456, "swap": -1})
        );
        // Without swap accounting: no swap default, and an explicit one is dropped with a warning.
        c.host.swap_accounting = false;
        let (v, w) = build(&nginx(), &r, &c);
        assert_eq!(
            v["linux"]["resources"]["memory"],
            json!({"limit": 268435456})
        );
        assert!(w[0].contains("--memory-swap -1 ignored"), "{w:?}");
        // rlimits follow the host's hard limits.
        c.host.nofile_hard = 20000;
        let (v, _) = build(&nginx(), &r, &c);
        assert_eq!(
            v["process"]["rlimits"][0],
            json!({"type": "RLIMIT_NOFILE", "soft": 20000, "hard": 20000})
        );
    }

    #[test]
    fn binds_tmpfs_init_and_extra_mounts() {
        let d = rootfs();
        let data = d.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&data, &link).unwrap();
        let mut c = ctx(&d.path().join("rootfs"));
        c.extra_mounts = vec![serde_json::from_value(json!({
            "destination": "/etc/resolv.conf", "type": "bind", "source": "/x/resolv.conf", "options": ["rbind", "ro"]
        }))
        .unwrap()];
        let r = req(|f| {
            f.volume = vec![
                format!("{}:/data/sub:ro", link.display()),
                format!("{}:/data:rw,rslave", data.display()),
            ];
            f.tmpfs = vec!["/dev/shm:size=1g".into(), "/run".into()];
        });
        // --init without a binary is an error.
        let mut ri = r.clone();
        ri.init = true;
        assert_eq!(
            build_spec(&nginx(), &ri, &c).unwrap_err().to_string(),
            "--init needs the engine's init binary, and none is configured"
        );
        c.init_binary = Some("/usr/libexec/berth/init".into());
        let (v, _) = build(&nginx(), &ri, &c);
        assert_eq!(
            strings(&v["process"]["args"])[..3],
            ["/dev/init", "--", "/docker-entrypoint.sh"]
        );
        let m = v["mounts"].as_array().unwrap();
        let dests: Vec<_> = m
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        // /dev/shm from --tmpfs replaces the default one; parents before children.
        assert_eq!(
            dests,
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/mqueue",
                "/sys",
                "/sys/fs/cgroup",
                "/etc/resolv.conf",
                "/dev/init",
                "/data",
                "/run",
                "/data/sub",
                "/dev/shm"
            ]
        );
        let by = |d: &str| m.iter().find(|x| x["destination"] == d).unwrap().clone();
        assert_eq!(
            by("/dev/init"),
            json!({"destination": "/dev/init", "type": "bind", "source": "/usr/libexec/berth/init", "options": ["bind", "ro", "nosuid", "nodev"]})
        );
        // The symlinked source is mounted by its resolved path.
        let canon = std::fs::canonicalize(&data).unwrap();
        assert_eq!(
            by("/data/sub"),
            json!({"destination": "/data/sub", "type": "bind", "source": canon, "options": ["rbind", "ro", "rprivate"]})
        );
        assert_eq!(by("/data")["options"], json!(["rbind", "rw", "rslave"]));
        assert_eq!(
            by("/dev/shm")["options"],
            json!(["noexec", "nosuid", "nodev", "size=1073741824"])
        );
        assert_eq!(by("/run")["type"], "tmpfs");
    }

    #[test]
    fn sensitive_binds_are_refused_or_warned() {
        let d = rootfs();
        let c = ctx(&d.path().join("rootfs"));
        let e = build_spec(
            &nginx(),
            &req(|f| f.volume = vec!["/etc:/host-etc".into()]),
            &c,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(e, "refusing to mount /etc: host path is sensitive (/etc holds host credentials and configuration); use --allow-sensitive-mount to override");
        let (v, w) = build(
            &nginx(),
            &req(|f| {
                f.volume = vec!["/etc:/host-etc:ro".into()];
                f.allow_sensitive_mount = true;
            }),
            &c,
        );
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("/etc"));
        assert!(v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["destination"] == "/host-etc"));
    }
}
