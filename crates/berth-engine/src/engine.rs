//! Containers as users see them: create, start, run, stop, kill, rm, ps, inspect, logs,
//! wait, stats, exec. The engine writes an OCI spec and a bundle and hands them to
//! berth-runtime through a monitor (conmon's role); it never creates namespaces itself.
//!
//! `create` is a list of steps, each undone in reverse if a later one fails; `rm` undoes
//! them all and is idempotent, so a crash at any point leaves state that the next `rm`
//! (or startup recovery) cleans up.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_image::digest::Digest;
use berth_image::snapshot::{self, IdMapping, SnapshotSpec};
use berth_image::store::{Image, Store, StoreError};
use serde_json::json;
use thiserror::Error;

use crate::monitor::{self, MonitorSpec};
use crate::network::{self, ContainerNet, NetError, NetSettings};
use crate::paths::Paths;
use crate::record::{self, ContainerRecord, RecordError, Records};
use crate::request::{self, RunRequest, UsernsMode};
use crate::runtime::{Live, Runtime, RuntimeError};
use crate::spec_builder::{self, BuildContext};
use crate::userns::{self, Allocator, IdRange};

#[derive(Debug, Error)]
pub enum EngineError {
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Request(#[from] request::RequestError),
    #[error(transparent)]
    Spec(#[from] spec_builder::SpecBuildError),
    #[error(transparent)]
    Userns(#[from] userns::UsernsError),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error(transparent)]
    Snapshot(#[from] snapshot::SnapshotError),
    #[error(transparent)]
    Monitor(#[from] monitor::MonitorError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("container {name} is {status}: {what}")]
    State {
        name: String,
        status: String,
        what: &'static str,
    },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> EngineError {
    let path = path.to_path_buf();
    move |source| EngineError::Io { op, path, source }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// A container's status as `ps` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Paused,
    Exited {
        code: i32,
        at: Option<String>,
        oom: bool,
    },
}

impl Status {
    pub fn name(&self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Exited { .. } => "exited",
        }
    }

    pub fn is_alive(&self) -> bool {
        matches!(self, Status::Running | Status::Paused)
    }
}

pub struct Engine {
    pub paths: Paths,
    pub records: Records,
    pub runtime: Runtime,
    pub monitor_binary: PathBuf,
    /// tini, for `--init` (docker ships it as docker-init).
    pub init_binary: Option<PathBuf>,
    pub net: NetSettings,
}

/// What `create` reports.
pub struct Created {
    pub id: String,
    pub name: String,
    pub warnings: Vec<String>,
}

impl Engine {
    pub fn new(paths: Paths) -> Result<Engine> {
        let records = Records::new(&paths)?;
        let runtime = Runtime::locate(&paths.runtime_root());
        let init = ["/usr/bin/tini-static", "/usr/bin/docker-init"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists());
        Ok(Engine {
            records,
            runtime,
            monitor_binary: monitor::locate_binary(),
            init_binary: init,
            net: NetSettings::from_env()?,
            paths,
        })
    }

    pub fn store(&self) -> Result<Store> {
        Ok(Store::open(&self.paths.images())?)
    }

    pub fn networks(&self) -> Result<berth_net::Networks> {
        Ok(network::open(&self.paths.networks(), &self.net)?)
    }

    /// The request's network mode with `Default` replaced by the configured default.
    pub fn network_mode(&self, req: &RunRequest) -> Result<request::NetworkMode> {
        Ok(match &req.network {
            request::NetworkMode::Default => request::parse_network(&self.net.default_network)?,
            m => m.clone(),
        })
    }

    fn allocator(&self) -> Result<Allocator> {
        Ok(Allocator::new(
            &self.paths.userns_db(),
            userns::Pool::system()?,
            65536,
        )?)
    }

    /// Live status of a container.
    pub fn status(&self, r: &ContainerRecord) -> Status {
        match self.runtime.live(&r.id) {
            Live::Created => Status::Created,
            Live::Running => Status::Running,
            Live::Paused => Status::Paused,
            Live::Stopped => match monitor::read_exit(&self.paths.userdata(&r.id)) {
                Ok(Some(e)) => Status::Exited {
                    code: e.exit_code,
                    at: Some(e.exited_at),
                    oom: e.oom_killed,
                },
                // The init is gone but its monitor is still recording the exit: not
                // exited yet as far as anyone can tell (no guessed exit code).
                _ if r
                    .monitor_pid
                    .is_some_and(|p| pid_alive(p) && is_monitor(p, &r.id)) =>
                {
                    Status::Running
                }
                // Never started, or the host went down under it.
                _ if r.started_at.is_none() => Status::Created,
                _ => Status::Exited {
                    code: 255,
                    at: None,
                    oom: false,
                },
            },
        }
    }

    /// `berth create`: image → snapshot → spec → bundle → monitor + runtime create.
    pub fn create(&self, req: &RunRequest, image: &Image) -> Result<Created> {
        // The runtime places the init in its cgroup ~15 ms from now; starting the kernel's
        // grace period here means it is over by then (see berth_runtime::cgroups::prewarm).
        let _prewarm = berth_runtime::cgroups::prewarm::Prewarm::start();
        // Refuse sensitive binds and impossible network flags before anything is
        // allocated or mounted.
        crate::policy::check_binds(&req.binds, req.allow_sensitive_mount)?;
        let mut resolved = req.clone();
        resolved.network = self.network_mode(req)?;
        let req = &resolved.check_network()?;
        let id = record::new_id()?;
        // Reserve the name: the record exists from here on, so rm can always clean up.
        let name = {
            let _lock = self.records.lock()?;
            let name = match &req.name {
                Some(n) => {
                    self.records.check_name(n)?;
                    n.clone()
                }
                None => {
                    let taken: HashSet<String> =
                        self.records.all()?.into_iter().map(|r| r.name).collect();
                    record::generate_name(&id, &|n| taken.contains(n))
                }
            };
            let rec = ContainerRecord {
                id: id.clone(),
                name: name.clone(),
                image: req.image.clone(),
                image_id: image.id.to_string(),
                layers: image.layers.iter().map(|l| l.diff_id.to_string()).collect(),
                created: berth_runtime::state::now_rfc3339(),
                auto_remove: req.rm,
                terminal: req.tty,
                stdin: req.interactive,
                labels: req.labels.clone(),
                ..Default::default()
            };
            self.records.save(&rec)?;
            name
        };
        match self.create_steps(&id, &name, req, image) {
            Ok(warnings) => Ok(Created { id, name, warnings }),
            Err(e) => {
                let _ = self.remove_everything(&id);
                Err(e)
            }
        }
    }

    fn create_steps(
        &self,
        id: &str,
        name: &str,
        req: &RunRequest,
        image: &Image,
    ) -> Result<Vec<String>> {
        let store = self.store()?;
        let _lease = store.lease()?;
        berth_runtime::debug::step(|| "engine: store leased".into());
        let mut layers = Vec::new();
        for l in &image.layers {
            layers.push(store.ensure_layer(&l.blob, &l.diff_id)?);
        }
        berth_runtime::debug::step(|| "engine: layers ensured".into());
        // --network container:X joins X's network namespace, which X's user namespace
        // owns: join that too, and present the rootfs with X's id range.
        let shared = match &req.network {
            request::NetworkMode::Container(other) => Some(self.shared_namespaces(other)?),
            _ => None,
        };
        let range: Option<IdRange> = match (&shared, req.userns) {
            (Some(sh), _) => sh.range,
            (None, UsernsMode::Host) => None,
            (None, _) => Some(self.allocator()?.allocate(id)?),
        };
        berth_runtime::debug::step(|| "engine: id range allocated".into());
        let maps = range.map(|r| {
            vec![IdMapping {
                container_id: 0,
                host_id: r.start,
                size: r.size,
            }]
        });
        let snap_dir = self.paths.snapshot(id);
        let chowned = range.is_some() && !idmapped_layers();
        let (layers, maps) = match range {
            Some(r) if chowned => (self.chowned_layers(&store, &snap_dir, image, r)?, None),
            _ => (layers, maps),
        };
        let rootfs = snapshot::mount(&SnapshotSpec {
            layers: &layers,
            dir: &snap_dir,
            idmap: maps.as_deref().map(|m| (m, m)),
            read_only: false,
        })?;
        berth_runtime::debug::step(|| "engine: snapshot mounted".into());
        let mut ctx = BuildContext::new(&rootfs, id, &cgroups_path(id));
        ctx.name = name.to_string();
        ctx.id_range = range;
        ctx.init_binary = self.init_binary.clone();
        if let Some(sh) = &shared {
            ctx.network = Some(spec_builder::Network::Join(sh.net.clone().into()));
            ctx.user_ns_path = sh.user.clone();
            ctx.extra_mounts = sh.files.clone();
        }
        let cnet = match &req.network {
            request::NetworkMode::Bridge(net) => {
                let (cnet, mounts) = self.prepare_network(id, name, net, req, image)?;
                ctx.extra_mounts = mounts;
                Some(cnet)
            }
            _ => None,
        };
        if let Some(u) = spec_builder::user_to_resolve(&image.config, req) {
            ctx.user = Some(request::resolve_user(&rootfs, &u)?);
        }
        let (spec, warnings) = spec_builder::build_spec(&image.config, req, &ctx)?;
        berth_runtime::debug::step(|| "engine: spec built".into());
        let bundle = self.paths.bundle(id);
        std::fs::create_dir_all(&bundle).map_err(io("creating", &bundle))?;
        let cfg = bundle.join("config.json");
        let text = serde_json::to_vec(&spec)
            .map_err(|e| EngineError::Other(format!("serializing spec: {e}")))?;
        std::fs::write(&cfg, text).map_err(io("writing", &cfg))?;

        let mut rec = self.records.load(id)?;
        rec.command = spec
            .process()
            .as_ref()
            .and_then(|p| p.args().clone())
            .unwrap_or_default();
        rec.hostname = spec.hostname().clone().unwrap_or_default();
        rec.userns_base = range.map(|r| r.start);
        rec.userns_size = range.map(|r| r.size);
        if let Some(c) = &cnet {
            c.store(&mut rec.extra);
        }
        if chowned {
            rec.extra.insert(CHOWNED.into(), true.into());
        }
        self.records.save(&rec)?;
        self.spawn_monitor(&rec)?;
        Ok(warnings)
    }

    /// Starts a monitor, which has the runtime create the container (not yet started).
    fn spawn_monitor(&self, rec: &ContainerRecord) -> Result<()> {
        let dir = self.paths.userdata(&rec.id);
        std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        // A previous run's exit must not be read as this one's.
        let _ = std::fs::remove_file(dir.join("exit.json"));
        let exit_command = if rec.auto_remove {
            std::env::current_exe().ok().map(|exe| {
                vec![
                    exe.display().to_string(),
                    "--root".into(),
                    self.paths.root.display().to_string(),
                    "--runroot".into(),
                    self.paths.run.display().to_string(),
                    "rm".into(),
                    "--force".into(),
                    rec.id.clone(),
                ]
            })
        } else {
            None
        };
        let spec = MonitorSpec {
            id: rec.id.clone(),
            runtime: self.runtime.binary.clone(),
            runtime_root: self.runtime.root.clone(),
            bundle: self.paths.bundle(&rec.id),
            dir,
            terminal: rec.terminal,
            stdin: rec.stdin,
            log_max_size: 10 << 20,
            oom_file: oom_file(&rec.id),
            exit_command,
            monitor_binary: self.monitor_binary.clone(),
        };
        let spawned = monitor::spawn(&spec)?;
        berth_runtime::debug::step(|| "engine: monitor created the container".into());
        let mut rec = self.records.load(&rec.id)?;
        rec.monitor_pid = Some(spawned.monitor_pid);
        self.records.update(&rec)?;
        if let Some(c) = ContainerNet::from_record(&rec.extra) {
            self.plumb(&rec.id, &c, spawned.init_pid)?;
            berth_runtime::debug::step(|| "engine: network plumbed".into());
        }
        Ok(())
    }

    /// `berth start`: a created container starts; an exited one is created again first.
    pub fn start(&self, key: &str) -> Result<ContainerRecord> {
        let mut rec = self.records.find(key)?;
        match self.status(&rec) {
            Status::Running | Status::Paused => return Ok(rec),
            Status::Exited { .. } => {
                self.runtime.delete(&rec.id)?;
                // After a reboot the snapshot is no longer mounted.
                self.ensure_snapshot(&rec)?;
                self.spawn_monitor(&rec)?;
            }
            Status::Created => {
                // Created but the runtime doesn't know it (host rebooted): recreate.
                if self.runtime.live(&rec.id) == Live::Stopped {
                    self.ensure_snapshot(&rec)?;
                    self.spawn_monitor(&rec)?;
                }
            }
        }
        self.runtime.start(&rec.id)?;
        berth_runtime::debug::step(|| "engine: started".into());
        // The container may already have exited and been removed (--rm): then there is
        // nothing left to record, and recreating its record would resurrect it.
        if let Ok(mut fresh) = self.records.load(&rec.id) {
            fresh.started_at = Some(berth_runtime::state::now_rfc3339());
            fresh.start_count += 1;
            match self.records.update(&fresh) {
                Ok(()) | Err(RecordError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
            rec = fresh;
        }
        notify_if_cluster(&rec, network::ClusterEvent::Started);
        Ok(rec)
    }

    /// Remounts the snapshot after a reboot (its upper dir persisted).
    fn ensure_snapshot(&self, rec: &ContainerRecord) -> Result<()> {
        let merged = self.paths.snapshot(&rec.id).join("merged");
        if is_mountpoint(&merged) {
            return Ok(());
        }
        let store = self.store()?;
        let layers: Vec<PathBuf> = rec
            .layers
            .iter()
            .filter_map(|d| d.parse::<Digest>().ok())
            .map(|d| store.layer_path(&d))
            .collect();
        let maps = rec.userns_base.map(|b| {
            vec![IdMapping {
                container_id: 0,
                host_id: b,
                size: rec.userns_size.unwrap_or(65536),
            }]
        });
        // A chowned copy survives on disk: mount it again as it is.
        let (layers, maps) = if rec.extra.get(CHOWNED).is_some() {
            let base = self.paths.snapshot(&rec.id).join(SHIFTED);
            let n = rec.layers.len();
            ((0..n).map(|i| base.join(i.to_string())).collect(), None)
        } else {
            (layers, maps)
        };
        snapshot::mount(&SnapshotSpec {
            layers: &layers,
            dir: &self.paths.snapshot(&rec.id),
            idmap: maps.as_deref().map(|m| (m, m)),
            read_only: false,
        })?;
        Ok(())
    }

    /// Sends `signal` to the container's processes.
    pub fn kill(&self, key: &str, signal: &str) -> Result<()> {
        let rec = self.records.find(key)?;
        let st = self.status(&rec);
        if !st.is_alive() {
            return Err(EngineError::State {
                name: rec.name,
                status: st.name().into(),
                what: "cannot be signalled",
            });
        }
        self.runtime.kill(&rec.id, signal, false)?;
        Ok(())
    }

    /// SIGTERM, then SIGKILL to everything in the cgroup after `timeout`.
    pub fn stop(&self, key: &str, timeout: Duration) -> Result<ContainerRecord> {
        let rec = self.records.find(key)?;
        if !self.status(&rec).is_alive() {
            return Ok(rec);
        }
        if self.status(&rec) == Status::Paused {
            let _ = berth_runtime::container::resume(&self.runtime.root, &rec.id);
        }
        let _ = self.runtime.kill(&rec.id, "TERM", false);
        if !self.wait_exit(&rec, timeout) {
            let _ = self.runtime.kill(&rec.id, "KILL", true);
            self.wait_exit(&rec, Duration::from_secs(10));
        }
        Ok(rec)
    }

    /// Polls until the container has exited and its monitor recorded it.
    fn wait_exit(&self, rec: &ContainerRecord, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let dir = self.paths.userdata(&rec.id);
        let mut pause = Duration::from_millis(1);
        loop {
            let exited = !self.status(rec).is_alive();
            let recorded = matches!(monitor::read_exit(&dir), Ok(Some(_)));
            let monitor_gone = rec.monitor_pid.is_none_or(|p| !pid_alive(p));
            if exited && (recorded || monitor_gone) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// `berth wait`: blocks until exit, returns the exit code.
    pub fn wait(&self, key: &str) -> Result<i32> {
        let rec = self.records.find(key)?;
        let dir = self.paths.userdata(&rec.id);
        loop {
            match self.status(&rec) {
                Status::Exited { code, .. } => return Ok(code),
                Status::Created
                    if rec.started_at.is_none() && self.runtime.live(&rec.id) == Live::Stopped =>
                {
                    return Err(EngineError::State {
                        name: rec.name,
                        status: "created".into(),
                        what: "was never started",
                    })
                }
                _ => {}
            }
            if matches!(monitor::read_exit(&dir), Ok(Some(_))) {
                continue;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `berth rm`: refuses running containers unless forced.
    pub fn rm(&self, key: &str, force: bool) -> Result<String> {
        let rec = self.records.find(key)?;
        let st = self.status(&rec);
        if st.is_alive() {
            if !force {
                return Err(EngineError::State {
                    name: rec.name,
                    status: st.name().into(),
                    what: "stop it first or use --force",
                });
            }
            let _ = self.runtime.kill(&rec.id, "KILL", true);
            self.wait_exit(&rec, Duration::from_secs(10));
        }
        self.remove_everything(&rec.id)?;
        notify_if_cluster(&rec, network::ClusterEvent::Removed);
        Ok(rec.name)
    }

    /// Undoes every create step; each step tolerates "already gone".
    fn remove_everything(&self, id: &str) -> Result<()> {
        let rec = self.records.load(id).ok();
        if let Some(pid) = rec.as_ref().and_then(|r| r.monitor_pid) {
            // The monitor exits by itself once the container is gone; give it a moment
            // to record the exit, then make sure.
            let deadline = Instant::now() + Duration::from_millis(500);
            while pid_alive(pid)
                && Instant::now() < deadline
                && self.runtime.live(id) != Live::Stopped
            {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        berth_runtime::debug::step(|| "engine: rm: monitor done".into());
        self.runtime.delete(id)?;
        berth_runtime::debug::step(|| "engine: rm: runtime deleted".into());
        if let Some(pid) = rec.as_ref().and_then(|r| r.monitor_pid) {
            let deadline = Instant::now() + Duration::from_secs(2);
            while pid_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if pid_alive(pid) && is_monitor(pid, id) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        if let Some(c) = rec
            .as_ref()
            .and_then(|r| ContainerNet::from_record(&r.extra))
        {
            self.unplumb(id, &c)?;
            berth_runtime::debug::step(|| "engine: rm: network released".into());
        }
        snapshot::unmount(&self.paths.snapshot(id))?;
        berth_runtime::debug::step(|| "engine: rm: snapshot unmounted".into());
        if let Ok(a) = self.allocator() {
            let _ = a.release(id);
        }
        self.records.remove(id)?;
        Ok(())
    }

    /// Layers in use by any container (kept by image gc).
    pub fn layers_in_use(&self) -> Result<HashSet<Digest>> {
        Ok(self
            .records
            .all()?
            .iter()
            .flat_map(|r| r.layers.iter().filter_map(|d| d.parse().ok()))
            .collect())
    }

    /// Start-up recovery: release id ranges, addresses and host ports of containers that
    /// no longer exist. Containers that died with the host keep their records and show
    /// as exited; their veth pairs died with their network namespaces.
    pub fn recover(&self) -> Result<()> {
        let live: Vec<String> = self.records.all()?.into_iter().map(|r| r.id).collect();
        if let Ok(a) = self.allocator() {
            a.release_all_except(&live)?;
        }
        // Addresses and published ports of containers that are gone (a crash of rm
        // after the record went): release and unpublish them.
        if let Ok(nets) = self.networks() {
            let list = nets.list().unwrap_or_default();
            for n in &list {
                let _ = nets
                    .ipam(n)
                    .retain(&|owner| live.iter().any(|l| l == owner));
            }
            // All networks share one table: listing it once finds every published port.
            if let Some(n) = list.first() {
                for m in berth_net::published_ports(n).unwrap_or_default() {
                    if !live.contains(&m.container_id) {
                        let _ = berth_net::remove_port_mappings(n, &m.container_id);
                        let _ = berth_net::detach(&m.container_id);
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs [`Engine::recover`] once per boot: the run root lives on a tmpfs, so a
    /// missing marker there means this is the first command since the host started (or
    /// since the run root was wiped), as podman does with its `alive` file.
    pub fn recover_once_per_boot(&self) -> Result<()> {
        let marker = self.paths.run.join("alive");
        if marker.exists() {
            return Ok(());
        }
        let _lock = self.records.lock()?;
        if marker.exists() {
            return Ok(());
        }
        self.recover()?;
        std::fs::create_dir_all(&self.paths.run).map_err(io("creating", &self.paths.run))?;
        std::fs::write(&marker, b"").map_err(io("writing", &marker))?;
        Ok(())
    }

    /// `berth inspect` for a container.
    pub fn inspect(&self, key: &str) -> Result<serde_json::Value> {
        let rec = self.records.find(key)?;
        let st = self.status(&rec);
        let (code, finished, oom) = match &st {
            Status::Exited { code, at, oom } => (*code, at.clone(), *oom),
            _ => (0, None, false),
        };
        let spec: serde_json::Value = std::fs::read(self.paths.bundle(&rec.id).join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null);
        Ok(json!({
            "Id": rec.id,
            "Name": rec.name,
            "Created": rec.created,
            "Image": rec.image_id,
            "ImageName": rec.image,
            "Path": rec.command.first(),
            "Args": rec.command.iter().skip(1).collect::<Vec<_>>(),
            "State": {
                "Status": st.name(),
                "Running": st == Status::Running,
                "Paused": st == Status::Paused,
                "OOMKilled": oom,
                "Pid": self.runtime.pid(&rec.id).unwrap_or(0),
                "ExitCode": code,
                "StartedAt": rec.started_at,
                "FinishedAt": finished,
            },
            "RestartCount": rec.start_count.saturating_sub(1),
            "HostConfig": {
                "AutoRemove": rec.auto_remove,
                "UsernsMode": if rec.userns_base.is_some() { "auto" } else { "host" },
            },
            "IdMap": rec.userns_base.map(|b| json!({"HostBase": b, "Size": rec.userns_size})),
            "Config": {
                "Hostname": rec.hostname,
                "Labels": rec.labels,
                "Tty": rec.terminal,
                "OpenStdin": rec.stdin,
            },
            "LogPath": self.paths.userdata(&rec.id).join("ctr.log"),
            "OCISpec": spec,
        }))
    }

    /// Resource usage from the container's cgroup.
    pub fn stats(
        &self,
        key: &str,
    ) -> Result<(ContainerRecord, Option<berth_runtime::cgroups::Stats>)> {
        let rec = self.records.find(key)?;
        let stats = self.runtime.cgroup(&rec.id).and_then(|c| c.stats().ok());
        Ok((rec, stats))
    }
}

/// The cgroup file whose oom_kill counter tells the monitor the container was OOM-killed.
/// Record flag: the container's layers are a chowned copy (no idmapped mounts).
const CHOWNED: &str = "chowned_layers";
/// Where in the snapshot directory the chowned copy lives.
const SHIFTED: &str = "shifted";

/// Whether container rootfs layers are presented through idmapped mounts: where the
/// kernel supports them on overlayfs lower layers, unless BERTH_IDMAPPED_LAYERS=0 asks
/// for the chowned-copy fallback (for tests, and for filesystems that refuse idmaps).
fn idmapped_layers() -> bool {
    std::env::var("BERTH_IDMAPPED_LAYERS").as_deref() != Ok("0") && snapshot::idmapped_supported()
}

impl Engine {
    /// The fallback where layers can't be idmapped: each layer unpacked again for this
    /// container with its owners shifted into the container's range (what podman does
    /// without idmapped mounts), and upper/work owned by the range's root. Costs a copy
    /// per container; survives reboots with the snapshot.
    fn chowned_layers(
        &self,
        store: &Store,
        snap_dir: &Path,
        image: &Image,
        r: IdRange,
    ) -> Result<Vec<PathBuf>> {
        let base = snap_dir.join(SHIFTED);
        std::fs::create_dir_all(&base).map_err(io("creating", &base))?;
        let shift = berth_image::unpack::IdShift {
            uid: r.start,
            gid: r.start,
            size: r.size,
        };
        let mut out = Vec::with_capacity(image.layers.len());
        for (i, l) in image.layers.iter().enumerate() {
            let dest = base.join(i.to_string());
            if !dest.exists() {
                store.unpack_shifted(&l.blob, &l.diff_id, &dest, shift)?;
            }
            out.push(dest);
        }
        for d in ["upper", "work"] {
            let p = snap_dir.join(d);
            std::fs::create_dir_all(&p).map_err(io("creating", &p))?;
            std::os::unix::fs::chown(&p, Some(r.start), Some(r.start))
                .map_err(io("setting owner of", &p))?;
        }
        berth_runtime::debug::step(|| "engine: chowned layer copy made".into());
        Ok(out)
    }
}

fn oom_file(id: &str) -> Option<PathBuf> {
    let cg = berth_runtime::cgroups::Cgroup::new(Some(&cgroups_path(id)), id, false).ok()?;
    if let Some(v2) = cg.v2_path() {
        return Some(v2.join("memory.events"));
    }
    cg.v1_dirs()
        .iter()
        .find(|d| d.has("memory"))
        .map(|d| d.dir.join("memory.oom_control"))
}

/// The cluster agent reports a container as soon as it starts or goes (see
/// [`network::notify_cluster_agent`]); other networks have nobody to tell.
fn notify_if_cluster(rec: &ContainerRecord, event: network::ClusterEvent) {
    if ContainerNet::from_record(&rec.extra).is_some_and(|c| c.network == network::CLUSTER_NETWORK)
    {
        network::notify_cluster_agent(event, &rec.id);
        berth_runtime::debug::step(|| format!("engine: cluster agent told {}", event.as_str()));
    }
}

fn cgroups_path(id: &str) -> String {
    format!("/berth/{id}")
}

pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s.contains(") Z ") && !s.contains(") X "),
        Err(_) => false,
    }
}

/// Guards against killing a recycled pid: the process must be our monitor for this id.
fn is_monitor(pid: i32, id: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            let s = String::from_utf8_lossy(&c);
            s.contains("berth-monitor") && s.contains(id)
        })
        .unwrap_or(false)
}

fn is_mountpoint(p: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = p.to_string_lossy();
    text.lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .any(|m| m == want)
}
