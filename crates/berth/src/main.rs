//! The `berth` binary. Invoked as `berth-runtime` (symlink or copy), it speaks runc's exact
//! command line at top level, so podman and containerd can use it as their OCI runtime;
//! as `berth`, the same commands live under `berth oci`.

mod cli;

use std::ffi::OsString;
use std::path::Path;

fn main() {
    let args: Vec<OsString> = std::env::args_os().collect();
    let argv0 = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("berth")
        .to_string();
    let runtime_mode = argv0.starts_with("berth-runtime") || argv0 == "runc";
    // Only the runtime's own verbs enter containers; engine commands exec berth-runtime,
    // which protects itself (and must keep a real /proc/self/exe to find its siblings).
    let oci_args = if runtime_mode {
        Some(&args[..])
    } else {
        args.iter().position(|a| a == "oci").map(|i| &args[i..])
    };
    if oci_args.is_some_and(cli::oci::enters_container) {
        // Never run inside a container's namespaces from a writable host binary.
        if let Err(e) = berth_runtime::sealed::ensure_sealed() {
            eprintln!("berth: {e}");
            std::process::exit(1);
        }
    }
    // The cluster commands live in their own binary, so this one stays small and quick
    // to start (it runs for every container).
    if !runtime_mode
        && args
            .get(1)
            .is_some_and(|a| a == "controller" || a == "cluster" || a == "agent")
    {
        use std::os::unix::process::CommandExt;
        let bin = berth_engine::runtime::sibling("berth-cluster");
        let err = std::process::Command::new(&bin).args(&args[1..]).exec();
        eprintln!("berth: running {}: {err}", bin.display());
        std::process::exit(125);
    }
    let code = if runtime_mode {
        cli::oci::main_runtime(args)
    } else {
        cli::main_berth(args)
    };
    std::process::exit(code);
}
