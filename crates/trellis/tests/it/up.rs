//! `trellis up` on the example home lab, on loopback with ports the OS picks: both gateways
//! answer curl, DNS answers dig, the admin endpoint shows every component, a broken edit
//! leaves everything serving with `/status` saying why, and SIGTERM drains a request in flight
//! before a clean exit.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::{Proc, get, within};

/// Copies a directory tree (the example, so that the test can break a file of it).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        let dest = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).expect("copy");
        }
    }
}

/// A process's stderr lines as they come, read by a thread.
fn lines_of(child: &mut Proc) -> Receiver<String> {
    use std::io::BufRead;
    let err = child.0.stderr.take().expect("stderr piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Reads lines until one contains `needle` (at most `secs`); every line read is added to
/// `seen`. Returns that line.
fn until(rx: &Receiver<String>, needle: &str, secs: u64, seen: &mut Vec<String>) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                seen.push(line.clone());
                if line.contains(needle) {
                    return line;
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                panic!(
                    "no line with {needle:?} within {secs} s:\n{}",
                    seen.join("\n")
                )
            }
            Err(RecvTimeoutError::Disconnected) => {
                panic!("the process ended before {needle:?}:\n{}", seen.join("\n"))
            }
        }
    }
}

/// The address a line names: the first word after its last `http://`, else its last word.
fn addr_in(line: &str) -> String {
    match line.rsplit_once("http://") {
        Some((_, tail)) => tail.split_whitespace().next().unwrap_or(tail),
        None => line.split_whitespace().last().unwrap_or(line),
    }
    .to_string()
}

fn port_of(addr: &str) -> String {
    addr.rsplit(':').next().expect("a port").to_string()
}

/// curl with the status code and headers on stdout (body discarded); `None` when curl fails.
fn curl(args: &[&str]) -> Option<String> {
    let out = Command::new("curl")
        .args(["-sS", "-k", "--max-time", "5", "-D", "-", "-o", "/dev/null"])
        .args(args)
        .output()
        .expect("curl runs");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).to_ascii_lowercase())
}

fn status(admin: &str) -> serde_json::Value {
    let (code, body) = get(&format!("http://{admin}/status"));
    assert_eq!(code, "200", "{body}");
    serde_json::from_str(&body).expect("/status is JSON")
}

fn dig(port: &str, name: &str) -> String {
    let out = Command::new("dig")
        .args([
            "@127.0.0.1",
            "-p",
            port,
            "-b",
            "127.0.0.1",
            "+short",
            "+time=2",
            "+tries=1",
        ])
        .args([name, "A"])
        .output()
        .expect("dig runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn up_serves_the_example_keeps_last_good_on_a_broken_edit_and_drains() {
    let t = tempfile::tempdir().expect("tmp");
    let lab = t.path().join("home-lab");
    copy_tree(&crate::repo().join("examples/home-lab"), &lab);
    let mut seen = Vec::new();

    // The echo pods: one echo server on a free port, named by an EndpointSlice beside the
    // example; and a second one behind a route of its own, so that the test can see a request
    // reach it (no other connection goes there).
    let echo_server = |name: &str, seen: &mut Vec<String>| {
        let mut p = Proc(
            Command::new(env!("CARGO_BIN_EXE_trellis"))
                .args([
                    "echo",
                    "--listen",
                    "127.0.0.1:0",
                    "--name",
                    name,
                    "--namespace",
                    "apps",
                ])
                .stderr(Stdio::piped())
                .spawn()
                .expect("echo starts"),
        );
        let lines = lines_of(&mut p);
        let port = port_of(&addr_in(&until(
            &lines,
            &format!("echo apps/{name} on"),
            20,
            seen,
        )));
        (p, port)
    };
    let (_echo, echo_port) = echo_server("echo", &mut seen);
    let (_slow, slow_port) = echo_server("slow", &mut seen);
    let overlay = t.path().join("local");
    std::fs::create_dir_all(&overlay).expect("mkdir");
    let endpoints = |service: &str, port: &str| {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {service}-local, namespace: apps, labels: {{kubernetes.io/service-name: {service}}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: {port}}}]\nendpoints: [{{addresses: [127.0.0.1]}}]\n"
        )
    };
    std::fs::write(
        overlay.join("echo-endpoints.yaml"),
        endpoints("echo", &echo_port),
    )
    .expect("write");
    std::fs::write(
        overlay.join("slow.yaml"),
        format!(
            "{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: slow, namespace: apps}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: slow, namespace: apps}}\n\
             spec:\n  hostnames: [slow.home.example]\n  parentRefs: [{{name: envoy-internal, namespace: network, sectionName: https}}]\n\
             \x20 rules: [{{backendRefs: [{{name: slow, port: 80}}]}}]\n",
            endpoints("slow", &slow_port)
        ),
    )
    .expect("write");
    // A Gatus endpoint beside the example: health probes run inside `up` too.
    std::fs::write(
        overlay.join("gatus.yaml"),
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: probes, namespace: apps, labels: {{gatus.io/enabled: 'true'}}}}\n\
             data:\n  config.yaml: |\n    endpoints:\n      - {{name: echo-probe, group: internal, url: 'http://127.0.0.1:{echo_port}/', interval: 1s, conditions: ['[STATUS] == 200']}}\n"
        ),
    )
    .expect("write");
    // A record sync target: `trellis dns` serving home.example as a dynamic zone behind
    // ExternalDNS's webhook (as AdGuard or Unbound would be, behind their webhook providers).
    let records = t.path().join("records");
    std::fs::create_dir_all(&records).expect("mkdir");
    std::fs::write(
        records.join("svc.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: apps}\nspec: {clusterIP: 10.96.0.20, ports: [{port: 80}]}\n",
    )
    .expect("write");
    std::fs::write(t.path().join("webhook-token"), "up-test-token\n").expect("write");
    let mut target = Proc(
        Command::new(env!("CARGO_BIN_EXE_trellis"))
            .args(["dns", "-f"])
            .arg(&records)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--dynamic-zone",
                "home.example",
                "--webhook-listen",
                "127.0.0.1:0",
            ])
            .env("TRELLIS_WEBHOOK_TOKEN", "up-test-token")
            .stderr(Stdio::piped())
            .spawn()
            .expect("trellis dns starts"),
    );
    let target_lines = lines_of(&mut target);
    let target_dns = port_of(&addr_in(&until(&target_lines, "on udp/tcp", 20, &mut seen)));
    let webhook = addr_in(&until(&target_lines, "webhook provider on", 20, &mut seen));
    // Every port chosen by the OS; the process says which.
    let config = t.path().join("trellis.yaml");
    std::fs::write(
        &config,
        "manifests: [home-lab, local]\nvars: home-lab/vars.yaml\n\
         gateway: {bind: 127.0.0.1, accessLog: off, drainTimeout: 20s}\n\
         gateways:\n  network/envoy-internal: {ports: {80: 0, 443: 0}}\n  network/envoy-external: {ports: {80: 0, 443: 0}}\n\
         dns: {listen: '127.0.0.1:0'}\nobserve: {observeListen: '127.0.0.1:0', uiListen: '127.0.0.1:0'}\n\
         health: {annotatedRoutesOnly: true}\n"
            .to_string()
            + &format!(
                "sync:\n  lan: {{provider: webhook, webhookProviderUrl: 'http://{webhook}', \
                 webhookTokenFile: webhook-token, txtOwnerId: up, domainFilters: [home.example], \
                 gatewayNames: [network/envoy-internal]}}\n"
            ),
    )
    .expect("write");
    let mut up = Proc(
        Command::new(env!("CARGO_BIN_EXE_trellis"))
            .args(["up", "--admin", "127.0.0.1:0"])
            .env("TRELLIS_CONFIG", &config)
            .env("TRELLIS_LOG_FORMAT", "json")
            .env_remove("RUST_LOG")
            .env_remove("TRELLIS_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("trellis up starts"),
    );
    let lines = lines_of(&mut up);
    let admin = addr_in(&until(&lines, "admin on http://", 30, &mut seen));
    let ext_https = addr_in(&until(
        &lines,
        "envoy-external: listener port 443 on",
        30,
        &mut seen,
    ));
    let int_http = addr_in(&until(
        &lines,
        "envoy-internal: listener port 80 on",
        30,
        &mut seen,
    ));
    let int_https = addr_in(&until(
        &lines,
        "envoy-internal: listener port 443 on",
        30,
        &mut seen,
    ));
    let dns_port = port_of(&addr_in(&until(
        &lines,
        "dns: zone cluster.local on",
        30,
        &mut seen,
    )));
    until(&lines, "ready: 2 gateways, dns on", 30, &mut seen);
    // The log lines are JSON (--log-format through its variable).
    let json_line = seen
        .iter()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("a JSON log line:\n{}", seen.join("\n")));
    let v: serde_json::Value = serde_json::from_str(json_line).expect("a JSON log line");
    assert!(
        v["level"].is_string() && v["fields"].is_object(),
        "{json_line}"
    );

    // Both gateways answer, each with its own routes.
    let internal = |path: &str| {
        let port = port_of(&int_https);
        curl(&[
            "--resolve",
            &format!("echo.home.example:{port}:127.0.0.1"),
            &format!("https://echo.home.example:{port}{path}"),
        ])
    };
    let h = internal("/hello").expect("internal gateway answers");
    assert!(h.starts_with("http/2 200"), "{h}");
    let port = port_of(&ext_https);
    let h = curl(&[
        "--resolve",
        &format!("echo-ext.home.example:{port}:127.0.0.1"),
        &format!("https://echo-ext.home.example:{port}/"),
    ])
    .expect("external gateway answers");
    assert!(
        h.starts_with("http/2 200") && h.contains("x-served-by: trellis"),
        "{h}"
    );
    let h = curl(&[
        "-H",
        "Host: echo.home.example",
        &format!("http://{int_http}/"),
    ])
    .expect("plain HTTP answers");
    assert!(
        h.starts_with("http/1.1 301") && h.contains("location: https://echo.home.example/"),
        "{h}"
    );

    // DNS answers the LAN view (127.0.0.1 is one of its clients) and the cluster zone.
    assert_eq!(dig(&dns_port, "echo.home.example"), "10.10.30.25");
    assert_eq!(dig(&dns_port, "echo-ext.home.example"), "10.10.30.26");
    assert_eq!(dig(&dns_port, "echo.apps.svc.cluster.local"), "10.96.0.50");

    // One admin endpoint for everything.
    let (code, _) = get(&format!("http://{admin}/ready"));
    assert_eq!(code, "200");
    let s = status(&admin);
    assert_eq!(s["ready"], true, "{s:#}");
    assert_eq!(s["manifests"]["generation"], 1, "{s:#}");
    for gw in ["network/envoy-internal", "network/envoy-external"] {
        let g = &s["components"]["gateways"][gw];
        assert_eq!(g["started"], true, "{gw}: {g:#}");
        assert_eq!(g["generation"], 1, "{gw}: {g:#}");
        assert!(g["lastError"].is_null(), "{gw}: {g:#}");
        assert_eq!(g["drainTimeoutSeconds"], 20.0, "{gw}: {g:#}");
        assert!(
            g["bound"]["443"]
                .as_str()
                .is_some_and(|a| a.starts_with("127.0.0.1:")),
            "{g:#}"
        );
    }
    let d = &s["components"]["dns"];
    assert_eq!(d["generation"], 1, "{d:#}");
    assert_eq!(
        d["addresses"]["udp"],
        format!("127.0.0.1:{dns_port}"),
        "{d:#}"
    );
    assert_eq!(d["views"], serde_json::json!(["lan", "public"]), "{d:#}");
    assert_eq!(s["components"]["observe"]["started"], true, "{s:#}");
    // Flows readable with `trellis observe` from the address /status gives (the one bound).
    let observer = s["components"]["observe"]["addresses"]["observer"]
        .as_str()
        .expect("the observer's address")
        .to_string();
    assert!(!observer.ends_with(":0"), "{observer}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(["observe", "--server", &observer, "--all", "-o", "json"])
        .output()
        .expect("trellis observe");
    let flows = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        flows.contains("https://echo.home.example/hello")
            && flows.contains("\"dns\":{\"query\":\"echo.home.example.\""),
        "a request and a query among the flows:\n{flows}"
    );
    // The same from the command line: `trellis status` reads it and says it is healthy.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(["status", "--admin", &admin])
        .output()
        .expect("trellis status");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(
        table.starts_with("ready: true\nCOMPONENT")
            && table.contains("gateway network/envoy-internal  true")
            && table.contains("\ndns "),
        "{table}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(["status", "--admin", &admin, "-o", "yaml"])
        .output()
        .expect("trellis status -o yaml");
    assert!(String::from_utf8_lossy(&out.stdout).contains("components:"));
    // Sync: the internal gateway's routes are in the target zone, owned by `up`.
    let s = within(20, || {
        let s = status(&admin);
        s["components"]["sync"]["lan"]["lastRun"]
            .is_string()
            .then_some(s)
    })
    .unwrap_or_else(|| panic!("sync never ran: {:#}", status(&admin)));
    let lan = &s["components"]["sync"]["lan"];
    assert!(lan["lastError"].is_null(), "{s:#}");
    assert_eq!(lan["failed"], 0, "{s:#}");
    assert_eq!(dig(&target_dns, "echo.home.example"), "10.10.30.25");
    assert_eq!(dig(&target_dns, "api.home.example"), "10.10.30.25");
    // Only the internal gateway's routes (gatewayNames).
    assert_eq!(dig(&target_dns, "echo-ext.home.example"), "");

    // Health: the probe's results in /status, Gatus's API and Gatus's metrics.
    let s = within(20, || {
        let s = status(&admin);
        (s["components"]["health"]["healthy"] == 1).then_some(s)
    })
    .unwrap_or_else(|| panic!("the probe never passed: {:#}", status(&admin)));
    assert_eq!(s["components"]["health"]["endpoints"], 1, "{s:#}");
    let (code, body) = get(&format!(
        "http://{admin}/api/v1/endpoints/internal_echo-probe/statuses"
    ));
    assert_eq!(code, "200", "{body}");
    let probe: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(probe["results"][0]["status"], 200, "{probe:#}");
    // The same results on the flow UI's page, in a browser: the endpoint's row turns healthy.
    let ui = s["components"]["observe"]["addresses"]["ui"]
        .as_str()
        .expect("the UI's address")
        .to_string();
    let (code, body) = get(&format!(
        "http://{ui}/api/v1/endpoints/internal_echo-probe/statuses"
    ));
    assert_eq!(code, "200", "{body}");
    let browser = crate::ui::Browser::start();
    browser.goto(&format!("http://{ui}/"));
    let row = within(20, || {
        let v = browser.script(
            "const r = document.querySelector('#health-rows tr[data-key=\"internal_echo-probe\"]'); \
             return r ? [r.className, document.getElementById('health-section').hidden, r.querySelectorAll('.result.ok').length] : null;",
        );
        (v[0] == "healthy").then_some(v)
    })
    .unwrap_or_else(|| panic!("no healthy row for the probe on the page"));
    assert_eq!(row[1], false, "the health section is shown: {row}");
    assert!(row[2].as_u64().is_some_and(|n| n >= 1), "{row}");
    drop(browser);
    let (_, metrics) = get(&format!("http://{admin}/metrics"));
    for family in [
        "gatus_results_endpoint_success{key=\"internal_echo-probe\",group=\"internal\",name=\"echo-probe\",type=\"HTTP\"} 1",
        "trellis_gateway_rq_total{route=\"apps/echo-internal\",code_class=\"2xx\"} 1",
        "trellis_gateway_rq_total{route=\"apps/echo-external\",code_class=\"2xx\"} 1",
        "coredns_dns_requests_total{proto=\"udp\",view=\"lan\",qtype=\"A\"} 3",
        "hubble_flows_processed_total",
    ] {
        // A whole line (a count of 1 must not pass as 10), or a family's name.
        let found = metrics
            .lines()
            .any(|l| l == family || (!family.contains(' ') && l.starts_with(family)));
        assert!(found, "{family} not in:\n{metrics}");
    }

    // A broken edit: nothing changes what is served, and /status says why, per component.
    let route = lab.join("apps/echo/httproute.yaml");
    let good = std::fs::read_to_string(&route).expect("read");
    std::fs::write(
        &route,
        format!("{good}\n---\nkind: HTTPRoute\nmetadata: {{name: [\n"),
    )
    .expect("write");
    let s = within(20, || {
        let s = status(&admin);
        s["manifests"]["lastError"].is_string().then_some(s)
    })
    .expect("/status reports the rejected edit");
    let why = s["manifests"]["lastError"].as_str().unwrap_or_default();
    assert!(why.contains("httproute.yaml:"), "{why}");
    assert_eq!(s["manifests"]["generation"], 2, "{s:#}");
    for g in s["components"]["gateways"]
        .as_object()
        .expect("gateways")
        .values()
    {
        assert_eq!(g["generation"], 1, "{g:#}");
        assert!(
            g["lastError"]
                .as_str()
                .is_some_and(|e| e.contains("httproute.yaml:")),
            "{g:#}"
        );
    }
    assert_eq!(s["components"]["dns"]["generation"], 1, "{s:#}");
    assert_eq!(s["ready"], true);
    let h = internal("/still").expect("still serving");
    assert!(h.starts_with("http/2 200"), "{h}");
    assert_eq!(dig(&dns_port, "echo.home.example"), "10.10.30.25");

    // Repaired: every component takes the new generation and the errors clear.
    std::fs::write(&route, &good).expect("write");
    let s = within(20, || {
        let s = status(&admin);
        (s["components"]["dns"]["generation"] == 3).then_some(s)
    })
    .expect("the repaired manifests are applied");
    assert!(s["manifests"]["lastError"].is_null(), "{s:#}");
    for g in s["components"]["gateways"]
        .as_object()
        .expect("gateways")
        .values()
    {
        assert_eq!(g["generation"], 3, "{g:#}");
        assert!(g["lastError"].is_null(), "{g:#}");
    }

    // SIGTERM with a request in flight (the backend waits 2 s): it is answered, then every
    // gateway reports drained and the process exits 0.
    let port = port_of(&int_https);
    let slow = Command::new("curl")
        .args([
            "-sSk",
            "--max-time",
            "20",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--resolve",
            &format!("slow.home.example:{port}:127.0.0.1"),
            &format!("https://slow.home.example:{port}/slow?delay=2s"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("curl");
    let upstream = || (crate::established_to(&slow_port) > 0).then_some(());
    within(10, upstream).expect("the slow request reached the backend");
    up.signal("TERM");
    let out = slow.wait_with_output().expect("curl finishes");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "the request in flight failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exit = within(30, || up.0.try_wait().ok().flatten()).expect("exits after SIGTERM");
    assert!(exit.success(), "{exit:?}");
    let rest: Vec<String> = lines.iter().collect();
    for want in [
        "gateway network/envoy-internal: drained",
        "gateway network/envoy-external: drained",
        "stopped",
    ] {
        assert!(
            rest.iter().any(|l| l == want),
            "{want:?} not in:\n{}",
            rest.join("\n")
        );
    }
}

#[test]
fn up_print_config_merges_defaults_file_and_flags() {
    let t = tempfile::tempdir().expect("tmp");
    let config = t.path().join("trellis.yaml");
    std::fs::write(
        &config,
        "manifests: [lab]\ndns: {ttl: 5}\nlog: {level: debug}\n",
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(["up", "--print-config", "--config"])
        .arg(&config)
        .env("TRELLIS_ADMIN", "off")
        .env("TRELLIS_STATE_DIR", "/tmp/trellis-state")
        .env("TRELLIS_LOG_FORMAT", "json")
        .output()
        .expect("trellis runs");
    let text = crate::text(&out.stdout);
    assert!(out.status.success(), "{text}{}", crate::text(&out.stderr));
    let doc = &model::yaml::parse_documents(&text).expect("YAML")[0];
    let v = doc.to_json(&mut Default::default());
    // From the file (a relative path taken from the file's directory), from the variables,
    // and defaults for the rest.
    assert_eq!(
        v["manifests"][0],
        t.path().join("lab").display().to_string(),
        "{text}"
    );
    assert_eq!(v["dns"]["ttl"], 5, "{text}");
    assert_eq!(v["dns"]["listen"], "127.0.0.1:5353", "{text}");
    assert_eq!(v["log"]["level"], "debug", "{text}");
    assert_eq!(v["log"]["format"], "json", "the flag's value: {text}");
    assert!(v["admin"].is_null(), "{text}");
    assert_eq!(v["stateDir"], "/tmp/trellis-state", "{text}");

    // A mistake in the file names the file, the place and the key.
    std::fs::write(&config, "manifests: [lab]\ngateway:\n  drainTimout: 5s\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(["up", "--print-config", "--config"])
        .arg(&config)
        .output()
        .expect("trellis runs");
    assert_eq!(out.status.code(), Some(2));
    let err = crate::text(&out.stderr);
    assert!(
        err.contains(&format!("{}:3:3: gateway", config.display()))
            && err.contains("unknown field `drainTimout`"),
        "{err}"
    );
}

#[test]
fn up_starts_a_gateway_once_it_compiles_and_applies_sighup() {
    let t = tempfile::tempdir().expect("tmp");
    let dir = t.path().join("manifests");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let gateway = |class: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: trellis}}\nspec: {{controllerName: trellis.dev/gateway-controller}}\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: apps}}\n\
             spec:\n  gatewayClassName: {class}\n  listeners: [{{name: http, protocol: HTTP, port: 80}}]\n"
        )
    };
    // The Gateway names a class nobody defines: it cannot be served yet.
    std::fs::write(dir.join("gw.yaml"), gateway("missing")).expect("write");
    let config = t.path().join("trellis.yaml");
    let write_config = |extra: &str| {
        std::fs::write(
            &config,
            format!(
                "manifests: [manifests]\nadmin: '127.0.0.1:0'\ndns: null\ngateway: {{bind: 127.0.0.1, accessLog: off}}\n\
                 gateways:\n  apps/gw: {{ports: {{80: 0}}}}\n{extra}"
            ),
        )
        .expect("write")
    };
    write_config("");
    let mut up = Proc(
        Command::new(env!("CARGO_BIN_EXE_trellis"))
            .args(["up", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("trellis up starts"),
    );
    let lines = lines_of(&mut up);
    let mut seen = Vec::new();
    let admin = addr_in(&until(&lines, "admin on http://", 30, &mut seen));
    until(&lines, "gateway apps/gw: ", 30, &mut seen);
    let (code, _) = get(&format!("http://{admin}/ready"));
    assert_eq!(code, "503", "not ready while a Gateway is not served");
    // The line comes just before the status document is published: wait for it.
    let s = crate::within(30, || {
        let s = status(&admin);
        s["components"]["gateways"]["apps/gw"]
            .is_object()
            .then_some(s)
    })
    .expect("/status lists the Gateway");
    let g = &s["components"]["gateways"]["apps/gw"];
    assert_eq!(s["ready"], false, "{s:#}");
    assert_eq!(g["started"], false, "{g:#}");
    assert!(g["generation"].is_null(), "{g:#}");
    assert!(
        g["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("not accepted")),
        "{g:#}"
    );
    assert!(
        s["components"]["dns"].is_null(),
        "dns: null turns DNS off: {s:#}"
    );

    // Fixed: the Gateway starts from the new generation and the process becomes ready.
    std::fs::write(dir.join("gw.yaml"), gateway("trellis")).expect("write");
    until(
        &lines,
        "gateway apps/gw: listener port 80 on",
        30,
        &mut seen,
    );
    until(&lines, "ready: 1 gateways, dns off", 30, &mut seen);
    let s = crate::within(30, || {
        let s = status(&admin);
        (s["ready"] == true).then_some(s)
    })
    .expect("/status says ready");
    let (code, _) = get(&format!("http://{admin}/ready"));
    assert_eq!(code, "200");
    let g = &s["components"]["gateways"]["apps/gw"];
    assert_eq!(g["started"], true, "{g:#}");
    assert_eq!(g["generation"], 2, "{g:#}");
    assert_eq!(g["drainTimeoutSeconds"], 60.0, "{g:#}");

    // SIGHUP: the drain timeout applies at once; a new port map waits for a restart.
    std::fs::write(
        &config,
        "manifests: [manifests]\nadmin: '127.0.0.1:0'\ndns: null\ngateway: {bind: 127.0.0.1, accessLog: off}\n\
         gateways:\n  apps/gw: {ports: {80: 1}, drainTimeout: 7s}\n",
    )
    .expect("write");
    up.signal("HUP");
    let line = until(&lines, "config: reloaded", 30, &mut seen);
    assert!(
        line.ends_with(
            "applied [gateways.apps/gw.drainTimeout]; needs a restart [gateways.apps/gw.ports.80]"
        ),
        "{line}"
    );
    let s = crate::within(30, || {
        let s = status(&admin);
        (s["components"]["gateways"]["apps/gw"]["drainTimeoutSeconds"] == 7.0).then_some(s)
    })
    .expect("/status shows the reloaded drain timeout");
    assert_eq!(
        s["config"]["restartNeeded"],
        serde_json::json!(["gateways.apps/gw.ports.80"])
    );
    // The port change taken back before any restart: nothing waits for one any more.
    std::fs::write(
        &config,
        "manifests: [manifests]\nadmin: '127.0.0.1:0'\ndns: null\ngateway: {bind: 127.0.0.1, accessLog: off}\n\
         gateways:\n  apps/gw: {ports: {80: 0}, drainTimeout: 7s}\n",
    )
    .expect("write");
    up.signal("HUP");
    let line = until(&lines, "config: reloaded", 30, &mut seen);
    assert!(line.ends_with("applied []; needs a restart []"), "{line}");
    crate::within(30, || {
        let s = status(&admin);
        (s["config"]["restartNeeded"] == serde_json::json!([])).then_some(s)
    })
    .expect("/status: no restart needed after the change was taken back");

    up.signal("TERM");
    until(
        &lines,
        "gateway apps/gw: draining (up to 7s)",
        30,
        &mut seen,
    );
    let exit = within(30, || up.0.try_wait().ok().flatten()).expect("exits after SIGTERM");
    assert!(exit.success(), "{exit:?}");
}

/// A `gateways.X.ports` entry for a port the Gateway has no listener on stops `trellis up` at
/// start with the config key and the Gateway's listener ports, instead of being ignored.
#[test]
fn up_refuses_a_port_mapping_without_a_listener() {
    let t = tempfile::tempdir().expect("tmp");
    let dir = t.path().join("manifests");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(
        dir.join("gw.yaml"),
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: trellis}\n\
         spec: {controllerName: trellis.dev/gateway-controller}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: apps}\n\
         spec:\n  gatewayClassName: trellis\n  listeners: [{name: http, protocol: HTTP, port: 80}]\n",
    )
    .expect("write");
    let config = t.path().join("trellis.yaml");
    std::fs::write(
        &config,
        "manifests: [manifests]\nadmin: null\ndns: null\ngateway: {bind: 127.0.0.1, accessLog: off}\n\
         gateways:\n  apps/gw: {ports: {80: 0, 8080: 0}}\n",
    )
    .expect("write");
    // Bounded: a trellis up that ignored the mapping would serve until timeout ends it.
    let out = Command::new("timeout")
        .args(["30", env!("CARGO_BIN_EXE_trellis"), "up", "--config"])
        .arg(&config)
        .output()
        .expect("trellis up runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && out.status.code() != Some(124),
        "up must fail at start: {:?}\n{stderr}",
        out.status
    );
    assert!(
        stderr.contains("gateways.apps/gw.ports: 8080 is not a listener port")
            && stderr.contains("its listeners: 80"),
        "{stderr}"
    );
}
