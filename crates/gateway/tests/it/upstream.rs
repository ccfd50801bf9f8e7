//! The general path's requests without a body go to HTTP/1.1 backends on the raw pool
//! (`upstream::exchange`), not hyper's client. A backend of the test's own answers each path
//! with a scripted response, so that every framing and failure the reader must handle comes
//! through exactly: chunked (across reads, with trailers passed on), until close, a length across
//! reads, a 1xx before the answer, HEAD and 204, two lengths, a pooled connection the backend
//! closed. HTTP/2 clients (curl, prior knowledge) see the decoded body. And what goes
//! upstream: a Lua `:path` that is not a path never reaches a request line (400), a request
//! left without `host` gets the endpoint's.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness;

/// Request heads a scripted backend received.
type Heads = Arc<std::sync::Mutex<Vec<String>>>;

/// Answers requests by path, keeping connections open unless the script closes them;
/// counts connections accepted and keeps the request heads.
async fn scripted() -> (std::net::SocketAddr, Arc<AtomicUsize>, Heads) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let heads: Heads = Arc::default();
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    buf.drain(..end + 4);
                    if let Ok(mut v) = seen.lock() {
                        v.push(head.clone());
                    }
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let pause = || tokio::time::sleep(Duration::from_millis(20));
                    let ok = |body: &str| {
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        )
                    };
                    match path.as_str() {
                        "/chunked" => {
                            let _ = s
                                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel")
                                .await;
                            pause().await;
                            let _ = s
                                .write_all(b"lo\r\n6;x=1\r\n world\r\n0\r\nx-sum: 1\r\ncontent-length: 3\r\n\r\n")
                                .await;
                        }
                        "/close" => {
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil ").await;
                            pause().await;
                            let _ = s.write_all(b"close").await;
                            return;
                        }
                        "/long" => {
                            let body = vec![b'x'; 300 * 1024];
                            let _ = s
                                .write_all(
                                    format!(
                                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                                        body.len()
                                    )
                                    .as_bytes(),
                                )
                                .await;
                            for piece in body.chunks(70_000) {
                                let _ = s.write_all(piece).await;
                                pause().await;
                            }
                        }
                        "/informational" => {
                            let _ = s
                                .write_all(
                                    format!(
                                        "HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n{}",
                                        ok("after hints")
                                    )
                                    .as_bytes(),
                                )
                                .await;
                        }
                        "/head" => {
                            // A HEAD answer names the length of a body it does not carry.
                            let _ = s
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n")
                                .await;
                        }
                        "/empty" => {
                            let _ = s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await;
                        }
                        "/two-lengths" => {
                            let _ = s
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nabc")
                                .await;
                        }
                        "/hang-up" => {
                            // Answers, then closes the kept connection right after.
                            let _ = s.write_all(ok("bye").as_bytes()).await;
                            pause().await;
                            return;
                        }
                        _ => {
                            let _ = s.write_all(ok(&format!("path {path}")).as_bytes()).await;
                        }
                    }
                }
            });
        }
    });
    (addr, accepted, heads)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodiless_requests_go_to_http1_backends_on_the_raw_pool() {
    let backends = harness::start_backends().await;
    let (script, accepted, heads) = scripted().await;
    let route = |name: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: gateway-conformance-infra}}\n\
             spec:\n  parentRefs: [{{name: same-namespace}}]\n  hostnames: [{name}.example]\n  rules: [{{backendRefs: [{{name: scripted, port: 8080}}]}}]\n---\n"
        )
    };
    let lua = |name: &str, body: &str| {
        format!(
            "apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: EnvoyExtensionPolicy\nmetadata: {{name: {name}, namespace: gateway-conformance-infra}}\n\
             spec:\n  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: {name}}}]\n  lua:\n    - type: Inline\n      inline: |\n        function envoy_on_request(h)\n          {body}\n        end\n---\n"
        )
    };
    let manifests = format!(
        "{}{}{}{}{}{}",
        harness::service("gateway-conformance-infra", "scripted", script),
        route("scripted"),
        route("lua-path"),
        lua(
            "lua-path",
            r#"h:headers():replace(":path", "/x HTTP/1.1\r\nhost: a\r\n\r\nGET /injected")"#
        ),
        route("lua-nohost"),
        lua("lua-nohost", r#"h:headers():remove("host")"#),
    );
    let metrics = Arc::new(gateway::metrics::Metrics::default());
    let (_plan, running) = harness::serve(&backends, &manifests, metrics.clone()).await;
    let addr = running.bound[&80];
    let results = tokio::task::spawn_blocking(move || {
        let get_at = |host: &str, path: &str, extra: &[&str]| {
            let url = format!("http://{addr}{path}");
            let host = format!("Host: {host}");
            // HTTP/2 unless the extra arguments ask for HTTP/1.1.
            let proto = if extra.contains(&"--http1.1") {
                "--http1.1"
            } else {
                "--http2-prior-knowledge"
            };
            let mut args = vec![proto, "-H", &host, url.as_str()];
            args.extend(extra);
            let out = std::process::Command::new("curl")
                .args(["-s", "-i"])
                .args(&args)
                .output()
                .expect("curl");
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
            let status: u16 = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            (status, head.to_ascii_lowercase(), body.to_string())
        };
        let get = |path: &str, extra: &[&str]| get_at("scripted.example", path, extra);
        let mut out = vec![
            ("lua-path", get_at("lua-path.example", "/lua", &[])),
            // Over HTTP/1.1 (no :authority to take a host from again).
            (
                "lua-nohost",
                get_at("lua-nohost.example", "/no-host", &["--http1.1"]),
            ),
        ];
        for (path, extra) in [
            ("/chunked", &[][..]),
            ("/close", &[][..]),
            ("/long", &[][..]),
            ("/informational", &[][..]),
            ("/head", &["-I"][..]),
            ("/empty", &[][..]),
            ("/two-lengths", &[][..]),
            ("/hang-up", &[][..]),
            ("/after-hang-up", &[][..]),
            ("/again", &[][..]),
        ] {
            out.push((path, get(path, extra)));
        }
        out
    })
    .await
    .expect("requests");
    let by = |p: &str| {
        results
            .iter()
            .find(|(path, _)| *path == p)
            .map(|(_, r)| r.clone())
            .expect("asked")
    };
    assert_eq!(by("/chunked").0, 200);
    // curl writes the trailers it got after the body: the backend's, without the framing
    // field a trailer may not carry.
    assert_eq!(
        by("/chunked").2,
        "hello worldx-sum: 1\r\n",
        "chunks decoded, trailers passed on"
    );
    assert!(!by("/chunked").1.contains("transfer-encoding"));
    assert_eq!(by("/close").2, "until close");
    let long = by("/long");
    assert_eq!((long.0, long.2.len()), (200, 300 * 1024));
    assert!(long.2.bytes().all(|b| b == b'x'));
    assert_eq!(
        by("/informational").2,
        "after hints",
        "the 1xx is read past"
    );
    let head = by("/head");
    assert_eq!(head.0, 200, "{head:?}");
    assert!(head.1.contains("content-length: 9"), "{}", head.1);
    assert_eq!(by("/empty").0, 204);
    assert_eq!(
        by("/two-lengths").0,
        502,
        "two lengths are not guessed between"
    );
    assert_eq!(by("/hang-up").2, "bye");
    // The backend closed the connection the gateway pooled: the next request is sent on a
    // new one, not answered with an error.
    assert_eq!(by("/after-hang-up").2, "path /after-hang-up");
    assert_eq!(by("/again").2, "path /again");
    // Connections are reused: fewer than one per request (/close, /two-lengths and /hang-up
    // end theirs; the rest share).
    let n = accepted.load(Ordering::SeqCst);
    assert!(n <= 6, "{n} connections for 10 requests");
    assert_eq!(metrics.upstream_connect_failures.get(), 0);
    // A `:path` that is not a path is refused before anything goes upstream.
    assert_eq!(by("lua-path").0, 400, "{:?}", by("lua-path"));
    let heads = heads.lock().expect("heads").clone();
    assert!(
        !heads
            .iter()
            .any(|h| h.contains("injected") || h.starts_with("GET /x")),
        "{heads:?}"
    );
    // A request left without `host` gets the endpoint's, as HTTP/1.1 requires.
    assert_eq!(by("lua-nohost").0, 200, "{:?}", by("lua-nohost"));
    let no_host = heads
        .iter()
        .find(|h| h.starts_with("GET /no-host "))
        .expect("the request arrived");
    assert!(no_host.contains(&format!("host: {script}")), "{no_host}");
    running.stop().await;
}
