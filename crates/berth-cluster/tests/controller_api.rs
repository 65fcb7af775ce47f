//! The controller's HTTPS API on loopback, backed by the embedded store: mutual TLS with
//! the cluster CA only, join with and without the token, agents acting only as themselves, CAS on containers, bad requests
//! that change nothing, watch from a revision, and a compacted watch answered with 410,
//! removing a host.

#[allow(dead_code)] // shared with the store suites, which use all of it
mod store_support;

use std::sync::Arc;
use std::time::Duration;

use berth_cluster::controller::leader::LeaderConfig;
use berth_cluster::controller::seal::Seal;
use berth_cluster::controller::{api, pki, serve, state};
use berth_cluster::model::Cluster;
use berth_cluster::store::Store;
use futures_util::StreamExt;
use serde_json::{json, Value};
use store_support::Harness;

struct Ctl {
    _h: Harness,
    store: Arc<dyn Store>,
    base: String,
    server: tokio::task::JoinHandle<()>,
    join_token: String,
    ca_pem: String,
    /// No client certificate: may only join or read the API description.
    anon: reqwest::Client,
    admin: reqwest::Client,
}

impl Drop for Ctl {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn controller() -> Ctl {
    let h = Harness::embedded().await;
    let store = h.store();
    state::init(
        store.as_ref(),
        &Cluster {
            cidr: "10.244.0.0/16".parse().unwrap(),
            block_prefix: 24,
            vni: 1,
            vxlan_port: 4789,
            heartbeat_timeout_ms: 60_000,
        },
    )
    .await
    .unwrap();
    let join_token = berth_cluster::controller::auth::random_token().unwrap();
    let seal = Arc::new(Seal::generate().unwrap());
    assert!(api::init_secrets(store.as_ref(), &join_token, &seal)
        .await
        .ok()
        .unwrap());
    let ca = api::ca(store.as_ref(), Some(&seal)).await.ok().unwrap();
    let admin = api::issue_admin(store.as_ref(), Some(&seal))
        .await
        .ok()
        .unwrap();
    let server_cert =
        pki::issue(&ca, "controller", pki::Role::Server(&["127.0.0.1".into()])).unwrap();
    let tls = berth_cluster::tls::server_config(
        &ca.cert_pem,
        &server_cert.cert_pem,
        &server_cert.key_pem,
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("https://{}", listener.local_addr().unwrap());
    let s = store.clone();
    let server = tokio::spawn(async move {
        let _ = serve::serve(listener, s, tls, LeaderConfig::new("test"), Some(seal)).await;
    });
    Ctl {
        _h: h,
        store,
        base,
        server,
        join_token,
        anon: client(&ca.cert_pem, None),
        admin: client(&ca.cert_pem, Some((&admin.cert_pem, &admin.key_pem))),
        ca_pem: ca.cert_pem,
    }
}

use store_support::tls_client as client;

impl Ctl {
    async fn call(
        &self,
        who: &reqwest::Client,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let mut req = who.request(method.parse().unwrap(), url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let code = r.status().as_u16();
        let v = r.json().await.unwrap_or(Value::Null);
        (code, v)
    }

    async fn join_with(&self, token: &str, body: Value) -> (u16, Value) {
        let r = self
            .anon
            .post(format!("{}/v1/join", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// Renews `name`'s certificate as `who`, for a fresh key: the answer, and a client
    /// with the new certificate if there is one.
    async fn renew(
        &self,
        who: &reqwest::Client,
        name: &str,
    ) -> (u16, Value, Option<reqwest::Client>) {
        let (key, csr) = pki::new_csr("whatever").unwrap();
        let (code, v) = self
            .call(
                who,
                "POST",
                &format!("/v1/hosts/{name}/certificate"),
                Some(json!({"csr": csr})),
            )
            .await;
        let c = v["certificate"]
            .as_str()
            .map(|cert| client(&self.ca_pem, Some((cert, &key))));
        (code, v, c)
    }

    /// Joins as `name` with a fresh key; the client carries the issued certificate.
    async fn join(&self, name: &str, last: u8) -> (Value, reqwest::Client) {
        let (key, csr) = pki::new_csr(name).unwrap();
        let (code, v) = self
            .join_with(
                &self.join_token,
                json!({"name": name, "underlay_ip": format!("192.0.2.{last}"),
                       "vtep_mac": format!("0a:58:c0:00:02:{last:02x}"), "csr": csr}),
            )
            .await;
        assert_eq!(code, 200, "{v}");
        let cert = v["certificate"].as_str().unwrap().to_string();
        let c = client(&self.ca_pem, Some((&cert, &key)));
        (v, c)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_needs_the_token_and_agents_act_only_as_themselves() {
    let c = controller().await;
    let (_, csr) = pki::new_csr("a").unwrap();
    let join_a = json!({"name": "a", "underlay_ip": "192.0.2.1", "vtep_mac": "0a:58:c0:00:02:01", "csr": csr});
    let (code, v) = c.join_with("wrong", join_a.clone()).await;
    assert_eq!(code, 401, "{v}");
    assert!(v["error"].as_str().unwrap().contains("join token"), "{v}");
    let (a, cred_a) = c.join("a", 1).await;
    let block_a: ipnet::Ipv4Net = a["host"]["blocks"][0].as_str().unwrap().parse().unwrap();
    let (_, cred_b) = c.join("b", 2).await;

    // Reads need a certificate the controller issued.
    let (code, v) = c.call(&c.anon, "GET", "/v1/hosts", None).await;
    assert_eq!(code, 401, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("client certificate"),
        "{v}"
    );
    let (code, hosts) = c.call(&cred_b, "GET", "/v1/hosts", None).await;
    assert_eq!(code, 200);
    assert_eq!(hosts["hosts"].as_array().unwrap().len(), 2);

    // a heartbeats itself; b can't heartbeat a.
    let hb = Some(json!({"applied_revision": 3}));
    let (code, _) = c
        .call(&cred_a, "PUT", "/v1/hosts/a/heartbeat", hb.clone())
        .await;
    assert_eq!(code, 200);
    let (code, v) = c.call(&cred_b, "PUT", "/v1/hosts/a/heartbeat", hb).await;
    assert_eq!(code, 403, "{v}");

    // Containers: a in its block; b may not write as a; CAS.
    let addr = std::net::Ipv4Addr::from(u32::from(block_a.network()) + 2).to_string();
    let body = json!({"host": "a", "addr": addr, "name": "web"});
    let (code, v) = c
        .call(&cred_b, "PUT", "/v1/containers/c1", Some(body.clone()))
        .await;
    assert_eq!(code, 403, "{v}");
    let (code, v) = c
        .call(&cred_a, "PUT", "/v1/containers/c1", Some(body.clone()))
        .await;
    assert_eq!(code, 200, "{v}");
    let rev = v["revision"].as_u64().unwrap();
    let (code, v) = c
        .call(&cred_a, "PUT", "/v1/containers/c1", Some(body.clone()))
        .await;
    assert_eq!(code, 409, "create of an existing record: {v}");
    let mut upd = body.clone();
    upd["expect_revision"] = json!(rev);
    upd["name"] = json!("web2");
    let put = |u: Value| c.call(&cred_a, "PUT", "/v1/containers/c1", Some(u));
    assert_eq!(put(upd.clone()).await.0, 200);
    assert_eq!(put(upd).await.0, 409);

    // Bad requests: 4xx, nothing changed.
    let before = c.store.revision().await.unwrap();
    let (code, v) = c
        .call(
            &cred_a,
            "PUT",
            "/v1/containers/c2",
            Some(json!({"host": "a", "addr": "10.9.9.9"})),
        )
        .await;
    assert_eq!(code, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("10.9.9.9"), "{v}");
    let (code, _) = c
        .call(
            &cred_a,
            "PUT",
            "/v1/containers/c2",
            Some(json!({"host": "a"})),
        )
        .await;
    assert!((400..500).contains(&code), "missing addr: {code}");
    let (_, csr) = pki::new_csr("x").unwrap();
    let (code, v) = c
        .join_with(
            &c.join_token,
            json!({"name": "bad name", "underlay_ip": "192.0.2.9", "vtep_mac": "0a:58:c0:00:02:09", "csr": csr}),
        )
        .await;
    assert_eq!(code, 400, "{v}");
    let mut bad_csr = join_a.clone();
    bad_csr["name"] = json!("c");
    bad_csr["csr"] =
        json!("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n");
    let (code, v) = c.join_with(&c.join_token, bad_csr).await;
    assert_eq!(code, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("certificate signing request"),
        "{v}"
    );
    assert_eq!(
        c.store.revision().await.unwrap(),
        before,
        "a bad request wrote"
    );

    // A re-join replaces the certificate: the old one, though validly signed, stops
    // working.
    let (a2, _) = c.join("a", 1).await;
    assert_eq!(a2["host"]["blocks"], a["host"]["blocks"]);
    let (code, v) = c.call(&cred_a, "GET", "/v1/hosts", None).await;
    assert_eq!(code, 401, "{v}");
    // The admin may delete anyone's container.
    assert_eq!(
        c.call(&c.admin, "DELETE", "/v1/containers/c1", None)
            .await
            .0,
        200
    );
    let (code, st) = c.call(&c.admin, "GET", "/v1/status", None).await;
    assert_eq!(code, 200);
    assert_eq!(st["hosts"].as_array().unwrap().len(), 2, "{st}");
    assert_eq!(
        c.call(&c.anon, "GET", "/v1/openapi.json", None).await.0,
        200
    );
}

/// `status` measures hosts against the map's latest change, not the store's revision:
/// heartbeats (and their own writes) don't make a host that applied everything look
/// behind; a new container does until the host reports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_measures_hosts_against_the_maps_latest_change() {
    let c = controller().await;
    let (joined, cred) = c.join("a", 1).await;
    let block = joined["host"]["blocks"][0].as_str().unwrap().to_string();
    let beat = |applied: u64| {
        let cred = &cred;
        let c = &c;
        async move {
            let body = json!({ "applied_revision": applied });
            let (code, v) = c
                .call(cred, "PUT", "/v1/hosts/a/heartbeat", Some(body))
                .await;
            assert_eq!(code, 200, "{v}");
        }
    };
    let status = || async {
        let (code, st) = c.call(&c.admin, "GET", "/v1/status", None).await;
        assert_eq!(code, 200, "{st}");
        st
    };
    // The follower catches up with the join in the background.
    let joined_at = c.store.get("/hosts/a").await.unwrap().unwrap().mod_revision;
    let mut st = Value::Null;
    for _ in 0..100 {
        beat(c.store.revision().await.unwrap()).await;
        st = status().await;
        if st["map_revision"].as_u64() >= Some(joined_at) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(st["map_revision"].as_u64() >= Some(joined_at), "{st}");
    assert_eq!(st["hosts"][0]["behind"], 0, "{st}");
    // Heartbeats move the store's revision, not the map's.
    let map = st["map_revision"].as_u64().unwrap();
    for _ in 0..3 {
        beat(map).await;
    }
    let st = status().await;
    assert!(st["revision"].as_u64().unwrap() >= map + 3, "{st}");
    assert_eq!(st["map_revision"].as_u64().unwrap(), map, "{st}");
    assert_eq!(st["hosts"][0]["behind"], 0, "{st}");

    // A container is a change: behind until the host reports its revision.
    let net: ipnet::Ipv4Net = block.parse().unwrap();
    let addr = std::net::Ipv4Addr::from(u32::from(net.network()) + 2).to_string();
    let (code, v) = c
        .call(
            &cred,
            "PUT",
            "/v1/containers/c1",
            Some(json!({"host": "a", "addr": addr, "name": "web"})),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    let added = v["revision"].as_u64().unwrap();
    let mut st = Value::Null;
    for _ in 0..100 {
        st = status().await;
        if st["map_revision"].as_u64() == Some(added) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(st["map_revision"].as_u64(), Some(added), "{st}");
    let applied = st["hosts"][0]["applied_revision"].as_u64().unwrap();
    assert!(applied < added, "{st}");
    assert_eq!(
        st["hosts"][0]["behind"].as_u64(),
        Some(added - applied),
        "{st}"
    );
    beat(added).await;
    assert_eq!(status().await["hosts"][0]["behind"], 0);
}

/// A host renews its own certificate with its current one: the new one works, the old
/// one is revoked; nobody else may renew it, and a bad CSR changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_renews_its_certificate_and_the_old_one_stops_working() {
    let c = controller().await;
    let (_, old) = c.join("a", 1).await;
    let (_, b) = c.join("b", 2).await;
    let (code, v, _) = c.renew(&b, "a").await;
    assert_eq!(code, 403, "{v}");
    let (code, v, _) = c.renew(&c.admin, "a").await;
    assert_eq!(code, 403, "{v}");
    let (code, v, _) = c.renew(&c.anon, "a").await;
    assert_eq!(code, 401, "{v}");
    let before = c.store.revision().await.unwrap();
    let (code, v) = c
        .call(
            &old,
            "POST",
            "/v1/hosts/a/certificate",
            Some(json!({"csr": "nonsense"})),
        )
        .await;
    assert_eq!(code, 400, "{v}");
    assert_eq!(c.store.revision().await.unwrap(), before, "a bad CSR wrote");
    assert_eq!(c.call(&old, "GET", "/v1/hosts", None).await.0, 200);

    let (code, v, new) = c.renew(&old, "a").await;
    assert_eq!(code, 200, "{v}");
    let new = new.unwrap();
    assert_eq!(c.call(&old, "GET", "/v1/hosts", None).await.0, 401);
    assert_eq!(
        c.call(
            &new,
            "PUT",
            "/v1/hosts/a/heartbeat",
            Some(json!({"applied_revision": 1}))
        )
        .await
        .0,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_removes_a_host_and_its_certificate_stops_working() {
    let c = controller().await;
    let (a, a_client) = c.join("a", 1).await;
    let (_, b_client) = c.join("b", 2).await;
    let block = a["host"]["blocks"][0].as_str().unwrap().to_string();
    let addr = block.replace(".0/24", ".5");
    let (code, v) = c
        .call(
            &a_client,
            "PUT",
            "/v1/containers/c1",
            Some(json!({"host": "a", "addr": addr})),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    let before = c.store.revision().await.unwrap();
    // Only the admin; an up host only with force; nothing changes until then.
    let (code, v) = c.call(&b_client, "DELETE", "/v1/hosts/a", None).await;
    assert_eq!(code, 403, "{v}");
    let (code, v) = c.call(&a_client, "DELETE", "/v1/hosts/a", None).await;
    assert_eq!(code, 403, "{v}");
    let (code, v) = c.call(&c.admin, "DELETE", "/v1/hosts/a", None).await;
    assert_eq!(code, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("is up"), "{v}");
    let (code, v) = c.call(&c.admin, "DELETE", "/v1/hosts/nobody", None).await;
    assert_eq!(code, 404, "{v}");
    let (code, v) = c.call(&c.admin, "DELETE", "/v1/hosts/a/x", None).await;
    assert!((400..500).contains(&code), "{code} {v}");
    assert_eq!(
        c.store.revision().await.unwrap(),
        before,
        "a refused removal wrote"
    );

    let (code, v) = c
        .call(&c.admin, "DELETE", "/v1/hosts/a?force=true", None)
        .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["host"]["blocks"][0], block.as_str());
    assert_eq!(v["containers"], json!(["c1"]));
    // a's certificate was revoked with it; b's still works and sees neither.
    let (code, _) = c
        .call(
            &a_client,
            "PUT",
            "/v1/hosts/a/heartbeat",
            Some(json!({"applied_revision": 1})),
        )
        .await;
    assert_eq!(code, 401);
    let (code, v) = c.call(&b_client, "GET", "/v1/hosts", None).await;
    assert_eq!(code, 200);
    let names: Vec<&str> = v["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["b"]);
    let (_, v) = c.call(&b_client, "GET", "/v1/containers", None).await;
    assert_eq!(v["containers"], json!([]));
    // The freed block goes to the next host that joins.
    let (d, _) = c.join("d", 4).await;
    assert_eq!(d["host"]["blocks"][0], block.as_str());
}

/// The CA's key is in the store only sealed: without the seal, or with another one,
/// nothing can be issued, and the errors say why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_key_is_stored_sealed() {
    let c = controller().await;
    let raw = c.store.get(api::CA_KEY).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&raw.value);
    assert!(!text.contains("PRIVATE KEY"), "{text}");
    assert!(text.contains("key_sealed"), "{text}");
    let e = api::ca(c.store.as_ref(), None).await.err().unwrap();
    assert!(e.message().contains("copy ca.seal"), "{}", e.message());
    let other = Seal::generate().unwrap();
    let e = api::ca(c.store.as_ref(), Some(&other)).await.err().unwrap();
    assert!(e.message().contains("does not open"), "{}", e.message());
    // The certificate alone needs no seal (for ca.crt).
    assert!(api::ca_cert(c.store.as_ref())
        .await
        .ok()
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
    // The controller's own seal works: a join is signed.
    c.join("a", 1).await;
}

/// A client certificate from another CA fails the handshake; a client that doesn't
/// trust the cluster CA can't talk to the controller; plain HTTP gets no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_cluster_ca_is_trusted_both_ways() {
    let c = controller().await;
    let other = pki::new_ca().unwrap();
    let stranger = pki::issue(&other, "admin", pki::Role::Client).unwrap();
    let rogue = client(&c.ca_pem, Some((&stranger.cert_pem, &stranger.key_pem)));
    let e = rogue.get(format!("{}/v1/hosts", c.base)).send().await;
    assert!(
        e.is_err(),
        "a certificate from another CA was accepted: {e:?}"
    );
    let distrusting = client(&other.cert_pem, None);
    let e = distrusting
        .get(format!("{}/v1/openapi.json", c.base))
        .send()
        .await;
    assert!(
        e.is_err(),
        "the controller's certificate was accepted by a foreign CA: {e:?}"
    );
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let r = plain
        .get(format!(
            "{}/v1/openapi.json",
            c.base.replace("https://", "http://")
        ))
        .send()
        .await;
    assert!(
        r.is_err() || !r.unwrap().status().is_success(),
        "plain HTTP was served"
    );
    // The legitimate admin still works on the same listener afterwards.
    assert_eq!(c.call(&c.admin, "GET", "/v1/hosts", None).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_changes_after_a_revision_and_410_after_compaction() {
    let c = controller().await;
    let (_, cred) = c.join("a", 1).await;
    let from = c.store.revision().await.unwrap();
    let resp = cred
        .get(format!("{}/v1/watch?from={from}", c.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut body = resp.bytes_stream();
    c.join("b", 2).await;
    // b's join writes its block and host record; the secret is never streamed.
    let mut seen = Vec::new();
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.iter().any(|l: &api::WatchLine| l.key == "/hosts/b") {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .expect("no watch line within 10 s")
            .expect("watch ended")
            .unwrap();
        buf.extend_from_slice(&chunk);
        while let Some(i) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            seen.push(serde_json::from_slice(&line).unwrap());
        }
    }
    assert!(seen.iter().all(|l| l.revision > from), "{seen:?}");
    assert!(
        seen.iter().all(|l| !l.key.starts_with("/secrets")),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|l| l.key.starts_with("/blocks/")),
        "{seen:?}"
    );
    let host = seen.iter().find(|l| l.key == "/hosts/b").unwrap();
    assert_eq!(host.value.as_ref().unwrap()["underlay_ip"], "192.0.2.2");

    // Compact past `from`: a watch from there is 410 with the compaction revision.
    let now = c.store.revision().await.unwrap();
    c.store.compact(now).await.unwrap();
    let (code, v) = c
        .call(&cred, "GET", &format!("/v1/watch?from={from}"), None)
        .await;
    assert_eq!(code, 410, "{v}");
    assert_eq!(v["compact_revision"].as_u64(), Some(now), "{v}");
}
