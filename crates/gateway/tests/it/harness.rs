//! The environment every case runs in: the conformance namespaces, GatewayClass, the three
//! base Gateways and six echo backends behind Services and EndpointSlices, on loopback.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use gateway::echo::{self, Echo};

pub const BACKENDS: &[(&str, &str)] = &[
    ("gateway-conformance-infra", "infra-backend-v1"),
    ("gateway-conformance-infra", "infra-backend-v2"),
    ("gateway-conformance-infra", "infra-backend-v3"),
    ("gateway-conformance-app-backend", "app-backend-v1"),
    ("gateway-conformance-app-backend", "app-backend-v2"),
    ("gateway-conformance-web-backend", "web-backend"),
];

/// Kills a child process when dropped, also when the test fails.
pub struct Kill(pub std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port on 127.0.0.1 bound but not listening, held while the returned socket lives:
/// connections to it are refused, and no other test can take the port meanwhile (a port
/// taken from a listener that was dropped can be reused by a parallel test's server).
pub fn refusing_port() -> (socket2::Socket, u16) {
    let held =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    held.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    let port = held
        .local_addr()
        .expect("addr")
        .as_socket()
        .expect("inet")
        .port();
    (held, port)
}

/// Started echo backends by `namespace/name`.
pub struct Backends(pub BTreeMap<String, Echo>);

pub async fn start_backends() -> Backends {
    let mut out = BTreeMap::new();
    for (ns, name) in BACKENDS {
        let e = echo::start("127.0.0.1:0".parse().expect("addr"), ns, name)
            .await
            .expect("echo starts");
        out.insert(format!("{ns}/{name}"), e);
    }
    Backends(out)
}

pub fn service(ns: &str, name: &str, addr: SocketAddr) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  ports: [{{name: http, port: 8080, targetPort: 3000}}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels: {{kubernetes.io/service-name: {name}}}\n\
         addressType: IPv4\nports: [{{name: http, port: {port}}}]\nendpoints: [{{addresses: [\"{ip}\"]}}]\n---\n",
        port = addr.port(),
        ip = addr.ip()
    )
}

/// The base manifests, with the backends' real addresses.
pub fn base_manifests(b: &Backends) -> String {
    let mut out = String::new();
    for (short, ns) in [
        ("infra", "gateway-conformance-infra"),
        ("backend", "gateway-conformance-app-backend"),
        ("web-backend", "gateway-conformance-web-backend"),
    ] {
        out.push_str(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels: {{gateway-conformance: {short}}}\n---\n"
        ));
    }
    out.push_str("apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: trellis}\nspec: {controllerName: trellis.dev/gateway-controller}\n---\n");
    for (name, from) in [
        ("same-namespace", "{from: Same}"),
        ("all-namespaces", "{from: All}"),
        (
            "backend-namespaces",
            "{from: Selector, selector: {matchLabels: {gateway-conformance: backend}}}",
        ),
    ] {
        out.push_str(&format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: gateway-conformance-infra}}\n\
             spec:\n  gatewayClassName: trellis\n  listeners:\n    - name: http\n      protocol: HTTP\n      port: 80\n      allowedRoutes:\n        namespaces: {from}\n---\n"
        ));
    }
    for (key, e) in &b.0 {
        let (ns, name) = key.split_once('/').expect("ns/name");
        out.push_str(&service(ns, name, e.addr));
    }
    out
}

/// Loads manifests from text through the real directory source.
pub fn load(dir: &Path, files: &[(&str, &str)]) -> store::Load {
    for (name, text) in files {
        std::fs::write(dir.join(name), text).expect("write manifest");
    }
    store::load(
        &[dir.to_path_buf()],
        &store::Options {
            default_namespace: "default".into(),
            ..Default::default()
        },
    )
}

/// Loads the base manifests plus `manifests`, compiles Gateway `name` (which every listener
/// of must be served) and binds `ports` on free loopback ports, with the rest of `bind`.
pub async fn start_gateway(
    dir: &Path,
    backends: &Backends,
    manifests: &str,
    name: &str,
    ports: &[u16],
    bind: gateway::Bind,
) -> (gateway::Running, std::sync::Arc<gateway::metrics::Metrics>) {
    let load = load(
        dir,
        &[
            ("base.yaml", &base_manifests(backends)),
            ("case.yaml", manifests),
        ],
    );
    let plan =
        gateway::compile(&load.snapshot, "gateway-conformance-infra", name).expect("compiles");
    assert!(plan.unserved.is_empty(), "{:?}", plan.unserved);
    let bind = gateway::Bind {
        ip: Some("127.0.0.1".parse().expect("ip")),
        port_map: ports.iter().map(|&p| (p, 0)).collect(),
        ..bind
    };
    let metrics = std::sync::Arc::new(gateway::metrics::Metrics::default());
    let running = gateway::start(&plan, &bind, metrics.clone())
        .await
        .expect("starts");
    (running, metrics)
}

/// A plain HTTP/1.1 client for the tests.
pub fn client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
> {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// Loads the base manifests plus `manifests`, compiles Gateway `same-namespace` and serves
/// its port 80 on a free loopback port.
pub async fn serve(
    backends: &Backends,
    manifests: &str,
    metrics: std::sync::Arc<gateway::metrics::Metrics>,
) -> (gateway::Plan, gateway::Running) {
    serve_observed(backends, manifests, metrics, None).await
}

/// [`serve`] with a request observer.
pub async fn serve_observed(
    backends: &Backends,
    manifests: &str,
    metrics: std::sync::Arc<gateway::metrics::Metrics>,
    observer: Option<gateway::record::Observer>,
) -> (gateway::Plan, gateway::Running) {
    let dir = tempfile::tempdir().expect("tmp");
    let load = load(
        dir.path(),
        &[
            ("base.yaml", &base_manifests(backends)),
            ("case.yaml", manifests),
        ],
    );
    let plan = gateway::compile(
        &load.snapshot,
        "gateway-conformance-infra",
        "same-namespace",
    )
    .expect("compiles");
    let bind = gateway::Bind {
        ip: Some("127.0.0.1".parse().expect("ip")),
        port_map: [(80, 0)].into(),
        observer,
        ..Default::default()
    };
    let running = gateway::start(&plan, &bind, metrics).await.expect("starts");
    (plan, running)
}

/// Runs curl (which must succeed); returns the response head in lower case and the body.
pub fn curl(args: &[&str]) -> (String, Vec<u8>) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "-D", "/dev/stderr"])
        .args(args)
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stderr).to_ascii_lowercase(),
        out.stdout,
    )
}

/// Reads one HTTP/1.1 response with a Content-Length (the echo backend's); returns the head.
pub fn read_response(c: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = c.read(&mut chunk).expect("read");
        assert!(
            n > 0,
            "closed before a whole answer: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .expect("content-length");
            if body.len() >= len {
                return head.to_string();
            }
        }
    }
}

/// (status, lowercased response head, body) of one curl request to `/x` through the gateway,
/// with `host_header` (`Host: ...`) and `extra` curl arguments.
pub fn request(addr: SocketAddr, host_header: &str, extra: &[&str]) -> (u16, String, String) {
    let url = format!("http://{addr}/x");
    let mut args = vec!["-H", host_header, url.as_str()];
    args.extend(extra);
    let (head, body) = curl(&args);
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    (status, head, String::from_utf8_lossy(&body).into_owned())
}

/// After a malformed request named `name`: its `answer` must be one of `refusals` and its
/// `path` must not have reached `echo` (unless `may_arrive`); what is wrong goes to `wrong`.
pub fn check_refused(
    echo: &gateway::echo::Echo,
    (name, path, answer): (&str, &str, &str),
    refusals: &[&str],
    may_arrive: bool,
    wrong: &mut Vec<String>,
) {
    eprintln!("{name}: {answer}");
    if !refusals.contains(&answer) {
        wrong.push(format!("{name}: answered {answer}"));
    }
    if !may_arrive && echo.seen().iter().any(|s| s.path == path) {
        wrong.push(format!("{name}: forwarded to the backend"));
    }
}

/// Whatever the malformed requests got, none put a header on the upstream request through
/// a CR LF in a value (the cases name it `injected`), and nothing else was `wrong`.
pub fn assert_refused_and_nothing_injected(echo: &gateway::echo::Echo, wrong: &[String]) {
    assert!(
        !echo
            .seen()
            .iter()
            .any(|s| s.headers.contains_key("injected")),
        "a CR LF in a value became an HTTP/1 header upstream"
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
