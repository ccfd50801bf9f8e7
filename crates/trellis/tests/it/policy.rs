//! Network policy in the lab, with real packets: a connectivity matrix (every (from, to, port)
//! expected allowed or denied, kept as data below, and pings against ICMP type rules), replies of allowed connections through
//! enforced endpoints, the host's access, a world address by CIDR with `except`, a
//! keep-alive connection that survives policy edits, an edit that takes an allow away, and
//! toFQDNs through `trellis dns` (`rules.dns` names refused, 200 first connections right after
//! their lookups): an address opens for a pod when DNS answers it a name the
//! policy names, before the answer reaches the pod.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::lab::{Lab, require_root};

const APPS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: other, labels: {team: other}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: echo
        ports: [{name: http, containerPort: 8080}, {name: admin, containerPort: 9090}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: db, namespace: default}
spec:
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers:
      - name: db
        image: echo
        ports: [{name: pg, containerPort: 5432}, {name: other, containerPort: 6000}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: client, namespace: default}
spec:
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client}}
    spec:
      containers: [{name: client, image: echo, ports: [{containerPort: 8080}]}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: client, namespace: other}
spec:
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client}}
    spec:
      containers: [{name: client, image: echo, ports: [{containerPort: 8080}]}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: fqdn, namespace: fqdn}
spec:
  selector: {matchLabels: {app: fqdn}}
  template:
    metadata: {labels: {app: fqdn}}
    spec:
      containers: [{name: fqdn, image: echo, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Namespace
metadata: {name: external-secrets}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: bitwarden, namespace: external-secrets}
spec:
  selector: {matchLabels: {app: bitwarden}}
  template:
    metadata:
      labels: {app: bitwarden, app.kubernetes.io/instance: bitwarden, app.kubernetes.io/name: bitwarden}
    spec:
      containers: [{name: bw, image: echo, ports: [{containerPort: 8087}]}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: external-secrets, namespace: external-secrets}
spec:
  selector: {matchLabels: {app: external-secrets}}
  template:
    metadata:
      labels: {app: external-secrets, app.kubernetes.io/instance: external-secrets, app.kubernetes.io/name: external-secrets}
    spec:
      containers: [{name: es, image: echo, ports: [{containerPort: 8080}]}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: forgejo, namespace: default}
spec:
  selector: {matchLabels: {app: forgejo}}
  template:
    metadata: {labels: {app: forgejo, app.kubernetes.io/name: forgejo}}
    spec:
      containers: [{name: forgejo, image: echo, ports: [{containerPort: 3000}]}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: forgejo-runner, namespace: default}
spec:
  selector: {matchLabels: {app: forgejo-runner}}
  template:
    metadata: {labels: {app: forgejo-runner, app.kubernetes.io/component: forgejo-runner}}
    spec:
      containers: [{name: runner, image: echo, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: forgejo, namespace: default}
spec:
  selector: {app: forgejo}
  ports: [{port: 3000}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: svc-client, namespace: default}
spec:
  selector: {matchLabels: {app: svc-client}}
  template:
    metadata: {labels: {app: svc-client}}
    spec:
      containers: [{name: c, image: echo, ports: [{containerPort: 8080}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: svc-client, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: svc-client}}
  egress:
  - toServices: [{k8sService: {serviceName: forgejo}}]
    toPorts: [{ports: [{port: "3000"}]}]
---
apiVersion: trellis.dev/v1alpha1
kind: DNSView
metadata: {name: lab}
spec:
  clients: ["0.0.0.0/0"]
  zones: [example.test]
  dnsEndpoints: true
"#;

/// How long an answered address stays open at least (the lab's `--fqdn-min-ttl`).
const FQDN_MIN_TTL_S: u64 = 3;

/// Addresses of the LAN client that DNS names (`a<i>.example.test` -> 10.10.30.<200 + i>).
const FQDN_NAMES: u8 = 10;

/// Names the first-connection test asks one after the other (`b<i>.example.test` ->
/// 10.10.40.<i>, a prefix the lab's client answers for and the nodes route to it).
const FIRST_TRIES: u32 = 200;
const FIRST_TRIES_NET: &str = "10.10.40.0/24";

/// The fqdn pod: DNS to the nodes, names under example.test only (`rules.dns`), and port 8000
/// of what DNS answered for *.example.test.
const FQDN_POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: fqdn, namespace: fqdn}
spec:
  endpointSelector: {matchLabels: {app: fqdn}}
  egress:
  - toEntities: [host, remote-node]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules: {dns: [{matchPattern: "*.example.test"}, {matchName: example.test}]}
  - toFQDNs: [{matchPattern: "*.example.test"}]
    toPorts: [{ports: [{port: "8000"}]}]
"#;

fn fqdn_records() -> String {
    let mut t = String::from(
        "apiVersion: externaldns.k8s.io/v1alpha1\nkind: DNSEndpoint\n\
         metadata: {name: lan, namespace: default}\nspec:\n  endpoints:\n",
    );
    for i in 1..=FQDN_NAMES {
        t.push_str(&format!(
            "  - {{dnsName: a{i}.example.test, recordType: A, targets: [10.10.30.{}], recordTTL: 1}}\n",
            200 + u32::from(i)
        ));
    }
    for i in 1..=FIRST_TRIES {
        t.push_str(&format!(
            "  - {{dnsName: b{i}.example.test, recordType: A, targets: [10.10.40.{i}], recordTTL: 1}}\n"
        ));
    }
    t
}

/// web: only default/client, only on the named port `http`.
const WEB_POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: http}]
"#;

const POLICIES: &str = r#"
# db: web on any port; clients of namespaces labelled team=other on 5432-5440 (endPort);
# nothing from default/client (deny over the allow by namespace).
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: web}}]
  - fromEndpoints: [{matchLabels: {"k8s:app": client}, matchExpressions: [{key: io.kubernetes.pod.namespace, operator: Exists}]}]
    toPorts: [{ports: [{port: "5432", endPort: 5440, protocol: TCP}]}]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: client}}]
---
# other/client: the db, and the LAN except the client's /25 half, toFQDNs (not enforced yet:
# allows nothing).
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client, namespace: other}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {io.kubernetes.pod.namespace: default, app: db}}]
  - toCIDRSet: [{cidr: 10.10.30.0/24, except: [10.10.30.192/26]}]
    toPorts: [{ports: [{port: "8000"}]}]
  - toEndpoints: [{matchLabels: {io.kubernetes.pod.namespace: default, app: client}}]
    icmps: [{fields: [{type: 8, family: IPv4}]}]
  - toFQDNs: [{matchName: web.default.svc.cluster.local}]
"#;

/// Pings (ICMP echo, type 8) between pods: (from, to, answered). other/client may send echo
/// requests to default/client only (nothing else of it reaches that pod); web's
/// NetworkPolicy allows only its `http` port; db takes only TCP 5432-5440 from other/client;
/// default/client and default/web have no egress policy, and other/client no ingress one;
/// the LAN client is reached masqueraded.
const PINGS: &[(&str, &str, bool)] = &[
    ("other/client", "default/client", true),
    ("other/client", "web", false),
    ("other/client", "db", false),
    ("default/client", "web", false),
    ("default/web", "default/client", true),
    ("default/client", "other/client", true),
    // Outside the cluster, masqueraded as the node (the echo's identifier NATed as a port).
    ("default/client", "lan-client", true),
    ("other/client", "lan-client", false),
];

/// Whether `who` gets an answer to one ping of `ip` (busybox's, 2 s).
fn pings(lab: &Lab, who: &str, ip: &str) -> bool {
    let (code, _) = lab.exec(who, &["busybox", "ping", "-c", "1", "-W", "2", ip]);
    code == 0
}

/// (from, to, port, allowed)
const MATRIX: &[(&str, &str, u16, bool)] = &[
    ("default/client", "web", 8080, true),
    ("default/client", "web", 9090, false),
    ("other/client", "web", 8080, false),
    ("default/db", "web", 8080, false),
    ("default/web", "db", 5432, true),
    ("default/web", "db", 6000, true),
    ("other/client", "db", 5432, true),
    ("other/client", "db", 6000, false),
    ("default/client", "db", 5432, false),
    ("other/client", "lan-client", 8000, true),
    ("other/client", "lan-client-2", 8000, false),
    ("default/client", "lan-client", 8000, true),
    ("default/web", "other/client", 8080, true),
    // The corpus's policies, unchanged, over pods with the corpus's labels. Bitwarden: only
    // external-secrets may reach it; it may reach the world (the LAN), not the cluster.
    (
        "external-secrets/external-secrets",
        "external-secrets/bitwarden",
        8087,
        true,
    ),
    ("default/client", "external-secrets/bitwarden", 8087, false),
    ("external-secrets/bitwarden", "lan-client", 8000, true),
    ("external-secrets/bitwarden", "web", 8080, false),
    // The Forgejo runner: Forgejo on TCP 3000; its `internet` CIDR group is not in the corpus
    // (ResolvedRefs=False), so that rule allows nothing; default deny on ingress.
    ("default/forgejo-runner", "default/forgejo", 3000, true),
    ("default/forgejo-runner", "web", 8080, false),
    ("default/forgejo-runner", "lan-client", 8000, false),
    ("default/client", "default/forgejo-runner", 8080, false),
    ("default/client", "default/forgejo", 3000, true),
    // toServices: the Service's backends only.
    ("default/svc-client", "default/forgejo", 3000, true),
    ("default/svc-client", "default/client", 8080, false),
];

/// The corpus's policies, loaded as they are (the runner's has no namespace: `default`).
const CORPUS_POLICIES: &[(&str, &str)] = &[
    (
        "bitwarden.yaml",
        include_str!(
            "../../../../testdata/home-ops/kubernetes/apps/external-secrets/bitwarden/app/networkpolicy.yaml"
        ),
    ),
    (
        "forgejo-runner.yaml",
        include_str!(
            "../../../../testdata/home-ops/kubernetes/apps/dev/forgejo/runner/ciliumnetworkpolicy.yaml"
        ),
    ),
];

fn write(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).expect("write manifest");
    std::fs::rename(&tmp, dir.join(name)).expect("rename manifest");
}

/// Whether a TCP connection from `who` to `ip:port` is answered (curl; 2 s to connect).
fn reaches(lab: &Lab, who: &str, ip: &str, port: u16) -> bool {
    let (code, _) = lab.exec(
        who,
        &[
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "--connect-timeout",
            "2",
            "--max-time",
            "4",
            &format!("http://{ip}:{port}/"),
        ],
    );
    code == 0
}

/// Polls (bounded) until `who` reaching `ip:port` is `want`: policy edits reach the agents
/// through their own watch.
fn wait_reach(lab: &Lab, who: &str, ip: &str, port: u16, want: bool) {
    let start = Instant::now();
    while reaches(lab, who, ip, port) != want {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{who} -> {ip}:{port} never became {}",
            if want { "allowed" } else { "denied" }
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A keep-alive HTTP request on `conn`; whether an answer came.
fn ask(conn: &mut std::net::TcpStream) -> bool {
    crate::lab::try_request(conn).is_some()
}

/// The flows a node's Observer API holds (its last 1,000) that `filter` selects, one JSON
/// document a line.
fn node_flows(lab: &Lab, node_ip: &str, filter: &[&str]) -> Vec<serde_json::Value> {
    let server = format!("{node_ip}:4244");
    let mut args = vec![
        env!("CARGO_BIN_EXE_trellis"),
        "observe",
        "--server",
        &server,
        "--last",
        "1000",
        "-o",
        "json",
    ];
    args.extend_from_slice(filter);
    let (code, out) = lab.exec("client", &args);
    assert_eq!(code, 0, "{out}");
    out.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|mut v| v["flow"].take())
        .collect()
}

/// The DROPPED flows of a node.
fn dropped_flows(lab: &Lab, node_ip: &str) -> Vec<serde_json::Value> {
    node_flows(lab, node_ip, &["--verdict", "DROPPED"])
}

/// A listener in the lab's client namespace (outside the cluster), killed on drop.
struct LanServer(std::process::Child);

impl Drop for LanServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn lab_enforces_network_policy() {
    require_root();
    let name = format!("p{}", std::process::id());
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).expect("mkdir");
    write(&manifests, "apps.yaml", APPS);
    write(&manifests, "web.yaml", WEB_POLICY);
    write(&manifests, "policies.yaml", POLICIES);
    write(&manifests, "fqdn.yaml", FQDN_POLICY);
    write(&manifests, "records.yaml", &fqdn_records());
    for (name, text) in CORPUS_POLICIES {
        write(&manifests, name, text);
    }
    let state_dir = dir.path().join("state");
    // Answered addresses stay open for max(TTL, 3 s): the records' TTL is 1.
    let lab = Lab::up_with(
        &manifests,
        None,
        &name,
        &state_dir,
        &["--fqdn-min-ttl", &FQDN_MIN_TTL_S.to_string()],
    );

    let s = lab.state();
    let pod = |ns: &str, app: &str| -> (String, String) {
        s["pods"]
            .as_array()
            .expect("pods")
            .iter()
            .find(|p| p["plan"]["namespace"] == ns && p["plan"]["labels"]["app"] == app)
            .map(|p| {
                (
                    format!("{ns}/{}", p["plan"]["name"].as_str().expect("name")),
                    p["ip"].as_str().expect("ip").to_string(),
                )
            })
            .unwrap_or_else(|| panic!("pod {ns}/{app}: {s}"))
    };
    let who = |w: &str| -> String {
        let (ns, app) = w.split_once('/').expect("ns/app");
        pod(ns, app).0
    };
    let ip_of = |t: &str| -> String {
        match t {
            "lan-client" => "10.10.30.100".to_string(),
            "lan-client-2" => "10.10.30.200".to_string(),
            "web" | "db" => pod("default", t).1,
            other => {
                let (ns, app) = other.split_once('/').expect("ns/app");
                pod(ns, app).1
            }
        }
    };
    let pod_json = |ns: &str, app: &str| -> serde_json::Value {
        s["pods"]
            .as_array()
            .expect("pods")
            .iter()
            .find(|p| p["plan"]["namespace"] == ns && p["plan"]["labels"]["app"] == app)
            .cloned()
            .unwrap_or_else(|| panic!("pod {ns}/{app}: {s}"))
    };
    let pod_node_of = |ns: &str, app: &str| -> String {
        pod_json(ns, app)["plan"]["node"]
            .as_str()
            .expect("node")
            .into()
    };
    let pod_node = |app: &str| pod_node_of("default", app);
    let pod_netns = |ns: &str, app: &str| -> (String, String) {
        let p = pod_json(ns, app);
        (
            format!("{ns}/{}", p["plan"]["name"].as_str().expect("name")),
            p["netns"].as_str().expect("netns").to_string(),
        )
    };
    let node_json = |node: &str| -> serde_json::Value {
        s["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .find(|n| n["name"] == node)
            .cloned()
            .unwrap_or_else(|| panic!("node {node}: {s}"))
    };
    let node_ip_of =
        |node: &str| -> String { node_json(node)["lan_ip"].as_str().expect("lan ip").into() };
    let node_netns_of =
        |node: &str| -> String { node_json(node)["netns"].as_str().expect("netns").into() };
    let client_netns = lab.netns("client");
    // A second address outside the cluster, inside the `except` of other/client's CIDR rule.
    let added = std::process::Command::new("ip")
        .args([
            "-n",
            &client_netns,
            "addr",
            "add",
            "10.10.30.200/24",
            "dev",
            "eth0",
        ])
        .status()
        .expect("ip runs");
    assert!(added.success(), "adding 10.10.30.200 in {client_netns}");
    for i in 1..=FQDN_NAMES {
        let ok = std::process::Command::new("ip")
            .args(["-n", &client_netns, "addr", "add"])
            .arg(format!("10.10.30.{}/24", 200 + u32::from(i)))
            .args(["dev", "eth0"])
            .status()
            .expect("ip runs");
        assert!(ok.success());
    }
    // The first-connection test's addresses: the client answers the whole prefix, the
    // nodes route it to the client.
    let ok = std::process::Command::new("ip")
        .args([
            "-n",
            &client_netns,
            "route",
            "add",
            "local",
            FIRST_TRIES_NET,
            "dev",
            "lo",
        ])
        .status()
        .expect("ip runs");
    assert!(ok.success(), "local route in {client_netns}");
    for n in s["nodes"].as_array().expect("nodes") {
        let ok = std::process::Command::new("ip")
            .args(["-n", n["netns"].as_str().expect("netns")])
            .args(["route", "add", FIRST_TRIES_NET, "via", "10.10.30.100"])
            .status()
            .expect("ip runs");
        assert!(ok.success(), "route to {FIRST_TRIES_NET} in {n}");
    }
    let _server = LanServer(
        std::process::Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{client_netns}"))
            .args(["python3", "-m", "http.server", "8000", "--bind", "0.0.0.0"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 http.server in the client namespace"),
    );
    // The server is up when the unrestricted node reaches it.
    let node = s["nodes"][0]["name"].as_str().expect("node").to_string();
    wait_reach(&lab, &node, "10.10.30.100", 8000, true);

    let mut wrong = Vec::new();
    for (from, to, port, allowed) in MATRIX {
        let got = reaches(&lab, &who(from), &ip_of(to), *port);
        if got != *allowed {
            wrong.push(format!(
                "{from} -> {to}:{port}: {} where {} was expected",
                if got { "allowed" } else { "denied" },
                if *allowed { "allowed" } else { "denied" }
            ));
        }
    }
    for (from, to, answered) in PINGS {
        let got = pings(&lab, &who(from), &ip_of(to));
        if got != *answered {
            wrong.push(format!(
                "ping {from} -> {to}: {} where {} was expected",
                if got { "answered" } else { "dropped" },
                if *answered { "answered" } else { "dropped" }
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "connectivity matrix:\n{}",
        wrong.join("\n")
    );

    // The pod's own node reaches it on any port (Cilium's allow-localhost); another node is a
    // remote node, which the policy does not allow.
    let web_node = s["pods"]
        .as_array()
        .expect("pods")
        .iter()
        .find(|p| p["plan"]["labels"]["app"] == "web")
        .and_then(|p| p["plan"]["node"].as_str())
        .expect("web's node")
        .to_string();
    let other_node = s["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["name"].as_str())
        .find(|n| *n != web_node)
        .expect("another node")
        .to_string();
    assert!(
        reaches(&lab, &web_node, &ip_of("web"), 9090),
        "own node -> web:9090"
    );
    assert!(
        !reaches(&lab, &other_node, &ip_of("web"), 9090),
        "other node -> web:9090"
    );

    // The denied packets are flows on web's node: DROPPED with POLICY_DENIED, towards web.
    let web_node_ip = s["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["name"] == web_node.as_str())
        .and_then(|n| n["lan_ip"].as_str())
        .expect("web node ip")
        .to_string();
    let out = dropped_flows(&lab, &web_node_ip);
    let web_ip_text = ip_of("web");
    let denied = out
        .iter()
        .filter(|v| {
            v["drop_reason_desc"] == "POLICY_DENIED"
                && v["IP"]["destination"] == web_ip_text.as_str()
                && v["l4"]["TCP"]["destination_port"] == 9090
        })
        .count();
    assert!(
        denied > 0,
        "no POLICY_DENIED flow to web:9090 in:\n{out:#?}"
    );
    // default/client's ping of web was dropped as ICMPv4 echo request (type 8, code 0).
    let pinged = out.iter().any(|v| {
        v["drop_reason_desc"] == "POLICY_DENIED"
            && v["IP"]["destination"] == web_ip_text.as_str()
            && v["l4"]["ICMPv4"]["type"] == 8
    });
    assert!(
        pinged,
        "no POLICY_DENIED ICMPv4 echo flow to web in:\n{out:#?}"
    );
    // Those drops say the direction (web's ingress) and the client's identity.
    let described = out
        .iter()
        .filter(|v| v["IP"]["destination"] == web_ip_text.as_str())
        .any(|v| {
            v["traffic_direction"] == "INGRESS"
                && v["source"]["identity"].as_u64().is_some_and(|id| id >= 256)
        });
    assert!(
        described,
        "no INGRESS drop with the client's identity in:\n{out:#?}"
    );
    // Connections let through an enforced direction are policy verdicts (one per
    // connection), naming the policy that allowed them and how its entry matched: web's
    // NetworkPolicy on its named port is an L3-L4 match.
    let verdicts = node_flows(&lab, &web_node_ip, &["--type", "policy-verdict"]);
    let allowed = verdicts.iter().any(|v| {
        v["verdict"] == "FORWARDED"
            && v["IP"]["destination"] == web_ip_text.as_str()
            && v["l4"]["TCP"]["destination_port"] == 8080
            && v["traffic_direction"] == "INGRESS"
            && v["policy_match_type"] == 2
            && v["ingress_allowed_by"][0]["name"] == "web"
            && v["ingress_allowed_by"][0]["kind"] == "NetworkPolicy"
    });
    assert!(
        allowed,
        "no policy verdict allowing web:8080 by NetworkPolicy web in:\n{verdicts:#?}\nall: {:#?}",
        node_flows(&lab, &web_node_ip, &["--to-ip", &web_ip_text])
    );
    // A drop by a deny rule names its policy (db's ingressDeny); a default-deny drop none.
    let db_node_ip = node_ip_of(&pod_node("db"));
    let db_ip_text = ip_of("db");
    let db_drops = dropped_flows(&lab, &db_node_ip);
    assert!(
        db_drops.iter().any(|v| {
            v["IP"]["destination"] == db_ip_text.as_str()
                && v["ingress_denied_by"][0]["name"] == "db"
                && v["ingress_denied_by"][0]["kind"] == "CiliumNetworkPolicy"
        }),
        "no drop at db naming CiliumNetworkPolicy db in:\n{db_drops:#?}"
    );
    assert!(
        out.iter()
            .filter(|v| v["l4"]["TCP"]["destination_port"] == 9090)
            .all(|v| v.get("ingress_denied_by").is_none()),
        "a default-deny drop names no policy:\n{out:#?}"
    );

    // Spoofing: default/client sends from other/client's address (which db lets in on
    // 5432). Its veth drops that (INVALID_SOURCE_IP), so it never reaches db as other/client.
    let (spoofer, spoofer_netns) = pod_netns("default", "client");
    let stolen = ip_of("other/client");
    let add = std::process::Command::new("ip")
        .args(["-n", &spoofer_netns, "addr", "add"])
        .arg(format!("{stolen}/32"))
        .args(["dev", "eth0"])
        .status()
        .expect("ip runs");
    assert!(add.success(), "adding {stolen} in {spoofer}");
    let (code, _) = lab.exec(
        &spoofer,
        &[
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "--connect-timeout",
            "1",
            "--interface",
            &stolen,
            &format!("http://{}:5432/", ip_of("db")),
        ],
    );
    assert_ne!(code, 0, "a connection from a stolen address");
    let client_node_ip = node_ip_of(&pod_node_of("default", "client"));
    let spoofed = dropped_flows(&lab, &client_node_ip);
    assert!(
        spoofed.iter().any(|v| {
            v["drop_reason_desc"] == "INVALID_SOURCE_IP"
                && v["IP"]["source"] == stolen.as_str()
                && v["IP"]["destination"] == db_ip_text.as_str()
        }),
        "no INVALID_SOURCE_IP drop from {stolen} in:\n{spoofed:#?}"
    );
    let del = std::process::Command::new("ip")
        .args(["-n", &spoofer_netns, "addr", "del"])
        .arg(format!("{stolen}/32"))
        .args(["dev", "eth0"])
        .status()
        .expect("ip runs");
    assert!(del.success());
    // IPv6 never leaves a pod (policy is IPv4 only here): the node's end of the pod's veth,
    // which has a link-local address, gets no ping from it; the datapath counts the drops.
    let run = |args: &[&str]| -> String {
        let out = std::process::Command::new(args[0])
            .args(&args[1..])
            .output()
            .expect("runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let peer_index = run(&[
        "ip",
        "netns",
        "exec",
        &spoofer_netns,
        "cat",
        "/sys/class/net/eth0/iflink",
    ]);
    let client_node_netns = node_netns_of(&pod_node_of("default", "client"));
    let node_side = run(&[
        "ip",
        "-n",
        &client_node_netns,
        "-o",
        "-6",
        "addr",
        "show",
        "scope",
        "link",
    ]);
    let link_local = node_side
        .lines()
        .find(|l| l.starts_with(&format!("{}:", peer_index.trim())))
        .and_then(|l| l.split_whitespace().find(|w| w.starts_with("fe80:")))
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| {
            panic!("no link-local address on the pod's veth (ifindex {peer_index}): {node_side}")
        })
        .to_string();
    let (code, _) = lab.exec(
        &spoofer,
        &[
            "busybox",
            "ping",
            "-6",
            "-c",
            "1",
            "-W",
            "2",
            "-I",
            "eth0",
            &link_local,
        ],
    );
    assert_ne!(code, 0, "the node answered IPv6 from a pod ({link_local})");
    let pins = lab::cluster::datapath_pin_dir(&client_node_netns);
    let stats = datapath::Maps::open(&pins)
        .and_then(|m| m.stats())
        .expect("the client node's datapath counters");
    assert!(
        stats
            .iter()
            .any(|(name, n)| *name == "unsupported_l3" && *n > 0),
        "no IPv6 counted as dropped: {stats:?}"
    );

    // A keep-alive connection from default/client to web stays up through policy edits that
    // keep it allowed.
    let web_ip: std::net::Ipv4Addr = ip_of("web").parse().expect("ip");
    let client_pod_netns = {
        let (_, pod_name) = who("default/client")
            .split_once('/')
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .expect("name");
        let st = lab.state();
        st["pods"]
            .as_array()
            .expect("pods")
            .iter()
            .find(|p| p["plan"]["name"] == pod_name.as_str())
            .and_then(|p| p["netns"].as_str())
            .expect("client netns")
            .to_string()
    };
    let mut conn = crate::lab::connect_in(&client_pod_netns, SocketAddr::from((web_ip, 8080)));
    assert!(ask(&mut conn), "first request on the kept connection");
    for i in 0..6 {
        // Each edit opens or closes the admin port (9090) to the client, and keeps 8080 open.
        let open = i % 2 == 0;
        let ports = if open {
            "ports: [{port: http}, {port: admin}]"
        } else {
            "ports: [{port: http}]"
        };
        write(
            &manifests,
            "web.yaml",
            &WEB_POLICY.replace("ports: [{port: http}]", ports),
        );
        wait_reach(&lab, &who("default/client"), &ip_of("web"), 9090, open);
        assert!(ask(&mut conn), "kept connection after edit {i}");
    }
    // Churn: 100 edits back to back (the agents see many of them, debounced), each keeping
    // 8080 open to default/client: the kept connection and new connections keep working,
    // and other/client stays denied throughout.
    for i in 0..100u32 {
        let ports = format!("ports: [{{port: http}}, {{port: {}}}]", 20000 + i);
        write(
            &manifests,
            "web.yaml",
            &WEB_POLICY.replace("ports: [{port: http}]", &ports),
        );
        std::thread::sleep(Duration::from_millis(20));
        if i % 25 == 24 {
            assert!(ask(&mut conn), "kept connection during churn, edit {i}");
            assert!(
                reaches(&lab, &who("default/client"), &ip_of("web"), 8080),
                "new connection during churn, edit {i}"
            );
            assert!(
                !reaches(&lab, &who("other/client"), &ip_of("web"), 8080),
                "other/client during churn, edit {i}"
            );
        }
    }
    assert!(ask(&mut conn), "kept connection after the churn");
    // Taking the whole allow away: default/client is denied again, new connections and the kept
    // one alike (policy is checked on every packet, as Cilium does).
    write(
        &manifests,
        "web.yaml",
        &WEB_POLICY.replace("ports: [{port: http}]", "ports: [{port: 1}]"),
    );
    wait_reach(&lab, &who("default/client"), &ip_of("web"), 8080, false);
    assert!(
        !ask(&mut conn),
        "the kept connection is denied once its allow is gone"
    );

    // toFQDNs. trellis dns runs on the fqdn pod's node (its LAN address, as the cluster DNS),
    // telling that node's agent what it answers before the pod gets it.
    let (fqdn_pod, fqdn_node) = s["pods"]
        .as_array()
        .expect("pods")
        .iter()
        .find(|p| p["plan"]["labels"]["app"] == "fqdn")
        .map(|p| {
            (
                format!("fqdn/{}", p["plan"]["name"].as_str().expect("name")),
                p["plan"]["node"].as_str().expect("node").to_string(),
            )
        })
        .expect("fqdn pod");
    let node_state = s["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["name"] == fqdn_node.as_str())
        .cloned()
        .expect("fqdn node");
    let dns_ip = node_state["lan_ip"].as_str().expect("lan ip").to_string();
    let _dns = LanServer(
        std::process::Command::new("nsenter")
            .arg(format!(
                "--net=/var/run/netns/{}",
                node_state["netns"].as_str().expect("netns")
            ))
            .arg(env!("CARGO_BIN_EXE_trellis"))
            .args(["dns", "-f"])
            .arg(&manifests)
            .arg("-f")
            .arg(state_dir.join("cluster"))
            .args(["--listen", &format!("{dns_ip}:53"), "--policy-agents"])
            .arg(state_dir.join("fqdn"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("trellis dns starts"),
    );
    let dig = |name: &str| -> String {
        let (_, out) = lab.exec(
            &fqdn_pod,
            &[
                "dig",
                "+short",
                "+time=2",
                "+tries=1",
                &format!("@{dns_ip}"),
                name,
            ],
        );
        out.trim().to_string()
    };
    let start = Instant::now();
    while dig("a1.example.test") != "10.10.30.201" {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "trellis dns never answered"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // rules.dns: names outside *.example.test are REFUSED, over UDP and TCP, whether the
    // view holds them or not; the names it allows are answered.
    let status = |args: &[&str]| -> String {
        let mut cmd = vec!["dig", "+time=2", "+tries=1"];
        cmd.extend_from_slice(args);
        let (_, out) = lab.exec(&fqdn_pod, &cmd);
        out.lines()
            .find_map(|l| l.split("status: ").nth(1))
            .and_then(|r| r.split(',').next())
            .unwrap_or("no answer")
            .to_string()
    };
    let at = format!("@{dns_ip}");
    for (args, want) in [
        (vec![at.as_str(), "a1.example.test"], "NOERROR"),
        (vec![at.as_str(), "+tcp", "a1.example.test"], "NOERROR"),
        (vec![at.as_str(), "example.test", "SOA"], "NOERROR"),
        (vec![at.as_str(), "elsewhere.test"], "REFUSED"),
        (vec![at.as_str(), "+tcp", "elsewhere.test"], "REFUSED"),
        (vec![at.as_str(), "x.a1.example.test"], "REFUSED"),
    ] {
        assert_eq!(status(&args), want, "dig {args:?} from the fqdn pod");
    }
    // Asked for a1 above; the others not yet: closed until asked, open on the very first
    // connection after the answer (lookup and connection in one shell, back to back).
    assert!(
        reaches(&lab, &fqdn_pod, "10.10.30.201", 8000),
        "a1 after its lookup"
    );
    let mut first_tries = Vec::new();
    for i in 2..=FQDN_NAMES {
        let addr = format!("10.10.30.{}", 200 + u32::from(i));
        assert!(
            !reaches(&lab, &fqdn_pod, &addr, 8000),
            "{addr} before any lookup"
        );
        let script = format!(
            "dig +short +time=2 +tries=1 @{dns_ip} a{i}.example.test >/dev/null && \
             curl -sS -o /dev/null --connect-timeout 2 http://{addr}:8000/"
        );
        let (code, _) = lab.exec(&fqdn_pod, &["sh", "-c", &script]);
        first_tries.push((addr, code));
    }
    let failed: Vec<_> = first_tries.iter().filter(|(_, c)| *c != 0).collect();
    assert!(
        failed.is_empty(),
        "first connection after the lookup failed: {failed:?}"
    );
    // The same, FIRST_TRIES times, each a name never asked before and an address closed
    // until then (the first one checked), lookup and connection back to back in the pod.
    assert!(
        !reaches(&lab, &fqdn_pod, "10.10.40.1", 8000),
        "10.10.40.1 before its lookup"
    );
    let script = format!(
        "for i in $(seq 1 {FIRST_TRIES}); do \
           dig +short +time=2 +tries=1 @{dns_ip} b$i.example.test >/dev/null && \
           curl -sS -o /dev/null --connect-timeout 2 http://10.10.40.$i:8000/ || echo failed $i; \
         done"
    );
    let (code, out) = lab.exec(&fqdn_pod, &["sh", "-c", &script]);
    assert!(
        code == 0 && !out.contains("failed"),
        "first connections after {FIRST_TRIES} lookups: {out}"
    );
    // An address DNS never answered stays closed; the world rule of another pod does not
    // leak to this one.
    assert!(
        !reaches(&lab, &fqdn_pod, "10.10.30.200", 8000),
        "never answered"
    );
    // Other ports of an answered address stay closed (the rule names 8000), while the address
    // does listen there.
    let _other_port = LanServer(
        std::process::Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{client_netns}"))
            .args(["python3", "-m", "http.server", "8080", "--bind", "0.0.0.0"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("a second server in the client namespace"),
    );
    wait_reach(&lab, &node, "10.10.30.201", 8080, true);
    assert!(
        !reaches(&lab, &fqdn_pod, "10.10.30.201", 8080),
        "port not in the rule"
    );

    // Not asked again, an address closes once its time is up (TTL 1 s, at least 3 s).
    let addr = format!("10.10.30.{}", 200 + u32::from(FQDN_NAMES));
    wait_reach(&lab, &fqdn_pod, &addr, 8000, false);
    // Asked again, it opens again.
    let script = format!(
        "dig +short +time=2 +tries=1 @{dns_ip} a{FQDN_NAMES}.example.test >/dev/null && \
         curl -sS -o /dev/null --connect-timeout 2 http://{addr}:8000/"
    );
    assert_eq!(
        lab.exec(&fqdn_pod, &["sh", "-c", &script]).0,
        0,
        "asked again"
    );
}
