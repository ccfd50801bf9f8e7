//! TLS listeners with real peers: curl terminates HTTPS against trellis (HTTP/1.1 and HTTP/2
//! by ALPN, certificate chosen by SNI); a TLSRoute passes TLS through untouched to an
//! `openssl s_server`; a TCPRoute carries plain bytes.

use std::process::{Command, Stdio};
use std::sync::Arc;

use crate::harness::{self, Kill};

fn indent(pem: &str) -> String {
    pem.lines().map(|l| format!("    {l}\n")).collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn curl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Serves the Gateway `edge` of `manifests` (beside the harness's base manifests) with its
/// listener `ports` on free ports of 127.0.0.1.
async fn start_edge(
    dir: &std::path::Path,
    backends: &harness::Backends,
    manifests: &str,
    ports: &[u16],
) -> (gateway::Running, Arc<gateway::metrics::Metrics>) {
    harness::start_gateway(
        dir,
        backends,
        manifests,
        "edge",
        ports,
        gateway::Bind::default(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_passthrough_and_tcp_with_real_peers() {
    let dir = tempfile::tempdir().expect("tmp");
    // The gateway's certificate, and a different one for the passthrough backend.
    let gw_cert =
        rcgen::generate_simple_self_signed(vec!["*.example.com".to_string()]).expect("cert");
    let be_cert =
        rcgen::generate_simple_self_signed(vec!["nas.example.com".to_string()]).expect("cert");
    let gw_ca = dir.path().join("gw.pem");
    let be_ca = dir.path().join("be.pem");
    std::fs::write(&gw_ca, gw_cert.cert.pem()).expect("write");
    std::fs::write(&be_ca, be_cert.cert.pem()).expect("write");
    std::fs::write(
        dir.path().join("be.key"),
        be_cert.signing_key.serialize_pem(),
    )
    .expect("write");

    // A real TLS server behind the passthrough listener.
    let s_port = free_port();
    let _s_server = Kill(
        Command::new("openssl")
            .args([
                "s_server",
                "-quiet",
                "-www",
                "-accept",
                &s_port.to_string(),
                "-cert",
            ])
            .arg(&be_ca)
            .arg("-key")
            .arg(dir.path().join("be.key"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server starts"),
    );

    // Wait (bounded) until openssl accepts connections.
    let ready = (0..100).any(|_| {
        std::net::TcpStream::connect(("127.0.0.1", s_port)).is_ok() || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            false
        }
    });
    assert!(ready, "openssl s_server did not start");

    let backends = harness::start_backends().await;
    let manifests = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: site-tls, namespace: gateway-conformance-infra}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: edge, namespace: gateway-conformance-infra}}\nspec:\n  gatewayClassName: trellis\n  listeners:\n\
         \x20   - {{name: https, protocol: HTTPS, port: 443, allowedRoutes: {{namespaces: {{from: All}}}}, tls: {{certificateRefs: [{{name: site-tls}}]}}}}\n\
         \x20   - {{name: passthrough, protocol: TLS, port: 443, hostname: \"*.example.com\", tls: {{mode: Passthrough}}, allowedRoutes: {{namespaces: {{from: All}}}}}}\n\
         \x20   - {{name: ssh, protocol: TCP, port: 2222, allowedRoutes: {{namespaces: {{from: All}}}}}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: app, namespace: gateway-conformance-infra}}\nspec:\n  parentRefs: [{{name: edge, sectionName: https}}]\n  hostnames: [app.example.com]\n  rules: [{{backendRefs: [{{name: infra-backend-v1, port: 8080}}]}}]\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: nas, namespace: gateway-conformance-infra}}\nspec: {{ports: [{{name: https, port: 443}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: nas, namespace: gateway-conformance-infra, labels: {{kubernetes.io/service-name: nas}}}}\naddressType: IPv4\nports: [{{name: https, port: {s_port}}}]\nendpoints: [{{addresses: [127.0.0.1]}}]\n---\n\
         apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TLSRoute\nmetadata: {{name: nas, namespace: gateway-conformance-infra}}\nspec:\n  parentRefs: [{{name: edge, sectionName: passthrough}}]\n  hostnames: [nas.example.com]\n  rules: [{{backendRefs: [{{name: nas, port: 443}}]}}]\n---\n\
         apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TCPRoute\nmetadata: {{name: ssh, namespace: gateway-conformance-infra}}\nspec:\n  parentRefs: [{{name: edge, sectionName: ssh}}]\n  rules: [{{backendRefs: [{{name: infra-backend-v2, port: 8080}}]}}]\n",
        indent(&gw_cert.cert.pem()),
        indent(&gw_cert.signing_key.serialize_pem())
    );
    let (running, metrics) = start_edge(dir.path(), &backends, &manifests, &[443, 2222]).await;
    let tls_port = running.bound[&443].port();
    let tcp_port = running.bound[&2222].port();
    let resolve = move |h: &str| format!("{h}:{tls_port}:127.0.0.1");
    let ca = gw_ca.display().to_string();

    let task = tokio::task::spawn_blocking(move || {
        // HTTPS terminated by trellis, HTTP/1.1 and HTTP/2 chosen by ALPN: HTTP/1.1 on the own
        // path, HTTP/2 on hyper's.
        for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
            let fast_before = metrics.h1_fast.get();
            let (code, out, err) = curl(&[
                flag,
                "--cacert",
                &ca,
                "--resolve",
                &resolve("app.example.com"),
                "-w",
                "\n%{http_version}",
                &format!("https://app.example.com:{tls_port}/hello"),
            ]);
            assert_eq!(code, 0, "{err}");
            let (body, v) = out.rsplit_once('\n').expect("version line");
            assert_eq!(v, version, "negotiated HTTP version");
            let seen: serde_json::Value = serde_json::from_str(body).expect("echo json");
            assert_eq!(seen["backend"], "infra-backend-v1");
            assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
            let fast = metrics.h1_fast.get() - fast_before;
            assert_eq!(
                fast,
                u64::from(version == "1.1"),
                "HTTP/{version} served by the own path"
            );
        }
        // An unknown name on the HTTPS listener: 404 from trellis, certificate still valid.
        let (code, out, _) = curl(&[
            "--cacert",
            &ca,
            "--resolve",
            &resolve("other.example.com"),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("https://other.example.com:{tls_port}/"),
        ]);
        assert_eq!((code, out.as_str()), (0, "404"));
        // Passthrough: the backend's own certificate is what curl sees.
        let be = be_ca.display().to_string();
        let (code, out, err) = curl(&[
            "--cacert",
            &be,
            "--resolve",
            &resolve("nas.example.com"),
            &format!("https://nas.example.com:{tls_port}/"),
        ]);
        assert_eq!(code, 0, "passthrough to openssl s_server failed: {err}");
        assert!(out.contains("s_server") || out.contains("Ciphers"), "{out}");
        // Plain TCP.
        let (code, out, err) = curl(&[&format!("http://127.0.0.1:{tcp_port}/over-tcp")]);
        assert_eq!(code, 0, "{err}");
        assert!(
            out.contains("infra-backend-v2") && out.contains("/over-tcp"),
            "{out}"
        );
    });
    task.await.expect("checks pass");
    running.stop().await;
}

/// A TCPRoute's backend with an endpoint that refuses: every connection reaches the one that
/// answers, and after the first refusal the refusing endpoint is skipped for a while (ejected,
/// as the HTTP paths do) instead of being tried again by every other connection.
#[tokio::test]
async fn a_tcp_route_skips_an_endpoint_that_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let live = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = live.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = live.accept().await {
            let _ = s.write_all(b"hello\n").await;
        }
    });
    let backends = harness::start_backends().await;
    let dir = tempfile::tempdir().expect("tmp");
    // 127.0.0.2 is loopback too, and nothing listens there on this port.
    let manifests = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: edge, namespace: gateway-conformance-infra}}\nspec:\n  gatewayClassName: trellis\n  listeners:\n\
         \x20   - {{name: raw, protocol: TCP, port: 2222, allowedRoutes: {{namespaces: {{from: All}}}}}}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: pair, namespace: gateway-conformance-infra}}\nspec: {{ports: [{{name: raw, port: 9000}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: pair, namespace: gateway-conformance-infra, labels: {{kubernetes.io/service-name: pair}}}}\naddressType: IPv4\nports: [{{name: raw, port: {port}}}]\nendpoints: [{{addresses: [127.0.0.1]}}, {{addresses: [127.0.0.2]}}]\n---\n\
         apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TCPRoute\nmetadata: {{name: pair, namespace: gateway-conformance-infra}}\nspec:\n  parentRefs: [{{name: edge, sectionName: raw}}]\n  rules: [{{backendRefs: [{{name: pair, port: 9000}}]}}]\n"
    );
    let (running, metrics) = start_edge(dir.path(), &backends, &manifests, &[2222]).await;
    for i in 0..6 {
        let mut c = tokio::net::TcpStream::connect(running.bound[&2222])
            .await
            .expect("connect");
        let mut got = String::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            c.read_to_string(&mut got),
        )
        .await
        .expect("answers in time")
        .expect("reads");
        assert_eq!(got, "hello\n", "connection {i}");
    }
    assert_eq!(
        metrics.upstream_connect_failures.get(),
        1,
        "the refusing endpoint was tried once, then skipped"
    );
}

/// ClientTrafficPolicy `tls.maxVersion: "1.2"` is honoured: curl gets TLS 1.2 and a client
/// that insists on TLS 1.3 is refused; without the policy TLS 1.3 is negotiated. And
/// `tls.ciphers` is: a client offering only a TLS 1.2 suite the policy leaves out is refused,
/// one offering the listed suite gets it (a listed suite rustls lacks is just not offered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_max_version_is_honoured() {
    let dir = tempfile::tempdir().expect("tmp");
    let cert = rcgen::generate_simple_self_signed(vec!["*.example.com".to_string()]).expect("cert");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, cert.cert.pem()).expect("write");
    let backends = harness::start_backends().await;
    let gateway = |name: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: gateway-conformance-infra}}\nspec:\n  gatewayClassName: trellis\n  listeners:\n\
             \x20   - {{name: https, protocol: HTTPS, port: 443, allowedRoutes: {{namespaces: {{from: All}}}}, tls: {{certificateRefs: [{{name: site-tls}}]}}}}\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: gateway-conformance-infra}}\nspec:\n  parentRefs: [{{name: {name}}}]\n  rules: [{{backendRefs: [{{name: infra-backend-v1, port: 8080}}]}}]\n---\n"
        )
    };
    let manifests = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: site-tls, namespace: gateway-conformance-infra}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}---\n\
         {}{}{}\
         apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: ClientTrafficPolicy\nmetadata: {{name: old-clients, namespace: gateway-conformance-infra}}\n\
         spec:\n  targetRefs: [{{group: gateway.networking.k8s.io, kind: Gateway, name: capped}}]\n  tls: {{maxVersion: \"1.2\"}}\n---\n\
         apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: ClientTrafficPolicy\nmetadata: {{name: one-suite, namespace: gateway-conformance-infra}}\n\
         spec:\n  targetRefs: [{{group: gateway.networking.k8s.io, kind: Gateway, name: ciphered}}]\n  tls: {{maxVersion: \"1.2\", ciphers: [ECDHE-ECDSA-CHACHA20-POLY1305, AES128-SHA]}}\n",
        indent(&cert.cert.pem()),
        indent(&cert.signing_key.serialize_pem()),
        gateway("capped"),
        gateway("open"),
        gateway("ciphered"),
    );
    let mut ports = Vec::new();
    let mut running = Vec::new();
    for name in ["capped", "open", "ciphered"] {
        let (r, _) = harness::start_gateway(
            dir.path(),
            &backends,
            &manifests,
            name,
            &[443],
            gateway::Bind::default(),
        )
        .await;
        ports.push(r.bound[&443].port());
        running.push(r);
    }
    let ca = ca.display().to_string();
    tokio::task::spawn_blocking(move || {
        let version = |port: u16, extra: &[&str]| {
            let resolve = format!("app.example.com:{port}:127.0.0.1");
            let url = format!("https://app.example.com:{port}/");
            let mut args = vec!["--cacert", &ca, "--resolve", &resolve, "-o", "/dev/null"];
            args.extend(["-w", "%{ssl_version}", "-v", &url]);
            args.extend(extra);
            curl(&args)
        };
        let (code, _, err) = version(ports[0], &[]);
        assert_eq!(code, 0, "{err}");
        assert!(err.contains("TLSv1.2"), "capped at 1.2: {err}");
        let (code, _, err) = version(ports[0], &["--tlsv1.3"]);
        assert_ne!(code, 0, "a TLS 1.3-only client is refused: {err}");
        let (code, _, err) = version(ports[1], &[]);
        assert_eq!(code, 0, "{err}");
        assert!(err.contains("TLSv1.3"), "no policy: 1.3: {err}");
        let (code, _, err) = version(ports[2], &["--ciphers", "ECDHE-ECDSA-AES128-GCM-SHA256"]);
        assert_ne!(code, 0, "a suite the policy leaves out is refused: {err}");
        let (code, _, err) = version(
            ports[1],
            &[
                "--ciphers",
                "ECDHE-ECDSA-AES128-GCM-SHA256",
                "--tls-max",
                "1.2",
            ],
        );
        assert_eq!(
            code, 0,
            "the same client is served where no policy restricts: {err}"
        );
        let (code, _, err) = version(ports[2], &[]);
        assert_eq!(code, 0, "{err}");
        assert!(
            err.contains("ECDHE-ECDSA-CHACHA20-POLY1305"),
            "the listed suite is the one negotiated: {err}"
        );
    })
    .await
    .expect("checks");
}
