//! GRPCRoute: service/method matching, and backends spoken to in HTTP/2.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use crate::harness;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_routes_match_methods_and_use_http2_upstream() {
    let backends = harness::start_backends().await;
    let manifests = "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g, namespace: gateway-conformance-infra}\n\
         spec:\n  parentRefs: [{name: same-namespace}]\n  hostnames: [grpc.example.com]\n  rules:\n\
         \x20   - matches: [{method: {service: pkg.Greeter, method: SayHello}}]\n      backendRefs: [{name: infra-backend-v1, port: 8080}]\n\
         \x20   - matches: [{method: {service: pkg.Greeter}}]\n      backendRefs: [{name: infra-backend-v2, port: 8080}]\n\
         \x20   - matches: [{method: {type: RegularExpression, service: \"pkg\\\\..*\", method: \"Get.*\"}}]\n      backendRefs: [{name: infra-backend-v3, port: 8080}]\n";
    let (plan, running) = harness::serve(&backends, manifests, Arc::default()).await;
    assert!(plan.problems.is_empty());
    let addr = running.bound[&80];
    let call = |path: &'static str| async move {
        let req = http::Request::post(format!("http://{addr}{path}"))
            .header(http::header::HOST, "grpc.example.com")
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
            .expect("request");
        let resp = harness::client().request(req).await.expect("answer");
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        (
            status,
            v["backend"].as_str().unwrap_or("").to_string(),
            v["protocol"].as_str().unwrap_or("").to_string(),
            v["headers"]["te"].as_str().unwrap_or("").to_string(),
        )
    };
    assert_eq!(
        call("/pkg.Greeter/SayHello").await,
        (
            200,
            "infra-backend-v1".into(),
            "HTTP/2.0".into(),
            "trailers".into()
        )
    );
    assert_eq!(
        call("/pkg.Greeter/SayBye").await.1,
        "infra-backend-v2",
        "service-only match"
    );
    assert_eq!(
        call("/pkg.Store/GetItem").await.1,
        "infra-backend-v3",
        "regular expression match"
    );
    assert_eq!(call("/other.Svc/Do").await.0, 404);
    running.stop().await;
}
