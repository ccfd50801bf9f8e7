//! Flows end to end: a curl through `trellis gateway` and a dig against `trellis dns` become
//! flows, read over the Hubble gRPC API by `trellis observe` and by a Python client generated
//! from the same protos with grpcio-tools.

use std::path::Path;
use std::process::Command;

use super::{Proc, bound_addr, curl_headers, echo_and_base, example, example_vars, spawn_gateway};

pub(super) fn observe(server: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(["observe", "--server", server])
        .args(args)
        .output()
        .expect("trellis observe runs");
    assert!(
        out.status.success(),
        "trellis observe {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).expect("one JSON document per line"))
        .collect()
}

/// Keeps reading a child's stderr so it never blocks on a full pipe.
pub(super) fn drain(lines: impl Iterator<Item = std::io::Result<String>> + Send + 'static) {
    std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
}

/// Runs the Python client against `server`; a missing grpcio is a failure, not a skip
/// (`cargo xtask test` installs it).
fn python_client(server: &str) -> serde_json::Value {
    let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("../observe/proto");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/hubble/client.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(&proto)
        .arg(server)
        .output()
        .expect("python3 runs (install it, and `pip install grpcio grpcio-tools`)");
    assert!(
        out.status.success(),
        "the Python Hubble client failed (pip install grpcio grpcio-tools): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the client prints JSON")
}

#[test]
fn a_request_through_the_gateway_becomes_a_flow_over_grpc_in_observe_and_in_python() {
    let setup = flow_gateway(
        "[web.example.com]",
        &[
            "--observe-listen",
            "127.0.0.1:0",
            "--node-name",
            "node-a",
            "--admin",
            "127.0.0.1:0",
            "--access-log",
            "off",
        ],
        &["observer API", "listener port 80 on", "admin on"],
    );
    let [server, gw, admin] = setup.addrs();
    let echo_port = setup.echo_port;

    let url = format!("http://{gw}/hello?x=1");
    let headers = super::within(20, || curl_headers(&url, "web.example.com")).expect("answers");
    assert!(headers.starts_with("http/1.1 200"), "{headers}");
    // A request no route takes is a flow too.
    let none = curl_headers(&format!("http://{gw}/"), "other.example.com").expect("answers");
    assert!(none.starts_with("http/1.1 404"), "{none}");

    // Flows go through a queue into the buffer: wait until both are there.
    let flows = super::within(20, || {
        let v = json_lines(&observe(&server, &["-o", "json"]));
        (v.len() == 2).then_some(v)
    })
    .expect("two flows");
    let f = &flows[0]["flow"];
    assert_eq!(flows[0]["node_name"], "node-a");
    assert_eq!(f["verdict"], "FORWARDED");
    assert_eq!(f["Type"], "L7");
    assert_eq!(f["event_type"]["type"], 129);
    assert_eq!(f["IP"]["source"], "127.0.0.1");
    assert_eq!(f["IP"]["destination"], "127.0.0.1");
    assert_eq!(f["l4"]["TCP"]["destination_port"], echo_port);
    assert_eq!(f["l7"]["type"], "RESPONSE");
    assert_eq!(f["l7"]["http"]["code"], 200);
    assert_eq!(f["l7"]["http"]["method"], "GET");
    assert_eq!(f["l7"]["http"]["protocol"], "HTTP/1.1");
    assert_eq!(f["l7"]["http"]["url"], "http://web.example.com/hello?x=1");
    assert_eq!(f["destination_service"]["name"], "web");
    assert_eq!(f["destination_service"]["namespace"], "apps");
    assert_eq!(f["source"]["labels"][0], "reserved:host");
    let summary = f["Summary"].as_str().expect("summary");
    assert!(
        summary.contains("route apps/web") && summary.contains("backend apps/web:80"),
        "{summary}"
    );
    assert_eq!(flows[1]["flow"]["l7"]["http"]["code"], 404);
    assert!(
        flows[1]["flow"]["Summary"]
            .as_str()
            .is_some_and(|s| s.ends_with("no route")),
        "{flows:?}"
    );

    // Compact output, and filters evaluated by the server.
    let compact = observe(&server, &[]);
    let lines: Vec<&str> = compact.lines().collect();
    assert_eq!(lines.len(), 2, "{compact}");
    assert!(
        lines[0].contains("[node-a]: 127.0.0.1:")
            && lines[0].contains(&format!(
                " -> 127.0.0.1:{echo_port} (host) http-response FORWARDED (HTTP/1.1 200 "
            )),
        "{compact}"
    );
    assert!(
        lines[0].contains("(GET http://web.example.com/hello?x=1)"),
        "{compact}"
    );
    let only = |args: &[&str]| observe(&server, args).lines().count();
    assert_eq!(only(&["--http-status", "4+"]), 1);
    assert_eq!(only(&["--http-status", "200", "--http-method", "get"]), 1);
    assert_eq!(only(&["--http-path", "^/hello$"]), 1);
    assert_eq!(only(&["--to-port", &echo_port.to_string()]), 1);
    assert_eq!(only(&["--port", &echo_port.to_string()]), 1);
    assert_eq!(only(&["--ip", "127.0.0.1", "--type", "l7"]), 2);
    assert_eq!(only(&["--type", "dns"]), 0);
    assert_eq!(only(&["--verdict", "DROPPED"]), 0);
    assert_eq!(only(&["--last", "1"]), 1);
    assert_eq!(only(&["--since", "1h"]), 2);
    assert_eq!(only(&["--until", "1h"]), 0);
    let table = observe(&server, &["-o", "table"]);
    assert!(table.starts_with("TIMESTAMP"), "{table}");
    assert_eq!(table.lines().count(), 3, "{table}");
    let status = observe(&server, &["--status"]);
    assert!(status.contains("Current/Max Flows: 2/4095"), "{status}");
    assert!(status.contains("Flows seen: 2"), "{status}");
    assert!(status.contains("Lost events: 0"), "{status}");

    // A bad filter is refused by the server with the field named.
    let bad = Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(["observe", "--server", &server, "--from-ip", "10.0.0.300"])
        .output()
        .expect("runs");
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("source_ip: \"10.0.0.300\""),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    // Hubble's metrics beside the gateway's own.
    let metrics = Command::new("curl")
        .args(["-s", &format!("http://{admin}/metrics")])
        .output()
        .expect("curl");
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        metrics.contains(
            "hubble_flows_processed_total{type=\"L7\",subtype=\"HTTP\",verdict=\"FORWARDED\"} 2"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "hubble_http_requests_total{method=\"GET\",protocol=\"HTTP/1.1\",status=\"200\",reporter=\"server\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "hubble_http_request_duration_seconds_count{method=\"GET\",reporter=\"server\"} 2"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("trellis_gateway_rq_total"), "{metrics}");

    // Another language, stubs generated from the same protos.
    let py = python_client(&server);
    assert_eq!(py["status"]["num_flows"], 2, "{py}");
    assert_eq!(py["status"]["max_flows"], 4095, "{py}");
    assert_eq!(py["status"]["seen_flows"], 2, "{py}");
    assert_eq!(py["nodes"][0], "node-a", "{py}");
    assert_eq!(py["flows"][0]["verdict"], "FORWARDED", "{py}");
    assert_eq!(py["flows"][0]["type"], "L7", "{py}");
    assert_eq!(py["flows"][0]["http"]["code"], 200, "{py}");
    assert_eq!(
        py["flows"][0]["http"]["url"], "http://web.example.com/hello?x=1",
        "{py}"
    );
    assert_eq!(py["get_only"].as_array().map(Vec::len), Some(2), "{py}");
    assert_eq!(py["post_only"].as_array().map(Vec::len), Some(0), "{py}");
}

#[test]
fn follow_streams_new_flows() {
    use std::io::BufRead;
    let setup = flow_gateway(
        "",
        &["--observe-listen", "127.0.0.1:0", "--access-log", "off"],
        &["observer API", "listener port 80 on"],
    );
    let [server, gw] = setup.addrs();
    let mut follower = Proc(
        Command::new(env!("CARGO_BIN_EXE_trellis"))
            .args([
                "observe",
                "--server",
                &server,
                "--follow",
                "--http-path",
                "^/followed",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("observe --follow starts"),
    );
    let mut out = std::io::BufReader::new(follower.0.stdout.take().expect("stdout")).lines();
    // The follower may connect after the first requests: keep requesting until it prints.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Some(Ok(line)) = out.next() {
            let _ = tx.send(line);
        }
    });
    let line = super::within(20, || {
        curl_headers(&format!("http://{gw}/followed"), "any.example.com");
        curl_headers(&format!("http://{gw}/not-this"), "any.example.com");
        rx.try_recv().ok()
    })
    .expect("the follower prints a flow");
    assert!(
        line.contains("(GET http://any.example.com/followed)"),
        "{line}"
    );
}

#[test]
fn a_dig_becomes_a_dns_flow() {
    use std::io::BufRead;
    let mut dns = Proc(
        Command::new(env!("CARGO_BIN_EXE_trellis"))
            .args([
                "dns",
                "-f",
                &example(),
                "--vars",
                &example_vars(),
                "--listen",
                "127.0.0.1:0",
                "--observe-listen",
                "127.0.0.1:0",
            ])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("dns starts"),
    );
    let mut err = std::io::BufReader::new(dns.0.stderr.take().expect("stderr")).lines();
    let mut log = String::new();
    let server = bound_addr(&mut err, "observer API", &mut log);
    let mut port = String::new();
    for l in err.by_ref() {
        let l = l.expect("text");
        log.push_str(&l);
        if l.contains("on udp/tcp") {
            port = l.rsplit(':').next().expect("port").to_string();
            break;
        }
    }
    drain(err);
    let dig = |name: &str| {
        let out = Command::new("dig")
            .args([
                "@127.0.0.1",
                "-p",
                &port,
                "+short",
                "+time=2",
                "+tries=1",
                name,
                "A",
            ])
            .output()
            .expect("dig runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(dig("echo.home.example"), "10.10.30.25");
    assert_eq!(dig("nothing.apps.svc.cluster.local"), "");
    let flows = super::within(20, || {
        let v = json_lines(&observe(&server, &["--type", "dns", "-o", "json"]));
        (v.len() == 2).then_some(v)
    })
    .expect("two DNS flows");
    let f = &flows[0]["flow"];
    assert_eq!(f["Type"], "L7");
    assert_eq!(f["l7"]["dns"]["query"], "echo.home.example.");
    assert_eq!(f["l7"]["dns"]["ips"][0], "10.10.30.25");
    assert_eq!(f["l7"]["dns"]["qtypes"][0], "A");
    assert_eq!(f["l7"]["dns"]["rrtypes"][0], "A");
    assert_eq!(
        f["l4"]["UDP"]["destination_port"],
        port.parse::<u32>().expect("port")
    );
    let summary = f["Summary"].as_str().expect("summary");
    assert!(
        summary.starts_with("DNS Answer \"10.10.30.25\"") && summary.ends_with("view lan"),
        "{summary}"
    );
    assert_eq!(flows[1]["flow"]["l7"]["dns"]["rcode"], 3);
    let compact = observe(&server, &["--dns-query", "^echo\\."]);
    assert_eq!(compact.lines().count(), 1, "{compact}");
    assert!(compact.contains("dns-response FORWARDED"), "{compact}");
}

/// Metric names as the exposition shows them, from `# TYPE` lines (so families without
/// samples yet count): counters with `_total`, histograms with their three series.
fn exported_names(exposition: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for s in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{s}"));
                }
            }
            _ => {
                names.insert(name.to_string());
            }
        }
    }
    names
}

/// Names of trellis's metric families (`trellis_`, `coredns_`, `hubble_`, `cilium_` ...)
/// in a PromQL expression.
fn queried_names(expr: &str) -> Vec<String> {
    let bytes = expr.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if word(bytes[i]) && (i == 0 || !word(bytes[i - 1])) {
            let start = i;
            while i < bytes.len() && word(bytes[i]) {
                i += 1;
            }
            let w = &expr[start..i];
            // Label names and values inside {...} are not metric names.
            let inside_braces =
                expr[..start].matches('{').count() > expr[..start].matches('}').count();
            let quoted = expr[..start].matches('"').count() % 2 == 1;
            if !inside_braces
                && !quoted
                && ["trellis_", "coredns_", "hubble_", "cilium_"]
                    .iter()
                    .any(|p| w.starts_with(p))
            {
                out.push(w.to_string());
            }
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn dashboards_query_only_metrics_trellis_exports() {
    use std::io::BufRead;
    let setup = flow_gateway(
        "",
        &["--observe-listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"],
        &["observer API", "listener port 80 on", "admin on"],
    );
    let [_, gw, gw_admin] = setup.addrs();
    let mut log = String::new();
    let mut dns = Proc(
        Command::new(env!("CARGO_BIN_EXE_trellis"))
            .args([
                "dns",
                "-f",
                &example(),
                "--vars",
                &example_vars(),
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                "--observe-listen",
                "127.0.0.1:0",
            ])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("dns starts"),
    );
    let mut dns_err = std::io::BufReader::new(dns.0.stderr.take().expect("stderr")).lines();
    let mut port = String::new();
    for l in dns_err.by_ref() {
        let l = l.expect("text");
        if l.contains("on udp/tcp") {
            port = l.rsplit(':').next().expect("port").to_string();
            break;
        }
    }
    let dns_admin = bound_addr(&mut dns_err, "admin on", &mut log);
    drain(dns_err);
    // Families show in the exposition once they have a series: one request, one query.
    super::within(20, || {
        curl_headers(&format!("http://{gw}/"), "web.example.com")
    })
    .expect("gateway answers");
    let dig = Command::new("dig")
        .args([
            "@127.0.0.1",
            "-p",
            &port,
            "+short",
            "echo.home.example",
            "A",
        ])
        .output()
        .expect("dig runs");
    assert!(dig.status.success());
    // And what no traffic here produces (drops) comes from the list the observe crate tests
    // against its own registry.
    let mut exported: std::collections::BTreeSet<String> = observe::metrics::EXPORTED
        .iter()
        .map(|s| s.to_string())
        .collect();
    for admin in [gw_admin, dns_admin] {
        let out = Command::new("curl")
            .args(["-s", &format!("http://{admin}/metrics")])
            .output()
            .expect("curl");
        exported.extend(exported_names(&String::from_utf8_lossy(&out.stdout)));
    }
    assert!(
        exported.contains("trellis_gateway_rq_total"),
        "{exported:?}"
    );
    assert!(
        exported.contains("coredns_dns_requests_total"),
        "{exported:?}"
    );

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/dashboards");
    let mut seen = Vec::new();
    let mut problems = Vec::new();
    for name in ["gateway.json", "dns.json", "fabric.json"] {
        let text = std::fs::read_to_string(dir.join(name)).expect("dashboard exists");
        let d: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
        let uid = d["uid"].as_str().expect("uid").to_string();
        assert!(!seen.contains(&uid), "{name}: uid {uid} used twice");
        seen.push(uid);
        let panels = d["panels"].as_array().expect("panels");
        assert!(!panels.is_empty(), "{name}: no panels");
        for p in panels {
            let targets = p["targets"].as_array().expect("targets");
            assert!(
                !targets.is_empty(),
                "{name}: panel {} has no query",
                p["title"]
            );
            for t in targets {
                let expr = t["expr"].as_str().expect("expr");
                let names = queried_names(expr);
                if names.is_empty() {
                    problems.push(format!(
                        "{name}: {:?} queries no trellis metric",
                        p["title"]
                    ));
                }
                for m in names {
                    if !exported.contains(&m) {
                        problems.push(format!("{name}: panel {}: {m} is not exported", p["title"]));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn metric_names_in_queries() {
    assert_eq!(
        queried_names(
            "sum by (le) (rate(hubble_drop_total{reason=\"x\",instance=~\"trellis_a\"}[5m])) / trellis_gateway_rq_total"
        ),
        vec!["hubble_drop_total", "trellis_gateway_rq_total"]
    );
}

/// What the flow tests run: `trellis echo` as Service `apps/web`, the HTTPRoute `apps/web`
/// with `hostnames` (as [`write_web_route`] takes them), and `trellis gateway` with `flags`.
/// [`FlowGateway::addrs`] are the addresses the gateway names on the first stderr line containing each
/// needle, in the order it prints them. Everything ends when this is dropped.
pub(super) struct FlowGateway {
    bound: Vec<String>,
    pub(super) echo_port: u16,
    _gw: Proc,
    _echo: Proc,
    _dir: tempfile::TempDir,
}

impl FlowGateway {
    /// The bound addresses, one per needle.
    pub(super) fn addrs<const N: usize>(&self) -> [String; N] {
        <[String; N]>::try_from(self.bound.clone()).expect("as many addresses as needles")
    }
}

pub(super) fn flow_gateway(hostnames: &str, flags: &[&str], needles: &[&str]) -> FlowGateway {
    let dir = tempfile::tempdir().expect("tmp");
    let mut log = String::new();
    let (echo, echo_port) = echo_and_base(dir.path(), &mut log);
    write_web_route(dir.path(), hostnames);
    let (gw, mut err) = spawn_gateway(dir.path(), flags);
    let bound = needles
        .iter()
        .map(|n| bound_addr(&mut err, n, &mut log))
        .collect();
    drain(err);
    FlowGateway {
        bound,
        echo_port,
        _gw: gw,
        _echo: echo,
        _dir: dir,
    }
}

/// The HTTPRoute `apps/web` on gateway `gw` to Service `web:80`, with `hostnames` (YAML flow
/// list, or "" for none).
pub(super) fn write_web_route(dir: &std::path::Path, hostnames: &str) {
    let hostnames = if hostnames.is_empty() {
        String::new()
    } else {
        format!("  hostnames: {hostnames}\n")
    };
    std::fs::write(
        dir.join("route.yaml"),
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: web, namespace: apps}}\n\
             spec:\n  parentRefs: [{{name: gw}}]\n{hostnames}  rules:\n    - backendRefs: [{{name: web, port: 80}}]\n"
        ),
    )
    .expect("write the route");
}
