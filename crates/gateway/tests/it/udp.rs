//! UDPRoute with a real peer: a Python UDP server that answers every datagram with the
//! address it came from, so the test sees which upstream socket (session) carried it.

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crate::harness::{self, Kill};

/// Answers `<source address> <datagram>` to every datagram; prints its port first.
const SERVER: &str = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
while True:
    data, peer = s.recvfrom(65535)
    s.sendto(("%s:%d " % peer).encode() + data, peer)
"#;

/// Sends one datagram from `client` and returns the answer.
fn ask(client: &UdpSocket, to: std::net::SocketAddr, what: &str) -> String {
    client.send_to(what.as_bytes(), to).expect("send");
    let mut buf = [0u8; 2048];
    let (n, from) = client
        .recv_from(&mut buf)
        .expect("an answer through the gateway");
    assert_eq!(from, to, "answers come from the gateway's listener");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_sessions_per_client_to_a_real_server() {
    let mut child = Command::new("python3")
        .args(["-c", SERVER])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let stdout = child.stdout.take().expect("stdout");
    let _server = Kill(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("the server prints its port");
    let port: u16 = line.trim().parse().expect("a port");

    let dir = tempfile::tempdir().expect("tmp");
    let manifests = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: edge, namespace: gateway-conformance-infra}}\n\
         spec:\n  gatewayClassName: trellis\n  listeners:\n    - {{name: dns, protocol: UDP, port: 53}}\n    - {{name: dns-tcp, protocol: TCP, port: 53}}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: dns, namespace: gateway-conformance-infra}}\nspec: {{ports: [{{name: dns, port: 53, protocol: UDP}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: dns, namespace: gateway-conformance-infra, labels: {{kubernetes.io/service-name: dns}}}}\n\
         addressType: IPv4\nports: [{{name: dns, port: {port}, protocol: UDP}}]\nendpoints: [{{addresses: [127.0.0.1]}}]\n---\n\
         apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: UDPRoute\nmetadata: {{name: dns, namespace: gateway-conformance-infra}}\n\
         spec:\n  parentRefs: [{{name: edge, sectionName: dns}}]\n  rules: [{{backendRefs: [{{name: dns, port: 53}}]}}]\n"
    );
    let backends = harness::Backends(Default::default());
    let load = harness::load(
        dir.path(),
        &[
            ("base.yaml", &harness::base_manifests(&backends)),
            ("case.yaml", &manifests),
        ],
    );
    // The UDP listener took the route; the TCP listener on the same port number did not.
    let gw = model::ObjectKey::new(
        "gateway.networking.k8s.io",
        "Gateway",
        "gateway-conformance-infra",
        "edge",
    );
    let attached: Vec<(String, u32)> = load.snapshot.status[&gw]
        .listeners
        .iter()
        .map(|l| (l.name.clone(), l.attached_routes))
        .collect();
    assert_eq!(
        attached,
        [("dns".to_string(), 1), ("dns-tcp".to_string(), 0)]
    );
    let plan =
        gateway::compile(&load.snapshot, "gateway-conformance-infra", "edge").expect("compiles");
    assert!(plan.unserved.is_empty(), "{:?}", plan.unserved);
    let bind = gateway::Bind {
        ip: Some("127.0.0.1".parse().expect("ip")),
        port_map: [(53, 0)].into(),
        ..Default::default()
    };
    let running = gateway::start(&plan, &bind, Arc::default())
        .await
        .expect("starts");
    let listener = running.bound_udp[&53];

    let a = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let b = UdpSocket::bind("127.0.0.1:0").expect("bind");
    // A guard against a hang, not a timing assertion.
    for c in [&a, &b] {
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
    }
    let first = ask(&a, listener, "one");
    let (session_a, data) = first.split_once(' ').expect("address and data");
    assert_eq!(data, "one");
    // The same client stays on its session; another client gets its own.
    assert_eq!(ask(&a, listener, "two"), format!("{session_a} two"));
    let other = ask(&b, listener, "three");
    let (session_b, data) = other.split_once(' ').expect("address and data");
    assert_eq!(data, "three");
    assert_ne!(session_a, session_b);
    running.stop().await;
}
