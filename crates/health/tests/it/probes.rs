//! Probes against real peers on loopback. No timing assertions: a probe that should fail for
//! a timeout gets a short `client.timeout` and a peer that never answers.

use std::sync::Arc;

use bytes::Bytes;
use health::probe::{Tls, probe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::{knot::Knot, one};

fn tls() -> Tls {
    Tls::with_roots(std::path::Path::new("/nonexistent"))
}

/// An HTTP server: `/health` answers JSON, `/echo` echoes method, a header and the body,
/// `/moved` redirects to `/health`, `/slow` never answers.
async fn http_server() -> httpkit::Serving {
    let handler: httpkit::Handler = Arc::new(|req: http::Request<Bytes>| {
        Box::pin(async move {
            match req.uri().path() {
                "/health" => httpkit::respond(
                    200,
                    "application/json",
                    r#"{"status":"UP","items":[1,2,3],"errors":null}"#,
                ),
                "/echo" => {
                    let x = req
                        .headers()
                        .get("x-probe")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    let ua = req
                        .headers()
                        .get("user-agent")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    let body = serde_json::json!({
                        "method": req.method().as_str(),
                        "x": x,
                        "ua": ua,
                        "body": String::from_utf8_lossy(req.body()),
                    });
                    httpkit::respond(200, "application/json", body.to_string())
                }
                "/moved" => {
                    let mut r = httpkit::respond(302, "text/plain", "");
                    r.headers_mut()
                        .insert("location", http::HeaderValue::from_static("/health"));
                    r
                }
                "/slow" => {
                    tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                    httpkit::respond(200, "text/plain", "late")
                }
                _ => httpkit::respond(404, "text/plain", "no"),
            }
        })
    });
    httpkit::serve("127.0.0.1:0".parse().expect("addr"), handler)
        .await
        .expect("bind")
}

#[tokio::test]
async fn http_status_body_and_jsonpath() {
    let srv = http_server().await;
    let e = one(&format!(
        "endpoints:\n  - name: api\n    group: external\n    url: http://{}/health\n    conditions:\n      - '[STATUS] == 200'\n      - '[BODY].status == UP'\n      - 'len([BODY].items) > 0'\n      - 'has([BODY].errors) == false'\n      - '[BODY] == pat(*UP*)'\n      - '[IP] == 127.0.0.1'\n      - '[CONNECTED] == true'\n      - '[RESPONSE_TIME] >= 0'\n",
        srv.addr
    ));
    let p = probe(&e, &tls()).await;
    assert!(p.success, "{p:#?}");
    assert_eq!(p.outcome.status, 200);
    // A failing condition is shown with the value it saw.
    let e = one(&format!(
        "endpoints:\n  - name: api\n    url: http://{}/nope\n    conditions: ['[STATUS] == 200']\n",
        srv.addr
    ));
    let p = probe(&e, &tls()).await;
    assert!(!p.success);
    assert_eq!(p.verdicts[0].shown, "[STATUS] (404) == 200");
    assert!(p.outcome.errors.is_empty());
}

#[tokio::test]
async fn http_method_headers_body() {
    let srv = http_server().await;
    let e = one(&format!(
        "endpoints:\n  - name: echo\n    url: http://{}/echo\n    method: POST\n    headers: {{X-Probe: hello}}\n    body: '{{\"ping\":1}}'\n    conditions:\n      - '[BODY].method == POST'\n      - '[BODY].x == hello'\n      - '[BODY].ua == Gatus/1.0'\n      - '[BODY].body == {{\"ping\":1}}'\n",
        srv.addr
    ));
    let p = probe(&e, &tls()).await;
    assert!(p.success, "{p:#?}");
}

#[tokio::test]
async fn http_redirects_followed_unless_ignored() {
    let srv = http_server().await;
    let yaml = |ignore: bool| {
        format!(
            "endpoints:\n  - name: r\n    url: http://{}/moved\n    client: {{ignore-redirect: {ignore}}}\n    conditions: ['[STATUS] == 200']\n",
            srv.addr
        )
    };
    let p = probe(&one(&yaml(false)), &tls()).await;
    assert!(p.success, "{p:#?}");
    let p = probe(&one(&yaml(true)), &tls()).await;
    assert!(!p.success);
    assert_eq!(p.outcome.status, 302);
}

#[tokio::test]
async fn http_timeout_is_an_error() {
    let srv = http_server().await;
    let e = one(&format!(
        "endpoints:\n  - name: slow\n    url: http://{}/slow\n    client: {{timeout: 200ms}}\n    conditions: ['[STATUS] == 200']\n",
        srv.addr
    ));
    let p = probe(&e, &tls()).await;
    assert!(!p.success);
    assert!(
        p.outcome.errors[0].contains("client.timeout"),
        "{:?}",
        p.outcome.errors
    );
}

#[tokio::test]
async fn tcp_connected_and_refused() {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    // A peer that answers what it is sent, once.
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                if let Ok(n) = s.read(&mut buf).await {
                    let _ = s.write_all(&buf[..n]).await;
                }
            });
        }
    });
    let e = one(&format!(
        "endpoints:\n  - name: t\n    url: tcp://{addr}\n    body: ping\n    conditions: ['[CONNECTED] == true', '[BODY] == ping']\n"
    ));
    let p = probe(&e, &tls()).await;
    assert!(p.success, "{p:#?}");
    // A port nobody listens on (bound, then released) refuses: not connected, no error.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let e = one(&format!(
        "endpoints:\n  - name: t\n    url: tcp://{closed}\n    conditions: ['[CONNECTED] == true']\n"
    ));
    let p = probe(&e, &tls()).await;
    assert!(!p.success);
    assert!(!p.outcome.connected);
    assert_eq!(p.verdicts[0].shown, "[CONNECTED] (false) == true");
}

#[tokio::test]
async fn dns_against_knot() {
    let knot = tokio::task::spawn_blocking(|| {
        Knot::start(
            "health.test",
            "$ORIGIN health.test.\n$TTL 60\n@ SOA ns.health.test. admin.health.test. 1 3600 600 86400 60\n@ NS ns\nns A 127.0.0.1\nweb A 192.0.2.10\nalias CNAME web\ntxt TXT \"v=1\"\n",
            false,
            "web.health.test",
            "192.0.2.10",
        )
    })
    .await
    .expect("knot");
    let ep = |name: &str, qtype: &str, conds: &str| {
        one(&format!(
            "endpoints:\n  - name: d\n    url: 127.0.0.1:{}\n    dns: {{query-name: {name}, query-type: {qtype}}}\n    conditions: {conds}\n",
            knot.port
        ))
    };
    let p = probe(
        &ep(
            "web.health.test",
            "A",
            "['[DNS_RCODE] == NOERROR', '[BODY] == 192.0.2.10']",
        ),
        &tls(),
    )
    .await;
    assert!(p.success, "{p:#?}");
    let p = probe(
        &ep(
            "alias.health.test",
            "CNAME",
            "['[BODY] == web.health.test.']",
        ),
        &tls(),
    )
    .await;
    assert!(p.success, "{p:#?}");
    let p = probe(&ep("txt.health.test", "TXT", "['[BODY] == v=1']"), &tls()).await;
    assert!(p.success, "{p:#?}");
    let p = probe(
        &ep(
            "nope.health.test",
            "A",
            "['[DNS_RCODE] == NXDOMAIN', 'len([BODY]) == 0']",
        ),
        &tls(),
    )
    .await;
    assert!(p.success, "{p:#?}");
    // An http endpoint whose name is resolved by client.dns-resolver (Knot, over TCP).
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    let e = one(&format!(
        "endpoints:\n  - name: r\n    url: tcp://ns.health.test:{port}\n    client: {{dns-resolver: 'tcp://127.0.0.1:{}'}}\n    conditions: ['[CONNECTED] == true', '[IP] == 127.0.0.1']\n",
        knot.port
    ));
    let p = probe(&e, &tls()).await;
    assert!(p.success, "{p:#?}");
}

/// A certificate for `localhost` valid until 2031-05-06, and a rustls server config.
fn server_tls() -> Arc<rustls::ServerConfig> {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    params.not_after = rcgen::date_time_ymd(2031, 5, 6);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("cert");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("cert");
    Arc::new(cfg)
}

#[tokio::test]
async fn tls_with_certificate_expiry() {
    let acceptor = tokio_rustls::TlsAcceptor::from(server_tls());
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut t) = acceptor.accept(s).await {
                    let mut buf = [0u8; 64];
                    if let Ok(n) = t.read(&mut buf).await {
                        let _ = t.write_all(&buf[..n]).await;
                        let _ = t.flush().await;
                    }
                }
            });
        }
    });
    let yaml = |insecure: bool| {
        format!(
            "endpoints:\n  - name: t\n    url: tls://localhost:{port}\n    body: hi\n    client: {{insecure: {insecure}}}\n    conditions: ['[CONNECTED] == true', '[CERTIFICATE_EXPIRATION] > 48h', '[BODY] == hi']\n"
        )
    };
    let p = probe(&one(&yaml(true)), &tls()).await;
    assert!(p.success, "{p:#?}");
    // Not trusted without `insecure` (no CA bundle has it): an error, not connected.
    let p = probe(&one(&yaml(false)), &tls()).await;
    assert!(!p.success);
    assert!(
        p.outcome.errors[0].contains("TLS handshake"),
        "{:?}",
        p.outcome.errors
    );
}

#[tokio::test]
async fn starttls_against_an_smtp_dialogue() {
    let acceptor = tokio_rustls::TlsAcceptor::from(server_tls());
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let mut s = tokio::io::BufStream::new(s);
                let mut line = String::new();
                use tokio::io::AsyncBufReadExt;
                let _ = s.write_all(b"220 test ESMTP\r\n").await;
                let _ = s.flush().await;
                let _ = s.read_line(&mut line).await; // EHLO
                let _ = s
                    .write_all(b"250-test\r\n250-SIZE 1000\r\n250 STARTTLS\r\n")
                    .await;
                let _ = s.flush().await;
                line.clear();
                let _ = s.read_line(&mut line).await; // STARTTLS
                let _ = s.write_all(b"220 go ahead\r\n").await;
                let _ = s.flush().await;
                let _ = acceptor.accept(s.into_inner()).await;
            });
        }
    });
    let e = one(&format!(
        "endpoints:\n  - name: smtp\n    url: starttls://localhost:{port}\n    client: {{insecure: true}}\n    conditions: ['[CONNECTED] == true', '[CERTIFICATE_EXPIRATION] > 48h']\n"
    ));
    let p = probe(&e, &tls()).await;
    assert!(p.success, "{p:#?}");
}

/// The corpus's smtp-relay probe (`starttls://`, `[CONNECTED] == true`) against a real SMTP
/// server: Debian's aiosmtpd offering STARTTLS with a certificate made here; the same server
/// without STARTTLS, and a port nobody listens on, fail.
#[tokio::test]
async fn starttls_against_aiosmtpd() {
    const PYTHON: &str = "/usr/bin/python3";
    let dir = tempfile::tempdir().expect("tmp");
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    params.not_after = rcgen::date_time_ymd(2031, 5, 6);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("cert");
    let (cert_pem, key_pem) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_pem, cert.pem()).expect("write");
    std::fs::write(&key_pem, key.serialize_pem()).expect("write");
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port()
    };
    // aiosmtpd, killed on drop; started with or without STARTTLS.
    struct Smtp(std::process::Child);
    impl Drop for Smtp {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let smtp = |port: u16, tls: bool| {
        let mut c = std::process::Command::new(PYTHON);
        c.args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")]);
        if tls {
            c.arg("--tlscert")
                .arg(&cert_pem)
                .arg("--tlskey")
                .arg(&key_pem);
        }
        Smtp(
            c.stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("aiosmtpd starts (apt-get install python3-aiosmtpd)"),
        )
    };
    let wait = async |port: u16| {
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("aiosmtpd did not listen on {port}");
    };
    let endpoint = |port: u16| {
        one(&format!(
            "endpoints:\n  - name: smtp-relay\n    url: starttls://localhost:{port}\n    client: {{insecure: true, timeout: 5s}}\n    conditions: ['[CONNECTED] == true', '[CERTIFICATE_EXPIRATION] > 48h']\n"
        ))
    };
    let (with_tls, without) = (free(), free());
    let _a = smtp(with_tls, true);
    let _b = smtp(without, false);
    wait(with_tls).await;
    wait(without).await;
    let p = probe(&endpoint(with_tls), &tls()).await;
    assert!(p.success, "{p:#?}");
    let p = probe(&endpoint(without), &tls()).await;
    assert!(!p.success, "no STARTTLS offered: {p:#?}");
    let p = probe(&endpoint(free()), &tls()).await;
    assert!(!p.success && !p.outcome.connected, "refused: {p:#?}");
}

#[tokio::test]
async fn icmp_echo_on_loopback() {
    // Loopback answers echoes for both families (the test runs as root: a raw socket, or the
    // ping socket where ping_group_range allows it).
    for host in ["127.0.0.1", "[::1]"] {
        let e = one(&format!(
            "endpoints:\n  - name: ping\n    url: icmp://{host}\n    conditions: ['[CONNECTED] == true']\n"
        ));
        let p = probe(&e, &tls()).await;
        assert!(p.success, "{host}: {p:#?}");
        assert_eq!(p.outcome.ip, host.trim_matches(['[', ']']));
    }
}

#[tokio::test]
async fn once_probes_every_endpoint_within_the_bound() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    // A server that counts the requests it holds at once: each is held a moment so that
    // probes beyond the bound would overlap and show.
    let held = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
    let h = held.clone();
    let handler: httpkit::Handler = Arc::new(move |_req: http::Request<Bytes>| {
        let h = h.clone();
        Box::pin(async move {
            let now = h.0.fetch_add(1, Ordering::SeqCst) + 1;
            h.1.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            h.0.fetch_sub(1, Ordering::SeqCst);
            httpkit::respond(200, "text/plain", "ok")
        })
    });
    let srv = httpkit::serve("127.0.0.1:0".parse().expect("addr"), handler)
        .await
        .expect("bind");
    let mut list = Vec::new();
    for i in 0..20 {
        let mut e = one(&format!(
            "endpoints:\n  - name: e{i}\n    url: http://{}/health\n    conditions: ['[STATUS] == 200']\n",
            srv.addr
        ));
        e.name = format!("e{i}");
        list.push(e);
    }
    let results = health::run::once(&list, &tls(), 2).await;
    assert_eq!(results.len(), 20);
    assert!(results.iter().all(|p| p.success));
    let most = held.1.load(Ordering::SeqCst);
    assert!((1..=2).contains(&most), "{most} probes at once, bound 2");
}

#[tokio::test]
async fn a_schedule_keeps_unchanged_endpoints_across_a_change() {
    let e = |name: &str, status: u16| {
        one(&format!(
            "endpoints:\n  - name: {name}\n    url: http://127.0.0.1:9/\n    interval: 1h\n    conditions: ['[STATUS] == {status}']\n"
        ))
    };
    let on_result: health::run::OnResult = Arc::new(|_, _| {});
    let mut s = health::run::Schedule::new(tls(), 2, on_result);
    assert!(s.set(vec![e("a", 200), e("b", 200)]).is_empty());
    // Same definitions plus one: nothing stops.
    assert!(
        s.set(vec![e("a", 200), e("b", 200), e("c", 200)])
            .is_empty()
    );
    assert_eq!(s.len(), 3);
    // `a` changes and `c` goes: both stop (their results are stale); `b` keeps probing.
    let mut stopped: Vec<String> = s
        .set(vec![e("a", 204), e("b", 200)])
        .into_iter()
        .map(|e| e.name)
        .collect();
    stopped.sort();
    assert_eq!(stopped, ["a", "c"]);
    assert_eq!(s.len(), 2);
}
