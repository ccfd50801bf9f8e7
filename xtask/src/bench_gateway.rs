//! `cargo xtask bench gateway`: trellis's gateway side by side with nginx and haproxy.
//!
//! The method of `../shared/peer-baselines/http`: every server (the backend nginx and each
//! proxy) pinned to CPU 0, wrk pinned to CPU 1, `wrk -t1 -c64 -d<D>s --latency`, rounds
//! interleaved, the median reported; proxy CPU time per request from /proc over each run.
//! Everything listens on 127.0.0.1. Writes `target/bench/gateway.md`. A second trellis
//! gateway records a flow per request (`--observe-listen`, nobody reading), for the cost of
//! flows (`trellis-flows-small` against `trellis-small`). Last, the memory per idle keep-alive
//! client connection of each proxy. `ONLY=a,b` runs just those scenarios (`idle` for the
//! memory, `flows-together` and `nginx-together` for two servers loaded at once, `h2h3` for
//! HTTP/2 with h2load and HTTP/3 with `trellis bench-h3`). `*-newconn-*` scenarios open a new
//! connection (and TLS handshake) per request; `trellis-jwt-small` is a route behind an RS256
//! JWT SecurityPolicy, measured against `trellis-general-small`, the same kind of route
//! without it (both on the general path). `BEFORE=/path/to/trellis` also runs an older build
//! of trellis beside this one (`trellis-before-*` scenarios, loaded at once with this one as
//! `before-together`, and over HTTP/2), so that a change is measured before and after in one
//! run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::proc::{Bg, cpu_secs, rss_kib, wait_tcp};

const BACKEND_PORT: u16 = 18081;
const NGINX_PORT: u16 = 18080;
const NGINX_TLS_PORT: u16 = 18443;
const HAPROXY_PORT: u16 = 18082;
const TRELLIS_PORT: u16 = 18090;
const TRELLIS_TLS_PORT: u16 = 18490;
/// The same gateway recording a flow per request (`--observe-listen`), for the cost of flows.
const TRELLIS_FLOWS_PORT: u16 = 18091;
const TRELLIS_FLOWS_TLS_PORT: u16 = 18491;
const TRELLIS_FLOWS_OBSERVE_PORT: u16 = 18245;
/// An older trellis binary (`BEFORE=path`), for before and after a change in one run.
const TRELLIS_BEFORE_PORT: u16 = 18092;
const TRELLIS_BEFORE_TLS_PORT: u16 = 18492;

fn start(name: &'static str, dir: &Path, cmd: &[&str]) -> Result<Bg> {
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let child = Command::new("taskset")
        .args(["-c", "0"])
        .args(cmd)
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    Ok(Bg(child))
}

#[derive(Clone, Debug, Default)]
struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: f64,
    non2xx: u64,
    proxy_us_per_req: f64,
}

fn to_ms(s: &str) -> f64 {
    let num: String = s
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let v: f64 = num.parse().unwrap_or(f64::NAN);
    match &s[num.len()..] {
        "us" => v / 1000.0,
        "ms" => v,
        "s" => v * 1000.0,
        _ => f64::NAN,
    }
}

fn wrk(url: &str, headers: &[String], secs: u32) -> Result<Run> {
    let mut cmd = Command::new("taskset");
    cmd.args([
        "-c",
        "1",
        "wrk",
        "-t1",
        "-c64",
        &format!("-d{secs}s"),
        "--latency",
    ]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(url).output().context("wrk")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let grab = |key: &str| -> Option<String> {
        text.lines()
            .find(|l| l.trim_start().starts_with(key))
            .map(|l| l.trim_start()[key.len()..].trim().to_string())
    };
    let rps = grab("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("wrk output: {text}"))?;
    let p50 = grab("50%").map(|v| to_ms(&v)).unwrap_or(f64::NAN);
    let p99 = grab("99%").map(|v| to_ms(&v)).unwrap_or(f64::NAN);
    let requests = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let non2xx = grab("Non-2xx or 3xx responses:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(Run {
        rps,
        p50_ms: p50,
        p99_ms: p99,
        requests,
        non2xx,
        proxy_us_per_req: 0.0,
    })
}

/// Connections opened for the idle-memory measurement.
/// Two servers loaded at the same time (two wrk on CPU 1), `rounds` times: the medians of
/// b's proxy CPU per request over a's, and of b's requests/s over a's.
fn together(
    a: (&str, &str, &Bg),
    b: (&str, &str, &Bg),
    rounds: usize,
    secs: u32,
) -> Result<(f64, f64)> {
    let mut cpu_ratios = Vec::new();
    let mut rps_ratios = Vec::new();
    for round in 0..rounds {
        let (c_a, c_b) = (cpu_secs(a.2.0.id()), cpu_secs(b.2.0.id()));
        let (ra, rb) = std::thread::scope(|s| {
            let ra = s.spawn(|| wrk(a.1, &[], secs));
            let rb = wrk(b.1, &[], secs);
            (
                ra.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("wrk thread"))),
                rb,
            )
        });
        let (ra, rb) = (ra?, rb?);
        let us_a = (cpu_secs(a.2.0.id()) - c_a) / ra.requests * 1e6;
        let us_b = (cpu_secs(b.2.0.id()) - c_b) / rb.requests * 1e6;
        eprintln!(
            "together round {round}: {} {:.0} req/s {us_a:.2} µs/req, {} {:.0} req/s {us_b:.2} µs/req",
            a.0, ra.rps, b.0, rb.rps
        );
        cpu_ratios.push(us_b / us_a);
        rps_ratios.push(rb.rps / ra.rps);
    }
    Ok((median(cpu_ratios), median(rps_ratios)))
}

/// HTTP/2 load on a TLS port: `h2load -D<secs> -c64 -m1 -t1` on CPU 1.
fn h2load(port: u16, secs: u32) -> Result<Run> {
    let out = Command::new("taskset")
        .args([
            "-c",
            "1",
            "h2load",
            &format!("-D{secs}"),
            "-c64",
            "-m1",
            "-t1",
        ])
        .arg(format!("https://127.0.0.1:{port}/small"))
        .output()
        .context("h2load")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = |start: &str| text.lines().find(|l| l.trim_start().starts_with(start));
    // "finished in 10.00s, 41234.50 req/s, 5.10MB/s"
    let rps = line("finished in")
        .and_then(|l| l.split(", ").nth(1)?.strip_suffix(" req/s")?.parse().ok())
        .with_context(|| format!("h2load output: {text}"))?;
    // "requests: N total, N started, N done, N succeeded, ..."
    let requests = line("requests:")
        .and_then(|l| {
            l.split(", ")
                .find(|p| p.ends_with(" succeeded"))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0.0);
    // "status codes: N 2xx, N 3xx, N 4xx, N 5xx"
    let non2xx = line("status codes:")
        .map(|l| {
            l.split(", ")
                .filter(|p| p.ends_with(" 4xx") || p.ends_with(" 5xx"))
                .filter_map(|p| p.split_whitespace().rev().nth(1)?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    // "time for request:  min  max  mean  sd  +/- sd"
    let mean = line("time for request:")
        .and_then(|l| l.split_whitespace().nth(5))
        .map(to_ms)
        .unwrap_or(f64::NAN);
    Ok(Run {
        rps,
        p50_ms: mean,
        p99_ms: f64::NAN,
        requests,
        non2xx,
        proxy_us_per_req: 0.0,
    })
}

/// HTTP/3 load on a TLS port's UDP side: `trellis bench-h3` on CPU 1, 64 connections.
fn h3load(trellis: &str, port: u16, cert: &str, secs: u32) -> Result<Run> {
    let out = Command::new("taskset")
        .args(["-c", "1", trellis, "bench-h3", "--connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["--cacert", cert, "--connections", "64", "--seconds"])
        .arg(secs.to_string())
        .output()
        .context("trellis bench-h3")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "trellis bench-h3 failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // "requests N seconds S rps R p50_ms P p99_ms Q non2xx E"
    let words: Vec<&str> = text.split_whitespace().collect();
    let field = |key: &str| -> Option<f64> {
        let i = words.iter().position(|w| *w == key)?;
        words.get(i + 1)?.parse().ok()
    };
    Ok(Run {
        rps: field("rps").with_context(|| format!("bench-h3 output: {text}"))?,
        p50_ms: field("p50_ms").unwrap_or(f64::NAN),
        p99_ms: field("p99_ms").unwrap_or(f64::NAN),
        requests: field("requests").unwrap_or(0.0),
        non2xx: field("non2xx").unwrap_or(0.0) as u64,
        proxy_us_per_req: 0.0,
    })
}

const IDLE_CONNECTIONS: usize = 2000;

/// Memory per idle keep-alive client connection: the server's resident memory before and
/// after `IDLE_CONNECTIONS` clients each made one request and stayed connected, divided by
/// their number (KiB).
fn idle_kib_per_connection(port: u16, pid: u32) -> Result<f64> {
    use std::io::{Read, Write};
    let before = rss_kib(pid);
    let mut conns = Vec::with_capacity(IDLE_CONNECTIONS);
    for _ in 0..IDLE_CONNECTIONS {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port))?;
        c.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
        c.write_all(b"GET /small HTTP/1.1\r\nHost: bench\r\n\r\n")?;
        let mut buf = [0u8; 4096];
        let n = c.read(&mut buf)?;
        if !buf[..n].starts_with(b"HTTP/1.1 200") {
            bail!("port {port}: no 200 on an idle-memory connection");
        }
        conns.push(c);
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let after = rss_kib(pid);
    drop(conns);
    Ok((after - before) / IDLE_CONNECTIONS as f64)
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

fn ensure_tools() -> Result<()> {
    crate::ensure_packages(&[
        ("/usr/sbin/nginx", "nginx-light"),
        ("/usr/sbin/haproxy", "haproxy"),
        ("/usr/bin/wrk", "wrk"),
        ("/usr/bin/openssl", "openssl"),
        ("/usr/bin/h2load", "nghttp2-client"),
    ])
}

/// The encoding a compression scenario asks for (named in the scenario).
fn encoding_of(scenario: &str) -> Option<&'static str> {
    ["gzip", "zstd", "br"]
        .into_iter()
        .find(|e| scenario.split('-').any(|part| part == *e))
}

/// The request headers of a scenario: the encoding it asks for, `Connection: close` for a new
/// connection per request, the host and token of the JWT-protected and general-path routes.
fn headers_of(scenario: &str, token: &str) -> Vec<String> {
    let mut h: Vec<String> = encoding_of(scenario)
        .map(|e| format!("Accept-Encoding: {e}"))
        .into_iter()
        .collect();
    if scenario.contains("newconn") {
        h.push("Connection: close".into());
    }
    if scenario.contains("-jwt-") {
        h.push("Host: jwt.bench".into());
        h.push(format!("Authorization: Bearer {token}"));
    }
    if scenario.contains("-general-") {
        h.push("Host: general.bench".into());
    }
    h
}

/// base64url without padding (JWT's encoding).
fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..=c.len() {
            out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// An RS256 key made with openssl, its JWKS and a token it signed (issuer
/// `https://bench.example`, audience `bench`, valid for 30 days): the JWT scenario's.
fn jwt_material(dir: &Path) -> Result<(String, String)> {
    let key = dir.join("jwt.key");
    if !key.exists() {
        let ok = Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&key)
            .stderr(Stdio::null())
            .status()?
            .success();
        if !ok {
            bail!("openssl could not make the JWT key");
        }
    }
    let out = Command::new("openssl")
        .args(["rsa", "-noout", "-modulus", "-in"])
        .arg(&key)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text
        .trim()
        .strip_prefix("Modulus=")
        .context("openssl printed no modulus")?;
    let modulus: Vec<u8> = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16))
        .collect::<Result<_, _>>()?;
    let jwks = format!(
        "{{\"keys\":[{{\"kty\":\"RSA\",\"kid\":\"bench\",\"alg\":\"RS256\",\"n\":\"{}\",\"e\":\"AQAB\"}}]}}",
        b64url(&modulus)
    );
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 30 * 86_400;
    let signed = format!(
        "{}.{}",
        b64url(br#"{"alg":"RS256","kid":"bench","typ":"JWT"}"#),
        b64url(
            format!(r#"{{"iss":"https://bench.example","aud":"bench","sub":"bench","exp":{exp}}}"#)
                .as_bytes()
        )
    );
    let input = dir.join("jwt.input");
    std::fs::write(&input, &signed)?;
    let sig = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(&key)
        .arg(&input)
        .output()?;
    if !sig.status.success() || sig.stdout.is_empty() {
        bail!("openssl could not sign the JWT");
    }
    Ok((jwks, format!("{signed}.{}", b64url(&sig.stdout))))
}

fn write_configs(dir: &Path, jwks: &str) -> Result<()> {
    std::fs::create_dir_all(dir.join("tmp"))?;
    std::fs::create_dir_all(dir.join("www"))?;
    // A 10 KiB JSON document, as the baseline's data.json.
    let mut json = String::from("{\"endpoints\":[");
    let mut i = 0;
    while json.len() < 10_180 {
        if i > 0 {
            json.push(',');
        }
        let _ = write!(
            json,
            "{{\"ip\":\"10.69.{}.{}\",\"port\":8080,\"ready\":true,\"node\":\"node-{}\"}}",
            i / 250,
            i % 250,
            i % 3
        );
        i += 1;
    }
    json.push_str("]}");
    while json.len() < 10_240 {
        json.insert(json.len() - 2, ' ');
    }
    std::fs::write(dir.join("www/data.json"), &json)?;
    // A 20 KB one for compression: twice the same shape, so it compresses as real JSON does.
    let mut big = json.clone();
    big.truncate(big.len() - 2);
    big.push(',');
    big.push_str(&json["{\"endpoints\":[".len()..]);
    std::fs::write(dir.join("www/data20k.json"), &big)?;
    let d = dir.display();
    let temp = |tag: &str| {
        format!(
            "client_body_temp_path {d}/tmp/cb{tag}; proxy_temp_path {d}/tmp/pt{tag}; fastcgi_temp_path {d}/tmp/ft{tag}; uwsgi_temp_path {d}/tmp/ut{tag}; scgi_temp_path {d}/tmp/st{tag};"
        )
    };
    std::fs::write(
        dir.join("backend.conf"),
        format!(
            "daemon off; master_process on; worker_processes 1; pid {d}/tmp/backend.pid; error_log {d}/backend_error.log warn;\n\
             events {{ worker_connections 4096; multi_accept on; }}\n\
             http {{ access_log off; default_type text/plain; types {{ application/json json; }} sendfile on; tcp_nopush on; tcp_nodelay on;\n\
             keepalive_timeout 300s; keepalive_requests 10000000; open_file_cache max=100 inactive=60s; open_file_cache_valid 60s; {}\n\
             server {{ listen 127.0.0.1:{BACKEND_PORT} backlog=4096; root {d}/www;\n\
             location = /small {{ return 200 \"{}\\n\"; }} location = /data.json {{ }} }} }}\n",
            temp("b"),
            "x".repeat(99)
        ),
    )?;
    std::fs::write(
        dir.join("nginx_proxy.conf"),
        format!(
            "daemon off; master_process on; worker_processes 1; pid {d}/tmp/proxy.pid; error_log {d}/proxy_error.log warn;\n\
             events {{ worker_connections 4096; multi_accept on; }}\n\
             http {{ access_log off; default_type text/plain; tcp_nodelay on; keepalive_timeout 300s; keepalive_requests 10000000; {}\n\
             upstream be {{ server 127.0.0.1:{BACKEND_PORT}; keepalive 64; keepalive_requests 10000000; keepalive_timeout 300s; }}\n\
             proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering on;\n\
             gzip on; gzip_proxied any; gzip_types application/json; gzip_min_length 30; gzip_vary on;\n\
             server {{ listen 127.0.0.1:{NGINX_PORT} backlog=4096; location / {{ proxy_pass http://be; }} }}\n\
             server {{ listen 127.0.0.1:{NGINX_TLS_PORT} ssl http2 backlog=4096; ssl_certificate {d}/cert.pem; ssl_certificate_key {d}/key.pem;\n\
             ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:SSL:10m; location / {{ proxy_pass http://be; }} }} }}\n",
            temp("p")
        ),
    )?;
    std::fs::write(
        dir.join("haproxy.cfg"),
        format!(
            "global\n  nbthread 1\n  maxconn 4000\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 300s\n  timeout server 300s\n  http-reuse always\n\
             frontend f\n  bind 127.0.0.1:{HAPROXY_PORT}\n  default_backend b\nbackend b\n  server s1 127.0.0.1:{BACKEND_PORT}\n"
        ),
    )?;
    // Made again when missing or when made before it was a leaf (as a CA).
    let leaf = std::fs::read_to_string(dir.join("cert.pem")).is_ok_and(|_| {
        Command::new("openssl")
            .args(["x509", "-noout", "-ext", "basicConstraints", "-in"])
            .arg(dir.join("cert.pem"))
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("CA:FALSE"))
    });
    if !leaf {
        let ok = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "30",
                "-subj",
                "/CN=bench.example",
                "-addext",
                "subjectAltName=DNS:bench.example,IP:127.0.0.1",
                // A leaf, not a CA: webpki (the HTTP/3 client's) refuses a CA as a server's.
                "-addext",
                "basicConstraints=critical,CA:FALSE",
            ])
            .arg("-keyout")
            .arg(dir.join("key.pem"))
            .arg("-out")
            .arg(dir.join("cert.pem"))
            .stderr(Stdio::null())
            .status()?
            .success();
        if !ok {
            bail!("openssl could not make the benchmark certificate");
        }
    }
    let indent = |p: &str| -> Result<String> {
        Ok(std::fs::read_to_string(dir.join(p))?
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect())
    };
    let gw = dir.join("manifests");
    std::fs::create_dir_all(&gw)?;
    std::fs::write(
        gw.join("bench.yaml"),
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: trellis}}\nspec: {{controllerName: trellis.dev/gateway-controller}}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {{name: bench-tls, namespace: bench}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: edge, namespace: bench}}\nspec:\n  gatewayClassName: trellis\n  listeners:\n\
             \x20   - {{name: http, protocol: HTTP, port: 80}}\n    - {{name: https, protocol: HTTPS, port: 443, tls: {{certificateRefs: [{{name: bench-tls}}]}}}}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {{name: be, namespace: bench}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: be, namespace: bench, labels: {{kubernetes.io/service-name: be}}}}\naddressType: IPv4\n\
             ports: [{{name: http, port: {BACKEND_PORT}}}]\nendpoints: [{{addresses: [127.0.0.1]}}]\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: all, namespace: bench}}\nspec:\n  parentRefs: [{{name: edge}}]\n  rules: [{{backendRefs: [{{name: be, port: 80}}]}}]\n---\n\
             apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: BackendTrafficPolicy\nmetadata: {{name: compress, namespace: bench}}\nspec:\n\
             \x20 targetSelectors: [{{group: gateway.networking.k8s.io, kind: Gateway}}]\n  compressor: [{{type: Zstd}}, {{type: Gzip}}]\n---\n\
             apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: ClientTrafficPolicy\nmetadata: {{name: quic, namespace: bench}}\nspec:\n\
             \x20 targetRefs: [{{group: gateway.networking.k8s.io, kind: Gateway, name: edge}}]\n  http3: {{}}\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: jwt, namespace: bench}}\nspec:\n  parentRefs: [{{name: edge}}]\n  hostnames: [jwt.bench]\n  rules: [{{backendRefs: [{{name: be, port: 80}}]}}]\n---\n\
             apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: SecurityPolicy\nmetadata: {{name: jwt, namespace: bench}}\nspec:\n\
             \x20 targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: jwt}}]\n  jwt:\n    providers:\n    - name: bench\n      issuer: https://bench.example\n      audiences: [bench]\n      localJWKS: {{type: Inline, inline: '{jwks}'}}\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: general, namespace: bench}}\nspec:\n  parentRefs: [{{name: edge}}]\n  hostnames: [general.bench]\n\
             \x20 rules: [{{filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /}}}}}}], backendRefs: [{{name: be, port: 80}}]}}]\n",
            indent("cert.pem")?,
            indent("key.pem")?
        ),
    )?;
    Ok(())
}

pub fn run(root: &Path, rounds: usize, secs: u32) -> Result<()> {
    ensure_tools()?;
    crate::run("cargo", &["build", "--release", "--package", "trellis"])?;
    let dir: PathBuf = root.join("target/bench/gateway");
    std::fs::create_dir_all(&dir)?;
    let (jwks, token) = jwt_material(&dir)?;
    write_configs(&dir, &jwks)?;
    let d = dir.display().to_string();
    let trellis = root.join("target/release/trellis").display().to_string();
    let mut backend = start(
        "backend",
        &dir,
        &["nginx", "-p", &d, "-c", &format!("{d}/backend.conf")],
    )?;
    let mut nginx = start(
        "nginx",
        &dir,
        &["nginx", "-p", &d, "-c", &format!("{d}/nginx_proxy.conf")],
    )?;
    let mut haproxy = start(
        "haproxy",
        &dir,
        &["haproxy", "-db", "-f", &format!("{d}/haproxy.cfg")],
    )?;
    let manifests = format!("{d}/manifests");
    let gateway = |name: &'static str, bin: &str, http: u16, https: u16, extra: &[&str]| {
        let port_map = format!("80={http},443={https}");
        let mut cmd = vec![
            bin,
            "gateway",
            "-f",
            &manifests,
            "--gateway",
            "bench/edge",
            "--bind",
            "127.0.0.1",
            "--port-map",
            &port_map,
            "--access-log",
            "off",
        ];
        cmd.extend_from_slice(extra);
        start(name, &dir, &cmd)
    };
    let mut gw = gateway("trellis", &trellis, TRELLIS_PORT, TRELLIS_TLS_PORT, &[])?;
    let observe = format!("127.0.0.1:{TRELLIS_FLOWS_OBSERVE_PORT}");
    let mut gw_flows = gateway(
        "trellis-flows",
        &trellis,
        TRELLIS_FLOWS_PORT,
        TRELLIS_FLOWS_TLS_PORT,
        &["--observe-listen", &observe],
    )?;
    let before_bin = std::env::var("BEFORE").ok().filter(|b| !b.is_empty());
    let mut gw_before = match &before_bin {
        Some(bin) => {
            if !Path::new(bin).is_file() {
                bail!("BEFORE={bin}: no such file (give the path of an older trellis binary)");
            }
            let g = gateway(
                "trellis-before",
                bin,
                TRELLIS_BEFORE_PORT,
                TRELLIS_BEFORE_TLS_PORT,
                &[],
            )?;
            wait_tcp(TRELLIS_BEFORE_PORT)?;
            Some(g)
        }
        None => None,
    };
    if let Some(g) = &mut gw_before {
        g.still_running("trellis before")?;
    }
    for p in [
        BACKEND_PORT,
        NGINX_PORT,
        NGINX_TLS_PORT,
        HAPROXY_PORT,
        TRELLIS_PORT,
        TRELLIS_TLS_PORT,
        TRELLIS_FLOWS_PORT,
    ] {
        wait_tcp(p)?;
    }
    for (name, bg) in [
        ("backend nginx", &mut backend),
        ("nginx", &mut nginx),
        ("haproxy", &mut haproxy),
        ("trellis", &mut gw),
        ("trellis with flows", &mut gw_flows),
    ] {
        bg.still_running(name)?;
    }
    let pid = |s: &Bg| s.0.id();
    let scenarios: Vec<(&str, String, &Bg)> = vec![
        (
            "nginx-small",
            format!("http://127.0.0.1:{NGINX_PORT}/small"),
            &nginx,
        ),
        (
            "haproxy-small",
            format!("http://127.0.0.1:{HAPROXY_PORT}/small"),
            &haproxy,
        ),
        (
            "trellis-small",
            format!("http://127.0.0.1:{TRELLIS_PORT}/small"),
            &gw,
        ),
        (
            "trellis-flows-small",
            format!("http://127.0.0.1:{TRELLIS_FLOWS_PORT}/small"),
            &gw_flows,
        ),
        (
            "nginx-json10k",
            format!("http://127.0.0.1:{NGINX_PORT}/data.json"),
            &nginx,
        ),
        (
            "haproxy-json10k",
            format!("http://127.0.0.1:{HAPROXY_PORT}/data.json"),
            &haproxy,
        ),
        (
            "trellis-json10k",
            format!("http://127.0.0.1:{TRELLIS_PORT}/data.json"),
            &gw,
        ),
        (
            "nginx-gzip-json20k",
            format!("http://127.0.0.1:{NGINX_PORT}/data20k.json"),
            &nginx,
        ),
        (
            "trellis-gzip-json20k",
            format!("http://127.0.0.1:{TRELLIS_PORT}/data20k.json"),
            &gw,
        ),
        (
            "trellis-zstd-json20k",
            format!("http://127.0.0.1:{TRELLIS_PORT}/data20k.json"),
            &gw,
        ),
        (
            "nginx-newconn-small",
            format!("http://127.0.0.1:{NGINX_PORT}/small"),
            &nginx,
        ),
        (
            "trellis-newconn-small",
            format!("http://127.0.0.1:{TRELLIS_PORT}/small"),
            &gw,
        ),
        (
            "nginx-tls-newconn-small",
            format!("https://127.0.0.1:{NGINX_TLS_PORT}/small"),
            &nginx,
        ),
        (
            "trellis-tls-newconn-small",
            format!("https://127.0.0.1:{TRELLIS_TLS_PORT}/small"),
            &gw,
        ),
        (
            "trellis-general-small",
            format!("http://127.0.0.1:{TRELLIS_PORT}/small"),
            &gw,
        ),
        (
            "trellis-jwt-small",
            format!("http://127.0.0.1:{TRELLIS_PORT}/small"),
            &gw,
        ),
        (
            "nginx-tls-small",
            format!("https://127.0.0.1:{NGINX_TLS_PORT}/small"),
            &nginx,
        ),
        (
            "trellis-tls-small",
            format!("https://127.0.0.1:{TRELLIS_TLS_PORT}/small"),
            &gw,
        ),
    ];
    let mut scenarios = scenarios;
    if let Some(g) = &gw_before {
        for (name, path) in [
            ("trellis-before-small", "small"),
            ("trellis-before-newconn-small", "small"),
            ("trellis-before-general-small", "small"),
        ] {
            scenarios.push((
                name,
                format!("http://127.0.0.1:{TRELLIS_BEFORE_PORT}/{path}"),
                g,
            ));
        }
    }
    // ONLY=trellis-small,nginx-small runs just those (quick comparisons).
    let only = std::env::var("ONLY").unwrap_or_default();
    let scenarios: Vec<_> = scenarios
        .into_iter()
        .filter(|(name, _, _)| only.is_empty() || only.split(',').any(|o| o == *name))
        .collect();
    // Every proxy must answer 200 before anything is measured.
    for (name, url, _) in &scenarios {
        if let Some(encoding) = encoding_of(name) {
            let out = Command::new("curl")
                .args(["-s", "-D", "-", "-o", "/dev/null", "-H"])
                .arg(format!("Accept-Encoding: {encoding}"))
                .arg(url)
                .output()
                .context("curl")?;
            let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
            if !head.contains(&format!("content-encoding: {encoding}")) {
                bail!("{name}: {url} does not answer with {encoding}:\n{head}");
            }
        }
        let w = wrk(url, &headers_of(name, &token), 1)?;
        if w.non2xx > 0 || w.requests == 0.0 {
            bail!(
                "{name}: {url} does not answer 200 (non-2xx {}, requests {})",
                w.non2xx,
                w.requests
            );
        }
    }
    let mut results: BTreeMap<&str, Vec<Run>> = BTreeMap::new();
    for round in 0..rounds {
        // Every other round runs the scenarios in reverse, so that none always runs first.
        let order: Vec<_> = if round % 2 == 0 {
            scenarios.iter().collect()
        } else {
            scenarios.iter().rev().collect()
        };
        for (name, url, server) in order {
            let c0 = cpu_secs(pid(server));
            let mut r = wrk(url, &headers_of(name, &token), secs)?;
            let c1 = cpu_secs(pid(server));
            r.proxy_us_per_req = if r.requests > 0.0 {
                (c1 - c0) / r.requests * 1e6
            } else {
                f64::NAN
            };
            eprintln!(
                "round {round} {name:<18} {:>9.0} req/s  p50 {:.2} ms  p99 {:.2} ms  proxy {:.1} µs/req  non-2xx {}",
                r.rps, r.p50_ms, r.p99_ms, r.proxy_us_per_req, r.non2xx
            );
            results.entry(name).or_default().push(r);
        }
    }
    let med = |name: &str, f: fn(&Run) -> f64| {
        median(
            results
                .get(name)
                .map(|v| v.iter().map(f).collect())
                .unwrap_or_default(),
        )
    };
    let mut md = String::new();
    let _ = writeln!(
        md,
        "| scenario | req/s (median) | p50 ms | p99 ms | proxy CPU µs/req |\n|---|---:|---:|---:|---:|"
    );
    for (name, _, _) in &scenarios {
        let _ = writeln!(
            md,
            "| {name} | {:.0} | {:.2} | {:.2} | {:.1} |",
            med(name, |r| r.rps),
            med(name, |r| r.p50_ms),
            med(name, |r| r.p99_ms),
            med(name, |r| r.proxy_us_per_req)
        );
    }
    let _ = writeln!(
        md,
        "\n| comparison | trellis / peer (req/s) | trellis / peer (CPU µs/req, lower is better) | paired rounds: median ratio req/s, CPU |\n|---|---:|---:|---:|"
    );
    for (t, p) in [
        ("trellis-small", "nginx-small"),
        ("trellis-small", "haproxy-small"),
        ("trellis-json10k", "nginx-json10k"),
        ("trellis-json10k", "haproxy-json10k"),
        ("trellis-tls-small", "nginx-tls-small"),
        ("trellis-gzip-json20k", "nginx-gzip-json20k"),
        ("trellis-zstd-json20k", "nginx-gzip-json20k"),
        ("trellis-flows-small", "trellis-small"),
        ("trellis-newconn-small", "nginx-newconn-small"),
        ("trellis-tls-newconn-small", "nginx-tls-newconn-small"),
        ("trellis-jwt-small", "trellis-general-small"),
        ("trellis-general-small", "trellis-small"),
        ("trellis-small", "trellis-before-small"),
        ("trellis-newconn-small", "trellis-before-newconn-small"),
        ("trellis-general-small", "trellis-before-general-small"),
    ] {
        if !results.contains_key(t) || !results.contains_key(p) {
            continue;
        }
        // The same round's runs side by side: this VM's speed drifts over minutes, so ratios
        // within a round are steadier than ratios of medians.
        let paired = |f: fn(&Run) -> f64| {
            median(
                results[t]
                    .iter()
                    .zip(&results[p])
                    .map(|(a, b)| f(a) / f(b))
                    .collect(),
            )
        };
        let _ = writeln!(
            md,
            "| {t} vs {p} | {:.2} | {:.2} | {:.3}, {:.3} |",
            med(t, |r| r.rps) / med(p, |r| r.rps),
            med(t, |r| r.proxy_us_per_req) / med(p, |r| r.proxy_us_per_req),
            paired(|r| r.rps),
            paired(|r| r.proxy_us_per_req)
        );
    }
    let _ = writeln!(
        md,
        "\n{rounds} interleaved rounds of `taskset -c 1 wrk -t1 -c64 -d{secs}s --latency URL`; proxies and the backend nginx on CPU 0."
    );
    // Two servers loaded at once on the small response (both on CPU 0 with the backend, two
    // wrk on CPU 1): whatever this VM's speed does during a round, it does to both, so the
    // per-request CPU ratio is far steadier than between runs one after the other.
    let wanted = |name: &str| only.is_empty() || only.split(',').any(|o| o == name);
    let mut small_together = |title: &str, a: (&str, u16, &Bg), b: (&str, u16, &Bg)| {
        let url = |port: u16| format!("http://127.0.0.1:{port}/small");
        let (cpu, rps) = together((a.0, &url(a.1), a.2), (b.0, &url(b.1), b.2), rounds, secs)?;
        let _ = writeln!(
            md,
            "\n| {title}, both loaded at once ({rounds} rounds) | median ratio |\n|---|---:|\n| proxy CPU per request | {cpu:.3} |\n| requests/s (the CPU is shared, so this follows the CPU ratio, with wrk's noise) | {rps:.3} |"
        );
        anyhow::Ok(())
    };
    // The cost of flows. ONLY=flows-together.
    if wanted("flows-together") {
        small_together(
            "flows on against off",
            ("flows off", TRELLIS_PORT, &gw),
            ("flows on", TRELLIS_FLOWS_PORT, &gw_flows),
        )?;
    }
    // trellis against nginx. ONLY=nginx-together.
    if wanted("nginx-together") {
        small_together(
            "trellis against nginx, small response",
            ("nginx", NGINX_PORT, &nginx),
            ("trellis", TRELLIS_PORT, &gw),
        )?;
    }
    // This build against the older one (BEFORE). ONLY=before-together.
    if let Some(g) = &gw_before
        && wanted("before-together")
    {
        small_together(
            &format!(
                "this build against BEFORE ({}), small response",
                before_bin.as_deref().unwrap_or_default()
            ),
            ("before", TRELLIS_BEFORE_PORT, g),
            ("after", TRELLIS_PORT, &gw),
        )?;
    }
    // HTTP/2 (h2load) on the TLS ports of nginx and trellis, and HTTP/3 on trellis's (nginx
    // 1.22 has no QUIC; Debian has no HTTP/3 load generator, so `trellis bench-h3` is the
    // client). ONLY=h2h3 runs just this.
    if wanted("h2h3") {
        let cert = format!("{d}/cert.pem");
        let mut cases: Vec<(&str, &Bg)> = vec![
            ("nginx-h2-small", &nginx),
            ("trellis-h2-small", &gw),
            ("trellis-h3-small", &gw),
        ];
        if let Some(g) = &gw_before {
            cases.push(("trellis-before-h2-small", g));
        }
        let mut runs: BTreeMap<&str, Vec<Run>> = BTreeMap::new();
        for round in 0..rounds {
            let order: Vec<_> = if round % 2 == 0 {
                cases.iter().collect()
            } else {
                cases.iter().rev().collect()
            };
            for (name, server) in order {
                let c0 = cpu_secs(pid(server));
                let mut r = match *name {
                    "nginx-h2-small" => h2load(NGINX_TLS_PORT, secs)?,
                    "trellis-h2-small" => h2load(TRELLIS_TLS_PORT, secs)?,
                    "trellis-before-h2-small" => h2load(TRELLIS_BEFORE_TLS_PORT, secs)?,
                    _ => h3load(&trellis, TRELLIS_TLS_PORT, &cert, secs)?,
                };
                let c1 = cpu_secs(pid(server));
                r.proxy_us_per_req = (c1 - c0) / r.requests * 1e6;
                eprintln!(
                    "round {round} {name:<18} {:>9.0} req/s  p50 {:.2} ms  proxy {:.1} µs/req  non-2xx {}",
                    r.rps, r.p50_ms, r.proxy_us_per_req, r.non2xx
                );
                runs.entry(name).or_default().push(r);
            }
        }
        let med = |name: &str, f: fn(&Run) -> f64| {
            median(
                runs.get(name)
                    .map(|v| v.iter().map(f).collect())
                    .unwrap_or_default(),
            )
        };
        let _ = writeln!(
            md,
            "\n| HTTP/2 and HTTP/3 over TLS | req/s (median) | p50 ms | proxy CPU µs/req |\n|---|---:|---:|---:|"
        );
        for (name, _) in &cases {
            let _ = writeln!(
                md,
                "| {name} | {:.0} | {:.2} | {:.1} |",
                med(name, |r| r.rps),
                med(name, |r| r.p50_ms),
                med(name, |r| r.proxy_us_per_req)
            );
        }
        for (t, p) in [
            ("trellis-h2-small", "nginx-h2-small"),
            ("trellis-h3-small", "trellis-h2-small"),
            ("trellis-h2-small", "trellis-before-h2-small"),
        ] {
            if !runs.contains_key(t) || !runs.contains_key(p) {
                continue;
            }
            let _ = writeln!(
                md,
                "| {t} / {p} | {:.2} | | {:.2} |",
                med(t, |r| r.rps) / med(p, |r| r.rps),
                med(t, |r| r.proxy_us_per_req) / med(p, |r| r.proxy_us_per_req)
            );
        }
        let _ = writeln!(
            md,
            "\n{rounds} interleaved rounds on CPU 1 of `h2load -D{secs} -c64 -m1 -t1` (HTTP/2, one request in flight per connection, as wrk) and `trellis bench-h3 --connections 64 --seconds {secs}` (HTTP/3, the same model); p50 of h2load is its mean."
        );
    }
    // ONLY=idle measures just this.
    if wanted("idle") {
        let _ = writeln!(
            md,
            "\n| server | memory per idle keep-alive client connection (KiB) |\n|---|---:|"
        );
        for (name, port, server) in [
            ("nginx", NGINX_PORT, &nginx),
            ("haproxy", HAPROXY_PORT, &haproxy),
            ("trellis", TRELLIS_PORT, &gw),
        ] {
            let kib = idle_kib_per_connection(port, pid(server))?;
            eprintln!("idle connections: {name} {kib:.1} KiB each");
            let _ = writeln!(md, "| {name} | {kib:.1} |");
        }
        let _ = writeln!(
            md,
            "\n{IDLE_CONNECTIONS} clients each make one request and stay connected; resident memory of the proxy's processes after minus before, divided by {IDLE_CONNECTIONS}."
        );
    }
    std::fs::write(dir.join("gateway.md"), &md)?;
    println!("\n{md}");
    println!("(written to {})", dir.join("gateway.md").display());
    drop((gw, gw_flows, gw_before, haproxy, nginx, backend));
    Ok(())
}
