//! `berth-runtime`: berth's OCI runtime as a binary of its own, with runc's command line at
//! top level. The engine and its monitor exec this (as podman's conmon execs runc).

#[path = "../cli/oci.rs"]
mod oci;

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if oci::enters_container(&args) {
        // Never run inside a container's namespaces from a writable host binary.
        if let Err(e) = berth_runtime::sealed::ensure_sealed() {
            eprintln!("berth-runtime: {e}");
            std::process::exit(1);
        }
    }
    std::process::exit(oci::main_runtime(args));
}
