//! Command-line front ends: one file per command group.

pub mod oci;

use std::ffi::OsString;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "berth",
    version,
    about = "berth: Linux containers from kernel primitives"
)]
struct Berth {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// The OCI runtime, with runc's command line (`berth oci run ...`).
    #[command(disable_help_flag = false)]
    Oci(oci::RuntimeCli),
}

pub fn main_berth(args: Vec<OsString>) -> i32 {
    let cli = match Berth::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    match cli.cmd {
        Cmd::Oci(rt) => oci::dispatch(rt),
    }
}
