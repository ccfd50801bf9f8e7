//! SecurityPolicy extAuth over HTTP, against a forward-auth service in the shape of
//! Authentik's Envoy outpost: a login redirect when there is no session, identity headers
//! for the backend when there is one.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::harness;

/// Starts the auth service; returns its address and the paths it was asked about.
async fn auth_service() -> (std::net::SocketAddr, Arc<Mutex<Vec<(String, String)>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let asked = Arc::new(Mutex::new(Vec::new()));
    let log = asked.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let log = log.clone();
                        async move {
                            let cookie = req
                                .headers()
                                .get("cookie")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_string();
                            log.lock().expect("log").push((
                                req.uri().to_string(),
                                req.headers()
                                    .get("x-forwarded-proto")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("")
                                    .to_string(),
                            ));
                            let r = if cookie.contains("session=good") {
                                http::Response::builder()
                                    .status(200)
                                    .header("x-authentik-username", "alice")
                                    .header("x-not-forwarded", "secret")
                                    .body(Full::new(Bytes::new()))
                            } else {
                                http::Response::builder()
                                    .status(302)
                                    .header("location", "https://auth.example.com/login")
                                    .body(Full::new(Bytes::from_static(b"login")))
                            };
                            Ok::<_, Infallible>(r.expect("response"))
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, asked)
}

async fn get(
    addr: std::net::SocketAddr,
    host: &str,
    cookie: Option<&str>,
) -> (u16, http::HeaderMap, String) {
    let mut b =
        http::Request::get(format!("http://{addr}/app/x?y=1")).header(http::header::HOST, host);
    if let Some(c) = cookie {
        b = b.header("cookie", c);
    }
    let resp = harness::client()
        .request(b.body(Full::new(Bytes::new())).expect("request"))
        .await
        .expect("answer");
    let (parts, body) = resp.into_parts();
    (
        parts.status.as_u16(),
        parts.headers,
        String::from_utf8_lossy(&body.collect().await.expect("body").to_bytes()).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext_auth_allows_denies_and_fails_closed_or_open() {
    let backends = harness::start_backends().await;
    let (auth_addr, asked) = auth_service().await;
    let (_held, dead) = harness::refusing_port();
    let mut manifests = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: security}}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: authentik-server, namespace: security}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: ak, namespace: security, labels: {{kubernetes.io/service-name: authentik-server}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: {}}}]\nendpoints: [{{addresses: [127.0.0.1]}}]\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: down, namespace: security}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: down, namespace: security, labels: {{kubernetes.io/service-name: down}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: {dead}}}]\nendpoints: [{{addresses: [127.0.0.1]}}]\n---\n\
         apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {{name: from-infra, namespace: security}}\n\
         spec:\n  from: [{{group: gateway.envoyproxy.io, kind: SecurityPolicy, namespace: gateway-conformance-infra}}]\n  to: [{{group: \"\", kind: Service}}]\n---\n",
        auth_addr.port()
    );
    for (name, service, fail_open) in [
        ("guarded", "authentik-server", false),
        ("closed", "down", false),
        ("open", "down", true),
    ] {
        manifests.push_str(&format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: gateway-conformance-infra}}\n\
             spec:\n  parentRefs: [{{name: same-namespace}}]\n  hostnames: [{name}.example.com]\n  rules: [{{backendRefs: [{{name: infra-backend-v1, port: 8080}}]}}]\n---\n\
             apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: SecurityPolicy\nmetadata: {{name: {name}, namespace: gateway-conformance-infra}}\n\
             spec:\n  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: {name}}}]\n  extAuth:\n    failOpen: {fail_open}\n    headersToExtAuth: [X-Forwarded-Proto, cookie]\n\
             \x20   http:\n      backendRefs: [{{name: {service}, namespace: security, port: 80}}]\n      path: /outpost.goauthentik.io/auth/envoy\n      headersToBackend: [X-authentik-username, Set-Cookie]\n---\n"
        ));
    }
    let metrics = Arc::new(gateway::metrics::Metrics::default());
    let (plan, running) = harness::serve(&backends, &manifests, metrics.clone()).await;
    assert!(plan.problems.is_empty(), "{:?}", plan.problems);
    let addr = running.bound[&80];
    let echo = backends.0["gateway-conformance-infra/infra-backend-v1"].clone();

    // No session: the auth service's redirect goes back to the client; the backend is not asked.
    let (status, headers, body) = get(addr, "guarded.example.com", None).await;
    assert_eq!((status, body.as_str()), (302, "login"));
    assert_eq!(
        headers.get("location").map(|v| v.to_str().unwrap_or("")),
        Some("https://auth.example.com/login")
    );
    assert!(echo.seen().is_empty());
    // The check went to the policy's path with the request's path and query appended.
    assert_eq!(
        asked.lock().expect("log")[0],
        (
            "/outpost.goauthentik.io/auth/envoy/app/x?y=1".to_string(),
            "http".to_string()
        )
    );

    // A session: allowed; the backend gets the identity header, not the others.
    let (status, _, body) = get(addr, "guarded.example.com", Some("session=good")).await;
    assert_eq!(status, 200, "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).expect("echo json");
    assert_eq!(seen["headers"]["x-authentik-username"], "alice");
    assert!(seen["headers"]["x-not-forwarded"].is_null());

    // The auth service is down: closed answers 403, open lets the request through.
    assert_eq!(
        get(addr, "closed.example.com", Some("session=good"))
            .await
            .0,
        403
    );
    assert_eq!(get(addr, "open.example.com", None).await.0, 200);

    // Every counter is exported.
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    for name in [
        "trellis_gateway_rq_total",
        "trellis_gateway_ext_authz_denied_total",
        "trellis_gateway_ext_authz_error_total",
        "trellis_gateway_lua_errors_total",
        "trellis_gateway_compressor_compressed_total",
        "trellis_gateway_upstream_rq_retry_total",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    assert!(
        text.contains("trellis_gateway_ext_authz_denied_total 1"),
        "{text}"
    );
    running.stop().await;
}

/// The gRPC authorization server process (`tests/ext_authz_server.py`), killed when dropped.
struct GrpcAuth(std::process::Child, u16);

impl Drop for GrpcAuth {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn grpc_auth_server() -> GrpcAuth {
    use std::io::BufRead;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ext_authz_server.py");
    let mut child = std::process::Command::new("python3")
        .arg(script)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs (grpcio and grpcio-tools installed by cargo xtask test)");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the server prints its port");
    let port = line.trim().parse().unwrap_or_else(|_| {
        let _ = child.kill();
        panic!("the gRPC authorization server did not start (printed {line:?})")
    });
    GrpcAuth(child, port)
}

/// SecurityPolicy extAuth over gRPC (`envoy.service.auth.v3.Authorization/Check`) against a
/// grpcio server: allowed requests reach the backend with the server's header edits, denials
/// come back with the server's status, headers and body, and a server that is down refuses
/// (or lets through with failOpen).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_ext_auth_allows_denies_and_fails_closed() {
    let server = grpc_auth_server();
    let backends = harness::start_backends().await;
    let (_held, dead) = harness::refusing_port();
    let dead = std::net::SocketAddr::from(([127, 0, 0, 1], dead));
    let mut manifests = harness::service(
        "gateway-conformance-infra",
        "authz",
        std::net::SocketAddr::from(([127, 0, 0, 1], server.1)),
    );
    manifests.push_str(&harness::service(
        "gateway-conformance-infra",
        "authz-down",
        dead,
    ));
    for (name, service, fail_open) in [("grpc", "authz", false), ("grpcdown", "authz-down", false)]
    {
        manifests.push_str(&format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: gateway-conformance-infra}}\n\
             spec:\n  parentRefs: [{{name: same-namespace}}]\n  hostnames: [{name}.example.com]\n  rules: [{{backendRefs: [{{name: infra-backend-v1, port: 8080}}]}}]\n---\n\
             apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: SecurityPolicy\nmetadata: {{name: {name}, namespace: gateway-conformance-infra}}\n\
             spec:\n  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: {name}}}]\n  extAuth:\n    failOpen: {fail_open}\n\
             \x20   grpc:\n      backendRefs: [{{name: {service}, port: 8080}}]\n---\n"
        ));
    }
    let metrics = Arc::new(gateway::metrics::Metrics::default());
    let (plan, running) = harness::serve(&backends, &manifests, metrics.clone()).await;
    assert!(plan.problems.is_empty(), "{:?}", plan.problems);
    let addr = running.bound[&80];
    let echo = backends.0["gateway-conformance-infra/infra-backend-v1"].clone();
    tokio::task::spawn_blocking(move || {
        let url = |p: &str| format!("http://{addr}{p}");
        for proto in ["--http1.1", "--http2-prior-knowledge"] {
            let (head, body) = harness::curl(&[
                proto,
                "-H",
                "Host: grpc.example.com",
                "-H",
                "Authorization: Bearer good",
                &url("/x?y=1"),
            ]);
            assert!(head.contains(" 200"), "{head}");
            let seen: serde_json::Value = serde_json::from_slice(&body).expect("echo json");
            assert_eq!(seen["headers"]["x-user"], "alice", "{seen}");
            assert!(
                seen["headers"].get("authorization").is_none(),
                "removed: {seen}"
            );
            assert_eq!(
                seen["headers"]["x-checked"], "GET /x?y=1 grpc.example.com 127.0.0.1",
                "what the server was told"
            );
            let before = echo.seen().len();
            let (head, body) =
                harness::curl(&[proto, "-H", "Host: grpc.example.com", &url("/teapot")]);
            assert!(
                head.contains(" 418") && head.contains("x-why: tea"),
                "{head}"
            );
            assert_eq!(String::from_utf8_lossy(&body), "short and stout");
            let (head, body) = harness::curl(&[proto, "-H", "Host: grpc.example.com", &url("/x")]);
            assert!(head.contains(" 401"), "{head}");
            assert_eq!(String::from_utf8_lossy(&body), "no");
            assert_eq!(
                echo.seen().len(),
                before,
                "denied requests do not reach the backend"
            );
            let (head, _) = harness::curl(&[
                proto,
                "-H",
                "Host: grpcdown.example.com",
                "-H",
                "Authorization: Bearer good",
                &url("/x"),
            ]);
            assert!(
                head.contains(" 403"),
                "an unreachable service refuses: {head}"
            );
        }
    })
    .await
    .expect("requests");
    assert_eq!(metrics.ext_auth_denied.get(), 4);
    running.stop().await;
    drop(server);
}
