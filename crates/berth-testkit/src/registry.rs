//! A real `docker-registry` (Debian's package) on 127.0.0.1, and `skopeo copy` of an OCI
//! layout into it. Listens on loopback only; the registry is killed by its PID on drop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `docker-registry` process on 127.0.0.1:port with storage in a tempdir; killed (by
/// its PID) and removed on drop.
pub struct Registry {
    pub port: u16,
    child: Child,
    /// Held so the storage goes away after the process (fields drop after `drop`).
    _dir: tempfile::TempDir,
}

impl Registry {
    /// False (with a note on stderr) when docker-registry or skopeo is missing.
    pub fn available() -> bool {
        for (bin, pkg) in [
            ("/usr/bin/docker-registry", "docker-registry"),
            ("/usr/bin/skopeo", "skopeo"),
        ] {
            if !Path::new(bin).exists() {
                eprintln!("skipping: {bin} missing (apt-get install {pkg})");
                return false;
            }
        }
        true
    }

    /// Anonymous access.
    pub fn start() -> Registry {
        Registry::start_with(None)
    }

    /// With `Some((user, pass))`, protected by htpasswd (basic auth).
    pub fn start_with(auth: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("berth-test-registry-")
            .tempdir()
            .expect("tempdir");
        let mut auth_yaml = String::new();
        if let Some((user, pass)) = auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, pass])
                .output()
                .expect("running htpasswd (apt-get install apache2-utils)");
            assert!(out.status.success(), "htpasswd failed");
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, &out.stdout).expect("writing htpasswd");
            auth_yaml = format!(
                "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                htpasswd.display()
            );
        }
        // Answers carry this header, so that we know the registry on the port is ours.
        let id = dir
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // A port picked by binding :0 may be taken again before the registry binds it:
        // retry with a new one when the registry exits early.
        for _ in 0..5 {
            let port = free_port();
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\n\
                     log:\n  level: error\n  accesslog:\n    disabled: true\n\
                     storage:\n  filesystem:\n    rootdirectory: {}\n  maintenance:\n    uploadpurging:\n      enabled: false\n\
                     http:\n  addr: 127.0.0.1:{port}\n  secret: berth-test-secret\n\
                     \x20 headers:\n    X-Berth-Test-Id: [\"{id}\"]\n\
                     {auth_yaml}",
                    dir.path().join("data").display()
                ),
            )
            .expect("writing registry config");
            let log = std::fs::File::create(dir.path().join("registry.log")).expect("log file");
            let log2 = log.try_clone().expect("log file");
            let mut child = Command::new("/usr/bin/docker-registry")
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log2)
                .spawn()
                .expect("starting docker-registry (apt-get install docker-registry)");
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut exited = false;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    exited = true;
                    break;
                }
                if http_answers(port, &id) {
                    return Registry {
                        port,
                        child,
                        _dir: dir,
                    };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if exited {
                // Reaped by try_wait already; this returns at once.
                let _ = child.wait();
            } else {
                let _ = child.kill();
                let _ = child.wait();
                let log =
                    std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default();
                panic!("docker-registry did not answer within 5 s: {log}");
            }
        }
        panic!("docker-registry failed to start 5 times");
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // Child::kill sends SIGKILL to this PID only.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// Whether an HTTP server answers GET /v2/ on 127.0.0.1:port (any status) with header
/// `X-Berth-Test-Id: id`.
fn http_answers(port: u16, id: &str) -> bool {
    let Ok(mut s) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = Vec::new();
    let _ = s.take(16 << 10).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    text.starts_with("http/")
        && text.contains(&format!("x-berth-test-id: {}", id.to_ascii_lowercase()))
}

/// `skopeo copy` of the OCI layout's `tag` to `host/repo:tag` over plain http, digests
/// kept. With `--all`, an index goes with every image in it; a single image as it is.
pub fn push(layout: &Path, tag: &str, host: &str, repo: &str, creds: Option<(&str, &str)>) {
    let mut cmd = Command::new("skopeo");
    cmd.args([
        "--insecure-policy",
        "copy",
        "--quiet",
        "--all",
        "--dest-tls-verify=false",
        "--preserve-digests",
    ])
    // No user or system auth files: only what is passed here.
    .env("REGISTRY_AUTH_FILE", layout.join("no-auth.json"));
    if let Some((u, p)) = creds {
        cmd.arg("--dest-creds").arg(format!("{u}:{p}"));
    }
    let src = format!("oci:{}:{tag}", layout.display());
    let dst = format!("docker://{host}/{repo}:{tag}");
    let out = cmd
        .arg(&src)
        .arg(&dst)
        .stdin(Stdio::null())
        .output()
        .expect("running skopeo (apt-get install skopeo)");
    assert!(
        out.status.success(),
        "skopeo copy {src} {dst} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
