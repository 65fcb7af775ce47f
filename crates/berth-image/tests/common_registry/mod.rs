//! Test helpers for the registry client: a real `docker-registry` on loopback, OCI image
//! layouts built in Rust and pushed with `skopeo`, and a scripted mini HTTP server for the
//! protocol corners a real registry does not show (bearer tokens, redirects, cut-off
//! bodies). Everything listens on 127.0.0.1 only and is torn down by Drop guards.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use berth_image::digest::Digest;
use flate2::write::GzEncoder;
use serde_json::json;

// The docker-registry process and `skopeo copy` are shared with berth's CLI tests.
pub use berth_testkit::registry::{free_port, Registry};

// ---------------------------------------------------------------- OCI layouts

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// One image (manifest + config + layers) as built.
pub struct BuiltImage {
    pub arch: String,
    pub manifest: Vec<u8>,
    pub manifest_digest: Digest,
    pub config: Vec<u8>,
    pub config_digest: Digest,
    /// gzip'd layer tars and their digests.
    pub layers: Vec<(Digest, Vec<u8>)>,
}

/// An OCI image layout in a tempdir holding one tag: a single image, or an index of
/// several (one per arch).
pub struct Layout {
    pub dir: tempfile::TempDir,
    pub tag: String,
    pub images: Vec<BuiltImage>,
    /// The index blob, when built with several arches.
    pub index: Option<(Digest, Vec<u8>)>,
}

/// Deterministic incompressible bytes.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn write_blob(dir: &Path, bytes: &[u8]) -> Digest {
    let d = Digest::of(bytes);
    let p = dir.join("blobs/sha256").join(d.hex());
    std::fs::write(p, bytes).expect("writing blob");
    d
}

fn layer(arch: &str, i: usize, noise_len: usize) -> (Vec<u8>, Digest) {
    let mut tar = tar::Builder::new(Vec::new());
    let files: Vec<(String, Vec<u8>)> = vec![
        (
            format!("etc/berth-{arch}-{i}"),
            format!("layer {i} for {arch}\n").into_bytes(),
        ),
        (
            format!("data/noise-{i}"),
            noise((i as u64 + 1) * 7 + arch.len() as u64, noise_len),
        ),
    ];
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, path, &data[..])
            .expect("tar append");
    }
    let raw = tar.into_inner().expect("tar finish");
    let diff_id = Digest::of(&raw);
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).expect("gzip");
    (gz.finish().expect("gzip finish"), diff_id)
}

fn build_image(dir: &Path, arch: &str, nlayers: usize, noise_len: usize) -> BuiltImage {
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for i in 0..nlayers {
        let (gz, diff_id) = layer(arch, i, noise_len);
        let d = write_blob(dir, &gz);
        layers.push((d, gz));
        diff_ids.push(diff_id.to_string());
    }
    let config = serde_json::to_vec(&json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .expect("config json");
    let config_digest = write_blob(dir, &config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest.to_string(),
            "size": config.len(),
        },
        "layers": layers.iter().map(|(d, b)| json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": d.to_string(),
            "size": b.len(),
        })).collect::<Vec<_>>(),
    }))
    .expect("manifest json");
    let manifest_digest = write_blob(dir, &manifest);
    BuiltImage {
        arch: arch.to_string(),
        manifest,
        manifest_digest,
        config,
        config_digest,
        layers,
    }
}

fn platform(arch: &str) -> serde_json::Value {
    if arch == "arm64" {
        json!({"architecture": "arm64", "os": "linux", "variant": "v8"})
    } else {
        json!({"architecture": arch, "os": "linux"})
    }
}

/// Builds a layout with tag `tag`: one image if `archs` has one entry, else an index of
/// one image per arch. Each image has `nlayers` layers with `noise_len` random bytes each.
pub fn build_layout(tag: &str, archs: &[&str], nlayers: usize, noise_len: usize) -> Layout {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("blobs/sha256")).expect("mkdir blobs");
    std::fs::write(
        dir.path().join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("oci-layout");
    let images: Vec<BuiltImage> = archs
        .iter()
        .map(|a| build_image(dir.path(), a, nlayers, noise_len))
        .collect();
    let ref_name = json!({"org.opencontainers.image.ref.name": tag});
    let (top, index) = if images.len() == 1 {
        let im = &images[0];
        (
            json!({"mediaType": OCI_MANIFEST, "digest": im.manifest_digest.to_string(),
                   "size": im.manifest.len(), "annotations": ref_name}),
            None,
        )
    } else {
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": images.iter().map(|im| json!({
                "mediaType": OCI_MANIFEST,
                "digest": im.manifest_digest.to_string(),
                "size": im.manifest.len(),
                "platform": platform(&im.arch),
            })).collect::<Vec<_>>(),
        }))
        .expect("index json");
        let d = write_blob(dir.path(), &index);
        (
            json!({"mediaType": OCI_INDEX, "digest": d.to_string(), "size": index.len(),
                   "annotations": ref_name}),
            Some((d, index)),
        )
    };
    let top_index =
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [top]})).expect("index.json");
    std::fs::write(dir.path().join("index.json"), top_index).expect("index.json");
    Layout {
        dir,
        tag: tag.to_string(),
        images,
        index,
    }
}

/// `skopeo copy` of the layout's tag to `host/repo:tag` over plain http, digests preserved.
pub fn push(layout: &Layout, host: &str, repo: &str, creds: Option<(&str, &str)>) {
    berth_testkit::registry::push(layout.dir.path(), &layout.tag, host, repo, creds);
}

// ---------------------------------------------------------------- mini HTTP server

/// A request as the mini server saw it.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// Names lowercased.
    pub headers: Vec<(String, String)>,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    pub fn query(&self, key: &str) -> Vec<String> {
        let q = self.target.split_once('?').map(|(_, q)| q).unwrap_or("");
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| percent_decode(v))
            .collect()
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A scripted answer.
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Send only this many body bytes (Content-Length still says all), then close.
    pub cut_after: Option<usize>,
}

impl Resp {
    pub fn new(status: u16) -> Resp {
        Resp {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            cut_after: None,
        }
    }

    pub fn header(mut self, k: &str, v: &str) -> Resp {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }

    pub fn body(mut self, b: impl Into<Vec<u8>>) -> Resp {
        self.body = b.into();
        self
    }
}

type Handler = dyn Fn(&Req) -> Resp + Send + Sync;

/// One thread answering one connection at a time on 127.0.0.1, `Connection: close`.
/// Records every request. Stops and joins on drop.
pub struct MiniServer {
    pub port: u16,
    pub requests: Arc<Mutex<Vec<Req>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MiniServer {
    pub fn start(handler: impl Fn(&Req) -> Resp + Send + Sync + 'static) -> MiniServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("addr").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let (reqs, stop2) = (requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                serve_one(conn, &*handler, &reqs);
            }
        });
        MiniServer {
            port,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn requests(&self) -> Vec<Req> {
        self.requests.lock().expect("requests").clone()
    }
}

impl Drop for MiniServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept() up.
        let _ =
            TcpStream::connect_timeout(&([127, 0, 0, 1], self.port).into(), Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_one(conn: TcpStream, handler: &Handler, reqs: &Mutex<Vec<Req>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    for _ in 0..100 {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 {
            break;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let req = Req {
        method,
        target,
        headers,
    };
    reqs.lock().expect("requests").push(req.clone());
    let resp = handler(&req);
    let mut out = format!("HTTP/1.1 {} X\r\n", resp.status).into_bytes();
    for (k, v) in &resp.headers {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            resp.body.len()
        )
        .as_bytes(),
    );
    let body = match resp.cut_after {
        Some(n) => &resp.body[..n.min(resp.body.len())],
        None => &resp.body[..],
    };
    out.extend_from_slice(body);
    let mut conn = conn;
    let _ = conn.write_all(&out);
    let _ = conn.flush();
    let _ = conn.shutdown(Shutdown::Both);
}
