//! `berth-cluster` (what `berth controller` and `berth cluster` run): init, serve, the
//! cluster views over mutual TLS, and clear errors for a wrong certificate and an
//! unreachable controller.

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

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("BERTH_CLUSTER_DIR")
        .env_remove("BERTH_CONTROLLER")
        .output()
        .unwrap()
}

#[test]
fn init_serve_and_views() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = dir.path().join("ctl");
    let ctl_s = ctl.to_str().unwrap();
    let o = run(&[
        "controller",
        "init",
        "--dir",
        ctl_s,
        "--cidr",
        "10.244.0.0/20",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mode = |f: &str| {
        std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(ctl.join(f)).unwrap().permissions(),
        ) & 0o777
    };
    assert_eq!(mode("join.token"), 0o600);
    assert_eq!(mode("admin.key"), 0o600);
    assert_eq!(mode("ca.seal"), 0o600);
    assert_eq!(mode("ca.crt"), 0o644);
    let (join, admin) = (
        std::fs::read_to_string(ctl.join("join.token")).unwrap(),
        std::fs::read_to_string(ctl.join("admin.crt")).unwrap(),
    );
    // A second init keeps the token, the CA and the admin certificate.
    let ca = std::fs::read_to_string(ctl.join("ca.crt")).unwrap();
    let o = run(&["controller", "init", "--dir", ctl_s]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("already initialized"));
    assert_eq!(
        std::fs::read_to_string(ctl.join("join.token")).unwrap(),
        join
    );
    assert_eq!(std::fs::read_to_string(ctl.join("ca.crt")).unwrap(), ca);
    assert_eq!(
        std::fs::read_to_string(ctl.join("admin.crt")).unwrap(),
        admin
    );
    let bad = run(&["controller", "init", "--dir", ctl_s, "--cidr", "10.1/x"]);
    assert_eq!(bad.status.code(), Some(125));
    // A second controller's directory on the same store: its init needs the seal first.
    let second = dir.path().join("second");
    let store = format!("file://{}", ctl.join("state.redb").display());
    let second_s = second.to_str().unwrap();
    let o = run(&["controller", "init", "--dir", second_s, "--store", &store]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("copy ca.seal"), "{err}");
    assert!(!second.join("admin.crt").exists());
    std::fs::copy(ctl.join("ca.seal"), second.join("ca.seal")).unwrap();
    let o = run(&["controller", "init", "--dir", second_s, "--store", &store]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(second.join("admin.crt").exists());
    assert_eq!(std::fs::read_to_string(second.join("ca.crt")).unwrap(), ca);
    // The store alone, without the seal, can't serve: the CA's key stays shut.
    let bare = dir.path().join("bare");
    std::fs::create_dir(&bare).unwrap();
    std::fs::copy(ctl.join("state.redb"), bare.join("state.redb")).unwrap();
    let o = run(&[
        "controller",
        "serve",
        "--dir",
        bare.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("ca.seal") && err.contains("copy it"), "{err}");

    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _server = Server(
        Command::new(BIN)
            .args(["controller", "serve", "--dir", ctl_s, "--listen", &listen])
            .spawn()
            .unwrap(),
    );
    let url = format!("https://{listen}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let o = run(&["cluster", "status", "--controller", &url, "--dir", ctl_s]);
        if o.status.success() {
            assert!(String::from_utf8_lossy(&o.stdout).contains("controller revision"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "controller did not come up: {o:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = run(&[
        "cluster",
        "hosts",
        "--controller",
        &url,
        "--dir",
        ctl_s,
        "--format",
        "json",
    ]);
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stdout), "");

    // Another cluster's admin certificate is refused at the handshake.
    let other = dir.path().join("other");
    let other_s = other.to_str().unwrap();
    assert!(run(&["controller", "init", "--dir", other_s])
        .status
        .success());
    let (cert, key) = (other.join("admin.crt"), other.join("admin.key"));
    let o = run(&[
        "cluster",
        "hosts",
        "--controller",
        &url,
        "--ca-cert",
        ctl.join("ca.crt").to_str().unwrap(),
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("contacting the controller"),
        "{o:?}"
    );
    // Without credentials: a clear error naming what is missing.
    let o = run(&["cluster", "hosts", "--controller", &url]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--dir"),
        "{o:?}"
    );
    let dead = format!("https://127.0.0.1:{}", free_port());
    let o = run(&["cluster", "hosts", "--controller", &dead, "--dir", ctl_s]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("contacting the controller"),
        "{o:?}"
    );

    // A CA file that holds no certificate is named as such, before any connection.
    let junk = dir.path().join("junk.crt");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let o = run(&[
        "cluster",
        "hosts",
        "--controller",
        &url,
        "--dir",
        ctl_s,
        "--ca-cert",
        junk.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("reading the cluster CA certificate: no PEM certificate in it"),
        "{o:?}"
    );
    // Agents: a missing CA file and a zero renewal period are refused up front.
    let token = ctl.join("join.token");
    let agent = |extra: &[&str]| {
        let mut args = vec![
            "agent",
            "join",
            "--controller",
            &url,
            "--token-file",
            token.to_str().unwrap(),
            "--underlay-ip",
            "192.0.2.1",
            "--name",
            "h1",
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    let o = agent(&["--ca-cert", "/nonexistent/ca.crt"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("reading the cluster CA /nonexistent/ca.crt"),
        "{o:?}"
    );
    let ca = ctl.join("ca.crt");
    let o = agent(&["--ca-cert", ca.to_str().unwrap(), "--cert-renew-secs", "0"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--cert-renew-secs"),
        "{o:?}"
    );
}
