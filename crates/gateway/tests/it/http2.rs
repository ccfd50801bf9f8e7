//! ClientTrafficPolicy `http2.onInvalidMessage`: what the HTTP/2 server does with a malformed
//! request. TerminateStream: the stream is reset, the connection and its other streams go on;
//! TerminateConnection (and no policy: Envoy Gateway's default): the connection is closed with
//! GOAWAY.
//!
//! The client writes frames by hand: no HTTP/2 client library sends a malformed request.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness;

const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
const PROTOCOL_ERROR: u32 = 1;
const ENHANCE_YOUR_CALM: u32 = 0xb;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len())
        .expect("small frame")
        .to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A GET / header block (HPACK: static indices, literals without indexing), plus `extra`.
fn get_block(authority: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut b = vec![0x82, 0x86, 0x84, 0x01];
    b.push(u8::try_from(authority.len()).expect("short"));
    b.extend_from_slice(authority.as_bytes());
    for (n, v) in extra {
        b.push(0x00);
        b.push(u8::try_from(n.len()).expect("short"));
        b.extend_from_slice(n.as_bytes());
        b.push(u8::try_from(v.len()).expect("short"));
        b.extend_from_slice(v.as_bytes());
    }
    b
}

fn policy(on_invalid: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: gateway-conformance-infra}}\n\
         spec:\n  parentRefs: [{{name: same-namespace}}]\n  rules:\n    - backendRefs: [{{name: infra-backend-v1, port: 8080}}]\n---\n\
         apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: ClientTrafficPolicy\nmetadata: {{name: c, namespace: gateway-conformance-infra}}\n\
         spec:\n  targetRefs: [{{group: gateway.networking.k8s.io, kind: Gateway, name: same-namespace}}]\n  http2: {{onInvalidMessage: {on_invalid}}}\n"
    )
}

/// The policy's Supported condition, if it has one: (status, message).
fn supported(on_invalid: &str) -> Option<(String, String)> {
    let backends = harness::Backends(Default::default());
    let dir = tempfile::tempdir().expect("tmp");
    let load = harness::load(
        dir.path(),
        &[
            ("base.yaml", &harness::base_manifests(&backends)),
            ("case.yaml", &policy(on_invalid)),
        ],
    );
    let key = model::ObjectKey::new(
        "gateway.envoyproxy.io",
        "ClientTrafficPolicy",
        "gateway-conformance-infra",
        "c",
    );
    load.snapshot.status[&key]
        .conditions
        .iter()
        .find(|c| c.type_ == "Supported")
        .map(|c| (format!("{:?}", c.status), c.message.clone()))
}

#[test]
fn both_values_are_served() {
    assert_eq!(supported("TerminateConnection"), None);
    assert_eq!(supported("TerminateStream"), None);
}

/// What came back for a malformed request on stream 1 followed by a good one on stream 3 on
/// one connection: stream 1's reset code, whether stream 3 was answered, GOAWAY's code.
#[derive(Debug, Default)]
struct Seen {
    reset_1: Option<u32>,
    answered_3: bool,
    goaway: Option<u32>,
}

async fn malformed_then_good(manifests: &str) -> Seen {
    let backends = harness::start_backends().await;
    let (_, running) = harness::serve(&backends, manifests, Arc::default()).await;
    let mut conn = tokio::net::TcpStream::connect(running.bound[&80])
        .await
        .expect("connect");
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    // Stream 1 carries a connection-specific header, which HTTP/2 forbids (RFC 9113 8.2.2);
    // stream 3 is a good request on the same connection.
    out.extend(frame(
        HEADERS,
        0x5,
        1,
        &get_block("h2.example", &[("connection", "close")]),
    ));
    out.extend(frame(HEADERS, 0x5, 3, &get_block("h2.example", &[])));
    conn.write_all(&out).await.expect("send");

    let mut seen = Seen::default();
    let mut buf = Vec::new();
    while !(seen.answered_3 && seen.reset_1.is_some()) {
        let mut chunk = [0u8; 4096];
        // A guard against a hang when a frame never comes, not a timing assertion.
        let read = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut chunk)).await;
        let Ok(Ok(n)) = read else { break };
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        while buf.len() >= 9 {
            let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let (kind, flags) = (buf[3], buf[4]);
            let stream = u32::from_be_bytes([buf[5] & 0x7f, buf[6], buf[7], buf[8]]);
            let payload = buf[9..9 + len].to_vec();
            buf.drain(..9 + len);
            let code = |at: usize| {
                payload
                    .get(at..at + 4)
                    .map(|b| u32::from_be_bytes(b.try_into().expect("4")))
            };
            match kind {
                SETTINGS if flags & 1 == 0 => {
                    let _ = conn.write_all(&frame(SETTINGS, 1, 0, &[])).await;
                }
                RST_STREAM if stream == 1 => seen.reset_1 = code(0),
                HEADERS if stream == 3 => seen.answered_3 = true,
                GOAWAY => seen.goaway = code(4),
                _ => {}
            }
        }
    }
    running.stop().await;
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_stream_resets_only_the_malformed_stream() {
    let seen = malformed_then_good(&policy("TerminateStream")).await;
    assert_eq!(seen.reset_1, Some(PROTOCOL_ERROR), "{seen:?}");
    assert!(seen.answered_3, "the good stream is answered: {seen:?}");
    assert_eq!(seen.goaway, None, "the connection is not closed: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_connection_closes_the_connection() {
    for manifests in [
        policy("TerminateConnection"),
        // No policy: Envoy Gateway's default.
        policy("TerminateStream")
            .split("---")
            .next()
            .expect("the route")
            .to_string(),
    ] {
        let seen = malformed_then_good(&manifests).await;
        assert_eq!(seen.goaway, Some(ENHANCE_YOUR_CALM), "{seen:?}");
    }
}
