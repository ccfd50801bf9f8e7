//! `cargo xtask bench datapath`: the cost of service load balancing in the lab topology.
//!
//! A client pod on node-1 talks to a server pod on node-2 (across the LAN, native routing)
//! with `trellis lab tcprr` (one byte each way; `rr` = one connection, `crr` = a new connection
//! per transaction). Side by side, in interleaved rounds, in one run:
//!
//! - `direct`: the server pod's IP;
//! - `trellis`: the Service's ClusterIP through the eBPF datapath;
//! - `ipt-nft` / `ipt-legacy`: the same service as kube-proxy's iptables mode builds it (a
//!   KUBE-SERVICES chain with every other service's rule ahead of the measured one, then the
//!   service and endpoint chains with DNAT), in node-1;
//! - `nft-vmap`: kube-proxy's nftables mode shape (a verdict map on address . port).
//!
//! at 10 and at 10,000 Services (the same count installed in every variant). Writes
//! `target/bench/datapath.md`. Server on CPU 0, client on CPU 1, as in the peer baselines.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail, ensure};

use crate::proc::Bg;

const LAB_NAME: &str = "bench";
/// The address the iptables/nftables variants serve the service on (not in the maps).
const KP_VIP: &str = "10.97.255.10";
const SERVER_PORT: u16 = 5001;
/// Variants measured in one lab together (each group in a fresh lab, each against its own
/// `direct`): netfilter state must not leak from one variant into another.
/// `trellis` runs with the datapath's flow export off (`lab up --no-flows`), `trellis+flows`
/// with it on (flow events to each node's Hubble API), in a lab of its own.
/// Variants measured in one lab each, interleaved round by round. `trellis` and
/// `trellis+flows` share a lab: the datapath's flow events are turned off and on between
/// them (`trellis lab events`), so the VM's drift between labs does not enter their ratio.
const GROUPS: [&[&str]; 3] = [
    &["direct", "trellis", "trellis+flows"],
    &["direct", "ipt-nft", "nft-vmap"],
    &["direct", "ipt-legacy"],
];

fn manifests(services: usize) -> String {
    let mut m = String::from(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: rr-client, namespace: default}\n\
         spec:\n  selector: {matchLabels: {app: rr-client}}\n  template:\n    metadata: {labels: {app: rr-client}}\n    \
         spec: {containers: [{name: c, image: tcprr}]}\n---\n\
         apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: rr-server, namespace: default}\n\
         spec:\n  selector: {matchLabels: {app: rr-server}}\n  template:\n    metadata: {labels: {app: rr-server}}\n    \
         spec: {containers: [{name: s, image: tcprr}]}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: rr, namespace: default}\n\
         spec: {selector: {app: rr-server}, ports: [{port: 80, targetPort: 5001}]}\n",
    );
    for i in 1..services {
        m.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: filler-{i}, namespace: default}}\n\
             spec: {{selector: {{app: rr-server}}, ports: [{{port: 80, targetPort: 5001}}]}}\n"
        ));
    }
    m
}

/// kube-proxy's iptables-mode shape: `services - 1` non-matching rules ahead of the match.
fn iptables_rules(services: usize, backend: &str) -> String {
    let mut r = String::from(
        "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-RR - [0:0]\n:KUBE-SEP-RR - [0:0]\n\
         -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
    );
    for i in 1..services {
        r.push_str(&format!(
            "-A KUBE-SERVICES -d 10.98.{}.{}/32 -p tcp -m comment --comment \"default/filler-{i} cluster IP\" -m tcp --dport 80 -j KUBE-SVC-RR\n",
            i / 250,
            i % 250 + 1
        ));
    }
    r.push_str(&format!(
        "-A KUBE-SERVICES -d {KP_VIP}/32 -p tcp -m comment --comment \"default/rr cluster IP\" -m tcp --dport 80 -j KUBE-SVC-RR\n\
         -A KUBE-SVC-RR -j KUBE-SEP-RR\n-A KUBE-SEP-RR -p tcp -m tcp -j DNAT --to-destination {backend}:{SERVER_PORT}\nCOMMIT\n"
    ));
    r
}

/// kube-proxy's nftables-mode shape: one verdict map lookup on address . port.
fn nft_rules(services: usize, backend: &str) -> String {
    let mut r = format!(
        "table ip kube-proxy {{\n  chain svc-rr {{ meta l4proto tcp dnat to {backend}:{SERVER_PORT}; }}\n  \
         map service-ips {{ type ipv4_addr . inet_service : verdict; elements = {{\n"
    );
    for i in 1..services {
        r.push_str(&format!(
            "    10.98.{}.{} . 80 : jump svc-rr,\n",
            i / 250,
            i % 250 + 1
        ));
    }
    r.push_str(&format!(
        "    {KP_VIP} . 80 : jump svc-rr }}\n  }}\n  chain prerouting {{ type nat hook prerouting priority dstnat; policy accept; ip daddr . tcp dport vmap @service-ips; }}\n}}\n"
    ));
    r
}

struct Lab<'a> {
    bin: &'a str,
    state_dir: String,
}

impl Drop for Lab<'_> {
    fn drop(&mut self) {
        let _ = Command::new(self.bin)
            .args([
                "lab",
                "down",
                "--name",
                LAB_NAME,
                "--state-dir",
                &self.state_dir,
            ])
            .status();
    }
}

fn netns(part: &str) -> String {
    format!("trellis-{LAB_NAME}-{part}")
}

fn sh_in(ns: &str, program: &str, args: &[&str], stdin: Option<&str>) -> Result<()> {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/var/run/netns/{ns}"))
        .arg(program)
        .args(args);
    c.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = c
        .spawn()
        .with_context(|| format!("running {program} in {ns}"))?;
    if let Some(text) = stdin {
        use std::io::Write as _;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(text.as_bytes())?;
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{program} {} in {ns} failed", args.join(" "));
    }
    Ok(())
}

fn flush_kube_proxy(node: &str) {
    let _ = sh_in(node, "iptables-nft", &["-t", "nat", "-F"], None);
    let _ = sh_in(node, "iptables-nft", &["-t", "nat", "-X"], None);
    let _ = sh_in(node, "iptables-legacy", &["-t", "nat", "-F"], None);
    let _ = sh_in(node, "iptables-legacy", &["-t", "nat", "-X"], None);
    let _ = sh_in(node, "nft", &["flush", "ruleset"], None);
}

/// `trellis lab tcprr server` in a pod's namespace on CPU 0, once it listens.
fn start_tcprr_server(bin: &str, server_ns: &str) -> Result<Bg> {
    let mut server = Bg(Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{server_ns}"))
        .args(["taskset", "-c", "0", bin, "lab", "tcprr", "server"])
        .arg(SERVER_PORT.to_string())
        .stdout(Stdio::piped())
        .spawn()?);
    let ready = BufReader::new(server.0.stdout.take().context("server stdout")?)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.trim() == "ready");
    if !ready {
        bail!("tcprr server did not start");
    }
    Ok(server)
}

/// The client's wide port range and TIME_WAIT reuse, as netperf CRR runs need.
fn tune_client(client_ns: &str) -> Result<()> {
    sh_in(
        client_ns,
        "sysctl",
        &[
            "-qw",
            "net.ipv4.ip_local_port_range=1024 65535",
            "net.ipv4.tcp_tw_reuse=1",
        ],
        None,
    )
}

/// One tcprr client run: transactions/s.
fn measure(bin: &str, client_ns: &str, target: &str, mode: &str, secs: u32) -> Result<f64> {
    let out = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{client_ns}"))
        .args([
            "taskset",
            "-c",
            "1",
            bin,
            "lab",
            "tcprr",
            "client",
            target,
            mode,
            &secs.to_string(),
        ])
        .output()
        .context("running the tcprr client")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let tps: f64 = text
        .split_whitespace()
        .next()
        .and_then(|t| t.parse().ok())
        .with_context(|| {
            format!(
                "tcprr client said {text:?} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    let errors = text.split_whitespace().nth(2).unwrap_or("0");
    if errors != "0" {
        eprintln!("    ({errors} failed transactions against {target})");
    }
    Ok(tps)
}

/// `trellis lab up` (2 nodes) on the manifests under `manifests`, state in `state_dir`; the lab
/// (taken down when dropped) and its state.
fn lab_up<'a>(
    bin: &'a str,
    manifests: &Path,
    state_dir: &str,
    flows: bool,
) -> Result<(Lab<'a>, serde_json::Value)> {
    let started = std::time::Instant::now();
    let up = Command::new(bin)
        .args([
            "lab",
            "up",
            "--nodes",
            "2",
            "--name",
            LAB_NAME,
            "--state-dir",
            state_dir,
            "-f",
        ])
        .arg(manifests)
        .args(if flows { None } else { Some("--no-flows") })
        .stdout(Stdio::null())
        .status()?;
    let lab = Lab {
        bin,
        state_dir: state_dir.to_string(),
    };
    if !up.success() {
        bail!("lab up failed (see {state_dir}/logs)");
    }
    eprintln!("    up in {:.1} s", started.elapsed().as_secs_f64());
    let state = serde_json::from_slice(&std::fs::read(Path::new(state_dir).join("state.json"))?)?;
    Ok((lab, state))
}

/// The netns and address of the first pod whose name starts with `app`.
fn pod_of(state: &serde_json::Value, app: &str) -> Result<(String, String)> {
    let p = state["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| {
            p["plan"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with(app))
        })
        .with_context(|| format!("no {app} pod"))?;
    Ok((
        p["netns"].as_str().context("netns")?.to_string(),
        p["ip"].as_str().context("ip")?.to_string(),
    ))
}

/// The most policy entries an agent of the lab reports having programmed (its log's last
/// `… N policy entries …` line), so a benchmark shows the policies were in the maps.
fn policy_entries(state_dir: &str) -> u64 {
    let Ok(dir) = std::fs::read_dir(Path::new(state_dir).join("logs")) else {
        return 0;
    };
    // The agent logs `node N: … K policy entries for M endpoints; …`.
    let entries_of = |line: &str| -> Option<u64> {
        let (before, _) = line.split_once(" policy entries")?;
        before.rsplit(' ').next()?.parse().ok()
    };
    dir.filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("agent-"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|text| text.lines().rev().find_map(entries_of))
        .max()
        .unwrap_or(0)
}

pub fn run(root: &Path, rounds: usize, secs: u32) -> Result<()> {
    crate::ensure_packages(crate::TEST_PEERS)?;
    crate::ensure_packages(&[
        ("/usr/sbin/iptables-legacy", "iptables"),
        ("/usr/sbin/nft", "nftables"),
    ])?;
    let bin = crate::build_release(root)?;
    let bin = bin.as_str();
    let dir = root.join("target/bench/datapath");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("manifests"))?;
    // (services, group, variant, mode) -> transactions/s per round.
    let mut results: BTreeMap<(usize, usize, String, String), Vec<f64>> = BTreeMap::new();
    // SERVICES=10 measures one count only; VARIANT_GROUPS=1 the first group only (trellis and
    // trellis+flows against direct); LB=0 skips the LoadBalancer part.
    let counts: Vec<usize> = match crate::env_or("SERVICES", 0usize) {
        0 => vec![10, 10_000],
        n => vec![n],
    };
    let groups = crate::env_or("VARIANT_GROUPS", GROUPS.len()).min(GROUPS.len());
    for (services, (group, variants_of_group)) in counts
        .iter()
        .copied()
        .flat_map(|n| GROUPS.iter().take(groups).enumerate().map(move |g| (n, g)))
    {
        eprintln!(
            "\n==> lab with {services} services: {}",
            variants_of_group.join(", ")
        );
        std::fs::write(dir.join("manifests/bench.yaml"), manifests(services))?;
        let state_dir = dir.join("state").display().to_string();
        let flows = variants_of_group.contains(&"trellis+flows");
        let (lab, state) = lab_up(bin, &dir.join("manifests"), &state_dir, flows)?;
        let (client_ns, _) = pod_of(&state, "rr-client")?;
        let (server_ns, server_ip) = pod_of(&state, "rr-server")?;
        let cluster_ip = state["services"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["name"] == "rr")
            .and_then(|s| s["cluster_ip"].as_str())
            .context("rr has no cluster IP")?
            .to_string();
        tune_client(&client_ns)?;
        let server = start_tcprr_server(bin, &server_ns)?;
        let node1 = netns("node-1");
        flush_kube_proxy(&node1);
        let ipt = iptables_rules(services, &server_ip);
        let nft = nft_rules(services, &server_ip);
        let target_of = |name: &str| match name {
            "direct" => format!("{server_ip}:{SERVER_PORT}"),
            "trellis" | "trellis+flows" => format!("{cluster_ip}:80"),
            _ => format!("{KP_VIP}:80"),
        };
        // iptables-legacy's nat table stays registered in the namespace once loaded (and keeps
        // connection tracking on for everything after it): its group measures direct first,
        // then legacy, instead of interleaving.
        let schedule: Vec<Vec<&str>> = if variants_of_group.contains(&"ipt-legacy") {
            (0..rounds)
                .map(|_| vec!["direct"])
                .chain((0..rounds).map(|_| vec!["ipt-legacy"]))
                .collect()
        } else {
            (0..rounds).map(|_| variants_of_group.to_vec()).collect()
        };
        for (round, names) in schedule.iter().enumerate() {
            for name in names {
                let target = target_of(name);
                if flows {
                    let on = if *name == "trellis+flows" {
                        "on"
                    } else {
                        "off"
                    };
                    let ok = Command::new(bin)
                        .args(["lab", "events", "--state-dir", &state_dir, on])
                        .status()?;
                    ensure!(ok.success(), "lab events {on} failed");
                }
                match *name {
                    "ipt-nft" => sh_in(&node1, "iptables-nft-restore", &[], Some(&ipt))?,
                    "ipt-legacy" => sh_in(&node1, "iptables-legacy-restore", &[], Some(&ipt))?,
                    "nft-vmap" => sh_in(&node1, "nft", &["-f", "-"], Some(&nft))?,
                    _ => {}
                }
                for mode in ["rr", "crr"] {
                    let tps = measure(bin, &client_ns, &target, mode, secs)?;
                    eprintln!(
                        "    round {} {services:>5} services {name:<11} {mode:<3} {tps:>9.0}/s",
                        round + 1
                    );
                    results
                        .entry((services, group, name.to_string(), mode.to_string()))
                        .or_default()
                        .push(tps);
                }
                flush_kube_proxy(&node1);
            }
        }
        drop(server);
        drop(lab);
    }
    let mut md = String::from(
        "| services | variant | RR tps (median) | vs direct | CRR tps (median) | vs direct |\n|---:|---|---:|---:|---:|---:|\n",
    );
    let med = |v: &Vec<f64>| {
        let mut v = v.clone();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for &services in &counts {
        for (group, names) in GROUPS.iter().take(groups).enumerate() {
            let get = |name: &str, mode: &str| {
                results
                    .get(&(services, group, name.to_string(), mode.to_string()))
                    .map(&med)
                    .unwrap_or(f64::NAN)
            };
            let (direct_rr, direct_crr) = (get("direct", "rr"), get("direct", "crr"));
            for name in names.iter().filter(|n| group == 0 || **n != "direct") {
                let (rr, crr) = (get(name, "rr"), get(name, "crr"));
                md.push_str(&format!(
                    "| {services} | {name} | {rr:.0} | {:.2}× | {crr:.0} | {:.2}× |\n",
                    rr / direct_rr,
                    crr / direct_crr
                ));
            }
        }
    }
    md.push('\n');
    if crate::env_or("LB", 1) != 0 {
        md.push_str(&run_lb(root, rounds, secs, crate::env_or("TRIALS", 20))?);
    }
    println!("\n{md}");
    std::fs::write(root.join("target/bench/datapath.md"), &md)?;
    eprintln!("(written to target/bench/datapath.md; {rounds} rounds of {secs} s per cell)");
    Ok(())
}

/// The LoadBalancer part (Fabric II): a LAN client to an announced address whose only
/// backend runs on another node than the announcing one, in `snat` and in `dsr` mode —
/// request/response rates and iperf3 throughput — and the L2 failover time over `trials`.
const LB_VIP: &str = "10.10.30.27";
const FAILOVER_VIP: &str = "10.10.30.28";

fn lb_manifests() -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: rr-server, namespace: default, labels: {{app: rr-server}}}}\n\
         spec: {{nodeName: node-3, containers: [{{name: s, image: tcprr, ports: [{{containerPort: 8080}}]}}]}}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: rr-lb, namespace: default, labels: {{l2: node-1}}, annotations: {{lbipam.cilium.io/ips: {LB_VIP}}}}}\n\
         spec: {{type: LoadBalancer, selector: {{app: rr-server}}, ports: [{{name: rr, port: 80, targetPort: {SERVER_PORT}}}, {{name: iperf, port: 5201, targetPort: 5201}}]}}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: failover, namespace: default, labels: {{l2: any}}, annotations: {{lbipam.cilium.io/ips: {FAILOVER_VIP}}}}}\n\
         spec: {{type: LoadBalancer, selector: {{app: rr-server}}, ports: [{{port: 80, targetPort: {SERVER_PORT}}}]}}\n---\n\
         apiVersion: cilium.io/v2\nkind: CiliumLoadBalancerIPPool\nmetadata: {{name: pool}}\nspec: {{blocks: [{{start: 10.10.30.20, stop: 10.10.30.40}}]}}\n---\n\
         apiVersion: cilium.io/v2alpha1\nkind: CiliumL2AnnouncementPolicy\nmetadata: {{name: node-1}}\n\
         spec: {{loadBalancerIPs: true, serviceSelector: {{matchLabels: {{l2: node-1}}}}, nodeSelector: {{matchLabels: {{kubernetes.io/hostname: node-1}}}}}}\n---\n\
         apiVersion: cilium.io/v2alpha1\nkind: CiliumL2AnnouncementPolicy\nmetadata: {{name: any}}\n\
         spec: {{loadBalancerIPs: true, serviceSelector: {{matchLabels: {{l2: any}}}}}}\n"
    )
}

fn holder_of(vip: &str) -> Option<usize> {
    let held: Vec<usize> = (1..=3)
        .filter(|i| {
            Command::new("ip")
                .args([
                    "-n",
                    &netns(&format!("node-{i}")),
                    "-4",
                    "-o",
                    "addr",
                    "show",
                    "dev",
                    "eth0",
                ])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("{vip}/32")))
        })
        .collect();
    (held.len() == 1).then(|| held[0])
}

fn client_connects(vip: &str) -> bool {
    Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", netns("client")))
        .args([
            "timeout",
            "0.3",
            "bash",
            "-c",
            &format!("exec 3<>/dev/tcp/{vip}/80"),
        ])
        .status()
        .is_ok_and(|s| s.success())
}

fn iperf(client_ns: &str, secs: u32) -> Result<f64> {
    let out = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{client_ns}"))
        .args([
            "taskset",
            "-c",
            "1",
            "iperf3",
            "-c",
            LB_VIP,
            "-p",
            "5201",
            "-J",
            "-t",
            &secs.to_string(),
        ])
        .output()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 -J output")?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 gave no throughput")
}

pub fn run_lb(root: &Path, rounds: usize, secs: u32, trials: usize) -> Result<String> {
    crate::ensure_packages(&[("/usr/bin/iperf3", "iperf3")])?;
    let bin_path = root.join("target/release/trellis");
    let bin = bin_path.to_str().context("utf-8 path")?;
    let dir = root.join("target/bench/datapath-lb");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("manifests"))?;
    std::fs::write(dir.join("manifests/lb.yaml"), lb_manifests())?;
    let mut results: BTreeMap<(String, &str), Vec<f64>> = BTreeMap::new();
    let mut failovers: Vec<f64> = Vec::new();
    for mode in ["snat", "dsr"] {
        eprintln!("\n==> LoadBalancer address in {mode} mode");
        let state_dir = dir.join("state").display().to_string();
        let up = Command::new(bin)
            .args([
                "lab",
                "up",
                "--nodes",
                "3",
                "--lb-mode",
                mode,
                "--no-flows",
                "--name",
                LAB_NAME,
            ])
            .args(["--state-dir", &state_dir, "-f"])
            .arg(dir.join("manifests"))
            .stdout(Stdio::null())
            .status()?;
        let lab = Lab {
            bin,
            state_dir: state_dir.clone(),
        };
        if !up.success() {
            bail!("lab up failed (see {state_dir}/logs)");
        }
        let server_ns = netns("pod-default-rr-server");
        let server = start_tcprr_server(bin, &server_ns)?;
        let _iperf_server = Bg(Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{server_ns}"))
            .args(["taskset", "-c", "0", "iperf3", "-s", "-p", "5201"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?);
        // Wait (bounded) for node-1 to announce the address and the server to answer.
        let start = std::time::Instant::now();
        while holder_of(LB_VIP) != Some(1) || !client_connects(LB_VIP) {
            if start.elapsed() > std::time::Duration::from_secs(20) {
                bail!("{LB_VIP} is not reachable through node-1");
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let client_ns = netns("client");
        tune_client(&client_ns)?;
        let target = format!("{LB_VIP}:80");
        for round in 0..rounds {
            for m in ["rr", "crr"] {
                let tps = measure(bin, &client_ns, &target, m, secs)?;
                eprintln!("    round {} {mode:<4} {m:<3} {tps:>9.0}/s", round + 1);
                results.entry((mode.to_string(), m)).or_default().push(tps);
            }
            let bps = iperf(&client_ns, secs)?;
            eprintln!(
                "    round {} {mode:<4} iperf3 {:>7.2} Gbit/s",
                round + 1,
                bps / 1e9
            );
            results
                .entry((mode.to_string(), "iperf"))
                .or_default()
                .push(bps);
        }
        if mode == "dsr" {
            // Failover: kill the holder's agent, time until the client connects through the new
            // holder, restart the killed agent, repeat.
            // Agents this loop restarted, by node index.
            let mut restarted: BTreeMap<usize, Bg> = BTreeMap::new();
            for trial in 0..trials {
                let start = std::time::Instant::now();
                let old = loop {
                    if let Some(h) = holder_of(FAILOVER_VIP) {
                        break h;
                    }
                    if start.elapsed() > std::time::Duration::from_secs(20) {
                        bail!("nobody announces {FAILOVER_VIP}");
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                };
                let state: serde_json::Value = serde_json::from_slice(&std::fs::read(
                    Path::new(&state_dir).join("state.json"),
                )?)?;
                let pid = match restarted.get(&old) {
                    Some(b) => b.0.id(),
                    None => state["nodes"][old - 1]["agent_pid"]
                        .as_u64()
                        .context("agent pid")? as u32,
                };
                let t0 = std::time::Instant::now();
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
                loop {
                    if holder_of(FAILOVER_VIP).is_some_and(|h| h != old)
                        && client_connects(FAILOVER_VIP)
                    {
                        break;
                    }
                    if t0.elapsed() > std::time::Duration::from_secs(30) {
                        bail!("no failover from node-{old}");
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                let took = t0.elapsed().as_secs_f64();
                eprintln!("    failover {} from node-{old}: {took:.2} s", trial + 1);
                failovers.push(took);
                // Bring the killed agent back.
                let mut agent = Command::new("nsenter")
                    .arg(format!(
                        "--net=/var/run/netns/{}",
                        netns(&format!("node-{old}"))
                    ))
                    .args([bin, "agent", "--config"])
                    .arg(Path::new(&state_dir).join(format!("agent-node-{old}.json")))
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()?;
                let out = agent.stdout.take().context("agent stdout")?;
                let mut lines = BufReader::new(out).lines();
                if !lines.any(|l| l.map(|l| l.trim() == "ready").unwrap_or(false)) {
                    bail!("restarted agent of node-{old} did not get ready");
                }
                std::thread::spawn(move || for _ in lines {});
                restarted.insert(old, Bg(agent));
            }
        }
        drop(server);
        drop(lab);
    }
    let med = |v: &Vec<f64>| {
        let mut v = v.clone();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut md = String::from(
        "| LAN client → LB address → backend on another node | snat | dsr | dsr / snat |\n|---|---:|---:|---:|\n",
    );
    for (what, label, scale) in [
        ("rr", "RR tps", 1.0),
        ("crr", "CRR tps", 1.0),
        ("iperf", "iperf3 Gbit/s", 1e-9),
    ] {
        let s = med(&results[&("snat".to_string(), what)]) * scale;
        let d = med(&results[&("dsr".to_string(), what)]) * scale;
        md.push_str(&format!("| {label} | {s:.2} | {d:.2} | {:.2}× |\n", d / s));
    }
    if !failovers.is_empty() {
        let worst = failovers.iter().copied().fold(0.0, f64::max);
        md.push_str(&format!(
            "\nL2 failover (kill the holder's agent → the client connects through the new holder), {} trials: median {:.2} s, worst {worst:.2} s\n",
            failovers.len(),
            med(&failovers)
        ));
    }
    Ok(md)
}

/// Names per DNSEndpoint object (the YAML reader bounds the nodes of one file).
const FQDN_NAMES_PER_FILE: u32 = 100;

/// The toFQDNs part: what telling the agent costs a DNS answer. A lab (2 nodes) with a pod
/// whose policy opens `*.example.test` by name; on the pod's node two `trellis dns` serve
/// `names` records: one with `--policy-agents` (port 53), one without (port 5354). From the
/// pod, one lookup at a time (`trellis lab dnslat`): without the gate; with it, every name a
/// first time (each answer opens an address: the agent compiles and syncs the policy before
/// it is released) and a second time (already open). Returns the markdown table.
pub fn run_fqdn(root: &Path, names: u32) -> Result<String> {
    crate::ensure_packages(crate::TEST_PEERS)?;
    let bin = crate::build_release(root)?;
    let bin = bin.as_str();
    let dir = root.join("target/bench/fqdn");
    let _ = std::fs::remove_dir_all(&dir);
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests)?;
    std::fs::write(
        manifests.join("fqdn.yaml"),
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: fqdn, namespace: default}\n\
         spec:\n  selector: {matchLabels: {app: fqdn}}\n  template:\n    metadata: {labels: {app: fqdn}}\n    \
         spec: {containers: [{name: c, image: x}]}\n---\n\
         apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: fqdn, namespace: default}\n\
         spec:\n  endpointSelector: {matchLabels: {app: fqdn}}\n  egress:\n  \
         - toEntities: [host, remote-node]\n    toPorts: [{ports: [{port: \"53\", protocol: ANY}, {port: \"5354\", protocol: ANY}]}]\n  \
         - toFQDNs: [{matchPattern: \"*.example.test\"}]\n    toPorts: [{ports: [{port: \"443\"}]}]\n---\n\
         apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: fqdn-dns, namespace: default}\n\
         spec:\n  selector: {matchLabels: {app: fqdn-dns}}\n  template:\n    metadata: {labels: {app: fqdn-dns}}\n    \
         spec: {containers: [{name: c, image: x}]}\n---\n\
         apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: fqdn-dns, namespace: default}\n\
         spec:\n  endpointSelector: {matchLabels: {app: fqdn-dns}}\n  egress:\n  \
         - toEntities: [host, remote-node]\n    toPorts: [{ports: [{port: \"53\", protocol: ANY}], rules: {dns: [{matchPattern: \"*.example.test\"}]}}]\n  \
         - toFQDNs: [{matchPattern: \"*.example.test\"}]\n    toPorts: [{ports: [{port: \"443\"}]}]\n---\n\
         apiVersion: trellis.dev/v1alpha1\nkind: DNSView\nmetadata: {name: bench}\n\
         spec: {clients: [0.0.0.0/0], zones: [example.test], dnsEndpoints: true}\n",
    )?;
    let mut first = 1;
    while first <= names + 1 {
        let last = (first + FQDN_NAMES_PER_FILE - 1).min(names + 1);
        let mut t = format!(
            "apiVersion: externaldns.k8s.io/v1alpha1\nkind: DNSEndpoint\n\
             metadata: {{name: names-{first}, namespace: default}}\nspec:\n  endpoints:\n"
        );
        for i in first..=last {
            // Name `names + 1` is the readiness probe's, outside the measured range.
            t.push_str(&format!(
                "  - {{dnsName: a{i}.example.test, recordType: A, targets: [10.77.{}.{}], recordTTL: 300}}\n",
                i / 250,
                i % 250 + 1
            ));
        }
        std::fs::write(manifests.join(format!("names-{first}.yaml")), t)?;
        first = last + 1;
    }
    let state_dir = dir.join("state").display().to_string();
    let (_lab, state) = lab_up(bin, &manifests, &state_dir, false)?;
    let pod = state["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["plan"]["labels"]["app"] == "fqdn")
        .context("no fqdn pod")?;
    let pod_ns = pod["netns"].as_str().context("netns")?.to_string();
    let restricted_ns = state["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["plan"]["labels"]["app"] == "fqdn-dns")
        .and_then(|p| p["netns"].as_str())
        .context("no fqdn-dns pod")?
        .to_string();
    let node = state["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["name"] == pod["plan"]["node"])
        .context("the pod's node")?;
    let node_ns = node["netns"].as_str().context("node netns")?.to_string();
    let ip = node["lan_ip"].as_str().context("node address")?.to_string();
    let dns = |port: u16, gated: bool| -> Result<Bg> {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/var/run/netns/{node_ns}"))
            .args(["taskset", "-c", "0", bin, "dns", "-f"])
            .arg(&manifests)
            .arg("-f")
            .arg(Path::new(&state_dir).join("cluster"))
            .args(["--listen", &format!("{ip}:{port}")]);
        if gated {
            c.arg("--policy-agents")
                .arg(Path::new(&state_dir).join("fqdn"));
        }
        Ok(Bg(c.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?))
    };
    let _gated = dns(53, true)?;
    let _plain = dns(5354, false)?;
    let lat_from = |ns: &str, port: u16, first: u32, count: u32| -> Result<(u64, u64, u64, u64)> {
        let out = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{ns}"))
            .args(["taskset", "-c", "1", bin, "lab", "dnslat"])
            .arg(format!("{ip}:{port}"))
            .args(["a", "example.test", "--first"])
            .arg(first.to_string())
            .arg("--count")
            .arg(count.to_string())
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let v: Vec<u64> = text
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        match v.as_slice() {
            [p50, p99, max, errors] => Ok((*p50, *p99, *max, *errors)),
            _ => bail!("dnslat said {text:?}"),
        }
    };
    let lat = |port: u16, first: u32, count: u32| lat_from(&pod_ns, port, first, count);
    let started = std::time::Instant::now();
    for port in [53, 5354] {
        while lat(port, names + 1, 1)?.3 != 0 {
            if started.elapsed() > std::time::Duration::from_secs(30) {
                bail!("trellis dns on {ip}:{port} did not answer");
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
    let plain = lat(5354, 1, names)?;
    let first_time = lat(53, 1, names)?;
    let again = lat(53, 1, names)?;
    // A pod whose policy restricts the names it may ask (rules.dns): each query is also asked
    // of its agent before it is answered. Its first answers open its addresses; measured again.
    lat_from(&restricted_ns, 53, 1, names)?;
    let restricted = lat_from(&restricted_ns, 53, 1, names)?;
    // That pod's queries did go through its agent: a name outside its rules.dns is refused.
    let dig = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{restricted_ns}"))
        .args([
            "dig",
            "+time=2",
            "+tries=1",
            &format!("@{ip}"),
            "outside.test",
        ])
        .output()?;
    let said = String::from_utf8_lossy(&dig.stdout);
    ensure!(
        said.contains("status: REFUSED"),
        "the rules.dns pod was not refused outside.test: {said}"
    );
    let mut md = format!(
        "| toFQDNs, {names} names, one lookup at a time | p50 µs | p99 µs | max µs | errors |\n\
         |---|---:|---:|---:|---:|\n"
    );
    for (what, (p50, p99, max, errors)) in [
        ("trellis dns without the gate", plain),
        (
            "with the gate, each name's first answer (opens an address)",
            first_time,
        ),
        ("with the gate, each name again (already open)", again),
        (
            "with the gate and rules.dns (each query allowed by the agent), again",
            restricted,
        ),
    ] {
        md.push_str(&format!("| {what} | {p50} | {p99} | {max} | {errors} |\n"));
    }
    println!("\n{md}");
    std::fs::write(root.join("target/bench/fqdn.md"), &md)?;
    Ok(md)
}

/// The policy part: pod-to-pod request/response rates with 0, 1, 100 and 10,000
/// CiliumNetworkPolicies selecting the server (one allows the client on the server's port;
/// the others each allow a /32 outside the cluster, so the ipcache and the server's policy
/// entries grow with them). Each count in a lab of its own, one after the other; `rounds`
/// rounds of `secs` per mode. Returns the markdown table.
pub fn run_policy(root: &Path, rounds: usize, secs: u32) -> Result<String> {
    crate::ensure_packages(crate::TEST_PEERS)?;
    let bin = crate::build_release(root)?;
    let bin = bin.as_str();
    let dir = root.join("target/bench/policy");
    let mut rows = Vec::new();
    // POLICY_COUNTS=0,100 measures those counts only.
    let counts: Vec<usize> = std::env::var("POLICY_COUNTS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| vec![0, 1, 100, 10_000]);
    for n in counts {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("manifests"))?;
        let mut m = manifests(1);
        if n > 0 {
            m.push_str(
                "---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n\
                 metadata: {name: rr, namespace: default}\nspec:\n  \
                 endpointSelector: {matchLabels: {app: rr-server}}\n  ingress:\n  \
                 - fromEndpoints: [{matchLabels: {app: rr-client}}]\n    \
                 toPorts: [{ports: [{port: \"5001\"}]}]\n",
            );
        }
        for i in 1..n {
            m.push_str(&format!(
                "---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n\
                 metadata: {{name: p{i}, namespace: default}}\nspec:\n  \
                 endpointSelector: {{matchLabels: {{app: rr-server}}}}\n  ingress:\n  \
                 - fromCIDR: [172.16.{}.{}/32]\n    toPorts: [{{ports: [{{port: \"{}\"}}]}}]\n",
                i / 250,
                i % 250 + 1,
                6000 + i % 1000
            ));
        }
        // One file per 500 documents: the YAML reader bounds the nodes of one file.
        for (k, chunk) in m
            .split_inclusive("---\n")
            .collect::<Vec<_>>()
            .chunks(500)
            .enumerate()
        {
            std::fs::write(
                dir.join(format!("manifests/bench-{k}.yaml")),
                chunk.concat(),
            )?;
        }
        eprintln!("\n==> lab with {n} policies");
        let state_dir = dir.join("state").display().to_string();
        // With the flow export, switched off but for the `crr+flows` measure: each new
        // connection through the server's enforced ingress is then a policy verdict event.
        let (lab, state) = lab_up(bin, &dir.join("manifests"), &state_dir, true)?;
        let (client_ns, _) = pod_of(&state, "rr-client")?;
        let (server_ns, server_ip) = pod_of(&state, "rr-server")?;
        let entries = policy_entries(&state_dir);
        let events = |on: bool| -> Result<()> {
            let on = if on { "on" } else { "off" };
            let ok = Command::new(bin)
                .args(["lab", "events", "--state-dir", &state_dir, on])
                .status()?;
            ensure!(ok.success(), "lab events {on} failed");
            Ok(())
        };
        eprintln!("    policy entries programmed (largest node): {entries}");
        tune_client(&client_ns)?;
        let server = start_tcprr_server(bin, &server_ns)?;
        let target = format!("{server_ip}:{SERVER_PORT}");
        let mut rr = Vec::new();
        let mut crr = Vec::new();
        let mut crr_flows = Vec::new();
        for round in 0..rounds {
            for (mode, flows, out) in [
                ("rr", false, &mut rr),
                ("crr", false, &mut crr),
                ("crr", true, &mut crr_flows),
            ] {
                events(flows)?;
                let tps = measure(bin, &client_ns, &target, mode, secs)?;
                eprintln!(
                    "    round {} {n:>5} policies {mode:<3}{} {tps:>9.0}/s",
                    round + 1,
                    if flows { "+flows" } else { "" }
                );
                out.push(tps);
            }
        }
        drop(server);
        drop(lab);
        let med = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        rows.push((n, entries, med(&mut rr), med(&mut crr), med(&mut crr_flows)));
    }
    let (base_rr, base_crr) = (rows[0].2, rows[0].3);
    let mut md = String::from(
        "| policies on the server | policy entries | RR tps (median) | vs first row | CRR tps (median) | vs first row | CRR with flows | flows on / off |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (n, entries, rr, crr, crr_flows) in &rows {
        md.push_str(&format!(
            "| {n} | {entries} | {rr:.0} | {:.2}× | {crr:.0} | {:.2}× | {crr_flows:.0} | {:.2}× |\n",
            rr / base_rr,
            crr / base_crr,
            crr_flows / crr
        ));
    }
    println!("\n{md}");
    std::fs::write(root.join("target/bench/policy.md"), &md)?;
    Ok(md)
}
