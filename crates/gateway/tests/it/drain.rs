//! Connection bounds and drains: one connection past the gateway's limit is closed on arrival
//! and counted while the others are served; a drain answers the first request of a connection
//! accepted just before it (own HTTP/1 path and HTTP/2 on hyper's), and waits for TCPRoute
//! connections instead of cutting them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use http_body_util::BodyExt;

use crate::harness;

/// Gateway `edge`: HTTP on 80 to infra-backend-v1, a TCPRoute on 2222 to infra-backend-v2.
const MANIFESTS: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: edge, namespace: gateway-conformance-infra}\n\
spec:\n  gatewayClassName: trellis\n  listeners:\n  - {name: http, protocol: HTTP, port: 80}\n  - {name: tcp, protocol: TCP, port: 2222}\n---\n\
apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: app, namespace: gateway-conformance-infra}\n\
spec:\n  parentRefs: [{name: edge, sectionName: http}]\n  rules: [{backendRefs: [{name: infra-backend-v1, port: 8080}]}]\n---\n\
apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TCPRoute\nmetadata: {name: raw, namespace: gateway-conformance-infra}\n\
spec:\n  parentRefs: [{name: edge, sectionName: tcp}]\n  rules: [{backendRefs: [{name: infra-backend-v2, port: 8080}]}]\n";

const REQUEST: &[u8] = b"GET /x HTTP/1.1\r\nHost: app.example.com\r\n\r\n";

fn connect(addr: SocketAddr) -> TcpStream {
    let c = TcpStream::connect(addr).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    c
}

/// Waits (bounded) until `cond` holds: for states the gateway does not announce.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what} did not happen in 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_past_the_limit_is_closed_and_the_rest_served() {
    let backends = harness::start_backends().await;
    let dir = tempfile::tempdir().expect("tmp");
    let bind = gateway::Bind {
        connections_max: Some(2),
        ..Default::default()
    };
    let (running, metrics) =
        harness::start_gateway(dir.path(), &backends, MANIFESTS, "edge", &[80, 2222], bind).await;
    let http = running.bound[&80];
    let tcp = running.bound[&2222];
    let mut held = vec![connect(http), connect(tcp)];
    until("two connections open", || running.open_connections() == 2).await;
    let m = metrics.clone();
    let held = tokio::task::spawn_blocking(move || {
        for addr in [http, tcp] {
            let mut extra = connect(addr);
            let mut b = [0u8; 64];
            assert_eq!(extra.read(&mut b).expect("closed, not timed out"), 0);
        }
        assert_eq!(m.connections_refused.get(), 2);
        // The connections within the limit are served.
        for c in &mut held {
            c.write_all(REQUEST).expect("write");
            assert!(harness::read_response(c).starts_with("HTTP/1.1 200"));
        }
        held
    })
    .await
    .expect("checks");
    drop(held);
    until("connections closed", || running.open_connections() == 0).await;
    // Room again.
    let mut c = connect(http);
    let answered = tokio::task::spawn_blocking(move || {
        c.write_all(REQUEST).expect("write");
        harness::read_response(&mut c)
    })
    .await
    .expect("request");
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_answers_late_first_requests_and_waits_for_tcp_routes() {
    let backends = harness::start_backends().await;
    let dir = tempfile::tempdir().expect("tmp");
    let (running, _) = harness::start_gateway(
        dir.path(),
        &backends,
        MANIFESTS,
        "edge",
        &[80, 2222],
        // The grace an idle connection gets for one more request once the drain begins:
        // long enough that this test's own steps (slow on a busy machine) never outlast it.
        gateway::Bind {
            drain_idle_grace: Some(Duration::from_secs(10)),
            ..Default::default()
        },
    )
    .await;
    let http = running.bound[&80];
    // Accepted, nothing sent yet: one for the own HTTP/1 path, one that will speak HTTP/2.
    let mut late_h1 = connect(http);
    let late_h2 = tokio::net::TcpStream::connect(http).await.expect("connect");
    // A TCPRoute connection with an exchange done.
    let mut raw = connect(running.bound[&2222]);
    let mut raw = tokio::task::spawn_blocking(move || {
        raw.write_all(REQUEST).expect("write");
        assert!(harness::read_response(&mut raw).starts_with("HTTP/1.1 200"));
        raw
    })
    .await
    .expect("tcp route");
    until("three connections open", || running.open_connections() == 3).await;

    let drain = tokio::spawn(running.drain(Duration::from_secs(20)));
    // The listener is closed first: the drain has begun.
    until("the listener closed", || TcpStream::connect(http).is_err()).await;

    // HTTP/2 with prior knowledge on the late connection (the own path hands it to hyper).
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(late_h2),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    let resp = send
        .send_request(
            http::Request::get("http://app.example.com/h2")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .expect("request"),
        )
        .await
        .expect("answered while draining");
    assert_eq!(resp.status(), 200);
    let _ = resp.into_body().collect().await.expect("body");

    let (raw, drain) = tokio::task::spawn_blocking(move || {
        late_h1.write_all(REQUEST).expect("write");
        let head = harness::read_response(&mut late_h1);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
        // The TCPRoute connection still carries bytes, and the drain waits for it.
        raw.write_all(REQUEST).expect("write");
        assert!(harness::read_response(&mut raw).starts_with("HTTP/1.1 200"));
        (raw, drain)
    })
    .await
    .expect("late requests");
    assert!(
        !drain.is_finished(),
        "the drain waits for the TCPRoute connection"
    );
    drop(raw);
    drop(send);
    assert!(
        drain.await.expect("drain"),
        "every connection closed within the drain timeout"
    );
}

/// Requests each load client sends at most (the loops are bounded in count as well as by the
/// drain that ends them).
const LOAD_REQUESTS_MAX: usize = 20_000;

/// One HTTP/1.1 keep-alive client on the own path: requests until an answer says
/// `Connection: close`. Returns (answered, failed): a request written whose answer did not
/// come whole is a failure.
fn h1_client(
    addr: SocketAddr,
    done: &std::sync::atomic::AtomicUsize,
    max: usize,
) -> (usize, usize) {
    let mut c = connect(addr);
    for n in 0..max {
        if c.write_all(REQUEST).is_err() {
            return (n, 1);
        }
        let head = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            harness::read_response(&mut c)
        })) {
            Ok(h) => h,
            Err(_) => return (n, 1),
        };
        if !head.starts_with("HTTP/1.1 200") {
            return (n, 1);
        }
        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if head.to_ascii_lowercase().contains("connection: close") {
            return (n + 1, 0);
        }
    }
    (max, 0)
}

/// A request the server never took: refused before it was sent, or sent on a stream past the
/// last one a graceful GOAWAY (NO_ERROR) said it would process (RFC 9113 6.8: not processed,
/// safe to send again), or refused (REFUSED_STREAM).
fn never_taken(e: &hyper::Error) -> bool {
    if e.is_canceled() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<h2::Error>() {
            return (h.is_go_away() && h.reason() == Some(h2::Reason::NO_ERROR))
                || h.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = s.source();
    }
    false
}

/// A drain under load, as SIGTERM runs it: keep-alive HTTP/1.1 clients on the own path,
/// HTTP/2 clients on hyper's and TCPRoute clients all keep sending while the gateway drains;
/// not one request fails, every HTTP client is told to go (Connection: close, GOAWAY), and the
/// drain ends when the last connection has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_under_load_fails_no_request() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let backends = harness::start_backends().await;
    let dir = tempfile::tempdir().expect("tmp");
    let (running, _) = harness::start_gateway(
        dir.path(),
        &backends,
        MANIFESTS,
        "edge",
        &[80, 2222],
        gateway::Bind::default(),
    )
    .await;
    let (http, tcp) = (running.bound[&80], running.bound[&2222]);
    let done = Arc::new(AtomicUsize::new(0));

    // Own HTTP/1.1 path and TCPRoute clients, on threads.
    let mut threads = Vec::new();
    for i in 0..6 {
        // TCPRoute clients are never told to go: they stop after a few thousand requests.
        let (done, addr, max) = match i {
            0..4 => (done.clone(), http, LOAD_REQUESTS_MAX),
            _ => (done.clone(), tcp, LOAD_REQUESTS_MAX / 10),
        };
        threads.push(std::thread::spawn(move || h1_client(addr, &done, max)));
    }
    // HTTP/2 clients, each with a few streams at a time.
    let mut h2 = Vec::new();
    for _ in 0..2 {
        let done = done.clone();
        h2.push(tokio::spawn(async move {
            let io = tokio::net::TcpStream::connect(http).await.expect("connect");
            let (send, conn) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(io),
            )
            .await
            .expect("h2 handshake");
            let conn = tokio::spawn(conn);
            let (mut answered, mut failed) = (0usize, Vec::<String>::new());
            'load: for _ in 0..LOAD_REQUESTS_MAX / 4 {
                let mut batch = Vec::new();
                for _ in 0..4 {
                    let mut s = send.clone();
                    // Not ready: the server said GOAWAY; nothing more is sent, nothing failed.
                    if s.ready().await.is_err() {
                        break 'load;
                    }
                    batch.push(
                        s.send_request(
                            http::Request::get("http://app.example.com/h2")
                                .body(http_body_util::Empty::<bytes::Bytes>::new())
                                .expect("request"),
                        ),
                    );
                }
                for r in batch {
                    match r.await {
                        Ok(resp) if resp.status() == 200 => {
                            let _ = resp.into_body().collect().await;
                            answered += 1;
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        // Refused before the server took it (not sent, or past GOAWAY's
                        // last stream): the client may send it elsewhere; not a failure.
                        Err(e) if never_taken(&e) => {}
                        Ok(resp) => failed.push(format!("status {}", resp.status())),
                        Err(e) => failed.push(format!("{e:?}")),
                    }
                }
            }
            drop(send);
            let _ = conn.await;
            (answered, failed)
        }));
    }
    // Under way: every client has been answered a few times.
    until("load under way", || done.load(Ordering::Relaxed) >= 400).await;
    let before = done.load(Ordering::Relaxed);
    let drained = running.drain(Duration::from_secs(30)).await;

    let mut answered = 0;
    for t in threads {
        let (a, f) = t.join().expect("client");
        assert_eq!(
            f, 0,
            "an HTTP/1.1 or TCPRoute request failed over the drain"
        );
        answered += a;
    }
    for t in h2 {
        let (a, f) = t.await.expect("h2 client");
        assert!(f.is_empty(), "HTTP/2 requests failed over the drain: {f:?}");
        answered += a;
    }
    assert!(drained, "every connection closed within the drain timeout");
    assert!(
        answered > before,
        "requests were answered during the drain too"
    );
    eprintln!("drain under load: {answered} requests answered, {before} before the drain began");
}

/// The idle timeout (Envoy's downstream `idle_timeout`, here shortened): a connection with no
/// request in flight for that long is closed, on the own HTTP/1 path and on hyper's HTTP/2;
/// a request that takes longer than the timeout is not cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_slow_requests_are_not() {
    let backends = harness::start_backends().await;
    let dir = tempfile::tempdir().expect("tmp");
    let bind = gateway::Bind {
        idle_timeout: Some(Duration::from_millis(300)),
        ..Default::default()
    };
    let (running, _) =
        harness::start_gateway(dir.path(), &backends, MANIFESTS, "edge", &[80, 2222], bind).await;
    let http = running.bound[&80];
    // HTTP/2: one request longer than the timeout, then nothing: the connection ends.
    let io = tokio::net::TcpStream::connect(http).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(io),
    )
    .await
    .expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let resp = send
        .send_request(
            http::Request::get("http://app.example.com/?delay=600ms")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .expect("request"),
        )
        .await
        .expect("a slow request is answered");
    assert_eq!(resp.status(), 200);
    let _ = resp.into_body().collect().await.expect("body");
    tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("the idle HTTP/2 connection is closed by the gateway")
        .expect("task")
        .expect("closed cleanly (GOAWAY)");
    // HTTP/1.1 on the own path: answered, then closed once idle.
    let closed = tokio::task::spawn_blocking(move || {
        let mut c = connect(http);
        c.write_all(b"GET /?delay=600ms HTTP/1.1\r\nHost: app.example.com\r\n\r\n")
            .expect("write");
        let head = harness::read_response(&mut c);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let mut b = [0u8; 16];
        c.read(&mut b).expect("closed, not timed out")
    })
    .await
    .expect("h1");
    assert_eq!(closed, 0);
    running.stop().await;
}

/// A SecurityPolicy on a TCPRoute is not something the L4 path can enforce: the route's
/// connections are closed unanswered instead of carried without it (fail closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_security_policy_on_a_tcp_route_refuses_its_connections() {
    let backends = harness::start_backends().await;
    let dir = tempfile::tempdir().expect("tmp");
    let manifests = format!(
        "{MANIFESTS}---\napiVersion: gateway.envoyproxy.io/v1alpha1\nkind: SecurityPolicy\nmetadata: {{name: raw-only-lan, namespace: gateway-conformance-infra}}\n\
         spec:\n  targetRefs: [{{group: gateway.networking.k8s.io, kind: TCPRoute, name: raw}}]\n  authorization:\n    defaultAction: Deny\n    rules: [{{action: Allow, principal: {{clientCIDRs: [10.0.0.0/8]}}}}]\n"
    );
    let (running, _) = harness::start_gateway(
        dir.path(),
        &backends,
        &manifests,
        "edge",
        &[80, 2222],
        gateway::Bind::default(),
    )
    .await;
    let (http, tcp) = (running.bound[&80], running.bound[&2222]);
    let got = tokio::task::spawn_blocking(move || {
        let mut c = connect(tcp);
        let _ = c.write_all(REQUEST);
        let mut b = [0u8; 64];
        let n = c.read(&mut b).unwrap_or(0);
        // The HTTP listener of the same Gateway is not affected.
        let mut h = connect(http);
        h.write_all(REQUEST).expect("write");
        (n, harness::read_response(&mut h))
    })
    .await
    .expect("client");
    assert_eq!(got.0, 0, "the TCPRoute's connection carried bytes");
    assert!(got.1.starts_with("HTTP/1.1 200"), "{}", got.1);
    running.stop().await;

    // The same for a Lua script (an EnvoyExtensionPolicy) on the TCPRoute.
    let manifests = format!(
        "{MANIFESTS}---\napiVersion: gateway.envoyproxy.io/v1alpha1\nkind: EnvoyExtensionPolicy\n\
         metadata: {{name: raw-lua, namespace: gateway-conformance-infra}}\nspec:\n  \
         targetRefs: [{{group: gateway.networking.k8s.io, kind: TCPRoute, name: raw}}]\n  \
         lua:\n  - type: Inline\n    inline: |\n      function envoy_on_request(h) end\n"
    );
    let dir = tempfile::tempdir().expect("tmp");
    let (running, _) = harness::start_gateway(
        dir.path(),
        &backends,
        &manifests,
        "edge",
        &[80, 2222],
        gateway::Bind::default(),
    )
    .await;
    let tcp = running.bound[&2222];
    let n = tokio::task::spawn_blocking(move || {
        let mut c = connect(tcp);
        let _ = c.write_all(REQUEST);
        let mut b = [0u8; 64];
        c.read(&mut b).unwrap_or(0)
    })
    .await
    .expect("client");
    assert_eq!(
        n, 0,
        "the TCPRoute's connection carried bytes past its script"
    );
    running.stop().await;
}
