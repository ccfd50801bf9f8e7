//! Black-box tests of the `trellis` binary: exit codes, output formats, error messages.

#[path = "../../../datapath/tests/it/capture.rs"]
mod capture;
mod crash;
mod deploy;
/// The mock Kubernetes API of the store crate's tests, served over HTTP for the binary.
/// (Parts of it serve only the store tests.)
#[allow(dead_code)]
#[path = "../../../store/tests/it/fake_api.rs"]
mod fake_api;
mod health;
mod kube_equivalence;
mod kube_mode;

/// The Knot DNS helper of the dns crate's tests: one way to run Knot in tests.
#[path = "../../../dns/tests/it/knot.rs"]
mod knot;
mod l2;
mod lab;
mod observe;
mod policy;
mod scale;
mod sync;
mod ui;
mod up;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn trellis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(args)
        .output()
        .expect("trellis runs")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn example() -> String {
    repo().join("examples/home-lab").display().to_string()
}

fn example_vars() -> String {
    repo()
        .join("examples/home-lab/vars.yaml")
        .display()
        .to_string()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn example_is_clean_and_exits_0() {
    let out = trellis(&["check", "-f", &example(), "--vars", &example_vars()]);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(
        stdout.lines().any(|l| {
            let mut f = l.split_whitespace();
            f.next() == Some("Gateway") && f.next() == Some("network/envoy-external")
        }),
        "{stdout}"
    );
    assert!(
        stdout.contains("0 objects with problems, 0 warnings, 0 errors"),
        "{stdout}"
    );
}

#[test]
fn example_without_vars_warns_and_flags_the_hostnames() {
    let out = trellis(&["check", "-f", &example()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("variable ${SECRET_DOMAIN} is not defined and is left as written (pass it with --vars FILE)"), "{stdout}");
}

#[test]
fn strict_vars_makes_undefined_variables_exit_2() {
    let out = trellis(&["check", "-f", &example(), "--strict-vars"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stdout).contains("error: Gateway envoy-external: variable ${SECRET_DOMAIN} is not defined (--strict-vars makes this an error)"), "{}", text(&out.stdout));
}

#[test]
fn json_output_is_one_document_in_kubernetes_status_shape() {
    let out = trellis(&[
        "check",
        "-f",
        &example(),
        "--vars",
        &example_vars(),
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    let objects = v["objects"].as_array().expect("objects");
    assert!(objects.len() >= 20);
    for o in objects {
        assert!(
            o["kind"].is_string() && o["metadata"]["name"].is_string(),
            "{o}"
        );
        assert!(o["metadata"].get("namespace").is_some(), "{o}");
        for c in o["conditions"].as_array().expect("conditions") {
            for f in ["type", "status", "reason", "message"] {
                assert!(c[f].is_string(), "condition field {f} in {c}");
            }
        }
    }
    let gw = objects
        .iter()
        .find(|o| o["kind"] == "Gateway" && o["metadata"]["name"] == "envoy-internal")
        .expect("gateway");
    let listeners = gw["status"]["listeners"]
        .as_array()
        .expect("listener status");
    let https = listeners
        .iter()
        .find(|l| l["name"] == "https")
        .expect("https listener");
    assert_eq!(https["attachedRoutes"], 2, "{https}");
    assert_eq!(v["summary"]["objectsWithProblems"], 0);
}

#[test]
fn yaml_output_parses() {
    let out = trellis(&[
        "check",
        "-f",
        &example(),
        "--vars",
        &example_vars(),
        "-o",
        "yaml",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let docs = model::yaml::parse_documents(&text(&out.stdout)).expect("valid YAML");
    assert_eq!(docs.len(), 1);
    assert!(docs[0].get("objects").is_some());
}

#[test]
fn unparsable_input_exits_2_with_file_line_column() {
    let t = tempfile::tempdir().expect("tmp");
    let f = t.path().join("broken.yaml");
    std::fs::write(
        &f,
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: [web\n",
    )
    .expect("write");
    let out = trellis(&["check", "-f", &f.display().to_string()]);
    assert_eq!(out.status.code(), Some(2));
    let stdout = text(&out.stdout);
    let want = format!("{}:5:1: error: ", f.display());
    assert!(stdout.contains(&want), "{stdout}");
}

#[test]
fn missing_path_and_bad_vars_file_are_clear() {
    let out = trellis(&["check", "-f", "/nonexistent/trellis"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stdout).contains("/nonexistent/trellis:0:0: error: no such file or directory"),
        "{}",
        text(&out.stdout)
    );
    let out = trellis(&["check", "-f", &example(), "--vars", "/nonexistent/vars"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("cannot read vars file /nonexistent/vars"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn corpus_loads_and_flags_outside_references() {
    let corpus = repo().join("testdata/home-ops/kubernetes");
    let out = trellis(&["check", "-f", &corpus.display().to_string(), "-o", "json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "outside references are problems"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["summary"]["errors"], 0);
    assert_eq!(v["skipped"]["helm.toolkit.fluxcd.io/HelmRelease"], 10);
}

/// NetworkAttachmentDefinitions are checked against the plugins installed in `--cni-path`
/// (here a directory with only Debian's macvlan in it) with each problem at its field path,
/// and pods' `k8s.v1.cni.cncf.io/networks` must name NADs that exist.
#[test]
fn check_finds_what_would_fail_a_pods_attachments() {
    let macvlan = Path::new("/usr/lib/cni/macvlan");
    assert!(
        macvlan.exists(),
        "{} missing: install Debian's containernetworking-plugins",
        macvlan.display()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    std::os::unix::fs::symlink(macvlan, bin.join("macvlan")).expect("symlink");
    let nad = |name: &str, config: &str| {
        format!(
            "apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\n\
             metadata: {{name: {name}, namespace: network}}\nspec:\n  config: '{config}'\n---\n"
        )
    };
    let mut yaml = nad(
        "iot",
        r#"{"cniVersion":"0.3.1","name":"iot","type":"macvlan","master":"eth3"}"#,
    );
    yaml += &nad(
        "chained",
        r#"{"cniVersion":"0.3.1","name":"c","plugins":[{"type":"macvlan"},{"type":"sbr"}]}"#,
    );
    yaml += &nad(
        "newer",
        r#"{"cniVersion":"1.1.0","name":"n","type":"macvlan","mode":"weird"}"#,
    );
    yaml += "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: ha, namespace: home}\n\
             spec:\n  selector: {matchLabels: {app: ha}}\n  template:\n    metadata:\n      \
             labels: {app: ha}\n      annotations: {k8s.v1.cni.cncf.io/networks: \
             \"network/iot, network/gone@x\"}\n    spec: {containers: [{name: a, image: b}]}\n";
    std::fs::write(dir.path().join("m.yaml"), yaml).expect("write");
    let out = trellis(&[
        "check",
        "-f",
        &dir.path().join("m.yaml").display().to_string(),
        "--cni-path",
        &bin.display().to_string(),
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let object = |name: &str| {
        v["objects"]
            .as_array()
            .expect("objects")
            .iter()
            .find(|o| o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {v}"))
            .clone()
    };
    let problems = |name: &str| -> Vec<(String, String)> {
        object(name)["problems"]
            .as_array()
            .expect("problems")
            .iter()
            .map(|p| {
                (
                    p["path"].as_str().unwrap_or_default().to_string(),
                    p["message"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    };
    let accepted = |name: &str| {
        object(name)["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .find(|c| c["type"] == "Accepted")
            .map(|c| c["status"].as_str().unwrap_or_default().to_string())
    };
    assert!(problems("iot").is_empty(), "{:?}", problems("iot"));
    assert_eq!(accepted("iot").as_deref(), Some("True"));

    let chained = problems("chained");
    assert_eq!(chained.len(), 1, "{chained:?}");
    assert_eq!(chained[0].0, "spec.config.plugins[1].type");
    assert!(chained[0].1.contains("sbr is not installed"), "{chained:?}");
    assert_eq!(accepted("chained").as_deref(), Some("False"));

    let newer = problems("newer");
    let paths: Vec<&str> = newer.iter().map(|(p, _)| p.as_str()).collect();
    assert!(paths.contains(&"spec.config.cniVersion"), "{newer:?}");
    assert!(paths.contains(&"spec.config.mode"), "{newer:?}");
    assert!(
        newer
            .iter()
            .any(|(p, m)| p == "spec.config.type" && m.contains("does not speak cniVersion 1.1.0")),
        "the installed macvlan's VERSION answer: {newer:?}"
    );

    let ha = problems("ha");
    assert_eq!(ha.len(), 1, "{ha:?}");
    assert_eq!(
        ha[0].0,
        "spec.template.metadata.annotations[k8s.v1.cni.cncf.io/networks][1]"
    );
    assert!(ha[0].1.contains("network/gone not found"), "{ha:?}");

    // With the nodes' interfaces given, a master none of them has is refused at its field.
    let out = trellis(&[
        "check",
        "-f",
        &dir.path().join("m.yaml").display().to_string(),
        "--cni-path",
        &bin.display().to_string(),
        "--node-interfaces",
        "eth0,eth1",
        "-o",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let iot = v["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .find(|o| o["metadata"]["name"] == "iot")
        .expect("iot")
        .clone();
    assert_eq!(iot["problems"][0]["path"], "spec.config.master", "{iot}");
    assert_eq!(
        iot["problems"][0]["message"], "no node has interface eth3 (the nodes have eth0, eth1)",
        "{iot}"
    );
}

/// A ScaledObject trellis cannot compute (a Utilization target, a threshold that is not a
/// number) is not Accepted, at the field; the corpus's ScaledObjects are.
/// A Gatus condition that does not parse is a False condition on the object that declares it
/// (with the field and the place in the file), found by `trellis check` before anything
/// probes; the object itself stays accepted.
#[test]
fn check_marks_a_health_endpoint_that_cannot_be_made() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("x.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: p, namespace: a, labels: {gatus.io/enabled: \"true\"}}\n\
         data:\n  config.yaml: |\n    endpoints:\n      - {name: x, url: 'tcp://127.0.0.1:1', conditions: ['[CONNECTED] = true']}\n",
    )
    .expect("write");
    let out = check_json(dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let conditions = &doc["objects"][0]["conditions"];
    let find = |t: &str| condition(conditions, t);
    assert_eq!(find("Accepted")["status"], "True", "{conditions:#}");
    let health = find("HealthEndpointsAccepted");
    assert_eq!(health["status"], "False", "{conditions:#}");
    let msg = health["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("x.yaml:5:3")
            && msg.contains("endpoints[0].conditions[0]")
            && msg.contains("no comparison"),
        "{msg}"
    );
}

#[test]
fn check_compiles_scaled_objects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("so.yaml");
    std::fs::write(
        &file,
        "apiVersion: keda.sh/v1alpha1\nkind: ScaledObject\nmetadata: {name: bad, namespace: home}\n\
         spec:\n  scaleTargetRef: {name: ha}\n  triggers: [{type: prometheus, metricType: Utilization, \
         metadata: {threshold: '1'}}, {type: prometheus, metadata: {serverAddress: 'http://p:9090', query: up, threshold: x}}]\n",
    )
    .expect("write");
    let out = trellis(&["check", "-f", &file.display().to_string(), "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let o = &v["objects"][0];
    let paths: Vec<&str> = o["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .filter_map(|p| p["path"].as_str())
        .collect();
    assert!(paths.contains(&"spec.triggers[0].metricType"), "{o}");
    assert!(
        paths.contains(&"spec.triggers[1].metadata.threshold"),
        "{o}"
    );
    let corpus = repo()
        .join("testdata/home-ops/kubernetes/apps/network/envoy-gateway/app/scaledobject.yaml");
    let out = trellis(&["check", "-f", &corpus.display().to_string(), "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    for o in v["objects"].as_array().expect("objects") {
        let accepted = o["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .any(|c| c["type"] == "Accepted" && c["status"] == "True");
        assert!(accepted, "{o}");
    }
}

/// `trellis check` lists, per Deployment and Pod, the network policies selecting its pods
/// (namespaced ones only in their namespace, clusterwide ones everywhere), and says in the
/// condition what a policy does not enforce.
#[test]
fn check_lists_the_policies_selecting_each_workload() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("np.yaml");
    std::fs::write(
        &file,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\n\
         spec: {selector: {matchLabels: {app: web}}, template: {metadata: {labels: {app: web}}, \
         spec: {containers: [{name: c, image: x}]}}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: web-1, namespace: other, labels: {app: web}}\n\
         spec: {containers: [{name: c, image: x}]}\n---\n\
         apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: shop}\n\
         spec: {podSelector: {matchLabels: {app: web}}, policyTypes: [Ingress]}\n---\n\
         apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: http}\n\
         spec:\n  endpointSelector: {matchLabels: {app: web}}\n  ingress:\n  \
         - toPorts: [{ports: [{port: '80'}], rules: {http: [{method: GET}]}}]\n",
    )
    .expect("write");
    let out = trellis(&["check", "-f", &file.display().to_string(), "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let objects = v["objects"].as_array().expect("objects");
    let find = |kind: &str, name: &str| {
        objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{kind} {name} in {v}"))
    };
    assert_eq!(
        find("Deployment", "web")["networkPolicies"],
        serde_json::json!([
            "CiliumClusterwideNetworkPolicy http",
            "NetworkPolicy shop/web"
        ])
    );
    assert_eq!(
        find("Pod", "web-1")["networkPolicies"],
        serde_json::json!(["CiliumClusterwideNetworkPolicy http"])
    );
    let http = find("CiliumClusterwideNetworkPolicy", "http");
    let problem = &http["problems"][0];
    assert_eq!(
        problem["path"], "spec.ingress[0].toPorts[0].rules",
        "{http}"
    );
    assert!(
        problem["message"]
            .as_str()
            .is_some_and(|m| m.contains("the traffic it would allow is denied")),
        "{http}"
    );
    let table = trellis(&["check", "-f", &file.display().to_string()]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains(
            "Deployment shop/web: CiliumClusterwideNetworkPolicy http, NetworkPolicy shop/web"
        ),
        "{text}"
    );
}

/// A child process killed when dropped (also when a test fails).
struct Proc(std::process::Child);

impl Proc {
    /// Sends a signal (`TERM`, `HUP`) with kill(1).
    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.0.id().to_string()])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill -{sig} {}", self.0.id());
    }
}

/// TCP connections established to a local port (as `ss` sees them), e.g. a backend's.
fn established_to(port: &str) -> usize {
    let out = Command::new("ss")
        .args([
            "-Htn",
            "state",
            "established",
            &format!("( dport = :{port} )"),
        ])
        .output()
        .expect("ss runs");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn curl_headers(url: &str, host: &str) -> Option<String> {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-H",
            &format!("Host: {host}"),
            url,
        ])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).to_ascii_lowercase())
}

/// GET by curl: the status code and the body.
fn get(url: &str) -> (String, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5", "-w", "\n%{http_code}", url])
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
    (code.to_string(), body.to_string())
}

/// Retries `f` until it returns Some, for at most `secs` (readiness of another process).
fn within<T>(secs: u64, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Reads a process's stderr until a line contains `needle`; returns the text after the last
/// `http://` on that line (the address the process says it bound).
fn bound_addr(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    needle: &str,
    seen: &mut String,
) -> String {
    for line in lines.by_ref() {
        let line = line.expect("stderr is text");
        seen.push_str(&line);
        seen.push('\n');
        if line.contains(needle) {
            return line
                .rsplit("http://")
                .next()
                .unwrap_or("")
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_string();
        }
    }
    panic!("the process ended without printing {needle:?}:\n{seen}");
}

/// Starts `trellis echo` (as `apps/web`) on a free port.
fn start_echo(log: &mut String) -> (Proc, u16) {
    use std::io::BufRead;
    let mut echo = Proc(
        Command::new(env!("CARGO_BIN_EXE_trellis"))
            .args([
                "echo",
                "--listen",
                "127.0.0.1:0",
                "--name",
                "web",
                "--namespace",
                "apps",
            ])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("echo starts"),
    );
    let mut err = std::io::BufReader::new(echo.0.stderr.take().expect("stderr")).lines();
    let addr = bound_addr(&mut err, "echo apps/web on", log);
    let port = addr.rsplit(':').next().expect("port");
    (echo, port.parse().expect("port"))
}

/// Starts `trellis echo` on a free port and writes the GatewayClass, a Gateway `apps/gw` with
/// an HTTP listener on 80, and Service `apps/web` whose EndpointSlice points at the echo
/// server, into `dir/base.yaml`.
fn echo_and_base(dir: &Path, log: &mut String) -> (Proc, u16) {
    let (echo, port) = start_echo(log);
    std::fs::write(
        dir.join("base.yaml"),
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: trellis}}\nspec: {{controllerName: trellis.dev/gateway-controller}}\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: apps}}\nspec:\n  gatewayClassName: trellis\n  listeners: [{{name: http, protocol: HTTP, port: 80}}]\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: apps}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web, namespace: apps, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\n\
             ports: [{{name: http, port: {port}}}]\nendpoints: [{{addresses: [127.0.0.1]}}]\n"
        ),
    )
    .expect("write");
    (echo, port)
}

/// Starts `trellis gateway` for Gateway `apps/gw` of `dir` on free loopback ports, with
/// `extra` flags; stdout is piped. Returns the process and its stderr lines.
fn spawn_gateway(
    dir: &Path,
    extra: &[&str],
) -> (
    Proc,
    std::io::Lines<std::io::BufReader<std::process::ChildStderr>>,
) {
    use std::io::BufRead;
    let mut gw = Proc(
        Command::new(env!("CARGO_BIN_EXE_trellis"))
            .args([
                "gateway",
                "-f",
                &dir.display().to_string(),
                "--gateway",
                "apps/gw",
                "--bind",
                "127.0.0.1",
                "--port-map",
                "80=0",
            ])
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("gateway starts"),
    );
    let err = std::io::BufReader::new(gw.0.stderr.take().expect("stderr")).lines();
    (gw, err)
}

#[test]
fn gateway_serves_reloads_keeps_last_good_and_drains() {
    use std::io::Read;
    let t = tempfile::tempdir().expect("tmp");
    // Every process picks its own port and says which: no port can be taken in between.
    let mut log = String::new();
    let (_echo, _) = echo_and_base(t.path(), &mut log);
    let route = |extra: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: web, namespace: apps}}\nspec:\n  parentRefs: [{{name: gw}}]\n  hostnames: [web.example.com]\n\
             \x20 rules:\n    - backendRefs: [{{name: web, port: 80}}]\n{extra}"
        )
    };
    std::fs::write(t.path().join("route.yaml"), route("")).expect("write");
    let (mut gw, mut gw_err) = spawn_gateway(
        t.path(),
        &["--admin", "127.0.0.1:0", "--drain-timeout", "5s"],
    );
    let gw_addr = bound_addr(&mut gw_err, "listener port 80 on", &mut log);
    let admin_addr = bound_addr(&mut gw_err, "admin on", &mut log);
    // The rest of the gateway's stderr, collected as it comes.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in gw_err.map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let url = format!("http://{gw_addr}/hello");
    let first = within(20, || {
        curl_headers(&url, "web.example.com").filter(|h| h.starts_with("http/1.1 200"))
    })
    .expect("gateway answers 200");
    assert!(!first.contains("x-version"));

    // A change to the route is picked up without a restart.
    std::fs::write(t.path().join("route.yaml"), route("      filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: x-version, value: \"2\"}]}}]\n")).expect("write");
    within(20, || {
        curl_headers(&url, "web.example.com").filter(|h| h.contains("x-version: 2"))
    })
    .expect("reloaded route");

    // A broken edit is rejected; the last good routes keep serving.
    std::fs::write(
        t.path().join("route.yaml"),
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: [\n",
    )
    .expect("write");
    let status_url = format!("http://{admin_addr}/status");
    within(20, || {
        Command::new("curl")
            .args(["-s", &status_url])
            .output()
            .ok()
            .filter(|o| String::from_utf8_lossy(&o.stdout).contains("route.yaml:4:1: error"))
    })
    .expect("/status reports the rejected edit");
    let after = curl_headers(&url, "web.example.com").expect("still serving");
    assert!(
        after.starts_with("http/1.1 200") && after.contains("x-version: 2"),
        "{after}"
    );

    // SIGTERM drains and exits cleanly; the access log has a JSON line per request.
    gw.signal("TERM");
    let status = within(20, || gw.0.try_wait().ok().flatten()).expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    let stderr: String = rx.iter().collect::<Vec<_>>().join("\n");
    let mut stdout = String::new();
    gw.0.stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .expect("read");
    assert!(
        stderr.contains("reload rejected, still serving the previous routes"),
        "{stderr}"
    );
    assert!(stderr.contains("drained"), "{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.contains("\"route_name\":\"apps/web\""))
        .expect("an access log line");
    let v: serde_json::Value = serde_json::from_str(line).expect("JSON line");
    assert_eq!(v["response_code"], 200);
    assert_eq!(v[":authority"], "web.example.com");
}

#[test]
fn dns_serves_the_example_views_with_metrics_and_query_log() {
    use std::io::{BufRead, Read};
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
                "--query-log",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("dns starts"),
    );
    let mut err = std::io::BufReader::new(dns.0.stderr.take().expect("stderr")).lines();
    let mut log = String::new();
    let mut line = String::new();
    for l in err.by_ref() {
        line = l.expect("text");
        log.push_str(&line);
        if line.contains("on udp/tcp") {
            break;
        }
    }
    let addr = line.rsplit(' ').next().expect("address").to_string();
    let port = addr.rsplit(':').next().expect("port").to_string();
    let admin = bound_addr(&mut err, "admin on", &mut log);
    let dig = |args: &[&str]| {
        let out = Command::new("dig")
            .args(["@127.0.0.1", "-p", &port, "+short", "+time=2", "+tries=1"])
            .args(args)
            .output()
            .expect("dig runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // 127.0.0.1 is in the example's LAN view: gateways answer with their own addresses.
    assert_eq!(dig(&["echo.home.example", "A"]), "10.10.30.25");
    assert_eq!(dig(&["echo-ext.home.example", "A"]), "10.10.30.26");
    assert_eq!(dig(&["echo.apps.svc.cluster.local", "A"]), "10.96.0.50");
    let get = |path: &str| {
        let out = Command::new("curl")
            .args(["-s", &format!("http://{admin}{path}")])
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(get("/health").trim(), "ok");
    let metrics = get("/metrics");
    assert!(
        metrics.contains("coredns_dns_requests_total{proto=\"udp\",view=\"lan\",qtype=\"A\"} 3"),
        "{metrics}"
    );
    assert!(get("/status").contains("\"lan\""));
    dns.signal("TERM");
    let status = within(20, || dns.0.try_wait().ok().flatten()).expect("exits after SIGTERM");
    assert!(status.success());
    let mut stdout = String::new();
    dns.0
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .expect("read");
    assert!(
        stdout.lines().any(|l| l.starts_with("[INFO] 127.0.0.1:")
            && l.contains("\"A IN echo.home.example. udp")
            && l.contains("NOERROR")),
        "{stdout}"
    );
}

#[test]
fn h2load_sees_no_failure_while_the_route_table_changes_50_times() {
    let t = tempfile::tempdir().expect("tmp");
    let mut log = String::new();
    let (_echo, _) = echo_and_base(t.path(), &mut log);
    let route = |i: usize| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: web, namespace: apps}}\nspec:\n  parentRefs: [{{name: gw}}]\n\
             \x20 rules:\n    - filters: [{{type: ResponseHeaderModifier, responseHeaderModifier: {{set: [{{name: x-generation, value: \"{i}\"}}]}}}}]\n      backendRefs: [{{name: web, port: 80}}]\n"
        )
    };
    std::fs::write(t.path().join("route.yaml"), route(0)).expect("write");
    let (gw, mut gw_err) =
        spawn_gateway(t.path(), &["--admin", "127.0.0.1:0", "--access-log", "off"]);
    let gw_addr = bound_addr(&mut gw_err, "listener port 80 on", &mut log);
    let admin = bound_addr(&mut gw_err, "admin on", &mut log);
    std::thread::spawn(move || for _ in gw_err.map_while(Result::ok) {});
    let reloads = || -> u64 {
        let out = Command::new("curl")
            .args(["-s", &format!("http://{admin}/metrics")])
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.starts_with("trellis_gateway_reloads_total "))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    // h2load (HTTP/2 prior knowledge) for as long as the 50 changes take.
    let mut h2load = Command::new("h2load")
        .args([
            "-D",
            "20",
            "-c",
            "8",
            "-m",
            "4",
            &format!("http://{gw_addr}/"),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("h2load runs (apt-get install nghttp2-client)");
    for i in 1..=50 {
        std::fs::write(t.path().join("route.yaml"), route(i)).expect("write");
        // Each change is applied before the next is written (reloads are counted).
        within(20, || (reloads() >= i as u64).then_some(())).expect("the change was applied");
    }
    assert!(
        h2load.try_wait().expect("h2load state").is_none(),
        "the load ended before the 50 changes did: raise -D"
    );
    let out = h2load.wait_with_output().expect("h2load finishes");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text
        .lines()
        .find(|l| l.starts_with("requests:"))
        .unwrap_or_default()
        .to_string();
    // "requests: N total, N started, N done, N succeeded, 0 failed, 0 errored, 0 timeout"
    assert!(line.contains(" 0 failed, 0 errored, 0 timeout"), "{text}");
    let succeeded: u64 = line
        .split(", ")
        .find(|p| p.ends_with("succeeded"))
        .and_then(|p| p.split(' ').next()?.parse().ok())
        .unwrap_or(0);
    assert!(succeeded > 1000, "{text}");
    assert_eq!(reloads(), 50);
    drop(gw);
}

#[test]
fn sync_dry_run_plans_the_example_records_with_ownership() {
    let out = trellis(&[
        "sync",
        "-f",
        &example(),
        "--vars",
        &example_vars(),
        "--dry-run",
        "--owner-id",
        "home",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    // The internal gateway's routes get its address, the external gateway's its target, as
    // ExternalDNS publishes them; the DNSEndpoint is published as written.
    for line in [
        "CREATE echo.home.example A 10.10.30.25  (httproute/apps/echo-internal)",
        "CREATE echo-ext.home.example CNAME external.home.example  (httproute/apps/echo-external)",
        "CREATE external.home.example CNAME 00000000-0000-4000-8000-000000000000.cfargotunnel.com  (crd/network/external)",
        "CREATE a-echo.home.example TXT \"heritage=external-dns,external-dns/owner=home,external-dns/resource=httproute/apps/echo-internal\"",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "missing {line:?} in\n{stdout}"
        );
    }
    let only_external = trellis(&[
        "sync",
        "-f",
        &example(),
        "--vars",
        &example_vars(),
        "--dry-run",
        "--gateway-name",
        "network/envoy-external",
    ]);
    assert!(
        !text(&only_external.stdout).contains("10.10.30.25"),
        "{}",
        text(&only_external.stdout)
    );
    // The same plan as a document.
    let json = trellis(&[
        "sync",
        "-f",
        &example(),
        "--vars",
        &example_vars(),
        "--dry-run",
        "-o",
        "json",
    ]);
    let plan: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert!(
        plan["create"].as_array().expect("create").iter().any(|c| c
            == &serde_json::json!({"name": "echo.home.example", "type": "A",
                "targets": ["10.10.30.25"], "ttl": null,
                "resource": "httproute/apps/echo-internal"})),
        "{plan:#}"
    );
    assert_eq!(plan["delete"], serde_json::json!([]));
    let no_dry_run = trellis(&["sync", "-f", &example()]);
    assert_eq!(no_dry_run.status.code(), Some(2));
    assert!(
        text(&no_dry_run.stderr).contains("run with --dry-run"),
        "{}",
        text(&no_dry_run.stderr)
    );
}

#[test]
fn sigterm_lets_requests_in_flight_finish() {
    let t = tempfile::tempdir().expect("tmp");
    let mut log = String::new();
    let (_echo, echo_port) = echo_and_base(t.path(), &mut log);
    std::fs::write(
        t.path().join("route.yaml"),
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: web, namespace: apps}\nspec:\n  parentRefs: [{name: gw}]\n  rules: [{backendRefs: [{name: web, port: 80}]}]\n",
    )
    .expect("write");
    let (mut gw, mut err) =
        spawn_gateway(t.path(), &["--access-log", "off", "--drain-timeout", "20s"]);
    let addr = bound_addr(&mut err, "listener port 80 on", &mut log);
    // Five slow requests (the backend waits 2 s) are in flight when SIGTERM arrives.
    let slow: Vec<std::process::Child> = (0..5)
        .map(|i| {
            Command::new("curl")
                .args([
                    "-sS",
                    "--max-time",
                    "20",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    &format!("http://{addr}/slow/{i}?delay=2s"),
                ])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("curl")
        })
        .collect();
    // Wait until all five are being served: five connections from the gateway to the backend.
    let upstream = || established_to(&echo_port.to_string());
    within(10, || (upstream() >= 5).then_some(())).expect("the five requests reached the backend");
    gw.signal("TERM");
    // New connections are refused once draining starts.
    let refused = within(10, || {
        std::net::TcpStream::connect(addr.as_str())
            .is_err()
            .then_some(())
    });
    assert!(refused.is_some(), "still accepting after SIGTERM");
    for c in slow {
        let out = c.wait_with_output().expect("curl finishes");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "200",
            "an in-flight request failed during the drain"
        );
    }
    let status = within(20, || gw.0.try_wait().ok().flatten()).expect("exits after the drain");
    assert!(status.success());
    let rest: Vec<String> = err.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l.ends_with(": drained")), "{rest:?}");
}

#[test]
fn version_names_the_commit_and_build_date() {
    let out = trellis(&["--version"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    assert!(
        text.starts_with(&format!(
            "trellis {} ({head}, built 20",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
}

#[test]
fn completions_load_in_bash_and_the_man_page_renders() {
    let script = text(&trellis(&["completions", "bash"]).stdout);
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("trellis.bash");
    std::fs::write(&file, &script).expect("write");
    let out = Command::new("bash")
        .args([
            "-c",
            &format!("source {} && complete -p trellis", file.display()),
        ])
        .output()
        .expect("bash runs");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("-F _trellis trellis"),
        "{}",
        text(&out.stdout)
    );
    let man = text(&trellis(&["man"]).stdout);
    assert!(man.contains(".TH trellis 1"), "{man}");
    assert!(man.contains("up") && man.contains("gateway"), "{man}");
}

/// The systemd units in `dist/` are valid as systemd reads them (`systemd-analyze verify`,
/// with ExecStart pointed at the binary under test).
#[test]
fn systemd_units_verify() {
    let dir = tempfile::tempdir().expect("tmp");
    for unit in ["trellis.service", "trellis-agent.service"] {
        let body = std::fs::read_to_string(repo().join("dist").join(unit)).expect("unit");
        let path = dir.path().join(unit);
        std::fs::write(
            &path,
            body.replace("/usr/bin/trellis", env!("CARGO_BIN_EXE_trellis")),
        )
        .expect("write");
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&path)
            .output()
            .expect("systemd-analyze runs (package systemd)");
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{unit}: {}",
            text(&out.stderr)
        );
    }
}

/// `trellis check -f DIR -o json`.
fn check_json(dir: &Path) -> Output {
    trellis(&["check", "-f", &dir.display().to_string(), "-o", "json"])
}

/// The condition of type `type_` in a JSON list of conditions (`null` when there is none).
fn condition(list: &serde_json::Value, type_: &str) -> serde_json::Value {
    list.as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == type_)
        .cloned()
        .unwrap_or_default()
}

/// A listener the gateway does not serve (here: its ClientTrafficPolicy, on that listener
/// alone, is refused) is `Programmed=False` with why in `trellis check`, beside the refused
/// policy; the Gateway's other listener stays programmed.
#[test]
fn check_marks_a_listener_that_is_not_served() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("gw.yaml"),
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: trellis}\n\
         spec: {controllerName: trellis.dev/gateway-controller}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: net}\n\
         spec:\n  gatewayClassName: trellis\n  listeners:\n\
         \x20   - {name: a, protocol: HTTP, port: 80}\n\
         \x20   - {name: b, protocol: HTTP, port: 8080}\n---\n\
         apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: ClientTrafficPolicy\nmetadata: {name: only-b, namespace: net}\n\
         spec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: gw, sectionName: b}]\n  tcpKeepalive: {idleTime: 60s}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: none, namespace: net}\n\
         spec:\n  gatewayClassName: trellis\n  listeners:\n\
         \x20   - {name: a, protocol: HTTP, port: 80}\n---\n\
         apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: ClientTrafficPolicy\nmetadata: {name: paths, namespace: net}\n\
         spec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: none}]\n  path: {disableMergeSlashes: true}\n",
    )
    .expect("write");
    let out = check_json(dir.path());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let gw = doc["objects"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|o| o["kind"] == "Gateway" && o["metadata"]["name"] == "gw")
        .cloned()
        .unwrap_or_default();
    let programmed = |listener: &str| {
        let l = gw["status"]["listeners"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["name"] == listener)
            .cloned()
            .unwrap_or_default();
        condition(&l["conditions"], "Programmed")
    };
    assert_eq!(programmed("a")["status"], "True", "{gw:#}");
    let b = programmed("b");
    assert_eq!(b["status"], "False", "{gw:#}");
    let why = b["message"].as_str().unwrap_or_default();
    assert!(
        why.contains("not served") && why.contains("only-b"),
        "{why}"
    );
    // A Gateway none of whose listeners is served is not programmed either.
    let gateway_programmed = |name: &str| {
        let g = doc["objects"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|o| o["kind"] == "Gateway" && o["metadata"]["name"] == name)
            .cloned()
            .unwrap_or_default();
        condition(&g["status"]["conditions"], "Programmed")
    };
    assert_eq!(gateway_programmed("gw")["status"], "True");
    let none = gateway_programmed("none");
    assert_eq!(none["status"], "False", "{none}");
}
