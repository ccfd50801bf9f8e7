//! The gateway's own HTTP/1.1 path: framing passed through as the upstream sent it, pipelining,
//! stale pooled connections, upstream failures, and the hand-off of everything else to the
//! general path. Clients are raw sockets (so the bytes on the wire are what is checked),
//! upstreams are the echo server or a scripted one that answers exactly what a test says.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use gateway::metrics::Metrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness;

const WAIT: Duration = Duration::from_secs(10);

/// A route for `host` to Service `scripted` (the scripted upstream) and one for `echo.test` to
/// the echo backend.
fn manifests(upstream: std::net::SocketAddr) -> String {
    format!(
        "{}\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: scripted, namespace: gateway-conformance-infra}}\n\
         spec:\n  parentRefs: [{{name: same-namespace}}]\n  hostnames: [scripted.test]\n  rules:\n    - backendRefs: [{{name: scripted, port: 8080}}]\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: echo, namespace: gateway-conformance-infra}}\n\
         spec:\n  parentRefs: [{{name: same-namespace}}]\n  hostnames: [echo.test]\n  rules:\n    - backendRefs: [{{name: infra-backend-v1, port: 8080}}]\n",
        harness::service("gateway-conformance-infra", "scripted", upstream)
    )
}

/// An upstream that answers the n-th request it reads (over all connections) with
/// `script(n, request)`: the bytes to send, and whether to close the connection after them.
async fn scripted(
    script: impl Fn(usize, &str) -> (Vec<u8>, bool) + Send + Sync + 'static,
) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let script = Arc::new(script);
    let count = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let script = script.clone();
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some(end) = find(&buf, b"\r\n\r\n") else {
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let req = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
                    buf.drain(..end + 4);
                    let n = count.fetch_add(1, Ordering::SeqCst);
                    let (reply, close) = script(n, &req);
                    if s.write_all(&reply).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn gateway(
    upstream: std::net::SocketAddr,
) -> (harness::Backends, gateway::Running, Arc<Metrics>) {
    gateway_with(upstream, "").await
}

/// [`gateway`] with more manifests (policies).
async fn gateway_with(
    upstream: std::net::SocketAddr,
    more: &str,
) -> (harness::Backends, gateway::Running, Arc<Metrics>) {
    let backends = harness::start_backends().await;
    let metrics = Arc::new(Metrics::default());
    let all = format!("{}---\n{more}", manifests(upstream));
    let (_, running) = harness::serve(&backends, &all, metrics.clone()).await;
    (backends, running, metrics)
}

/// Reads from `s` until `done(bytes so far)` or the connection closes; panics after [`WAIT`].
async fn read_until(s: &mut TcpStream, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, async {
        let mut chunk = [0u8; 8192];
        while !done(&got) {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .expect("the gateway answers in time");
    got
}

/// Sends `request` and reads an answer the gateway made itself (a text body ending in a
/// newline).
async fn ask_local(c: &mut TcpStream, request: &[u8]) -> String {
    c.write_all(request).await.expect("write");
    let got = read_until(c, |b| b.ends_with(b"\n") && find(b, b"\r\n\r\n").is_some()).await;
    text(&got)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn connect(r: &gateway::Running) -> TcpStream {
    TcpStream::connect(r.bound[&80]).await.expect("connect")
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_with_forwarded_headers() {
    let up = scripted(|_, _| (Vec::new(), true)).await;
    let (_b, r, m) = gateway(up).await;
    let mut c = connect(&r).await;
    c.write_all(
        b"GET /first?x=1 HTTP/1.1\r\nHost: echo.test\r\nX-Forwarded-For: 10.0.0.9\r\n\r\n\
          POST /second HTTP/1.1\r\nHost: Echo.Test:80\r\nContent-Length: 5\r\nConnection: keep-alive, x-drop\r\nX-Drop: 1\r\n\r\nhello",
    )
    .await
    .expect("write");
    let got = read_until(&mut c, |b| text(b).matches("\"backend\"").count() == 2).await;
    let t = text(&got);
    let first = t.find("/first").expect("first answered");
    let second = t.find("/second").expect("second answered");
    assert!(first < second, "answers in request order: {t}");
    assert!(
        t.contains("10.0.0.9, 127.0.0.1"),
        "X-Forwarded-For appended: {t}"
    );
    assert!(t.contains("x-forwarded-proto"), "{t}");
    assert!(
        !t.contains("x-drop"),
        "headers named by Connection are dropped: {t}"
    );
    assert_eq!(m.h1_fast.get(), 2);
    assert_eq!(m.h1_handoffs.get(), 0);
}

#[tokio::test]
async fn chunked_close_delimited_head_and_informational_responses_pass_through() {
    let up = scripted(|_, req| {
        let path = req.split(' ').nth(1).unwrap_or_default().to_string();
        let reply: &[u8] = match path.as_str() {
            "/chunked" => {
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 999\r\nTrailer: x-sum\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-sum: 11\r\n\r\n"
            }
            "/head" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            "/nocontent" => b"HTTP/1.1 204 No Content\r\n\r\n",
            "/early" => {
                b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            }
            _ => b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end",
        };
        (reply.to_vec(), path == "/close")
    })
    .await;
    let (_b, r, m) = gateway(up).await;
    let mut c = connect(&r).await;
    let ask = |method: &str, path: &str| {
        format!("{method} {path} HTTP/1.1\r\nHost: scripted.test\r\n\r\n").into_bytes()
    };

    c.write_all(&ask("GET", "/chunked")).await.expect("write");
    let got = text(&read_until(&mut c, |b| b.ends_with(b"x-sum: 11\r\n\r\n")).await);
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    assert!(
        got.to_ascii_lowercase()
            .contains("transfer-encoding: chunked\r\n"),
        "{got}"
    );
    assert!(
        got.contains("5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n"),
        "body as sent: {got}"
    );
    assert!(
        !got.to_ascii_lowercase().contains("content-length"),
        "a length beside chunked is not passed on: {got}"
    );

    c.write_all(&ask("HEAD", "/head")).await.expect("write");
    let got = text(&read_until(&mut c, |b| b.ends_with(b"\r\n\r\n")).await);
    assert!(got.contains("Content-Length: 5"), "{got}");

    c.write_all(&ask("GET", "/nocontent")).await.expect("write");
    let got = text(&read_until(&mut c, |b| b.ends_with(b"\r\n\r\n")).await);
    assert!(got.starts_with("HTTP/1.1 204"), "{got}");

    c.write_all(&ask("GET", "/early")).await.expect("write");
    let got = text(&read_until(&mut c, |b| b.ends_with(b"ok")).await);
    assert!(
        got.starts_with("HTTP/1.1 200 OK"),
        "the 103 is not passed on: {got}"
    );

    // A body that ends when the upstream closes: the client connection closes after it.
    c.write_all(&ask("GET", "/close")).await.expect("write");
    let got = text(&read_until(&mut c, |_| false).await);
    assert!(got.contains("connection: close\r\n"), "{got}");
    assert!(got.ends_with("\r\n\r\nuntil the end"), "{got}");
    assert_eq!(m.h1_fast.get(), 5);
    assert_eq!(m.h1_handoffs.get(), 0);
}

#[tokio::test]
async fn a_pooled_connection_the_upstream_dropped_is_retried_only_when_safe() {
    // Every connection answers its first request, then reads the next one and closes without
    // an answer (as an upstream whose keep-alive timer ran out at that moment).
    let dropper = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let dropper_addr = dropper.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = dropper.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut answered = 0;
                let mut chunk = [0u8; 4096];
                while let Ok(n) = s.read(&mut chunk).await {
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = find(&buf, b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        if answered == 1 {
                            return; // drop the connection with the request unanswered
                        }
                        answered += 1;
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .await;
                    }
                }
            });
        }
    });
    let (_b, r, m) = gateway(dropper_addr).await;
    let mut c = connect(&r).await;
    let ask = |method: &str| {
        format!("{method} /x HTTP/1.1\r\nHost: scripted.test\r\nContent-Length: 0\r\n\r\n")
            .into_bytes()
    };
    c.write_all(&ask("GET")).await.expect("write");
    let got = text(&read_until(&mut c, |b| b.ends_with(b"ok")).await);
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    // The pooled connection is dropped on the next request: a GET is sent again.
    c.write_all(&ask("GET")).await.expect("write");
    let got = text(&read_until(&mut c, |b| b.ends_with(b"ok")).await);
    assert!(
        got.starts_with("HTTP/1.1 200"),
        "retried on a new connection: {got}"
    );
    // A POST might have been acted on: it is not sent twice, the client gets a 502.
    let got = ask_local(&mut c, &ask("POST")).await;
    assert!(got.starts_with("HTTP/1.1 502"), "{got}");
    assert!(
        got.contains("connection closed before the response"),
        "{got}"
    );
    assert_eq!(m.h1_handoffs.get(), 0);
}

#[tokio::test]
async fn a_malformed_or_missing_upstream_is_a_clear_error() {
    let up = scripted(|_, _| (b"NOT HTTP AT ALL\r\n\r\n".to_vec(), true)).await;
    let (_b, r, m) = gateway(up).await;
    let mut c = connect(&r).await;
    let got = ask_local(&mut c, b"GET / HTTP/1.1\r\nHost: scripted.test\r\n\r\n").await;
    assert!(got.starts_with("HTTP/1.1 502 Bad Gateway"), "{got}");
    assert!(got.contains("malformed response head"), "{got}");
    assert_eq!(m.h1_fast.get(), 1);

    // An upstream that refuses connections: 503 naming it, and the client connection stays.
    let (_held, gone) = crate::harness::refusing_port();
    let gone = std::net::SocketAddr::from(([127, 0, 0, 1], gone));
    let (_b2, r2, m2) = gateway(gone).await;
    let mut c = connect(&r2).await;
    for _ in 0..2 {
        let got = ask_local(&mut c, b"GET / HTTP/1.1\r\nHost: scripted.test\r\n\r\n").await;
        assert!(got.starts_with("HTTP/1.1 503"), "{got}");
        assert!(got.contains(&gone.to_string()), "{got}");
    }
    assert!(m2.upstream_connect_failures.get() >= 2);
}

#[tokio::test]
async fn what_the_own_path_does_not_serve_is_handed_over_and_served() {
    let up = scripted(|_, _| (Vec::new(), true)).await;
    let (b, r, m) = gateway(up).await;
    // HTTP/1.0: the general path serves it.
    let mut c = connect(&r).await;
    c.write_all(b"GET /ten HTTP/1.0\r\nHost: echo.test\r\n\r\n")
        .await
        .expect("write");
    let got = text(&read_until(&mut c, |_| false).await);
    assert!(got.starts_with("HTTP/1.0 200"), "{got}");
    assert_eq!(m.h1_handoffs.get(), 1);
    // A chunked request body, after a request the own path served on the same connection.
    let mut c = connect(&r).await;
    c.write_all(
        b"GET /plain HTTP/1.1\r\nHost: echo.test\r\n\r\n\
          POST /chunky HTTP/1.1\r\nHost: echo.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await
    .expect("write");
    let got = text(&read_until(&mut c, |b| text(b).matches("\"backend\"").count() == 2).await);
    assert!(got.contains("/plain") && got.contains("/chunky"), "{got}");
    assert_eq!(m.h1_handoffs.get(), 2);
    let echo = &b.0["gateway-conformance-infra/infra-backend-v1"];
    assert!(
        echo.seen()
            .iter()
            .any(|s| s.path == "/chunky" && s.method == "POST")
    );
    // A client that asks to close gets `connection: close` and the connection ends.
    let mut c = connect(&r).await;
    c.write_all(b"GET /bye HTTP/1.1\r\nHost: echo.test\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let got = text(&read_until(&mut c, |_| false).await);
    assert!(got.contains("connection: close\r\n"), "{got}");
    assert!(got.contains("/bye"), "{got}");
}

#[tokio::test]
async fn upstream_connections_are_reused_after_bodies_of_any_size() {
    // Bodies that take several reads, and ones that end exactly where a read ends.
    let accepted = Arc::new(AtomicUsize::new(0));
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while let Ok(n) = s.read(&mut chunk).await {
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = find(&buf, b"\r\n\r\n") {
                        let head = text(&buf[..end]);
                        buf.drain(..end + 4);
                        let size: usize = head
                            .split(' ')
                            .nth(1)
                            .and_then(|p| p.trim_start_matches('/').parse().ok())
                            .unwrap_or(1);
                        let reply = format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n");
                        let mut out = reply.into_bytes();
                        out.extend(std::iter::repeat_n(b'x', size));
                        if s.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    let (_b, r, m) = gateway(addr).await;
    let mut c = connect(&r).await;
    for size in [
        10,
        16 * 1024,
        16 * 1024 + 1,
        40_000,
        64 * 1024 + 16 * 1024,
        200_000,
    ] {
        c.write_all(format!("GET /{size} HTTP/1.1\r\nHost: scripted.test\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let got = read_until(&mut c, |b| {
            find(b, b"\r\n\r\n").is_some_and(|h| b.len() == h + 4 + size)
        })
        .await;
        assert!(
            got.starts_with(b"HTTP/1.1 200"),
            "{size}: {}",
            text(&got[..40])
        );
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one upstream connection for all"
    );
    assert_eq!(m.h1_fast.get(), 6);
}

#[tokio::test]
async fn the_retry_policy_resends_idempotent_requests_on_reset_and_5xx() {
    // The corpus's Gateway-wide policy shape (retry on reset), with 5xx added.
    let policy = "apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: BackendTrafficPolicy\nmetadata: {name: p, namespace: gateway-conformance-infra}\n\
         spec:\n  targetSelectors: [{group: gateway.networking.k8s.io, kind: Gateway}]\n  retry:\n    numRetries: 2\n    retryOn: {triggers: [reset, 5xx]}\n    perRetry: {backOff: {baseInterval: 1ms, maxInterval: 2ms}}\n";
    // Request 0: 503; 1: the connection drops unanswered; 2: 200; later ones: 503.
    let unavailable = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".to_vec();
    let up = scripted(move |n, _| match n {
        1 => (Vec::new(), true),
        2 => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            false,
        ),
        _ => (unavailable.clone(), false),
    })
    .await;
    let (_b, r, m) = gateway_with(up, policy).await;
    let mut c = connect(&r).await;
    c.write_all(b"GET /x HTTP/1.1\r\nHost: scripted.test\r\n\r\n")
        .await
        .expect("write");
    let got = text(&read_until(&mut c, |b| b.ends_with(b"ok")).await);
    assert!(got.starts_with("HTTP/1.1 200"), "third try answers: {got}");
    assert_eq!(m.retries.get(), 2);
    // A POST is not sent again: its 503 is the answer.
    c.write_all(b"POST /y HTTP/1.1\r\nHost: scripted.test\r\nContent-Length: 1\r\n\r\nz")
        .await
        .expect("write");
    let got = text(&read_until(&mut c, |b| find(b, b"\r\n\r\n").is_some()).await);
    assert!(got.starts_with("HTTP/1.1 503"), "{got}");
    assert_eq!(m.retries.get(), 2);
    // Retries run out: the last answer goes to the client.
    c.write_all(b"GET /z HTTP/1.1\r\nHost: scripted.test\r\n\r\n")
        .await
        .expect("write");
    let got = text(&read_until(&mut c, |b| find(b, b"\r\n\r\n").is_some()).await);
    assert!(got.starts_with("HTTP/1.1 503"), "{got}");
    assert_eq!(m.retries.get(), 4);
    assert_eq!(m.h1_fast.get(), 3);
    assert_eq!(m.h1_handoffs.get(), 0);
}

/// What a test keeps of a request record.
#[derive(Debug, PartialEq)]
struct Seen {
    method: String,
    host: String,
    target: String,
    status: u16,
    route: Option<String>,
    backend: Option<String>,
}

#[tokio::test]
async fn records_name_what_each_pipelined_request_asked_for() {
    let up = scripted(|_, _| (Vec::new(), true)).await;
    let backends = harness::start_backends().await;
    let metrics = Arc::new(Metrics::default());
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = seen.clone();
    let observer =
        gateway::record::Observer(Arc::new(move |r: &gateway::record::RequestRecord<'_>| {
            keep.lock().expect("records").push(Seen {
                method: r.method.to_string(),
                host: r.host.to_string(),
                target: r.path_and_query.to_string(),
                status: r.status,
                route: r.route.map(str::to_string),
                backend: r.backend.map(str::to_string),
            });
        }));
    let (_, r) =
        harness::serve_observed(&backends, &manifests(up), metrics.clone(), Some(observer)).await;
    let mut c = connect(&r).await;
    // A host as written (lower case) and one the router lower-cases, back to back.
    c.write_all(
        b"GET /a?x=1 HTTP/1.1\r\nHost: echo.test\r\n\r\n\
          PATCH /b/c HTTP/1.1\r\nHost: ECHO.Test:80\r\nContent-Length: 2\r\n\r\nhi\
          GET /z HTTP/1.1\r\nHost: echo.test\r\n\r\n",
    )
    .await
    .expect("write");
    read_until(&mut c, |b| text(b).matches("\"backend\"").count() == 3).await;
    drop(c);
    assert_eq!(metrics.h1_fast.get(), 3, "all on the own path");
    let seen = seen.lock().expect("records");
    let want = |method: &str, target: &str| Seen {
        method: method.into(),
        host: "echo.test".into(),
        target: target.into(),
        status: 200,
        route: Some("gateway-conformance-infra/echo".into()),
        backend: Some("gateway-conformance-infra/infra-backend-v1:8080".into()),
    };
    assert_eq!(
        *seen,
        vec![
            want("GET", "/a?x=1"),
            want("PATCH", "/b/c"),
            want("GET", "/z")
        ]
    );
}

/// A request whose Connection header names its own Content-Length: hop-by-hop headers are
/// dropped upstream, and on the own path the length went with them while the body was still
/// sent, so the upstream read the body as a next request (smuggled past every route and
/// filter, its answer left for whoever used the pooled connection next). The request must
/// reach the upstream with its length. Found while writing the gateway_h1 fuzz target, whose
/// framing invariant checks it.
#[tokio::test]
async fn a_body_never_loses_its_length_upstream() {
    let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = heads.clone();
    let up = scripted(move |_, req| {
        seen.lock().expect("heads").push(req.to_ascii_lowercase());
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec(),
            true,
        )
    })
    .await;
    let (_b, r, _m) = gateway(up).await;
    let mut c = connect(&r).await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: scripted.test\r\n\r\n";
    let request = format!(
        "POST /upload HTTP/1.1\r\nHost: scripted.test\r\nContent-Length: {}\r\n\
         Connection: content-length\r\n\r\n{smuggled}",
        smuggled.len()
    );
    c.write_all(request.as_bytes()).await.expect("write");
    let got = text(&read_until(&mut c, |b| find(b, b"\r\n\r\n").is_some()).await);
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    let heads = heads.lock().expect("heads");
    let post = heads
        .iter()
        .find(|h| h.starts_with("post /upload"))
        .expect("the POST reached the upstream");
    assert!(
        post.contains(&format!("content-length: {}\r\n", smuggled.len())),
        "the body's length went upstream with it: {post}"
    );
}
