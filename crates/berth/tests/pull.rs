//! `berth pull`, `login` and `logout` as users drive them, against Debian's docker-registry
//! started on 127.0.0.1 by each test (a free port each, storage in a tempdir), with a busybox
//! image the test builds and pushes with skopeo. Each test has its own --root and --runroot;
//! the guards remove containers, unmount what is left and kill the registry by its PID, even
//! when an assertion fails.

mod common;
#[path = "common/registry.rs"]
mod registry;

use std::io::Write;
use std::path::Path;
use std::process::{Output, Stdio};

use common::*;
use registry::Registry;

const USER: &str = "berth-user";
const PASS: &str = "s3cret-Pass";

impl Berth {
    fn new() -> Option<Berth> {
        if !can_run() || !Registry::available() {
            return None;
        }
        Some(Berth::with("berth-pull-test-", &[]))
    }

    /// Runs a command that must fail with the engine's exit code (125); returns stderr.
    fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(125), "berth {args:?}: {err}");
        err
    }

    /// `berth login --password-stdin`, the password written to its stdin.
    fn login_stdin(&self, host: &str, user: &str, password: &str) -> Output {
        let mut child = self
            .cmd()
            .args(["login", "-u", user, "--password-stdin", host])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running berth login");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(format!("{password}\n").as_bytes())
            .expect("writing the password");
        child.wait_with_output().expect("waiting for berth login")
    }

    /// Files under the image store's blob, layer and ingest directories.
    fn store_files(&self) -> Vec<String> {
        let image = self.root().join("image");
        let mut out = Vec::new();
        for d in ["blobs/sha256", "layers", "ingest"] {
            if let Ok(rd) = std::fs::read_dir(image.join(d)) {
                out.extend(
                    rd.flatten()
                        .map(|e| format!("{d}/{}", e.file_name().to_string_lossy())),
                );
            }
        }
        out.sort();
        out
    }

    /// The image records, one JSON object per `images --format json` line.
    fn images(&self) -> Vec<serde_json::Value> {
        self.ok(&["images", "--format", "json"])
            .lines()
            .map(|l| serde_json::from_str(l).expect("images --format json line"))
            .collect()
    }
}

/// A registry (with basic auth if `auth`) holding `test/busybox:v1`.
fn registry_with_busybox(dir: &Path, auth: Option<(&str, &str)>) -> (Registry, String) {
    let reg = Registry::start_with(auth);
    let layout = registry::busybox_layout(dir, "v1");
    registry::push(&layout, "v1", &reg.host(), "test/busybox", auth);
    let reference = format!("{}/test/busybox:v1", reg.host());
    (reg, reference)
}

#[test]
fn anonymous_pull_then_run_list_and_pull_again() {
    let Some(b) = Berth::new() else { return };
    let (_reg, image) = registry_with_busybox(b.dir.path(), None);

    let first = b.run(&["pull", &image]);
    let err = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "pull: {err}");
    assert!(err.contains(&format!("pulling {image}")), "{err}");

    assert_eq!(
        b.ok(&["run", "--rm", "--network", "none", &image, "echo", "hi"]),
        "hi\n"
    );

    let images = b.images();
    assert_eq!(images.len(), 1, "{images:?}");
    let names = images[0]["Names"].as_array().expect("Names");
    assert_eq!(names, &[serde_json::json!(image)], "{images:?}");
    let id = images[0]["Id"].as_str().expect("Id").to_string();
    assert!(id.starts_with("sha256:"), "{id}");

    // Again: nothing downloaded or unpacked, same image.
    let files = b.store_files();
    let again = b.run(&["pull", &image]);
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "second pull: {err}");
    assert!(err.contains("already present"), "{err}");
    assert!(!err.contains("downloading"), "{err}");
    assert!(err.contains(&id), "{err}");
    assert_eq!(b.store_files(), files);
    let images = b.images();
    assert_eq!(images.len(), 1, "{images:?}");
    assert_eq!(images[0]["Id"], serde_json::json!(id));

    // -q prints the image id alone on stdout (podman does too).
    assert_eq!(b.ok(&["pull", "-q", &image]), format!("{id}\n"));
}

#[test]
fn missing_tag_is_not_found_and_leaves_nothing() {
    let Some(b) = Berth::new() else { return };
    let (reg, _) = registry_with_busybox(b.dir.path(), None);
    let missing = format!("{}/test/busybox:no-such-tag", reg.host());
    let err = b.fails(&["pull", &missing]);
    assert!(err.contains("not found"), "{err}");
    assert!(err.contains("no-such-tag"), "{err}");
    let missing_repo = format!("{}/test/no-such-repo:v1", reg.host());
    let err = b.fails(&["pull", &missing_repo]);
    assert!(err.contains("not found"), "{err}");
    assert_eq!(b.ok(&["images", "-q"]), "");
    assert_eq!(b.store_files(), Vec::<String>::new());
}

#[test]
fn login_pull_logout_with_basic_auth() {
    let Some(b) = Berth::new() else { return };
    let (reg, image) = registry_with_busybox(b.dir.path(), Some((USER, PASS)));
    let host = reg.host();

    // Anonymous: refused, and the message says what to do.
    let err = b.fails(&["pull", &image]);
    assert!(err.contains("authentication required"), "{err}");
    assert!(err.contains(&format!("berth login {host}")), "{err}");
    assert_eq!(b.ok(&["images", "-q"]), "");

    // A wrong password: refused, named, and nothing stored.
    let err = b.fails(&["login", "-u", USER, "-p", "wrong-password", &host]);
    assert!(err.contains("authentication required"), "{err}");
    assert!(
        err.contains(&format!("credentials of user \"{USER}\" were refused")),
        "{err}"
    );
    let auth = b.root().join("auth.json");
    let saved = std::fs::read_to_string(&auth).unwrap_or_default();
    assert!(!saved.contains(&host), "{saved}");

    // The right one: stored, then used by pull.
    let out = b.ok(&["login", "-u", USER, "-p", PASS, &host]);
    assert!(out.contains("Login Succeeded"), "{out}");
    b.ok(&["pull", &image]);
    assert_eq!(b.images().len(), 1);
    assert_eq!(
        b.ok(&["run", "--rm", "--network", "none", &image, "echo", "hi"]),
        "hi\n"
    );

    // Logged out: the registry refuses us again.
    let out = b.ok(&["logout", &host]);
    assert!(out.contains(&host), "{out}");
    let err = b.fails(&["pull", &image]);
    assert!(err.contains("authentication required"), "{err}");
    let err = b.fails(&["logout", &host]);
    assert!(err.contains("not logged in"), "{err}");

    // --password-stdin works too; a wrong one from stdin is refused like -p.
    let o = b.login_stdin(&host, USER, "nope");
    assert_eq!(o.status.code(), Some(125));
    let o = b.login_stdin(&host, USER, PASS);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    b.ok(&["pull", &image]);
}
