//! Image commands: pull, images, rmi, tag, load, save, import, login, logout, prune.

use std::io::{IsTerminal, Read, Write};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use berth_image::archive;
use berth_image::digest::Digest;
use berth_image::pull::{self, Progress};
use berth_image::reference::Reference;
use berth_image::registry::{self, Client, ClientOptions, Credentials};
use berth_image::store::{Image, Store};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::args::Global;

pub fn store(g: &Global) -> Result<Store> {
    let root = g.root.join("image");
    Store::open(&root).with_context(|| format!("opening image store {}", root.display()))
}

/// A registry client for `reference`'s host, with stored credentials if any.
pub fn client(g: &Global, registry_host: &str, insecure: bool) -> Result<Client> {
    let auth = g.root.join("auth.json");
    let credentials = registry::load_credentials(&auth, registry_host)?;
    let mut insecure_hosts = Vec::new();
    if insecure {
        insecure_hosts.push(registry_host.to_string());
    }
    Ok(Client::new(
        registry_host,
        ClientOptions {
            insecure_hosts,
            credentials,
            user_agent: format!("berth/{}", env!("CARGO_PKG_VERSION")),
            timeout: std::time::Duration::from_secs(60),
        },
    )?)
}

/// Bars on a terminal, one line per event otherwise.
struct Bars {
    tty: bool,
    multi: MultiProgress,
    bars: Mutex<Vec<(Digest, ProgressBar)>>,
    quiet: bool,
}

impl Bars {
    fn new(quiet: bool) -> Bars {
        Bars {
            tty: std::io::stderr().is_terminal(),
            multi: MultiProgress::new(),
            bars: Mutex::new(Vec::new()),
            quiet,
        }
    }

    fn bar(&self, d: &Digest) -> Option<ProgressBar> {
        self.bars
            .lock()
            .ok()?
            .iter()
            .find(|(x, _)| x == d)
            .map(|(_, b)| b.clone())
    }
}

fn short(d: &Digest) -> &str {
    &d.hex()[..12]
}

impl Progress for Bars {
    fn resolved(&self, reference: &Reference, manifest: &Digest) {
        if !self.quiet {
            eprintln!("pulling {reference} ({manifest})");
        }
    }

    fn layer_started(&self, d: &Digest, size: u64) {
        if self.quiet {
            return;
        }
        if !self.tty {
            eprintln!("{}: downloading ({size} bytes)", short(d));
            return;
        }
        let b = self.multi.add(ProgressBar::new(size));
        b.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b.set_prefix(short(d).to_string());
        if let Ok(mut v) = self.bars.lock() {
            v.push((d.clone(), b));
        }
    }

    fn layer_bytes(&self, d: &Digest, done: u64) {
        if let Some(b) = self.bar(d) {
            b.set_position(done);
        }
    }

    fn layer_done(&self, d: &Digest, already: bool) {
        if self.quiet {
            return;
        }
        match self.bar(d) {
            Some(b) => b.finish_with_message("done"),
            None => eprintln!(
                "{}: {}",
                short(d),
                if already { "already present" } else { "done" }
            ),
        }
    }
}

pub fn pull(g: &Global, image: &str, quiet: bool, insecure: bool) -> Result<Image> {
    let reference: Reference = image.parse()?;
    let store = store(g)?;
    let client = client(g, &reference.registry, insecure)?;
    let bars = Bars::new(quiet);
    let img = pull::pull(
        &store,
        &client,
        &reference,
        &pull::PullOptions::default(),
        &bars,
    )?;
    // Like podman: `pull -q` prints the image id alone, on stdout, for scripts.
    if quiet {
        println!("{}", img.id);
    } else {
        eprintln!("{}", img.id);
    }
    Ok(img)
}

pub fn images(g: &Global, quiet: bool, format: &str) -> Result<()> {
    let store = store(g)?;
    let list = store.list()?;
    let out = std::io::stdout();
    let mut out = out.lock();
    match (quiet, format) {
        (true, _) => {
            for i in &list {
                writeln!(out, "{}", &i.id.hex()[..12])?;
            }
        }
        (false, "json") => {
            for i in &list {
                let v = serde_json::json!({
                    "Id": i.id.to_string(),
                    "Digest": i.manifest_digest.to_string(),
                    "Names": i.tags,
                    "Size": i.size,
                    "Created": i.created,
                });
                writeln!(out, "{v}")?;
            }
        }
        (false, "table") => {
            writeln!(
                out,
                "{:<48} {:<14} {:<32} {:>10}",
                "REPOSITORY:TAG", "IMAGE ID", "CREATED", "SIZE"
            )?;
            for i in &list {
                let names = if i.tags.is_empty() {
                    vec!["<none>".to_string()]
                } else {
                    i.tags.clone()
                };
                for n in names {
                    writeln!(
                        out,
                        "{:<48} {:<14} {:<32} {:>10}",
                        n,
                        &i.id.hex()[..12],
                        i.created.as_deref().unwrap_or("-"),
                        human_size(i.size)
                    )?;
                }
            }
        }
        (false, f) => bail!("invalid --format {f:?} (want table or json)"),
    }
    Ok(())
}

pub fn human_size(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < units.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", units[u])
    }
}

pub fn rmi(
    g: &Global,
    images: &[String],
    force: bool,
    in_use: &dyn Fn(&Digest) -> Option<String>,
) -> Result<()> {
    let store = store(g)?;
    for name in images {
        let img = store.resolve(name)?;
        if let Some(c) = in_use(&img.id) {
            if !force {
                bail!("unable to remove image {name:?}: container {c} uses it (remove the container first, or use --force)");
            }
        }
        let removed = store.remove(name, force)?;
        println!("{removed}");
    }
    Ok(())
}

pub fn tag(g: &Global, source: &str, target: &str) -> Result<()> {
    let store = store(g)?;
    let t: Reference = target.parse()?;
    store.tag(source, &t)?;
    Ok(())
}

pub fn load(g: &Global, input: Option<&std::path::Path>) -> Result<()> {
    let store = store(g)?;
    let imgs = match input {
        Some(p) => archive::load(
            &store,
            std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?,
        )?,
        None => archive::load(&store, std::io::stdin().lock())?,
    };
    for i in imgs {
        println!(
            "Loaded image: {}",
            i.tags.first().cloned().unwrap_or_else(|| i.id.to_string())
        );
    }
    Ok(())
}

pub fn save(g: &Global, images: &[String], output: Option<&std::path::Path>) -> Result<()> {
    if images.is_empty() {
        bail!("save: name at least one image");
    }
    let store = store(g)?;
    let names: Vec<&str> = images.iter().map(String::as_str).collect();
    match output {
        Some(p) => {
            let tmp = p.with_extension("berth-partial");
            let f = std::fs::File::create(&tmp)
                .with_context(|| format!("creating {}", tmp.display()))?;
            archive::save(&store, &names, std::io::BufWriter::new(f))?;
            std::fs::rename(&tmp, p).with_context(|| format!("renaming to {}", p.display()))?;
        }
        None => {
            if std::io::stdout().is_terminal() {
                bail!("save: refusing to write a tarball to a terminal; use -o FILE or redirect stdout");
            }
            archive::save(&store, &names, std::io::stdout().lock())?;
        }
    }
    Ok(())
}

pub fn import(g: &Global, file: &str, reference: Option<&str>) -> Result<()> {
    let store = store(g)?;
    let r: Option<Reference> = reference.map(str::parse).transpose()?;
    let changes = archive::ImportChanges::default();
    let img = if file == "-" {
        archive::import(&store, std::io::stdin().lock(), r.as_ref(), &changes)?
    } else {
        let f = std::fs::File::open(file).with_context(|| format!("opening {file}"))?;
        archive::import(&store, std::io::BufReader::new(f), r.as_ref(), &changes)?
    };
    println!("{}", img.id);
    Ok(())
}

pub fn login(
    g: &Global,
    registry_host: &str,
    user: Option<&str>,
    password: Option<&str>,
    password_stdin: bool,
    insecure: bool,
) -> Result<()> {
    let username = match user {
        Some(u) => u.to_string(),
        None => bail!("login: --username is required"),
    };
    let password = match (password, password_stdin) {
        (Some(p), false) => p.to_string(),
        (None, true) => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            s.trim_end_matches(['\n', '\r']).to_string()
        }
        (Some(_), true) => bail!("login: --password and --password-stdin are mutually exclusive"),
        (None, false) => bail!("login: give --password or --password-stdin"),
    };
    let creds = Credentials { username, password };
    // Check the credentials against the registry before storing them.
    let c = Client::new(
        registry_host,
        ClientOptions {
            insecure_hosts: if insecure {
                vec![registry_host.to_string()]
            } else {
                vec![]
            },
            credentials: Some(creds.clone()),
            user_agent: format!("berth/{}", env!("CARGO_PKG_VERSION")),
            timeout: std::time::Duration::from_secs(30),
        },
    )?;
    c.ping()?;
    let auth = g.root.join("auth.json");
    std::fs::create_dir_all(&g.root).with_context(|| format!("creating {}", g.root.display()))?;
    registry::save_credentials(&auth, registry_host, &creds)?;
    println!("Login Succeeded");
    Ok(())
}

pub fn logout(g: &Global, registry_host: &str) -> Result<()> {
    let auth = g.root.join("auth.json");
    if registry::remove_credentials(&auth, registry_host)? {
        println!("Removed login credentials for {registry_host}");
        Ok(())
    } else {
        bail!("not logged in to {registry_host}")
    }
}

pub fn prune(g: &Global, keep: &std::collections::HashSet<Digest>) -> Result<()> {
    let store = store(g)?;
    let r = store.gc(keep)?;
    println!("{r}");
    Ok(())
}
