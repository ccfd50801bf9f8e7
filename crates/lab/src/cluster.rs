//! The lab supervisor: builds the topology, plays the API server (schedules pods, assigns
//! cluster IPs and node ports, publishes Pod objects), runs one `trellis agent` per node and
//! one workload per pod, and follows manifest changes until it is told to stop.
//!
//! Topology (all namespaces named `<prefix>…`, `trellis-` by default):
//!
//! ```text
//!   client (10.10.30.100) ──┐
//!   node-1 (10.10.30.11) ───┤ br0 in <prefix>lan (10.10.30.0/24)
//!   node-N (10.10.30.1N) ───┘
//!   node-i: pods in 10.69.i.0/24 behind lxc… veths (trellis-cni), routes to the other nodes'
//!           pod CIDRs via their LAN addresses (native routing, no encapsulation)
//! ```

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;

use anyhow::{Context, Result, anyhow, bail};
use ipnet::Ipv4Net;

pub use fabric::agent::AgentConfig;

use crate::netns;
use crate::schedule::{self, PodPlan};
use crate::state::{
    ASSIGNMENTS_FILE, ClientState, EtcdMember, LabState, NodeState, PODS_FILE, PodState,
    ScalingRow, ServiceRow, read_assignments, write_assignments, write_file,
};

/// The lab's address plan (the seed's: LAN 10.10.30.0/24, pods 10.69.0.0/16, services
/// 10.96.0.0/12).
pub const LAN_CIDR: &str = "10.10.30.0/24";
pub const NODE_HOST_FIRST: u8 = 11;
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 30, 100);
/// Nothing answers here: the nodes' default route, so proxy ARP has a route to answer for.
pub const LAN_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 10, 30, 1);
pub const CLUSTER_CIDR: &str = "10.69.0.0/16";
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
/// Each agent serves Hubble's Observer API on its node's LAN address at this port (Hubble's).
pub const OBSERVE_PORT: u16 = 4244;
/// The nodes' LAN MTU: room for DSR's outer header on top of the client's 1500.
pub const NODE_LAN_MTU: u32 = 1600;
/// More nodes than this is not a lab any more.
pub const NODES_MAX: usize = 9;
/// The isolated networks of the seed's home lab that pods join with Multus attachments: VLANs
/// on one trunk bridge (see `vlan_trunk`), every node's `parent` interface on its VLAN and a
/// device namespace (`<prefix><name>`, `trellis lab exec <name>`) at the router address on an
/// access port, answering HTTP on port 80. The parents and addresses are the corpus
/// NetworkAttachmentDefinitions'; the VLAN ids are the third octets of their subnets.
pub const VLANS: &[Vlan] = &[
    Vlan {
        name: "vpn",
        id: 31,
        parent: "eth1",
        router: Ipv4Addr::new(10, 10, 31, 1),
    },
    Vlan {
        name: "not",
        id: 32,
        parent: "eth2",
        router: Ipv4Addr::new(10, 10, 32, 1),
    },
    Vlan {
        name: "iot",
        id: 33,
        parent: "eth3",
        router: Ipv4Addr::new(10, 10, 33, 1),
    },
    Vlan {
        name: "trust",
        id: 10,
        parent: "eth4",
        router: Ipv4Addr::new(10, 10, 10, 1),
    },
];
/// The prefix length of every [`VLANS`] network.
pub const VLAN_PREFIX_LEN: u8 = 24;
/// The port the VLAN devices answer HTTP on.
pub const VLAN_DEVICE_PORT: u16 = 80;

/// One of [`VLANS`].
#[derive(Clone, Copy, Debug)]
pub struct Vlan {
    pub name: &'static str,
    pub id: u16,
    pub parent: &'static str,
    /// The router's (and the device's) address on it.
    pub router: Ipv4Addr,
}

/// The sub-directory of the state dir whose manifests the lab publishes (Pod objects).
pub const CLUSTER_DIR: &str = "cluster";

/// How to build a lab.
#[derive(Clone, Debug)]
pub struct LabConfig {
    /// "" for the default lab (`trellis-…` names); tests use unique names.
    pub name: String,
    pub manifests: Vec<PathBuf>,
    pub options: store::Options,
    pub nodes: usize,
    pub state_dir: PathBuf,
    /// The trellis binary (agents and workloads run it).
    pub trellis_bin: PathBuf,
    /// The CNI plugin binary.
    pub cni_bin: PathBuf,
    /// `snat`, `dsr` (the corpus's Cilium setting) or `hybrid`.
    pub load_balancer_mode: String,
    /// The Flux variables file, handed to the gateways' proxies.
    pub vars: Option<PathBuf>,
    /// Agents serve the datapath's flows (Hubble's API on each node, port 4244).
    pub flows: bool,
    /// toFQDNs: the shortest time an answered address stays open (the agents' default when
    /// `None`).
    pub fqdn_min_ttl_s: Option<u64>,
    /// Where the nodes share state.
    pub sharing: Sharing,
}

/// Where a lab's nodes share state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sharing {
    /// This machine's files: the supervisor's assignments.json, the lease files.
    #[default]
    Embedded,
    /// The state seam's file backend (`<state>/shared`): the supervisor publishes the
    /// objects there and the agents assign and elect there, as on etcd.
    File,
    /// A 3-member etcd on the LAN (one member per node, the first three nodes).
    Etcd,
}

/// Under the lab's state directory: the file backend's directory (`--state file`).
pub const SHARED_DIR: &str = "shared";

impl LabConfig {
    pub fn prefix(&self) -> String {
        prefix_of(&self.name)
    }
}

pub fn prefix_of(name: &str) -> String {
    if name.is_empty() {
        "trellis-".into()
    } else {
        format!("trellis-{name}-")
    }
}

/// What the supervisor's main loop reacts to.
enum Event {
    Manifests(std::sync::Arc<store::Load>),
    /// A ScaledObject's decision (from the scaler's thread).
    Scaled(Box<(health::scaler::Scaled, health::scaler::Report)>),
    Stop,
}

/// What each agent last reported applied: `synced N` on its stdout, N being the generation of
/// the published objects (a ConfigMap the lab writes with them).
#[derive(Default)]
struct Synced {
    by_node: std::sync::Mutex<BTreeMap<String, u64>>,
    changed: std::sync::Condvar,
}

/// How long a reconcile waits for every agent to apply the new objects.
pub const AGENT_SYNC_MAX: std::time::Duration = std::time::Duration::from_secs(30);
/// The ConfigMap carrying the generation of the lab's published objects.
pub const GENERATION_CONFIGMAP: (&str, &str) = ("kube-system", "trellis-lab");

struct Running {
    state: LabState,
    /// The LoadBalancer Services Envoy Gateway would create for the Gateways, published with
    /// the pods (their proxies run as lab pods).
    gateway_services: Vec<serde_json::Value>,
    synced: std::sync::Arc<Synced>,
    generation: u64,
    agents: BTreeMap<String, Child>,
    workloads: BTreeMap<(String, String), Child>,
    assignments: fabric::Assignments,
    /// The lab's etcd, where the objects are published and the assignments kept
    /// (`--state etcd`); none: files on this machine.
    shared: Option<crate::shared::Shared>,
    /// The manifests the pods were last made to match.
    snapshot: std::sync::Arc<store::Load>,
    /// Replica counts the scaler set (they win over the Deployments' own).
    scaled: schedule::Replicas,
    /// The scaler's thread takes each new set of ScaledObjects here.
    scaler: Option<mpsc::Sender<ScalerInput>>,
    /// Per ScaledObject: the target to give back its own count when the ScaledObject goes
    /// (`restoreToOriginalReplicaCount`), or `None` to keep the scaled count.
    scaled_restore: BTreeMap<String, Option<(String, String)>>,
}

/// What the scaler's thread needs of a manifest change: the ScaledObjects, and the replica
/// count each one's target has now (where a new one starts from).
type ScalerInput = (Vec<health::scaler::Scaled>, BTreeMap<String, u32>);

/// Runs the lab until SIGTERM/SIGINT, then tears everything down. Writes `ready` on stdout
/// once the lab is up (what `lab up` waits for).
pub fn supervise(cfg: &LabConfig) -> Result<()> {
    // Before anything is built: over a corrupt file, the lab would hand every Service a new
    // address and overwrite the old ones.
    let assignments = prior_assignments(&cfg.state_dir)?;
    // Signals are taken by a thread with sigwait, so block them before any thread starts.
    let mut signals = nix::sys::signal::SigSet::empty();
    signals.add(nix::sys::signal::Signal::SIGTERM);
    signals.add(nix::sys::signal::Signal::SIGINT);
    signals.thread_block().context("blocking signals")?;
    let (tx, rx) = mpsc::channel::<Event>();
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            if signals.wait().is_ok() {
                let _ = tx.send(Event::Stop);
            }
        });
    }

    if cfg.nodes == 0 || cfg.nodes > NODES_MAX {
        bail!("--nodes must be 1..={NODES_MAX}");
    }
    std::fs::create_dir_all(cfg.state_dir.join(CLUSTER_DIR))
        .with_context(|| format!("creating {}", cfg.state_dir.display()))?;
    let mut run = Running {
        state: initial_state(cfg),
        gateway_services: Vec::new(),
        synced: Default::default(),
        generation: 0,
        agents: BTreeMap::new(),
        workloads: BTreeMap::new(),
        assignments,
        shared: None,
        snapshot: Default::default(),
        scaled: schedule::Replicas::new(),
        scaler: None,
        scaled_restore: BTreeMap::new(),
    };
    run.state.write(&cfg.state_dir)?;
    let result = bring_up(cfg, &mut run, &tx);
    match result {
        Ok(()) => {
            println!("ready");
            let _ = std::io::stdout().flush();
            while let Ok(ev) = rx.recv() {
                match ev {
                    Event::Stop => break,
                    Event::Manifests(load) => {
                        run.snapshot = load.clone();
                        forget_gone_scaled(&mut run);
                        if let Err(e) = reconcile(cfg, &mut run, &load.snapshot) {
                            eprintln!("reconcile: {e:#}");
                        }
                        feed_scaler(&run);
                    }
                    Event::Scaled(d) => {
                        let (scaled, report) = *d;
                        if let Err(e) = apply_scaled(cfg, &mut run, &scaled, &report) {
                            eprintln!("scale {}: {e:#}", scaled.key());
                        }
                    }
                }
            }
            teardown(cfg, &mut run);
            Ok(())
        }
        Err(e) => {
            teardown(cfg, &mut run);
            Err(e)
        }
    }
}

fn initial_state(cfg: &LabConfig) -> LabState {
    let prefix = cfg.prefix();
    let lan: Ipv4Net = LAN_CIDR.parse().expect("constant CIDR");
    let nodes = (1..=cfg.nodes)
        .map(|i| {
            let netns = format!("{prefix}node-{i}");
            NodeState {
                name: format!("node-{i}"),
                lan_ip: Ipv4Addr::new(10, 10, 30, NODE_HOST_FIRST + (i as u8) - 1),
                pod_cidr: Ipv4Net::new(Ipv4Addr::new(10, 69, i as u8, 0), 24)
                    .expect("constant prefix"),
                pin_dir: datapath_pin_dir(&netns),
                netns,
                agent_pid: None,
            }
        })
        .collect();
    LabState {
        name: cfg.name.clone(),
        prefix: prefix.clone(),
        manifests: cfg.manifests.clone(),
        supervisor_pid: std::process::id(),
        lan_netns: format!("{prefix}lan"),
        lan_cidr: lan,
        client: ClientState {
            netns: format!("{prefix}client"),
            ip: CLIENT_IP,
        },
        nodes,
        pods: Vec::new(),
        services: Vec::new(),
        scaling: Vec::new(),
        etcd: Vec::new(),
        shared: None,
        ready: false,
    }
}

/// Where a node's maps and programs are pinned.
pub fn datapath_pin_dir(node_netns: &str) -> PathBuf {
    Path::new("/sys/fs/bpf/trellis").join(node_netns)
}

fn bring_up(cfg: &LabConfig, run: &mut Running, tx: &mpsc::Sender<Event>) -> Result<()> {
    build_network(&run.state)?;
    start_vlan_devices(cfg, run)?;
    let cluster_dir = cfg.state_dir.join(CLUSTER_DIR);
    let location = match cfg.sharing {
        Sharing::Embedded => None,
        Sharing::File => Some(store::state::Location::File(cfg.state_dir.join(SHARED_DIR))),
        Sharing::Etcd => {
            start_etcd(cfg, run)?;
            Some(store::state::Location::Etcd(
                run.state.etcd.iter().map(|m| m.client.clone()).collect(),
            ))
        }
    };
    if let Some(location) = location {
        run.state.shared = Some(location.to_string());
        run.shared = Some(crate::shared::Shared::start(
            &run.state.client.netns,
            location,
        )?);
    }
    write_pods(&cfg.state_dir, &[], 0)?;
    let first = store::load(&cfg.manifests, &cfg.options);
    if let Some(shared) = &run.shared {
        // The agents read the first generation there, and assign from it themselves.
        run.assignments = shared.publish_and_assign(
            &cluster_roots(cfg, &cluster_dir),
            &cfg.options,
            SERVICE_CIDR.parse().expect("constant CIDR"),
        )?;
    } else {
        run.assignments = fabric::assign(
            &first.snapshot,
            &run.assignments,
            SERVICE_CIDR.parse().expect("constant CIDR"),
            fabric::assign::NODE_PORT_RANGE_DEFAULT,
        );
        write_assignments(&cfg.state_dir.join(ASSIGNMENTS_FILE), &run.assignments)?;
    }
    for i in 0..run.state.nodes.len() {
        let node = run.state.nodes[i].clone();
        let child = start_agent(cfg, &run.state, &node, &cluster_dir, run.synced.clone())?;
        run.state.nodes[i].agent_pid = Some(child.id());
        run.agents.insert(node.name.clone(), child);
    }
    run.state.write(&cfg.state_dir)?;
    run.snapshot = std::sync::Arc::new(first);
    let first = run.snapshot.clone();
    reconcile(cfg, run, &first.snapshot)?;
    run.state.ready = true;
    run.state.write(&cfg.state_dir)?;
    run.scaler = Some(start_scaler(tx.clone())?);
    feed_scaler(run);
    // From now on, follow the user's manifests. The watch moves into the thread that forwards
    // its updates (dropping it would stop watching).
    let watch = store::watch::Watch::start(cfg.manifests.clone(), cfg.options.clone())
        .context("watching the manifests")?;
    let forward = tx.clone();
    std::thread::spawn(move || {
        let watch = watch;
        while let Ok(u) = watch.updates.recv() {
            if let store::watch::Update::Applied(load) = u
                && forward.send(Event::Manifests(load)).is_err()
            {
                break;
            }
        }
    });
    Ok(())
}

/// etcd's client and peer ports on a node's LAN address.
const ETCD_CLIENT_PORT: u16 = 2379;
const ETCD_PEER_PORT: u16 = 2380;
/// How long the etcd cluster may take to elect a leader and answer.
const ETCD_READY_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// Starts one etcd member in each of the first three nodes' namespaces, on their LAN
/// addresses, and waits until the cluster answers (`etcdctl endpoint health` from a node).
/// The members die with their namespaces (`lab down`).
fn start_etcd(cfg: &LabConfig, run: &mut Running) -> Result<()> {
    let members: Vec<NodeState> = run.state.nodes.iter().take(3).cloned().collect();
    let initial: Vec<String> = members
        .iter()
        .map(|n| format!("{}=http://{}:{ETCD_PEER_PORT}", n.name, n.lan_ip))
        .collect();
    for n in &members {
        let client = format!("{}:{ETCD_CLIENT_PORT}", n.lan_ip);
        let log = log_file(cfg, &format!("etcd-{}", n.name))?;
        let child = netns::command_in(&n.netns, "etcd")
            .args([
                &format!("--name={}", n.name),
                &format!(
                    "--data-dir={}",
                    cfg.state_dir.join("etcd").join(&n.name).display()
                ),
                &format!("--listen-client-urls=http://{client}"),
                &format!("--advertise-client-urls=http://{client}"),
                &format!("--listen-peer-urls=http://{}:{ETCD_PEER_PORT}", n.lan_ip),
                &format!(
                    "--initial-advertise-peer-urls=http://{}:{ETCD_PEER_PORT}",
                    n.lan_ip
                ),
                &format!("--initial-cluster={}", initial.join(",")),
                "--initial-cluster-state=new",
                &format!("--initial-cluster-token={}etcd", cfg.prefix()),
                // Slower heartbeats than etcd's defaults (100 ms / 1 s): the lab shares two
                // cores with everything else, and a busy member missing heartbeats would set
                // off elections, each of which extends every lease.
                "--heartbeat-interval=300",
                "--election-timeout=3000",
                "--log-level=warn",
                "--logger=zap",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!("starting etcd on {} (apt-get install etcd-server)", n.name)
            })?;
        run.state.etcd.push(EtcdMember {
            node: n.name.clone(),
            client,
            pid: child.id(),
        });
    }
    let endpoints: Vec<String> = run.state.etcd.iter().map(|m| m.client.clone()).collect();
    let deadline = std::time::Instant::now() + ETCD_READY_MAX;
    loop {
        let ok = netns::command_in(&members[0].netns, "etcdctl")
            .args(["--endpoints", &endpoints.join(","), "endpoint", "health"])
            .env("ETCDCTL_API", "3")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            bail!(
                "the lab's etcd did not answer within {ETCD_READY_MAX:?} (logs: {})",
                cfg.state_dir.join("logs").display()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

fn build_network(s: &LabState) -> Result<()> {
    let lan = &s.lan_netns;
    netns::add(lan)?;
    netns::ip_in(lan, &["link", "add", "br0", "type", "bridge"])?;
    netns::ip_in(lan, &["link", "set", "br0", "up"])?;
    let prefix_len = s.lan_cidr.prefix_len();
    // Nodes' LAN links carry DSR's IP-in-IP (20 bytes more than the client's 1500).
    let attach = |ns: &str, port: &str, ip: Ipv4Addr, mtu: u32| -> Result<()> {
        netns::add(ns)?;
        let mtu = mtu.to_string();
        netns::ip_in(
            lan,
            &[
                "link", "add", port, "mtu", &mtu, "type", "veth", "peer", "name", "eth0", "mtu",
                &mtu, "netns", ns,
            ],
        )?;
        netns::ip_in(lan, &["link", "set", port, "master", "br0", "up"])?;
        netns::ip_in(
            ns,
            &["addr", "add", &format!("{ip}/{prefix_len}"), "dev", "eth0"],
        )?;
        netns::ip_in(ns, &["link", "set", "eth0", "up"])
    };
    attach(&s.client.netns, "client", s.client.ip, 1500)?;
    for (i, n) in s.nodes.iter().enumerate() {
        attach(&n.netns, &format!("node{}", i + 1), n.lan_ip, NODE_LAN_MTU)?;
        netns::sysctl_in(
            &n.netns,
            &[
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
                "net.ipv4.conf.eth0.rp_filter=0",
                "net.ipv4.conf.all.send_redirects=0",
                "net.ipv4.conf.eth0.send_redirects=0",
            ],
        )?;
        netns::ip_in(
            &n.netns,
            &["route", "add", "default", "via", &LAN_GATEWAY.to_string()],
        )?;
        // Services without backends are refused (ICMP unreachable), never black-holed.
        netns::ip_in(&n.netns, &["route", "add", "unreachable", SERVICE_CIDR])?;
        // autoDirectNodeRoutes: every other node's pod CIDR via its LAN address.
        for other in s.nodes.iter().filter(|o| o.name != n.name) {
            netns::ip_in(
                &n.netns,
                &[
                    "route",
                    "add",
                    &other.pod_cidr.to_string(),
                    "via",
                    &other.lan_ip.to_string(),
                ],
            )?;
        }
    }
    vlan_trunk(s)
}

/// The VLAN networks on one trunk, as a switch carries them: a bridge (namespace
/// `<prefix>trunk`) with a port per node (`n<i>`, the node's `trunk0`) and an access port per
/// device (`d<id>`, the device's `eth0`). 802.1Q tags are pushed and popped by tc programs
/// (`datapath::vlan`; this kernel has no VLAN devices): on a node, each VLAN's parent
/// (`eth1`…`eth4`, what the NADs name) is a veth whose peer (`vl<id>`) tags what the pods send
/// and hands it to `trunk0`, and `trunk0` hands each tagged frame to its VLAN's peer untagged;
/// a device's access port tags what the device sends and lets only its VLAN's frames out.
fn vlan_trunk(s: &LabState) -> Result<()> {
    let trunk = format!("{}trunk", s.prefix);
    netns::add(&trunk)?;
    netns::ip_in(&trunk, &["link", "add", "br0", "type", "bridge"])?;
    netns::ip_in(&trunk, &["link", "set", "br0", "up"])?;
    let mut device_ports = Vec::new();
    for v in VLANS {
        let device = format!("{}{}", s.prefix, v.name);
        let port = format!("d{}", v.id);
        netns::add(&device)?;
        netns::ip_in(
            &trunk,
            &[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &device,
            ],
        )?;
        netns::ip_in(&trunk, &["link", "set", &port, "master", "br0", "up"])?;
        let router = format!("{}/{VLAN_PREFIX_LEN}", v.router);
        netns::ip_in(&device, &["addr", "add", &router, "dev", "eth0"])?;
        netns::ip_in(&device, &["link", "set", "eth0", "up"])?;
        device_ports.push(datapath::vlan::Port::Access {
            iface: port,
            vid: v.id,
            redirect: None,
        });
    }
    netns::run_in(&trunk, || datapath::vlan::attach(&device_ports))?
        .with_context(|| format!("{trunk}: the devices' access ports"))?;
    for (i, n) in s.nodes.iter().enumerate() {
        let port = format!("n{}", i + 1);
        netns::ip_in(
            &trunk,
            &[
                "link", "add", &port, "type", "veth", "peer", "name", "trunk0", "netns", &n.netns,
            ],
        )?;
        netns::ip_in(&trunk, &["link", "set", &port, "master", "br0", "up"])?;
        netns::ip_in(&n.netns, &["link", "set", "trunk0", "up"])?;
        let mut ports = Vec::new();
        let mut vlans = Vec::new();
        for v in VLANS {
            let peer = format!("vl{}", v.id);
            netns::ip_in(
                &n.netns,
                &[
                    "link", "add", v.parent, "type", "veth", "peer", "name", &peer,
                ],
            )?;
            netns::ip_in(&n.netns, &["link", "set", &peer, "up"])?;
            netns::ip_in(&n.netns, &["link", "set", v.parent, "up"])?;
            ports.push(datapath::vlan::Port::Access {
                iface: peer.clone(),
                vid: v.id,
                redirect: Some("trunk0".into()),
            });
            vlans.push((v.id, peer));
        }
        ports.push(datapath::vlan::Port::Trunk {
            iface: "trunk0".into(),
            vlans,
        });
        netns::run_in(&n.netns, || datapath::vlan::attach(&ports))?
            .with_context(|| format!("{}: the node's VLAN ports", n.name))?;
    }
    Ok(())
}

/// Starts each VLAN device's HTTP echo (`trellis lab echo` in its namespace).
fn start_vlan_devices(cfg: &LabConfig, run: &mut Running) -> Result<()> {
    for v in VLANS {
        let device = format!("{}{}", run.state.prefix, v.name);
        let log = log_file(cfg, &format!("vlan-{}", v.name))?;
        let mut child = netns::command_in(&device, &cfg.trellis_bin.to_string_lossy())
            .args(["lab", "echo", "--pod", v.name, "--namespace", "vlan"])
            .args(["--node", v.name, "--ports", &VLAN_DEVICE_PORT.to_string()])
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting the {} device", v.name))?;
        drain(wait_ready(
            &mut child,
            &format!("the {} device", v.name),
            &cfg.state_dir,
        )?);
        run.workloads
            .insert(("vlan".into(), v.name.to_string()), child);
    }
    Ok(())
}

/// Under the lab's state directory: the agents' toFQDNs sockets (`<node>.sock`), the
/// directory `trellis dns --policy-agents` takes.
pub const FQDN_DIR: &str = "fqdn";

fn start_agent(
    cfg: &LabConfig,
    s: &LabState,
    node: &NodeState,
    cluster_dir: &Path,
    synced: std::sync::Arc<Synced>,
) -> Result<Child> {
    // With shared state the agents read the published generation and keep the assignments
    // there; on etcd nothing on this machine's disk is shared with them.
    let on_shared = s.shared.is_some();
    let manifests = if on_shared {
        Vec::new()
    } else {
        cluster_roots(cfg, cluster_dir)
    };
    let conf = AgentConfig {
        node: node.name.clone(),
        node_ips: s.nodes.iter().map(|n| (n.name.clone(), n.lan_ip)).collect(),
        pod_cidr: node.pod_cidr,
        cluster_cidr: CLUSTER_CIDR.parse().expect("constant CIDR"),
        lan_interface: "eth0".into(),
        pin_dir: node.pin_dir.clone(),
        manifests,
        assignments: (!on_shared).then(|| cfg.state_dir.join(ASSIGNMENTS_FILE)),
        service_cidr: Some(SERVICE_CIDR.parse().expect("constant CIDR")),
        masquerade: true,
        leases: Some(cfg.state_dir.join("leases")),
        node_labels: BTreeMap::from([
            ("kubernetes.io/hostname".to_string(), node.name.clone()),
            ("kubernetes.io/os".to_string(), "linux".to_string()),
        ]),
        load_balancer_mode: cfg.load_balancer_mode.clone(),
        observe_listen: cfg
            .flows
            .then(|| std::net::SocketAddr::from((node.lan_ip, OBSERVE_PORT))),
        fqdn_socket: Some(
            cfg.state_dir
                .join(FQDN_DIR)
                .join(format!("{}.sock", node.name)),
        ),
        fqdn_min_ttl_s: cfg.fqdn_min_ttl_s,
        state: s.shared.clone(),
        source: on_shared.then(|| "state".to_string()),
        cni_install: None,
        admin_listen: None,
    };
    let path = cfg.state_dir.join(format!("agent-{}.json", node.name));
    write_file(&path, &serde_json::to_vec_pretty(&conf)?)?;
    let log = log_file(cfg, &format!("agent-{}", node.name))?;
    let mut child = netns::command_in(&node.netns, &cfg.trellis_bin.to_string_lossy())
        .args(["agent", "--config"])
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting the agent of {}", node.name))?;
    let lines = wait_ready(
        &mut child,
        &format!("agent of {}", node.name),
        &cfg.state_dir,
    )?;
    let name = node.name.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if let Some(g) = line
                .strip_prefix("synced ")
                .and_then(|g| g.trim().parse::<u64>().ok())
            {
                if let Ok(mut m) = synced.by_node.lock() {
                    m.insert(name.clone(), g);
                }
                synced.changed.notify_all();
            }
        }
    });
    Ok(child)
}

fn log_file(cfg: &LabConfig, name: &str) -> Result<std::fs::File> {
    let dir = cfg.state_dir.join("logs");
    std::fs::create_dir_all(&dir)?;
    let p = dir.join(format!("{name}.log"));
    std::fs::File::create(&p).with_context(|| format!("creating {}", p.display()))
}

/// Reads the child's stdout until it says `ready` (it then keeps running) or ends (an error,
/// whose details are in its log). Returns the rest of its output.
fn wait_ready(
    child: &mut Child,
    what: &str,
    state_dir: &Path,
) -> Result<std::io::Lines<BufReader<std::process::ChildStdout>>> {
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("{what}: no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.trim() == "ready" => break,
            Some(Ok(_)) => continue,
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{what} exited before it was ready; see the logs in {}/logs",
                    state_dir.display()
                );
            }
        }
    }
    Ok(lines)
}

/// Keeps draining (and ignoring) a child's later output so it never blocks on a full pipe.
fn drain(lines: std::io::Lines<BufReader<std::process::ChildStdout>>) {
    std::thread::spawn(move || for _ in lines {});
}

/// The assignments a previous run of this lab left (none: a fresh lab). A file that does not
/// parse stops the supervisor with its path: it is the only record of the addresses clients
/// may already use, so it is neither ignored nor overwritten.
fn prior_assignments(state_dir: &Path) -> Result<fabric::Assignments> {
    let path = state_dir.join(ASSIGNMENTS_FILE);
    Ok(read_assignments(&path)
        .with_context(|| {
            format!(
                "refusing to start the lab over {}: repair it, or remove it to assign every \
                 address anew",
                path.display()
            )
        })?
        .unwrap_or_default())
}

/// Makes the running pods match the manifests, republishes Pod objects and service rows.
fn reconcile(cfg: &LabConfig, run: &mut Running, snapshot: &model::Snapshot) -> Result<()> {
    let _span = tracing::info_span!("reconcile", generation = run.generation + 1).entered();
    // With shared state the assignments are decided once the objects are published (below),
    // by the same update the agents run.
    if run.shared.is_none() {
        let previous = run.assignments.clone();
        run.assignments = fabric::assign(
            snapshot,
            &previous,
            SERVICE_CIDR.parse().expect("constant CIDR"),
            fabric::assign::NODE_PORT_RANGE_DEFAULT,
        );
        if run.assignments != previous {
            write_assignments(&cfg.state_dir.join(ASSIGNMENTS_FILE), &run.assignments)?;
        }
    }
    let node_names: Vec<String> = run.state.nodes.iter().map(|n| n.name.clone()).collect();
    let running: Vec<PodPlan> = run.state.pods.iter().map(|p| p.plan.clone()).collect();
    let (gateway_pods, gateway_services) = gateway_workloads(snapshot, &run.scaled);
    run.gateway_services = gateway_services;
    let want = schedule::desired_pods(snapshot, gateway_pods, &node_names, &running, &run.scaled);
    let want_keys: std::collections::BTreeSet<(String, String)> =
        want.iter().map(PodPlan::key).collect();
    // Stop pods no longer wanted (scale down, deleted, changed node).
    // Pods that failed to start hold nothing: they are tried again.
    run.state.pods.retain(|p| p.error.is_none());
    let (keep, gone): (Vec<PodState>, Vec<PodState>) = std::mem::take(&mut run.state.pods)
        .into_iter()
        .partition(|p| want_keys.contains(&p.plan.key()) && want.contains(&p.plan));
    run.state.pods = keep;
    for p in gone {
        stop_pod(cfg, run, &p);
    }
    for plan in want {
        if run.state.pods.iter().any(|p| p.plan.key() == plan.key()) {
            continue;
        }
        // One pod that cannot start (an attachment that does not resolve or fails) does not
        // keep the others from starting; it is listed with its error.
        let what = format!("pod {}/{}", plan.namespace, plan.name);
        let pod = start_pod(cfg, run, plan.clone(), snapshot).unwrap_or_else(|e| {
            eprintln!("{what}: {e:#}");
            PodState {
                plan,
                netns: String::new(),
                container_id: String::new(),
                ip: None,
                pid: None,
                ready: false,
                network_status: Vec::new(),
                error: Some(format!("{e:#}")),
            }
        });
        run.state.pods.push(pod);
    }
    run.state.pods.sort_by_key(|p| p.plan.key());
    run.generation += 1;
    let mut objects = run.state.pods_objects();
    objects.extend(run.gateway_services.iter().cloned());
    write_pods(&cfg.state_dir, &objects, run.generation)?;
    if let Some(shared) = &run.shared {
        run.assignments = shared.publish_and_assign(
            &cluster_roots(cfg, &cfg.state_dir.join(CLUSTER_DIR)),
            &cfg.options,
            SERVICE_CIDR.parse().expect("constant CIDR"),
        )?;
    }
    wait_synced(run)?;
    run.state.services = service_rows(cfg, &run.assignments);
    run.state.write(&cfg.state_dir)
}

impl LabState {
    fn pods_objects(&self) -> Vec<serde_json::Value> {
        self.pods
            .iter()
            .filter_map(|p| {
                let ip = p.ip?;
                let host = self.nodes.iter().find(|n| n.name == p.plan.node)?.lan_ip;
                Some(schedule::pod_object(
                    &p.plan,
                    &ip.to_string(),
                    &host.to_string(),
                    &p.network_status,
                ))
            })
            .collect()
    }
}

/// Waits until every agent applied the current generation (bounded by [`AGENT_SYNC_MAX`]).
fn wait_synced(run: &Running) -> Result<()> {
    let deadline = std::time::Instant::now() + AGENT_SYNC_MAX;
    let mut m = run
        .synced
        .by_node
        .lock()
        .map_err(|_| anyhow!("sync state poisoned"))?;
    loop {
        let behind: Vec<&str> = run
            .state
            .nodes
            .iter()
            .filter(|n| m.get(&n.name).copied().unwrap_or(0) < run.generation)
            .map(|n| n.name.as_str())
            .collect();
        if behind.is_empty() {
            return Ok(());
        }
        let now = std::time::Instant::now();
        if now >= deadline {
            bail!(
                "agents {} did not apply generation {} in time",
                behind.join(", "),
                run.generation
            );
        }
        m = run
            .synced
            .changed
            .wait_timeout(m, deadline - now)
            .map_err(|_| anyhow!("sync state poisoned"))?
            .0;
    }
}

/// A pod whose owner starts with this runs a Gateway's proxy (`Gateway/<namespace>/<name>`).
pub const GATEWAY_OWNER_PREFIX: &str = "Gateway/";

/// What Envoy Gateway would run for each Gateway trellis serves: one proxy pod, and the
/// LoadBalancer Service in front of it (named, labelled and annotated as LB-IPAM expects, so
/// the Gateway gets the address its manifests ask for, e.g. 10.10.30.25).
fn gateway_workloads(
    snapshot: &model::Snapshot,
    scaled: &schedule::Replicas,
) -> (Vec<PodPlan>, Vec<serde_json::Value>) {
    let mut pods = Vec::new();
    let mut services = Vec::new();
    for (req, _problems) in fabric::lbipam::gateway_requests(snapshot) {
        let Some(gateway) = req
            .labels
            .get(fabric::lbipam::OWNING_GATEWAY_NAME_LABEL)
            .cloned()
        else {
            continue;
        };
        let gw_ns = req
            .labels
            .get(fabric::lbipam::OWNING_GATEWAY_NAMESPACE_LABEL)
            .cloned()
            .unwrap_or_else(|| req.namespace.clone());
        let ports: Vec<serde_json::Value> = req
            .ports
            .iter()
            .map(|(port, proto)| {
                let protocol = if *proto == 17 { "UDP" } else { "TCP" };
                serde_json::json!({
                    "name": format!("{}-{port}", protocol.to_lowercase()),
                    "port": port,
                    "targetPort": port,
                    "protocol": protocol,
                })
            })
            .collect();
        let container_ports: Vec<serde_json::Value> = req
            .ports
            .iter()
            .map(|(port, proto)| {
                serde_json::json!({"containerPort": port, "protocol": if *proto == 17 { "UDP" } else { "TCP" }})
            })
            .collect();
        // Labels as written on the Service (without LB-IPAM's synthetic namespace/name keys).
        let labels: BTreeMap<String, String> = req
            .labels
            .iter()
            .filter(|(k, _)| !k.starts_with("io.kubernetes.service."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut annotations = serde_json::Map::new();
        if !req.requested.is_empty() {
            let ips: Vec<String> = req.requested.iter().map(ToString::to_string).collect();
            annotations.insert("lbipam.cilium.io/ips".into(), ips.join(",").into());
        }
        services.push(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": req.name,
                "namespace": req.namespace,
                "labels": labels,
                "annotations": annotations,
            },
            "spec": {
                "type": "LoadBalancer",
                "selector": req.selector,
                "ports": ports,
                "externalTrafficPolicy": if req.external_traffic_policy_local { "Local" } else { "Cluster" },
            },
        }));
        // One proxy unless a ScaledObject scales the Gateway's Deployment (named as the
        // Gateway, in its namespace).
        let replicas = scaled
            .get(&(gw_ns.clone(), gateway.clone()))
            .copied()
            .unwrap_or(1);
        for ordinal in 0..replicas {
            pods.push(PodPlan {
                namespace: req.namespace.clone(),
                name: match ordinal {
                    0 => format!("{}-proxy", req.name),
                    n => format!("{}-proxy-{n}", req.name),
                },
                owner: format!("{GATEWAY_OWNER_PREFIX}{gw_ns}/{gateway}"),
                ordinal,
                node: String::new(),
                labels: req.selector.clone(),
                annotations: BTreeMap::new(),
                spec: serde_json::json!({ "containers": [ { "name": "envoy", "image": "trellis", "ports": container_ports } ] }),
            });
        }
    }
    (pods, services)
}

/// The replica count a ScaledObject's target has by its own manifests: a Deployment's
/// `spec.replicas`, or 1 for a Gateway's proxy; `None` when the namespace has neither.
fn target_replicas(snapshot: &model::Snapshot, s: &health::scaler::Scaled) -> Option<u32> {
    if s.target_kind != "Deployment" {
        return None;
    }
    let key = (s.namespace.clone(), s.target.clone());
    if let Some(d) = snapshot.deployments.get(&key) {
        return Some(schedule::spec_replicas(
            &d.spec.spec.clone().unwrap_or_default(),
        ));
    }
    snapshot.gateways.contains_key(&key).then_some(1)
}

/// Runs the scaler (a task per ScaledObject, `health::scaler`) on a thread of its own; its
/// decisions come back as [`Event::Scaled`].
fn start_scaler(tx: mpsc::Sender<Event>) -> Result<mpsc::Sender<ScalerInput>> {
    let (input, rx) = mpsc::channel::<ScalerInput>();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("the scaler's runtime")?;
    std::thread::spawn(move || {
        let on_report: health::scaler::OnReport = std::sync::Arc::new(move |s, r| {
            let _ = tx.send(Event::Scaled(Box::new((s.clone(), r.clone()))));
        });
        let client = httpkit::Client::with_roots(Path::new(httpkit::CA_BUNDLE)).unwrap_or_default();
        runtime.block_on(async move {
            let mut scaler = health::scaler::Scaler::new(client, on_report);
            // The std channel is read off the runtime's thread, so tasks keep running.
            let (atx, mut arx) = tokio::sync::mpsc::unbounded_channel::<ScalerInput>();
            std::thread::spawn(move || {
                while let Ok(i) = rx.recv() {
                    if atx.send(i).is_err() {
                        break;
                    }
                }
            });
            while let Some((all, current)) = arx.recv().await {
                scaler.set(all, |s| current.get(&s.key()).copied().unwrap_or(1));
            }
        });
    });
    Ok(input)
}

/// Hands the scaler the ScaledObjects of the current manifests.
fn feed_scaler(run: &Running) {
    let Some(scaler) = &run.scaler else { return };
    let all = health::scaler::Scaled::all(&run.snapshot.snapshot);
    let current = all
        .iter()
        .map(|s| (s.key(), current_replicas(run, s).unwrap_or(1)))
        .collect();
    let _ = scaler.send((all, current));
}

/// The replicas a ScaledObject's target has now: what the scaler set, else its own.
fn current_replicas(run: &Running, s: &health::scaler::Scaled) -> Option<u32> {
    let own = target_replicas(&run.snapshot.snapshot, s)?;
    Some(
        run.scaled
            .get(&(s.namespace.clone(), s.target.clone()))
            .copied()
            .unwrap_or(own),
    )
}

/// A ScaledObject gone from the manifests: its row goes; its target goes back to its own
/// count when `restoreToOriginalReplicaCount` said so, else keeps the count it was scaled to
/// (KEDA's rule).
fn forget_gone_scaled(run: &mut Running) {
    let now: Vec<health::scaler::Scaled> = health::scaler::Scaled::all(&run.snapshot.snapshot);
    let gone: Vec<String> = run
        .state
        .scaling
        .iter()
        .map(|r| r.scaled_object.clone())
        .filter(|k| !now.iter().any(|s| &s.key() == k))
        .collect();
    for key in gone {
        run.state.scaling.retain(|r| r.scaled_object != key);
        if let Some(restore) = run.scaled_restore.remove(&key)
            && let Some(target) = restore
        {
            run.scaled.remove(&target);
        }
    }
}

/// Applies a ScaledObject's decision: its row in the lab's state, and the target's replicas
/// (the pods follow at once).
fn apply_scaled(
    cfg: &LabConfig,
    run: &mut Running,
    s: &health::scaler::Scaled,
    r: &health::scaler::Report,
) -> Result<()> {
    let target_key = (s.namespace.clone(), s.target.clone());
    let mut row = ScalingRow {
        scaled_object: s.key(),
        target: format!("{} {}/{}", s.target_kind, s.namespace, s.target),
        replicas: current_replicas(run, s),
        ready: r.ready,
        active: r.active,
        fallback: r.fallback,
        paused: r.paused,
        reason: r.reason.clone(),
    };
    let mut rescale = None;
    if row.replicas.is_none() {
        row.ready = false;
        row.reason = format!(
            "scaleTargetRef: no Deployment (or Gateway) {:?} in namespace {:?}; only Deployments are scaled",
            s.target, s.namespace
        );
    } else if let Some(n) = r.replicas.filter(|_| r.ready)
        && row.replicas != Some(n)
    {
        rescale = Some(n);
        row.replicas = Some(n);
    }
    run.scaled_restore
        .insert(s.key(), s.restores_original().then(|| target_key.clone()));
    let changed_row = run
        .state
        .scaling
        .iter()
        .find(|x| x.scaled_object == row.scaled_object)
        != Some(&row);
    if changed_row {
        eprintln!(
            "scale {} -> {}: {} ({})",
            row.scaled_object,
            row.target,
            row.replicas.map_or("-".into(), |n| n.to_string()),
            row.reason
        );
    }
    run.state
        .scaling
        .retain(|x| x.scaled_object != row.scaled_object);
    run.state.scaling.push(row);
    run.state
        .scaling
        .sort_by(|a, b| a.scaled_object.cmp(&b.scaled_object));
    match rescale {
        Some(n) => {
            run.scaled.insert(target_key, n);
            let load = run.snapshot.clone();
            reconcile(cfg, run, &load.snapshot)
        }
        None if changed_row => run.state.write(&cfg.state_dir),
        None => Ok(()),
    }
}

/// Publishes the Pod objects (and the generation ConfigMap) as a manifest file agents read.
fn write_pods(state_dir: &Path, pods: &[serde_json::Value], generation: u64) -> Result<()> {
    let mut text = String::from("# Pods the trellis lab runs (written by the lab; do not edit)\n");
    let marker = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": { "name": GENERATION_CONFIGMAP.1, "namespace": GENERATION_CONFIGMAP.0 },
        "data": { "generation": generation.to_string() },
    });
    for p in pods.iter().chain([&marker]) {
        text.push_str("---\n");
        text.push_str(&serde_json::to_string(p)?);
        text.push('\n');
    }
    write_file(
        &state_dir.join(CLUSTER_DIR).join(PODS_FILE),
        text.as_bytes(),
    )
}

/// The node's network configuration; `networks`: the pod's attachments (for ADD).
fn cni_config(cfg: &LabConfig, node: &NodeState, networks: &[cni::multus::Network]) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "trellis",
        "type": "trellis-cni",
        "podCIDR": node.pod_cidr.to_string(),
        "stateDir": cni_state_dir(cfg, node),
        "datapath": { "pinDir": node.pin_dir },
        "networks": networks,
        "clusterCIDRs": [CLUSTER_CIDR, SERVICE_CIDR],
    })
    .to_string()
}

fn cni_state_dir(cfg: &LabConfig, node: &NodeState) -> PathBuf {
    cfg.state_dir.join("cni").join(&node.name)
}

/// A pod's `k8s.v1.cni.cncf.io/networks` resolved against the NetworkAttachmentDefinitions.
fn pod_networks(plan: &PodPlan, snapshot: &model::Snapshot) -> Result<Vec<cni::multus::Network>> {
    cni::multus::pod_networks(
        &plan.namespace,
        &plan.name,
        &plan.annotations,
        &cni::multus::Defaults::default(),
        |ns, name| {
            model::snapshot::get(&snapshot.network_attachments, ns, name)
                .map(|o| o.spec.config.clone())
        },
    )
    .map_err(|e| anyhow!(e))
}

/// Runs the CNI plugin the way a container runtime does: env + config on stdin, in the node.
fn cni(
    cfg: &LabConfig,
    node: &NodeState,
    command: &str,
    container_id: &str,
    pod_netns: &str,
    networks: &[cni::multus::Network],
) -> Result<serde_json::Value> {
    let mut child = netns::command_in(&node.netns, &cfg.cni_bin.to_string_lossy())
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container_id)
        .env("CNI_NETNS", Path::new(netns::NETNS_DIR).join(pod_netns))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", cfg.cni_bin.display()))?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("CNI plugin stdin"))?
        .write_all(cni_config(cfg, node, networks).as_bytes())?;
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "CNI {command} for {container_id} on {}: {} {}",
            node.name,
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if text.trim().is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_str(&text).with_context(|| format!("CNI {command} result: {text}"))
}

fn start_pod(
    cfg: &LabConfig,
    run: &mut Running,
    plan: PodPlan,
    snapshot: &model::Snapshot,
) -> Result<PodState> {
    let node = run
        .state
        .nodes
        .iter()
        .find(|n| n.name == plan.node)
        .cloned()
        .ok_or_else(|| anyhow!("pod {} scheduled to unknown node {}", plan.name, plan.node))?;
    let pod_netns = format!("{}pod-{}-{}", run.state.prefix, plan.namespace, plan.name);
    let container_id = format!("{}-{}", plan.namespace, plan.name);
    let networks = pod_networks(&plan, snapshot)?;
    netns::add(&pod_netns)?;
    let mut pod = PodState {
        plan: plan.clone(),
        netns: pod_netns.clone(),
        container_id: container_id.clone(),
        ip: None,
        pid: None,
        ready: false,
        network_status: Vec::new(),
        error: None,
    };
    let result = match cni(cfg, &node, "ADD", &container_id, &pod_netns, &networks) {
        Ok(r) => r,
        Err(e) => {
            // ADD undid itself; the namespace is ours to remove.
            let _ = netns::delete(&pod_netns);
            return Err(e);
        }
    };
    pod.network_status = match cni::multus::read_record(&cni_state_dir(cfg, &node), &container_id) {
        Ok(Some(record)) => record.network_status,
        _ => cni::multus::network_status("trellis", &result, true),
    };
    let started = result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse::<Ipv4Addr>().ok())
        .ok_or_else(|| anyhow!("CNI ADD gave no address: {result}"))
        .and_then(|ip| {
            pod.ip = Some(ip);
            start_workload(cfg, &plan, &pod_netns)
        });
    match started {
        Ok(child) => {
            pod.pid = Some(child.id());
            pod.ready = true;
            run.workloads.insert(plan.key(), child);
            Ok(pod)
        }
        Err(e) => {
            // Nothing half-made stays behind: the next reconcile starts the pod anew.
            stop_pod(cfg, run, &pod);
            Err(e)
        }
    }
}

/// Starts the pod's workload in its namespace and waits until it says it is ready.
fn start_workload(cfg: &LabConfig, plan: &PodPlan, pod_netns: &str) -> Result<Child> {
    let ports: Vec<String> = plan
        .ports()
        .iter()
        .filter(|(_, _, proto)| proto == "TCP")
        .map(|(_, port, _)| port.to_string())
        .collect();
    let log = log_file(cfg, &format!("pod-{}-{}", plan.namespace, plan.name))?;
    let mut command = netns::command_in(pod_netns, &cfg.trellis_bin.to_string_lossy());
    if let Some(gateway) = plan.owner.strip_prefix(GATEWAY_OWNER_PREFIX) {
        // A Gateway's proxy: `trellis gateway`, as Envoy Gateway runs one Envoy per Gateway.
        command.args([
            "gateway",
            "--gateway",
            gateway,
            "--bind",
            "0.0.0.0",
            "--access-log",
            "off",
        ]);
        for root in cluster_roots(cfg, &cfg.state_dir.join(CLUSTER_DIR)) {
            command.arg("-f").arg(root);
        }
        if let Some(v) = &cfg.vars {
            command.arg("--vars").arg(v);
        }
    } else {
        command
            .args([
                "lab",
                "echo",
                "--pod",
                &plan.name,
                "--namespace",
                &plan.namespace,
            ])
            .args(["--node", &plan.node, "--ports", &ports.join(",")]);
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting the workload of {}", plan.name))?;
    drain(wait_ready(
        &mut child,
        &format!("pod {}/{}", plan.namespace, plan.name),
        &cfg.state_dir,
    )?);
    Ok(child)
}

fn stop_pod(cfg: &LabConfig, run: &mut Running, p: &PodState) {
    if let Some(mut child) = run.workloads.remove(&p.plan.key()) {
        let _ = child.kill();
        let _ = child.wait();
    }
    if let Some(node) = run.state.nodes.iter().find(|n| n.name == p.plan.node)
        && let Err(e) = cni(cfg, node, "DEL", &p.container_id, &p.netns, &[])
    {
        eprintln!("{e:#}");
    }
    if let Err(e) = netns::delete(&p.netns) {
        eprintln!("{e:#}");
    }
}

/// Stops every process and removes every namespace and pin of the lab.
fn teardown(cfg: &LabConfig, run: &mut Running) {
    for (_, mut c) in std::mem::take(&mut run.workloads) {
        let _ = c.kill();
        let _ = c.wait();
    }
    for (_, mut c) in std::mem::take(&mut run.agents) {
        let _ = c.kill();
        let _ = c.wait();
    }
    remove_everything(
        &run.state.prefix,
        &run.state
            .nodes
            .iter()
            .map(|n| n.pin_dir.clone())
            .collect::<Vec<_>>(),
    );
    let _ = std::fs::remove_dir_all(cfg.state_dir.join("cni"));
}

/// Deletes every namespace whose name starts with `prefix` (pods first, then nodes, client and
/// LAN) and the given pin directories. Works without a supervisor (after a crash).
pub fn remove_everything(prefix: &str, pins: &[PathBuf]) {
    let mut all = netns::list(prefix);
    // Pods before the nodes whose veths they hold.
    all.sort_by_key(|n| !n.starts_with(&format!("{prefix}pod-")));
    for ns in all {
        if let Err(e) = netns::delete(&ns) {
            eprintln!("{e:#}");
        }
    }
    for p in pins {
        let _ = std::fs::remove_dir_all(p);
    }
}

/// What the lab's components read: the lab's published objects first (a Pod the manifests
/// also define is served in its running form, with its address: the first definition wins),
/// then the user's manifests.
pub fn cluster_roots(cfg: &LabConfig, cluster_dir: &Path) -> Vec<PathBuf> {
    let mut roots = vec![cluster_dir.to_path_buf()];
    roots.extend(cfg.manifests.iter().cloned());
    roots
}

fn service_rows(cfg: &LabConfig, assignments: &fabric::Assignments) -> Vec<ServiceRow> {
    let roots = cluster_roots(cfg, &cfg.state_dir.join(CLUSTER_DIR));
    let load = store::load(&roots, &cfg.options);
    let s = &load.snapshot;
    let mut rows = Vec::new();
    for svc in s.services.values() {
        let Some(spec) = &svc.spec.spec else { continue };
        let (ns, name) = (svc.namespace(), svc.name());
        let type_ = spec.type_.clone().unwrap_or_else(|| "ClusterIP".into());
        let cluster_ip = spec
            .cluster_ip
            .as_deref()
            .and_then(|ip| ip.parse().ok())
            .or_else(|| assignments.cluster_ip(ns, name));
        let mut node_ports = Vec::new();
        let mut endpoints = Vec::new();
        for p in spec.ports.iter().flatten() {
            let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
            let np = p
                .node_port
                .and_then(|n| u16::try_from(n).ok())
                .or_else(|| assignments.node_port(ns, name, p.port as u16, &proto));
            if let Some(np) = np.filter(|_| type_ == "NodePort" || type_ == "LoadBalancer") {
                node_ports.push(format!("{}:{np}/{proto}", p.port));
            }
            for e in model::endpoints::service_endpoints(s, ns, name, p.port).unwrap_or_default() {
                if e.ready {
                    endpoints.push(format!("{}:{}", e.ip, e.port));
                }
            }
        }
        endpoints.sort();
        endpoints.dedup();
        let mut load_balancer: Vec<String> = svc
            .spec
            .status
            .as_ref()
            .and_then(|st| st.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip.clone())
            .collect();
        if load_balancer.is_empty() {
            load_balancer = assignments
                .load_balancer_ips(ns, name)
                .iter()
                .map(|ip| ip.to_string())
                .collect();
        }
        rows.push(ServiceRow {
            namespace: ns.into(),
            name: name.into(),
            type_,
            cluster_ip,
            node_ports,
            load_balancer,
            endpoints,
        });
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Before: the supervisor read a torn assignments.json as "nothing assigned yet", handed
    /// every Service a new address and wrote them over the file.
    #[test]
    fn the_supervisor_refuses_to_start_over_corrupt_assignments() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            prior_assignments(dir.path()).expect("a fresh lab"),
            fabric::Assignments::default()
        );
        let path = dir.path().join(ASSIGNMENTS_FILE);
        let torn = b"{\"services\": {\"apps/web\": {\"cluster_ip\": \"10.96.";
        std::fs::write(&path, torn).expect("tear");
        let err = format!("{:#}", prior_assignments(dir.path()).expect_err("refused"));
        assert!(err.contains("refusing to start"), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert_eq!(std::fs::read(&path).expect("read"), torn, "left as it was");
    }
}
