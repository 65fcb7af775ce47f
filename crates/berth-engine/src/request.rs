//! The typed `berth run` / `berth create` request: every flag parsed and checked with
//! docker's semantics, so that spec building never sees a malformed value.
//!
//! Parsing is pure except for reading `--env-file`s; `-e KEY` (no value) takes the value
//! from an environment lookup the caller passes in, so tests need not touch the process
//! environment. Errors name the flag and the offending value:
//! `invalid --memory "12x": unknown unit "x" (use b, k, m, g, t or p)`.
//!
//! [`resolve_user`] turns `-u` (or the image's `User`) into ids by reading the image's
//! /etc/passwd and /etc/group. The image controls those paths, so they are opened with
//! openat2(RESOLVE_IN_ROOT) relative to the rootfs and must be regular files.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use thiserror::Error;

use crate::defaults::ALL_CAPABILITIES;

#[derive(Debug, Error)]
pub enum RequestError {
    #[error("invalid {flag} {value:?}: {reason}")]
    Invalid {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error("invalid -v {spec:?}: named volumes are not supported yet; bind-mount an absolute host path instead")]
    NamedVolume { spec: String },
    #[error("invalid {flag}: {reason}")]
    Conflict { flag: &'static str, reason: String },
    #[error("reading --env-file {path}: {source}")]
    EnvFileRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid --env-file {path} line {line}: {reason}")]
    EnvFile {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("resolving user {spec:?} in the image: {reason}")]
    User { spec: String, reason: String },
    #[error("reading {path} in the image rootfs {rootfs}: {source}")]
    ImageFile {
        rootfs: PathBuf,
        path: &'static str,
        source: std::io::Error,
    },
}

fn invalid(flag: &'static str, value: &str, reason: impl Into<String>) -> RequestError {
    RequestError::Invalid {
        flag,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// The flags as typed on the command line (the CLI's clap struct maps 1:1 onto this).
#[derive(Debug, Clone, Default)]
pub struct RunFlags {
    pub detach: bool,
    pub interactive: bool,
    pub tty: bool,
    pub rm: bool,
    pub name: Option<String>,
    pub env: Vec<String>,
    pub env_file: Vec<PathBuf>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub volume: Vec<String>,
    pub tmpfs: Vec<String>,
    pub read_only: bool,
    pub memory: Option<String>,
    pub memory_swap: Option<String>,
    pub cpus: Option<String>,
    pub cpuset_cpus: Option<String>,
    pub pids_limit: Option<i64>,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub security_opt: Vec<String>,
    pub userns: Option<String>,
    pub hostname: Option<String>,
    pub entrypoint: Option<String>,
    pub init: bool,
    /// "" (the engine's default network), none, host, bridge, a network's name, or
    /// container:NAME.
    pub network: String,
    /// -p/--publish, as typed.
    pub publish: Vec<String>,
    /// -P: publish the image's exposed ports on ephemeral host ports.
    pub publish_all: bool,
    pub ip: Option<String>,
    /// --add-host NAME:IP.
    pub add_host: Vec<String>,
    pub dns: Vec<String>,
    pub dns_search: Vec<String>,
    pub dns_option: Vec<String>,
    pub allow_sensitive_mount: bool,
    pub label: Vec<String>,
    pub image: String,
    pub command: Vec<String>,
}

/// A parsed, checked `berth run` request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunRequest {
    pub detach: bool,
    pub interactive: bool,
    pub tty: bool,
    pub rm: bool,
    pub name: Option<String>,
    /// --env-file entries, then -e, in order, one per key (a later value replaced an
    /// earlier one in place).
    pub env: Vec<(String, String)>,
    /// Absolute.
    pub workdir: Option<String>,
    pub user: Option<UserSpec>,
    pub binds: Vec<Bind>,
    pub tmpfs: Vec<Tmpfs>,
    pub read_only: bool,
    pub resources: Resources,
    pub cap_add: Vec<Cap>,
    pub cap_drop: Vec<Cap>,
    pub no_new_privileges: bool,
    pub seccomp: SeccompMode,
    pub userns: UsernsMode,
    pub hostname: Option<String>,
    /// `Some(vec![])` for `--entrypoint ""` (clear the image's entrypoint).
    pub entrypoint: Option<Vec<String>>,
    pub init: bool,
    pub network: NetworkMode,
    /// Ports to publish (host ports resolved by the engine when it creates the container).
    pub publish: Vec<berth_net::PortMappingSpec>,
    pub publish_all: bool,
    pub ip: Option<std::net::Ipv4Addr>,
    pub add_hosts: Vec<(String, std::net::IpAddr)>,
    pub dns: Vec<std::net::IpAddr>,
    pub dns_search: Vec<String>,
    pub dns_options: Vec<String>,
    pub allow_sensitive_mount: bool,
    pub labels: BTreeMap<String, String>,
    pub image: String,
    pub command: Vec<String>,
}

/// `-u user[:group]`, names or numbers, resolved later against the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSpec {
    pub user: String,
    pub group: Option<String>,
}

impl std::fmt::Display for UserSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.group {
            Some(g) => write!(f, "{}:{}", self.user, g),
            None => write!(f, "{}", self.user),
        }
    }
}

/// A `-v /host:/ctr[:opts]` bind mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// Absolute, as given (policy canonicalises it).
    pub source: PathBuf,
    /// Absolute and lexically clean.
    pub destination: PathBuf,
    pub readonly: bool,
    /// rprivate unless asked otherwise (docker's default).
    pub propagation: Propagation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Propagation {
    Shared,
    Rshared,
    Slave,
    Rslave,
    Private,
    #[default]
    Rprivate,
}

impl Propagation {
    pub fn as_str(self) -> &'static str {
        match self {
            Propagation::Shared => "shared",
            Propagation::Rshared => "rshared",
            Propagation::Slave => "slave",
            Propagation::Rslave => "rslave",
            Propagation::Private => "private",
            Propagation::Rprivate => "rprivate",
        }
    }

    fn parse(s: &str) -> Option<Propagation> {
        Some(match s {
            "shared" => Propagation::Shared,
            "rshared" => Propagation::Rshared,
            "slave" => Propagation::Slave,
            "rslave" => Propagation::Rslave,
            "private" => Propagation::Private,
            "rprivate" => Propagation::Rprivate,
            _ => return None,
        })
    }
}

/// A `--tmpfs /path[:opts]` mount with its final options (docker's noexec,nosuid,nodev
/// defaults merged with the user's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tmpfs {
    pub destination: PathBuf,
    pub options: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// Bytes.
    pub memory: Option<i64>,
    /// Memory + swap in bytes, -1 for unlimited.
    pub memory_swap: Option<i64>,
    /// CFS quota per `cpu_period` (µs).
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    pub cpuset_cpus: Option<String>,
    /// -1 for unlimited.
    pub pids_limit: Option<i64>,
}

/// A capability named in --cap-add/--cap-drop.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cap {
    All,
    /// Always `CAP_`-prefixed and upper case.
    Named(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SeccompMode {
    #[default]
    Default,
    Unconfined,
    /// A docker- or OCI-format profile file.
    File(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UsernsMode {
    /// A private id range from the allocator (podman's --userns=auto).
    #[default]
    Auto,
    /// The host's user namespace: container root is host root.
    Host,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NetworkMode {
    /// The engine's default network (its configuration says which).
    #[default]
    Default,
    /// A new network namespace with only loopback.
    None,
    /// The host's network namespace.
    Host,
    /// A bridge network, by name ("bridge" is the default one).
    Bridge(String),
    /// Another container's network namespace (`container:NAME`).
    Container(String),
}

impl NetworkMode {
    /// Ports, addresses and DNS settings only make sense with a network of our own.
    pub fn is_bridge(&self) -> bool {
        matches!(self, NetworkMode::Bridge(_))
    }
}

impl RunRequest {
    /// Parses flags, looking `-e KEY` values up in the engine's own environment.
    pub fn from_flags(flags: &RunFlags) -> Result<RunRequest, RequestError> {
        RunRequest::parse(flags, &|k| std::env::var(k).ok())
    }

    /// Parses flags; `lookup` supplies values for `-e KEY` and env-file lines without `=`.
    pub fn parse(
        flags: &RunFlags,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<RunRequest, RequestError> {
        if flags.image.is_empty() {
            return Err(RequestError::Conflict {
                flag: "IMAGE",
                reason: "an image is required".into(),
            });
        }
        // docker reads env files first, so -e overrides them.
        let mut env: Vec<(String, String)> = Vec::new();
        for path in &flags.env_file {
            for kv in read_env_file(path, lookup)? {
                set_env(&mut env, kv);
            }
        }
        for e in &flags.env {
            if let Some(kv) = parse_env(e, lookup)? {
                set_env(&mut env, kv);
            }
        }

        let workdir = match &flags.workdir {
            Some(w) if !w.starts_with('/') => {
                return Err(invalid("-w", w, "the working directory must be absolute"))
            }
            Some(w) => Some(w.clone()),
            None => None,
        };

        let mut resources = Resources::default();
        if let Some(m) = &flags.memory {
            resources.memory = Some(parse_memory(m)?);
        }
        if let Some(s) = &flags.memory_swap {
            resources.memory_swap = parse_memory_swap(s, resources.memory)?;
        }
        if let Some(c) = &flags.cpus {
            let (quota, period) = parse_cpus(c)?;
            resources.cpu_quota = Some(quota);
            resources.cpu_period = Some(period);
        }
        if let Some(c) = &flags.cpuset_cpus {
            resources.cpuset_cpus = Some(parse_cpuset(c)?);
        }
        // docker: 0 or negative means unlimited.
        resources.pids_limit = flags.pids_limit.map(|n| if n > 0 { n } else { -1 });

        let mut no_new_privileges = true;
        let mut seccomp = SeccompMode::Default;
        for opt in &flags.security_opt {
            match parse_security_opt(opt)? {
                SecurityOpt::NoNewPrivileges(b) => no_new_privileges = b,
                SecurityOpt::Seccomp(m) => seccomp = m,
                SecurityOpt::Ignored => {}
            }
        }

        let mut labels = BTreeMap::new();
        for l in &flags.label {
            let (k, v) = parse_label(l)?;
            labels.insert(k, v);
        }

        RunRequest {
            detach: flags.detach,
            interactive: flags.interactive,
            tty: flags.tty,
            rm: flags.rm,
            name: flags.name.clone(),
            env,
            workdir,
            user: flags.user.as_deref().map(parse_user).transpose()?,
            binds: flags
                .volume
                .iter()
                .map(|v| parse_volume(v))
                .collect::<Result<_, _>>()?,
            tmpfs: flags
                .tmpfs
                .iter()
                .map(|t| parse_tmpfs(t))
                .collect::<Result<_, _>>()?,
            read_only: flags.read_only,
            resources,
            cap_add: flags
                .cap_add
                .iter()
                .map(|c| parse_capability("--cap-add", c))
                .collect::<Result<_, _>>()?,
            cap_drop: flags
                .cap_drop
                .iter()
                .map(|c| parse_capability("--cap-drop", c))
                .collect::<Result<_, _>>()?,
            no_new_privileges,
            seccomp,
            userns: parse_userns(flags.userns.as_deref().unwrap_or(""))?,
            hostname: flags.hostname.as_deref().map(parse_hostname).transpose()?,
            entrypoint: flags.entrypoint.as_ref().map(|e| {
                if e.is_empty() {
                    Vec::new()
                } else {
                    vec![e.clone()]
                }
            }),
            init: flags.init,
            network: parse_network(&flags.network)?,
            publish: flags
                .publish
                .iter()
                .map(|p| berth_net::parse_port_spec(p).map_err(|e| invalid("-p", p, e.to_string())))
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .flatten()
                .collect(),
            publish_all: flags.publish_all,
            ip: flags
                .ip
                .as_deref()
                .map(|ip| {
                    ip.parse()
                        .map_err(|_| invalid("--ip", ip, "not an IPv4 address"))
                })
                .transpose()?,
            add_hosts: flags
                .add_host
                .iter()
                .map(|h| parse_add_host(h))
                .collect::<Result<_, _>>()?,
            dns: flags
                .dns
                .iter()
                .map(|d| {
                    d.parse()
                        .map_err(|_| invalid("--dns", d, "not an IP address"))
                })
                .collect::<Result<_, _>>()?,
            dns_search: flags.dns_search.clone(),
            dns_options: flags.dns_option.clone(),
            allow_sensitive_mount: flags.allow_sensitive_mount,
            labels,
            image: flags.image.clone(),
            command: flags.command.clone(),
        }
        .check_network()
    }

    /// Refuses network flags the network mode cannot honour, as docker does. Called again
    /// by the engine once it has replaced `NetworkMode::Default` by its default network.
    pub fn check_network(self) -> Result<RunRequest, RequestError> {
        let mode = match &self.network {
            NetworkMode::Default | NetworkMode::Bridge(_) => return Ok(self),
            NetworkMode::None => "--network none",
            NetworkMode::Host => "--network host",
            NetworkMode::Container(_) => "--network container:",
        };
        let conflict = |flag: &'static str| {
            Err(RequestError::Conflict {
                flag,
                reason: format!(
                    "cannot be combined with {mode} (the container has no network of its own)"
                ),
            })
        };
        if !self.publish.is_empty() {
            return conflict("-p");
        }
        if self.publish_all {
            return conflict("-P");
        }
        if self.ip.is_some() {
            return conflict("--ip");
        }
        if matches!(self.network, NetworkMode::Container(_)) {
            if self.hostname.is_some() {
                return conflict("--hostname");
            }
            if !self.dns.is_empty() || !self.dns_search.is_empty() || !self.dns_options.is_empty() {
                return conflict("--dns");
            }
            if !self.add_hosts.is_empty() {
                return conflict("--add-host");
            }
        }
        Ok(self)
    }
}

fn set_env(env: &mut Vec<(String, String)>, (k, v): (String, String)) {
    match env.iter_mut().find(|(key, _)| *key == k) {
        Some(slot) => slot.1 = v,
        None => env.push((k, v)),
    }
}

/// `-e KEY=VALUE` or `-e KEY` (value from `lookup`; an unset KEY is dropped, as docker does).
pub fn parse_env(
    s: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<(String, String)>, RequestError> {
    match s.split_once('=') {
        Some(("", _)) => Err(invalid("-e", s, "the variable name is empty")),
        Some((k, v)) => Ok(Some((k.to_string(), v.to_string()))),
        None if s.is_empty() => Err(invalid("-e", s, "the variable name is empty")),
        None => Ok(lookup(s).map(|v| (s.to_string(), v))),
    }
}

/// Reads an env file: `KEY=VALUE` lines, `KEY` alone (value from `lookup`, dropped if
/// unset), `#` comments and blank lines; leading whitespace is ignored, the value is kept
/// verbatim. Names may not contain whitespace.
pub fn read_env_file(
    path: &Path,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, String)>, RequestError> {
    let bytes = std::fs::read(path).map_err(|source| RequestError::EnvFileRead {
        path: path.to_path_buf(),
        source,
    })?;
    parse_env_file(path, &bytes, lookup)
}

/// The parsing half of [`read_env_file`].
pub fn parse_env_file(
    path: &Path,
    bytes: &[u8],
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, String)>, RequestError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let err = |line: usize, reason: String| RequestError::EnvFile {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let mut out = Vec::new();
    for (i, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let n = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = std::str::from_utf8(raw).map_err(|_| err(n, "contains invalid UTF-8".into()))?;
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = match line.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (line.trim_end(), None),
        };
        if key.is_empty() {
            return Err(err(n, format!("{line:?}: the variable name is empty")));
        }
        if key.chars().any(char::is_whitespace) {
            return Err(err(n, format!("variable name {key:?} contains whitespace")));
        }
        match value {
            Some(v) => out.push((key.to_string(), v.to_string())),
            None => {
                if let Some(v) = lookup(key) {
                    out.push((key.to_string(), v));
                }
            }
        }
    }
    Ok(out)
}

/// A size as docker reads it (go-units RAMInBytes): a decimal number, an optional space,
/// then an optional unit b/k/m/g/t/p (any case, optionally followed by `i` and/or `b`).
/// Units are binary: 1k = 1024.
pub fn parse_size(flag: &'static str, s: &str) -> Result<i64, RequestError> {
    let t = s.trim();
    let num_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(num_end);
    let unit = unit.strip_prefix(' ').unwrap_or(unit).to_ascii_lowercase();
    if num.is_empty() {
        return Err(invalid(flag, s, "expected a size such as 256m"));
    }
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() || frac.contains('.') || (num.contains('.') && frac.is_empty()) {
        return Err(invalid(flag, s, "malformed number"));
    }
    let mut u = unit.as_str();
    let shift = match u.chars().next() {
        Some('k') => 10,
        Some('m') => 20,
        Some('g') => 30,
        Some('t') => 40,
        Some('p') => 50,
        _ => 0,
    };
    if shift > 0 {
        u = &u[1..];
    }
    u = u.strip_prefix('i').unwrap_or(u);
    u = u.strip_prefix('b').unwrap_or(u);
    if !u.is_empty() {
        return Err(invalid(
            flag,
            s,
            format!("unknown unit {unit:?} (use b, k, m, g, t or p)"),
        ));
    }
    let too_large = || invalid(flag, s, "too large");
    let int: i128 = int.parse().map_err(|_| too_large())?;
    let mut bytes = int << shift;
    if !frac.is_empty() {
        let digits = &frac[..frac.len().min(18)];
        let f: i128 = digits.parse().map_err(|_| too_large())?;
        bytes += (f << shift) / 10i128.pow(digits.len() as u32);
    }
    i64::try_from(bytes).map_err(|_| too_large())
}

/// docker's lower bound for --memory.
pub const MIN_MEMORY: i64 = 6 << 20;

pub fn parse_memory(s: &str) -> Result<i64, RequestError> {
    let m = parse_size("--memory", s)?;
    if m < MIN_MEMORY {
        return Err(invalid(
            "--memory",
            s,
            "the minimum memory limit is 6m (6291456 bytes)",
        ));
    }
    Ok(m)
}

/// `--memory-swap`: memory + swap; -1 is unlimited swap. Needs --memory, and is not below it.
pub fn parse_memory_swap(s: &str, memory: Option<i64>) -> Result<Option<i64>, RequestError> {
    let swap = if s.trim() == "-1" {
        -1
    } else {
        parse_size("--memory-swap", s)?
    };
    // docker: 0 means "not set".
    if swap == 0 {
        return Ok(None);
    }
    let Some(memory) = memory else {
        return Err(RequestError::Conflict {
            flag: "--memory-swap",
            reason: "set --memory too: --memory-swap limits memory plus swap".into(),
        });
    };
    if swap != -1 && swap < memory {
        return Err(invalid(
            "--memory-swap",
            s,
            format!("memory plus swap must not be below --memory ({memory} bytes)"),
        ));
    }
    Ok(Some(swap))
}

/// The CFS period docker uses for --cpus.
pub const CPU_PERIOD: u64 = 100_000;

/// `--cpus 1.5` → (quota 150000, period 100000). At most 9 decimals (docker counts
/// nano-CPUs); the kernel's minimum quota (1ms) means at least 0.01.
pub fn parse_cpus(s: &str) -> Result<(i64, u64), RequestError> {
    let t = s.trim();
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    let digits_ok = |d: &str| d.chars().all(|c| c.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !digits_ok(int) || !digits_ok(frac) {
        return Err(invalid(
            "--cpus",
            s,
            "expected a number of CPUs such as 1.5",
        ));
    }
    if frac.len() > 9 {
        return Err(invalid("--cpus", s, "too many decimals (at most 9)"));
    }
    let int: u64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| invalid("--cpus", s, "too large"))?
    };
    let frac_nanos: u64 = if frac.is_empty() {
        0
    } else {
        frac.parse::<u64>().unwrap_or(0) * 10u64.pow(9 - frac.len() as u32)
    };
    let nanos = int
        .checked_mul(1_000_000_000)
        .and_then(|n| n.checked_add(frac_nanos))
        .ok_or_else(|| invalid("--cpus", s, "too large"))?;
    let quota = nanos / (1_000_000_000 / CPU_PERIOD);
    if quota < 1000 {
        return Err(invalid("--cpus", s, "the minimum is 0.01"));
    }
    let quota = i64::try_from(quota).map_err(|_| invalid("--cpus", s, "too large"))?;
    Ok((quota, CPU_PERIOD))
}

/// `--cpuset-cpus 0-3,5`: comma-separated CPU numbers and ascending ranges.
pub fn parse_cpuset(s: &str) -> Result<String, RequestError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(invalid("--cpuset-cpus", s, "empty CPU list"));
    }
    for part in t.split(',') {
        let num = |p: &str| {
            p.parse::<u32>().map_err(|_| {
                invalid(
                    "--cpuset-cpus",
                    s,
                    format!("{part:?} is not a CPU number or range such as 0-3"),
                )
            })
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(invalid(
                        "--cpuset-cpus",
                        s,
                        format!("range {part:?} is descending"),
                    ));
                }
            }
            None => {
                num(part)?;
            }
        }
    }
    Ok(t.to_string())
}

/// `NET_ADMIN`, `cap_net_admin`, `CAP_NET_ADMIN` or `ALL`.
pub fn parse_capability(flag: &'static str, s: &str) -> Result<Cap, RequestError> {
    let up = s.trim().to_ascii_uppercase();
    if up == "ALL" {
        return Ok(Cap::All);
    }
    let name = up.strip_prefix("CAP_").unwrap_or(&up);
    let full = format!("CAP_{name}");
    if name.is_empty() || !ALL_CAPABILITIES.contains(&full.as_str()) {
        return Err(invalid(flag, s, "unknown capability"));
    }
    Ok(Cap::Named(full))
}

enum SecurityOpt {
    NoNewPrivileges(bool),
    Seccomp(SeccompMode),
    /// Asks for no confinement berth would impose anyway (apparmor=unconfined, label=disable).
    Ignored,
}

fn parse_security_opt(s: &str) -> Result<SecurityOpt, RequestError> {
    // docker also accepts the legacy `key:value` form.
    let (key, value) = match s.split_once(['=', ':']) {
        Some((k, v)) => (k, Some(v)),
        None => (s, None),
    };
    match (key, value) {
        ("no-new-privileges", None) => Ok(SecurityOpt::NoNewPrivileges(true)),
        ("no-new-privileges", Some(v)) => match v {
            "true" => Ok(SecurityOpt::NoNewPrivileges(true)),
            "false" => Ok(SecurityOpt::NoNewPrivileges(false)),
            _ => Err(invalid("--security-opt", s, "expected true or false")),
        },
        ("seccomp", Some("unconfined")) => Ok(SecurityOpt::Seccomp(SeccompMode::Unconfined)),
        ("seccomp", Some("")) | ("seccomp", None) => Err(invalid(
            "--security-opt",
            s,
            "expected seccomp=unconfined or seccomp=PROFILE.json",
        )),
        ("seccomp", Some(path)) => Ok(SecurityOpt::Seccomp(SeccompMode::File(path.into()))),
        ("apparmor", Some("unconfined")) | ("label", Some("disable")) => Ok(SecurityOpt::Ignored),
        ("apparmor", _) | ("label", _) => Err(invalid(
            "--security-opt",
            s,
            "berth has no AppArmor or SELinux support (only apparmor=unconfined and label=disable are accepted)",
        )),
        _ => Err(invalid(
            "--security-opt",
            s,
            "supported: no-new-privileges[=true|false], seccomp=unconfined, seccomp=PROFILE.json",
        )),
    }
}

pub fn parse_userns(s: &str) -> Result<UsernsMode, RequestError> {
    match s {
        "" | "auto" => Ok(UsernsMode::Auto),
        "host" => Ok(UsernsMode::Host),
        _ => Err(invalid("--userns", s, "supported: auto, host")),
    }
}

pub fn parse_network(s: &str) -> Result<NetworkMode, RequestError> {
    match s {
        "" | "default" => Ok(NetworkMode::Default),
        "none" => Ok(NetworkMode::None),
        "host" => Ok(NetworkMode::Host),
        _ => {
            if let Some(other) = s.strip_prefix("container:") {
                if other.is_empty() {
                    return Err(invalid(
                        "--network",
                        s,
                        "container: needs a container name or id",
                    ));
                }
                return Ok(NetworkMode::Container(other.to_string()));
            }
            berth_net::config::validate_name(s).map_err(|e| {
                invalid(
                    "--network",
                    s,
                    format!("{e} (use none, host, bridge, a network's name or container:NAME)"),
                )
            })?;
            Ok(NetworkMode::Bridge(s.to_string()))
        }
    }
}

/// `--add-host NAME:IP` (docker also accepts `NAME=IP`; IPv6 addresses contain colons, so
/// split at the first separator).
pub fn parse_add_host(s: &str) -> Result<(String, std::net::IpAddr), RequestError> {
    let (name, ip) = s
        .split_once('=')
        .or_else(|| s.split_once(':'))
        .ok_or_else(|| invalid("--add-host", s, "expected NAME:IP"))?;
    let name = parse_hostname(name).map_err(|_| invalid("--add-host", s, "bad host name"))?;
    let ip = ip
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| invalid("--add-host", s, "not an IP address"))?;
    Ok((name, ip))
}

/// A hostname the kernel accepts (at most 64 bytes) that is also a valid DNS name.
pub fn parse_hostname(s: &str) -> Result<String, RequestError> {
    if s.is_empty() || s.len() > 64 {
        return Err(invalid("--hostname", s, "must be 1 to 64 characters"));
    }
    let ok = s.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    if !ok {
        return Err(invalid(
            "--hostname",
            s,
            "use letters, digits and '-', in dot-separated labels not starting or ending with '-'",
        ));
    }
    Ok(s.to_string())
}

/// `--label key=value` or `--label key` (empty value).
pub fn parse_label(s: &str) -> Result<(String, String), RequestError> {
    let (k, v) = s.split_once('=').unwrap_or((s, ""));
    if k.is_empty() {
        return Err(invalid("--label", s, "the label name is empty"));
    }
    Ok((k.to_string(), v.to_string()))
}

/// `-u uid`, `-u uid:gid`, `-u name`, `-u name:group`.
pub fn parse_user(s: &str) -> Result<UserSpec, RequestError> {
    let (user, group) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (s, None),
    };
    let bad = |p: &str| p.is_empty() || p.contains(':') || p.chars().any(char::is_whitespace);
    if bad(user) || group.is_some_and(bad) {
        return Err(invalid("-u", s, "expected user[:group] (names or numbers)"));
    }
    Ok(UserSpec {
        user: user.to_string(),
        group: group.map(str::to_string),
    })
}

/// Lexically cleans an absolute path: no `.`, no `..` (taken against the path itself,
/// never above `/`), no repeated or trailing slashes.
pub fn clean_absolute(p: &str) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in Path::new(p).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// `-v /host:/ctr[:opts]`: opts are `ro`/`rw`, a propagation mode, and docker's
/// `z`/`Z`/`consistent`/`cached`/`delegated`, which are accepted and have no effect here.
pub fn parse_volume(s: &str) -> Result<Bind, RequestError> {
    let parts: Vec<&str> = s.split(':').collect();
    let (src, dst, opts) = match parts.as_slice() {
        [_] => {
            return Err(invalid(
                "-v",
                s,
                "anonymous volumes are not supported yet; use /host/path:/container/path",
            ))
        }
        [src, dst] => (*src, *dst, None),
        [src, dst, opts] => (*src, *dst, Some(*opts)),
        _ => {
            return Err(invalid(
                "-v",
                s,
                "expected /host/path:/container/path[:options]",
            ))
        }
    };
    if src.is_empty() {
        return Err(invalid("-v", s, "the host path is empty"));
    }
    if !src.starts_with('/') {
        // docker: a bare name is a named volume; anything path-like must be absolute.
        let is_name = src
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
            && src.as_bytes()[0].is_ascii_alphanumeric();
        if is_name {
            return Err(RequestError::NamedVolume { spec: s.into() });
        }
        return Err(invalid(
            "-v",
            s,
            format!("host path {src:?} is relative; use an absolute path"),
        ));
    }
    if !dst.starts_with('/') {
        return Err(invalid(
            "-v",
            s,
            format!("container path {dst:?} is relative; use an absolute path"),
        ));
    }
    let destination = clean_absolute(dst);
    if destination == Path::new("/") {
        return Err(invalid("-v", s, "the container path can't be /"));
    }
    let mut readonly = None;
    let mut propagation = None;
    let mut relabel = false;
    for o in opts.into_iter().flat_map(|o| o.split(',')) {
        let dup = |what: &str| invalid("-v", s, format!("more than one {what} option"));
        match o {
            "ro" | "rw" => {
                if readonly.replace(o == "ro").is_some() {
                    return Err(dup("ro/rw"));
                }
            }
            "z" | "Z" => {
                if std::mem::replace(&mut relabel, true) {
                    return Err(dup("z/Z"));
                }
            }
            "consistent" | "cached" | "delegated" => {}
            _ => match Propagation::parse(o) {
                Some(p) => {
                    if propagation.replace(p).is_some() {
                        return Err(dup("propagation"));
                    }
                }
                None => {
                    return Err(invalid(
                        "-v",
                        s,
                        format!(
                        "unknown option {o:?} (use ro, rw, or a propagation mode such as rslave)"
                    ),
                    ))
                }
            },
        }
    }
    Ok(Bind {
        source: PathBuf::from(src),
        destination,
        readonly: readonly.unwrap_or(false),
        propagation: propagation.unwrap_or_default(),
    })
}

/// Mount flags a tmpfs accepts, each with its opposite (a later one overrides).
const TMPFS_FLAGS: &[(&str, &str)] = &[
    ("ro", "rw"),
    ("exec", "noexec"),
    ("suid", "nosuid"),
    ("dev", "nodev"),
    ("atime", "noatime"),
    ("diratime", "nodiratime"),
    ("relatime", "norelatime"),
    ("strictatime", "nostrictatime"),
    ("sync", "async"),
    ("lazytime", "nolazytime"),
    ("iversion", "noiversion"),
    ("mand", "nomand"),
];

/// tmpfs data options (`key=value`).
const TMPFS_DATA: &[&str] = &[
    "size",
    "nr_blocks",
    "nr_inodes",
    "mode",
    "uid",
    "gid",
    "huge",
    "mpol",
];

fn opposite(flag: &str) -> Option<&'static str> {
    TMPFS_FLAGS.iter().find_map(|(a, b)| {
        if *a == flag {
            Some(*b)
        } else if *b == flag {
            Some(*a)
        } else {
            None
        }
    })
}

/// `--tmpfs /path[:opts]`. docker's defaults (noexec, nosuid, nodev) come first and the
/// user's options override them; `size` takes docker sizes (`64m`, `1g`) or a percentage.
pub fn parse_tmpfs(s: &str) -> Result<Tmpfs, RequestError> {
    let (path, opts) = match s.split_once(':') {
        Some((p, o)) => (p, o),
        None => (s, ""),
    };
    if !path.starts_with('/') {
        return Err(invalid("--tmpfs", s, "the path must be absolute"));
    }
    let destination = clean_absolute(path);
    if destination == Path::new("/") {
        return Err(invalid("--tmpfs", s, "the path can't be /"));
    }
    let mut options: Vec<String> = vec!["noexec".into(), "nosuid".into(), "nodev".into()];
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        if let Some((key, value)) = o.split_once('=') {
            if !TMPFS_DATA.contains(&key) {
                return Err(invalid("--tmpfs", s, format!("unknown option {key:?}")));
            }
            let value = match key {
                "size" if value.ends_with('%') => {
                    let pct = &value[..value.len() - 1];
                    if pct.is_empty() || !pct.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(invalid("--tmpfs", s, format!("bad size {value:?}")));
                    }
                    value.to_string()
                }
                "size" => parse_size("--tmpfs", value)
                    .map_err(|_| invalid("--tmpfs", s, format!("bad size {value:?}")))?
                    .to_string(),
                "mode" => {
                    if value.is_empty() || u32::from_str_radix(value, 8).is_err() {
                        return Err(invalid(
                            "--tmpfs",
                            s,
                            format!("mode {value:?} is not octal"),
                        ));
                    }
                    value.to_string()
                }
                "uid" | "gid" | "nr_blocks" | "nr_inodes" => {
                    if value.parse::<u64>().is_err() {
                        return Err(invalid(
                            "--tmpfs",
                            s,
                            format!("{key} {value:?} is not a number"),
                        ));
                    }
                    value.to_string()
                }
                _ => value.to_string(),
            };
            options.retain(|x| !x.starts_with(&format!("{key}=")));
            options.push(format!("{key}={value}"));
        } else {
            // dirsync has no opposite option.
            let Some(opp) = opposite(o).or((o == "dirsync").then_some("dirsync")) else {
                return Err(invalid("--tmpfs", s, format!("unknown option {o:?}")));
            };
            options.retain(|x| x != o && x != opp);
            options.push(o.to_string());
        }
    }
    Ok(Tmpfs {
        destination,
        options,
    })
}

/// A user resolved against the image: what goes into the spec's process.user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// From the passwd entry, for $HOME (None when the user has no entry).
    pub home: Option<String>,
}

impl ResolvedUser {
    pub fn root() -> ResolvedUser {
        ResolvedUser {
            uid: 0,
            gid: 0,
            additional_gids: Vec::new(),
            home: Some("/root".into()),
        }
    }
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Malformed lines are skipped (as runc does): an image's odd passwd shouldn't make
/// unrelated users unresolvable.
fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(PasswdEntry {
                name: f.first()?.to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                home: f.get(5).unwrap_or(&"").to_string(),
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(GroupEntry {
                name: f.first()?.to_string(),
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|m| !m.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Image files larger than this are refused rather than read into memory.
const MAX_IMAGE_FILE: u64 = 16 << 20;

/// Reads `rel` inside the rootfs without following anything out of it: openat2 with
/// RESOLVE_IN_ROOT from a rootfs fd, O_NONBLOCK (a FIFO planted at /etc/passwd must not
/// hang the engine), then only a regular file is read. Ok(None) if it doesn't exist.
fn read_image_file(rootfs: &Path, rel: &'static str) -> Result<Option<String>, RequestError> {
    let err = |source: std::io::Error| RequestError::ImageFile {
        rootfs: rootfs.to_path_buf(),
        path: rel,
        source,
    };
    let root = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(rootfs)
        .map_err(err)?;
    use rustix::fs::OFlags;
    let fd = match berth_runtime::rootfs::safe_path::open(
        root.as_fd(),
        Path::new(rel),
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY,
    ) {
        Ok(fd) => fd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(e)),
    };
    let file = std::fs::File::from(fd);
    let meta = file.metadata().map_err(err)?;
    if !meta.is_file() {
        return Err(err(std::io::Error::other("not a regular file")));
    }
    if meta.len() > MAX_IMAGE_FILE {
        return Err(err(std::io::Error::other(format!(
            "larger than {MAX_IMAGE_FILE} bytes"
        ))));
    }
    let mut bytes = Vec::new();
    file.take(MAX_IMAGE_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(err)?;
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// Resolves `user[:group]` as runc/docker do, against the image's etc/passwd and etc/group:
/// - a name must exist in passwd; a number needn't (then gid 0, no home);
/// - the gid is the group's (name or number) if given, else the passwd entry's;
/// - supplementary groups are those listing the user's name, only when no group is given.
pub fn resolve_user(rootfs: &Path, spec: &str) -> Result<ResolvedUser, RequestError> {
    let us = parse_user(spec)?;
    let user_err = |reason: String| RequestError::User {
        spec: spec.to_string(),
        reason,
    };
    let passwd = parse_passwd(&read_image_file(rootfs, "etc/passwd")?.unwrap_or_default());
    let uid_num = us.user.parse::<u32>().ok();
    let entry = passwd
        .iter()
        .find(|e| e.name == us.user || uid_num == Some(e.uid));
    let (uid, mut gid, name, home) = match (entry, uid_num) {
        (Some(e), _) => (e.uid, e.gid, Some(e.name.clone()), Some(e.home.clone())),
        (None, Some(n)) => (n, 0, None, None),
        (None, None) => {
            return Err(user_err(format!(
                "no user {:?} in the image's /etc/passwd",
                us.user
            )))
        }
    };
    let need_groups = us.group.is_some() || name.is_some();
    let groups = if need_groups {
        parse_group(&read_image_file(rootfs, "etc/group")?.unwrap_or_default())
    } else {
        Vec::new()
    };
    let mut additional_gids = Vec::new();
    match &us.group {
        Some(g) => {
            let gid_num = g.parse::<u32>().ok();
            match groups
                .iter()
                .find(|e| e.name == *g || gid_num == Some(e.gid))
            {
                Some(e) => gid = e.gid,
                None => match gid_num {
                    Some(n) => gid = n,
                    None => {
                        return Err(user_err(format!(
                            "no group {g:?} in the image's /etc/group"
                        )))
                    }
                },
            }
        }
        None => {
            if let Some(name) = &name {
                for g in groups
                    .iter()
                    .filter(|g| g.members.iter().any(|m| m == name))
                {
                    if g.gid != gid && !additional_gids.contains(&g.gid) {
                        additional_gids.push(g.gid);
                    }
                }
            }
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        home: home.filter(|h| !h.is_empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn flags(image: &str) -> RunFlags {
        RunFlags {
            image: image.into(),
            ..Default::default()
        }
    }

    fn msg<T: std::fmt::Debug>(r: Result<T, RequestError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("--memory", "256m").unwrap(), 256 << 20);
        assert_eq!(parse_size("--memory", "256M").unwrap(), 256 << 20);
        assert_eq!(parse_size("--memory", "1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("--memory", "1GB").unwrap(), 1 << 30);
        assert_eq!(parse_size("--memory", "1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("--memory", "1.5g").unwrap(), 3 << 29);
        assert_eq!(parse_size("--memory", "512k").unwrap(), 512 << 10);
        assert_eq!(parse_size("--memory", "100").unwrap(), 100);
        assert_eq!(parse_size("--memory", "100b").unwrap(), 100);
        assert_eq!(parse_size("--memory", "64 m").unwrap(), 64 << 20);
        assert_eq!(
            msg(parse_size("--memory", "12x")),
            r#"invalid --memory "12x": unknown unit "x" (use b, k, m, g, t or p)"#
        );
        assert!(parse_size("--memory", "").is_err());
        assert!(parse_size("--memory", "m").is_err());
        assert!(parse_size("--memory", "1.2.3m").is_err());
        assert!(parse_size("--memory", "1.m").is_err());
        assert!(parse_size("--memory", "-5m").is_err());
        assert!(msg(parse_size("--memory", "99999999999p")).contains("too large"));
    }

    #[test]
    fn memory_and_swap() {
        assert!(msg(parse_memory("1m")).contains("minimum memory limit is 6m"));
        assert_eq!(parse_memory_swap("-1", Some(1 << 30)).unwrap(), Some(-1));
        assert_eq!(
            parse_memory_swap("2g", Some(1 << 30)).unwrap(),
            Some(2 << 30)
        );
        assert_eq!(parse_memory_swap("0", Some(1 << 30)).unwrap(), None);
        let e = msg(parse_memory_swap("512m", Some(1 << 30)));
        assert!(e.starts_with(r#"invalid --memory-swap "512m": "#), "{e}");
        assert!(msg(parse_memory_swap("1g", None)).contains("set --memory too"));
        let mut f = flags("img");
        f.memory = Some("256m".into());
        f.memory_swap = Some("-1".into());
        let r = RunRequest::parse(&f, &no_env).unwrap();
        assert_eq!(r.resources.memory, Some(256 << 20));
        assert_eq!(r.resources.memory_swap, Some(-1));
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("1.5").unwrap(), (150_000, 100_000));
        assert_eq!(parse_cpus("2").unwrap(), (200_000, 100_000));
        assert_eq!(parse_cpus(".5").unwrap(), (50_000, 100_000));
        assert_eq!(parse_cpus("0.01").unwrap(), (1_000, 100_000));
        assert!(msg(parse_cpus("0.001")).contains("minimum is 0.01"));
        assert!(msg(parse_cpus("0")).contains("minimum"));
        assert!(parse_cpus("-1").is_err());
        assert!(parse_cpus("abc").is_err());
        assert!(parse_cpus("1.0000000001").is_err());
        assert!(parse_cpus(".").is_err());
        assert_eq!(parse_cpuset("0-3,5").unwrap(), "0-3,5");
        assert!(parse_cpuset("3-1").is_err());
        assert!(parse_cpuset("a").is_err());
        assert!(parse_cpuset("1,,2").is_err());
        assert!(parse_cpuset("").is_err());
    }

    #[test]
    fn env_flags_and_lookup() {
        let lookup = |k: &str| (k == "HOMEISH").then(|| "/h".to_string());
        assert_eq!(
            parse_env("A=b=c", &lookup).unwrap(),
            Some(("A".into(), "b=c".into()))
        );
        assert_eq!(
            parse_env("A=", &lookup).unwrap(),
            Some(("A".into(), "".into()))
        );
        assert_eq!(
            parse_env("HOMEISH", &lookup).unwrap(),
            Some(("HOMEISH".into(), "/h".into()))
        );
        assert_eq!(parse_env("UNSET", &lookup).unwrap(), None);
        assert!(msg(parse_env("=x", &lookup)).contains("name is empty"));
    }

    #[test]
    fn env_files() {
        let lookup = |k: &str| (k == "FROMHOST").then(|| "yes".to_string());
        let text =
            b"\xEF\xBB\xBF# comment\n\n  A=1\nB= spaced value \r\nFROMHOST\nMISSING\nC=x=y\n";
        let got = parse_env_file(Path::new("/f.env"), text, &lookup).unwrap();
        assert_eq!(
            got,
            vec![
                ("A".into(), "1".into()),
                ("B".into(), " spaced value ".into()),
                ("FROMHOST".into(), "yes".into()),
                ("C".into(), "x=y".into()),
            ]
        );
        let e = msg(parse_env_file(
            Path::new("/f.env"),
            b"OK=1\nBAD KEY=2\n",
            &lookup,
        ));
        assert_eq!(
            e,
            r#"invalid --env-file /f.env line 2: variable name "BAD KEY" contains whitespace"#
        );
        assert!(msg(parse_env_file(Path::new("/f"), b"=v\n", &lookup)).contains("line 1"));
        assert!(msg(parse_env_file(Path::new("/f"), b"A=\xff\n", &lookup)).contains("UTF-8"));

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.env");
        std::fs::write(&p, "X=file\nY=file\n").unwrap();
        let mut f = flags("img");
        f.env_file = vec![p.clone()];
        f.env = vec!["Y=flag".into(), "Z=1".into()];
        let r = RunRequest::parse(&f, &no_env).unwrap();
        assert_eq!(
            r.env,
            vec![
                ("X".into(), "file".into()),
                ("Y".into(), "flag".into()),
                ("Z".into(), "1".into())
            ]
        );
        f.env_file = vec![dir.path().join("missing")];
        assert!(msg(RunRequest::parse(&f, &no_env)).starts_with("reading --env-file"));
    }

    #[test]
    fn volumes() {
        let b = parse_volume("/srv:/data:ro").unwrap();
        assert_eq!(b.source, Path::new("/srv"));
        assert_eq!(b.destination, Path::new("/data"));
        assert!(b.readonly);
        assert_eq!(b.propagation, Propagation::Rprivate);
        let b = parse_volume("/srv:/data/./x/../y/").unwrap();
        assert_eq!(b.destination, Path::new("/data/y"));
        assert!(!b.readonly);
        let b = parse_volume("/srv:/d:rw,rslave,z").unwrap();
        assert_eq!(b.propagation, Propagation::Rslave);
        assert!(matches!(
            parse_volume("data:/d"),
            Err(RequestError::NamedVolume { .. })
        ));
        assert!(msg(parse_volume("data:/d")).contains("named volumes are not supported yet"));
        assert!(msg(parse_volume("./data:/d")).contains("is relative"));
        assert!(msg(parse_volume("/srv:d")).contains("container path \"d\" is relative"));
        assert!(msg(parse_volume("/data")).contains("anonymous volumes"));
        assert!(msg(parse_volume("/srv:/")).contains("can't be /"));
        assert!(msg(parse_volume("/srv:/d:ro,rw")).contains("more than one"));
        assert!(msg(parse_volume("/srv:/d:bogus")).contains("unknown option \"bogus\""));
        assert!(parse_volume("/a:/b:ro:x").is_err());
        assert!(parse_volume(":/b").is_err());
    }

    #[test]
    fn tmpfs() {
        let t = parse_tmpfs("/run").unwrap();
        assert_eq!(t.destination, Path::new("/run"));
        assert_eq!(t.options, ["noexec", "nosuid", "nodev"]);
        let t = parse_tmpfs("/tmp:rw,exec,size=64m,mode=1777").unwrap();
        assert_eq!(
            t.options,
            [
                "nosuid",
                "nodev",
                "rw",
                "exec",
                "size=67108864",
                "mode=1777"
            ]
        );
        let t = parse_tmpfs("/tmp:size=50%,size=1k,dirsync").unwrap();
        assert!(t.options.contains(&"dirsync".to_string()));
        assert!(t.options.contains(&"size=1024".to_string()));
        assert!(!t.options.contains(&"size=50%".to_string()));
        assert!(msg(parse_tmpfs("tmp")).contains("must be absolute"));
        assert!(msg(parse_tmpfs("/tmp:bogus")).contains("unknown option"));
        assert!(msg(parse_tmpfs("/tmp:mode=999")).contains("not octal"));
        assert!(msg(parse_tmpfs("/tmp:size=lots")).contains("bad size"));
        assert!(msg(parse_tmpfs("/tmp:uid=x")).contains("not a number"));
    }

    #[test]
    fn capabilities_and_security_opts() {
        assert_eq!(
            parse_capability("--cap-add", "NET_ADMIN").unwrap(),
            Cap::Named("CAP_NET_ADMIN".into())
        );
        assert_eq!(
            parse_capability("--cap-add", "cap_net_admin").unwrap(),
            Cap::Named("CAP_NET_ADMIN".into())
        );
        assert_eq!(parse_capability("--cap-drop", "all").unwrap(), Cap::All);
        assert_eq!(
            msg(parse_capability("--cap-add", "NET_FLY")),
            r#"invalid --cap-add "NET_FLY": unknown capability"#
        );
        assert!(parse_capability("--cap-add", "CAP_").is_err());

        let mut f = flags("img");
        let r = RunRequest::parse(&f, &no_env).unwrap();
        assert!(r.no_new_privileges);
        assert_eq!(r.seccomp, SeccompMode::Default);
        f.security_opt = vec![
            "no-new-privileges=false".into(),
            "seccomp=/p.json".into(),
            "label=disable".into(),
        ];
        let r = RunRequest::parse(&f, &no_env).unwrap();
        assert!(!r.no_new_privileges);
        assert_eq!(r.seccomp, SeccompMode::File("/p.json".into()));
        f.security_opt = vec!["no-new-privileges".into(), "seccomp:unconfined".into()];
        let r = RunRequest::parse(&f, &no_env).unwrap();
        assert!(r.no_new_privileges);
        assert_eq!(r.seccomp, SeccompMode::Unconfined);
        for bad in [
            "no-new-privileges=maybe",
            "apparmor=mine",
            "seccomp=",
            "bogus",
        ] {
            f.security_opt = vec![bad.into()];
            let e = msg(RunRequest::parse(&f, &no_env));
            assert!(
                e.starts_with(&format!("invalid --security-opt {bad:?}")),
                "{e}"
            );
        }
    }

    #[test]
    fn simple_flags() {
        let mut f = flags("alpine");
        f.entrypoint = Some(String::new());
        f.label = vec!["a=b".into(), "flag".into()];
        f.userns = Some("host".into());
        f.network = "host".into();
        f.hostname = Some("web-1.example".into());
        f.pids_limit = Some(0);
        f.workdir = Some("/app".into());
        f.user = Some("www:web".into());
        f.command = vec!["echo".into(), "hi".into()];
        let r = RunRequest::parse(&f, &no_env).unwrap();
        assert_eq!(r.entrypoint, Some(vec![]));
        assert_eq!(r.labels.get("flag").unwrap(), "");
        assert_eq!(r.userns, UsernsMode::Host);
        assert_eq!(r.network, NetworkMode::Host);
        assert_eq!(r.resources.pids_limit, Some(-1));
        assert_eq!(
            r.user,
            Some(UserSpec {
                user: "www".into(),
                group: Some("web".into())
            })
        );
        assert_eq!(r.command, ["echo", "hi"]);

        assert!(msg(parse_userns("keep-id")).contains("supported: auto, host"));
        assert_eq!(
            parse_network("bridge").unwrap(),
            NetworkMode::Bridge("bridge".into())
        );
        assert_eq!(parse_network("").unwrap(), NetworkMode::Default);
        assert_eq!(
            parse_network("container:db").unwrap(),
            NetworkMode::Container("db".into())
        );
        assert!(msg(parse_network("container:")).contains("needs a container"));
        assert!(msg(parse_network("bad name!")).contains("network's name"));
        assert_eq!(
            parse_add_host("db:10.0.0.9").unwrap(),
            ("db".into(), "10.0.0.9".parse().unwrap())
        );
        assert!(parse_add_host("db:[::1]").unwrap().1.is_ipv6());
        assert!(msg(parse_add_host("db")).contains("NAME:IP"));
        // Network flags that the mode can't honour.
        let mut f = flags("busybox");
        f.network = "none".into();
        f.publish = vec!["8080:80".into()];
        assert!(msg(RunRequest::parse(&f, &no_env)).contains("--network none"));
        f.network = "container:db".into();
        f.publish.clear();
        f.dns = vec!["10.0.0.1".into()];
        assert!(msg(RunRequest::parse(&f, &no_env)).contains("--dns"));
        f.network = "bridge".into();
        f.publish = vec!["x:80".into()];
        assert!(msg(RunRequest::parse(&f, &no_env)).contains("-p"));
        assert!(parse_hostname("-bad").is_err());
        assert!(parse_hostname(&"a".repeat(65)).is_err());
        assert!(parse_hostname("a_b").is_err());
        assert!(parse_label("=v").is_err());
        assert!(parse_user("").is_err());
        assert!(parse_user("a:").is_err());
        assert!(parse_user("a:b:c").is_err());
        f.workdir = Some("app".into());
        assert!(msg(RunRequest::parse(&f, &no_env)).contains("must be absolute"));
        assert!(RunRequest::parse(&RunFlags::default(), &no_env).is_err());
    }

    fn rootfs_with(passwd: &str, group: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(d.path().join("etc/passwd"), passwd).unwrap();
        std::fs::write(d.path().join("etc/group"), group).unwrap();
        d
    }

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        www:x:33:33:www:/var/www:/sbin/nologin\n\
        broken line\n\
        app:x:1000:1000::/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nwww:x:33:\nweb:x:82:app,www\naudio:x:29:app\napp:x:1000:\n";

    #[test]
    fn users_resolve_against_the_image() {
        let d = rootfs_with(PASSWD, GROUP);
        let r = |s: &str| resolve_user(d.path(), s);
        assert_eq!(r("root").unwrap(), ResolvedUser::root());
        let app = r("app").unwrap();
        assert_eq!((app.uid, app.gid), (1000, 1000));
        assert_eq!(app.additional_gids, vec![82, 29]);
        assert_eq!(app.home.as_deref(), Some("/home/app"));
        // By number: same entry.
        assert_eq!(r("1000").unwrap(), app);
        // Explicit group: no supplementary groups.
        let g = r("app:web").unwrap();
        assert_eq!((g.uid, g.gid, g.additional_gids.len()), (1000, 82, 0));
        let g = r("www:5000").unwrap();
        assert_eq!((g.uid, g.gid), (33, 5000));
        // Unknown numeric uid: gid 0, no home.
        let n = r("4242").unwrap();
        assert_eq!((n.uid, n.gid, n.home), (4242, 0, None));
        assert_eq!(r("4242:4243").unwrap().gid, 4243);
        assert_eq!(
            r("nobody").unwrap_err().to_string(),
            r#"resolving user "nobody" in the image: no user "nobody" in the image's /etc/passwd"#
        );
        assert!(r("app:nogroup")
            .unwrap_err()
            .to_string()
            .contains("no group"));
    }

    #[test]
    fn user_files_cannot_escape_the_rootfs() {
        let d = tempfile::tempdir().unwrap();
        let rootfs = d.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        // Outside the rootfs, a passwd an attacker would like us to read.
        std::fs::write(d.path().join("passwd"), "evil:x:0:0::/:/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("../../passwd", rootfs.join("etc/passwd")).unwrap();
        assert!(resolve_user(&rootfs, "evil").is_err());
        std::fs::remove_file(rootfs.join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink(d.path().join("passwd"), rootfs.join("etc/passwd")).unwrap();
        assert!(resolve_user(&rootfs, "evil").is_err());
        // Numbers still work without a passwd.
        assert_eq!(resolve_user(&rootfs, "7").unwrap().uid, 7);
        // A symlink inside the rootfs is fine.
        std::fs::remove_file(rootfs.join("etc/passwd")).unwrap();
        std::fs::write(rootfs.join("etc/passwd.real"), PASSWD).unwrap();
        std::os::unix::fs::symlink("/etc/passwd.real", rootfs.join("etc/passwd")).unwrap();
        assert_eq!(resolve_user(&rootfs, "www").unwrap().uid, 33);
    }

    #[test]
    fn user_files_must_be_regular() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        nix::unistd::mkfifo(
            &d.path().join("etc/passwd"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        let e = resolve_user(d.path(), "root").unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        std::fs::remove_file(d.path().join("etc/passwd")).unwrap();
        std::fs::create_dir(d.path().join("etc/passwd")).unwrap();
        assert!(resolve_user(d.path(), "root").is_err());
    }
}
