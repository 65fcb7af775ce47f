//! The controller's HTTP API on loopback, backed by the embedded store: join with and
//! without the token, agents acting only as themselves, CAS on containers, bad requests
//! that change nothing, watch from a revision, and a compacted watch answered with 410.

#[allow(dead_code)] // shared with the store suites, which use all of it
mod store_support;

use std::sync::Arc;
use std::time::Duration;

use berth_cluster::controller::leader::LeaderConfig;
use berth_cluster::controller::{api, serve, state};
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
    admin: String,
    http: reqwest::Client,
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
    let admin = berth_cluster::controller::auth::random_token().unwrap();
    assert!(api::init_secrets(store.as_ref(), &join_token, &admin)
        .await
        .ok()
        .unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let s = store.clone();
    let server = tokio::spawn(async move {
        let _ = serve::serve(listener, s, LeaderConfig::new("test")).await;
    });
    Ctl {
        _h: h,
        store,
        base,
        server,
        join_token,
        admin,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
    }
}

impl Ctl {
    async fn call(
        &self,
        method: &str,
        path: &str,
        cred: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .http
            .request(method.parse().unwrap(), url)
            .bearer_auth(cred);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let code = r.status().as_u16();
        let v = r.json().await.unwrap_or(Value::Null);
        (code, v)
    }

    async fn join(&self, name: &str, last: u8) -> (u16, Value) {
        self.call(
            "POST",
            "/v1/join",
            &self.join_token,
            Some(json!({"name": name, "underlay_ip": format!("192.0.2.{last}"), "vtep_mac": format!("0a:58:c0:00:02:{last:02x}")})),
        )
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_needs_the_token_and_agents_act_only_as_themselves() {
    let c = controller().await;
    let (code, v) = c
        .call(
            "POST",
            "/v1/join",
            "wrong",
            Some(json!({"name": "a", "underlay_ip": "192.0.2.1", "vtep_mac": "0a:58:c0:00:02:01"})),
        )
        .await;
    assert_eq!(code, 401, "{v}");
    assert!(v["error"].as_str().unwrap().contains("join token"), "{v}");
    let (code, a) = c.join("a", 1).await;
    assert_eq!(code, 200, "{a}");
    let cred_a = a["credential"].as_str().unwrap().to_string();
    let block_a: ipnet::Ipv4Net = a["host"]["blocks"][0].as_str().unwrap().parse().unwrap();
    let (_, b) = c.join("b", 2).await;
    let cred_b = b["credential"].as_str().unwrap().to_string();

    // Reads need a credential.
    assert_eq!(c.call("GET", "/v1/hosts", "nope", None).await.0, 401);
    let (code, hosts) = c.call("GET", "/v1/hosts", &cred_b, None).await;
    assert_eq!(code, 200);
    assert_eq!(hosts["hosts"].as_array().unwrap().len(), 2);

    // a heartbeats itself; b can't heartbeat a.
    let (code, _) = c
        .call(
            "PUT",
            "/v1/hosts/a/heartbeat",
            &cred_a,
            Some(json!({"applied_revision": 3})),
        )
        .await;
    assert_eq!(code, 200);
    let (code, v) = c
        .call(
            "PUT",
            "/v1/hosts/a/heartbeat",
            &cred_b,
            Some(json!({"applied_revision": 3})),
        )
        .await;
    assert_eq!(code, 403, "{v}");

    // Containers: a in its block; b may not write as a; CAS.
    let addr = std::net::Ipv4Addr::from(u32::from(block_a.network()) + 2).to_string();
    let body = json!({"host": "a", "addr": addr, "name": "web"});
    let (code, v) = c
        .call("PUT", "/v1/containers/c1", &cred_b, Some(body.clone()))
        .await;
    assert_eq!(code, 403, "{v}");
    let (code, v) = c
        .call("PUT", "/v1/containers/c1", &cred_a, Some(body.clone()))
        .await;
    assert_eq!(code, 200, "{v}");
    let rev = v["revision"].as_u64().unwrap();
    let (code, v) = c
        .call("PUT", "/v1/containers/c1", &cred_a, Some(body.clone()))
        .await;
    assert_eq!(code, 409, "create of an existing record: {v}");
    let mut upd = body.clone();
    upd["expect_revision"] = json!(rev);
    upd["name"] = json!("web2");
    assert_eq!(
        c.call("PUT", "/v1/containers/c1", &cred_a, Some(upd.clone()))
            .await
            .0,
        200
    );
    assert_eq!(
        c.call("PUT", "/v1/containers/c1", &cred_a, Some(upd))
            .await
            .0,
        409
    );

    // Bad requests: 4xx, nothing changed.
    let before = c.store.revision().await.unwrap();
    let (code, v) = c
        .call(
            "PUT",
            "/v1/containers/c2",
            &cred_a,
            Some(json!({"host": "a", "addr": "10.9.9.9"})),
        )
        .await;
    assert_eq!(code, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("10.9.9.9"), "{v}");
    let (code, _) = c
        .call(
            "PUT",
            "/v1/containers/c2",
            &cred_a,
            Some(json!({"host": "a"})),
        )
        .await;
    assert!((400..500).contains(&code), "missing addr: {code}");
    let (code, v) = c
        .call(
            "POST",
            "/v1/join",
            &c.join_token,
            Some(json!({"name": "bad name", "underlay_ip": "192.0.2.9", "vtep_mac": "0a:58:c0:00:02:09"})),
        )
        .await;
    assert_eq!(code, 400, "{v}");
    assert_eq!(
        c.store.revision().await.unwrap(),
        before,
        "a bad request wrote"
    );

    // A re-join replaces the credential: the old one stops working.
    let (_, a2) = c.join("a", 1).await;
    assert_eq!(a2["host"]["blocks"], a["host"]["blocks"]);
    assert_eq!(c.call("GET", "/v1/hosts", &cred_a, None).await.0, 401);
    // The admin may delete anyone's container.
    assert_eq!(
        c.call("DELETE", "/v1/containers/c1", &c.admin, None)
            .await
            .0,
        200
    );
    let (code, st) = c.call("GET", "/v1/status", &c.admin, None).await;
    assert_eq!(code, 200);
    assert_eq!(st["hosts"].as_array().unwrap().len(), 2, "{st}");
    assert_eq!(c.call("GET", "/v1/openapi.json", "", None).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_changes_after_a_revision_and_410_after_compaction() {
    let c = controller().await;
    let (_, a) = c.join("a", 1).await;
    let cred = a["credential"].as_str().unwrap().to_string();
    let from = c.store.revision().await.unwrap();
    let resp = c
        .http
        .get(format!("{}/v1/watch?from={from}", c.base))
        .bearer_auth(&cred)
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
        .call("GET", &format!("/v1/watch?from={from}"), &cred, None)
        .await;
    assert_eq!(code, 410, "{v}");
    assert_eq!(v["compact_revision"].as_u64(), Some(now), "{v}");
}
