//! Kubernetes mode with the real binary: `trellis gateway --source kube` serves what the API
//! server holds and follows its watch; `trellis operator --source kube` takes the Lease,
//! writes status back, and gives the Lease up on SIGTERM. The API server is the store crate's
//! mock (`fake_api.rs`) served over HTTP on loopback and found through a kubeconfig: no
//! Kubernetes API server can be installed on this machine.

use std::process::Command;

use serde_json::{Value, json};

use crate::fake_api::FakeApi;
use crate::{Proc, bound_addr, curl_headers, start_echo, within};

const CLASSES: &str = "/apis/gateway.networking.k8s.io/v1/gatewayclasses";
const GATEWAYS: &str = "/apis/gateway.networking.k8s.io/v1/gateways";
const ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/httproutes";
const SERVICES: &str = "/api/v1/services";
const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
const POOLS: &str = "/apis/cilium.io/v2/ciliumloadbalancerippools";
const DEPLOYMENTS: &str = "/apis/apps/v1/deployments";
const PODS: &str = "/api/v1/pods";
const NADS: &str = "/apis/k8s.cni.cncf.io/v1/network-attachment-definitions";
const SCALED_OBJECTS: &str = "/apis/keda.sh/v1alpha1/scaledobjects";

/// A metrics endpoint answering `{"queue": {"depth": 5}}` to every request (KEDA's
/// metrics-api trigger reads it), for as long as the test runs.
fn metrics_server() -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let body = r#"{"queue": {"depth": 5}}"#;
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

fn route(extra_filters: Value) -> Value {
    json!({
        "metadata": { "name": "web", "namespace": "apps" },
        "spec": {
            "parentRefs": [{ "name": "gw" }],
            "hostnames": ["web.example.com"],
            "rules": [{ "backendRefs": [{ "name": "web", "port": 80 }], "filters": extra_filters }],
        },
    })
}

/// The API: a class, Gateway `apps/gw`, Service `apps/web` with its EndpointSlice on the echo
/// server, and HTTPRoute `apps/web`. Returns the fake, the runtime serving it, and a
/// kubeconfig file for it.
fn api(echo_port: u16, dir: &std::path::Path) -> (FakeApi, tokio::runtime::Runtime, String) {
    let (fake, mock, handle) = FakeApi::new();
    fake.serve_collection(
        CLASSES,
        vec![json!({ "metadata": { "name": "trellis" },
                     "spec": { "controllerName": "trellis.dev/gateway-controller" } })],
    );
    fake.serve_collection(
        GATEWAYS,
        vec![json!({ "metadata": { "name": "gw", "namespace": "apps" },
                     "spec": { "gatewayClassName": "trellis",
                               "listeners": [
                                   { "name": "http", "port": 80, "protocol": "HTTP" },
                                   // Its certificate's Secret is missing: not served.
                                   { "name": "tls", "port": 8443, "protocol": "HTTPS",
                                     "tls": { "certificateRefs": [{ "name": "missing" }] } },
                               ] } })],
    );
    fake.serve_collection(
        SERVICES,
        vec![
            json!({ "metadata": { "name": "web", "namespace": "apps" },
                    "spec": { "ports": [{ "name": "http", "port": 80 }] } }),
            json!({ "metadata": { "name": "lb", "namespace": "apps" },
                    "spec": { "type": "LoadBalancer", "ports": [{ "name": "http", "port": 80 }] } }),
        ],
    );
    fake.serve_collection(
        POOLS,
        vec![json!({ "metadata": { "name": "lan" },
                     "spec": { "blocks": [{ "start": "10.10.30.25", "stop": "10.10.30.30" }] } })],
    );
    fake.serve_collection(
        SLICES,
        vec![json!({ "metadata": { "name": "web", "namespace": "apps",
                                   "labels": { "kubernetes.io/service-name": "web" } },
                     "addressType": "IPv4",
                     "ports": [{ "name": "http", "port": echo_port }],
                     "endpoints": [{ "addresses": ["127.0.0.1"] }] })],
    );
    fake.serve_collection(ROUTES, vec![route(json!([]))]);
    fake.serve_collection(
        DEPLOYMENTS,
        vec![json!({ "metadata": { "name": "web", "namespace": "apps" },
                     "spec": { "replicas": 1, "selector": { "matchLabels": { "app": "web" } },
                               "template": { "metadata": { "labels": { "app": "web" } },
                                             "spec": { "containers": [{ "name": "web", "image": "web" }] } } } })],
    );
    let metrics = metrics_server();
    fake.serve_collection(
        SCALED_OBJECTS,
        vec![json!({ "metadata": { "name": "web", "namespace": "apps" },
                     "spec": { "scaleTargetRef": { "name": "web" }, "minReplicaCount": 1,
                               "maxReplicaCount": 4, "pollingInterval": 1,
                               "triggers": [{ "type": "metrics-api", "metadata": {
                                   "url": format!("http://127.0.0.1:{metrics}/metrics"),
                                   "valueLocation": "queue.depth", "targetValue": "2" } }] } })],
    );
    let rt = fake.start(handle);
    let addr = rt.block_on(FakeApi::listen_http(mock, [127, 0, 0, 1].into()));
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, FakeApi::kubeconfig(addr)).expect("write kubeconfig");
    (fake, rt, kubeconfig.display().to_string())
}

fn spawn(
    kubeconfig: &str,
    args: &[&str],
) -> (
    Proc,
    std::io::Lines<std::io::BufReader<std::process::ChildStderr>>,
) {
    use std::io::BufRead;
    let mut p = Proc(
        Command::new(env!("CARGO_BIN_EXE_trellis"))
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("trellis starts"),
    );
    let err = std::io::BufReader::new(p.0.stderr.take().expect("stderr")).lines();
    (p, err)
}

#[test]
fn gateway_and_operator_run_from_the_kubernetes_api() {
    let t = tempfile::tempdir().expect("tmp");
    let mut log = String::new();
    let (_echo, echo_port) = start_echo(&mut log);
    let (fake, _rt, kubeconfig) = api(echo_port, t.path());

    // The gateway serves the route it read from the API.
    let (_gw, mut gw_err) = spawn(
        &kubeconfig,
        &[
            "gateway",
            "--source",
            "kube",
            "--gateway",
            "apps/gw",
            "--bind",
            "127.0.0.1",
            "--port-map",
            "80=0",
            "--access-log",
            "off",
        ],
    );
    let gw_addr = bound_addr(&mut gw_err, "listener port 80 on", &mut log);
    std::thread::spawn(move || for _ in gw_err.by_ref() {});
    let url = format!("http://{gw_addr}/hello");
    within(20, || {
        curl_headers(&url, "web.example.com").filter(|h| h.starts_with("http/1.1 200"))
    })
    .unwrap_or_else(|| panic!("the gateway serves the API's route\n{log}"));

    // A change in the API reaches it through the watch.
    fake.apply(
        ROUTES,
        route(json!([{ "type": "ResponseHeaderModifier",
                       "responseHeaderModifier": { "add": [{ "name": "x-version", "value": "2" }] } }])),
    );
    within(20, || {
        curl_headers(&url, "web.example.com").filter(|h| h.contains("x-version: 2"))
    })
    .expect("the route change is served");

    // The operator takes the Lease and writes the conditions back.
    let (op, mut op_err) = spawn(
        &kubeconfig,
        &[
            "operator",
            "--source",
            "kube",
            "--admin",
            "127.0.0.1:0",
            "--identity",
            "op-a",
            "--lease-namespace",
            "trellis-system",
        ],
    );
    let admin = bound_addr(&mut op_err, "admin on", &mut log);
    std::thread::spawn(move || for _ in op_err.by_ref() {});
    let parent = within(20, || {
        fake.object(ROUTES, "apps/web")
            .and_then(|r| r.pointer("/status/parents/0").cloned())
    })
    .expect("the route's status is written");
    assert_eq!(parent["controllerName"], "trellis.dev/gateway-controller");
    assert_eq!(parent["parentRef"]["name"], "gw");
    let gw = within(20, || {
        fake.object(GATEWAYS, "apps/gw")
            .filter(|g| g.pointer("/status/listeners/0/attachedRoutes") == Some(&json!(1)))
    })
    .expect("the Gateway's listener status is written");
    assert_eq!(gw["status"]["listeners"][0]["name"], "http");
    // What only compiling the Gateway finds is written too: the listener it does not serve.
    let tls = &gw["status"]["listeners"][1];
    let programmed = tls["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Programmed")
        .cloned()
        .unwrap_or_default();
    assert_eq!(programmed["status"], "False", "{tls}");
    assert!(
        programmed["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("not served: ")),
        "{tls}"
    );
    // LB-IPAM: the LoadBalancer Service and the Gateway get addresses of the pool, the
    // Service with Cilium's condition.
    let lb = within(20, || {
        fake.object(SERVICES, "apps/lb")
            .and_then(|s| s.pointer("/status/loadBalancer/ingress/0/ip").cloned())
    })
    .expect("the Service's address is written");
    let svc = fake.object(SERVICES, "apps/lb").expect("the Service");
    let cond = &svc["status"]["conditions"][0];
    assert_eq!(cond["type"], "cilium.io/IPAMRequestSatisfied", "{svc}");
    assert_eq!(cond["status"], "True", "{svc}");
    let gw_ip = gw
        .pointer("/status/addresses/0/value")
        .cloned()
        .unwrap_or_else(|| panic!("the Gateway's address: {gw}"));
    let pool: Vec<Value> = (25..=30).map(|i| json!(format!("10.10.30.{i}"))).collect();
    assert!(
        pool.contains(&lb) && pool.contains(&gw_ip) && lb != gw_ip,
        "{lb} {gw_ip}"
    );
    assert_eq!(
        fake.lease("trellis-system", "trellis-operator")
            .expect("a Lease")["spec"]["holderIdentity"],
        "op-a"
    );
    // KEDA's part: the metric (5 against a target of 2 per replica) scales the Deployment to
    // 3 through its scale subresource, and the ScaledObject says why.
    within(30, || {
        fake.object(DEPLOYMENTS, "apps/web")
            .filter(|d| d["spec"]["replicas"] == 3)
    })
    .unwrap_or_else(|| {
        panic!(
            "the Deployment is scaled: {:?}",
            fake.object(DEPLOYMENTS, "apps/web")
        )
    });
    let so = within(20, || {
        fake.object(SCALED_OBJECTS, "apps/web")
            .filter(|o| o.pointer("/status/conditions/1/status") == Some(&json!("True")))
    })
    .unwrap_or_else(|| {
        panic!(
            "KEDA's conditions: {:?}",
            fake.object(SCALED_OBJECTS, "apps/web")
        )
    });
    assert_eq!(so["status"]["conditions"][0]["type"], "Ready", "{so}");
    assert_eq!(so["status"]["conditions"][0]["status"], "True", "{so}");
    assert_eq!(so["status"]["conditions"][1]["type"], "Active", "{so}");
    let status = Command::new("curl")
        .args(["-s", &format!("http://{admin}")])
        .output()
        .expect("curl");
    let status: Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    assert_eq!(status["leader"], true, "{status}");
    // The source's metrics: objects per kind, and the lag of the snapshots its own status
    // writes brought back.
    let base = admin.trim_end_matches("/status");
    let metrics = within(20, || {
        let out = Command::new("curl")
            .args(["-s", &format!("http://{base}/metrics")])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .any(|l| l.starts_with("trellis_kube_snapshot_lag_seconds_count") && !l.ends_with(" 0"))
            .then_some(text)
    })
    .expect("snapshot lag observed");
    assert!(
        metrics.contains("trellis_kube_objects{kind=\"HTTPRoute\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("trellis_kube_events_total{kind=\"HTTPRoute\"}"),
        "{metrics}"
    );

    // SIGTERM: the operator gives the Lease up so another replica need not wait it out.
    op.signal("TERM");
    let mut op = op;
    let exit = within(20, || op.0.try_wait().ok().flatten()).expect("the operator exits");
    assert!(exit.success(), "{exit:?}");
    let lease = fake
        .lease("trellis-system", "trellis-operator")
        .expect("a Lease");
    assert!(lease["spec"]["holderIdentity"].is_null(), "{lease}");
    assert!(fake.unexpected().is_empty(), "{:?}", fake.unexpected());
}

/// A network namespace with a veth to the host, deleted (with its link) on drop.
struct NodeNetns {
    name: String,
}

impl NodeNetns {
    /// `host_ip`/30 on the host side, `node_ip`/30 on `eth0` inside.
    fn new(name: &str, host_ip: &str, node_ip: &str) -> NodeNetns {
        let n = NodeNetns {
            name: name.to_string(),
        };
        let host_if = format!("{name}h");
        let run = |args: &[&str]| {
            let ok = Command::new("ip")
                .args(args)
                .status()
                .expect("ip runs")
                .success();
            assert!(ok, "ip {args:?}");
        };
        run(&["netns", "add", name]);
        run(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", name,
        ]);
        run(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if]);
        run(&["link", "set", &host_if, "up"]);
        run(&[
            "-n",
            name,
            "addr",
            "add",
            &format!("{node_ip}/30"),
            "dev",
            "eth0",
        ]);
        run(&["-n", name, "link", "set", "eth0", "up"]);
        run(&["-n", name, "link", "set", "lo", "up"]);
        n
    }
}

impl Drop for NodeNetns {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A pod's network namespace, deleted on drop.
struct PodNetns(String);

impl PodNetns {
    fn new(name: &str) -> PodNetns {
        let ok = Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .expect("ip runs")
            .success();
        assert!(ok, "ip netns add {name}");
        PodNetns(name.to_string())
    }
}

impl Drop for PodNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Removes a pin directory on drop.
struct Pins(std::path::PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = datapath::unpin(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A node agent on Kubernetes: its config names no node, address or range; it reads them
/// from its Node, installs the CNI plugin with the Node's pod range, programs the Services it
/// reads from the API into its eBPF maps (following the watch), and announces a
/// LoadBalancer address under Cilium's coordination Lease.
#[test]
fn an_agent_takes_its_node_and_services_from_the_api() {
    crate::lab::require_root();
    let id = std::process::id();
    let name = format!("tk{}", id % 100_000);
    let net = format!("10.250.{}", id % 250);
    let (host_ip, node_ip) = (format!("{net}.1"), format!("{net}.2"));
    let _ns = NodeNetns::new(&name, &host_ip, &node_ip);
    let pins = Pins(std::path::PathBuf::from(format!(
        "/sys/fs/bpf/trellis/{name}"
    )));
    let t = tempfile::tempdir().expect("tmp");

    let (fake, mock, handle) = FakeApi::new();
    fake.serve_collection(
        "/api/v1/nodes",
        vec![
            json!({ "metadata": { "name": "kn1", "labels": { "kubernetes.io/hostname": "kn1" } },
                     "spec": { "podCIDR": "10.69.7.0/24" },
                     "status": { "addresses": [{ "type": "InternalIP", "address": node_ip }] } }),
        ],
    );
    let service = |name: &str, ip: &str| {
        json!({ "metadata": { "name": name, "namespace": "default" },
                "spec": { "clusterIP": ip, "ports": [{ "name": "http", "port": 80, "targetPort": 8080 }] } })
    };
    // A LoadBalancer Service with the address the operator gave it, and Cilium's L2 policy.
    let lb_ip = format!("{net}.3");
    let mut lb = service("lb", "10.96.0.60");
    lb["spec"]["type"] = json!("LoadBalancer");
    lb["status"] = json!({ "loadBalancer": { "ingress": [{ "ip": lb_ip }] } });
    fake.serve_collection(SERVICES, vec![service("web", "10.96.0.50"), lb]);
    fake.serve_collection(
        "/apis/cilium.io/v2alpha1/ciliuml2announcementpolicies",
        vec![json!({ "metadata": { "name": "lan" },
                     "spec": { "loadBalancerIPs": true, "interfaces": ["^eth0$"] } })],
    );
    let slice = |name: &str, ip: &str| {
        json!({ "metadata": { "name": name, "namespace": "default",
                              "labels": { "kubernetes.io/service-name": name } },
                "addressType": "IPv4", "ports": [{ "name": "http", "port": 8080 }],
                "endpoints": [{ "addresses": [ip], "conditions": { "ready": true } }] })
    };
    fake.serve_collection(
        SLICES,
        vec![slice("web", "10.69.7.5"), slice("lb", "10.69.7.7")],
    );
    // A pod with a Multus attachment: macvlan on the node's eth0 with a static address.
    fake.serve_collection(
        PODS,
        vec![json!({ "metadata": { "name": "p1", "namespace": "default",
                                   "annotations": { "k8s.v1.cni.cncf.io/networks": "mv" } },
                     "spec": { "nodeName": "kn1", "containers": [{ "name": "c", "image": "c" }] } })],
    );
    fake.serve_collection(
        NADS,
        vec![json!({ "metadata": { "name": "mv", "namespace": "default" },
                     "spec": { "config": json!({ "cniVersion": "0.3.1", "type": "macvlan",
                         "master": "eth0", "mode": "bridge",
                         "ipam": { "type": "static", "addresses": [{ "address": "192.168.77.10/24" }] } })
                         .to_string() } })],
    );
    let rt = fake.start(handle);
    let addr = rt.block_on(FakeApi::listen_http(mock, host_ip.parse().expect("ip")));
    let kubeconfig = t.path().join("kubeconfig");
    std::fs::write(&kubeconfig, FakeApi::kubeconfig(addr)).expect("kubeconfig");

    let (bin_dir, conf_dir) = (t.path().join("bin"), t.path().join("net.d"));
    std::fs::create_dir_all(&bin_dir).expect("mkdir");
    std::fs::create_dir_all(&conf_dir).expect("mkdir");
    // The plugin to install: trellis-cni, built beside trellis by the workspace build.
    let plugin = std::path::Path::new(env!("CARGO_BIN_EXE_trellis")).with_file_name("trellis-cni");
    assert!(
        plugin.exists(),
        "{} is missing: build the workspace (cargo build -p cni)",
        plugin.display()
    );
    let config = t.path().join("agent.json");
    std::fs::write(
        &config,
        json!({
            "source": "kube", "cluster_cidr": "10.69.0.0/16", "lan_interface": "eth0",
            "pin_dir": pins.0, "assignments": null, "masquerade": true,
            "admin_listen": format!("{node_ip}:19091"),
            "cni_install": { "plugin": plugin, "bin_dir": bin_dir, "conf_dir": conf_dir,
                             "state_dir": t.path().join("cni-state"),
                             "agent_socket": t.path().join("agent.sock"),
                             "cluster_cidrs": ["10.69.0.0/16", "10.96.0.0/12"] },
        })
        .to_string(),
    )
    .expect("config");
    let mut agent = Proc(
        // nsenter, not `ip netns exec`: the agent must see the host's bpffs, where the test
        // reads its maps (ip netns exec mounts a sysfs of its own).
        Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{name}"))
            .args([env!("CARGO_BIN_EXE_trellis"), "agent", "--config"])
            .arg(&config)
            .env("KUBECONFIG", &kubeconfig)
            .env("NODE_NAME", "kn1")
            .env("POD_NAMESPACE", "trellis-system")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(t.path().join("agent.log")).expect("log"))
            .spawn()
            .expect("agent starts"),
    );
    {
        use std::io::BufRead;
        let out = std::io::BufReader::new(agent.0.stdout.take().expect("stdout"));
        assert!(
            out.lines()
                .map_while(Result::ok)
                .any(|l| l.trim() == "ready"),
            "the agent never said ready"
        );
    }
    let log = || std::fs::read_to_string(t.path().join("agent.log")).unwrap_or_default();
    // The admin endpoint says ready once the maps hold the API's snapshot.
    let status = within(20, || {
        let out = Command::new("curl")
            .args(["-sf", &format!("http://{node_ip}:19091/status")])
            .output()
            .ok()?;
        serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .filter(|v| v["ready"] == true)
    })
    .unwrap_or_else(|| panic!("the agent's /status says ready\n{}", log()));
    assert_eq!(status["node"], "kn1", "{status}");
    let ready = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://{node_ip}:19091/ready"),
        ])
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&ready.stdout), "200");
    // The CNI plugin and this node's configuration, with the Node's pod range.
    assert_eq!(
        std::fs::read(bin_dir.join("trellis-cni")).expect("plugin installed"),
        std::fs::read(&plugin).expect("plugin")
    );
    let conf: Value = serde_json::from_slice(
        &std::fs::read(conf_dir.join("05-trellis.conf")).expect("config installed"),
    )
    .expect("JSON");
    assert_eq!(conf["podCIDR"], "10.69.7.0/24");
    assert_eq!(conf["type"], "trellis-cni");

    // The API's Service is in the maps; one added later follows through the watch.
    let has = |ip: &str| {
        let maps = datapath::Maps::open(&pins.0).ok()?;
        let ip: std::net::Ipv4Addr = ip.parse().ok()?;
        maps.services()
            .ok()?
            .keys()
            .any(|k| k.addr == ip && k.port == 80)
            .then_some(())
    };
    within(20, || has("10.96.0.50"))
        .unwrap_or_else(|| panic!("the Service from the API is programmed\n{}", log()));
    // The LoadBalancer address: this node takes Cilium's Lease for it and answers for it.
    let lease = within(20, || {
        fake.lease("trellis-system", "cilium-l2announce-default-lb")
            .filter(|l| l["spec"]["holderIdentity"] == "kn1")
    })
    .unwrap_or_else(|| panic!("the L2 Lease is taken\n{}", log()));
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 15, "{lease}");
    within(20, || {
        let out = Command::new("ip")
            .args(["-n", &name, "-4", "addr", "show", "dev", "eth0"])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .contains(&format!("{lb_ip}/"))
            .then_some(())
    })
    .unwrap_or_else(|| panic!("{lb_ip} is announced on eth0\n{}", log()));
    // The runtime starts the pod: the plugin asks the agent for the pod's attachments, makes
    // them, and the agent writes the pod's network-status.
    let pod_ns = PodNetns::new(&format!("tp{}", id % 100_000));
    let cni = |command: &str| {
        use std::io::Write;
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{name}"))
            .arg(bin_dir.join("trellis-cni"))
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", "c1")
            .env("CNI_NETNS", format!("/var/run/netns/{}", pod_ns.0))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", format!("{}:/usr/lib/cni", bin_dir.display()))
            .env(
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p1",
            )
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("trellis-cni runs");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(&std::fs::read(conf_dir.join("05-trellis.conf")).expect("conf"))
            .expect("config on stdin");
        let out = child.wait_with_output().expect("trellis-cni ends");
        assert!(
            out.status.success(),
            "{command}: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            log()
        );
    };
    cni("ADD");
    let net1 = Command::new("ip")
        .args(["-n", &pod_ns.0, "-4", "addr", "show", "dev", "net1"])
        .output()
        .expect("ip");
    assert!(
        String::from_utf8_lossy(&net1.stdout).contains("192.168.77.10/24"),
        "{}",
        String::from_utf8_lossy(&net1.stdout)
    );
    let status = within(20, || {
        fake.object(PODS, "default/p1").and_then(|p| {
            p.pointer("/metadata/annotations/k8s.v1.cni.cncf.io~1network-status")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
    })
    .unwrap_or_else(|| panic!("the pod's network-status is written\n{}", log()));
    let status: Value = serde_json::from_str(&status).expect("network-status is JSON");
    assert_eq!(status[0]["interface"], "eth0", "{status}");
    assert_eq!(status[1]["interface"], "net1", "{status}");
    assert_eq!(status[1]["name"], "default/mv", "{status}");
    assert_eq!(status[1]["ips"][0], "192.168.77.10", "{status}");
    cni("DEL");
    // The socket's cap: 64 connections that send nothing hold it; more are closed on arrival
    // and counted on the admin endpoint.
    let held: Vec<std::os::unix::net::UnixStream> = (0..66)
        .map(|_| {
            std::os::unix::net::UnixStream::connect(t.path().join("agent.sock"))
                .expect("connect to the agent's socket")
        })
        .collect();
    within(20, || {
        let out = Command::new("curl")
            .args(["-sf", &format!("http://{node_ip}:19091/metrics")])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .find_map(|l| l.strip_prefix("trellis_agent_cni_connections_refused_total "))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .filter(|n| *n >= 1)
    })
    .unwrap_or_else(|| panic!("refused connections are counted\n{}", log()));
    drop(held);

    fake.apply(SERVICES, service("shop", "10.96.0.51"));
    fake.apply(SLICES, slice("shop", "10.69.7.6"));
    within(20, || has("10.96.0.51"))
        .unwrap_or_else(|| panic!("a Service added in the API is programmed\n{}", log()));
    assert!(fake.unexpected().is_empty(), "{:?}", fake.unexpected());
}
