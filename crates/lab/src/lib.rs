//! The lab: a cluster built from network namespaces on one machine — a LAN bridge, nodes with
//! pods behind trellis's CNI plugin and eBPF datapath, and a LAN client. It is the demo and
//! the end-to-end test bed; one supervisor process plays the API server for its nodes.
//!
//! - [`cluster`]: the supervisor (topology, agents, pods, following manifest changes).
//! - [`schedule`]: pure pod placement. [`state`]: the state file. [`netns`]: `ip` wrappers.
//!
//! Not here: anything a real node runs (the agent, the CNI plugin, the datapath): the lab
//! starts those as separate processes exactly as a node would.

pub mod cluster;
pub mod netns;
pub mod schedule;
pub mod shared;
pub mod state;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub use cluster::{LabConfig, prefix_of, supervise};
pub use state::LabState;

/// How long `lab down` waits for the supervisor to finish its own teardown.
pub const SUPERVISOR_STOP_MAX: Duration = Duration::from_secs(60);

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
}

/// Starts the supervisor (`supervise`, a `trellis lab supervise …` command) in its own process
/// group and returns once it reports the lab ready. On failure, everything it made is gone.
pub fn up(cfg: &LabConfig, mut supervise: Command) -> Result<LabState> {
    if let Ok(s) = LabState::read(&cfg.state_dir)
        && alive(s.supervisor_pid)
    {
        bail!(
            "a lab is already up (supervisor pid {}); run `trellis lab down` first",
            s.supervisor_pid
        );
    }
    let leftovers = netns::list(&cfg.prefix());
    if !leftovers.is_empty() {
        bail!(
            "namespaces of an earlier lab are still there ({}); run `trellis lab down` first",
            leftovers.join(", ")
        );
    }
    std::fs::create_dir_all(cfg.state_dir.join("logs"))
        .with_context(|| format!("creating {}", cfg.state_dir.display()))?;
    let log_path = cfg.state_dir.join("logs").join("supervisor.log");
    let log = std::fs::File::create(&log_path)?;
    use std::os::unix::process::CommandExt as _;
    let mut child = supervise
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the lab supervisor")?;
    let stdout = child.stdout.take().context("supervisor stdout")?;
    let mut ready = false;
    for line in BufReader::new(stdout).lines() {
        match line {
            Ok(l) if l.trim() == "ready" => {
                ready = true;
                break;
            }
            Ok(l) => eprintln!("{l}"),
            Err(_) => break,
        }
    }
    if !ready {
        let _ = child.wait();
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "the lab did not come up:\n{}\n(full log: {})",
            tail.join("\n"),
            log_path.display()
        );
    }
    LabState::read(&cfg.state_dir)
}

/// Stops the lab's supervisor and removes everything any lab with this name made, also after
/// a crash (namespaces by prefix, pins under /sys/fs/bpf/trellis/<prefix>*).
pub fn down(state_dir: &Path, name: &str) -> Result<()> {
    let prefix = prefix_of(name);
    if let Ok(s) = LabState::read(state_dir)
        && alive(s.supervisor_pid)
    {
        let pid = nix::unistd::Pid::from_raw(s.supervisor_pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        // Not our child: poll its /proc entry, bounded.
        while alive(s.supervisor_pid) && start.elapsed() < SUPERVISOR_STOP_MAX {
            std::thread::sleep(Duration::from_millis(50));
        }
        if alive(s.supervisor_pid) {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
    let pins: Vec<std::path::PathBuf> = std::fs::read_dir("/sys/fs/bpf/trellis")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    cluster::remove_everything(&prefix, &pins);
    let left = netns::list(&prefix);
    if !left.is_empty() {
        bail!("could not remove namespaces {}", left.join(", "));
    }
    match std::fs::remove_dir_all(state_dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", state_dir.display())),
    }
}

/// `lab status` as text: nodes, pods, services.
pub fn status_text(s: &LabState) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "NODE      LAN IP         POD CIDR        AGENT");
    for n in &s.nodes {
        let _ = writeln!(
            out,
            "{:<9} {:<14} {:<15} {}",
            n.name,
            n.lan_ip.to_string(),
            n.pod_cidr.to_string(),
            n.agent_pid
                .map(|p| format!("pid {p}"))
                .unwrap_or_else(|| "-".into())
        );
    }
    let _ = writeln!(
        out,
        "client    {:<14} (namespace {})",
        s.client.ip.to_string(),
        s.client.netns
    );
    let _ = writeln!(
        out,
        "\nNAMESPACE    POD                      NODE      IP           READY"
    );
    for p in &s.pods {
        let _ = writeln!(
            out,
            "{:<12} {:<24} {:<9} {:<12} {}",
            p.plan.namespace,
            p.plan.name,
            p.plan.node,
            p.ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
            p.ready
        );
        if let Some(e) = &p.error {
            let _ = writeln!(out, "  not started: {e}");
        }
        // Attachments (network-status after the cluster network), one line each.
        for n in p.network_status.iter().skip(1) {
            let field = |k: &str| n[k].as_str().unwrap_or("-").to_string();
            let ips: Vec<&str> = n["ips"]
                .as_array()
                .map(|a| a.iter().filter_map(|i| i.as_str()).collect())
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  {:<10} {:<24} {:<16} {}",
                field("interface"),
                field("name"),
                if ips.is_empty() {
                    "-".into()
                } else {
                    ips.join(",")
                },
                field("mac"),
            );
        }
    }
    for m in &s.etcd {
        let _ = writeln!(
            out,
            "etcd      {:<14} member on {} (pid {})",
            m.client, m.node, m.pid
        );
    }
    if let Some(shared) = &s.shared {
        let _ = writeln!(
            out,
            "state     {shared} (trellis state --state {shared} ls)"
        );
    }
    if !s.scaling.is_empty() {
        let _ = writeln!(
            out,
            "\nSCALEDOBJECT                 TARGET                               REPLICAS CONDITIONS"
        );
        for r in &s.scaling {
            let conditions: Vec<&str> = [
                (r.ready, "Ready"),
                (r.active, "Active"),
                (r.fallback, "Fallback"),
                (r.paused, "Paused"),
            ]
            .into_iter()
            .filter_map(|(on, name)| on.then_some(name))
            .collect();
            let _ = writeln!(
                out,
                "{:<28} {:<36} {:<8} {}\n  {}",
                r.scaled_object,
                r.target,
                r.replicas.map_or("-".to_string(), |n| n.to_string()),
                if conditions.is_empty() {
                    "-".to_string()
                } else {
                    conditions.join(",")
                },
                r.reason
            );
        }
    }
    let _ = writeln!(
        out,
        "\nNAMESPACE    SERVICE              TYPE          CLUSTER-IP     NODE-PORTS         ENDPOINTS"
    );
    for r in &s.services {
        let mut ports = r.node_ports.join(",");
        if !r.load_balancer.is_empty() {
            ports = format!("{ports} lb:{}", r.load_balancer.join(","));
        }
        let _ = writeln!(
            out,
            "{:<12} {:<20} {:<13} {:<14} {:<18} {}",
            r.namespace,
            r.name,
            r.type_,
            r.cluster_ip
                .map(|i| i.to_string())
                .unwrap_or_else(|| "None".into()),
            if ports.is_empty() { "-".into() } else { ports },
            if r.endpoints.is_empty() {
                "<none>".into()
            } else {
                r.endpoints.join(",")
            }
        );
    }
    out
}

/// The command that runs `argv` inside the namespace of a node, pod or the client.
pub fn exec_command(s: &LabState, name: &str, argv: &[String]) -> Result<Command> {
    let Some(ns) = s.netns_of(name) else {
        let mut names: Vec<String> = s.nodes.iter().map(|n| n.name.clone()).collect();
        names.push("client".into());
        names.extend(
            s.pods
                .iter()
                .map(|p| format!("{}/{}", p.plan.namespace, p.plan.name)),
        );
        bail!(
            "no node, pod or client called {name:?}; there are: {}",
            names.join(", ")
        );
    };
    let Some((program, args)) = argv.split_first() else {
        bail!("no command given (trellis lab exec NAME -- CMD ...)");
    };
    let mut c = netns::command_in(&ns, program);
    c.args(args);
    Ok(c)
}
