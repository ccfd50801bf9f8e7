//! The two HTTP/1.1 paths answer alike: the same raw requests (well formed, malformed and
//! request-smuggling shapes) go to a route served by trellis's own HTTP/1 path and to one
//! that only differs by a request timeout (which hands it to hyper's path); every answer —
//! the sequence of status codes on the connection, and what the backend was asked — must be
//! the same on both. And every transport answers well-formed requests alike: HTTP/1.1 (the
//! own path), HTTP/2 (curl) and HTTP/3 (`gateway::h3::Client`) on one HTTPS listener. HTTP/2's
//! malformed shapes (connection-specific fields, CR LF in a value, a body longer than its
//! length) go as raw frames, since no HTTP/2 client here will send them.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness;

/// `own.test` takes trellis's own path; `hyper.test` the general one (a timeout is not served
/// on the own path).
const MANIFESTS: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: own, namespace: gateway-conformance-infra}\n\
spec:\n  parentRefs: [{name: same-namespace}]\n  hostnames: [own.test]\n  rules:\n    - backendRefs: [{name: infra-backend-v1, port: 8080}]\n---\n\
apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: hyper, namespace: gateway-conformance-infra}\n\
spec:\n  parentRefs: [{name: same-namespace}]\n  hostnames: [hyper.test]\n  rules:\n    - backendRefs: [{name: infra-backend-v1, port: 8080}]\n      timeouts: {request: 1h}\n";

/// Requests with `HOST` where the host goes: name, bytes.
const CASES: &[(&str, &str)] = &[
    ("get", "GET /a?b=c HTTP/1.1\r\nHost: HOST\r\n\r\n"),
    (
        "post with a length",
        "POST /p HTTP/1.1\r\nHost: HOST\r\nContent-Length: 5\r\n\r\nhello",
    ),
    (
        "chunked",
        "POST /c HTTP/1.1\r\nHost: HOST\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ),
    (
        "pipelined",
        "GET /1 HTTP/1.1\r\nHost: HOST\r\n\r\nGET /2 HTTP/1.1\r\nHost: HOST\r\n\r\n",
    ),
    (
        "CL and TE",
        "POST /s HTTP/1.1\r\nHost: HOST\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: HOST\r\n\r\n",
    ),
    (
        "two lengths",
        "POST /d HTTP/1.1\r\nHost: HOST\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nhello",
    ),
    (
        "a length with a sign",
        "POST /d HTTP/1.1\r\nHost: HOST\r\nContent-Length: +5\r\n\r\nhello",
    ),
    (
        "obs-fold",
        "GET /f HTTP/1.1\r\nHost: HOST\r\nX-A: one\r\n two\r\n\r\n",
    ),
    (
        "a space before the colon",
        "GET /f HTTP/1.1\r\nHost: HOST\r\nX-A : one\r\n\r\n",
    ),
    (
        "TE not chunked last",
        "POST /t HTTP/1.1\r\nHost: HOST\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    ),
    (
        "bad chunk size",
        "POST /c HTTP/1.1\r\nHost: HOST\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    ),
    ("no host", "GET /h HTTP/1.1\r\n\r\n"),
    (
        "absolute form",
        "GET http://HOST/abs?x=1 HTTP/1.1\r\nHost: HOST\r\n\r\n",
    ),
    (
        "a NUL in a value",
        "GET /n HTTP/1.1\r\nHost: HOST\r\nX-A: a\0b\r\n\r\n",
    ),
    ("a bad method", "G(T /m HTTP/1.1\r\nHost: HOST\r\n\r\n"),
    ("HTTP/1.0", "GET /old HTTP/1.0\r\nHost: HOST\r\n\r\n"),
];

/// Sends `request` on a fresh connection, closes the sending side, reads everything: the
/// status codes in order, and for each 200 the method, path and query the echo saw.
async fn exchange(addr: std::net::SocketAddr, request: &str) -> Vec<String> {
    let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
    c.write_all(request.as_bytes()).await.expect("write");
    let _ = c.shutdown().await;
    let mut all = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut all)).await;
    let mut out = Vec::new();
    let mut rest = &all[..];
    while let Some(head_end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&rest[..head_end]).to_ascii_lowercase();
        let status = head.split_whitespace().nth(1).unwrap_or("?").to_string();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let body_end = (head_end + 4 + length).min(rest.len());
        let body = &rest[head_end + 4..body_end];
        match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(v) if status == "200" => {
                out.push(format!("200 {} {} {}", v["method"], v["path"], v["query"]));
            }
            _ => out.push(status),
        }
        rest = &rest[body_end..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_http1_paths_answer_every_request_alike() {
    let backends = harness::start_backends().await;
    let metrics = std::sync::Arc::new(gateway::metrics::Metrics::default());
    let (plan, running) = harness::serve(&backends, MANIFESTS, metrics.clone()).await;
    assert!(plan.problems.is_empty(), "{:?}", plan.problems);
    let addr = running.bound[&80];
    let mut differ = Vec::new();
    for (name, request) in CASES {
        let own = exchange(addr, &request.replace("HOST", "own.test")).await;
        let hyper = exchange(addr, &request.replace("HOST", "hyper.test")).await;
        eprintln!("{name}: {own:?}");
        if own != hyper {
            differ.push(format!("{name}: own path {own:?}, hyper's {hyper:?}"));
        }
    }
    assert!(
        metrics.h1_fast.get() > 0,
        "the own path served some of them (else the comparison proves nothing)"
    );
    assert!(
        differ.is_empty(),
        "the paths answer differently:\n{}",
        differ.join("\n")
    );
    // A body that does not parse is the client's error on both.
    let bad = CASES
        .iter()
        .find(|(n, _)| *n == "bad chunk size")
        .expect("case")
        .1;
    let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
    c.write_all(bad.replace("HOST", "hyper.test").as_bytes())
        .await
        .expect("write");
    let _ = c.shutdown().await;
    let mut all = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut all)).await;
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    running.stop().await;
}

/// Routes for the transports' comparison: a plain forward with a header added (the own path
/// serves it on HTTP/1.1), a redirect, a rewrite, a backend that does not exist.
fn transports_manifests(cert: &rcgen::CertifiedKey<rcgen::KeyPair>) -> String {
    let indent = |pem: &str| -> String { pem.lines().map(|l| format!("    {l}\n")).collect() };
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: site-tls, namespace: gateway-conformance-infra}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: edge, namespace: gateway-conformance-infra}}\nspec:\n  gatewayClassName: trellis\n  listeners:\n\
         \x20   - {{name: https, protocol: HTTPS, port: 443, allowedRoutes: {{namespaces: {{from: All}}}}, tls: {{certificateRefs: [{{name: site-tls}}]}}}}\n---\n\
         apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: ClientTrafficPolicy\nmetadata: {{name: quic, namespace: gateway-conformance-infra}}\n\
         spec:\n  targetRefs: [{{group: gateway.networking.k8s.io, kind: Gateway, name: edge}}]\n  http3: {{}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: plain, namespace: gateway-conformance-infra}}\nspec:\n  parentRefs: [{{name: edge}}]\n  hostnames: [plain.test]\n\
         \x20 rules: [{{filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {{add: [{{name: x-added, value: 'yes'}}]}}}}], backendRefs: [{{name: infra-backend-v1, port: 8080}}]}}]\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: redirect, namespace: gateway-conformance-infra}}\nspec:\n  parentRefs: [{{name: edge}}]\n  hostnames: [redirect.test]\n\
         \x20 rules: [{{filters: [{{type: RequestRedirect, requestRedirect: {{hostname: plain.test, statusCode: 301}}}}]}}]\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: rewrite, namespace: gateway-conformance-infra}}\nspec:\n  parentRefs: [{{name: edge}}]\n  hostnames: [rewrite.test]\n\
         \x20 rules: [{{matches: [{{path: {{type: PathPrefix, value: /old}}}}], filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /new}}}}}}], backendRefs: [{{name: infra-backend-v2, port: 8080}}]}}]\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: broken, namespace: gateway-conformance-infra}}\nspec:\n  parentRefs: [{{name: edge}}]\n  hostnames: [broken.test]\n  rules: [{{backendRefs: [{{name: no-such-service, port: 8080}}]}}]\n---\n",
        indent(&cert.cert.pem()),
        indent(&cert.signing_key.serialize_pem())
    )
}

/// Well-formed requests: method, host, path and query, body.
const TRANSPORT_CASES: &[(&str, &str, &str, &str)] = &[
    ("GET", "plain.test", "/a?b=c", ""),
    ("POST", "plain.test", "/p", "hello"),
    ("DELETE", "plain.test", "/d", ""),
    ("HEAD", "plain.test", "/h", ""),
    ("GET", "redirect.test", "/x?y=1", ""),
    ("GET", "rewrite.test", "/old/thing?q=1", ""),
    ("GET", "broken.test", "/", ""),
    ("GET", "nothing.test", "/", ""),
];

/// What is compared of an answer: the status, the Location, and what the echo backend was
/// asked (backend, method, path, query, the added header).
fn summary(status: u16, location: Option<&str>, body: &[u8]) -> String {
    let mut out = status.to_string();
    if let Some(l) = location {
        out.push_str(&format!(" -> {l}"));
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body)
        && status == 200
    {
        out.push_str(&format!(
            " {} {} {} {} x-added={}",
            v["backend"], v["method"], v["path"], v["query"], v["headers"]["x-added"]
        ));
    }
    out
}

/// HTTP/1.1 (the own path where the rule only forwards), HTTP/2 (hyper) and HTTP/3 give the same
/// answer to each well-formed request: they share one decision and one handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transport_answers_well_formed_requests_alike() {
    let dir = tempfile::tempdir().expect("tmp");
    // Every name (curl takes no wildcard directly under a top-level label).
    let names = ["plain", "redirect", "rewrite", "broken", "nothing"].map(|n| format!("{n}.test"));
    let cert = rcgen::generate_simple_self_signed(names.to_vec()).expect("cert");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, cert.cert.pem()).expect("write");
    let backends = harness::start_backends().await;
    let (running, metrics) = harness::start_gateway(
        dir.path(),
        &backends,
        &transports_manifests(&cert),
        "edge",
        &[443],
        gateway::Bind::default(),
    )
    .await;
    let port = running.bound[&443].port();
    let quic = running.bound_http3()[&443];
    let ca_path = ca.display().to_string();
    let tcp = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for flag in ["--http1.1", "--http2"] {
            let mut answers = Vec::new();
            for (method, host, path, body) in TRANSPORT_CASES {
                let url = format!("https://{host}:{port}{path}");
                let resolve = format!("{host}:{port}:127.0.0.1");
                let mut args = vec![flag, "--cacert", &ca_path, "--resolve", &resolve];
                if *method == "HEAD" {
                    args.push("-I");
                } else {
                    args.extend(["-X", method]);
                }
                if !body.is_empty() {
                    args.extend(["--data-binary", body]);
                }
                args.push(&url);
                let (head, body) = harness::curl(&args);
                let status: u16 = head
                    .lines()
                    .next()
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let location = head
                    .lines()
                    .find_map(|l| l.strip_prefix("location:"))
                    .map(str::trim);
                answers.push(summary(status, location, &body));
            }
            out.push((flag, answers));
        }
        out
    })
    .await
    .expect("curl");
    let client = gateway::h3::Client::connect(
        quic,
        "plain.test",
        &[cert.cert.der().clone()],
        Duration::from_secs(10),
    )
    .await
    .expect("QUIC handshake");
    let mut h3 = Vec::new();
    for (method, host, path, body) in TRANSPORT_CASES {
        let req = http::Request::builder()
            .method(*method)
            .uri(format!("https://{host}:{}{path}", quic.port()))
            .body(bytes::Bytes::from_static(body.as_bytes()))
            .expect("request");
        let resp = client.request(req).await.expect("h3 request");
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_ascii_lowercase);
        h3.push(summary(
            resp.status().as_u16(),
            location.as_deref(),
            resp.body(),
        ));
    }
    let (_, http11) = &tcp[0];
    for (i, (method, host, path, _)) in TRANSPORT_CASES.iter().enumerate() {
        eprintln!("{method} {host}{path}: {}", http11[i]);
    }
    assert!(http11[0].contains("x-added=\"yes\""), "{}", http11[0]);
    assert!(http11[5].contains("\"/new/thing\""), "{}", http11[5]);
    assert!(http11[4].starts_with("301"), "{}", http11[4]);
    assert!(metrics.h1_fast.get() > 0, "the own path served some");
    assert!(metrics.http3_connections.get() > 0);
    for (flag, answers) in &tcp[1..] {
        assert_eq!(answers, http11, "{flag} against --http1.1");
    }
    assert_eq!(&h3, http11, "HTTP/3 against --http1.1");
    running.stop().await;
}

/// Header fields of a raw HTTP/2 request, pseudo-headers included, in order.
type Fields = Vec<(&'static [u8], &'static [u8])>;

/// HPACK: a header field as a literal without indexing, its name and value as plain
/// (not Huffman-coded) strings shorter than 127 bytes (RFC 7541 6.2.2).
fn hpack_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    assert!(name.len() < 127 && value.len() < 127, "short fields only");
    out.push(0x00);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.push(value.len() as u8);
    out.extend_from_slice(value);
}

/// An HTTP/2 frame (RFC 9113 4.1).
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Sends one request as raw HTTP/2 frames (prior knowledge, stream 1) with exactly the
/// given header fields (pseudo-headers included, in order) and body, and says how the
/// gateway answered: `status N` (from HPACK's static table), `reset`, `goaway` or `closed`.
async fn h2_raw(addr: std::net::SocketAddr, fields: &[(&[u8], &[u8])], body: &[u8]) -> String {
    const DATA: u8 = 0;
    const HEADERS: u8 = 1;
    const RST_STREAM: u8 = 3;
    const SETTINGS: u8 = 4;
    const GOAWAY: u8 = 7;
    const END_STREAM: u8 = 0x1;
    const END_HEADERS: u8 = 0x4;
    let mut block = Vec::new();
    for (n, v) in fields {
        hpack_literal(&mut block, n, v);
    }
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(SETTINGS, 0, 0, &[]));
    let end = if body.is_empty() { END_STREAM } else { 0 };
    out.extend(h2_frame(HEADERS, END_HEADERS | end, 1, &block));
    if !body.is_empty() {
        out.extend(h2_frame(DATA, END_STREAM, 1, body));
    }
    let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
    c.write_all(&out).await.expect("write");
    let read = async {
        let mut status = None;
        loop {
            let mut head = [0u8; 9];
            if c.read_exact(&mut head).await.is_err() {
                return status.unwrap_or_else(|| "closed".to_string());
            }
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let (kind, flags) = (head[3], head[4]);
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; len];
            if c.read_exact(&mut payload).await.is_err() {
                return "closed".to_string();
            }
            match kind {
                SETTINGS if flags & 1 == 0 => {
                    let _ = c.write_all(&h2_frame(SETTINGS, 1, 0, &[])).await;
                }
                RST_STREAM if stream == 1 => return "reset".to_string(),
                GOAWAY => return status.unwrap_or_else(|| "goaway".to_string()),
                HEADERS if stream == 1 => {
                    // An indexed field of the static table (entries 8 to 14 are :status).
                    let s = match payload.first().map(|b| b & 0x7f) {
                        Some(i @ 8..=14) => ["200", "204", "206", "304", "400", "404", "500"]
                            [usize::from(i - 8)]
                        .to_string(),
                        _ => "?".to_string(),
                    };
                    status.get_or_insert(format!("status {s}"));
                    if flags & END_STREAM != 0 {
                        return status.unwrap_or_default();
                    }
                }
                DATA if stream == 1 && flags & END_STREAM != 0 => {
                    return status.unwrap_or_default();
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .unwrap_or_else(|_| "no answer".to_string())
}

/// The HTTP/2 side of the smuggling shapes: requests RFC 9113 calls malformed (8.1.1, 8.2,
/// 8.3) are refused by the gateway (the stream or the connection reset, or a 400) and never
/// reach the backend — above all, no header value carrying CR LF that HTTP/1 upstream would
/// read as another header. A well-formed request on the same connection kind is forwarded, so the
/// assertions have something to fail on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_http2_requests_are_refused_and_never_forwarded() {
    let backends = harness::start_backends().await;
    let metrics = std::sync::Arc::new(gateway::metrics::Metrics::default());
    let (plan, running) = harness::serve(&backends, MANIFESTS, metrics).await;
    assert!(plan.problems.is_empty(), "{:?}", plan.problems);
    let addr = running.bound[&80];
    let echo = &backends.0["gateway-conformance-infra/infra-backend-v1"];
    let get = |path: &'static str| -> Fields {
        vec![
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":authority", b"hyper.test"),
            (b":path", path.as_bytes()),
        ]
    };
    let with = |path: &'static str, extra: &[(&'static [u8], &'static [u8])]| {
        let mut f = get(path);
        f.extend_from_slice(extra);
        f
    };
    // The well-formed request first.
    let ok = h2_raw(addr, &get("/h2-good"), b"").await;
    assert_eq!(
        ok, "status 200",
        "a well-formed HTTP/2 request is forwarded"
    );
    assert!(echo.seen().iter().any(|s| s.path == "/h2-good"));

    let post_11_bytes_as_5: Fields = vec![
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":authority", b"hyper.test"),
        (b":path", b"/h2-length"),
        (b"content-length", b"5"),
    ];
    let cases: Vec<(&str, &str, Fields, &[u8])> = vec![
        (
            "transfer-encoding",
            "/h2-te",
            with("/h2-te", &[(b"transfer-encoding", b"chunked")]),
            b"",
        ),
        (
            "connection",
            "/h2-conn",
            with("/h2-conn", &[(b"connection", b"keep-alive")]),
            b"",
        ),
        (
            "te other than trailers",
            "/h2-te-gzip",
            with("/h2-te-gzip", &[(b"te", b"gzip")]),
            b"",
        ),
        (
            "an upper-case name",
            "/h2-upper",
            with("/h2-upper", &[(b"X-Upper", b"1")]),
            b"",
        ),
        (
            "CR LF in a value",
            "/h2-crlf",
            with("/h2-crlf", &[(b"x-a", b"a\r\ninjected: yes")]),
            b"",
        ),
        (
            "NUL in a value",
            "/h2-nul",
            with("/h2-nul", &[(b"x-a", b"a\0b")]),
            b"",
        ),
        (
            "a pseudo-header after a field",
            "/h2-order",
            vec![
                (b":method", b"GET"),
                (b":scheme", b"http"),
                (b"x-a", b"1"),
                (b":authority", b"hyper.test"),
                (b":path", b"/h2-order"),
            ],
            b"",
        ),
        (
            "no :path",
            "/h2-nopath",
            vec![
                (b":method", b"GET"),
                (b":scheme", b"http"),
                (b":authority", b"hyper.test"),
            ],
            b"",
        ),
        (
            "a body longer than its length",
            "/h2-length",
            post_11_bytes_as_5,
            b"hello world",
        ),
    ];
    let mut wrong = Vec::new();
    for (name, path, fields, body) in &cases {
        let answer = h2_raw(addr, fields, body).await;
        // A stream error (RST_STREAM), a connection error (GOAWAY: h2 takes an invalid field
        // name or value as one), or a 400. The over-long body's head may have gone upstream
        // before its extra DATA came.
        harness::check_refused(
            echo,
            (name, path, &answer),
            &["reset", "goaway", "status 400", "closed"],
            *name == "a body longer than its length",
            &mut wrong,
        );
    }
    harness::assert_refused_and_nothing_injected(echo, &wrong);
    running.stop().await;
}
