//! Registry client against a real `docker-registry` (images pushed with `skopeo`) and, for
//! what a plain registry does not show, a scripted HTTP server. All on 127.0.0.1.
//! Needs: docker-registry, skopeo, apache2-utils (htpasswd).

mod common_registry;

/// In a module so that `cargo test -p berth-image registry` selects these tests.
mod registry_client {

    use std::collections::HashMap;
    use std::io::Write;
    use std::net::TcpListener;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use super::common_registry::{build_layout, free_port, push, MiniServer, Registry, Req, Resp};
    use berth_image::digest::{Digest, Hasher};
    use berth_image::registry::{
        self, fetch_blobs_parallel, load_credentials, remove_credentials, save_credentials,
        select_platform, Client, ClientOptions, Credentials, RegistryError,
    };

    fn client(host: &str) -> Client {
        Client::new(host, ClientOptions::default()).expect("client")
    }

    fn client_with(host: &str, user: &str, pass: &str) -> Client {
        let opts = ClientOptions {
            credentials: Some(Credentials {
                username: user.into(),
                password: pass.into(),
            }),
            ..ClientOptions::default()
        };
        Client::new(host, opts).expect("client")
    }

    /// Downloads a whole blob into memory.
    fn fetch_all(
        c: &Client,
        repo: &str,
        d: &Digest,
        size: Option<u64>,
    ) -> Result<Vec<u8>, RegistryError> {
        let mut out = Vec::new();
        c.fetch_blob(repo, d, size, 0, Hasher::new(), &mut out, &mut |_| {})?;
        Ok(out)
    }

    #[test]
    fn manifest_by_tag_and_by_digest() {
        let reg = Registry::start();
        let layout = build_layout("v1", &["amd64"], 1, 1000);
        push(&layout, &reg.host(), "test/img", None);
        let im = &layout.images[0];
        let c = client(&reg.host());
        c.ping().expect("ping");

        let m = c.get_manifest("test/img", "v1").expect("by tag");
        assert_eq!(m.media_type, registry::MEDIA_TYPE_OCI_MANIFEST);
        assert_eq!(m.bytes, im.manifest, "bytes as pushed");
        assert_eq!(m.digest, im.manifest_digest);
        assert_eq!(m.digest, Digest::of(&m.bytes));

        let by_digest = c
            .get_manifest("test/img", &im.manifest_digest.to_string())
            .expect("by digest");
        assert_eq!(by_digest.bytes, m.bytes);
        assert_eq!(by_digest.digest, im.manifest_digest);

        // Config and layer blobs come back as pushed.
        assert_eq!(
            fetch_all(
                &c,
                "test/img",
                &im.config_digest,
                Some(im.config.len() as u64)
            )
            .unwrap(),
            im.config
        );
    }

    #[test]
    fn missing_manifests_and_blobs_are_not_found_by_name() {
        let reg = Registry::start();
        let layout = build_layout("v1", &["amd64"], 1, 100);
        push(&layout, &reg.host(), "test/img", None);
        let c = client(&reg.host());

        let e = c.get_manifest("test/img", "nosuch").unwrap_err();
        let msg = e.to_string();
        eprintln!("{msg}");
        assert!(matches!(e, RegistryError::NotFound { .. }), "{e:?}");
        assert!(
            msg.contains(&format!(
                "manifest {}/test/img:nosuch not found",
                reg.host()
            )),
            "{msg}"
        );
        // The registry's own error code is part of the message.
        assert!(msg.contains("MANIFEST_UNKNOWN"), "{msg}");

        let e = c.get_manifest("test/other", "v1").unwrap_err();
        assert!(matches!(e, RegistryError::NotFound { .. }), "{e:?}");

        let unknown = Digest::of(b"no such manifest");
        let e = c
            .get_manifest("test/img", &unknown.to_string())
            .unwrap_err();
        assert!(matches!(e, RegistryError::NotFound { .. }), "{e:?}");
        assert!(e.to_string().contains(&unknown.to_string()), "{e}");

        let unknown = Digest::of(b"no such blob");
        let e = fetch_all(&c, "test/img", &unknown, None).unwrap_err();
        assert!(matches!(e, RegistryError::NotFound { .. }), "{e:?}");
        let msg = e.to_string();
        eprintln!("{msg}");
        assert!(
            msg.contains(&format!("blob {unknown} of {}/test/img", reg.host())),
            "{msg}"
        );
        assert!(msg.contains("BLOB_UNKNOWN"), "{msg}");

        // Bad names never reach the network.
        assert!(matches!(
            c.get_manifest("Test/../x", "v1"),
            Err(RegistryError::Invalid(_))
        ));
        assert!(matches!(
            c.get_manifest("test/img", "sha256:zz"),
            Err(RegistryError::Invalid(_))
        ));
    }

    #[test]
    fn platform_selection_from_a_real_index() {
        let reg = Registry::start();
        let layout = build_layout("multi", &["amd64", "arm64"], 1, 100);
        push(&layout, &reg.host(), "test/multi", None);
        let (index_digest, index_bytes) = layout.index.as_ref().unwrap();
        let c = client(&reg.host());

        let m = c.get_manifest("test/multi", "multi").expect("index");
        assert!(
            registry::is_index_media_type(&m.media_type),
            "{}",
            m.media_type
        );
        assert_eq!(&m.digest, index_digest);
        assert_eq!(&m.bytes, index_bytes);

        for (arch, variant, want) in [
            ("arm64", None, &layout.images[1]),
            ("arm64", Some("v8"), &layout.images[1]),
            ("amd64", None, &layout.images[0]),
        ] {
            let d = select_platform(&m.bytes, "linux", arch, variant).expect("platform");
            assert_eq!(
                d.digest().to_string(),
                want.manifest_digest.to_string(),
                "{arch}"
            );
            let child = c.get_manifest("test/multi", d.digest().as_ref()).unwrap();
            assert_eq!(child.bytes, want.manifest);
            let cfg: serde_json::Value = serde_json::from_slice(
                &fetch_all(&c, "test/multi", &want.config_digest, None).unwrap(),
            )
            .unwrap();
            assert_eq!(cfg["architecture"], arch);
        }
        // The host's platform is one of Go's names.
        let (os, arch, _) = registry::host_platform();
        if os == "linux" && (arch == "amd64" || arch == "arm64") {
            select_platform(&m.bytes, os, arch, None).expect("host platform");
        }

        let e = select_platform(&m.bytes, "linux", "s390x", None).unwrap_err();
        let msg = e.to_string();
        eprintln!("{msg}");
        assert!(msg.contains("linux/s390x"), "{msg}");
        assert!(msg.contains("linux/amd64, linux/arm64/v8"), "{msg}");
    }

    #[test]
    fn blob_fetch_verifies_content_and_size() {
        let reg = Registry::start();
        let layout = build_layout("v1", &["amd64"], 1, 300_000);
        push(&layout, &reg.host(), "test/img", None);
        let (d, bytes) = &layout.images[0].layers[0];
        let size = bytes.len() as u64;
        let c = client(&reg.host());

        let mut out = Vec::new();
        let mut seen = Vec::new();
        c.fetch_blob(
            "test/img",
            d,
            Some(size),
            0,
            Hasher::new(),
            &mut out,
            &mut |n| seen.push(n),
        )
        .expect("fetch");
        assert_eq!(&out, bytes);
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "progress grows");
        assert_eq!(seen.last(), Some(&size));

        // Without a size only the digest is checked.
        assert_eq!(&fetch_all(&c, "test/img", d, None).unwrap(), bytes);

        // A size that disagrees with what is served.
        let e = fetch_all(&c, "test/img", d, Some(size - 1)).unwrap_err();
        assert!(
            matches!(e, RegistryError::SizeMismatch { expected, .. } if expected == size - 1),
            "{e:?}"
        );
        let e = fetch_all(&c, "test/img", d, Some(size + 10)).unwrap_err();
        assert!(
            matches!(e, RegistryError::SizeMismatch { actual, .. } if actual == size),
            "{e:?}"
        );
    }

    #[test]
    fn blob_fetch_resumes_from_an_offset() {
        let reg = Registry::start();
        let layout = build_layout("v1", &["amd64"], 1, 300_000);
        push(&layout, &reg.host(), "test/img", None);
        let (d, bytes) = &layout.images[0].layers[0];
        let size = bytes.len() as u64;
        let c = client(&reg.host());

        let half = bytes.len() / 2;
        let mut prefix = Hasher::new();
        prefix.update(&bytes[..half]);
        let mut rest = Vec::new();
        let mut last = 0;
        c.fetch_blob(
            "test/img",
            d,
            Some(size),
            half as u64,
            prefix,
            &mut rest,
            &mut |n| last = n,
        )
        .expect("resume");
        assert_eq!(rest, bytes[half..], "only the rest is written");
        assert_eq!(last, size, "progress counts the prefix");

        // A prefix that is not the blob's: the whole-blob digest check catches it.
        let mut wrong = Hasher::new();
        wrong.update(&vec![0u8; half]);
        let e = c
            .fetch_blob(
                "test/img",
                d,
                Some(size),
                half as u64,
                wrong,
                &mut Vec::new(),
                &mut |_| {},
            )
            .unwrap_err();
        let msg = e.to_string();
        eprintln!("{msg}");
        assert!(matches!(e, RegistryError::DigestMismatch { .. }), "{e:?}");
        assert!(msg.contains(&format!("expected {d}")), "{msg}");

        // Everything already there: verified without a download.
        let mut all = Hasher::new();
        all.update(bytes);
        let mut sink = Vec::new();
        c.fetch_blob("test/img", d, Some(size), size, all, &mut sink, &mut |_| {})
            .expect("complete prefix");
        assert!(sink.is_empty());

        // The offset must agree with the hasher.
        assert!(matches!(
            c.fetch_blob(
                "test/img",
                d,
                Some(size),
                5,
                Hasher::new(),
                &mut sink,
                &mut |_| {}
            ),
            Err(RegistryError::Invalid(_))
        ));
    }

    #[test]
    fn unreachable_registry_fails_fast() {
        let port = free_port(); // nothing listens there any more
        let host = format!("127.0.0.1:{port}");
        let c = client(&host);
        let t = Instant::now();
        let e = c.get_manifest("test/img", "v1").unwrap_err();
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "hung: {:?}",
            t.elapsed()
        );
        let msg = e.to_string();
        eprintln!("{msg}");
        assert!(matches!(e, RegistryError::Unreachable { .. }), "{e:?}");
        assert!(
            msg.contains(&format!("registry {host} is unreachable")),
            "{msg}"
        );
        assert!(msg.to_lowercase().contains("refused"), "{msg}");

        // A server that accepts but never answers: the timeout applies.
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = format!("127.0.0.1:{}", silent.local_addr().unwrap().port());
        let opts = ClientOptions {
            timeout: Duration::from_millis(300),
            ..ClientOptions::default()
        };
        let c = Client::new(&host, opts).unwrap();
        let t = Instant::now();
        let e = c.ping().unwrap_err();
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "hung: {:?}",
            t.elapsed()
        );
        assert!(matches!(e, RegistryError::Unreachable { .. }), "{e:?}");
        eprintln!("{e}");
        assert!(e.to_string().contains("timed out"), "{e}");
    }

    #[test]
    fn basic_auth_against_an_htpasswd_registry() {
        let reg = Registry::start_with(Some(("user", "pass")));
        let layout = build_layout("v1", &["amd64"], 1, 100);
        push(&layout, &reg.host(), "test/img", Some(("user", "pass")));
        let im = &layout.images[0];

        // Anonymous.
        for e in [
            client(&reg.host())
                .get_manifest("test/img", "v1")
                .unwrap_err(),
            client(&reg.host()).ping().unwrap_err(),
        ] {
            assert!(matches!(e, RegistryError::Unauthorized { .. }), "{e:?}");
            let msg = e.to_string();
            eprintln!("{msg}");
            assert!(msg.contains("authentication required"), "{msg}");
            assert!(
                msg.contains(&format!("run berth login {}", reg.host())),
                "{msg}"
            );
        }

        // Wrong password.
        let e = client_with(&reg.host(), "user", "wrong")
            .get_manifest("test/img", "v1")
            .unwrap_err();
        assert!(
            matches!(&e, RegistryError::Unauthorized { repository, .. } if repository == "test/img"),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .contains(r#"credentials of user "user" were refused"#),
            "{e}"
        );
        assert!(client_with(&reg.host(), "user", "wrong").ping().is_err());

        // Right one: ping (what login checks), manifest and blobs.
        let c = client_with(&reg.host(), "user", "pass");
        c.ping().expect("ping with credentials");
        let m = c.get_manifest("test/img", "v1").expect("manifest");
        assert_eq!(m.digest, im.manifest_digest);
        let (d, bytes) = &im.layers[0];
        assert_eq!(
            &fetch_all(&c, "test/img", d, Some(bytes.len() as u64)).unwrap(),
            bytes
        );
    }

    #[test]
    fn credentials_file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("containers/auth.json");
        assert_eq!(load_credentials(&path, "localhost:5000").unwrap(), None);
        assert!(!remove_credentials(&path, "localhost:5000").unwrap());

        let c = Credentials {
            username: "alice".into(),
            password: "s3cr:et".into(),
        };
        save_credentials(&path, "localhost:5000", &c).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            load_credentials(&path, "localhost:5000").unwrap(),
            Some(c.clone())
        );
        assert_eq!(load_credentials(&path, "quay.io").unwrap(), None);

        // podman's format exactly, and other content kept.
        let doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            doc["auths"]["localhost:5000"]["auth"],
            "YWxpY2U6czNjcjpldA=="
        );
        let mut doc = doc;
        doc["credHelpers"] = serde_json::json!({"gcr.io": "gcloud"});
        doc["auths"]["https://index.docker.io/v1/"] = serde_json::json!({"auth": "Ym9iOnB3"});
        std::fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
        // docker's legacy key is found under docker.io.
        assert_eq!(
            load_credentials(&path, "docker.io").unwrap(),
            Some(Credentials {
                username: "bob".into(),
                password: "pw".into()
            })
        );
        let c2 = Credentials {
            username: "carol".into(),
            password: "x".into(),
        };
        save_credentials(&path, "quay.io", &c2).unwrap();
        let doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(doc["credHelpers"]["gcr.io"], "gcloud");
        assert_eq!(load_credentials(&path, "quay.io").unwrap(), Some(c2));
        assert_eq!(load_credentials(&path, "localhost:5000").unwrap(), Some(c));

        assert!(remove_credentials(&path, "localhost:5000").unwrap());
        assert!(!remove_credentials(&path, "localhost:5000").unwrap());
        assert_eq!(load_credentials(&path, "localhost:5000").unwrap(), None);
        assert!(remove_credentials(&path, "docker.io").unwrap());
        assert_eq!(load_credentials(&path, "docker.io").unwrap(), None);
        // No temporary files left behind.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("auth.json")]);

        std::fs::write(&path, b"{not json").unwrap();
        let e = load_credentials(&path, "quay.io").unwrap_err();
        assert!(e.to_string().contains("auth.json"), "{e}");
        assert!(save_credentials(
            &path,
            "quay.io",
            &Credentials {
                username: "a".into(),
                password: "b".into()
            }
        )
        .is_err());
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"{not json",
            "a bad file is not clobbered"
        );
    }

    /// The docker token protocol, client side. A real docker-registry needs a separate JWT
    /// token server for bearer auth, so this scripted server plays both: the registry answers
    /// 401 with a Bearer challenge unless given the token, and the realm hands the token out
    /// to the right basic credentials.
    #[test]
    fn bearer_token_flow() {
        let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}"#.to_vec();
        let port = Arc::new(Mutex::new(0u16));
        let port2 = port.clone();
        let body = manifest.clone();
        let srv = MiniServer::start(move |r: &Req| {
            let port = *port2.lock().unwrap();
            let bearer_ok = r.header("authorization") == Some("Bearer tok-123");
            match r.path() {
                "/token" => {
                    if r.header("authorization") != Some("Basic dXNlcjpwYXNz") {
                        return Resp::new(401).body(
                            r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#,
                        );
                    }
                    // Any other question is a client bug: answer 400 (a panic here would
                    // only kill the server thread).
                    let scope = r.query("scope");
                    if r.query("service") != ["test-registry"]
                        || r.query("account") != ["user"]
                        || !(scope.is_empty() || scope == ["repository:test/img:pull"])
                    {
                        return Resp::new(400)
                            .body(format!("unexpected token request {}", r.target));
                    }
                    Resp::new(200).body(r#"{"token":"tok-123","expires_in":300}"#)
                }
                "/v2/" if bearer_ok => Resp::new(200).body("{}"),
                "/v2/test/img/manifests/v1" if bearer_ok => Resp::new(200)
                    .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
                    .body(body.clone()),
                path => {
                    // As registries do: no scope in the challenge of the base endpoint.
                    let scope = if path == "/v2/" {
                        String::new()
                    } else {
                        r#","scope="repository:test/img:pull""#.to_string()
                    };
                    Resp::new(401)
                        .header(
                            "WWW-Authenticate",
                            &format!(
                                r#"Bearer realm="http://127.0.0.1:{port}/token",service="test-registry"{scope}"#
                            ),
                        )
                        .body(r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#)
                }
            }
        });
        *port.lock().unwrap() = srv.port;
        let host = format!("127.0.0.1:{}", srv.port);

        let c = client_with(&host, "user", "pass");
        let m = c
            .get_manifest("test/img", "v1")
            .expect("manifest with token");
        assert_eq!(m.bytes, manifest);
        // The token is cached: shared by clones, no new token request.
        c.clone().get_manifest("test/img", "v1").expect("second");
        let paths: Vec<String> = srv
            .requests()
            .iter()
            .map(|r| r.path().to_string())
            .collect();
        assert_eq!(
            paths,
            [
                "/v2/test/img/manifests/v1",
                "/token",
                "/v2/test/img/manifests/v1",
                "/v2/test/img/manifests/v1"
            ]
        );

        // What login checks: the base endpoint with a token (no scope).
        c.ping().expect("ping with token");

        // Wrong credentials: the token server refuses.
        let e = client_with(&host, "user", "nope")
            .get_manifest("test/img", "v1")
            .unwrap_err();
        assert!(matches!(e, RegistryError::Unauthorized { .. }), "{e:?}");
        assert!(e.to_string().contains("bad credentials"), "{e}");
        // No credentials: the token server refuses too.
        let e = client(&host).get_manifest("test/img", "v1").unwrap_err();
        assert!(
            e.to_string().contains(&format!("run berth login {host}")),
            "{e}"
        );
    }

    /// A registry that redirects a blob to "storage" on another host: the redirect is followed
    /// and the registry's Authorization header is not sent there (it is kept for a redirect on
    /// the same host).
    #[test]
    fn redirects_drop_authorization_across_hosts() {
        let blob = super::common_registry::noise(3, 10_000);
        let digest = Digest::of(&blob);
        let body = blob.clone();
        let storage = MiniServer::start(move |r: &Req| {
            if r.path() == "/storage/blob" {
                Resp::new(200).body(body.clone())
            } else {
                Resp::new(404)
            }
        });
        // "localhost" vs "127.0.0.1": another host by name, still on loopback.
        let storage_url = format!("http://localhost:{}/storage/blob?sig=abc", storage.port);
        let digest2 = digest.clone();
        let reg = MiniServer::start(move |r: &Req| {
            if r.header("authorization") != Some("Basic dXNlcjpwYXNz") {
                return Resp::new(401).header("WWW-Authenticate", r#"Basic realm="test""#);
            }
            match r.path() {
                p if p == format!("/v2/test/img/blobs/{digest2}") => {
                    Resp::new(307).header("Location", &format!("/v2/test/img/moved/{digest2}"))
                }
                p if p.starts_with("/v2/test/img/moved/") => {
                    Resp::new(307).header("Location", &storage_url)
                }
                _ => Resp::new(404),
            }
        });
        let c = client_with(&format!("127.0.0.1:{}", reg.port), "user", "pass");
        let got = fetch_all(&c, "test/img", &digest, Some(blob.len() as u64)).expect("fetch");
        assert_eq!(got, blob);

        let reg_reqs = reg.requests();
        // 401 challenge, then the blob with basic auth, then the same-host redirect with it too.
        assert_eq!(reg_reqs.len(), 3, "{reg_reqs:?}");
        assert!(
            reg_reqs[2].header("authorization").is_some(),
            "same host keeps auth"
        );
        let st = storage.requests();
        assert_eq!(st.len(), 1);
        assert_eq!(st[0].target, "/storage/blob?sig=abc");
        assert_eq!(
            st[0].header("authorization"),
            None,
            "credentials leaked to storage"
        );
    }

    #[test]
    fn corrupted_content_and_error_bodies_are_reported() {
        let good = br#"{"schemaVersion":2,"manifests":[]}"#.to_vec();
        let evil = b"tampered blob".to_vec();
        let claimed = Digest::of(b"the real blob");
        let claimed2 = claimed.clone();
        let manifest_digest = Digest::of(&good);
        let srv = MiniServer::start(move |r: &Req| match r.path() {
            "/v2/test/img/manifests/v1" => Resp::new(200)
                .header("Content-Type", "application/json")
                .body(good.clone()),
            "/v2/test/img/manifests/lying" => Resp::new(200)
                .header("Content-Type", "application/vnd.oci.image.index.v1+json")
                .header("Docker-Content-Digest", &claimed2.to_string())
                .body(good.clone()),
            p if p.starts_with("/v2/test/img/manifests/sha256:") => Resp::new(200)
                .header("Content-Type", "application/vnd.oci.image.index.v1+json")
                .body(b"{}".to_vec()),
            p if p.starts_with("/v2/test/img/blobs/") => Resp::new(200).body(evil.clone()),
            "/v2/test/busy/manifests/v1" => Resp::new(429)
                .body(r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#),
            _ => Resp::new(500).body("internal trouble"),
        });
        let host = format!("127.0.0.1:{}", srv.port);
        let c = client(&host);

        // A generic Content-Type: the document decides the media type.
        let m = c.get_manifest("test/img", "v1").unwrap();
        assert_eq!(m.media_type, registry::MEDIA_TYPE_OCI_INDEX);
        assert_eq!(m.digest, manifest_digest);

        // Asked by digest, served other bytes.
        let e = c
            .get_manifest("test/img", &manifest_digest.to_string())
            .unwrap_err();
        let msg = e.to_string();
        eprintln!("{msg}");
        assert!(matches!(e, RegistryError::DigestMismatch { .. }), "{e:?}");
        assert!(
            msg.contains(&format!(
                "expected {manifest_digest}, got {}",
                Digest::of(b"{}")
            )),
            "{msg}"
        );

        let e = c.get_manifest("test/img", "lying").unwrap_err();
        assert!(matches!(e, RegistryError::DigestMismatch { .. }), "{e:?}");

        let e = fetch_all(&c, "test/img", &claimed, None).unwrap_err();
        let msg = e.to_string();
        eprintln!("{msg}");
        assert!(matches!(e, RegistryError::DigestMismatch { .. }), "{e:?}");
        assert!(
            msg.contains(&format!("blob {claimed} of {host}/test/img")),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("got {}", Digest::of(b"tampered blob"))),
            "{msg}"
        );

        let e = c.get_manifest("test/busy", "v1").unwrap_err();
        let msg = e.to_string();
        eprintln!("{msg}");
        assert!(
            matches!(e, RegistryError::Http { status: 429, .. }),
            "{e:?}"
        );
        assert!(msg.contains("TOOMANYREQUESTS: slow down"), "{msg}");
        let e = c.ping().unwrap_err();
        assert!(e.to_string().contains("http 500 (internal trouble)"), "{e}");
    }

    /// A server that cuts the body off, and then ignores Range: the download is resumed and
    /// the bytes it already had are skipped.
    #[test]
    fn interrupted_downloads_are_resumed() {
        let blob = super::common_registry::noise(9, 200_000);
        let digest = Digest::of(&blob);
        let body = blob.clone();
        let calls = Arc::new(Mutex::new(0));
        let calls2 = calls.clone();
        let srv = MiniServer::start(move |r: &Req| {
            let mut n = calls2.lock().unwrap();
            *n += 1;
            match (*n, r.header("range")) {
                // First: half the body, then the connection drops.
                (1, None) => Resp {
                    cut_after: Some(70_000),
                    ..Resp::new(200).body(body.clone())
                },
                // Second: a proper partial answer, cut again.
                (2, Some(range)) => {
                    let start: usize = range
                        .trim_start_matches("bytes=")
                        .trim_end_matches('-')
                        .parse()
                        .unwrap();
                    Resp {
                        cut_after: Some(50_000),
                        ..Resp::new(206)
                            .header(
                                "Content-Range",
                                &format!("bytes {start}-{}/{}", body.len() - 1, body.len()),
                            )
                            .body(body[start..].to_vec())
                    }
                }
                // Third: Range ignored, the whole blob again.
                (_, Some(_)) => Resp::new(200).body(body.clone()),
                _ => Resp::new(500),
            }
        });
        let c = client(&format!("127.0.0.1:{}", srv.port));
        let mut out = Vec::new();
        c.fetch_blob(
            "test/img",
            &digest,
            Some(blob.len() as u64),
            0,
            Hasher::new(),
            &mut out,
            &mut |_| {},
        )
        .expect("resumed download");
        assert_eq!(out, blob);
        let ranges: Vec<Option<String>> = srv
            .requests()
            .iter()
            .map(|r| r.header("range").map(str::to_string))
            .collect();
        assert_eq!(
            ranges,
            [
                None,
                Some("bytes=70000-".to_string()),
                Some("bytes=120000-".to_string())
            ]
        );
    }

    #[test]
    fn parallel_downloads() {
        let reg = Registry::start();
        let layout = build_layout("v1", &["amd64"], 4, 100_000);
        push(&layout, &reg.host(), "test/img", None);
        let im = &layout.images[0];
        let c = client(&reg.host());

        let mut blobs: Vec<(Digest, u64)> = im
            .layers
            .iter()
            .map(|(d, b)| (d.clone(), b.len() as u64))
            .collect();
        blobs.push((im.config_digest.clone(), im.config.len() as u64));
        blobs.push(blobs[0].clone()); // listed twice, fetched once

        let store: Mutex<HashMap<Digest, SharedBuf>> = Mutex::default();
        let opened = Arc::new(Mutex::new(Vec::new()));
        let open_sink = |d: &Digest| -> Result<Box<dyn Write + Send>, RegistryError> {
            opened.lock().unwrap().push(d.clone());
            let buf = Arc::new(Mutex::new(Vec::new()));
            store.lock().unwrap().insert(d.clone(), buf.clone());
            Ok(Box::new(SharedVec(buf)))
        };
        let progress_seen = Mutex::new(HashMap::<Digest, u64>::new());
        let progress = |d: &Digest, n: u64| {
            progress_seen.lock().unwrap().insert(d.clone(), n);
        };
        fetch_blobs_parallel(&c, "test/img", &blobs, 3, &open_sink, &progress).expect("parallel");
        assert_eq!(opened.lock().unwrap().len(), 5);
        let store = store.lock().unwrap();
        for (d, b) in &im.layers {
            assert_eq!(&*store[d].lock().unwrap(), b);
            assert_eq!(progress_seen.lock().unwrap()[d], b.len() as u64);
        }
        assert_eq!(*store[&im.config_digest].lock().unwrap(), im.config);

        // One missing blob fails the whole set with its name.
        let missing = Digest::of(b"missing");
        let mut bad = blobs.clone();
        bad.insert(1, (missing.clone(), 10));
        let e = fetch_blobs_parallel(
            &c,
            "test/img",
            &bad,
            2,
            &|_| Ok(Box::new(std::io::sink())),
            &|_, _| {},
        )
        .unwrap_err();
        assert!(matches!(e, RegistryError::NotFound { .. }), "{e:?}");
        assert!(e.to_string().contains(&missing.to_string()), "{e}");
    }

    type SharedBuf = Arc<Mutex<Vec<u8>>>;

    struct SharedVec(SharedBuf);

    impl Write for SharedVec {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
