//! `tcpKeepalive` on real connections: the ClientTrafficPolicy's on the connection the
//! gateway accepted, the BackendTrafficPolicy's on the connection it made upstream, as the
//! kernel reports them (`ss -o` shows the keep-alive timer of a socket that has one).

use std::process::Command;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness;

/// The `ss -tno` lines of established sockets matching a filter such as `sport = :80`.
fn ss(filter: &str) -> String {
    let out = Command::new("ss")
        .args(["-tnoH", "state", "established", filter])
        .output()
        .expect("ss (iproute2) runs");
    assert!(out.status.success(), "ss failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_and_upstream_connections_get_the_policies_keepalive() {
    let backends = harness::start_backends().await;
    let echo = backends.0["gateway-conformance-infra/infra-backend-v1"].addr;
    // Idle times in the middle of a minute, so that `ss` shows whole minutes (20 and 39)
    // whatever moment it looks.
    let manifests = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: gateway-conformance-infra}\n\
         spec:\n  parentRefs: [{name: same-namespace}]\n  rules:\n    - backendRefs: [{name: infra-backend-v1, port: 8080}]\n---\n\
         apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: ClientTrafficPolicy\nmetadata: {name: c, namespace: gateway-conformance-infra}\n\
         spec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: same-namespace}]\n  tcpKeepalive: {idleTime: 1230s, interval: 5s, probes: 3}\n---\n\
         apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: BackendTrafficPolicy\nmetadata: {name: b, namespace: gateway-conformance-infra}\n\
         spec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r}]\n  tcpKeepalive: {idleTime: 2370s}\n";
    let (plan, running) = harness::serve(&backends, manifests, Arc::default()).await;
    assert_eq!(
        plan.client_keepalive
            .map(|k| (k.idle.as_secs(), k.interval.as_secs(), k.probes)),
        Some((1230, 5, 3))
    );
    let gw = running.bound[&80];

    // One request on a connection that then stays open, as does the pooled upstream one.
    let mut conn = tokio::net::TcpStream::connect(gw).await.expect("connect");
    conn.write_all(b"GET /k HTTP/1.1\r\nHost: k.example\r\nContent-Length: 0\r\n\r\n")
        .await
        .expect("send");
    let mut buf = vec![0u8; 4096];
    let n = conn.read(&mut buf).await.expect("answer");
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );

    let accepted = ss(&format!("sport = :{}", gw.port()));
    assert!(
        accepted.contains("timer:(keepalive,20min"),
        "accepted: {accepted}"
    );
    // The test's own end has no keep-alive: the timer above is the policy's, not a default.
    let ours = ss(&format!("dport = :{}", gw.port()));
    assert!(
        !ours.is_empty() && !ours.contains("keepalive"),
        "client end: {ours}"
    );
    let upstream = ss(&format!("dport = :{}", echo.port()));
    assert!(
        upstream.contains("timer:(keepalive,39min"),
        "upstream: {upstream}"
    );
    drop(conn);
    running.stop().await;
}
