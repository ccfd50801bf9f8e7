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

#[derive(Debug, clap::Args)]
pub struct UpFlags {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Cilium's loadBalancer.mode for traffic from outside to a backend on another node:
    /// `dsr` (the corpus's setting: IP-in-IP to the backend's node, replies go direct),
    /// `snat`, or `hybrid` (DSR for TCP, SNAT for UDP).
    #[arg(long, default_value = "dsr", value_parser = ["dsr", "snat", "hybrid"])]
    pub lb_mode: String,
    /// Do not export the datapath's flows (no Hubble API on the nodes, no flow events).
    #[arg(long)]
    pub no_flows: bool,
    /// toFQDNs: the shortest time, in seconds, an address DNS answered stays open for the pod
    /// (the answer's TTL when longer; 60 when not given).
    #[arg(long, value_name = "SECONDS")]
    pub fqdn_min_ttl: Option<u64>,
    /// Where the nodes share state: `embedded` (files on this machine), `file` (the state
    /// seam's file backend under the lab's state directory) or `etcd` (a 3-member etcd
    /// cluster on the lab's LAN, one member per node). With `file` or `etcd` the supervisor
    /// publishes the objects there, and the agents register their nodes, claim their pod
    /// CIDRs, assign addresses and elect L2 holders there.
    #[arg(long, default_value = "embedded", value_parser = ["embedded", "file", "etcd"])]
    pub state: String,
}

#[derive(Debug, clap::Subcommand)]
pub enum LabCommand {
    /// Build the cluster and return once it is ready (a supervisor keeps running).
    Up {
        #[command(flatten)]
        source: SourceArgs,
        #[command(flatten)]
        lab: LabFlags,
        #[command(flatten)]
        up: UpFlags,
    },
    /// Bring up examples/home-lab, drive traffic from the LAN client and from pods, print what
    /// happened and where to look; Ctrl-C tears it down.
    Demo {
        /// The manifests (the example home lab unless given).
        #[arg(short = 'f', long = "filename", default_value = "examples/home-lab")]
        path: PathBuf,
        /// Flux variables (the example's vars.yaml unless given).
        #[arg(long, default_value = "examples/home-lab/vars.yaml")]
        vars: PathBuf,
        #[command(flatten)]
        lab: LabFlags,
        /// Tear down right after the traffic instead of waiting for Ctrl-C.
        #[arg(long)]
        no_wait: bool,
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
        /// Output format (`--json` is `-o json`).
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: crate::check::Output,
        #[arg(long, hide = true)]
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
    /// A TCP request/response load tool for `cargo xtask bench datapath` (netperf's TCP_RR and
    /// TCP_CRR: one byte each way, one transaction outstanding).
    #[command(hide = true)]
    Tcprr {
        #[command(subcommand)]
        role: TcprrRole,
    },
    /// Turns the datapath's flow events on or off on every node of the lab (until the agents'
    /// next sync), for `cargo xtask bench datapath` to measure flows on and off in one lab.
    #[command(hide = true)]
    Events {
        #[command(flatten)]
        lab: LabFlags,
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// DNS lookup latency for `cargo xtask bench fqdn`: asks SERVER for the A record of
    /// `<PREFIX><i>.<ZONE>`, i in FIRST..FIRST+COUNT, one at a time; prints
    /// `p50_us p99_us max_us errors`.
    #[command(hide = true)]
    Dnslat {
        server: SocketAddr,
        prefix: String,
        zone: String,
        #[arg(long, default_value_t = 1)]
        first: u32,
        #[arg(long, default_value_t = 100)]
        count: u32,
    },
    /// The writer of the crash test: COUNT read-modify-writes of an assignments file, each
    /// adding the Service `crash/svc-N` (N = how many there were), each followed by
    /// `acked N+1` on stdout once the write returned; then waits for stdin to close.
    #[command(hide = true)]
    WriteAssignments {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        count: usize,
    },
    /// The supervisor (started by `lab up`; not for direct use).
    #[command(hide = true)]
    Supervise {
        #[command(flatten)]
        source: SourceArgs,
        #[command(flatten)]
        lab: LabFlags,
        #[command(flatten)]
        up: UpFlags,
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
        bail!(
            "{} not found next to {} (build it: cargo build -p cni), or set {env}",
            name,
            me.display()
        );
    }
    Ok(p)
}

fn config(source: &SourceArgs, lab: &LabFlags, up: &UpFlags) -> Result<lab::LabConfig> {
    Ok(lab::LabConfig {
        name: lab.name.clone(),
        manifests: source
            .paths
            .iter()
            .map(|p| std::path::absolute(p).unwrap_or(p.clone()))
            .collect(),
        options: source.options()?,
        nodes: up.nodes,
        load_balancer_mode: up.lb_mode.clone(),
        vars: source
            .vars
            .as_ref()
            .map(|v| std::path::absolute(v).unwrap_or(v.clone())),
        flows: !up.no_flows,
        fqdn_min_ttl_s: up.fqdn_min_ttl,
        sharing: match up.state.as_str() {
            "etcd" => lab::cluster::Sharing::Etcd,
            "file" => lab::cluster::Sharing::File,
            _ => lab::cluster::Sharing::Embedded,
        },
        // Absolute: the CNI plugin and the agents run elsewhere (CNI requires it).
        state_dir: std::path::absolute(&lab.state_dir).unwrap_or(lab.state_dir.clone()),
        trellis_bin: std::env::current_exe().context("locating the trellis binary")?,
        cni_bin: sibling_binary("trellis-cni", "TRELLIS_CNI")?,
    })
}

#[derive(Debug, clap::Subcommand)]
pub enum TcprrRole {
    /// Echo one-byte messages on PORT (prints `ready` once listening).
    Server { port: u16 },
    /// Run transactions against ADDR for SECONDS; prints `transactions/s mean_us errors`.
    Client {
        addr: SocketAddr,
        /// `rr`: one connection; `crr`: a new connection per transaction.
        mode: String,
        seconds: f64,
    },
}

/// Upper bound of a dnslat run's lookups, whatever it is asked for.
const DNSLAT_COUNT_MAX: u32 = 100_000;

fn dnslat(
    server: SocketAddr,
    prefix: &str,
    zone: &str,
    first: u32,
    count: u32,
) -> Result<ExitCode> {
    let count = count.min(DNSLAT_COUNT_MAX);
    crate::gateway::runtime()?.block_on(async {
        let mut lat: Vec<u128> = Vec::with_capacity(count as usize);
        let mut errors = 0u32;
        for i in first..first.saturating_add(count) {
            let name = format!("{prefix}{i}.{zone}");
            let start = std::time::Instant::now();
            match dns::forward::lookup_a(server, &name, std::time::Duration::from_secs(2)).await {
                Ok(a) if !a.is_empty() => lat.push(start.elapsed().as_micros()),
                _ => errors += 1,
            }
        }
        lat.sort_unstable();
        let at = |q: f64| -> u128 {
            if lat.is_empty() {
                return 0;
            }
            lat[((lat.len() - 1) as f64 * q).round() as usize]
        };
        println!("{} {} {} {errors}", at(0.5), at(0.99), at(1.0));
        Ok(ExitCode::SUCCESS)
    })
}

/// Upper bound of a tcprr client run, whatever it is asked for.
const TCPRR_SECONDS_MAX: f64 = 60.0;

fn tcprr(role: &TcprrRole) -> Result<ExitCode> {
    use std::io::{Read as _, Write as _};
    match role {
        TcprrRole::Server { port } => crate::gateway::runtime()?.block_on(async {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let l = tokio::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, *port)).await?;
            println!("ready");
            let _ = std::io::Write::flush(&mut std::io::stdout());
            loop {
                let (mut c, _) = l.accept().await?;
                let _ = c.set_nodelay(true);
                tokio::spawn(async move {
                    let mut b = [0u8; 64];
                    while let Ok(n) = c.read(&mut b).await {
                        if n == 0 || c.write_all(&b[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        }),
        TcprrRole::Client {
            addr,
            mode,
            seconds,
        } => {
            let crr = match mode.as_str() {
                "rr" => false,
                "crr" => true,
                other => bail!("mode {other:?}: rr or crr"),
            };
            let dur = std::time::Duration::from_secs_f64(seconds.clamp(0.1, TCPRR_SECONDS_MAX));
            let dial = || -> std::io::Result<std::net::TcpStream> {
                let s =
                    std::net::TcpStream::connect_timeout(addr, std::time::Duration::from_secs(2))?;
                s.set_nodelay(true)?;
                Ok(s)
            };
            let start = std::time::Instant::now();
            let (mut n, mut errors) = (0u64, 0u64);
            let mut conn: Option<std::net::TcpStream> = None;
            let mut b = [b'x'];
            while start.elapsed() < dur {
                let mut s = match conn.take() {
                    Some(s) => s,
                    None => match dial() {
                        Ok(s) => s,
                        Err(_) => {
                            errors += 1;
                            continue;
                        }
                    },
                };
                if s.write_all(&b).is_err() || s.read_exact(&mut b).is_err() {
                    errors += 1;
                    continue;
                }
                n += 1;
                if !crr {
                    conn = Some(s);
                }
            }
            let secs = start.elapsed().as_secs_f64();
            println!(
                "{:.0} {:.2} {errors}",
                n as f64 / secs,
                secs * 1e6 / n.max(1) as f64
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub fn run(args: &Args) -> Result<ExitCode> {
    match &args.command {
        LabCommand::Up {
            source,
            lab,
            up: flags,
        } => {
            let state = up(source, lab, flags)?;
            print!("{}", lab::status_text(&state));
            eprintln!(
                "\nlab is up. Try: trellis lab exec client -- curl -s http://{}:<nodePort>/\n\
                 stop it with: trellis lab down{}",
                state
                    .nodes
                    .first()
                    .map(|n| n.lan_ip)
                    .unwrap_or(Ipv4Addr::UNSPECIFIED),
                name_flag(lab)
            );
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Demo {
            path,
            vars,
            lab,
            no_wait,
        } => demo(path, vars, lab, *no_wait),
        LabCommand::Supervise { source, lab, up } => {
            require_root()?;
            lab::supervise(&config(source, lab, up)?)?;
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Down { lab } => {
            require_root()?;
            lab::down(&lab.state_dir, &lab.name)?;
            eprintln!("lab down: namespaces, links, routes and BPF pins removed");
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Status { lab, output, json } => {
            use crate::check::Output;
            let state = lab::LabState::read(&lab.state_dir)?;
            match (output, json) {
                (_, true) | (Output::Json, _) => {
                    println!("{}", serde_json::to_string_pretty(&state)?)
                }
                (Output::Yaml, false) => print!("{}", serde_saphyr::to_string(&state)?),
                (Output::Table, false) => print!("{}", lab::status_text(&state)),
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Exec { lab, target, argv } => {
            let state = lab::LabState::read(&lab.state_dir)?;
            let status = lab::exec_command(&state, target, argv)?
                .status()
                .context("running the command")?;
            Ok(ExitCode::from(
                status.code().unwrap_or(1).clamp(0, 255) as u8
            ))
        }
        LabCommand::Echo {
            pod,
            namespace,
            node,
            ports,
        } => echo(pod, namespace, node, ports),
        LabCommand::Tcprr { role } => tcprr(role),
        LabCommand::Events { lab, state } => {
            let st = lab::LabState::read(&lab.state_dir)?;
            for n in &st.nodes {
                datapath::Maps::open(&n.pin_dir)
                    .and_then(|mut m| m.set_events(state == "on"))
                    .with_context(|| format!("node {}: flow events {state}", n.name))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Dnslat {
            server,
            prefix,
            zone,
            first,
            count,
        } => dnslat(*server, prefix, zone, *first, *count),
        LabCommand::WriteAssignments { file, count } => write_assignments(file, *count),
    }
}

/// Where the crash test's Service number `n` lives: 10.96.0.100 + n.
fn crash_service_ip(n: usize) -> Ipv4Addr {
    let first = u32::from(Ipv4Addr::new(10, 96, 0, 100));
    Ipv4Addr::from(first + u32::try_from(n).unwrap_or(u32::MAX - first))
}

/// `lab write-assignments`: the writer the crash test kills (see the subcommand's help).
fn write_assignments(file: &std::path::Path, count: usize) -> Result<ExitCode> {
    use std::io::{Read as _, Write as _};
    let mut out = std::io::stdout().lock();
    for _ in 0..count {
        let mut a = lab::state::read_assignments(file)?.unwrap_or_default();
        let n = a.services.len();
        a.services.insert(
            format!("crash/svc-{n}"),
            fabric::ServiceAssignment {
                cluster_ip: Some(crash_service_ip(n)),
                ..Default::default()
            },
        );
        lab::state::write_assignments(file, &a)?;
        writeln!(out, "acked {}", n + 1)?;
        out.flush()?;
    }
    // Stay until told (stdin closed), so a kill always meets a live process.
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    Ok(ExitCode::SUCCESS)
}

/// `lab up`: starts the supervisor and waits until the lab is ready.
fn up(source: &SourceArgs, lab: &LabFlags, flags: &UpFlags) -> Result<lab::LabState> {
    require_root()?;
    let cfg = config(source, lab, flags)?;
    let nodes = flags.nodes;
    let mut cmd = Command::new(&cfg.trellis_bin);
    cmd.arg("lab").arg("supervise");
    for p in &cfg.manifests {
        cmd.arg("-f").arg(p);
    }
    if let Some(v) = &source.vars {
        cmd.arg("--vars")
            .arg(std::path::absolute(v).unwrap_or(v.clone()));
    }
    cmd.arg("--state-dir")
        .arg(&lab.state_dir)
        .arg("--name")
        .arg(&lab.name);
    cmd.arg("--nodes")
        .arg(nodes.to_string())
        .arg("--lb-mode")
        .arg(&flags.lb_mode);
    if flags.no_flows {
        cmd.arg("--no-flows");
    }
    if let Some(t) = flags.fqdn_min_ttl {
        cmd.arg("--fqdn-min-ttl").arg(t.to_string());
    }
    cmd.arg("--state").arg(&flags.state);
    eprintln!(
        "building a {nodes}-node lab (state in {}) ...",
        lab.state_dir.display()
    );
    lab::up(&cfg, cmd)
}

/// The example's internal gateway address (its `lbipam.cilium.io/ips`).
const DEMO_GATEWAY_IP: &str = "10.10.30.25";

fn demo(
    path: &std::path::Path,
    vars: &std::path::Path,
    lab_flags: &LabFlags,
    no_wait: bool,
) -> Result<ExitCode> {
    if !path.exists() {
        bail!(
            "{} not found: run the demo from the repository root, or pass -f DIR",
            path.display()
        );
    }
    // Step 4's chain is started first: its ScaledObject names the Prometheus it reads.
    let scaling = DemoScaling::start(
        &lab_flags
            .state_dir
            .join(format!("demo-scaling-{}", std::process::id())),
    )?;
    let mut dirs = vec![path.to_path_buf()];
    dirs.extend(scaling.as_ref().map(|s| s.overlay.clone()));
    let source = SourceArgs::dirs(dirs, vars.exists().then(|| vars.to_path_buf()));
    let state = up(
        &source,
        lab_flags,
        &UpFlags {
            nodes: 3,
            lb_mode: "dsr".into(),
            no_flows: false,
            fqdn_min_ttl: None,
            state: "embedded".into(),
        },
    )?;
    // From here on, tear down whatever happens: the scaling chain first (its Prometheus
    // writes under the state directory), then the lab.
    struct Down<'a>(&'a LabFlags, Option<DemoScaling>);
    impl Drop for Down<'_> {
        fn drop(&mut self) {
            drop(self.1.take());
            eprintln!("\n==> tearing the lab down");
            if let Err(e) = lab::down(&self.0.state_dir, &self.0.name) {
                eprintln!("lab down: {e:#}");
            }
        }
    }
    let mut down = Down(lab_flags, scaling);
    println!(
        "\n==> 1. the lab: 3 nodes on a LAN bridge, pods behind trellis-cni and the eBPF datapath\n"
    );
    print!("{}", lab::status_text(&state));
    let run = |who: &str, argv: &[&str]| -> String {
        let argv: Vec<String> = argv.iter().map(|a| a.to_string()).collect();
        match lab::exec_command(&state, who, &argv).and_then(|mut c| Ok(c.output()?)) {
            Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
            Err(e) => format!("error: {e:#}"),
        }
    };
    let node_of = |pod: &str| {
        state
            .pods
            .iter()
            .find(|p| p.plan.name == pod)
            .map(|p| p.plan.node.clone())
            .unwrap_or_default()
    };
    let Some(first) = state.pods.first() else {
        bail!("the manifests run no pods");
    };
    let from = format!("{}/{}", first.plan.namespace, first.plan.name);
    let echo = state
        .services
        .iter()
        .find(|s| s.name == "echo" && s.cluster_ip.is_some());
    if let Some(svc) = echo {
        let ip = svc.cluster_ip.map(|i| i.to_string()).unwrap_or_default();
        println!(
            "\n==> 2. from pod {from} (on {}): six requests to Service echo at {ip} (ClusterIP, eBPF DNAT)\n",
            first.plan.node
        );
        for _ in 0..6 {
            let body = run(
                &from,
                &[
                    "curl",
                    "-s",
                    "--max-time",
                    "3",
                    &format!("http://{ip}/demo"),
                ],
            );
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let backend = v["backend"].as_str().unwrap_or("(no answer)");
            println!(
                "   answered by {backend:<16} on {:<7} (it saw the client as {})",
                node_of(backend),
                v["source"].as_str().unwrap_or("?")
            );
        }
    }
    // The internal gateway: its proxy runs as a pod, LB-IPAM gave its Service the address the
    // manifests ask for, and the node running the proxy announces it on the LAN.
    let holder = |ip: &str| {
        state.nodes.iter().find(|n| {
            lab::netns::command_in(&n.netns, "ip")
                .args(["-4", "-o", "addr", "show", "dev", "eth0"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("{ip}/32")))
        })
    };
    let announced = (0..100).find_map(|_| {
        let h = holder(DEMO_GATEWAY_IP);
        if h.is_none() {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        h
    });
    match announced {
        Some(n) => println!(
            "\n==> 3. from the LAN client (10.10.30.100): HTTPS to the internal gateway at {DEMO_GATEWAY_IP}\n   \
             (LB-IPAM address, announced by ARP from {} where its proxy pod runs)\n",
            n.name
        ),
        None => println!("\n==> 3. {DEMO_GATEWAY_IP} was not announced (see the agents' logs)\n"),
    }
    let host = "echo.home.example";
    for _ in 0..3 {
        let body = run(
            "client",
            &[
                "curl",
                "-sk",
                "--max-time",
                "3",
                "--resolve",
                &format!("{host}:443:{DEMO_GATEWAY_IP}"),
                &format!("https://{host}/from-the-lan"),
            ],
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        match v["backend"].as_str() {
            Some(backend) => println!(
                "   https://{host}/from-the-lan -> gateway -> {backend} on {}",
                node_of(backend)
            ),
            None => println!("   https://{host}/from-the-lan -> no answer ({body})"),
        }
    }
    match down.1.as_mut() {
        Some(scaling) => scaling.show(&lab_flags.state_dir),
        None => println!(
            "\n==> 4. scaling skipped: it needs Debian's prometheus (apt-get install prometheus)"
        ),
    }
    let name = name_flag(lab_flags);
    println!(
        "\n==> where to look\n   trellis lab status{name}                          nodes, pods, services\n   \
         trellis lab exec{name} client -- curl -s http://<node ip>:<nodePort>/\n   \
         trellis lab exec{name} node-1 -- tc filter show dev eth0 ingress   the eBPF programs\n   \
         trellis lab exec{name} client -- trellis observe --server 10.10.30.11:4244 --last 20   flows\n   \
         logs: {}/logs",
        lab_flags.state_dir.display()
    );
    if !no_wait {
        println!("\nThe lab stays up; press Ctrl-C to tear it down.");
        let mut signals = nix::sys::signal::SigSet::empty();
        signals.add(nix::sys::signal::Signal::SIGINT);
        signals.add(nix::sys::signal::Signal::SIGTERM);
        signals.thread_block().context("blocking signals")?;
        let _ = signals.wait();
    }
    Ok(ExitCode::SUCCESS)
}

/// The demo's scaling chain, as the seed runs it: `trellis health` probes an "external site"
/// (an echo server on loopback) every second as Gatus would, Debian's Prometheus scrapes its
/// Gatus metrics, and a ScaledObject on the internal Gateway's proxy reads the corpus's query
/// from that Prometheus through KEDA's prometheus trigger. Every process is killed and the
/// directory removed on drop.
struct DemoScaling {
    dir: PathBuf,
    overlay: PathBuf,
    site_port: u16,
    site: Option<std::process::Child>,
    others: Vec<std::process::Child>,
}

/// The corpus's query (apps/network/envoy-gateway/app/scaledobject.yaml).
const DEMO_SCALING_QUERY: &str = r#"1 - min(gatus_results_endpoint_success{group="external"})"#;
const DEMO_PROMETHEUS: &str = "/usr/bin/prometheus";
/// The longest the demo waits for the scaler to act.
const DEMO_SCALING_WAIT: std::time::Duration = std::time::Duration::from_secs(90);

impl Drop for DemoScaling {
    fn drop(&mut self) {
        for c in self.site.iter_mut().chain(self.others.iter_mut()) {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl DemoScaling {
    /// Starts the site, health and Prometheus, and writes the ScaledObject into an overlay
    /// directory for the lab's manifests. None when Prometheus is not installed.
    fn start(dir: &std::path::Path) -> Result<Option<DemoScaling>> {
        use std::io::BufRead as _;
        if !std::path::Path::new(DEMO_PROMETHEUS).exists() {
            return Ok(None);
        }
        let _ = std::fs::remove_dir_all(dir);
        let (probes, overlay) = (dir.join("probes"), dir.join("manifests"));
        std::fs::create_dir_all(&probes)?;
        std::fs::create_dir_all(&overlay)?;
        let mut me = DemoScaling {
            dir: dir.to_path_buf(),
            overlay,
            site_port: free_port()?,
            site: None,
            others: Vec::new(),
        };
        me.start_site()?;
        std::fs::write(
            probes.join("gatus.yaml"),
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: probes, namespace: demo, labels: {{gatus.io/enabled: 'true'}}}}\n\
                 data:\n  config.yaml: |\n    endpoints:\n      - {{name: site, group: external, url: 'http://127.0.0.1:{}/', interval: 1s, client: {{timeout: 1s}}, conditions: ['[STATUS] == 200']}}\n",
                me.site_port
            ),
        )?;
        let mut health = Command::new(std::env::current_exe()?)
            .args(["health", "-f"])
            .arg(&probes)
            .args(["--listen", "127.0.0.1:0"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("starting trellis health")?;
        let stderr = health.stderr.take().context("health's stderr")?;
        me.others.push(health);
        // Its address from its log (read on a thread of its own, so a health that says
        // nothing cannot hold the demo up past the bound).
        let (tx, said) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(a) = l
                    .split_once("metrics on http://")
                    .and_then(|(_, a)| a.strip_suffix("/metrics"))
                {
                    let _ = tx.send(a.to_string());
                }
            }
        });
        let metrics = said
            .recv_timeout(DEMO_SCALING_WAIT)
            .context("trellis health did not say where its metrics are")?;
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n  - job_name: gatus\n    static_configs: [{{targets: ['{metrics}']}}]\n"
            ),
        )?;
        let prometheus = format!("127.0.0.1:{}", free_port()?);
        me.others.push(
            Command::new(DEMO_PROMETHEUS)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("tsdb").display()
                ))
                .arg(format!("--web.listen-address={prometheus}"))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .context("starting prometheus")?,
        );
        // The corpus's ScaledObject for envoy-internal, but for the server address, a 1 s
        // poll and threshold 0.5: with the corpus's threshold 1 a failing probe asks for
        // ceil(1 / 1) = 1 replica, so it never scales (see the README's health section).
        std::fs::write(
            me.overlay.join("scaledobject.yaml"),
            format!(
                r#"apiVersion: keda.sh/v1alpha1
kind: ScaledObject
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
        query: {DEMO_SCALING_QUERY}
        threshold: "0.5"
"#
            ),
        )?;
        Ok(Some(me))
    }

    fn start_site(&mut self) -> Result<()> {
        self.site = Some(
            Command::new(std::env::current_exe()?)
                .args(["echo", "--listen", &format!("127.0.0.1:{}", self.site_port)])
                .args(["--name", "site", "--namespace", "demo"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .context("starting the demo's external site")?,
        );
        Ok(())
    }

    /// Step 4: the site stops, the proxy goes to two replicas; it comes back, one again.
    fn show(&mut self, state_dir: &std::path::Path) {
        println!(
            "\n==> 4. scaling from a failing probe: trellis health probes an external site every second,\n   \
             Prometheus scrapes it, and a ScaledObject on envoy-internal's proxy asks Prometheus for\n   \
             {DEMO_SCALING_QUERY}\n"
        );
        let proxies = |s: &lab::LabState| {
            let row = s
                .scaling
                .iter()
                .find(|r| r.scaled_object == "network/envoy-internal");
            let ready = s
                .pods
                .iter()
                .filter(|p| p.plan.owner == "Gateway/network/envoy-internal" && p.ready)
                .count();
            (
                row.and_then(|r| r.replicas),
                ready,
                row.map(|r| r.reason.clone()),
            )
        };
        let wait = |want: u32| -> Option<std::time::Duration> {
            let start = std::time::Instant::now();
            while start.elapsed() < DEMO_SCALING_WAIT {
                if let Ok(s) = lab::LabState::read(state_dir)
                    && let (Some(r), ready, _) = proxies(&s)
                    && r == want
                    && ready == want as usize
                {
                    return Some(start.elapsed());
                }
                std::thread::sleep(std::time::Duration::from_millis(250));
            }
            None
        };
        let said = |want: u32, what: &str| match wait(want) {
            Some(t) => println!(
                "   {what}: {want} proxy pod(s) ready after {:.1} s",
                t.as_secs_f64()
            ),
            None => {
                let why = lab::LabState::read(state_dir)
                    .map(|s| format!("{:?}", proxies(&s)))
                    .unwrap_or_else(|e| e.to_string());
                println!(
                    "   {what}: not {want} proxy pod(s) within {DEMO_SCALING_WAIT:?} (replicas, ready, reason: {why})"
                );
            }
        };
        said(1, "the site answers");
        if let Some(mut c) = self.site.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        println!("   the external site stops...");
        said(2, "the probe fails, the query reads 1");
        if let Err(e) = self.start_site() {
            println!("   cannot start the site again: {e:#}");
            return;
        }
        println!("   the site is back...");
        said(1, "after the 5 s stabilization window");
    }
}

fn name_flag(lab: &LabFlags) -> String {
    if lab.name.is_empty() {
        String::new()
    } else {
        format!(" --name {}", lab.name)
    }
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
        eprintln!(
            "pod {namespace}/{pod} on {node}: echo on {} port(s)",
            servers.len()
        );
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
