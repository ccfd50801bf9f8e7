//! Hot reload: a new plan swapped in while requests flow changes routing without failing any.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use crate::harness;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_plans_under_load_fails_no_request() {
    let backends = harness::start_backends().await;
    let base = harness::base_manifests(&backends);
    let route = |backend: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: gateway-conformance-infra}}\n\
             spec:\n  parentRefs: [{{name: same-namespace}}]\n  rules:\n    - backendRefs: [{{name: {backend}, port: 8080}}]\n"
        )
    };
    let dir = tempfile::tempdir().expect("tmp");
    let plans: Vec<gateway::Plan> = ["infra-backend-v1", "infra-backend-v2"]
        .iter()
        .map(|b| {
            let load = harness::load(
                dir.path(),
                &[("base.yaml", &base), ("case.yaml", &route(b))],
            );
            gateway::compile(
                &load.snapshot,
                "gateway-conformance-infra",
                "same-namespace",
            )
            .expect("compiles")
        })
        .collect();
    let bind = gateway::Bind {
        ip: Some("127.0.0.1".parse().expect("ip")),
        port_map: [(80, 0)].into(),
        ..Default::default()
    };
    let running = Arc::new(
        gateway::start(&plans[0], &bind, Arc::default())
            .await
            .expect("starts"),
    );
    let addr = running.bound[&80];
    let load_task = tokio::spawn(async move {
        let client = harness::client();
        let mut seen = std::collections::BTreeMap::<String, usize>::new();
        let mut failed = 0;
        for _ in 0..600 {
            let req = http::Request::get(format!("http://{addr}/"))
                .body(Full::new(Bytes::new()))
                .expect("request");
            match client.request(req).await {
                Ok(r) if r.status() == 200 => {
                    let body = r.into_body().collect().await.expect("body").to_bytes();
                    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
                    *seen
                        .entry(v["backend"].as_str().unwrap_or("?").to_string())
                        .or_default() += 1;
                }
                _ => failed += 1,
            }
        }
        (seen, failed)
    });
    for i in 0..50 {
        running.update(&plans[(i + 1) % 2]);
        tokio::task::yield_now().await;
    }
    let (seen, failed) = load_task.await.expect("load finished");
    assert_eq!(failed, 0, "requests failed during reloads: {seen:?}");
    // The last swap (i = 49) installed plan 0.
    let client = harness::client();
    let req = http::Request::get(format!("http://{addr}/"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let body = client
        .request(req)
        .await
        .expect("answer")
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("infra-backend-v1"));
}
