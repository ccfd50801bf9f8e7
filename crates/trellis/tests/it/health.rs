//! `trellis health` against real peers: `trellis echo` (HTTP and TCP) and `trellis dns`
//! (the cluster zone), endpoints from a ConfigMap labelled gatus.io/enabled; `--once` exit
//! codes, and `--listen` serving Gatus's metrics as a KEDA trigger reads them and Gatus's API
//! (`/api/v1/endpoints/statuses`) as its UI reads it.

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::{Proc, bound_addr, echo_and_base, text, within};

/// Starts `trellis dns` on base.yaml; its port.
fn dns(dir: &Path, log: &mut String) -> (Proc, u16) {
    let mut p = Proc(
        Command::new(env!("CARGO_BIN_EXE_trellis"))
            .args(["dns", "-f"])
            .arg(dir.join("base.yaml"))
            .args(["--listen", "127.0.0.1:0"])
            .stderr(Stdio::piped())
            .spawn()
            .expect("dns starts"),
    );
    let err = std::io::BufReader::new(p.0.stderr.take().expect("stderr")).lines();
    for l in err {
        let l = l.expect("text");
        log.push_str(&l);
        log.push('\n');
        if l.contains("on udp/tcp") {
            let port = l
                .rsplit(':')
                .next()
                .expect("port")
                .trim()
                .parse()
                .expect("port");
            return (p, port);
        }
    }
    panic!("trellis dns did not start:\n{log}");
}

/// The probes: the echo server over HTTP (group external) and TCP, and the cluster zone.
fn probes(dir: &Path, echo: u16, dns: u16) {
    std::fs::write(
        dir.join("gatus.yaml"),
        format!(
            r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: probes
  namespace: apps
  labels: {{gatus.io/enabled: "true"}}
data:
  config.yaml: |
    endpoints:
      - name: echo
        group: external
        url: http://127.0.0.1:{echo}/
        interval: 1s
        client: {{timeout: 2s}}
        conditions: ["[STATUS] == 200", "[BODY] == pat(*{{*)"]
      - name: echo-tcp
        group: internal
        url: tcp://127.0.0.1:{echo}
        interval: 1s
        conditions: ["[CONNECTED] == true"]
      - name: cluster-dns
        group: internal
        url: 127.0.0.1:{dns}
        interval: 1s
        dns: {{query-name: web.apps.svc.cluster.local, query-type: A}}
        conditions: ["[DNS_RCODE] == NOERROR"]
"#
        ),
    )
    .expect("write");
}

#[test]
fn health_once_passes_then_fails_when_the_backend_stops() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut log = String::new();
    let (echo, echo_port) = echo_and_base(dir.path(), &mut log);
    let (_dns, dns_port) = dns(dir.path(), &mut log);
    probes(dir.path(), echo_port, dns_port);
    let d = dir.path().display().to_string();
    let out = crate::trellis(&["health", "-f", &d, "--once"]);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    for name in [
        "external/echo ",
        "internal/echo-tcp ",
        "internal/cluster-dns ",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("ok") && l.contains(name)),
            "{name}: {stdout}"
        );
    }
    assert!(stdout.contains("rcode=NOERROR"), "{stdout}");

    drop(echo);
    let out = crate::trellis(&["health", "-f", &d, "--once"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("FAIL") && l.contains("internal/echo-tcp ")),
        "{stdout}"
    );
    assert!(
        stdout.contains("condition: [CONNECTED] (false) == true"),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("ok") && l.contains("internal/cluster-dns ")),
        "{stdout}"
    );
}

#[test]
fn health_once_reports_a_condition_that_does_not_parse() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("x.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: p, namespace: a, labels: {gatus.io/enabled: \"true\"}}\n\
         data:\n  config.yaml: |\n    endpoints:\n      - {name: x, url: 'tcp://127.0.0.1:1', conditions: ['[CONNECTED] = true']}\n",
    )
    .expect("write");
    let out = crate::trellis(&["health", "-f", &dir.path().display().to_string(), "--once"]);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("x.yaml:5:3: ConfigMap a/p: config.yaml: endpoints[0].conditions[0] \"[CONNECTED] = true\": column 1: no comparison"),
        "{stderr}"
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "an endpoint that cannot be made did not pass"
    );
}

#[test]
fn health_serves_gatus_metrics_that_follow_the_backend() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut log = String::new();
    let (echo, echo_port) = echo_and_base(dir.path(), &mut log);
    let (_dns, dns_port) = dns(dir.path(), &mut log);
    probes(dir.path(), echo_port, dns_port);
    let mut health = Proc(
        Command::new(env!("CARGO_BIN_EXE_trellis"))
            .args(["health", "-f"])
            .arg(dir.path())
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("health starts"),
    );
    let mut err = std::io::BufReader::new(health.0.stderr.take().expect("stderr")).lines();
    let addr = bound_addr(&mut err, "metrics on", &mut log);
    let metrics = || {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "5", &format!("http://{addr}")])
            .output()
            .expect("curl");
        text(&out.stdout)
    };
    let success = |v: u8| {
        format!(
            "gatus_results_endpoint_success{{key=\"external_echo\",group=\"external\",name=\"echo\",type=\"HTTP\"}} {v}"
        )
    };
    // Each endpoint reports on its own schedule: wait until the echo and the DNS probe have both
    // reported once.
    let dns_seen = "gatus_results_duration_seconds{key=\"internal_cluster-dns\"";
    let m = within(30, || {
        Some(metrics()).filter(|m| m.contains(&success(1)) && m.contains(dns_seen))
    })
    .unwrap_or_else(|| {
        panic!(
            "no result for external/echo and internal/cluster-dns in 30 s:\n{}",
            metrics()
        )
    });
    assert!(
        m.contains("gatus_results_total{key=\"external_echo\",group=\"external\",name=\"echo\",type=\"HTTP\",success=\"true\"}"),
        "{m}"
    );
    assert!(
        m.contains("gatus_results_code_total{key=\"external_echo\",group=\"external\",name=\"echo\",type=\"HTTP\",code=\"200\"}"),
        "{m}"
    );
    assert!(
        m.contains("gatus_results_code_total{key=\"internal_cluster-dns\",group=\"internal\",name=\"cluster-dns\",type=\"DNS\",code=\"NOERROR\"}"),
        "{m}"
    );
    // The same results through Gatus's API, as its UI and gatus-cli read them.
    let base = addr.trim_end_matches("/metrics").to_string();
    let api = |path: &str| -> serde_json::Value {
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "5", &format!("http://{base}{path}")])
            .output()
            .expect("curl");
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{path}: {e}: {}", text(&out.stdout)))
    };
    let all = api("/api/v1/endpoints/statuses");
    let keys: Vec<&str> = all
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|s| s["key"].as_str())
        .collect();
    assert!(
        keys.contains(&"external_echo") && keys.contains(&"internal_cluster-dns"),
        "{all:#}"
    );
    let echo_status = api("/api/v1/endpoints/external_echo/statuses");
    let first = &echo_status["results"][0];
    assert_eq!(first["status"], 200, "{echo_status:#}");
    assert_eq!(first["hostname"], "127.0.0.1", "{echo_status:#}");
    assert_eq!(first["success"], true, "{echo_status:#}");
    assert_eq!(
        first["conditionResults"][0]["condition"], "[STATUS] (200) == 200",
        "{echo_status:#}"
    );
    assert_eq!(
        echo_status["events"][1]["type"], "HEALTHY",
        "{echo_status:#}"
    );
    // The backend stops: the external group's success drops to 0, which is what the corpus's
    // KEDA trigger (`1 - min(gatus_results_endpoint_success{group="external"})`) scales on.
    drop(echo);
    within(30, || Some(metrics()).filter(|m| m.contains(&success(0))))
        .unwrap_or_else(|| panic!("external/echo still healthy after 30 s:\n{}", metrics()));
    let echo_status = api("/api/v1/endpoints/external_echo/statuses");
    let events = echo_status["events"].as_array().expect("events");
    assert_eq!(
        events.last().map(|e| &e["type"]),
        Some(&serde_json::json!("UNHEALTHY")),
        "{echo_status:#}"
    );
}
