//! Envoy Gateway policies on real traffic: BackendTrafficPolicy retries and timeouts,
//! passive ejection of endpoints that refuse connections.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use crate::harness;

async fn get(addr: std::net::SocketAddr, method: &str, path: &str, body: &'static str) -> u16 {
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("request");
    let resp = harness::client().request(req).await.expect("answer");
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_timeouts_and_ejection() {
    let backends = harness::start_backends().await;
    let live = backends.0["gateway-conformance-infra/infra-backend-v1"].clone();
    // A port nothing listens on: connections are refused.
    let (_held, dead) = harness::refusing_port();
    let manifests = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: gateway-conformance-infra}}\n\
         spec:\n  parentRefs: [{{name: same-namespace}}]\n  rules:\n    - backendRefs: [{{name: flaky, port: 8080}}]\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: flaky, namespace: gateway-conformance-infra}}\nspec: {{ports: [{{name: http, port: 8080}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: flaky-a, namespace: gateway-conformance-infra, labels: {{kubernetes.io/service-name: flaky}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: {dead}}}]\nendpoints: [{{addresses: [127.0.0.2]}}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: flaky-b, namespace: gateway-conformance-infra, labels: {{kubernetes.io/service-name: flaky}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: {live}}}]\nendpoints: [{{addresses: [127.0.0.1]}}]\n---\n\
         apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: BackendTrafficPolicy\nmetadata: {{name: p, namespace: gateway-conformance-infra}}\n\
         spec:\n  targetSelectors: [{{group: gateway.networking.k8s.io, kind: Gateway}}]\n  retry:\n    numRetries: 2\n    retryOn: {{triggers: [5xx, reset]}}\n    perRetry: {{backOff: {{baseInterval: 1ms, maxInterval: 5ms}}}}\n\
         \x20 timeout: {{http: {{requestTimeout: 1s}}}}\n",
        live = live.addr.port()
    );
    let (_, running) = harness::serve(&backends, &manifests, Arc::default()).await;
    let addr = running.bound[&80];

    // One endpoint refuses connections: every request still succeeds (the request was not
    // sent, so the next endpoint is tried), and the dead endpoint is then skipped.
    for i in 0..20 {
        assert_eq!(get(addr, "GET", &format!("/ok/{i}"), "").await, 200);
    }

    // 5xx with a retry policy: an idempotent request is sent 1 + numRetries times.
    assert_eq!(get(addr, "GET", "/status/503", "").await, 503);
    let tries = live
        .seen()
        .iter()
        .filter(|s| s.path == "/status/503")
        .count();
    assert_eq!(tries, 3, "GET tried once and retried twice");

    // A request with a body is never sent twice.
    assert_eq!(get(addr, "POST", "/status/500", "payload").await, 500);
    assert_eq!(
        live.seen()
            .iter()
            .filter(|s| s.path == "/status/500")
            .count(),
        1
    );

    // The policy's request timeout (1 s) cuts a slow backend off with 504.
    assert_eq!(get(addr, "GET", "/slow?delay=3s", "").await, 504);
    running.stop().await;
}
