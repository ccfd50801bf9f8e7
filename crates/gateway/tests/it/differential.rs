//! The two HTTP/1.1 paths answer alike: the same raw requests (well formed, malformed and
//! request-smuggling shapes) go to a route served by trellis's own HTTP/1 path and to one
//! that only differs by a request timeout (which hands it to hyper's path); every answer —
//! the sequence of status codes on the connection, and what the backend was asked — must be
//! the same on both.

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
