//! Command-line front ends: one file per command group.

pub mod args;
pub mod container;
pub mod image;
pub mod network;
pub mod oci;
pub mod tty;

use std::ffi::OsString;

use clap::{Parser, Subcommand};

use args::{EngineCmd, Global};

#[derive(Parser, Debug)]
#[command(
    name = "berth",
    version,
    about = "berth: Linux containers from kernel primitives"
)]
struct Berth {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// The OCI runtime, with runc's command line (`berth oci run ...`).
    Oci(Box<oci::RuntimeCli>),
    #[command(flatten)]
    Engine(EngineCmd),
}

pub fn main_berth(args: Vec<OsString>) -> i32 {
    let cli = match Berth::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                container::ENGINE_ERROR
            } else {
                0
            };
        }
    };
    let g = cli.global;
    if std::env::var_os("BERTH_DEBUG").is_some() {
        berth_runtime::debug::enable();
    }
    let r = match cli.cmd {
        Cmd::Oci(rt) => return oci::dispatch(*rt),
        Cmd::Engine(cmd) => engine(&g, cmd),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            let msg = format!("{e:#}");
            eprintln!("berth: {msg}");
            exit_code_for(&msg)
        }
    }
}

/// docker's convention: 125 when the engine fails, 126 when the command can't be run,
/// 127 when it isn't found.
fn exit_code_for(msg: &str) -> i32 {
    if msg.contains("executable file not found") {
        127
    } else if msg.contains("exec:") && msg.contains("permission denied") {
        126
    } else {
        container::ENGINE_ERROR
    }
}

fn engine(g: &Global, cmd: EngineCmd) -> anyhow::Result<i32> {
    use EngineCmd::*;
    match cmd {
        Run(a) => container::run(g, &a),
        Create(a) => container::create(g, &a),
        Start { attach, containers } => container::start(g, attach, &containers),
        Ps { all, quiet, format } => container::ps(g, all, quiet, &format),
        Logs {
            follow,
            tail,
            timestamps,
            container: c,
        } => container::logs(g, &c, follow, tail.as_deref(), timestamps),
        Exec {
            tty,
            env,
            user,
            workdir,
            detach,
            container: c,
            command,
            ..
        } => container::exec(
            g,
            &container::ExecArgs {
                container: &c,
                command: &command,
                env: &env,
                user: user.as_deref(),
                workdir: workdir.as_deref(),
                tty,
                detach,
            },
        ),
        Stop { time, containers } => container::stop(g, time, &containers),
        Kill { signal, containers } => container::kill(g, &signal, &containers),
        Restart { time, containers } => container::restart(g, time, &containers),
        Rm { force, containers } => container::rm(g, force, &containers),
        Inspect { names } => container::inspect(g, &names),
        Stats {
            no_stream,
            format,
            containers,
        } => container::stats(g, &containers, no_stream, &format),
        Wait { containers } => container::wait(g, &containers),
        Pull {
            quiet,
            insecure,
            image: i,
        } => image::pull(g, &i, quiet, insecure).map(|_| 0),
        Images { quiet, format } => image::images(g, quiet, &format).map(|_| 0),
        Rmi { force, images } => {
            let e = container::engine(g)?;
            let records = e.records.all()?;
            let in_use = |id: &berth_image::digest::Digest| {
                records
                    .iter()
                    .find(|r| r.image_id == id.to_string())
                    .map(|r| r.name.clone())
            };
            image::rmi(g, &images, force, &in_use).map(|_| 0)
        }
        Network(cmd) => network::network(g, cmd),
        Port { container: c, port } => network::port(g, &c, port.as_deref()),
        Tag { source, target } => image::tag(g, &source, &target).map(|_| 0),
        Load { input } => image::load(g, input.as_deref()).map(|_| 0),
        Save { output, images } => image::save(g, &images, output.as_deref()).map(|_| 0),
        Import { file, reference } => image::import(g, &file, reference.as_deref()).map(|_| 0),
        Login {
            username,
            password,
            password_stdin,
            insecure,
            registry,
        } => image::login(
            g,
            &registry,
            username.as_deref(),
            password.as_deref(),
            password_stdin,
            insecure,
        )
        .map(|_| 0),
        Logout { registry } => image::logout(g, &registry).map(|_| 0),
        Prune => {
            let e = container::engine(g)?;
            image::prune(g, &e.layers_in_use()?).map(|_| 0)
        }
    }
}
