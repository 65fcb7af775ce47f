//! `berth oci` / `berth-runtime`: runc's command line, verb for verb, so podman, conmon and
//! containerd can drive berth as their OCI runtime.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use berth_runtime::container::{self, CreateOpts, ExecOpts};
use clap::{Args, Parser, Subcommand};
use oci_spec_shim::Process;

/// oci-spec types re-exported through the runtime crate's dependency.
mod oci_spec_shim {
    pub use berth_runtime::spec::oci::{LinuxResources, Process};
}

#[derive(Parser, Debug)]
#[command(
    name = "berth-runtime",
    version,
    about = "berth's OCI runtime (runc-compatible command line)"
)]
pub struct RuntimeCli {
    /// Directory for container state.
    #[arg(long, global = true, default_value = "/run/berth/runtime")]
    root: PathBuf,
    /// Also write errors to this file.
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Format of --log: text or json.
    #[arg(long = "log-format", global = true, default_value = "text")]
    log_format: String,
    /// Print timestamped steps to stderr.
    #[arg(long, global = true)]
    debug: bool,
    /// Accepted for compatibility; cgroupsPath in "slice:prefix:name" form is mapped to
    /// the cgroupfs path systemd would use.
    #[arg(long = "systemd-cgroup", global = true)]
    systemd_cgroup: bool,
    /// Accepted for compatibility (runc's rootless detection).
    #[arg(long, global = true, num_args = 0..=1, default_missing_value = "auto")]
    rootless: Option<String>,
    /// Accepted for compatibility; checkpointing is not supported.
    #[arg(long, global = true, hide = true)]
    criu: Option<String>,
    #[command(subcommand)]
    cmd: Verb,
}

#[derive(Args, Debug, Clone)]
struct CreateArgs {
    /// Container id.
    id: String,
    /// Path to the OCI bundle.
    #[arg(short, long, default_value = ".")]
    bundle: PathBuf,
    /// Unix socket that receives the pty master when process.terminal is set.
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    /// Write the init's pid here.
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    /// Use MS_MOVE + chroot instead of pivot_root (for ramfs roots).
    #[arg(long = "no-pivot")]
    no_pivot: bool,
    /// Keep the caller's session keyring.
    #[arg(long = "no-new-keyring")]
    no_new_keyring: bool,
    /// Pass fds 3..3+N to the container process.
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: u32,
    /// Accepted for compatibility; not supported.
    #[arg(long = "pidfd-socket", hide = true)]
    pidfd_socket: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Verb {
    /// Create a container; its process waits for `start`.
    Create(CreateArgs),
    /// Start the process of a created container.
    Start { id: String },
    /// Print the OCI state of a container.
    State { id: String },
    /// Send a signal (default SIGTERM) to the container's init.
    Kill {
        id: String,
        #[arg(default_value = "SIGTERM")]
        signal: String,
        /// Signal every process in the container's cgroup.
        #[arg(short, long)]
        all: bool,
    },
    /// Delete a container and its resources.
    Delete {
        id: String,
        /// Kill it first if it is still running.
        #[arg(short, long)]
        force: bool,
    },
    /// Create and start a container; wait for it and delete it unless detached.
    Run {
        #[command(flatten)]
        create: CreateArgs,
        #[arg(short, long)]
        detach: bool,
        /// Don't delete the container after it exits.
        #[arg(long)]
        keep: bool,
    },
    /// Run a new process inside a container.
    Exec(ExecArgs),
    /// List the processes of a container.
    Ps {
        #[arg(short, long, default_value = "table")]
        format: String,
        id: String,
        /// Arguments for ps(1) (table format), default -ef.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// List containers.
    #[command(alias = "ls")]
    List {
        #[arg(short, long, default_value = "table")]
        format: String,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Freeze every process of a container.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// Change a container's resource limits.
    Update(UpdateArgs),
    /// Print the runtime's features as JSON.
    Features,
    /// Write a default config.json to the bundle directory.
    Spec {
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        /// A spec with a user namespace mapping root to an unprivileged range.
        #[arg(long)]
        userns: bool,
    },
}

#[derive(Args, Debug)]
struct ExecArgs {
    id: String,
    /// Command and arguments (unless --process).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
    /// A JSON file with the process (config.json's process section).
    #[arg(short, long)]
    process: Option<PathBuf>,
    #[arg(short, long)]
    detach: bool,
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    #[arg(short, long)]
    tty: bool,
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    /// ROWSxCOLS for the pty of -t (a berth extension: the size is set before the
    /// process runs, so it never sees 0x0).
    #[arg(long = "console-size", hide = true)]
    console_size: Option<String>,
    #[arg(long)]
    cwd: Option<PathBuf>,
    /// KEY=VALUE, repeatable.
    #[arg(short, long)]
    env: Vec<String>,
    /// UID[:GID]
    #[arg(short, long)]
    user: Option<String>,
    #[arg(short = 'g', long = "additional-gids")]
    additional_gids: Vec<u32>,
    /// Add a capability (repeatable).
    #[arg(short, long)]
    cap: Vec<String>,
    #[arg(long = "no-new-privs")]
    no_new_privs: bool,
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: u32,
    /// Accepted for compatibility.
    #[arg(long = "process-label", hide = true)]
    process_label: Option<String>,
    #[arg(long, hide = true)]
    apparmor: Option<String>,
    #[arg(long = "ignore-paused", hide = true)]
    ignore_paused: bool,
    #[arg(long, hide = true)]
    cgroup: Option<String>,
}

#[derive(Args, Debug)]
struct UpdateArgs {
    id: String,
    /// A JSON file with linux.resources ("-" for stdin).
    #[arg(short, long)]
    resources: Option<PathBuf>,
    #[arg(long)]
    memory: Option<String>,
    #[arg(long = "memory-reservation")]
    memory_reservation: Option<String>,
    #[arg(long = "memory-swap")]
    memory_swap: Option<String>,
    #[arg(long = "cpu-shares")]
    cpu_shares: Option<u64>,
    #[arg(long = "cpu-quota")]
    cpu_quota: Option<i64>,
    #[arg(long = "cpu-period")]
    cpu_period: Option<u64>,
    #[arg(long = "cpuset-cpus")]
    cpuset_cpus: Option<String>,
    #[arg(long = "cpuset-mems")]
    cpuset_mems: Option<String>,
    #[arg(long = "pids-limit")]
    pids_limit: Option<i64>,
    #[arg(long = "blkio-weight")]
    blkio_weight: Option<u16>,
}

/// Whether this invocation will enter a container (and so must run from a sealed copy).
pub fn enters_container(args: &[OsString]) -> bool {
    args.iter()
        .skip(1)
        .take(12)
        .any(|a| a == "create" || a == "run" || a == "exec")
}

pub fn main_runtime(args: Vec<OsString>) -> i32 {
    match RuntimeCli::try_parse_from(args) {
        Ok(cli) => dispatch(cli),
        Err(e) => {
            let _ = e.print();
            if e.use_stderr() {
                2
            } else {
                0
            }
        }
    }
}

pub fn dispatch(cli: RuntimeCli) -> i32 {
    if cli.debug {
        berth_runtime::debug::enable();
    }
    let log = Logger {
        file: cli.log.clone(),
        json: cli.log_format == "json",
    };
    match exec_verb(&cli) {
        Ok(code) => code,
        Err(e) => {
            let msg = format!("{e:#}");
            log.error(&msg);
            1
        }
    }
}

struct Logger {
    file: Option<PathBuf>,
    json: bool,
}

impl Logger {
    fn error(&self, msg: &str) {
        eprintln!("berth-runtime: {msg}");
        let Some(path) = &self.file else { return };
        let line = if self.json {
            serde_json::json!({
                "level": "error",
                "msg": msg,
                "time": berth_runtime::state::now_rfc3339(),
            })
            .to_string()
        } else {
            format!(
                "time=\"{}\" level=error msg={:?}",
                berth_runtime::state::now_rfc3339(),
                msg
            )
        };
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

fn create_opts(cli: &RuntimeCli, a: &CreateArgs) -> CreateOpts {
    CreateOpts {
        root: cli.root.clone(),
        id: a.id.clone(),
        bundle: a.bundle.clone(),
        pid_file: a.pid_file.clone(),
        console_socket: a.console_socket.clone(),
        preserve_fds: a.preserve_fds,
        no_pivot: a.no_pivot,
        no_new_keyring: a.no_new_keyring,
        systemd_cgroup: cli.systemd_cgroup,
    }
}

fn exec_verb(cli: &RuntimeCli) -> Result<i32> {
    let root = cli.root.as_path();
    match &cli.cmd {
        Verb::Create(a) => {
            container::create(&create_opts(cli, a))?;
        }
        Verb::Start { id } => container::start(root, id)?,
        Verb::State { id } => {
            let st = container::state(root, id)?;
            println!("{}", serde_json::to_string_pretty(&st)?);
        }
        Verb::Kill { id, signal, all } => {
            let sig = container::parse_signal(signal)?;
            container::kill(root, id, sig, *all)?;
        }
        Verb::Delete { id, force } => container::delete(root, id, *force)?,
        Verb::Run {
            create,
            detach,
            keep,
        } => {
            let opts = create_opts(cli, create);
            if *keep && !*detach {
                container::create(&opts)?;
                container::start(root, &opts.id)?;
                return Ok(0);
            }
            return Ok(container::run(&opts, *detach)?.code());
        }
        Verb::Exec(a) => return exec(cli, a),
        Verb::Ps {
            format,
            id,
            ps_args,
        } => ps(root, id, format, ps_args)?,
        Verb::List { format, quiet } => list(root, format, *quiet)?,
        Verb::Pause { id } => container::pause(root, id)?,
        Verb::Resume { id } => container::resume(root, id)?,
        Verb::Update(a) => update(root, a)?,
        Verb::Features => println!("{}", serde_json::to_string_pretty(&container::features())?),
        Verb::Spec { bundle, userns } => {
            let path = bundle.join("config.json");
            if path.exists() {
                bail!("{} already exists", path.display());
            }
            let spec = berth_runtime::spec::example(&["sh".into()], *userns);
            std::fs::write(&path, serde_json::to_string_pretty(&spec)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(0)
}

fn exec(cli: &RuntimeCli, a: &ExecArgs) -> Result<i32> {
    let process: Process = match &a.process {
        Some(p) => {
            let text = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            let de = &mut serde_json::Deserializer::from_slice(&text);
            serde_path_to_error_shim(de, p)?
        }
        None => {
            if a.command.is_empty() {
                bail!("exec: no command given (and no --process)");
            }
            let (saved, _) = container::load(&cli.root, &a.id)?;
            let mut p = saved
                .spec
                .process()
                .clone()
                .context("container spec has no process")?;
            p.set_args(Some(a.command.clone()));
            p.set_terminal(Some(a.tty));
            p.set_console_size(None);
            if let Some(size) = &a.console_size {
                let (rows, cols) = size
                    .split_once('x')
                    .and_then(|(r, c)| Some((r.parse::<u32>().ok()?, c.parse::<u32>().ok()?)))
                    .with_context(|| {
                        format!("invalid --console-size {size:?}: expected ROWSxCOLS")
                    })?;
                p.set_console_size(Some(
                    berth_runtime::spec::oci::BoxBuilder::default()
                        .height(rows)
                        .width(cols)
                        .build()
                        .context("building the console size")?,
                ));
            }
            if let Some(cwd) = &a.cwd {
                p.set_cwd(cwd.clone());
            }
            let mut env = p.env().clone().unwrap_or_default();
            for kv in &a.env {
                let key = kv.split('=').next().unwrap_or_default();
                env.retain(|e| e.split('=').next() != Some(key));
                env.push(kv.clone());
            }
            p.set_env(Some(env));
            if let Some(u) = &a.user {
                let (uid, gid) = parse_user(u)?;
                let mut user = p.user().clone();
                user.set_uid(uid);
                user.set_gid(gid.unwrap_or(uid));
                p.set_user(user);
            }
            if !a.additional_gids.is_empty() {
                let mut user = p.user().clone();
                user.set_additional_gids(Some(a.additional_gids.clone()));
                p.set_user(user);
            }
            if a.no_new_privs {
                p.set_no_new_privileges(Some(true));
            }
            if !a.cap.is_empty() {
                add_caps(&mut p, &a.cap)?;
            }
            p
        }
    };
    let opts = ExecOpts {
        root: cli.root.clone(),
        id: a.id.clone(),
        process,
        detach: a.detach,
        pid_file: a.pid_file.clone(),
        console_socket: a.console_socket.clone(),
        preserve_fds: a.preserve_fds,
    };
    Ok(container::exec(&opts)?.code())
}

fn serde_path_to_error_shim(
    de: &mut serde_json::Deserializer<serde_json::de::SliceRead<'_>>,
    path: &Path,
) -> Result<Process> {
    berth_runtime::spec::parse_as(path, de).map_err(Into::into)
}

fn parse_user(u: &str) -> Result<(u32, Option<u32>)> {
    let (uid, gid) = match u.split_once(':') {
        Some((a, b)) => (a, Some(b)),
        None => (u, None),
    };
    let uid = uid
        .parse()
        .with_context(|| format!("--user {u:?}: uid must be a number"))?;
    let gid = gid
        .map(|g| g.parse())
        .transpose()
        .with_context(|| format!("--user {u:?}: gid must be a number"))?;
    Ok((uid, gid))
}

fn add_caps(p: &mut Process, caps: &[String]) -> Result<()> {
    let mut c = p.capabilities().clone().unwrap_or_default();
    let parsed: Vec<berth_runtime::spec::oci::Capability> = caps
        .iter()
        .map(|s| serde_json::from_value(serde_json::Value::String(s.clone())))
        .collect::<Result<_, _>>()
        .with_context(|| format!("--cap {caps:?}: unknown capability"))?;
    let with = |set: &Option<berth_runtime::spec::oci::Capabilities>| {
        let mut s = set.clone().unwrap_or_default();
        s.extend(parsed.iter().copied());
        Some(s)
    };
    let (b, e, pe) = (with(c.bounding()), with(c.effective()), with(c.permitted()));
    c.set_bounding(b);
    c.set_effective(e);
    c.set_permitted(pe);
    p.set_capabilities(Some(c));
    Ok(())
}

fn ps(root: &Path, id: &str, format: &str, ps_args: &[String]) -> Result<()> {
    let pids = container::ps(root, id)?;
    match format {
        "json" => println!("{}", serde_json::to_string(&pids)?),
        "table" => {
            let args: Vec<String> = if ps_args.is_empty() {
                vec!["-ef".into()]
            } else {
                ps_args.to_vec()
            };
            let out = std::process::Command::new("ps")
                .args(&args)
                .output()
                .context("running ps")?;
            let text = String::from_utf8_lossy(&out.stdout);
            let mut lines = text.lines();
            let header = lines.next().unwrap_or_default();
            let col = header
                .split_whitespace()
                .position(|h| h == "PID")
                .context("ps output has no PID column")?;
            println!("{header}");
            for l in lines {
                let pid: Option<i32> = l.split_whitespace().nth(col).and_then(|p| p.parse().ok());
                if pid.is_some_and(|p| pids.contains(&p)) {
                    println!("{l}");
                }
            }
        }
        f => bail!("invalid --format {f:?} (want table or json)"),
    }
    Ok(())
}

fn list(root: &Path, format: &str, quiet: bool) -> Result<()> {
    let entries = container::list(root)?;
    if quiet {
        for e in &entries {
            println!("{}", e.id);
        }
        return Ok(());
    }
    match format {
        "json" => println!("{}", serde_json::to_string(&entries)?),
        "table" => {
            println!(
                "{:<24} {:<8} {:<10} {:<40} {:<32} OWNER",
                "ID", "PID", "STATUS", "BUNDLE", "CREATED"
            );
            for e in &entries {
                println!(
                    "{:<24} {:<8} {:<10} {:<40} {:<32} {}",
                    e.id, e.pid, e.status, e.bundle, e.created, e.owner
                );
            }
        }
        f => bail!("invalid --format {f:?} (want table or json)"),
    }
    Ok(())
}

fn update(root: &Path, a: &UpdateArgs) -> Result<()> {
    let res: oci_spec_shim::LinuxResources = if let Some(p) = &a.resources {
        let text = if p.as_os_str() == "-" {
            let mut s = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut s)?;
            s
        } else {
            std::fs::read(p).with_context(|| format!("reading {}", p.display()))?
        };
        let de = &mut serde_json::Deserializer::from_slice(&text);
        berth_runtime::spec::parse_as(p, de)?
    } else {
        let mut mem = serde_json::Map::new();
        if let Some(m) = &a.memory {
            mem.insert("limit".into(), parse_bytes(m, "--memory")?.into());
        }
        if let Some(m) = &a.memory_reservation {
            mem.insert(
                "reservation".into(),
                parse_bytes(m, "--memory-reservation")?.into(),
            );
        }
        if let Some(m) = &a.memory_swap {
            mem.insert("swap".into(), parse_bytes(m, "--memory-swap")?.into());
        }
        let mut cpu = serde_json::Map::new();
        if let Some(v) = a.cpu_shares {
            cpu.insert("shares".into(), v.into());
        }
        if let Some(v) = a.cpu_quota {
            cpu.insert("quota".into(), v.into());
        }
        if let Some(v) = a.cpu_period {
            cpu.insert("period".into(), v.into());
        }
        if let Some(v) = &a.cpuset_cpus {
            cpu.insert("cpus".into(), v.clone().into());
        }
        if let Some(v) = &a.cpuset_mems {
            cpu.insert("mems".into(), v.clone().into());
        }
        let mut v = serde_json::json!({});
        if !mem.is_empty() {
            v["memory"] = mem.into();
        }
        if !cpu.is_empty() {
            v["cpu"] = cpu.into();
        }
        if let Some(p) = a.pids_limit {
            v["pids"] = serde_json::json!({ "limit": p });
        }
        if let Some(w) = a.blkio_weight {
            v["blockIO"] = serde_json::json!({ "weight": w });
        }
        serde_json::from_value(v).context("building resources from flags")?
    };
    container::update(root, &a.id, &res)?;
    Ok(())
}

/// "512m", "1g", "1024", "-1".
fn parse_bytes(s: &str, flag: &str) -> Result<i64> {
    let t = s.trim().to_ascii_lowercase();
    if t == "-1" {
        return Ok(-1);
    }
    let (num, mult) = match t.trim_end_matches('b').chars().last() {
        Some('k') => (&t[..t.trim_end_matches('b').len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.trim_end_matches('b').len() - 1], 1 << 20),
        Some('g') => (&t[..t.trim_end_matches('b').len() - 1], 1 << 30),
        _ => (t.trim_end_matches('b'), 1),
    };
    let n: i64 = num
        .parse()
        .with_context(|| format!("{flag} {s:?}: not a size (e.g. 512m, 1g, 1048576)"))?;
    n.checked_mul(mult)
        .with_context(|| format!("{flag} {s:?}: too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("512m", "--memory").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1G", "--memory").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("4096", "--memory").unwrap(), 4096);
        assert_eq!(parse_bytes("-1", "--memory").unwrap(), -1);
        assert!(parse_bytes("lots", "--memory").is_err());
    }

    #[test]
    fn users() {
        assert_eq!(parse_user("1000:100").unwrap(), (1000, Some(100)));
        assert_eq!(parse_user("7").unwrap(), (7, None));
        assert!(parse_user("bob").is_err());
    }

    #[test]
    fn runc_argument_layout() {
        let cli = RuntimeCli::try_parse_from([
            "berth-runtime",
            "--root",
            "/r",
            "--log",
            "/l",
            "--log-format",
            "json",
            "create",
            "--bundle",
            "/b",
            "--pid-file",
            "/p",
            "ctr",
            "--no-new-keyring",
        ])
        .unwrap();
        let Verb::Create(a) = cli.cmd else { panic!() };
        assert_eq!(a.id, "ctr");
        assert_eq!(a.bundle, PathBuf::from("/b"));
        assert!(a.no_new_keyring);
        let cli = RuntimeCli::try_parse_from([
            "berth-runtime",
            "exec",
            "-d",
            "--pid-file",
            "/p",
            "--process",
            "/x.json",
            "ctr",
        ])
        .unwrap();
        assert!(matches!(cli.cmd, Verb::Exec(ref e) if e.detach && e.id == "ctr"));
        let cli =
            RuntimeCli::try_parse_from(["berth-runtime", "exec", "ctr", "sh", "-c", "echo -n hi"])
                .unwrap();
        let Verb::Exec(e) = cli.cmd else { panic!() };
        assert_eq!(e.command, vec!["sh", "-c", "echo -n hi"]);
        let cli =
            RuntimeCli::try_parse_from(["berth-runtime", "kill", "ctr", "KILL", "--all"]).unwrap();
        assert!(matches!(cli.cmd, Verb::Kill { all: true, .. }));
    }
}
