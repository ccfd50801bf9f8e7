//! ClientTrafficPolicy `http2.onInvalidMessage`: what the HTTP/2 server does with a malformed
//! request (TerminateStream: the stream is reset, the connection and its other streams go
//! on), and how the policy's status says so when TerminateConnection is asked for.
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
fn terminate_connection_is_reported_as_not_served() {
    let (status, message) = supported("TerminateConnection").expect("a Supported condition");
    assert_eq!(status, "False");
    assert!(message.contains("spec.http2.onInvalidMessage"), "{message}");
    assert_eq!(supported("TerminateStream"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_request_resets_only_its_stream() {
    let backends = harness::start_backends().await;
    let (_, running) = harness::serve(&backends, &policy("TerminateStream"), Arc::default()).await;
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

    let (mut reset_1, mut answered_3, mut goaway) = (None, false, false);
    let mut buf = Vec::new();
    while !(answered_3 && reset_1.is_some()) {
        let mut chunk = [0u8; 4096];
        // A guard against a hang when a frame never comes, not a timing assertion.
        let read = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut chunk)).await;
        let Ok(read) = read else { break };
        let n = read.expect("read");
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
            match kind {
                SETTINGS if flags & 1 == 0 => conn
                    .write_all(&frame(SETTINGS, 1, 0, &[]))
                    .await
                    .expect("ack settings"),
                RST_STREAM if stream == 1 => {
                    reset_1 = Some(u32::from_be_bytes(payload[..4].try_into().expect("code")));
                }
                HEADERS if stream == 3 => answered_3 = true,
                GOAWAY => goaway = true,
                _ => {}
            }
        }
    }
    assert_eq!(
        reset_1,
        Some(PROTOCOL_ERROR),
        "the malformed stream is reset"
    );
    assert!(
        answered_3,
        "the good stream on the same connection is answered"
    );
    assert!(!goaway, "the connection is not closed");
    running.stop().await;
}
