//! HTTP/3 on an HTTPS listener whose ClientTrafficPolicy says `http3: {}` (the corpus's
//! envoy.yaml does). Debian's curl has no HTTP/3, so the client is `gateway::h3::Client`,
//! built from the same crates (quinn, h3); curl checks the `alt-svc` of HTTP/1.1 and HTTP/2.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness;

/// `htpasswd -nbs alice secret`
const HTPASSWD: &str = "alice:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=";

fn indent(pem: &str) -> String {
    pem.lines().map(|l| format!("    {l}\n")).collect()
}

fn manifests(cert: &rcgen::CertifiedKey<rcgen::KeyPair>, held: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: site-tls, namespace: gateway-conformance-infra}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {{name: users, namespace: gateway-conformance-infra}}\nstringData:\n  .htpasswd: \"{HTPASSWD}\"\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: edge, namespace: gateway-conformance-infra}}\nspec:\n  gatewayClassName: trellis\n  listeners:\n\
         \x20   - {{name: https, protocol: HTTPS, port: 443, allowedRoutes: {{namespaces: {{from: All}}}}, tls: {{certificateRefs: [{{name: site-tls}}]}}}}\n---\n\
         apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: ClientTrafficPolicy\nmetadata: {{name: quic, namespace: gateway-conformance-infra}}\n\
         spec:\n  targetRefs: [{{group: gateway.networking.k8s.io, kind: Gateway, name: edge}}]\n  http3: {{}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: app, namespace: gateway-conformance-infra}}\nspec:\n  parentRefs: [{{name: edge}}]\n  hostnames: [app.example.com]\n  rules: [{{backendRefs: [{{name: infra-backend-v1, port: 8080}}]}}]\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: secure, namespace: gateway-conformance-infra}}\nspec:\n  parentRefs: [{{name: edge}}]\n  hostnames: [secure.example.com]\n  rules: [{{backendRefs: [{{name: infra-backend-v2, port: 8080}}]}}]\n---\n\
         apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: SecurityPolicy\nmetadata: {{name: secure, namespace: gateway-conformance-infra}}\n\
         spec:\n  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: secure}}]\n  basicAuth:\n    users: {{name: users}}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: held, namespace: gateway-conformance-infra}}\nspec: {{ports: [{{name: http, port: 8080}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: held, namespace: gateway-conformance-infra, labels: {{kubernetes.io/service-name: held}}}}\naddressType: IPv4\nports: [{{name: http, port: {held}}}]\nendpoints: [{{addresses: [127.0.0.1]}}]\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: held, namespace: gateway-conformance-infra}}\nspec:\n  parentRefs: [{{name: edge}}]\n  hostnames: [held.example.com]\n  rules: [{{backendRefs: [{{name: held, port: 8080}}]}}]\n---\n",
        indent(&cert.cert.pem()),
        indent(&cert.signing_key.serialize_pem())
    )
}

fn get(client: &gateway::h3::Client, host: &str, path: &str) -> http::Request<Bytes> {
    http::Request::get(client.uri(path).replace("app.example.com", host))
        .body(Bytes::new())
        .expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_serves_the_same_routes_and_policies_and_drains() {
    let dir = tempfile::tempdir().expect("tmp");
    let cert = rcgen::generate_simple_self_signed(vec!["*.example.com".to_string()]).expect("cert");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, cert.cert.pem()).expect("write");
    let backends = harness::start_backends().await;
    let held = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let held_port = held.local_addr().expect("addr").port();
    let load = harness::load(
        dir.path(),
        &[
            ("base.yaml", &harness::base_manifests(&backends)),
            ("case.yaml", &manifests(&cert, held_port)),
        ],
    );
    // The policy is accepted, with no Supported=False about HTTP/3 any more.
    let key = model::ObjectKey::new(
        "gateway.envoyproxy.io",
        "ClientTrafficPolicy",
        "gateway-conformance-infra",
        "quic",
    );
    let conditions = format!("{:?}", load.snapshot.status[&key].conditions);
    assert!(
        conditions.contains("Accepted") && !conditions.contains("False"),
        "{conditions}"
    );
    let (running, metrics) = harness::start_gateway(
        dir.path(),
        &backends,
        &manifests(&cert, held_port),
        "edge",
        &[443],
        gateway::Bind::default(),
    )
    .await;
    let tcp = running.bound[&443];
    let quic = running.bound_http3()[&443];
    assert_eq!(
        tcp, quic,
        "HTTP/3 is served on the TCP side's address and port"
    );

    // HTTP/1.1 (own path) and HTTP/2 (hyper's) advertise HTTP/3 on the listener's port.
    let port = tcp.port();
    let ca_path = ca.display().to_string();
    let advertised = tokio::task::spawn_blocking(move || {
        [("--http1.1", "/hello"), ("--http2", "/hello")]
            .iter()
            .map(|(flag, path)| {
                let (head, _) = harness::curl(&[
                    flag,
                    "--cacert",
                    &ca_path,
                    "--resolve",
                    &format!("app.example.com:{port}:127.0.0.1"),
                    &format!("https://app.example.com:{port}{path}"),
                ]);
                head
            })
            .collect::<Vec<_>>()
    })
    .await
    .expect("curl");
    for head in &advertised {
        assert!(
            head.contains("alt-svc: h3=\":443\"; ma=86400"),
            "no alt-svc in {head}"
        );
    }

    let client = gateway::h3::Client::connect(
        quic,
        "app.example.com",
        &[cert.cert.der().clone()],
        Duration::from_secs(10),
    )
    .await
    .expect("QUIC handshake");
    // A request routed as on the other transports.
    let resp = client
        .request(get(&client, "app.example.com", "/hello?x=1"))
        .await
        .expect("h3 request");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_3);
    assert!(resp.headers().get("alt-svc").is_none());
    let seen: serde_json::Value = serde_json::from_slice(resp.body()).expect("echo json");
    assert_eq!(seen["backend"], "infra-backend-v1");
    assert_eq!(seen["path"], "/hello");
    assert_eq!(seen["query"], "x=1");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
    assert_eq!(seen["protocol"], "HTTP/1.1", "upstream is HTTP/1.1");
    // A body larger than the one read whole, and requests at once on one connection.
    let big = Bytes::from(vec![b'a'; 200 * 1024]);
    let mut at_once = Vec::new();
    for i in 0..8 {
        let c = client.clone();
        let body = big.clone();
        at_once.push(tokio::spawn(async move {
            let req = http::Request::post(c.uri(&format!("/upload/{i}")))
                .body(body)
                .expect("request");
            c.request(req).await.map(|r| (r.status(), r.into_body()))
        }));
    }
    for (i, t) in at_once.into_iter().enumerate() {
        let (status, body) = t.await.expect("task").expect("upload");
        assert_eq!(status, 200);
        let seen: serde_json::Value = serde_json::from_slice(&body).expect("echo json");
        assert_eq!(seen["path"], format!("/upload/{i}"));
        assert_eq!(seen["method"], "POST");
    }
    // The SecurityPolicy applies on HTTP/3 as on the other transports.
    let resp = client
        .request(get(&client, "secure.example.com", "/"))
        .await
        .expect("h3 request");
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().contains_key("www-authenticate"));
    let mut req = get(&client, "secure.example.com", "/");
    req.headers_mut().insert(
        http::header::AUTHORIZATION,
        http::HeaderValue::from_static("Basic YWxpY2U6c2VjcmV0"),
    );
    let resp = client.request(req).await.expect("h3 request");
    assert_eq!(resp.status(), 200);
    let seen: serde_json::Value = serde_json::from_slice(resp.body()).expect("echo json");
    assert_eq!(seen["backend"], "infra-backend-v2");
    // No route: 404 from the gateway.
    let resp = client
        .request(get(&client, "other.example.com", "/"))
        .await
        .expect("h3 request");
    assert_eq!(resp.status(), 404);
    assert!(metrics.http3_connections.get() >= 1);

    // A drain lets the request in flight finish, then the connection ends. The request is
    // held by a backend of the test's own until the drain has begun.
    let slow = {
        let c = client.clone();
        tokio::spawn(async move {
            c.request(get(&c, "held.example.com", "/held"))
                .await
                .map(|r| (r.status(), r.into_body()))
        })
    };
    let (mut upstream, _) = tokio::time::timeout(Duration::from_secs(10), held.accept())
        .await
        .expect("the request reaches the held backend")
        .expect("accept");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        upstream.read_exact(&mut b).await.expect("request head");
        head.push(b[0]);
    }
    let drain = tokio::spawn(running.drain(Duration::from_secs(20)));
    // The drain has begun once the connection refuses new requests (GOAWAY).
    let mut refused = false;
    for _ in 0..500 {
        if client
            .request(get(&client, "app.example.com", "/"))
            .await
            .is_err()
        {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "the drain never refused a new request");
    upstream
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nheld")
        .await
        .expect("answer");
    let (status, body) = slow.await.expect("task").expect("held request answered");
    assert_eq!((status.as_u16(), &body[..]), (200, &b"held"[..]));
    assert!(
        drain.await.expect("drain task"),
        "every connection closed in time"
    );
}

/// HTTP/3 asked for together with TLS capped at 1.2 cannot be served (QUIC is TLS 1.3): the
/// policy says so in its Supported condition, the plan serves no QUIC, and HTTPS goes on.
#[tokio::test]
async fn http3_with_tls_capped_at_1_2_is_reported_and_not_served() {
    let dir = tempfile::tempdir().expect("tmp");
    let cert = rcgen::generate_simple_self_signed(vec!["*.example.com".to_string()]).expect("cert");
    let backends = harness::start_backends().await;
    let capped = manifests(&cert, 1).replace(
        "  http3: {}\n",
        "  http3: {}\n  tls: {maxVersion: \"1.2\"}\n",
    );
    assert!(capped.contains("maxVersion"));
    let load = harness::load(
        dir.path(),
        &[
            ("base.yaml", &harness::base_manifests(&backends)),
            ("case.yaml", &capped),
        ],
    );
    let key = model::ObjectKey::new(
        "gateway.envoyproxy.io",
        "ClientTrafficPolicy",
        "gateway-conformance-infra",
        "quic",
    );
    let supported = load.snapshot.status[&key]
        .conditions
        .iter()
        .find(|c| c.type_ == "Supported")
        .map(|c| (format!("{:?}", c.status), c.message.clone()));
    let (status, message) = supported.expect("a Supported condition");
    assert_eq!(status, "False");
    assert!(message.contains("QUIC needs TLS 1.3"), "{message}");
    let plan = gateway::compile(&load.snapshot, "gateway-conformance-infra", "edge").expect("plan");
    let Some(gateway::plan::Listen::Tls(t)) = plan.ports.get(&443) else {
        panic!("port 443 serves HTTPS");
    };
    assert!(t.http3.is_none() && t.config.is_some());
    assert!(t.router.alt_svc.is_none());
    assert!(
        plan.problems
            .iter()
            .any(|(k, why)| k == &key && why.contains("spec.http3")),
        "{:?}",
        plan.problems
    );
}
