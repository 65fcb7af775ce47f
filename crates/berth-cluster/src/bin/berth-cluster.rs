//! `berth-cluster`: the cluster commands, also reached as `berth controller ...` and
//! `berth cluster ...` (the `berth` binary execs this one, so the everyday CLI doesn't
//! carry the controller's dependencies).
//!
//! ```text
//! berth controller init  --dir DIR [--store URL] [--cidr 10.244.0.0/16] [--block-prefix 24]
//!                        [--vni 1] [--vxlan-port 4789] [--heartbeat-timeout-ms 10000]
//! berth controller serve --dir DIR [--store URL] [--listen 127.0.0.1:7480]
//! berth cluster hosts|containers|status --controller URL [--token-file F] [--format table|json]
//! ```

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use berth_cluster::controller::{api, auth, serve, state};
use berth_cluster::model::Cluster;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "berth", about = "berth cluster: controller and cluster views")]
struct Cli {
    #[command(subcommand)]
    cmd: Top,
}

#[derive(Subcommand, Debug)]
enum Top {
    /// The cluster controller.
    #[command(subcommand)]
    Controller(ControllerCmd),
    /// What the controller knows.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// This host's agent.
    #[command(subcommand)]
    Agent(AgentCmd),
}

#[derive(Subcommand, Debug)]
enum AgentCmd {
    /// Join the cluster and keep this host's overlay in step with it (runs until stopped).
    Join {
        #[arg(long)]
        controller: String,
        /// The join token.
        #[arg(long, conflicts_with = "token_file")]
        token: Option<String>,
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// This host's address on the underlay network.
        #[arg(long = "underlay-ip")]
        underlay_ip: std::net::Ipv4Addr,
        /// Default: the hostname.
        #[arg(long)]
        name: Option<String>,
        #[arg(long, default_value = berth_cluster::overlay::config::DEFAULT_DEVICE)]
        device: String,
        #[arg(long, default_value = "berth_overlay")]
        nft_table: String,
        #[arg(long, default_value_t = 1000)]
        heartbeat_ms: u64,
        #[arg(long, default_value_t = 10_000)]
        resync_ms: u64,
        /// Where `berth run --network cluster` learns this host's block.
        #[arg(long, default_value = "/run/berth/cluster/host.json")]
        host_file: PathBuf,
        /// The engine whose containers on the cluster network are reported.
        #[arg(long, default_value = "/var/lib/berth")]
        engine_root: PathBuf,
        #[arg(long, default_value = "/run/berth")]
        engine_runroot: PathBuf,
        #[arg(long, default_value_t = 200)]
        report_ms: u64,
        /// TX checksum offload on the VXLAN device: auto (off only on kernels before 5.7,
        /// whose VXLAN + NAT checksums break, as Calico decides), on, or off (for NICs with
        /// their own VXLAN checksum bug; costs most of the throughput). A bare
        /// `--checksum-offload` means on.
        #[arg(long, default_value = "auto", num_args = 0..=1, default_missing_value = "on")]
        checksum_offload: berth_cluster::overlay::ChecksumOffload,
    },
}

#[derive(Subcommand, Debug)]
enum ControllerCmd {
    /// Create the cluster: its address space, a join token and an admin token.
    Init {
        /// The controller's directory (store file, tokens).
        #[arg(long)]
        dir: PathBuf,
        /// file:///path or etcd://host:port,... (default: DIR/state.redb).
        #[arg(long)]
        store: Option<String>,
        #[arg(long, default_value = "10.244.0.0/16")]
        cidr: String,
        #[arg(long, default_value_t = 24)]
        block_prefix: u8,
        #[arg(long, default_value_t = 1)]
        vni: u32,
        #[arg(long, default_value_t = 4789)]
        vxlan_port: u16,
        #[arg(long, default_value_t = 10_000)]
        heartbeat_timeout_ms: u64,
    },
    /// Serve the API.
    Serve {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        store: Option<String>,
        #[arg(long, default_value = "127.0.0.1:7480")]
        listen: String,
    },
}

#[derive(Subcommand, Debug)]
enum ClusterCmd {
    /// Hosts: underlay address, blocks, state.
    Hosts(View),
    /// Containers with their cluster addresses.
    Containers(View),
    /// Each host's applied revision against the controller's.
    Status(View),
}

#[derive(clap::Args, Debug)]
struct View {
    /// e.g. http://127.0.0.1:7480
    #[arg(long, env = "BERTH_CONTROLLER")]
    controller: String,
    /// A file holding the admin token or an agent's credential (default: $BERTH_CLUSTER_TOKEN).
    #[arg(long)]
    token_file: Option<PathBuf>,
    #[arg(long, default_value = "table")]
    format: String,
}

fn main() {
    let mut args: Vec<String> = std::env::args().collect();
    // Reached through `berth controller ...`: the same arguments.
    if args.get(1).map(String::as_str) == Some("--") {
        args.remove(1);
    }
    let cli = Cli::parse_from(args);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth: starting the async runtime: {e}");
            std::process::exit(125);
        }
    };
    if let Err(e) = rt.block_on(run(cli.cmd)) {
        eprintln!("berth: {e:#}");
        std::process::exit(125);
    }
}

fn store_url(dir: &Path, store: Option<String>) -> String {
    store.unwrap_or_else(|| format!("file://{}", dir.join("state.redb").display()))
}

/// Writes a secret readable by root only.
fn write_secret(path: &Path, secret: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(secret.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

async fn run(cmd: Top) -> Result<()> {
    match cmd {
        Top::Controller(ControllerCmd::Init {
            dir,
            store,
            cidr,
            block_prefix,
            vni,
            vxlan_port,
            heartbeat_timeout_ms,
        }) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let cluster = Cluster {
                cidr: cidr.parse().with_context(|| {
                    format!("invalid --cidr {cidr:?}: expected e.g. 10.244.0.0/16")
                })?,
                block_prefix,
                vni,
                vxlan_port,
                heartbeat_timeout_ms,
            };
            let url = store_url(&dir, store);
            let s = berth_cluster::store::open(&url)
                .await
                .with_context(|| format!("opening the store {url}"))?;
            let in_force = state::init(s.as_ref(), &cluster).await?;
            let join = auth::random_token()?;
            let admin = auth::random_token()?;
            if api::init_secrets(s.as_ref(), &join, &admin)
                .await
                .map_err(|_| anyhow::anyhow!("writing the cluster's tokens to the store"))?
            {
                write_secret(&dir.join("join.token"), &join)?;
                write_secret(&dir.join("admin.token"), &admin)?;
                println!(
                    "cluster {} (blocks of /{}) created",
                    in_force.cidr, in_force.block_prefix
                );
            } else {
                println!(
                    "cluster {} already initialized; tokens unchanged",
                    in_force.cidr
                );
            }
            println!("join token: {}", dir.join("join.token").display());
            println!("admin token: {}", dir.join("admin.token").display());
        }
        Top::Controller(ControllerCmd::Serve { dir, store, listen }) => {
            let url = store_url(&dir, store);
            let s = berth_cluster::store::open(&url)
                .await
                .with_context(|| format!("opening the store {url}"))?;
            state::get_cluster(s.as_ref()).await?;
            let l = tokio::net::TcpListener::bind(&listen)
                .await
                .with_context(|| format!("listening on {listen}"))?;
            eprintln!("berth controller: serving on http://{}", l.local_addr()?);
            serve::serve(l, s).await?;
        }
        Top::Cluster(c) => cluster(c).await?,
        Top::Agent(AgentCmd::Join {
            controller,
            token,
            token_file,
            underlay_ip,
            name,
            device,
            nft_table,
            heartbeat_ms,
            resync_ms,
            checksum_offload,
            host_file,
            engine_root,
            engine_runroot,
            report_ms,
        }) => {
            let join_token = match (token, token_file) {
                (Some(t), _) => t,
                (None, Some(f)) => std::fs::read_to_string(&f)
                    .with_context(|| format!("reading {}", f.display()))?
                    .trim()
                    .to_string(),
                (None, None) => bail!("agent join needs --token or --token-file"),
            };
            let name = match name {
                Some(n) => n,
                None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .context("reading the hostname (or give --name)")?
                    .trim()
                    .to_string(),
            };
            let (tx_checksum, why) =
                checksum_offload.resolve(&berth_cluster::overlay::checksum::running_release());
            eprintln!(
                "berth agent: tx checksum offload {} ({why})",
                if tx_checksum == berth_cluster::overlay::TxChecksum::Offload {
                    "on"
                } else {
                    "off"
                }
            );
            berth_cluster::agent::run(berth_cluster::agent::AgentConfig {
                controller,
                join_token,
                name,
                underlay_ip,
                device,
                nft_table,
                heartbeat: std::time::Duration::from_millis(heartbeat_ms),
                resync: std::time::Duration::from_millis(resync_ms),
                host_file,
                engine_root,
                engine_runroot,
                report_every: std::time::Duration::from_millis(report_ms),
                tx_checksum,
            })
            .await?;
        }
    }
    Ok(())
}

async fn cluster(c: ClusterCmd) -> Result<()> {
    let (path, view) = match &c {
        ClusterCmd::Hosts(v) => ("/v1/hosts", v),
        ClusterCmd::Containers(v) => ("/v1/containers", v),
        ClusterCmd::Status(v) => ("/v1/status", v),
    };
    let token = match &view.token_file {
        Some(f) => std::fs::read_to_string(f)
            .with_context(|| format!("reading {}", f.display()))?
            .trim()
            .to_string(),
        None => std::env::var("BERTH_CLUSTER_TOKEN")
            .context("no credential: give --token-file or set BERTH_CLUSTER_TOKEN")?,
    };
    let url = format!("{}{path}", view.controller.trim_end_matches('/'));
    let resp = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()?
        .get(&url)
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("contacting the controller at {}", view.controller))?;
    let code = resp.status();
    let v: serde_json::Value = resp
        .json()
        .await
        .with_context(|| format!("reading the answer of {url}"))?;
    if !code.is_success() {
        bail!(
            "{url}: {code}: {}",
            v["error"].as_str().unwrap_or("no message")
        );
    }
    let rows = |key: &str| v[key].as_array().cloned().unwrap_or_default();
    match (view.format.as_str(), &c) {
        ("json", ClusterCmd::Hosts(_)) => rows("hosts").iter().for_each(|h| println!("{h}")),
        ("json", ClusterCmd::Containers(_)) => {
            rows("containers").iter().for_each(|h| println!("{h}"))
        }
        ("json", ClusterCmd::Status(_)) => println!("{v}"),
        ("table", ClusterCmd::Hosts(_)) => {
            println!(
                "{:<20}{:<18}{:<20}{:<6}",
                "NAME", "UNDERLAY", "BLOCKS", "STATE"
            );
            for h in rows("hosts") {
                let blocks: Vec<String> = h["blocks"]
                    .as_array()
                    .map(|b| {
                        b.iter()
                            .filter_map(|x| x.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                println!(
                    "{:<20}{:<18}{:<20}{:<6}",
                    h["name"].as_str().unwrap_or(""),
                    h["underlay_ip"].as_str().unwrap_or(""),
                    blocks.join(","),
                    h["state"].as_str().unwrap_or("")
                );
            }
        }
        ("table", ClusterCmd::Containers(_)) => {
            println!("{:<20}{:<18}{:<16}NAME", "ID", "HOST", "ADDRESS");
            for c in rows("containers") {
                let id: String = c["id"].as_str().unwrap_or("").chars().take(18).collect();
                println!(
                    "{:<20}{:<18}{:<16}{}",
                    id,
                    c["host"].as_str().unwrap_or(""),
                    c["addr"].as_str().unwrap_or(""),
                    c["name"].as_str().unwrap_or("")
                );
            }
        }
        ("table", ClusterCmd::Status(_)) => {
            println!("controller revision {}", v["revision"]);
            println!(
                "{:<20}{:<6}{:>10}{:>8}",
                "HOST", "STATE", "APPLIED", "BEHIND"
            );
            for h in rows("hosts") {
                println!(
                    "{:<20}{:<6}{:>10}{:>8}",
                    h["name"].as_str().unwrap_or(""),
                    h["state"].as_str().unwrap_or(""),
                    h["applied_revision"].as_u64().unwrap_or(0),
                    h["behind"].as_u64().unwrap_or(0)
                );
            }
        }
        (f, _) => bail!("invalid --format {f:?}: table or json"),
    }
    Ok(())
}
