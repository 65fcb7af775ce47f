//! `berth-cluster` (what `berth controller` and `berth cluster` run): init, serve, the
//! cluster views, and clear errors for a wrong credential and an unreachable controller.

use std::net::TcpListener;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_berth-cluster");

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run(args: &[&str], token: Option<&str>) -> Output {
    let mut c = Command::new(BIN);
    c.args(args).env_remove("BERTH_CLUSTER_TOKEN");
    if let Some(t) = token {
        c.env("BERTH_CLUSTER_TOKEN", t);
    }
    c.output().unwrap()
}

#[test]
fn init_serve_and_views() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = dir.path().join("ctl");
    let ctl_s = ctl.to_str().unwrap();
    let o = run(
        &[
            "controller",
            "init",
            "--dir",
            ctl_s,
            "--cidr",
            "10.244.0.0/20",
        ],
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let admin = std::fs::read_to_string(ctl.join("admin.token")).unwrap();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(ctl.join("join.token"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    // A second init keeps the tokens.
    let o = run(&["controller", "init", "--dir", ctl_s], None);
    assert!(String::from_utf8_lossy(&o.stdout).contains("already initialized"));
    assert_eq!(
        std::fs::read_to_string(ctl.join("admin.token")).unwrap(),
        admin
    );
    let bad = run(
        &["controller", "init", "--dir", ctl_s, "--cidr", "10.1/x"],
        None,
    );
    assert_eq!(bad.status.code(), Some(125));

    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _server = Server(
        Command::new(BIN)
            .args(["controller", "serve", "--dir", ctl_s, "--listen", &listen])
            .spawn()
            .unwrap(),
    );
    let url = format!("http://{listen}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let o = run(&["cluster", "status", "--controller", &url], Some(&admin));
        if o.status.success() {
            assert!(String::from_utf8_lossy(&o.stdout).contains("controller revision"));
            break;
        }
        assert!(Instant::now() < deadline, "controller did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = run(
        &["cluster", "hosts", "--controller", &url, "--format", "json"],
        Some(&admin),
    );
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stdout), "");
    let o = run(&["cluster", "hosts", "--controller", &url], Some("wrong"));
    assert_eq!(o.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&o.stderr).contains("401"), "{o:?}");
    let dead = format!("http://127.0.0.1:{}", free_port());
    let o = run(&["cluster", "hosts", "--controller", &dead], Some(&admin));
    assert_eq!(o.status.code(), Some(125));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("contacting the controller"),
        "{o:?}"
    );
}
