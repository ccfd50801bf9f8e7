//! L2 announcements in the lab, as root: the LAN client's arping sees exactly one MAC for a
//! LoadBalancer address; killing the holder's agent, and separately taking the holder's LAN
//! link down, moves the address to another node (tshark on the LAN bridge sees the new
//! holder's gratuitous ARP), the client's next connections succeed, and again exactly one MAC,
//! the new holder's, answers ARP. The failover times (until the new holder serves, and the
//! longest gap a client probing all along saw) are printed as benchmark figures beside the
//! bound the lease settings give, not asserted (speed lives in benchmarks).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fabric::l2::{LEASE_DURATION, RENEW};

use super::lab::Lab;

const MANIFESTS: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: web, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: solo, namespace: default, labels: {app: solo}}
spec:
  nodeName: node-3
  containers: [{name: solo, image: solo, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata:
  name: solo
  namespace: default
  labels: {l2: node-1}
  annotations: {lbipam.cilium.io/ips: 10.10.30.26}
spec:
  type: LoadBalancer
  selector: {app: solo}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: cilium.io/v2alpha1
kind: CiliumL2AnnouncementPolicy
metadata: {name: node-1-only}
spec:
  loadBalancerIPs: true
  serviceSelector:
    matchLabels: {l2: node-1}
  nodeSelector:
    matchLabels: {kubernetes.io/hostname: node-1}
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
  labels: {l2: any}
  annotations: {lbipam.cilium.io/ips: 10.10.30.25}
spec:
  type: LoadBalancer
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: cilium.io/v2
kind: CiliumLoadBalancerIPPool
metadata: {name: pool}
spec:
  blocks: [{start: 10.10.30.20, stop: 10.10.30.40}]
---
apiVersion: cilium.io/v2alpha1
kind: CiliumL2AnnouncementPolicy
metadata: {name: policy}
spec:
  loadBalancerIPs: true
  serviceSelector:
    matchLabels: {l2: any}
  interfaces: ["^eth.*"]
  nodeSelector:
    matchLabels: {kubernetes.io/os: linux}
"#;

const VIP: &str = "10.10.30.25";

/// The MACs that answer ARP for the VIP from the client (three probes).
fn arp_macs(lab: &Lab) -> std::collections::BTreeSet<String> {
    let (_, out) = lab.exec("client", &["arping", "-c", "3", "-i", "eth0", VIP]);
    out.lines()
        .filter_map(|l| l.split(" from ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The node (name) whose LAN interface holds the VIP now, if exactly one does.
fn holder(lab: &Lab, nodes: usize) -> Option<String> {
    let holders: Vec<String> = (1..=nodes)
        .map(|i| format!("node-{i}"))
        .filter(|n| {
            let (_, out) = lab.exec(n, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
            out.contains(&format!("{VIP}/32"))
        })
        .collect();
    (holders.len() == 1).then(|| holders[0].clone())
}

/// The one node other than `old` whose LAN interface holds the VIP now, if exactly one does
/// (`old` may still hold it until its kernel lifetime runs out, or on a link that is down:
/// neither answers the client).
fn new_holder(lab: &Lab, old: &str) -> Option<String> {
    let holders: Vec<String> = (1..=3)
        .map(|i| format!("node-{i}"))
        .filter(|n| n != old)
        .filter(|n| {
            let (_, out) = lab.exec(n, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
            out.contains(&format!("{VIP}/32"))
        })
        .collect();
    (holders.len() == 1).then(|| holders[0].clone())
}

fn mac_of(lab: &Lab, node: &str) -> String {
    let (_, link) = lab.exec(node, &["ip", "-o", "link", "show", "dev", "eth0"]);
    link.split("link/ether ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or("")
        .to_string()
}

/// Waits (bounded) for another node than `old` to hold the VIP and for the client to reach it;
/// returns the new holder and the time it took since `since`.
fn wait_failover(lab: &Lab, old: &str, since: Instant) -> (String, Duration) {
    loop {
        assert!(
            since.elapsed() < Duration::from_secs(60),
            "no failover from {old} in 60 s"
        );
        // A short timeout per probe: one probe still sent to the old holder must not hide
        // the moment the new one answers.
        if let Some(h) = new_holder(lab, old)
            && lab
                .exec(
                    "client",
                    &["curl", "-sf", "-m", "0.3", &format!("http://{VIP}/after")],
                )
                .0
                == 0
        {
            return (h, since.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The longest a failover can take by the lease settings: the failed holder renewed at most
/// [`RENEW`] before it failed, its lease runs out [`LEASE_DURATION`] after that renewal, and
/// the other nodes look at the lease every [`RENEW`].
fn failover_bound() -> Duration {
    LEASE_DURATION + RENEW
}

/// A LAN client curling the VIP over and over (each probe at most 200 ms), from `start` until
/// dropped, keeping the moments its probes succeeded.
struct Prober {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<Instant>>>,
}

impl Prober {
    fn start(lab: &Lab) -> Prober {
        let netns = format!("--net=/var/run/netns/{}", lab.netns("client"));
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut ok = Vec::new();
            // Bounded: the failovers it watches are (30 s each), and it is stopped after them.
            for _ in 0..20_000 {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let probe = Command::new("nsenter")
                    .arg(&netns)
                    .args(["curl", "-sf", "-o", "/dev/null", "-m", "0.2"])
                    .arg(format!("http://{VIP}/probe"))
                    .stderr(Stdio::null())
                    .status();
                if probe.is_ok_and(|p| p.success()) {
                    ok.push(Instant::now());
                }
            }
            ok
        });
        Prober {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops probing; the longest time the client went without an answer around `failed`:
    /// from the last successful probe before it (or `failed`) to the next one, over every
    /// success after it.
    fn longest_gap(mut self, failed: Instant) -> Duration {
        self.stop.store(true, Ordering::Relaxed);
        let ok = self
            .thread
            .take()
            .map(|t| t.join().expect("prober"))
            .unwrap_or_default();
        let start = ok
            .iter()
            .copied()
            .filter(|t| *t <= failed)
            .max()
            .unwrap_or(failed);
        let after: Vec<Instant> = ok.into_iter().filter(|t| *t > failed).collect();
        std::iter::once(start)
            .chain(after.iter().copied())
            .zip(after.iter().copied())
            .map(|(a, b)| b - a)
            .max()
            .unwrap_or_default()
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Prints the figures of one failover, in the shape of `docs/benchmarks.md`.
fn report(what: &str, took: Duration, gap: Duration) {
    eprintln!(
        "bench l2 failover ({what}): new holder serving after {:.2} s, client gap {:.2} s; \
         bound from the lease settings {:.2} s (LEASE_DURATION {:?} + RENEW {:?})",
        took.as_secs_f64(),
        gap.as_secs_f64(),
        failover_bound().as_secs_f64(),
        LEASE_DURATION,
        RENEW
    );
}

/// Waits (bounded) until exactly one MAC answers ARP for the VIP (the old holder's address
/// may live on until its kernel lifetime runs out), and checks it is `holder`'s.
fn one_mac_answers(lab: &Lab, holder: &str) {
    let start = Instant::now();
    let macs = loop {
        let macs = arp_macs(lab);
        if macs.len() == 1 {
            break macs;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "two nodes keep answering: {macs:?}"
        );
    };
    let mac = mac_of(lab, holder);
    assert!(macs.contains(&mac), "{macs:?} answer, not {holder}'s {mac}");
}

/// tshark on the LAN bridge, printing ARP sender MAC, sender IP and target IP per frame.
fn capture_arp(lab: &Lab) -> crate::capture::Capture {
    crate::capture::Capture::start(
        &format!("/var/run/netns/{}", lab.netns("lan")),
        &["br0"],
        "arp",
        &["arp.src.hw_mac", "arp.src.proto_ipv4", "arp.dst.proto_ipv4"],
    )
}

/// The sender of a gratuitous ARP for the VIP, from a frame's line.
fn gratuitous(line: &str) -> Option<String> {
    let f: Vec<&str> = line.split('\t').collect();
    (f.len() == 3 && f[1] == VIP && f[2] == VIP).then(|| f[0].to_string())
}

/// Waits (bounded) for a gratuitous ARP for the VIP from `mac`; stops the capture; the
/// senders of every gratuitous ARP it saw.
fn saw_gratuitous_arp(mut capture: crate::capture::Capture, mac: &str) -> Vec<String> {
    capture.wait_for(Duration::from_secs(20), |l| {
        gratuitous(l).as_deref() == Some(mac)
    });
    let (lines, _) = capture.stop();
    lines.iter().filter_map(|l| gratuitous(l)).collect()
}

#[test]
fn one_node_answers_arp_and_another_takes_over_when_the_holder_fails() {
    failover("a", &[]);
}

/// The same with the leases in the lab's 3-member etcd (`lab up --state etcd`): a lease is a
/// key on an etcd lease, so the failover waits for etcd's lease to run out (its minimum TTL,
/// 1.5 election timeouts: 4.5 s in the lab, longer than the embedded store's 1 s).
#[test]
fn l2_failover_with_the_leases_in_etcd() {
    failover("b", &["--state", "etcd"]);
}

/// The same with the leases in the state seam's file backend (`lab up --state file`).
#[test]
fn l2_failover_with_the_leases_in_the_file_backend() {
    failover("c", &["--state", "file"]);
}

fn failover(tag: &str, extra: &[&str]) {
    super::lab::require_root();
    let name = format!("{tag}{}", std::process::id());
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).expect("mkdir");
    std::fs::write(manifests.join("lb.yaml"), MANIFESTS).expect("manifests");
    let lab = Lab::up_with(&manifests, None, &name, &dir.path().join("state"), extra);

    // Exactly one MAC answers for the address, and it is the holder's.
    let first = (0..100)
        .find_map(|_| {
            let h = holder(&lab, 3);
            if h.is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
            h
        })
        .expect("a node announces the address");
    let macs = arp_macs(&lab);
    assert_eq!(macs.len(), 1, "{macs:?}");
    assert!(macs.contains(&mac_of(&lab, &first)), "{macs:?} vs {first}");
    lab.curl("client", &format!("http://{VIP}/"))
        .expect("the LB address answers");

    // DSR: node-1 announces 10.10.30.26 but its only backend runs on node-3. Requests enter
    // node-1 and are tunnelled to node-3; the replies leave node-3 with the service address, so
    // a capture on node-1 sees none of them while the client gets every answer.
    let dsr_vip = "10.10.30.26";
    let start = Instant::now();
    while !lab
        .exec("node-1", &["ip", "-4", "-o", "addr", "show", "dev", "eth0"])
        .1
        .contains(dsr_vip)
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "node-1 never announced {dsr_vip}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let replies_on = |node: &str| {
        Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", lab.netns(node)))
            .args([
                "tshark",
                "-l",
                "-n",
                "-i",
                "eth0",
                "-f",
                &format!("tcp and src host {dsr_vip}"),
            ])
            // A fixed capture time, then tshark exits by itself having printed every packet.
            .args(["-a", "duration:6", "-T", "fields", "-e", "ip.src"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tshark")
    };
    let wait_capturing = |c: &mut std::process::Child| {
        let mut lines = BufReader::new(c.stderr.take().expect("stderr")).lines();
        assert!(lines.any(|l| l.map(|l| l.contains("Capturing on")).unwrap_or(false)));
        std::thread::spawn(move || for _ in lines {});
    };
    let mut on_receiver = replies_on("node-1");
    let mut on_backend = replies_on("node-3");
    wait_capturing(&mut on_receiver);
    wait_capturing(&mut on_backend);
    for _ in 0..5 {
        let v = lab
            .curl("client", &format!("http://{dsr_vip}/dsr"))
            .expect("DSR answer");
        assert_eq!(v["backend"], "solo");
    }
    let count = |c: std::process::Child| {
        let out = c.wait_with_output().expect("tshark output");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .count()
    };
    let (receiver, backend) = (count(on_receiver), count(on_backend));
    assert_eq!(receiver, 0, "the receiving node sent replies: not DSR");
    assert!(
        backend >= 5,
        "the backend's node sent {backend} replies from {dsr_vip}"
    );

    // 1. Kill the holder's agent.
    let capture = capture_arp(&lab);
    let prober = Prober::start(&lab);
    let s = lab.state();
    let idx: usize = first
        .trim_start_matches("node-")
        .parse()
        .expect("node index");
    let pid = s["nodes"][idx - 1]["agent_pid"]
        .as_u64()
        .expect("agent pid") as i32;
    let t0 = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the agent");
    let (second, took) = wait_failover(&lab, &first, t0);
    report(
        &format!("agent of {first} killed, {second} took over"),
        took,
        prober.longest_gap(t0),
    );
    let new_mac = mac_of(&lab, &second);
    let garps = saw_gratuitous_arp(capture, &new_mac);
    assert!(
        garps.contains(&new_mac),
        "no gratuitous ARP from {second}: {garps:?}"
    );
    // Once the old address's lifetime ran out, one MAC again: the new holder's.
    one_mac_answers(&lab, &second);

    // 2. Take the new holder's LAN link down.
    let prober = Prober::start(&lab);
    let t1 = Instant::now();
    let (code, _) = lab.exec(&second, &["ip", "link", "set", "eth0", "down"]);
    assert_eq!(code, 0);
    let (third, took) = wait_failover(&lab, &second, t1);
    report(
        &format!("{second}'s LAN link down, {third} took over"),
        took,
        prober.longest_gap(t1),
    );
    one_mac_answers(&lab, &third);
    // 3. The partitioned node rejoins: it does not announce the address again beside the
    // holder (it gave it up when its link went down and finds the lease taken).
    let (code, _) = lab.exec(&second, &["ip", "link", "set", "eth0", "up"]);
    assert_eq!(code, 0);
    one_mac_answers(&lab, &third);
}

/// The example home lab: the gateways' proxies run as pods, LB-IPAM gives their Services the
/// corpus's addresses (10.10.30.25 internal, 10.10.30.26 external), the nodes running them
/// announce those on the LAN, and the client reaches the echo app through each gateway.
#[test]
fn example_gateways_get_the_corpus_addresses_and_answer_on_the_lan() {
    super::lab::require_root();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = tempfile::tempdir().expect("tempdir");
    let lab = Lab::up_with_vars(
        &repo.join("examples/home-lab"),
        Some(&repo.join("examples/home-lab/vars.yaml")),
        &format!("g{}", std::process::id()),
        &dir.path().join("state"),
    );
    for (vip, host) in [
        ("10.10.30.25", "echo.home.example"),
        ("10.10.30.26", "echo-ext.home.example"),
    ] {
        let start = Instant::now();
        let answer = loop {
            let (code, body) = lab.exec(
                "client",
                &[
                    "curl",
                    "-sk",
                    "-m",
                    "2",
                    "--resolve",
                    &format!("{host}:443:{vip}"),
                    &format!("https://{host}/via-{vip}"),
                ],
            );
            if code == 0 && body.contains("\"backend\"") {
                break body;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{host} at {vip}: curl {code} {body}"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let v: serde_json::Value = serde_json::from_str(&answer).expect("echo JSON");
        assert!(
            v["backend"]
                .as_str()
                .is_some_and(|b| b.starts_with("echo-")),
            "{v}"
        );
        // Exactly one node answers ARP for the address.
        let (_, arp) = lab.exec("client", &["arping", "-c", "2", "-i", "eth0", vip]);
        let macs: std::collections::BTreeSet<&str> = arp
            .lines()
            .filter_map(|l| l.split(" from ").nth(1))
            .filter_map(|r| r.split_whitespace().next())
            .collect();
        assert_eq!(macs.len(), 1, "{vip}: {arp}");
    }
}
