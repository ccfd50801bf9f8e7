//! The lab end to end, as root, in network namespaces this test creates (named
//! `trellis-t<pid>-…`) and removes again, also when an assertion fails: pod networking across
//! nodes, the eBPF service load balancer (ClusterIP, NodePort, LoadBalancer address, refusal
//! without endpoints), scaling under a live connection, agent restart, and `lab down`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn trellis_bin() -> &'static str {
    env!("CARGO_BIN_EXE_trellis")
}

pub(crate) fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the lab tests need root (network namespaces, eBPF): run them as root"
    );
}

/// A running lab; `lab down` on drop.
pub(crate) struct Lab {
    name: String,
    state_dir: PathBuf,
}

impl Lab {
    pub(crate) fn up(manifests: &Path, name: &str, state_dir: &Path) -> Lab {
        Lab::up_with_vars(manifests, None, name, state_dir)
    }

    pub(crate) fn up_with_vars(
        manifests: &Path,
        vars: Option<&Path>,
        name: &str,
        state_dir: &Path,
    ) -> Lab {
        Lab::up_with(manifests, vars, name, state_dir, &[])
    }

    /// `lab up` with more flags (`extra`).
    pub(crate) fn up_with(
        manifests: &Path,
        vars: Option<&Path>,
        name: &str,
        state_dir: &Path,
        extra: &[&str],
    ) -> Lab {
        let lab = Lab {
            name: name.to_string(),
            state_dir: state_dir.to_path_buf(),
        };
        let mut cmd = Command::new(trellis_bin());
        cmd.args(["lab", "up", "--nodes", "3", "--name", name, "--state-dir"])
            .arg(state_dir)
            .arg("-f")
            .arg(manifests);
        if let Some(v) = vars {
            cmd.arg("--vars").arg(v);
        }
        cmd.args(extra);
        let out = cmd.output().expect("trellis lab up runs");
        assert!(
            out.status.success(),
            "lab up failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        lab
    }

    fn cmd(&self, sub: &str) -> Command {
        let mut c = Command::new(trellis_bin());
        c.args(["lab", sub, "--name", &self.name, "--state-dir"])
            .arg(&self.state_dir);
        c
    }

    pub(crate) fn state(&self) -> serde_json::Value {
        let out = self
            .cmd("status")
            .arg("--json")
            .output()
            .expect("lab status runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status --json is JSON")
    }

    /// Runs a command in a lab namespace; (exit code, stdout).
    pub(crate) fn exec(&self, who: &str, argv: &[&str]) -> (i32, String) {
        let out = self
            .cmd("exec")
            .arg(who)
            .arg("--")
            .args(argv)
            .output()
            .expect("lab exec runs");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// curl from a lab namespace; the echo's JSON answer, or the curl exit code.
    pub(crate) fn curl(&self, who: &str, url: &str) -> Result<serde_json::Value, i32> {
        let (code, body) = self.exec(who, &["curl", "-sS", "--max-time", "5", url]);
        if code != 0 {
            return Err(code);
        }
        Ok(serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON from {url}: {body}")))
    }

    pub(crate) fn netns(&self, part: &str) -> String {
        format!("trellis-{}-{part}", self.name)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let out = self.cmd("down").output();
        if let Ok(o) = out
            && !o.status.success()
        {
            eprintln!("lab down: {}", String::from_utf8_lossy(&o.stderr));
        }
    }
}

/// Reads a child's stdout until it prints `ready` (true) or closes it (false).
fn says_ready(child: &mut std::process::Child) -> bool {
    BufReader::new(child.stdout.take().expect("stdout piped"))
        .lines()
        .map_while(Result::ok)
        .any(|l| l.trim() == "ready")
}

/// Connects from inside a namespace (the socket stays in it), from a thread that enters it.
pub(crate) fn connect_in(netns: &str, addr: SocketAddr) -> TcpStream {
    let path = format!("/var/run/netns/{netns}");
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).expect("netns file");
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect")
    })
    .join()
    .expect("connect thread")
}

/// One keep-alive HTTP/1.1 request on an open connection; the echo's `backend` (pod name).
fn request(conn: &mut TcpStream) -> String {
    let v = try_request(conn).expect("an answer on the kept connection");
    v["backend"].as_str().expect("backend").to_string()
}

/// One keep-alive HTTP/1.1 request on an open connection: the echo's JSON answer, or `None`
/// when none comes within 5 s or the connection is closed.
pub(crate) fn try_request(conn: &mut TcpStream) -> Option<serde_json::Value> {
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    conn.write_all(b"GET /hold HTTP/1.1\r\nHost: lab\r\n\r\n")
        .ok()?;
    let mut reader = BufReader::new(conn.try_clone().ok()?);
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let l = line.trim().to_ascii_lowercase();
        if let Some(v) = l.strip_prefix("content-length:") {
            len = v.trim().parse().ok()?;
        }
        if l.is_empty() {
            break;
        }
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).ok()?;
    serde_json::from_slice(&body).ok()
}

/// Waits (bounded) until the lab reports `n` ready pods.
fn wait_pods(lab: &Lab, n: usize) {
    let start = Instant::now();
    loop {
        let s = lab.state();
        let ready = s["pods"]
            .as_array()
            .map(|p| p.iter().filter(|p| p["ready"] == true).count());
        if ready == Some(n) && s["pods"].as_array().map(Vec::len) == Some(n) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "never reached {n} pods: {s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

const MANIFESTS: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo, namespace: default}
spec:
  replicas: REPLICAS
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      containers:
      - name: echo
        image: ghcr.io/mendhak/http-https-echo:31
        ports: [{name: http, containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: default}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: echo-np, namespace: default}
spec:
  type: NodePort
  selector: {app: echo}
  ports: [{port: 80, targetPort: 8080, nodePort: 30080}]
---
apiVersion: v1
kind: Service
metadata:
  name: echo-lb
  namespace: default
  annotations: {lbipam.cilium.io/ips: 10.10.30.50}
spec:
  type: LoadBalancer
  selector: {app: echo}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: sticky, namespace: default}
spec:
  selector: {app: echo}
  sessionAffinity: ClientIP
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: nobody, namespace: default}
spec:
  selector: {app: nothing-matches}
  ports: [{port: 80, targetPort: 8080}]
"#;

fn write_manifests(dir: &Path, replicas: u32) {
    let text = MANIFESTS.replace("REPLICAS", &replicas.to_string());
    let tmp = dir.join("apps.yaml.tmp");
    std::fs::write(&tmp, text).expect("write manifests");
    std::fs::rename(&tmp, dir.join("apps.yaml")).expect("rename manifests");
}

#[test]
fn lab_pods_services_scaling_agent_restart_and_down() {
    require_root();
    let name = format!("t{}", std::process::id());
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).expect("mkdir");
    write_manifests(&manifests, 3);
    let state_dir = dir.path().join("state");
    let lab = Lab::up(&manifests, &name, &state_dir);

    let s = lab.state();
    assert_eq!(s["nodes"].as_array().map(Vec::len), Some(3), "{s}");
    let pods: Vec<(String, String, String)> = s["pods"]
        .as_array()
        .expect("pods")
        .iter()
        .map(|p| {
            (
                p["plan"]["name"].as_str().expect("name").to_string(),
                p["plan"]["node"].as_str().expect("node").to_string(),
                p["ip"].as_str().expect("ip").to_string(),
            )
        })
        .collect();
    assert_eq!(pods.len(), 3, "{s}");
    let nodes: std::collections::BTreeSet<&str> = pods.iter().map(|p| p.1.as_str()).collect();
    assert_eq!(nodes.len(), 3, "pods spread over the nodes: {pods:?}");
    let service = |n: &str| -> serde_json::Value {
        s["services"]
            .as_array()
            .expect("services")
            .iter()
            .find(|r| r["name"] == n)
            .cloned()
            .unwrap_or_else(|| panic!("service {n} in status: {s}"))
    };
    let cluster_ip = service("echo")["cluster_ip"]
        .as_str()
        .expect("cluster ip")
        .to_string();
    assert!(
        cluster_ip.starts_with("10.9") || cluster_ip.starts_with("10.10"),
        "{cluster_ip}"
    );

    // Pod to pod: across nodes and on the same node (a pod to itself through its node).
    let (a, b) = (&pods[0], &pods[1]);
    let v = lab
        .curl(
            &format!("default/{}", a.0),
            &format!("http://{}:8080/x", b.2),
        )
        .expect("pod to pod");
    assert_eq!(v["backend"], b.0.as_str());
    assert_eq!(
        v["source"]
            .as_str()
            .map(|s| s.starts_with(&format!("{}:", a.2))),
        Some(true),
        "{v}"
    );
    // Node to pod.
    let v = lab
        .curl(&a.1, &format!("http://{}:8080/", b.2))
        .expect("node to pod");
    assert_eq!(v["backend"], b.0.as_str());

    // Pod to ClusterIP reaches backends on every node.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let v = lab
            .curl(
                &format!("default/{}", a.0),
                &format!("http://{cluster_ip}/"),
            )
            .expect("clusterip");
        seen.insert(v["backend"].as_str().expect("backend").to_string());
    }
    assert_eq!(
        seen.len(),
        3,
        "every backend answers through the ClusterIP: {seen:?}"
    );

    // The datapath reported those connections as flows: Hubble's API on the pod's node (the
    // agent serves it on the node's LAN address), read with `trellis observe` from the client.
    let lan_ip_of = |node: &str| -> String {
        s["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .find(|n| n["name"] == node)
            .expect("node")["lan_ip"]
            .as_str()
            .expect("ip")
            .to_string()
    };
    let server = format!("{}:4244", lan_ip_of(&a.1));
    // The agent drains the datapath's events every 100 ms (sooner when many wait): polled.
    let started = std::time::Instant::now();
    loop {
        let (code, out) = lab.exec(
            "client",
            &[
                trellis_bin(),
                "observe",
                "--server",
                &server,
                "--last",
                "200",
                "-o",
                "json",
            ],
        );
        assert_eq!(code, 0, "{out}");
        let translated = out
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| {
                v["flow"]["verdict"] == "TRANSLATED"
                    && v["flow"]["IP"]["destination"] == cluster_ip.as_str()
                    && v["flow"]["source"]["pod_name"] == a.0.as_str()
            })
            .count();
        if translated >= 40 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{translated} service flows from the datapath:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // sessionAffinity: ClientIP keeps one client on one backend across connections.
    let sticky = service("sticky")["cluster_ip"]
        .as_str()
        .expect("sticky ip")
        .to_string();
    let mut stuck = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let v = lab
            .curl(&format!("default/{}", a.0), &format!("http://{sticky}/"))
            .expect("sticky");
        stuck.insert(v["backend"].as_str().expect("backend").to_string());
    }
    assert_eq!(stuck.len(), 1, "affinity: {stuck:?}");

    // The LAN client to the NodePort on every node.
    for n in s["nodes"].as_array().expect("nodes") {
        let ip = n["lan_ip"].as_str().expect("lan ip");
        let v = lab
            .curl("client", &format!("http://{ip}:30080/np"))
            .expect("nodeport");
        assert_eq!(v["path"], "/np");
    }

    // A LoadBalancer address (routed to node-1 until L2 announcements exist): from the client
    // and from a pod.
    let (code, _) = lab.exec(
        "client",
        &["ip", "route", "add", "10.10.30.50/32", "via", "10.10.30.11"],
    );
    assert_eq!(code, 0);
    lab.curl("client", "http://10.10.30.50/lb")
        .expect("LB from client");
    lab.curl(&format!("default/{}", a.0), "http://10.10.30.50/lb")
        .expect("LB from pod");

    // Masquerade: a pod reaching a LAN host outside the native routing CIDR is seen there with
    // its node's address (bpf.masquerade).
    let mut lan_host = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", lab.netns("client")))
        .args([
            trellis_bin(),
            "lab",
            "echo",
            "--pod",
            "lan-host",
            "--ports",
            "9090",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("LAN host echo starts");
    assert!(says_ready(&mut lan_host), "LAN host echo did not start");
    let v = lab
        .curl(&format!("default/{}", a.0), "http://10.10.30.100:9090/masq")
        .expect("pod to LAN");
    let _ = lan_host.kill();
    let _ = lan_host.wait();
    assert_eq!(
        v["source"].as_str().and_then(|s| s.split(':').next()),
        Some(lan_ip_of(&a.1).as_str()),
        "{v}"
    );

    // A Service without endpoints is refused, not black-holed: curl fails to connect (7),
    // it does not time out (28).
    let nobody = service("nobody")["cluster_ip"]
        .as_str()
        .expect("nobody ip")
        .to_string();
    let err = lab
        .curl(&format!("default/{}", a.0), &format!("http://{nobody}/"))
        .expect_err("refused");
    assert_eq!(err, 7, "connection refused/unreachable, not a timeout");

    // A long-lived connection through the NodePort keeps its backend while the Deployment
    // scales up and down (the original pods survive the scale-down).
    let mut conn = connect_in(
        &lab.netns("client"),
        "10.10.30.11:30080".parse().expect("addr"),
    );
    let first = request(&mut conn);
    write_manifests(&manifests, 5);
    wait_pods(&lab, 5);
    assert_eq!(request(&mut conn), first, "scale-up moved the connection");
    write_manifests(&manifests, 3);
    wait_pods(&lab, 3);
    assert_eq!(request(&mut conn), first, "scale-down moved the connection");

    // Restart node-1's agent: pinned maps keep the connection on its backend.
    let s = lab.state();
    let pid = s["nodes"][0]["agent_pid"].as_u64().expect("agent pid") as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill agent");
    let config = state_dir.join("agent-node-1.json");
    let mut agent = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.netns("node-1"),
            trellis_bin(),
            "agent",
            "--config",
        ])
        .arg(&config)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("agent restarts");
    assert!(
        says_ready(&mut agent),
        "the restarted agent never said ready"
    );
    assert_eq!(
        request(&mut conn),
        first,
        "agent restart moved the connection"
    );
    let _ = agent.kill();
    let _ = agent.wait();

    // Down removes every namespace and pin.
    drop(conn);
    let prefix = format!("trellis-{name}-");
    drop(lab);
    let left: Vec<String> = std::fs::read_dir("/var/run/netns")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    let pins: Vec<String> = std::fs::read_dir("/sys/fs/bpf/trellis")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(pins.is_empty(), "pins left behind: {pins:?}");
}

/// A pod that joins all four of the corpus's Multus networks (unchanged NADs from
/// `testdata/home-ops`): IoT, No-Internet and Trust with their static addresses and `sbr`, VPN
/// with an address from the annotation. Each network's device answers HTTP from the pod's own
/// address on it; the IoT device reaches the pod's echo on its IoT address; the cluster's ranges
/// stay on eth0; the Pod object and `lab status` carry the network-status.
#[test]
fn lab_pod_joins_the_corpus_multus_networks() {
    require_root();
    let name = format!("m{}", std::process::id());
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests = dir.path().join("manifests");
    let nads = manifests.join("multus");
    std::fs::create_dir_all(&nads).expect("mkdir");
    let corpus = crate::repo().join("testdata/home-ops/kubernetes/apps/network/multus/config");
    for f in std::fs::read_dir(&corpus).expect("corpus NADs") {
        let f = f.expect("entry").path();
        std::fs::copy(&f, nads.join(f.file_name().expect("name"))).expect("copy NAD");
    }
    // The corpus's kustomization leaves the namespace to its parent, as here.
    std::fs::write(
        manifests.join("kustomization.yaml"),
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
         namespace: network\nresources: [./multus]\n",
    )
    .expect("write kustomization");
    let apps = dir.path().join("apps");
    std::fs::create_dir_all(&apps).expect("mkdir");
    std::fs::write(
        apps.join("ha.yaml"),
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: ha, namespace: home}
spec:
  replicas: 1
  selector: {matchLabels: {app: ha}}
  template:
    metadata:
      labels: {app: ha}
      annotations:
        k8s.v1.cni.cncf.io/networks: |
          [{"name": "multus-iot", "namespace": "network"},
           {"name": "multus-not", "namespace": "network", "interface": "noinet"},
           {"name": "multus-trust", "namespace": "network"},
           {"name": "vpn", "namespace": "network", "ips": ["10.10.31.50/24"]}]
    spec:
      containers:
      - name: app
        image: ghcr.io/home-operations/home-assistant:2025.11.3
        ports: [{name: http, containerPort: 8123}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: broken, namespace: home}
spec:
  replicas: 1
  selector: {matchLabels: {app: broken}}
  template:
    metadata:
      labels: {app: broken}
      annotations: {k8s.v1.cni.cncf.io/networks: network/nope}
    spec:
      containers: [{name: app, image: x, ports: [{containerPort: 80}]}]
"#,
    )
    .expect("write deployment");
    // Both trees as one: a root kustomization over the two.
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).expect("mkdir");
    std::fs::rename(&manifests, root.join("network")).expect("move");
    std::fs::rename(&apps, root.join("apps")).expect("move");
    std::fs::write(
        root.join("kustomization.yaml"),
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
         resources: [./network, ./apps/ha.yaml]\n",
    )
    .expect("write root");
    let lab = Lab::up(&root, &name, &dir.path().join("state"));
    // A pod whose attachment names no NAD is listed with why; the other one starts.
    let start = Instant::now();
    let state = loop {
        let s = lab.state();
        let pods = s["pods"].as_array().cloned().unwrap_or_default();
        if pods.len() == 2 && pods.iter().any(|p| p["ready"] == true) {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{s}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let pods = state["pods"].as_array().expect("pods");
    let broken = pods
        .iter()
        .find(|p| p["plan"]["namespace"] == "home" && p["ready"] == false)
        .expect("the broken pod is listed");
    assert!(
        broken["error"].as_str().is_some_and(|e| e
            .contains("cannot find a network-attachment-definition (nope) in namespace (network)")),
        "{broken}"
    );
    let pod = pods
        .iter()
        .find(|p| p["ready"] == true)
        .expect("the ha pod");
    let pod_name = pod["plan"]["name"].as_str().expect("pod name").to_string();
    let status = pod["network_status"].as_array().expect("network_status");
    let names: Vec<(&str, &str)> = status
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or_default(),
                s["interface"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("trellis", "eth0"),
            ("network/multus-iot", "net1"),
            ("network/multus-not", "noinet"),
            ("network/multus-trust", "net3"),
            ("network/vpn", "net4"),
        ],
        "{pod}"
    );
    assert_eq!(status[4]["ips"], serde_json::json!(["10.10.31.50"]));

    // Each device answers from the pod's address on its network (sbr's tables route them),
    // over the one trunk: a capture of what the nodes send into it shows each network's
    // 802.1Q tag.
    let mut cap = crate::capture::Capture::start(
        &format!("/var/run/netns/{}", lab.netns("trunk")),
        &["n1", "n2", "n3"],
        "inbound",
        &["vlan.id", "ip.src"],
    );
    let curl_from = |src: &str, device: &str| {
        lab.exec(
            &pod_name,
            &[
                "curl",
                "-sS",
                "--max-time",
                "5",
                "--interface",
                src,
                &format!("http://{device}/from-{src}"),
            ],
        )
    };
    // dumpcap may still be opening the three ports when it says it started: the IoT device
    // is asked until the capture shows a frame (bounded), then every network is.
    for _ in 0..50 {
        curl_from("10.10.33.254", "10.10.33.1");
        if cap.wait_for(Duration::from_millis(200), |_| true) {
            break;
        }
    }
    for (src, device) in [
        ("10.10.33.254", "10.10.33.1"),
        ("10.10.32.254", "10.10.32.1"),
        ("10.10.10.254", "10.10.10.1"),
        ("10.10.31.50", "10.10.31.1"),
    ] {
        let (code, body) = curl_from(src, device);
        assert_eq!(code, 0, "{src} -> {device}: {body}");
        assert!(body.contains(&format!("from-{src}")), "{body}");
    }
    let tagged = [
        ("33", "10.10.33.254"),
        ("32", "10.10.32.254"),
        ("10", "10.10.10.254"),
        ("31", "10.10.31.50"),
    ];
    for (vid, src) in tagged {
        let frame = format!("{vid}\t{src}");
        cap.wait_for(Duration::from_secs(20), |l| l == frame);
    }
    let (seen, said) = cap.stop();
    for (vid, src) in tagged {
        let frame = format!("{vid}\t{src}");
        assert!(
            seen.contains(&frame),
            "no frame from {src} tagged {vid} on the trunk:\n{}\ntshark: {said}",
            seen.join("\n")
        );
    }
    let (_, rules) = lab.exec(&pod_name, &["ip", "rule"]);
    assert!(rules.contains("from 10.10.33.254 lookup 100"), "{rules}");
    // The IoT device reaches the pod's own service on the pod's IoT address.
    let (code, body) = lab.exec(
        "iot",
        &[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "http://10.10.33.254:8123/",
        ],
    );
    assert_eq!(code, 0, "iot -> pod: {body}");
    // Cluster ranges and the default stay on the cluster network; the VPN NAD's routes (the
    // public ranges) go to the VPN router.
    for (dst, dev) in [
        ("10.96.0.10", "dev eth0"),
        ("10.69.2.5", "dev eth0"),
        ("10.11.0.1", "dev eth0"),
        ("1.1.1.1", "via 10.10.31.1 dev net4"),
    ] {
        let (_, route) = lab.exec(&pod_name, &["ip", "route", "get", dst]);
        assert!(route.contains(dev), "{dst}: {route}");
    }

    let pods = std::fs::read_to_string(dir.path().join("state/cluster/pods.yaml"))
        .expect("published pods");
    assert!(
        pods.contains("k8s.v1.cni.cncf.io/network-status") && pods.contains("10.10.33.254"),
        "{pods}"
    );
    let out = Command::new(trellis_bin())
        .args(["lab", "status", "--name", &name, "--state-dir"])
        .arg(dir.path().join("state"))
        .output()
        .expect("lab status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("net1")
            && text.contains("network/multus-iot")
            && text.contains("10.10.33.254"),
        "{text}"
    );
    assert!(text.contains("not started: "), "{text}");
}

/// The lab on a 3-member etcd on its LAN (`lab up --state etcd`): every agent registers its
/// node and claims its pod CIDR there; the agents serve the generation the supervisor
/// published there and the assignments document they keep there; with one member killed the
/// cluster still answers and a manifest change still reaches every agent; with two killed (no
/// quorum) the agents say the backend is unavailable and the datapath keeps forwarding with
/// its maps.
#[test]
fn lab_runs_on_etcd_and_keeps_forwarding_without_quorum() {
    require_root();
    let (_dir, manifests, state_dir, lab) = lab_with_state("e", "etcd");
    let s = lab.state();
    let members: Vec<(String, u32)> = s["etcd"]
        .as_array()
        .expect("etcd members")
        .iter()
        .map(|m| {
            (
                m["client"].as_str().expect("client").to_string(),
                m["pid"].as_u64().expect("pid") as u32,
            )
        })
        .collect();
    assert_eq!(members.len(), 3, "{s}");
    let endpoints = members
        .iter()
        .map(|m| m.0.clone())
        .collect::<Vec<_>>()
        .join(",");
    let etcdctl = |args: &[&str]| {
        let mut argv = vec!["env", "ETCDCTL_API=3", "etcdctl", "--endpoints", &endpoints];
        argv.extend(["--command-timeout", "3s"]);
        argv.extend(args);
        lab.exec("node-1", &argv)
    };
    // Every node registered on its lease, every pod CIDR claimed by its node.
    let want = |keys: &str| {
        (1..=3).all(|i| keys.contains(&format!("/trellis/v1/nodes/node-{i}")))
            && keys.matches("/trellis/v1/podcidr/10.69.").count() == 3
    };
    let start = Instant::now();
    let keys = loop {
        let (_, keys) = etcdctl(&["get", "--prefix", "/trellis/v1/", "--keys-only"]);
        if want(&keys) {
            break keys;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "registrations missing:\n{keys}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let (_, owner) = etcdctl(&[
        "get",
        "--print-value-only",
        "/trellis/v1/podcidr/10.69.1.0_24",
    ]);
    assert_eq!(owner.trim(), "node-1", "{keys}");
    // The same through `trellis state ls`.
    let state = format!("etcd://{endpoints}");
    let (code, listed) = lab.exec(
        "node-1",
        &[
            env!("CARGO_BIN_EXE_trellis"),
            "state",
            "--state",
            &state,
            "ls",
        ],
    );
    assert_eq!(code, 0, "{listed}");
    assert!(
        listed.contains("nodes/node-2")
            && listed.contains("podcidr/10.69.1.0_24")
            && listed.contains(" node-1"),
        "{listed}"
    );
    // Services as on the embedded state.
    lab.curl("client", "http://10.10.30.11:30080/")
        .expect("the NodePort answers");

    let get = |key: &str| state_get(&lab, &state, key);
    let published = serves_from_shared_state(&lab, &state_dir, &get);

    let kill = |pid: u32| {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    };
    // One member down: the cluster still answers (after an election, when the member was
    // the leader; bounded).
    kill(members[2].1);
    let start = Instant::now();
    while etcdctl(&["put", "/probe/one-down", "1"]).0 != 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no write with one member down in 30 s"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // With one member dead the lab runs on: a manifest change is published as a new
    // generation, assigned and served by every agent.
    a_change_reaches_every_agent(&lab, &manifests, &get, published);
    // Two down: no quorum. The agents say so; the datapath keeps forwarding.
    kill(members[1].1);
    let (code, _) = etcdctl(&["put", "/probe/two-down", "1"]);
    assert_ne!(code, 0, "a write without quorum");
    let log = state_dir.join("logs/agent-node-1.log");
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("state backend unavailable") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "the agent never said the backend is unavailable:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    for _ in 0..5 {
        lab.curl("client", "http://10.10.30.12:30080/")
            .expect("forwarding without the state backend");
    }
}

/// A lab of two echo replicas on shared state (`--state file` or `etcd`), its name tagged:
/// the temporary directory, the manifests directory, the state directory, the lab.
fn lab_with_state(tag: &str, state: &str) -> (tempfile::TempDir, PathBuf, PathBuf, Lab) {
    let name = format!("{tag}{}", std::process::id());
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).expect("mkdir");
    write_manifests(&manifests, 2);
    let state_dir = dir.path().join("state");
    let lab = Lab::up_with(&manifests, None, &name, &state_dir, &["--state", state]);
    (dir, manifests, state_dir, lab)
}

/// A key's value in the backend `state`, read with `trellis state get` on node-1.
fn state_get(lab: &Lab, state: &str, key: &str) -> String {
    let (code, value) = lab.exec(
        "node-1",
        &[trellis_bin(), "state", "--state", state, "get", key],
    );
    assert_eq!(code, 0, "{key}: {value}");
    value
}

/// What a lab on shared state (`--state file` or `etcd`) shows: no assignments file on this
/// machine; agents on `source: state` with no manifest paths; the assignments document at the
/// published generation, its cluster IP the one the lab lists, reached from a pod through
/// every node's agent. `get` reads a key of the backend. Returns the published generation.
fn serves_from_shared_state(lab: &Lab, state_dir: &Path, get: &dyn Fn(&str) -> String) -> u64 {
    assert!(
        !state_dir.join("assignments.json").exists(),
        "no assignments file with shared state"
    );
    let conf: serde_json::Value = serde_json::from_slice(
        &std::fs::read(state_dir.join("agent-node-1.json")).expect("agent config"),
    )
    .expect("json");
    assert_eq!(conf["source"], "state", "{conf}");
    assert_eq!(conf["manifests"], serde_json::json!([]), "{conf}");
    assert!(conf["assignments"].is_null(), "{conf}");
    let head: serde_json::Value =
        serde_json::from_str(get("manifests/current").trim()).expect("a manifests head");
    let doc: serde_json::Value =
        serde_json::from_str(get("assignments").trim()).expect("an assignments document");
    let published = head["generation"].as_u64().expect("a generation");
    assert_eq!(doc["generation"].as_u64(), Some(published), "{doc}\n{head}");
    let cluster_ip = doc["assignments"]["services"]["default/echo"]["cluster_ip"]
        .as_str()
        .unwrap_or_else(|| panic!("echo's cluster IP in {doc}"))
        .to_string();
    let s = lab.state();
    let listed = s["services"]
        .as_array()
        .expect("services")
        .iter()
        .find(|r| r["name"] == "echo")
        .map(|r| r["cluster_ip"].clone());
    assert_eq!(listed, Some(serde_json::json!(cluster_ip)), "{s}");
    let pods = s["pods"].as_array().map_or(0, Vec::len);
    assert_eq!(cluster_backends(lab, pods).len(), pods, "{s}");
    published
}

/// The backends a pod reaches through echo's cluster IP (until `want` answered, bounded).
fn cluster_backends(lab: &Lab, want: usize) -> std::collections::BTreeSet<String> {
    let s = lab.state();
    let cluster_ip = s["services"]
        .as_array()
        .expect("services")
        .iter()
        .find(|r| r["name"] == "echo")
        .and_then(|r| r["cluster_ip"].as_str())
        .expect("echo's cluster IP")
        .to_string();
    let pod = format!(
        "default/{}",
        s["pods"][0]["plan"]["name"].as_str().expect("a pod")
    );
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..60 {
        let v = lab
            .curl(&pod, &format!("http://{cluster_ip}/"))
            .expect("the cluster IP the shared document holds");
        seen.insert(v["backend"].as_str().expect("backend").to_string());
        if seen.len() == want {
            break;
        }
    }
    seen
}

/// A manifest change (a third replica) is published as a newer generation than `published`
/// and reaches every agent.
fn a_change_reaches_every_agent(
    lab: &Lab,
    manifests: &Path,
    get: &dyn Fn(&str) -> String,
    published: u64,
) {
    write_manifests(manifests, 3);
    wait_pods(lab, 3);
    assert_eq!(
        cluster_backends(lab, 3).len(),
        3,
        "the third pod through every agent"
    );
    let head: serde_json::Value =
        serde_json::from_str(get("manifests/current").trim()).expect("a manifests head");
    assert!(
        head["generation"].as_u64().expect("a generation") > published,
        "{head} after generation {published}"
    );
}

/// The lab on the state seam's file backend (`lab up --state file`): the same as on etcd, on
/// one machine: registrations and pod CIDRs, the published generation, the agents' shared
/// assignments, a manifest change.
#[test]
fn lab_runs_on_the_file_backend() {
    require_root();
    let (_dir, manifests, state_dir, lab) = lab_with_state("f", "file");
    let s = lab.state();
    let state = s["shared"].as_str().expect("shared state").to_string();
    assert!(state.starts_with("file:///"), "{s}");
    let ls = || {
        let (code, out) = lab.exec("node-1", &[trellis_bin(), "state", "--state", &state, "ls"]);
        assert_eq!(code, 0, "{out}");
        out
    };
    let start = Instant::now();
    loop {
        let listed = ls();
        let ok = (1..=3).all(|i| listed.contains(&format!("nodes/node-{i}")))
            && listed.matches("podcidr/10.69.").count() == 3;
        if ok {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "registrations missing:\n{listed}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    lab.curl("client", "http://10.10.30.11:30080/")
        .expect("the NodePort answers");
    let get = |key: &str| state_get(&lab, &state, key);
    let published = serves_from_shared_state(&lab, &state_dir, &get);
    a_change_reaches_every_agent(&lab, &manifests, &get, published);
}
