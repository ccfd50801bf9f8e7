//! `trellis lab`: a cluster from network namespaces on this machine (see the `lab` crate).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

use crate::SourceArgs;

/// Where a lab keeps its state unless told otherwise.
pub const STATE_DIR_DEFAULT: &str = "/run/trellis/lab";

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: LabCommand,
}

#[derive(Debug, clap::Args)]
pub struct LabFlags {
    /// The lab's state directory (state.json, logs, IPAM).
    #[arg(long, default_value = STATE_DIR_DEFAULT)]
    pub state_dir: PathBuf,
    /// Name of the lab: its namespaces are `trellis-NAME-…` (`trellis-…` when empty).
    #[arg(long, default_value = "")]
    pub name: String,
}

#[derive(Debug, clap::Subcommand)]
pub enum LabCommand {
    /// Build the cluster and return once it is ready (a supervisor keeps running).
    Up {
        #[command(flatten)]
        source: SourceArgs,
        #[command(flatten)]
        lab: LabFlags,
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
    },
    /// Stop the lab and remove every namespace, link, route and BPF pin it made.
    Down {
        #[command(flatten)]
        lab: LabFlags,
    },
    /// Nodes, pods and services of the running lab.
    Status {
        #[command(flatten)]
        lab: LabFlags,
        /// Print the state as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a command in the namespace of a node, a pod or the client.
    Exec {
        #[command(flatten)]
        lab: LabFlags,
        /// `node-1`, `client`, `NAMESPACE/POD` or `POD`.
        #[arg(value_name = "NAME")]
        target: String,
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
    /// The workload every lab container runs: an HTTP echo on each of its ports.
    Echo {
        #[arg(long)]
        pod: String,
        #[arg(long, default_value = "default")]
        namespace: String,
        #[arg(long, default_value = "")]
        node: String,
        /// Comma-separated TCP ports (8080 when empty).
        #[arg(long, default_value = "8080")]
        ports: String,
    },
    /// The supervisor (started by `lab up`; not for direct use).
    #[command(hide = true)]
    Supervise {
        #[command(flatten)]
        source: SourceArgs,
        #[command(flatten)]
        lab: LabFlags,
        #[arg(long, default_value_t = 3)]
        nodes: usize,
    },
}

fn require_root() -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("the lab creates network namespaces and loads eBPF programs: run it as root (sudo)");
    }
    Ok(())
}

fn sibling_binary(name: &str, env: &str) -> Result<PathBuf> {
    if let Ok(p) = std::env::var(env) {
        return Ok(PathBuf::from(p));
    }
    let me = std::env::current_exe().context("locating the trellis binary")?;
    let p = me.with_file_name(name);
    if !p.exists() {
        bail!("{} not found next to {} (build it: cargo build -p cni), or set {env}", name, me.display());
    }
    Ok(p)
}

fn config(source: &SourceArgs, lab: &LabFlags, nodes: usize) -> Result<lab::LabConfig> {
    Ok(lab::LabConfig {
        name: lab.name.clone(),
        manifests: source.paths.iter().map(|p| std::path::absolute(p).unwrap_or(p.clone())).collect(),
        options: source.options()?,
        nodes,
        state_dir: lab.state_dir.clone(),
        trellis_bin: std::env::current_exe().context("locating the trellis binary")?,
        cni_bin: sibling_binary("trellis-cni", "TRELLIS_CNI")?,
    })
}

pub fn run(args: &Args) -> Result<ExitCode> {
    match &args.command {
        LabCommand::Up { source, lab, nodes } => {
            require_root()?;
            let cfg = config(source, lab, *nodes)?;
            let mut cmd = Command::new(&cfg.trellis_bin);
            cmd.arg("lab").arg("supervise");
            for p in &cfg.manifests {
                cmd.arg("-f").arg(p);
            }
            if let Some(v) = &source.vars {
                cmd.arg("--vars").arg(v);
            }
            cmd.arg("--state-dir").arg(&lab.state_dir).arg("--name").arg(&lab.name);
            cmd.arg("--nodes").arg(nodes.to_string());
            eprintln!("building a {nodes}-node lab (state in {}) ...", lab.state_dir.display());
            let state = lab::up(&cfg, cmd)?;
            print!("{}", lab::status_text(&state));
            eprintln!(
                "\nlab is up. Try: trellis lab exec client -- curl -s http://{}:<nodePort>/\n\
                 stop it with: trellis lab down{}",
                state.nodes.first().map(|n| n.lan_ip).unwrap_or(Ipv4Addr::UNSPECIFIED),
                name_flag(lab)
            );
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Supervise { source, lab, nodes } => {
            require_root()?;
            lab::supervise(&config(source, lab, *nodes)?)?;
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Down { lab } => {
            require_root()?;
            lab::down(&lab.state_dir, &lab.name)?;
            eprintln!("lab down: namespaces, links, routes and BPF pins removed");
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Status { lab, json } => {
            let state = lab::LabState::read(&lab.state_dir)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&state)?);
            } else {
                print!("{}", lab::status_text(&state));
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Exec { lab, target, argv } => {
            let state = lab::LabState::read(&lab.state_dir)?;
            let status = lab::exec_command(&state, target, argv)?
                .status()
                .context("running the command")?;
            Ok(ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8))
        }
        LabCommand::Echo { pod, namespace, node, ports } => echo(pod, namespace, node, ports),
    }
}

fn name_flag(lab: &LabFlags) -> String {
    if lab.name.is_empty() { String::new() } else { format!(" --name {}", lab.name) }
}

fn echo(pod: &str, namespace: &str, node: &str, ports: &str) -> Result<ExitCode> {
    let mut list: Vec<u16> = Vec::new();
    for p in ports.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        list.push(p.parse().with_context(|| format!("bad port {p:?}"))?);
    }
    if list.is_empty() {
        list.push(8080);
    }
    crate::gateway::runtime()?.block_on(async {
        let mut servers = Vec::new();
        for port in list {
            let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
            let e = gateway::echo::start(addr, namespace, pod)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            servers.push(e);
        }
        eprintln!("pod {namespace}/{pod} on {node}: echo on {} port(s)", servers.len());
        println!("ready");
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        Ok(ExitCode::SUCCESS)
    })
}
