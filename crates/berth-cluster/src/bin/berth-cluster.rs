//! `berth-cluster`: the cluster commands, also reached as `berth controller ...` and
//! `berth cluster ...` (the `berth` binary execs this one, so the everyday CLI doesn't
//! carry the controller's dependencies).
//!
//! ```text
//! berth controller init  --dir DIR [--store URL] [--cidr 10.244.0.0/16] [--block-prefix 24]
//!                        [--vni 1] [--vxlan-port 4789] [--heartbeat-timeout-ms 10000]
//! berth controller serve --dir DIR [--store URL] [--listen 127.0.0.1:7480] [--san NAME]...
//!                        [--name N] [--leader-lease-ms 5000]
//! berth agent join --controller https://IP:PORT --ca-cert ca.crt --token-file F --underlay-ip IP
//! berth cluster hosts|containers|status --controller URL --dir DIR [--format table|json]
//! berth cluster hosts rm NAME [--force] --controller URL --dir DIR
//! ```
//!
//! `init` writes into DIR: `join.token` (for agents), `ca.seal` (the key that opens the CA's
//! key in the store; every controller's DIR needs it), `ca.crt` (the cluster CA, for every
//! host), and `admin.crt` + `admin.key` (the CLI's client certificate); secrets 0600.
//!
//! ```text
//! ```

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use berth_cluster::controller::seal::Seal;
use berth_cluster::controller::{api, auth, leader, pki, serve, state};
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
        /// e.g. https://10.0.0.1:7480
        #[arg(long)]
        controller: String,
        /// The cluster CA certificate (`ca.crt` from `controller init`).
        #[arg(long)]
        ca_cert: PathBuf,
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
        /// How often to renew the client certificate (a new key each time); certificates
        /// are valid for a year. Default 30 days.
        #[arg(long, default_value_t = 30 * 86_400, value_parser = clap::value_parser!(u64).range(1..))]
        cert_renew_secs: u64,
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
    /// Create the cluster: its address space, a CA, a join token and an admin certificate.
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
        /// More names or addresses for the serving certificate (besides the listen
        /// address, 127.0.0.1, localhost and the hostname).
        #[arg(long)]
        san: Vec<String>,
        /// How `cluster status` names this controller when it leads (default: the hostname).
        #[arg(long)]
        name: Option<String>,
        /// Several controllers on etcd: a leader that stops is replaced within about this
        /// (etcd rounds it up to whole seconds).
        #[arg(long, default_value_t = leader::DEFAULT_LEASE.as_millis() as u64)]
        leader_lease_ms: u64,
    },
}

#[derive(Subcommand, Debug)]
enum ClusterCmd {
    /// Hosts: underlay address, blocks, state; `hosts rm NAME` removes one.
    Hosts(HostsArgs),
    /// Containers with their cluster addresses.
    Containers(View),
    /// Each host's applied revision against the controller's.
    Status(View),
}

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
struct HostsArgs {
    #[command(subcommand)]
    cmd: Option<HostsCmd>,
    #[command(flatten)]
    view: View,
}

#[derive(Subcommand, Debug)]
enum HostsCmd {
    /// Remove a host from the cluster: its record, its blocks (free for other hosts) and
    /// its containers' records; every other host withdraws its routes.
    Rm {
        name: String,
        /// Also while the host is up: its agent is shut out and tears its overlay down.
        #[arg(long, short)]
        force: bool,
        #[command(flatten)]
        view: View,
    },
}

#[derive(clap::Args, Debug)]
struct View {
    /// e.g. https://127.0.0.1:7480; required.
    // Checked when used, not by clap: `hosts` would otherwise demand it also before a
    // `hosts rm`, which takes its own.
    #[arg(long, env = "BERTH_CONTROLLER")]
    controller: Option<String>,
    /// The controller's directory (from `controller init`): its ca.crt, admin.crt and
    /// admin.key are used unless --ca-cert/--cert/--key say otherwise.
    #[arg(long, env = "BERTH_CLUSTER_DIR")]
    dir: Option<PathBuf>,
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    /// A client certificate issued by the controller, and its key.
    #[arg(long)]
    cert: Option<PathBuf>,
    #[arg(long)]
    key: Option<PathBuf>,
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

/// The CA key's seal in the controller's directory (see `controller::seal`).
const SEAL_FILE: &str = "ca.seal";

fn read_seal(dir: &Path) -> Result<Seal> {
    let path = dir.join(SEAL_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading the CA key's seal {}: copy it from the directory of the controller \
             that initialized the cluster",
            path.display()
        )
    })?;
    Seal::from_hex(&text).with_context(|| format!("reading {}", path.display()))
}

fn store_url(dir: &Path, store: Option<String>) -> String {
    store.unwrap_or_else(|| format!("file://{}", dir.join("state.redb").display()))
}

/// The default name of a controller or an agent.
fn hostname() -> Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("reading the hostname (or give --name)")?
        .trim()
        .to_string())
}

/// Writes a secret readable by root only.
fn write_secret(path: &Path, secret: &str) -> Result<()> {
    write_file(path, secret, 0o600)
}

/// Writes `text` to `path` with `mode`, atomically (a temporary file renamed over it),
/// so a reader never sees half a key and an existing file's mode can't linger.
fn write_file(path: &Path, text: &str, mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// The controller's serving certificate, issued from the cluster CA at every start for
/// the listen address, loopback, the hostname and `--san`.
async fn serving_tls(
    store: &dyn berth_cluster::store::Store,
    seal: Option<&Seal>,
    listen: std::net::IpAddr,
    san: Vec<String>,
) -> Result<std::sync::Arc<rustls::ServerConfig>> {
    let ca = api::ca(store, seal)
        .await
        .map_err(|e| anyhow::anyhow!("reading the cluster CA: {}", e.message()))?;
    let mut names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    if !listen.is_unspecified() {
        names.push(listen.to_string());
    }
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        names.push(h.trim().to_string());
    }
    names.extend(san);
    let issued = pki::issue(&ca, "berth controller", pki::Role::Server(&names))?;
    Ok(berth_cluster::tls::server_config(
        &ca.cert_pem,
        &issued.cert_pem,
        &issued.key_pem,
    )?)
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
            // The CA key's seal: made here for a new cluster; for a cluster that exists
            // (another controller's directory on the same etcd), the one copied in.
            let seal_path = dir.join(SEAL_FILE);
            let new_seal = if seal_path.exists() {
                None
            } else {
                Some(Seal::generate()?)
            };
            let seal = match &new_seal {
                Some(s) => s,
                None => &read_seal(&dir)?,
            };
            let fresh = api::init_secrets(s.as_ref(), &join, seal)
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "writing the cluster's secrets to the store: {}",
                        e.message()
                    )
                })?;
            if fresh {
                if let Some(seal) = &new_seal {
                    write_secret(&seal_path, &seal.to_hex())?;
                }
                write_secret(&dir.join("join.token"), &join)?;
                println!(
                    "cluster {} (blocks of /{}) created",
                    in_force.cidr, in_force.block_prefix
                );
            } else {
                println!(
                    "cluster {} already initialized; join token unchanged",
                    in_force.cidr
                );
            }
            let ca_pem = api::ca_cert(s.as_ref())
                .await
                .map_err(|e| anyhow::anyhow!("reading the cluster CA: {}", e.message()))?;
            write_file(&dir.join("ca.crt"), &ca_pem, 0o644)?;
            // Another controller's directory on the same etcd gets its own admin
            // certificate; an existing one is kept.
            if fresh || !dir.join("admin.crt").exists() {
                // (A cluster from before keys were sealed has its CA key in the clear
                // and needs no seal.)
                let sealed = api::ca(s.as_ref(), None).await.is_err();
                if !fresh && new_seal.is_some() && sealed {
                    bail!(
                        "the cluster already exists: copy {SEAL_FILE} from the directory of the \
                         controller that initialized it into {} first",
                        dir.display()
                    );
                }
                let admin = api::issue_admin(s.as_ref(), Some(seal))
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!("issuing the admin certificate: {}", e.message())
                    })?;
                write_secret(&dir.join("admin.key"), &admin.key_pem)?;
                write_file(&dir.join("admin.crt"), &admin.cert_pem, 0o644)?;
            }
            for f in ["join.token", SEAL_FILE, "ca.crt", "admin.crt", "admin.key"] {
                println!("{f}: {}", dir.join(f).display());
            }
        }
        Top::Controller(ControllerCmd::Serve {
            dir,
            store,
            listen,
            san,
            name,
            leader_lease_ms,
        }) => {
            let url = store_url(&dir, store);
            let s = berth_cluster::store::open(&url)
                .await
                .with_context(|| format!("opening the store {url}"))?;
            state::get_cluster(s.as_ref()).await?;
            let seal = match read_seal(&dir) {
                Ok(seal) => Some(seal),
                // A cluster initialized before CA keys were sealed keeps working.
                Err(e) => match api::ca(s.as_ref(), None).await {
                    Ok(_) => {
                        eprintln!(
                            "berth controller: warning: the cluster CA's key is stored in the \
                             clear (initialized by an older berth); anyone who can read the \
                             store can issue certificates"
                        );
                        None
                    }
                    Err(_) => return Err(e),
                },
            };
            let l = tokio::net::TcpListener::bind(&listen)
                .await
                .with_context(|| format!("listening on {listen}"))?;
            let local = l.local_addr()?;
            let tls = serving_tls(s.as_ref(), seal.as_ref(), local.ip(), san).await?;
            eprintln!("berth controller: serving on https://{local}");
            let name = match name {
                Some(n) => n,
                None => hostname()?,
            };
            let mut config = leader::LeaderConfig::new(name);
            config.lease = std::time::Duration::from_millis(leader_lease_ms);
            serve::serve(l, s, tls, config, seal.map(std::sync::Arc::new)).await?;
        }
        Top::Cluster(c) => cluster(c).await?,
        Top::Agent(AgentCmd::Join {
            controller,
            token,
            token_file,
            underlay_ip,
            name,
            ca_cert,
            device,
            nft_table,
            heartbeat_ms,
            resync_ms,
            checksum_offload,
            host_file,
            engine_root,
            engine_runroot,
            report_ms,
            cert_renew_secs,
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
                None => hostname()?,
            };
            let ca_pem = std::fs::read_to_string(&ca_cert)
                .with_context(|| format!("reading the cluster CA {}", ca_cert.display()))?;
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
                ca_pem,
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
                cert_renew_every: std::time::Duration::from_secs(cert_renew_secs),
                tx_checksum,
            })
            .await?;
        }
    }
    Ok(())
}

async fn cluster(c: ClusterCmd) -> Result<()> {
    let (method, path, view) = match &c {
        ClusterCmd::Hosts(HostsArgs {
            cmd: Some(HostsCmd::Rm { name, force, view }),
            ..
        }) => (
            reqwest::Method::DELETE,
            format!("/v1/hosts/{name}?force={force}"),
            view,
        ),
        ClusterCmd::Hosts(h) => (reqwest::Method::GET, "/v1/hosts".into(), &h.view),
        ClusterCmd::Containers(v) => (reqwest::Method::GET, "/v1/containers".into(), v),
        ClusterCmd::Status(v) => (reqwest::Method::GET, "/v1/status".into(), v),
    };
    let controller = view
        .controller
        .as_deref()
        .context("no controller: give --controller URL or set BERTH_CONTROLLER")?;
    let file = |explicit: &Option<PathBuf>, name: &str| -> Result<String> {
        let path = match (explicit, &view.dir) {
            (Some(p), _) => p.clone(),
            (None, Some(d)) => d.join(name),
            (None, None) => bail!(
                "no {name}: give --dir (the controller's directory) or --ca-cert, --cert and --key"
            ),
        };
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    };
    let (ca, cert, key) = (
        file(&view.ca_cert, "ca.crt")?,
        file(&view.cert, "admin.crt")?,
        file(&view.key, "admin.key")?,
    );
    let http = berth_cluster::tls::client(
        &ca,
        Some(berth_cluster::tls::ClientIdentity {
            cert_pem: &cert,
            key_pem: &key,
        }),
        reqwest::Client::builder().timeout(std::time::Duration::from_secs(10)),
    )?;
    let url = format!("{}{path}", controller.trim_end_matches('/'));
    let resp = http
        .request(method, &url)
        .send()
        .await
        .with_context(|| format!("contacting the controller at {controller}"))?;
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
        (
            f,
            ClusterCmd::Hosts(HostsArgs {
                cmd: Some(HostsCmd::Rm { name, .. }),
                ..
            }),
        ) => match f {
            "json" => println!("{v}"),
            "table" => println!(
                "removed host {name}: blocks {}; {} container records",
                v["host"]["blocks"]
                    .as_array()
                    .map(|b| {
                        b.iter()
                            .filter_map(|x| x.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default(),
                v["containers"].as_array().map_or(0, |c| c.len())
            ),
            f => bail!("invalid --format {f:?}: table or json"),
        },
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
            println!(
                "controller revision {}, map changed last at {}",
                v["revision"], v["map_revision"]
            );
            match v["leader"].as_object() {
                Some(l) => println!(
                    "leader {} ({}) since revision {}",
                    l["name"].as_str().unwrap_or(""),
                    l["address"].as_str().unwrap_or(""),
                    l["since_revision"]
                ),
                None => println!("leader none"),
            }
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
