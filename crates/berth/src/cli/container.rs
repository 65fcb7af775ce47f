//! Container commands: run, create, start, ps, logs, exec, stop, kill, restart, rm,
//! inspect, stats, wait.

use super::tty::{terminal_size, RawMode};
use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use berth_engine::engine::{Engine, Status};
use berth_engine::monitor;
use berth_engine::paths::Paths;
use berth_engine::request::{RunFlags, RunRequest};

use super::args::{Global, RunArgs};

/// docker's exit code when the engine itself fails.
pub const ENGINE_ERROR: i32 = 125;

pub fn engine(g: &Global) -> Result<Engine> {
    let e = Engine::new(Paths::new(&g.root, &g.runroot))?;
    e.recover_once_per_boot()?;
    Ok(e)
}

fn flags(a: &RunArgs) -> RunFlags {
    RunFlags {
        detach: a.detach,
        interactive: a.interactive,
        tty: a.tty,
        rm: a.rm,
        name: a.name.clone(),
        env: a.env.clone(),
        env_file: a.env_file.clone(),
        workdir: a.workdir.clone(),
        user: a.user.clone(),
        volume: a.volume.clone(),
        tmpfs: a.tmpfs.clone(),
        read_only: a.read_only,
        memory: a.memory.clone(),
        memory_swap: a.memory_swap.clone(),
        cpus: a.cpus.clone(),
        cpuset_cpus: a.cpuset_cpus.clone(),
        pids_limit: a.pids_limit,
        cap_add: a.cap_add.clone(),
        cap_drop: a.cap_drop.clone(),
        security_opt: a.security_opt.clone(),
        userns: a.userns.clone(),
        hostname: a.hostname.clone(),
        entrypoint: a.entrypoint.clone(),
        init: a.init,
        network: a.network.clone(),
        publish: a.publish.clone(),
        publish_all: a.publish_all,
        ip: a.ip.clone(),
        add_host: a.add_host.clone(),
        dns: a.dns.clone(),
        dns_search: a.dns_search.clone(),
        dns_option: a.dns_option.clone(),
        allow_sensitive_mount: a.allow_sensitive_mount,
        label: a.label.clone(),
        image: a.image.clone(),
        command: a.command.clone(),
    }
}

/// Resolves the image, pulling it when it isn't in the store (as docker run does).
fn image_for(g: &Global, e: &Engine, name: &str) -> Result<berth_image::store::Image> {
    let store = e.store()?;
    match store.resolve(name) {
        Ok(i) => Ok(i),
        Err(berth_image::store::StoreError::ImageNotFound(_)) => {
            eprintln!("image {name} not found locally, pulling");
            super::image::pull(g, name, false, false)
        }
        Err(err) => Err(err.into()),
    }
}

fn create_inner(g: &Global, a: &RunArgs) -> Result<(Engine, berth_engine::engine::Created)> {
    let req = RunRequest::from_flags(&flags(a))?;
    let e = engine(g)?;
    berth_runtime::debug::step(|| "cli: request parsed".into());
    let image = image_for(g, &e, &req.image)?;
    berth_runtime::debug::step(|| "cli: image resolved".into());
    let c = e.create(&req, &image)?;
    for w in &c.warnings {
        eprintln!("WARNING: {w}");
    }
    Ok((e, c))
}

pub fn create(g: &Global, a: &RunArgs) -> Result<i32> {
    let (_, c) = create_inner(g, a)?;
    println!("{}", c.id);
    Ok(0)
}

pub fn run(g: &Global, a: &RunArgs) -> Result<i32> {
    if a.detach && a.rm && a.interactive {
        // Allowed by docker; nothing special to do.
    }
    let (e, c) = create_inner(g, a)?;
    if a.detach {
        e.start(&c.id)?;
        println!("{}", c.id);
        return Ok(0);
    }
    // Attach before start, so no output is missed.
    let attach = monitor::Attach::connect(&e.paths.userdata(&c.id))?;
    let raw = if a.tty { RawMode::if_terminal()? } else { None };
    if let (true, Some(_)) = (a.tty, &raw) {
        if let Some((rows, cols)) = terminal_size() {
            let _ = attach.control().resize(rows, cols);
        }
        let control = attach.control();
        super::tty::on_resize(move |rows, cols| {
            let _ = control.resize(rows, cols);
        })?;
    }
    if let Err(err) = e.start(&c.id) {
        drop(raw);
        let _ = e.rm(&c.id, true);
        return Err(err.into());
    }
    let stdin: Option<Box<dyn std::io::Read + Send>> = if a.interactive {
        Some(Box::new(std::io::stdin()))
    } else {
        None
    };
    let code = attach.run(stdin, std::io::stdout(), std::io::stderr());
    berth_runtime::debug::step(|| "cli: container exited".into());
    drop(raw);
    let code = code?;
    if a.rm {
        // The monitor's exit command removes it too; whoever comes second finds it gone.
        let _ = e.rm(&c.id, true);
    }
    Ok(code)
}

pub fn start(g: &Global, attach: bool, containers: &[String]) -> Result<i32> {
    let e = engine(g)?;
    let mut code = 0;
    for c in containers {
        if attach {
            let rec = e.records.find(c)?;
            let a = monitor::Attach::connect(&e.paths.userdata(&rec.id));
            e.start(c)?;
            if let Ok(a) = a {
                code = a.run(None, std::io::stdout(), std::io::stderr())?;
            }
        } else {
            let r = e.start(c)?;
            println!("{}", r.name);
        }
    }
    Ok(code)
}

fn status_text(s: &Status) -> String {
    match s {
        Status::Created => "Created".into(),
        Status::Running => "Up".into(),
        Status::Paused => "Up (Paused)".into(),
        Status::Exited { code, .. } => format!("Exited ({code})"),
    }
}

pub fn ps(g: &Global, all: bool, quiet: bool, format: &str) -> Result<i32> {
    let e = engine(g)?;
    let out = std::io::stdout();
    let mut out = out.lock();
    if !quiet && format == "table" {
        writeln!(
            out,
            "{:<14} {:<28} {:<28} {:<16} NAMES",
            "CONTAINER ID", "IMAGE", "COMMAND", "STATUS"
        )?;
    }
    for r in e.records.all()? {
        let st = e.status(&r);
        if !all && !st.is_alive() {
            continue;
        }
        if quiet {
            writeln!(out, "{}", &r.id[..12])?;
            continue;
        }
        match format {
            "json" => {
                let (code, oom) = match &st {
                    Status::Exited { code, oom, .. } => (Some(*code), *oom),
                    _ => (None, false),
                };
                let v = serde_json::json!({
                    "Id": r.id, "Names": [r.name], "Image": r.image, "ImageID": r.image_id,
                    "Command": r.command, "Created": r.created, "State": st.name(),
                    "Status": status_text(&st), "ExitCode": code, "OOMKilled": oom,
                    "Labels": r.labels,
                });
                writeln!(out, "{v}")?;
            }
            "table" => {
                let mut cmd = r.command.join(" ");
                if cmd.len() > 26 {
                    cmd.truncate(23);
                    cmd.push_str("...");
                }
                writeln!(
                    out,
                    "{:<14} {:<28} {:<28} {:<16} {}",
                    &r.id[..12],
                    r.image,
                    format!("\"{cmd}\""),
                    status_text(&st),
                    r.name
                )?;
            }
            f => bail!("invalid --format {f:?} (want table or json)"),
        }
    }
    Ok(0)
}

pub fn logs(
    g: &Global,
    container: &str,
    follow: bool,
    tail: Option<&str>,
    timestamps: bool,
) -> Result<i32> {
    let e = engine(g)?;
    let r = e.records.find(container)?;
    let tail = match tail {
        None | Some("all") => None,
        Some(n) => Some(
            n.parse::<usize>()
                .with_context(|| format!("invalid --tail {n:?}: want a number or \"all\""))?,
        ),
    };
    let dir = e.paths.userdata(&r.id);
    let mut out = std::io::stdout();
    if follow {
        monitor::follow_logs(&dir, tail, timestamps, &mut out, true)?;
    } else {
        monitor::read_logs(&dir, tail, timestamps, &mut out)?;
    }
    Ok(0)
}

pub fn stop(g: &Global, time: u64, containers: &[String]) -> Result<i32> {
    let e = engine(g)?;
    for c in containers {
        let r = e.stop(c, Duration::from_secs(time))?;
        println!("{}", r.name);
    }
    Ok(0)
}

pub fn kill(g: &Global, signal: &str, containers: &[String]) -> Result<i32> {
    let e = engine(g)?;
    berth_runtime::container::parse_signal(signal)?;
    for c in containers {
        e.kill(c, signal)?;
        println!("{c}");
    }
    Ok(0)
}

pub fn restart(g: &Global, time: u64, containers: &[String]) -> Result<i32> {
    let e = engine(g)?;
    for c in containers {
        e.stop(c, Duration::from_secs(time))?;
        let r = e.start(c)?;
        println!("{}", r.name);
    }
    Ok(0)
}

pub fn rm(g: &Global, force: bool, containers: &[String]) -> Result<i32> {
    let e = engine(g)?;
    let mut failed = false;
    for c in containers {
        match e.rm(c, force) {
            Ok(_) => println!("{c}"),
            Err(err) => {
                eprintln!("berth: {err}");
                failed = true;
            }
        }
    }
    Ok(if failed { 1 } else { 0 })
}

pub fn inspect(g: &Global, names: &[String]) -> Result<i32> {
    let e = engine(g)?;
    let mut out = Vec::new();
    for n in names {
        match e.inspect(n) {
            Ok(v) => out.push(v),
            Err(berth_engine::engine::EngineError::Record(_)) => {
                // Not a container: maybe an image.
                let img = e
                    .store()?
                    .resolve(n)
                    .with_context(|| format!("no such object: {n}"))?;
                out.push(serde_json::json!({
                    "Id": img.id.to_string(),
                    "Digest": img.manifest_digest.to_string(),
                    "RepoTags": img.tags,
                    "Created": img.created,
                    "Size": img.size,
                    "Config": img.config.config(),
                    "RootFS": {"Type": "layers", "Layers": img.layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>()},
                    "Architecture": img.config.architecture().to_string(),
                    "Os": img.config.os().to_string(),
                }));
            }
            Err(err) => return Err(err.into()),
        }
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(0)
}

pub fn stats(g: &Global, containers: &[String], no_stream: bool, format: &str) -> Result<i32> {
    let e = engine(g)?;
    let ids: Vec<String> = if containers.is_empty() {
        e.records
            .all()?
            .into_iter()
            .filter(|r| e.status(r).is_alive())
            .map(|r| r.id)
            .collect()
    } else {
        containers.to_vec()
    };
    let mut prev: std::collections::HashMap<String, (u64, std::time::Instant)> = Default::default();
    // Bounded even when streaming: a CLI user stops it with Ctrl-C, tests use --no-stream.
    for round in 0..if no_stream { 2 } else { 3600 } {
        let mut lines = Vec::new();
        for c in &ids {
            let (r, s) = e.stats(c)?;
            let s = s.unwrap_or_default();
            let now = std::time::Instant::now();
            let cpu_ns = s.cpu_usage_ns.unwrap_or(0);
            let cpu_pct = prev.get(&r.id).map(|(p, t)| {
                let dt = now.duration_since(*t).as_nanos().max(1) as f64;
                (cpu_ns.saturating_sub(*p)) as f64 / dt * 100.0
            });
            prev.insert(r.id.clone(), (cpu_ns, now));
            lines.push((r, s, cpu_pct));
        }
        if round == 0 {
            std::thread::sleep(Duration::from_millis(if no_stream { 200 } else { 1000 }));
            continue;
        }
        let out = std::io::stdout();
        let mut out = out.lock();
        if format == "json" {
            for (r, s, cpu) in &lines {
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({"ID": &r.id[..12], "Name": r.name, "CPUPerc": cpu, "MemUsage": s.memory_usage_bytes, "MemLimit": s.memory_limit_bytes, "PIDs": s.pids_current, "PIDsLimit": s.pids_limit})
                )?;
            }
        } else {
            writeln!(
                out,
                "{:<14} {:<24} {:>8} {:>24} {:>6}",
                "CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "PIDS"
            )?;
            for (r, s, cpu) in &lines {
                let mem = format!(
                    "{} / {}",
                    super::image::human_size(s.memory_usage_bytes.unwrap_or(0)),
                    s.memory_limit_bytes
                        .map(super::image::human_size)
                        .unwrap_or_else(|| "unlimited".into())
                );
                writeln!(
                    out,
                    "{:<14} {:<24} {:>7.2}% {:>24} {:>6}",
                    &r.id[..12],
                    r.name,
                    cpu.unwrap_or(0.0),
                    mem,
                    s.pids_current.unwrap_or(0)
                )?;
            }
        }
        if no_stream {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    Ok(0)
}

pub fn wait(g: &Global, containers: &[String]) -> Result<i32> {
    let e = engine(g)?;
    for c in containers {
        println!("{}", e.wait(c)?);
    }
    Ok(0)
}

/// `berth exec` options.
pub struct ExecArgs<'a> {
    pub container: &'a str,
    pub command: &'a [String],
    pub env: &'a [String],
    pub user: Option<&'a str>,
    pub workdir: Option<&'a str>,
    pub tty: bool,
    pub detach: bool,
}

pub fn exec(g: &Global, x: &ExecArgs<'_>) -> Result<i32> {
    let e = engine(g)?;
    let (container, command, env, user, workdir, tty, detach) = (
        x.container,
        x.command,
        x.env,
        x.user,
        x.workdir,
        x.tty,
        x.detach,
    );
    let r = e.records.find(container)?;
    let st = e.status(&r);
    if st != Status::Running {
        bail!(
            "container {} is {}: exec needs a running container",
            r.name,
            st.name()
        );
    }
    let mut cmd = std::process::Command::new(&e.runtime.binary);
    cmd.arg("--root").arg(&e.runtime.root).arg("exec");
    for kv in env {
        cmd.arg("--env").arg(kv);
    }
    if let Some(u) = user {
        // Names are resolved against the container's own /etc/passwd.
        let rootfs = e.paths.snapshot(&r.id).join("merged");
        let ru = berth_engine::request::resolve_user(&rootfs, u)?;
        cmd.arg("--user").arg(format!("{}:{}", ru.uid, ru.gid));
    }
    if let Some(w) = workdir {
        cmd.arg("--cwd").arg(w);
    }
    if detach {
        cmd.arg("--detach");
    }
    if tty {
        if detach {
            bail!("exec: -t and -d cannot be combined (nobody would hold the terminal)");
        }
        let console = super::tty::ConsoleSocket::new()?;
        cmd.arg("--tty").arg("--console-socket").arg(console.path());
        if let Some((rows, cols)) = super::tty::terminal_size() {
            cmd.arg("--console-size").arg(format!("{rows}x{cols}"));
        }
        cmd.arg(&r.id).args(command);
        return super::tty::exec_with_console(cmd, console, &r.name);
    }
    cmd.arg(&r.id).args(command);
    let status = cmd
        .status()
        .with_context(|| format!("running {}", e.runtime.binary.display()))?;
    Ok(status.code().unwrap_or(ENGINE_ERROR))
}
