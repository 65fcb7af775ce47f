//! The `berth` command line (docker/podman conventions), as clap types. Parsing only; the
//! handlers in container.rs and image.rs turn these into engine calls.

use std::path::PathBuf;

use clap::{Args, Subcommand};

/// Global options for engine commands.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Persistent state: images, containers, logs.
    #[arg(
        long,
        global = true,
        default_value = "/var/lib/berth",
        env = "BERTH_ROOT"
    )]
    pub root: PathBuf,
    /// Transient state (runtime).
    #[arg(
        long,
        global = true,
        default_value = "/run/berth",
        env = "BERTH_RUNROOT"
    )]
    pub runroot: PathBuf,
}

#[derive(Args, Debug, Clone, Default)]
pub struct RunArgs {
    /// Run in the background and print the container id.
    #[arg(short, long)]
    pub detach: bool,
    /// Keep stdin open.
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a terminal.
    #[arg(short, long)]
    pub tty: bool,
    /// Remove the container when it exits.
    #[arg(long)]
    pub rm: bool,
    #[arg(long)]
    pub name: Option<String>,
    /// Set an environment variable (KEY=VALUE, or KEY to copy it from here).
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    #[arg(long = "env-file")]
    pub env_file: Vec<PathBuf>,
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// user[:group], names or ids.
    #[arg(short, long)]
    pub user: Option<String>,
    /// Bind mount: /host/path:/container/path[:ro].
    #[arg(short, long = "volume")]
    pub volume: Vec<String>,
    /// tmpfs mount: /path[:options].
    #[arg(long)]
    pub tmpfs: Vec<String>,
    #[arg(long = "read-only")]
    pub read_only: bool,
    /// Memory limit (e.g. 256m).
    #[arg(short, long)]
    pub memory: Option<String>,
    /// Memory + swap limit, -1 for unlimited.
    #[arg(long = "memory-swap")]
    pub memory_swap: Option<String>,
    /// CPUs (e.g. 1.5).
    #[arg(long)]
    pub cpus: Option<String>,
    #[arg(long = "cpuset-cpus")]
    pub cpuset_cpus: Option<String>,
    #[arg(long = "pids-limit")]
    pub pids_limit: Option<i64>,
    #[arg(long = "cap-add")]
    pub cap_add: Vec<String>,
    #[arg(long = "cap-drop")]
    pub cap_drop: Vec<String>,
    /// no-new-privileges[=true|false], seccomp=FILE, seccomp=unconfined.
    #[arg(long = "security-opt")]
    pub security_opt: Vec<String>,
    /// auto (default: a private uid range) or host (container root is host root).
    #[arg(long)]
    pub userns: Option<String>,
    #[arg(long)]
    pub hostname: Option<String>,
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Run an init process (tini) as PID 1 that reaps zombies and forwards signals.
    #[arg(long)]
    pub init: bool,
    /// bridge (the default network), none (only loopback), host, a network's name, or
    /// container:NAME (share another container's network namespace).
    #[arg(long = "network", visible_alias = "net", default_value = "")]
    pub network: String,
    /// Publish a port: [hostip:][hostport:]containerport[/tcp|/udp]; ranges as 8000-8001:80-81.
    #[arg(short = 'p', long = "publish")]
    pub publish: Vec<String>,
    /// Publish every port the image exposes on an ephemeral host port.
    #[arg(short = 'P', long = "publish-all")]
    pub publish_all: bool,
    /// The container's IPv4 address on its network.
    #[arg(long)]
    pub ip: Option<String>,
    /// An extra /etc/hosts line: NAME:IP.
    #[arg(long = "add-host")]
    pub add_host: Vec<String>,
    /// A nameserver for the container's /etc/resolv.conf (instead of the host's).
    #[arg(long)]
    pub dns: Vec<String>,
    #[arg(long = "dns-search")]
    pub dns_search: Vec<String>,
    #[arg(long = "dns-option")]
    pub dns_option: Vec<String>,
    /// Allow bind mounts of sensitive host paths (/etc, /proc, ...), with a warning.
    #[arg(long = "allow-sensitive-mount")]
    pub allow_sensitive_mount: bool,
    #[arg(short, long = "label")]
    pub label: Vec<String>,
    /// Image name or id.
    pub image: String,
    /// Command and arguments (replace the image's CMD).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum EngineCmd {
    /// Create and start a container.
    Run(Box<RunArgs>),
    /// Create a container without starting it.
    Create(Box<RunArgs>),
    /// Start created or stopped containers.
    Start {
        /// Attach to its output and wait for it.
        #[arg(short, long)]
        attach: bool,
        containers: Vec<String>,
    },
    /// List containers.
    Ps {
        /// Also stopped ones.
        #[arg(short, long)]
        all: bool,
        /// Only ids.
        #[arg(short, long)]
        quiet: bool,
        /// table, or json (one object per line).
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Print a container's logs.
    Logs {
        #[arg(short, long)]
        follow: bool,
        #[arg(long)]
        tail: Option<String>,
        #[arg(short, long)]
        timestamps: bool,
        container: String,
    },
    /// Run a command in a running container.
    Exec {
        #[arg(short, long)]
        interactive: bool,
        #[arg(short, long)]
        tty: bool,
        #[arg(short, long = "env")]
        env: Vec<String>,
        #[arg(short, long)]
        user: Option<String>,
        #[arg(short, long)]
        workdir: Option<String>,
        #[arg(short, long)]
        detach: bool,
        container: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Stop containers: SIGTERM, then SIGKILL after the timeout.
    Stop {
        #[arg(short = 't', long = "time", default_value_t = 10)]
        time: u64,
        containers: Vec<String>,
    },
    /// Send a signal (default SIGKILL).
    Kill {
        #[arg(short, long, default_value = "KILL")]
        signal: String,
        containers: Vec<String>,
    },
    /// Stop and start containers again.
    Restart {
        #[arg(short = 't', long = "time", default_value_t = 10)]
        time: u64,
        containers: Vec<String>,
    },
    /// Remove containers.
    Rm {
        /// Kill running containers first.
        #[arg(short, long)]
        force: bool,
        containers: Vec<String>,
    },
    /// Show a container or image as JSON.
    Inspect { names: Vec<String> },
    /// CPU, memory and pids from the cgroup.
    Stats {
        #[arg(long = "no-stream")]
        no_stream: bool,
        #[arg(long, default_value = "table")]
        format: String,
        containers: Vec<String>,
    },
    /// Wait for containers to exit and print their exit codes.
    Wait { containers: Vec<String> },
    /// Pull an image from a registry.
    Pull {
        #[arg(short, long)]
        quiet: bool,
        /// Use plain HTTP for this registry host.
        #[arg(long = "insecure")]
        insecure: bool,
        image: String,
    },
    /// List images.
    Images {
        #[arg(short, long)]
        quiet: bool,
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Remove images.
    Rmi {
        #[arg(short, long)]
        force: bool,
        images: Vec<String>,
    },
    /// Give an image another name.
    Tag { source: String, target: String },
    /// Load images from a docker-archive or oci-archive tarball.
    Load {
        #[arg(short, long)]
        input: Option<PathBuf>,
    },
    /// Save images as a docker-archive tarball.
    Save {
        #[arg(short, long)]
        output: Option<PathBuf>,
        images: Vec<String>,
    },
    /// Create an image from a root filesystem tarball.
    Import {
        /// A tarball path, or - for stdin.
        file: String,
        reference: Option<String>,
    },
    /// Store credentials for a registry.
    Login {
        #[arg(short, long)]
        username: Option<String>,
        #[arg(short, long)]
        password: Option<String>,
        #[arg(long = "password-stdin")]
        password_stdin: bool,
        #[arg(long)]
        insecure: bool,
        registry: String,
    },
    /// Forget credentials for a registry.
    Logout { registry: String },
    /// Remove unused images' blobs and layers.
    Prune,
    /// Manage networks.
    #[command(subcommand)]
    Network(NetworkCmd),
    /// List a container's published ports, or the mapping of one container port.
    Port {
        container: String,
        /// PORT[/PROTO]
        port: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum NetworkCmd {
    /// Create a bridge network.
    Create {
        /// e.g. 10.89.5.0/24 (default: the next free /24 of 10.89.0.0/16).
        #[arg(long)]
        subnet: Option<String>,
        /// Default: the subnet's first address.
        #[arg(long)]
        gateway: Option<String>,
        /// No traffic in or out of the network's subnet.
        #[arg(long)]
        internal: bool,
        #[arg(short, long = "label")]
        label: Vec<String>,
        name: String,
    },
    /// List networks.
    #[command(alias = "list")]
    Ls {
        #[arg(short, long)]
        quiet: bool,
        /// table, or json (one object per line).
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Show networks as JSON.
    Inspect { names: Vec<String> },
    /// Remove networks (refused while containers use them).
    #[command(alias = "remove")]
    Rm { names: Vec<String> },
}
