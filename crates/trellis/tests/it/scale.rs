//! Health-driven scaling end to end, as the seed describes it: `trellis health` probes a
//! backend (Gatus's semantics) and serves Gatus's metrics, a real Prometheus scrapes them,
//! and the lab's scaler reads the corpus's query through KEDA's prometheus trigger and scales
//! a Gateway's proxy in a 3-node lab. The backend stops: the proxy goes to 2 replicas and the
//! LoadBalancer Service has both; it comes back: 1 again after the stabilization window;
//! Prometheus stops: the fallback count holds after the failure threshold.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::lab::{Lab, require_root};
use crate::{Proc, bound_addr};

#[path = "../../../health/tests/it/prometheus.rs"]
mod prometheus;

/// The corpus's query (apps/network/envoy-gateway/app/scaledobject.yaml).
const QUERY: &str = r#"1 - min(gatus_results_endpoint_success{group="external"})"#;

/// The Gateway (its proxy is what is scaled) and the ScaledObject on its Deployment, as the
/// corpus writes it except for the server address, a 1 s poll and threshold 0.5: with the
/// corpus's threshold 1, a failing probe asks for ceil(1 / 1) = 1 replica (see the README).
fn manifests(prometheus: &str) -> String {
    format!(
        r#"apiVersion: cilium.io/v2
kind: CiliumLoadBalancerIPPool
metadata: {{name: pool}}
spec: {{blocks: [{{start: 10.10.30.60, stop: 10.10.30.61}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: trellis}}
spec: {{controllerName: trellis.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: envoy-internal, namespace: network}}
spec:
  gatewayClassName: trellis
  infrastructure: {{annotations: {{lbipam.cilium.io/ips: 10.10.30.60}}}}
  listeners: [{{name: http, protocol: HTTP, port: 80}}]
---
kind: ScaledObject
apiVersion: keda.sh/v1alpha1
metadata: {{name: envoy-internal, namespace: network}}
spec:
  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: envoy-internal}}
  pollingInterval: 1
  cooldownPeriod: 5
  minReplicaCount: 1
  maxReplicaCount: 2
  fallback: {{failureThreshold: 2, replicas: 2}}
  advanced:
    restoreToOriginalReplicaCount: true
    horizontalPodAutoscalerConfig: {{behavior: {{scaleDown: {{stabilizationWindowSeconds: 5}}}}}}
  triggers:
    - type: prometheus
      metadata:
        serverAddress: http://{prometheus}
        query: {QUERY}
        threshold: "0.5"
"#
    )
}

/// `trellis echo` on a loopback port (the probed backend).
fn echo(port: u16) -> Proc {
    Proc(
        Command::new(env!("CARGO_BIN_EXE_trellis"))
            .args([
                "echo",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--name",
                "backend",
                "--namespace",
                "apps",
            ])
            .stderr(Stdio::null())
            .spawn()
            .expect("echo starts"),
    )
}

/// Polls the lab's state until `f` accepts it (at most 90 s).
fn until_state(lab: &Lab, what: &str, f: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let s = lab.state();
        if f(&s) {
            return s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "{what}: not within 90 s:\n{:#}",
            s["scaling"]
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The scaling row and the ready proxy pods of the Gateway.
fn proxies(s: &serde_json::Value) -> usize {
    s["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["plan"]["owner"] == "Gateway/network/envoy-internal" && p["ready"] == true)
        .count()
}

fn row(s: &serde_json::Value) -> &serde_json::Value {
    &s["scaling"][0]
}

#[test]
fn lab_scales_a_gateway_from_a_failing_probe_through_prometheus() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let backend = echo(port);
    // The probe of the `external` group, as a Gatus ConfigMap.
    let probes = dir.path().join("probes");
    std::fs::create_dir_all(&probes).expect("mkdir");
    std::fs::write(
        probes.join("gatus.yaml"),
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: probes, namespace: apps, labels: {{gatus.io/enabled: 'true'}}}}\n\
             data:\n  config.yaml: |\n    endpoints:\n      - {{name: backend, group: external, url: 'http://127.0.0.1:{port}/', interval: 1s, client: {{timeout: 1s}}, conditions: ['[STATUS] == 200']}}\n"
        ),
    )
    .expect("write");
    let mut health = Proc(
        Command::new(env!("CARGO_BIN_EXE_trellis"))
            .args(["health", "-f"])
            .arg(&probes)
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("health starts"),
    );
    let mut err = std::io::BufReader::new(health.0.stderr.take().expect("stderr")).lines();
    let mut log = String::new();
    let metrics = bound_addr(&mut err, "metrics on", &mut log);
    std::thread::spawn(move || for _ in err.map_while(Result::ok) {});
    let mut prom =
        prometheus::Prometheus::start(&[metrics.trim_end_matches("/metrics").to_string()]);

    let manifests_dir = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests_dir).expect("mkdir");
    std::fs::write(manifests_dir.join("gateway.yaml"), manifests(&prom.addr)).expect("write");
    let lab = Lab::up(
        &manifests_dir,
        &format!("s{}", std::process::id()),
        &dir.path().join("state"),
    );

    // Healthy: the query reads 0, one proxy.
    let s = until_state(&lab, "one healthy proxy", |s| {
        row(s)["ready"] == true && row(s)["replicas"] == 1 && proxies(s) == 1
    });
    assert_eq!(
        row(&s)["target"],
        "Deployment network/envoy-internal",
        "{s:#}"
    );
    assert_eq!(row(&s)["active"], false, "{:#}", row(&s));

    // The backend stops: the probe fails, the query reads 1, the proxy goes to 2, and the
    // Gateway's LoadBalancer Service has both.
    let stopped = Instant::now();
    drop(backend);
    let s = until_state(&lab, "two proxies", |s| {
        row(s)["replicas"] == 2 && proxies(s) == 2
    });
    // Reported, not asserted: the scaler's decision time after the metric changed, with 1 s
    // probes, 1 s scrapes and 1 s polls (plus starting a proxy pod).
    eprintln!(
        "bench scale: backend stopped -> 2 proxies ready after {:.1} s",
        stopped.elapsed().as_secs_f64()
    );
    assert_eq!(row(&s)["active"], true, "{:#}", row(&s));
    let lb = s["services"]
        .as_array()
        .expect("services")
        .iter()
        .find(|r| {
            r["load_balancer"]
                .as_array()
                .is_some_and(|a| a.iter().any(|ip| ip == "10.10.30.60"))
        })
        .unwrap_or_else(|| panic!("the Gateway's Service: {:#}", s["services"]));
    assert_eq!(lb["endpoints"].as_array().map(Vec::len), Some(2), "{lb:#}");
    let text = Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(["lab", "status", "--name"])
        .arg(format!("s{}", std::process::id()))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .expect("lab status");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("SCALEDOBJECT") && text.contains("Ready,Active"),
        "{text}"
    );

    // It comes back: after the scale-down stabilization window (5 s), one proxy again.
    let back = Instant::now();
    let _backend = echo(port);
    until_state(&lab, "back to one proxy", |s| {
        row(s)["replicas"] == 1 && proxies(s) == 1
    });
    eprintln!(
        "bench scale: backend back -> 1 proxy after {:.1} s (5 s window)",
        back.elapsed().as_secs_f64()
    );

    // Prometheus stops: after two failed polls, the fallback count (2) holds.
    prom.stop();
    let s = until_state(&lab, "the fallback", |s| {
        row(s)["fallback"] == true && row(s)["replicas"] == 2
    });
    assert!(
        row(&s)["reason"]
            .as_str()
            .is_some_and(|r| r.contains("failed polls")),
        "{:#}",
        row(&s)
    );
}
