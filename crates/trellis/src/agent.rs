//! `trellis agent`: one node's agent. Loads the eBPF datapath (pinned under the node's pin
//! directory), attaches it to the LAN interface, and keeps the service maps equal to
//! `fabric::compile` of the manifests, applying each change by diff.
//!
//! Restart-safe: maps are pinned, so a new agent finds the connection-tracking entries and
//! the frontend and backend ids the previous one wrote, and established connections keep
//! their backends.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use datapath::NodeConfig;
use datapath::abi::{NODE_F_DSR, NODE_F_DSR_TCP_ONLY, NODE_F_MASQUERADE};
use fabric::agent::AgentConfig;
use fabric::lower::{Ids, desired, policy_desired};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The agent's configuration (JSON; the lab writes one per node).
    #[arg(long)]
    pub config: PathBuf,
    /// Serve Hubble's Observer API with the datapath's flows (new service connections,
    /// masquerade decisions, drops) here; overrides the configuration's `observe_listen`.
    #[arg(long)]
    pub observe_listen: Option<std::net::SocketAddr>,
    /// Serve the flow web UI (live flow table, service map) of the datapath's flows here.
    #[arg(long)]
    pub ui_listen: Option<std::net::SocketAddr>,
    /// The admin endpoint: /healthz, /ready (once the maps hold the first snapshot), /status
    /// (what is programmed, the last sync error), /metrics. Overrides the configuration's
    /// `admin_listen`.
    #[arg(long)]
    pub admin: Option<std::net::SocketAddr>,
}

/// Runs `start` on a current-thread runtime of a thread of its own and returns what it gives
/// once started; the runtime, and what `start` keeps (its second value) and left running on
/// it, live for the process's lifetime.
fn on_own_runtime<T, F, Fut>(name: &str, start: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(T, Box<dyn std::any::Any>)>>,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(anyhow::anyhow!("runtime: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                match start().await {
                    Ok((v, keep)) => {
                        let _ = tx.send(Ok(v));
                        let _keep = keep;
                        std::future::pending::<()>().await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        })?;
    rx.recv()
        .with_context(|| format!("the {name} thread ended"))?
        .with_context(|| format!("the {name} thread"))
}

/// Serves the agent's admin endpoint on a thread of its own; `doc` is its /status.
fn start_admin(
    addr: std::net::SocketAddr,
    doc: std::sync::Arc<gateway::admin::StatusDoc>,
    registry: prometheus_client::registry::Registry,
) -> Result<()> {
    let bound = on_own_runtime("admin", move || async move {
        let a = gateway::admin::start(addr, std::sync::Arc::new(registry), doc, None)
            .await
            .with_context(|| format!("cannot bind {addr}"))?;
        Ok((a, Box::new(()) as Box<dyn std::any::Any>))
    })?;
    eprintln!("admin on http://{bound}/status");
    Ok(())
}

/// Where an agent's assignments (cluster IPs, node ports, LB-IPAM addresses) come from.
enum Assigned {
    /// A file another process decides (the one-host lab's supervisor), as last read whole.
    File(lab::state::AssignmentsView),
    /// The state backend's one document, which this agent keeps up to date itself
    /// (`fabric::shared`) on its own runtime.
    Shared {
        rt: tokio::runtime::Runtime,
        backend: std::sync::Arc<dyn store::state::Backend>,
        service_cidr: ipnet::Ipv4Net,
        /// The assignments last read or written (none before the first).
        last: Option<fabric::Assignments>,
        /// The trouble last said (each is said once).
        said: Option<String>,
    },
}

impl Assigned {
    fn open(conf: &AgentConfig) -> Result<Assigned> {
        // Only agents that serve a published generation write the shared document: writers
        // must agree on what generation they compile, or one would drop Services another has.
        let state = match (&conf.assignments, &conf.state, conf.source.as_deref()) {
            (None, Some(state), Some("state")) => state,
            (file, _, _) => {
                return Ok(Assigned::File(lab::state::AssignmentsView::new(
                    file.clone(),
                )));
            }
        };
        let location: store::state::Location =
            state.parse().map_err(|e: String| anyhow::anyhow!(e))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let backend = rt
            .block_on(store::state::open(&location))
            .with_context(|| format!("opening the state backend {state}"))?;
        let service_cidr = match conf.service_cidr {
            Some(c) => c,
            None => fabric::assign::SERVICE_CIDR_DEFAULT
                .parse()
                .expect("constant CIDR"),
        };
        Ok(Assigned::Shared {
            rt,
            backend,
            service_cidr,
            last: None,
            said: None,
        })
    }

    /// Reads what there is before the first plan. A file that does not read stops the agent;
    /// a backend that does not answer is waited for (saying so once), because compiling
    /// without assignments would drop every Service that has no address in its manifests;
    /// the pinned maps keep what the previous agent programmed meanwhile.
    fn first(&mut self, snapshot: &model::Snapshot, generation: Option<u64>) -> Result<()> {
        match self {
            Assigned::File(view) => view.refresh().context("the assignments file"),
            Assigned::Shared { .. } => {
                while self.refresh(snapshot, generation).is_none() {
                    std::thread::sleep(std::time::Duration::from_secs(1));
                }
                Ok(())
            }
        }
    }

    /// The assignments for `snapshot` (of published `generation`, when the source has them).
    /// Whatever cannot be read is logged and the last good assignments are used, so no
    /// Service loses its address or drops out of the maps.
    fn refresh(
        &mut self,
        snapshot: &model::Snapshot,
        generation: Option<u64>,
    ) -> Option<&fabric::Assignments> {
        match self {
            Assigned::File(view) => {
                if let Err(e) = view.refresh() {
                    tracing::error!(
                        error = format!("{e:#}"),
                        "assignments not read; keeping the last good ones"
                    );
                }
                view.current()
            }
            Assigned::Shared {
                rt,
                backend,
                service_cidr,
                last,
                said,
            } => {
                let r = rt.block_on(fabric::shared::update(
                    backend.as_ref(),
                    snapshot,
                    generation.unwrap_or(0),
                    *service_cidr,
                    fabric::assign::NODE_PORT_RANGE_DEFAULT,
                ));
                match r {
                    Ok((a, outcome)) => {
                        if said.take().is_some() {
                            tracing::info!("state backend: assignments read again");
                        }
                        if outcome == fabric::shared::Outcome::Wrote {
                            tracing::info!(
                                generation,
                                services = a.services.len(),
                                "assignments written to the state backend"
                            );
                        }
                        *last = Some(a);
                    }
                    Err(e) => {
                        let what = e.to_string();
                        if said.as_deref() != Some(&what) {
                            tracing::warn!(error = %what, "state backend unavailable for the assignments; keeping the last good ones");
                            *said = Some(what);
                        }
                    }
                }
                last.as_ref()
            }
        }
    }
}

/// The policy rules of the plan last programmed, by the index the datapath reports in drops
/// and verdicts.
pub type RuleNames = std::sync::Arc<arc_swap::ArcSwap<Vec<fabric::policy::RuleRef>>>;

/// A rule's policy as Hubble names it in `*_allowed_by` and `*_denied_by`.
fn hubble_policy(r: &fabric::policy::RuleRef) -> observe::proto::flow::Policy {
    let mut labels = vec![
        format!("k8s:io.cilium.k8s.policy.derived-from={}", r.kind),
        format!("k8s:io.cilium.k8s.policy.name={}", r.name),
    ];
    if !r.namespace.is_empty() {
        labels.push(format!(
            "k8s:io.cilium.k8s.policy.namespace={}",
            r.namespace
        ));
    }
    observe::proto::flow::Policy {
        name: r.name.clone(),
        namespace: r.namespace.clone(),
        labels,
        revision: 0,
        kind: r.kind.to_string(),
    }
}

/// The direction of a policy decision (a drop by policy, or a connection let through: a
/// verdict), `None` for other events.
fn decision(ev: &datapath::FlowEvent) -> Option<observe::proto::flow::TrafficDirection> {
    use datapath::abi::{DROP_POLICY, EVENT_DROP, EVENT_POLICY_VERDICT, POINT_FROM_POD};
    use observe::proto::flow::TrafficDirection;
    let decided =
        (ev.kind == EVENT_DROP && ev.reason == DROP_POLICY) || ev.kind == EVENT_POLICY_VERDICT;
    decided.then_some(if ev.point == POINT_FROM_POD {
        TrafficDirection::Egress
    } else {
        TrafficDirection::Ingress
    })
}

/// The verdict of a datapath event.
fn verdict_of(ev: &datapath::FlowEvent) -> observe::proto::flow::Verdict {
    use observe::proto::flow::Verdict;
    if ev.kind == datapath::abi::EVENT_DROP {
        Verdict::Dropped
    } else if ev.translated.is_some() {
        Verdict::Translated
    } else {
        Verdict::Forwarded
    }
}

/// Turns a datapath event (seen at `time`; `rule`: the rule of a policy decision) into the
/// event observe makes a flow of.
fn packet_event(
    ev: &datapath::FlowEvent,
    time: std::time::SystemTime,
    rule: Option<&fabric::policy::RuleRef>,
) -> observe::packet::PacketEvent {
    use datapath::abi::{
        EVENT_DROP, EVENT_POLICY_VERDICT, POINT_FROM_NETDEV, POINT_FROM_POD, POINT_TO_POD,
        RULE_DEFAULT_DENY,
    };
    use observe::packet::{EventKind, L4};
    use observe::proto::flow::TraceObservationPoint as Point;
    let drop = ev.kind == EVENT_DROP;
    let direction = decision(ev);
    let decided = direction.is_some();
    let l4 = match ev.proto {
        6 => L4::Tcp {
            source_port: ev.sport,
            destination_port: ev.dport,
            flags: ev.tcp_flags,
        },
        17 => L4::Udp {
            source_port: ev.sport,
            destination_port: ev.dport,
        },
        // The datapath puts an ICMP message's type and code where the ports go.
        1 => L4::Icmp {
            r#type: u8::try_from(ev.sport).unwrap_or(u8::MAX),
            code: u8::try_from(ev.dport).unwrap_or(u8::MAX),
        },
        other => L4::Other(other),
    };
    observe::packet::PacketEvent {
        time,
        kind: if drop {
            EventKind::Drop
        } else if ev.kind == EVENT_POLICY_VERDICT {
            EventKind::PolicyVerdict
        } else {
            EventKind::Trace
        },
        source: std::net::IpAddr::V4(ev.saddr),
        destination: std::net::IpAddr::V4(ev.daddr),
        l4,
        verdict: verdict_of(ev),
        drop_reason: ev.reason,
        observation_point: match ev.point {
            POINT_FROM_POD => Point::FromEndpoint,
            POINT_TO_POD => Point::ToEndpoint,
            POINT_FROM_NETDEV => Point::FromNetwork,
            _ => Point::ToNetwork,
        },
        is_reply: Some(false),
        ifindex: ev.ifindex,
        ifname: String::new(),
        direction,
        peer_identity: ev.identity,
        denied_by: match (drop && decided, rule) {
            (false, _) => String::new(),
            (true, None) if ev.rule == RULE_DEFAULT_DENY => "default deny".to_string(),
            (true, None) => String::new(),
            (true, Some(r)) => r.to_string(),
        },
        policy: rule.map(hubble_policy),
        match_type: if decided { u32::from(ev.match_type) } else { 0 },
    }
}

/// Bytes of a datapath record before its rule: the wall-clock time in nanoseconds and the
/// event as the ring buffer held it.
const EVENT_RECORD_HEAD: usize = 8 + datapath::FlowEvent::SIZE;

/// The kinds of policy a rule can be of, as a record names them.
const POLICY_KINDS: [&str; 3] = [
    "NetworkPolicy",
    "CiliumNetworkPolicy",
    "CiliumClusterwideNetworkPolicy",
];

/// Writes a datapath record: the event, when it was seen, and the rule of a policy decision
/// (its names, so a reload between now and the read does not rename it).
fn write_event(
    out: &mut Vec<u8>,
    ev: &datapath::FlowEvent,
    wall_ns: u64,
    rule: Option<&fabric::policy::RuleRef>,
) {
    let mut w = observe::wire::Writer(out);
    w.u64(wall_ns);
    w.0.extend_from_slice(&ev.to_bytes());
    if let Some(r) = rule {
        w.str(r.kind).str(&r.namespace).str(&r.name).str(&r.path);
    }
}

/// Reads what [`write_event`] wrote.
fn read_event(
    b: &[u8],
) -> Option<(
    datapath::FlowEvent,
    std::time::SystemTime,
    Option<fabric::policy::RuleRef>,
)> {
    let (head, rest) = b.split_first_chunk::<EVENT_RECORD_HEAD>()?;
    let wall = u64::from_le_bytes(head[..8].try_into().ok()?);
    let ev = datapath::FlowEvent::from_bytes(&head[8..])?;
    let rule = if rest.is_empty() {
        None
    } else {
        let mut r = observe::wire::Reader::new(rest);
        let kind = r.str()?;
        Some(fabric::policy::RuleRef {
            kind: POLICY_KINDS.into_iter().find(|k| *k == kind)?,
            namespace: r.str()?.to_string(),
            name: r.str()?.to_string(),
            path: r.str()?.to_string(),
        })
    };
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(wall);
    Some((ev, time, rule))
}

/// The datapath's records: one per ring buffer event, made a flow only when read.
struct DatapathEvents {
    pods: std::sync::Arc<observe::endpoints::Endpoints>,
}

impl observe::RecordKind for DatapathEvents {
    fn build(&self, bytes: &[u8]) -> observe::proto::flow::Flow {
        match read_event(bytes) {
            Some((ev, time, rule)) => {
                observe::packet::flow(&packet_event(&ev, time, rule.as_ref()), &self.pods)
            }
            None => observe::proto::flow::Flow {
                summary: "unreadable datapath record".into(),
                ..Default::default()
            },
        }
    }

    fn count(&self, bytes: &[u8], m: &mut observe::metrics::Batch<'_>) {
        let Some(ev) = bytes
            .get(8..EVENT_RECORD_HEAD)
            .and_then(datapath::FlowEvent::from_bytes)
        else {
            return;
        };
        let verdict = verdict_of(&ev);
        let drop = ev.kind == datapath::abi::EVENT_DROP;
        let kind = if drop {
            "Drop"
        } else if ev.kind == datapath::abi::EVENT_POLICY_VERDICT {
            "PolicyVerdict"
        } else {
            "Trace"
        };
        m.processed(kind, "", verdict);
        if drop {
            let reason = i32::try_from(ev.reason)
                .ok()
                .and_then(|r| observe::proto::flow::DropReason::try_from(r).ok());
            m.dropped(
                reason.map_or("other", |r| r.as_str_name()),
                observe::metrics::proto_label(ev.proto),
            );
        }
        if let Some(d) = decision(&ev) {
            m.policy_verdict(d, u32::from(ev.match_type), verdict);
        }
    }
}

/// Converts CLOCK_MONOTONIC nanoseconds (the kernel's event times) to wall-clock time.
struct Clock {
    wall: std::time::SystemTime,
    mono_ns: u64,
}

impl Clock {
    fn now() -> Clock {
        let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
            .unwrap_or(0);
        Clock {
            wall: std::time::SystemTime::now(),
            mono_ns: mono,
        }
    }

    fn system_time(&self, mono_ns: u64) -> std::time::SystemTime {
        let back = std::time::Duration::from_nanos(self.mono_ns.saturating_sub(mono_ns));
        self.wall.checked_sub(back).unwrap_or(self.wall)
    }
}

/// Starts the observer API and UI (where asked) on their own runtime thread and a thread
/// that moves datapath records into the buffer.
fn start_observer(
    observe_listen: Option<std::net::SocketAddr>,
    ui_listen: Option<std::net::SocketAddr>,
    node: &str,
    pin_dir: &std::path::Path,
    pods: std::sync::Arc<observe::endpoints::Endpoints>,
    rules: RuleNames,
) -> Result<()> {
    let mut events = datapath::Events::open(pin_dir)?;
    let node = node.to_string();
    let flows = on_own_runtime("observer", move || async move {
        let obs = observe::Observer::start(&observe::Config {
            node_name: node,
            ..Default::default()
        });
        crate::observe::serve(&obs, observe_listen, ui_listen, None).await?;
        let flows = obs.flows();
        // The observer (and the server task) stays alive for the process's lifetime.
        Ok((flows, Box::new(obs) as Box<dyn std::any::Any>))
    })?;
    // What the programs could not queue (ring full) is counted in their stats; report it as
    // lost, as Hubble does for its perf ring.
    let counters = datapath::Maps::open(pin_dir)?;
    let lost_in_kernel = move || {
        counters
            .stats()
            .ok()
            .and_then(|s| s.iter().find(|(n, _)| *n == "events_lost").map(|(_, v)| *v))
            .unwrap_or(0)
    };
    std::thread::Builder::new()
        .name("datapath-events".into())
        .spawn(move || {
            let mut lost_reported = lost_in_kernel();
            let recorder = flows.recorder(DatapathEvents { pods });
            loop {
                events.wait(std::time::Duration::from_millis(
                    datapath::abi::EVENTS_DRAIN_MS,
                ));
                let clock = Clock::now();
                let names = rules.load();
                while let Some(ev) = events.next_event() {
                    let rule =
                        decision(&ev).and_then(|_| names.get(usize::try_from(ev.rule).ok()?));
                    let wall_ns = clock
                        .system_time(ev.time_ns)
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
                    recorder.record(|out| write_event(out, &ev, wall_ns, rule));
                }
                let lost = lost_in_kernel();
                if lost > lost_reported {
                    flows.lost(
                        observe::proto::flow::LostEventSource::PerfEventRingBuffer,
                        lost - lost_reported,
                    );
                    lost_reported = lost;
                }
            }
        })?;
    Ok(())
}

/// What a sync of the agent's maps covers.
#[derive(Clone, Copy)]
enum Update<'a> {
    /// Services, announcements and policy (manifests changed).
    Full,
    /// Policy only, compiled again (toFQDNs addresses expired, or could not be added).
    Policy,
    /// Entries added to the plan in place for a DNS answer (toFQDNs): written as they are.
    Added(&'a fabric::policy::Added),
}

/// What the agent's loop wakes for.
enum Msg {
    Watch(store::watch::Update),
    WatchEnded,
    /// A DNS answer for one of this node's pods (toFQDNs), or a question one of them asks
    /// (`rules.dns`).
    Answered(crate::fqdn::Request),
}

impl From<crate::fqdn::Request> for Msg {
    fn from(r: crate::fqdn::Request) -> Msg {
        Msg::Answered(r)
    }
}

/// Puts `trellis-cni` and this node's network configuration where the container runtime
/// looks (each file written whole: temp file, fsync, rename).
fn install_cni(conf: &AgentConfig, install: &fabric::agent::CniInstall) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let plugin = std::fs::read(&install.plugin)
        .with_context(|| format!("cannot read {}", install.plugin.display()))?;
    let bin = install.bin_dir.join("trellis-cni");
    store::durable::write(&bin, &plugin)
        .with_context(|| format!("cannot write {}", bin.display()))?;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))?;
    let net = cni::conf::NetConf {
        cni_version: "1.0.0".into(),
        name: "trellis".into(),
        plugin_type: "trellis-cni".into(),
        pod_cidr: ipnet::IpNet::V4(conf.pod_cidr),
        state_dir: install.state_dir.clone(),
        mtu: None,
        datapath: Some(cni::conf::Datapath {
            pin_dir: conf.pin_dir.clone(),
        }),
        ipam: None,
        prev_result: None,
        valid_attachments: None,
        networks: Vec::new(),
        cluster_cidrs: install.cluster_cidrs.clone(),
        agent_socket: install.agent_socket.clone(),
    };
    let file = install.conf_dir.join("05-trellis.conf");
    store::durable::write(&file, serde_json::to_string_pretty(&net)?.as_bytes())
        .with_context(|| format!("cannot write {}", file.display()))?;
    tracing::info!(plugin = %bin.display(), config = %file.display(), "CNI plugin installed");
    Ok(())
}

/// Connections to the CNI socket served at once (a node starts few pods at a time).
const CNI_CONNECTIONS_MAX: usize = 64;

/// Answers the CNI plugin on Kubernetes ([`cni::agent`]): a pod's attachments from its
/// annotation and the NADs in the API (waiting up to [`cni::agent::POD_WAIT`] for a pod the
/// watch has not brought yet), and its network-status written on the Pod. The socket is
/// mode 0600 (root's plugin is the only client).
fn serve_cni(
    socket: &std::path::Path,
    current: store::watch::Current,
    refused: prometheus_client::metrics::counter::Counter,
    defaults: cni::multus::Defaults,
) -> Result<()> {
    let defaults = std::sync::Arc::new(defaults);
    use std::io::{BufRead, Read as _, Write};
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(socket);
    let listener = std::os::unix::net::UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = rt
        .block_on(kube::Client::try_default())
        .context("the Kubernetes API (for pods' network-status)")?;
    let writer = std::sync::Arc::new(std::sync::Mutex::new((rt, client)));
    let open = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("cni-socket".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    continue;
                };
                if open.load(std::sync::atomic::Ordering::Relaxed) >= CNI_CONNECTIONS_MAX {
                    refused.inc();
                    tracing::warn!(
                        "CNI socket: {CNI_CONNECTIONS_MAX} connections open, refusing one"
                    );
                    continue;
                }
                open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (current, writer, open, defaults) = (
                    current.clone(),
                    writer.clone(),
                    open.clone(),
                    defaults.clone(),
                );
                std::thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(cni::agent::TIMEOUT));
                    let mut line = String::new();
                    let reply = match std::io::BufReader::new(&conn)
                        .take(cni::agent::LINE_BYTES_MAX)
                        .read_line(&mut line)
                        .map_err(|e| e.to_string())
                        .and_then(|_| {
                            serde_json::from_str::<cni::agent::Request>(&line)
                                .map_err(|e| e.to_string())
                        }) {
                        Ok(req) => answer_cni(req, &current, &writer, &defaults),
                        Err(e) => cni::agent::Reply {
                            error: Some(format!("not a request: {e}")),
                            ..Default::default()
                        },
                    };
                    if let Ok(mut text) = serde_json::to_string(&reply) {
                        text.push('\n');
                        let _ = conn.write_all(text.as_bytes());
                    }
                    open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                });
            }
        })?;
    Ok(())
}

type PodWriter = std::sync::Arc<std::sync::Mutex<(tokio::runtime::Runtime, kube::Client)>>;

fn answer_cni(
    req: cni::agent::Request,
    current: &store::watch::Current,
    writer: &PodWriter,
    defaults: &cni::multus::Defaults,
) -> cni::agent::Reply {
    let fail = |e: String| cni::agent::Reply {
        error: Some(e),
        ..Default::default()
    };
    match req {
        cni::agent::Request::Networks { namespace, name } => {
            // The kubelet runs the plugin once the Pod exists; the watch may be a moment
            // behind: wait for the snapshot that has it.
            let key = (namespace.clone(), name.clone());
            let load =
                current.wait_for(|l| l.snapshot.pods.contains_key(&key), cni::agent::POD_WAIT);
            let s = &load.snapshot;
            let Some(pod) = s.pods.get(&(namespace.clone(), name.clone())) else {
                return fail(format!("pod {namespace}/{name} is not in the API (yet)"));
            };
            match cni::multus::pod_networks(
                &namespace,
                &name,
                &pod.meta.annotations,
                defaults,
                |ns, n| {
                    model::snapshot::get(&s.network_attachments, ns, n)
                        .map(|o| o.spec.config.clone())
                },
            ) {
                Ok(networks) => cni::agent::Reply {
                    networks,
                    error: None,
                },
                Err(e) => fail(e),
            }
        }
        cni::agent::Request::Status {
            namespace,
            name,
            network_status,
        } => {
            let text = match serde_json::to_string_pretty(&network_status) {
                Ok(t) => t,
                Err(e) => return fail(e.to_string()),
            };
            let patch = serde_json::json!({ "metadata": { "annotations": {
                cni::multus::ANNOTATION_NETWORK_STATUS: text } } });
            let guard = match writer.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            let (rt, client) = &*guard;
            let api: kube::Api<model::k8s_openapi::api::core::v1::Pod> =
                kube::Api::namespaced(client.clone(), &namespace);
            let done = rt.block_on(async {
                tokio::time::timeout(
                    cni::agent::TIMEOUT,
                    api.patch(
                        &name,
                        &kube::api::PatchParams::default(),
                        &kube::api::Patch::Merge(&patch),
                    ),
                )
                .await
            });
            match done {
                Ok(Ok(_)) => cni::agent::Reply::default(),
                Ok(Err(e)) => fail(format!(
                    "writing pod {namespace}/{name}'s network-status: {e}"
                )),
                Err(_) => fail(format!(
                    "writing pod {namespace}/{name}'s network-status: no answer"
                )),
            }
        }
    }
}

pub fn run(args: &Args) -> Result<ExitCode> {
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("cannot read {}", args.config.display()))?;
    let mut value: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not an agent configuration", args.config.display()))?;
    let opts = store::Options {
        default_namespace: "default".into(),
        // The datapath reads no Secret: on Kubernetes the agent is not granted them.
        skip_kinds: vec!["Secret".into()],
        ..Default::default()
    };
    // On Kubernetes the manifests come from the API, and so does what the file leaves out
    // (this node's name, addresses, pod range).
    let from_api = match value.get("source").and_then(serde_json::Value::as_str) {
        None => None,
        Some("kube") => {
            let watch = store::kubernetes::watch(&opts)
                .context("cannot read the manifests from the Kubernetes API")?;
            let node_env = std::env::var("NODE_NAME").ok();
            fabric::agent::complete_from_nodes(
                &mut value,
                &watch.current().snapshot,
                node_env.as_deref(),
            )
            .map_err(|e| anyhow::anyhow!("{}: {e}", args.config.display()))?;
            Some(watch)
        }
        // The published generation: watched once the backend is known (below).
        Some("state") => None,
        Some(other) => anyhow::bail!(
            "{}: source {other:?}: \"kube\", \"state\" (or none: the manifests' paths)",
            args.config.display()
        ),
    };
    let conf: AgentConfig = serde_json::from_value(value)
        .with_context(|| format!("{} is not an agent configuration", args.config.display()))?;
    let node_ip = *conf
        .node_ips
        .get(&conf.node)
        .with_context(|| format!("node {} has no address in node_ips", conf.node))?;
    if let Some(state) = &conf.state {
        let info = serde_json::json!({"lanIp": node_ip, "podCidr": conf.pod_cidr, "labels": conf.node_labels});
        crate::registry::start(state, &conf.node, info, conf.pod_cidr)
            .with_context(|| format!("node {}: the state backend {state}", conf.node))?;
    }
    datapath::load(&conf.pin_dir).context("loading the datapath")?;
    datapath::attach_netdev(&conf.pin_dir, &conf.lan_interface)
        .with_context(|| format!("attaching to {}", conf.lan_interface))?;
    let mut maps = datapath::Maps::open(&conf.pin_dir)?;
    let pods = std::sync::Arc::new(observe::endpoints::Endpoints::default());
    let rule_names = RuleNames::default();
    let observe_listen = args.observe_listen.or(conf.observe_listen);
    if observe_listen.is_some() || args.ui_listen.is_some() {
        start_observer(
            observe_listen,
            args.ui_listen,
            &conf.node,
            &conf.pin_dir,
            pods.clone(),
            rule_names.clone(),
        )
        .with_context(|| format!("node {}: serving flows", conf.node))?;
    }
    let mut ids = Ids::recover(maps.services()?, maps.backends()?);
    let fabric_cfg = fabric::FabricConfig::new(conf.node.clone(), conf.node_ips.clone());
    let node_config = NodeConfig {
        node_ip,
        cluster_cidr: (conf.cluster_cidr.network(), conf.cluster_cidr.prefix_len()),
        maglev_m: fabric_cfg.maglev_m,
        flags: (if conf.masquerade {
            NODE_F_MASQUERADE
        } else {
            0
        }) | (if observe_listen.is_some() || args.ui_listen.is_some() {
            datapath::abi::NODE_F_EVENTS
        } else {
            0
        }) | match conf.load_balancer_mode.as_str() {
            "dsr" => NODE_F_DSR,
            "hybrid" => NODE_F_DSR | NODE_F_DSR_TCP_ONLY,
            _ => 0,
        },
    };
    if !matches!(conf.load_balancer_mode.as_str(), "snat" | "dsr" | "hybrid") {
        anyhow::bail!(
            "loadBalancer mode {:?}: snat, dsr or hybrid",
            conf.load_balancer_mode
        );
    }
    let admin_doc = std::sync::Arc::new(gateway::admin::StatusDoc::from_pointee(
        serde_json::json!({ "ready": false, "node": conf.node }),
    ));
    // Connections the CNI socket refused at its cap (on /metrics when the admin endpoint is on).
    let cni_refused = prometheus_client::metrics::counter::Counter::<u64>::default();
    if let Some(addr) = args.admin.or(conf.admin_listen) {
        let mut registry = prometheus_client::registry::Registry::default();
        if let Some(w) = &from_api {
            w.register_metrics(&mut registry);
        }
        registry.register(
            "trellis_agent_cni_connections_refused",
            "Connections of the CNI plugin refused at the socket's cap (CNI_CONNECTIONS_MAX)",
            cni_refused.clone(),
        );
        start_admin(addr, admin_doc.clone(), registry)
            .with_context(|| format!("node {}: the admin endpoint", conf.node))?;
    }
    if let Some(install) = &conf.cni_install {
        install_cni(&conf, install)
            .with_context(|| format!("node {}: installing the CNI plugin", conf.node))?;
    }
    if let (Some(w), Some(socket)) = (
        &from_api,
        conf.cni_install
            .as_ref()
            .and_then(|i| i.agent_socket.as_ref()),
    ) {
        let defaults = conf
            .cni_install
            .as_ref()
            .map(|i| {
                cni::multus::Defaults::parse(&i.default_networks, i.system_namespaces.as_deref())
            })
            .transpose()
            .map_err(anyhow::Error::msg)
            .context("cni_install")?
            .unwrap_or_default();
        serve_cni(socket, w.current_handle(), cni_refused, defaults)
            .with_context(|| format!("serving the CNI plugin on {}", socket.display()))?;
    }
    let mut watch = match (from_api, conf.source.as_deref()) {
        (Some(w), _) => w,
        (None, Some("state")) => {
            let state = conf.state.as_deref().with_context(|| {
                format!(
                    "{}: source \"state\" needs `state` (the backend to read the manifests from)",
                    args.config.display()
                )
            })?;
            let location: store::state::Location =
                state.parse().map_err(|e: String| anyhow::anyhow!(e))?;
            store::state::manifests::watch(&location, &opts)
                .with_context(|| format!("reading the published manifests from {state}"))?
        }
        (None, _) => store::watch::Watch::start(conf.manifests.clone(), opts)
            .context("watching the manifests")?,
    };
    // Who elects the holder of each announced address: coordination.k8s.io Leases with
    // Cilium's names and timings in the agent's namespace (Kubernetes), the shared state
    // backend (several machines), or lease files (one machine).
    let leases: Option<Box<dyn store::lease::LeaseStore>> = match (&conf.state, &conf.leases) {
        _ if conf.source.as_deref() == Some("kube") => {
            let namespace =
                std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "trellis-system".into());
            Some(Box::new(
                store::kubernetes::leases::KubeLeases::open(&namespace)
                    .with_context(|| format!("opening the Lease API in {namespace}"))?,
            ))
        }
        (Some(state), Some(_)) => {
            let location: store::state::Location =
                state.parse().map_err(|e: String| anyhow::anyhow!(e))?;
            Some(Box::new(
                store::state::leases::StateLeases::open(&location)
                    .with_context(|| format!("opening the lease store {state}"))?,
            ))
        }
        (None, Some(dir)) => Some(Box::new(
            store::lease::Leases::open(dir)
                .with_context(|| format!("opening the lease store {}", dir.display()))?,
        )),
        (_, None) => None,
    };
    let mut announcer = match leases {
        Some(leases) => Some(
            fabric::l2::Announcer::with_leases(leases, &conf.node, &conf.lan_interface)
                .context("netlink (for the announced addresses)")?,
        ),
        None => None,
    };
    let mut announce: Vec<fabric::l2::Announcement> = Vec::new();
    let mut assignments = Assigned::open(&conf)?;
    {
        let first = watch.current();
        assignments
            .first(&first.snapshot, first.generation)
            .with_context(|| format!("node {}: the assignments", conf.node))?;
    }
    // The policy maps' contents as this agent last wrote them (None: unknown, read them back).
    let mut programmed: Option<datapath::PolicyDesired> = None;
    // `what` (see `Update`): everything, the policy compiled again, or entries a DNS answer
    // added in place. Returns the policy plan programmed (or kept), `None` when the caller's
    // plan (updated in place) is what the maps now hold.
    let mut apply = |snapshot: &model::Snapshot,
                     generation: Option<u64>,
                     announce: &mut Vec<fabric::l2::Announcement>,
                     learned: &fabric::policy::Learned,
                     what: Update<'_>|
     -> Result<Option<fabric::policy::PolicyPlan>> {
        if let Update::Added(added) = what
            && let Some(have) = programmed.as_mut()
        {
            match maps.add_policy(have, &fabric::lower::added_desired(added)) {
                Ok(_) => return Ok(None),
                Err(e) => {
                    // What the maps hold is not known now: compile and read them back.
                    programmed = None;
                    tracing::warn!(error = %e, "toFQDNs: adding policy entries failed");
                }
            }
        }
        let full = matches!(what, Update::Full);
        let policy = fabric::policy::compile(snapshot, &conf.node, &conf.node_ips, learned);
        if policy.over_bound.is_none() {
            rule_names.store(std::sync::Arc::new(policy.rules.clone()));
        }
        if let Some(why) = &policy.over_bound {
            tracing::error!(
                error = %why,
                "network policy not programmed; the maps keep the last good policy"
            );
        }
        if !full {
            if let Some(p) = policy_desired(&policy) {
                // What this agent programmed last is what the maps hold: diff in memory.
                let have = programmed.take();
                maps.sync_policy(have.as_ref(), &p)?;
                programmed = Some(p);
            }
            return Ok(Some(policy));
        }
        pods.update(snapshot);
        let plan = fabric::compile(
            snapshot,
            &fabric_cfg,
            assignments.refresh(snapshot, generation),
        );
        *announce =
            fabric::l2::announcements(snapshot, &plan, &conf.node_labels, &conf.lan_interface);
        for p in &plan.problems {
            tracing::warn!(problem = %p, "service not fully programmed");
        }
        for p in &policy.problems {
            tracing::warn!(problem = %p, "network policy");
        }
        let mut want = desired(&plan, &mut ids, Some(node_config), &conf.node_ips);
        want.policy = policy_desired(&policy);
        programmed = None;
        let stats = maps.sync(&want)?;
        if want.policy.is_some() {
            programmed = want.policy.clone();
        }
        // The lab waits for this line to know the published objects are in the maps.
        let generation = model::snapshot::get(
            &snapshot.config_maps,
            lab::cluster::GENERATION_CONFIGMAP.0,
            lab::cluster::GENERATION_CONFIGMAP.1,
        )
        .and_then(|c| c.spec.data.as_ref()?.get("generation").cloned());
        if let Some(g) = generation {
            // Whoever reads this may be gone (a restarted agent's reader): never fail on it.
            use std::io::Write as _;
            let mut out = std::io::stdout();
            let _ = writeln!(out, "synced {g}").and_then(|()| out.flush());
        }
        admin_doc.store(std::sync::Arc::new(serde_json::json!({
            "ready": true,
            "node": conf.node,
            "frontends": plan.frontends.len(),
            "backends": want.backends.len(),
            "policyEntries": want.policy.as_ref().map_or(0, |p| p.entries.len()),
            "problems": plan.problems.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })));
        eprintln!(
            "node {}: {} frontends, {} backends, {} policy entries for {} endpoints; \
             {} entries written, {} removed",
            conf.node,
            plan.frontends.len(),
            want.backends.len(),
            want.policy.as_ref().map_or(0, |p| p.entries.len()),
            want.policy.as_ref().map_or(0, |p| p.endpoints.len()),
            stats.written,
            stats.removed
        );
        Ok(Some(policy))
    };
    // One queue for manifest changes and DNS answers, so both apply in one place.
    let (tx, msgs) = std::sync::mpsc::channel::<Msg>();
    let updates = std::mem::replace(&mut watch.updates, std::sync::mpsc::channel().1);
    {
        let tx = tx.clone();
        std::thread::Builder::new()
            .name("watch".into())
            .spawn(move || {
                for u in updates {
                    if tx.send(Msg::Watch(u)).is_err() {
                        return;
                    }
                }
                let _ = tx.send(Msg::WatchEnded);
            })?;
    }
    if let Some(socket) = &conf.fqdn_socket {
        crate::fqdn::serve(socket, tx.clone())
            .with_context(|| format!("node {}: the toFQDNs socket", conf.node))?;
    }
    drop(tx);
    let min_ttl = conf
        .fqdn_min_ttl_s
        .map(std::time::Duration::from_secs)
        .unwrap_or(crate::fqdn::MIN_TTL_DEFAULT);
    let mut cache = crate::fqdn::Cache::default();
    let mut current = watch.current();
    // A full sync always returns its plan.
    let mut policy = apply(
        &current.snapshot,
        current.generation,
        &mut announce,
        &cache.learned(),
        Update::Full,
    )?
    .unwrap_or_default();
    println!("ready");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    loop {
        // Wake for manifest changes, DNS answers and lease renewals, whichever comes first.
        match msgs.recv_timeout(fabric::l2::RENEW) {
            Ok(Msg::Watch(store::watch::Update::Applied(load))) => {
                current = load;
                match apply(
                    &current.snapshot,
                    current.generation,
                    &mut announce,
                    &cache.learned(),
                    Update::Full,
                ) {
                    Ok(p) => policy = p.unwrap_or(policy),
                    Err(e) => {
                        eprintln!("sync failed (the maps keep their previous contents): {e:#}");
                        let mut doc = (**admin_doc.load()).clone();
                        doc["lastError"] = serde_json::json!(format!("{e:#}"));
                        admin_doc.store(std::sync::Arc::new(doc));
                    }
                }
            }
            Ok(Msg::Watch(store::watch::Update::Rejected { errors, .. })) => {
                eprintln!(
                    "manifests rejected ({} errors); keeping the current maps",
                    errors.len()
                );
            }
            Ok(Msg::Answered((crate::fqdn::Told::Asked(q), done))) => {
                let pass = policy.endpoints.get(&q.client).is_none_or(|ep| {
                    ep.dns_allows(q.server.map(|s| policy.identity_of(s)), q.proto, &q.name)
                });
                if !pass {
                    tracing::info!(client = %q.client, name = q.name, "rules.dns: refused");
                }
                let _ = done.send(pass);
            }
            Ok(Msg::Answered((crate::fqdn::Told::Answered(answer), done))) => {
                let new = cache.learn(&policy, &answer, min_ttl);
                if !new.is_empty() {
                    // Opened in place (the new entries written, nothing compiled) when it can
                    // be; otherwise compiled with the cache.
                    let names = std::collections::BTreeSet::from([answer.name.clone()]);
                    let mut added = fabric::policy::Added::default();
                    let mut in_place = true;
                    for addr in &new {
                        match fabric::policy::learn(&mut policy, answer.client, *addr, &names) {
                            Some(a) => added.extend(a),
                            None => {
                                in_place = false;
                                break;
                            }
                        }
                    }
                    let what = if in_place {
                        Update::Added(&added)
                    } else {
                        Update::Policy
                    };
                    match apply(
                        &current.snapshot,
                        current.generation,
                        &mut announce,
                        &cache.learned(),
                        what,
                    ) {
                        Ok(p) => policy = p.unwrap_or(policy),
                        Err(e) => eprintln!("toFQDNs: policy sync failed: {e:#}"),
                    }
                }
                let _ = done.send(true);
            }
            Ok(Msg::WatchEnded) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if cache.expire(std::time::Instant::now()) {
            match apply(
                &current.snapshot,
                current.generation,
                &mut announce,
                &cache.learned(),
                Update::Policy,
            ) {
                Ok(p) => policy = p.unwrap_or(policy),
                Err(e) => eprintln!("toFQDNs: policy sync failed: {e:#}"),
            }
        }
        if let Some(a) = announcer.as_mut()
            && a.due()
        {
            for t in a.tick(&announce) {
                let ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or(0);
                eprintln!(
                    "node {}: announcing {} ({}), took over at {ms} ms",
                    conf.node, t.ip, t.lease
                );
            }
        }
    }
    if let Some(a) = announcer.as_mut() {
        a.release_all();
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

    use super::*;
    use fabric::ServicePlan;

    /// Before: the agent read a torn assignments.json as "no assignments", so every Service
    /// whose cluster IP the lab had assigned silently left the maps at the next sync.
    /// A datapath record built into a flow when read says what the event said, names its
    /// rule as it was when recorded, and is counted from its bytes as its built flow is.
    #[test]
    fn datapath_records_build_and_count_as_their_flows() {
        use observe::RecordKind as _;
        let rule = fabric::policy::RuleRef {
            kind: "CiliumNetworkPolicy",
            namespace: "default".into(),
            name: "db".into(),
            path: "spec.ingressDeny[0]".into(),
        };
        let ev = |kind: u8, reason: u32, translated| datapath::FlowEvent {
            time_ns: 5,
            saddr: Ipv4Addr::new(10, 69, 1, 2),
            daddr: Ipv4Addr::new(10, 69, 2, 3),
            sport: 41000,
            dport: 5432,
            proto: 6,
            kind,
            tcp_flags: 0x02,
            point: datapath::abi::POINT_TO_POD,
            reason,
            ifindex: 9,
            translated,
            rule: 0,
            identity: 4242,
            match_type: 2,
        };
        let events = [
            (
                ev(datapath::abi::EVENT_DROP, datapath::abi::DROP_POLICY, None),
                Some(&rule),
            ),
            (
                ev(datapath::abi::EVENT_POLICY_VERDICT, 0, None),
                Some(&rule),
            ),
            (
                ev(datapath::abi::EVENT_DROP, datapath::abi::DROP_POLICY, None),
                None,
            ),
            (
                ev(
                    datapath::abi::EVENT_TRACE,
                    0,
                    Some((Ipv4Addr::new(10, 69, 2, 3), 5432)),
                ),
                None,
            ),
            (ev(datapath::abi::EVENT_DROP, 158, None), None),
        ];
        let kind = DatapathEvents {
            pods: std::sync::Arc::new(observe::endpoints::Endpoints::default()),
        };
        let (from_bytes, from_flows) = (
            observe::metrics::Metrics::default(),
            observe::metrics::Metrics::default(),
        );
        let mut flows = Vec::new();
        for (e, r) in &events {
            let mut bytes = Vec::new();
            write_event(&mut bytes, e, 1_795_689_354_000_000_000, *r);
            let f = kind.build(&bytes);
            kind.count(&bytes, &mut from_bytes.batch());
            from_flows.flow(&f);
            flows.push(f);
        }
        assert_eq!(flows[0].ingress_denied_by[0].name, "db");
        assert_eq!(flows[0].trellis_denied_by, rule.to_string());
        assert_eq!(flows[1].ingress_allowed_by[0].kind, "CiliumNetworkPolicy");
        assert_eq!(flows[1].event_type.as_ref().map(|e| e.r#type), Some(5));
        assert_eq!(flows[2].trellis_denied_by, "");
        assert_eq!(
            flows[3].verdict,
            observe::proto::flow::Verdict::Translated as i32
        );
        let text = |m: &observe::metrics::Metrics| {
            let mut r = prometheus_client::registry::Registry::default();
            m.register(&mut r);
            let mut t = String::new();
            prometheus_client::encoding::text::encode(&mut t, &r).expect("encodes");
            let mut lines: Vec<String> = t.lines().map(str::to_string).collect();
            lines.sort();
            lines
        };
        assert_eq!(text(&from_bytes), text(&from_flows));
        assert!(
            text(&from_bytes).iter().any(|l| l
                == r#"hubble_policy_verdicts_total{direction="ingress",match="l3-l4",action="forwarded"} 1"#),
            "{:?}",
            text(&from_bytes)
        );
    }

    #[test]
    fn a_corrupt_assignments_file_keeps_services_in_the_plan() {
        let dir = tempfile::tempdir().expect("tempdir");
        let manifests = dir.path().join("m");
        std::fs::create_dir(&manifests).expect("mkdir");
        std::fs::write(
            manifests.join("svc.yaml"),
            "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: apps}\n\
             spec: {selector: {app: web}, ports: [{port: 80}]}\n",
        )
        .expect("manifest");
        let load = store::load(&[manifests], &store::Options::default());
        assert!(
            !load.snapshot.has_errors(),
            "{:?}",
            load.snapshot.diagnostics
        );
        let cfg = fabric::FabricConfig::new(
            "node-1",
            BTreeMap::from([("node-1".to_string(), Ipv4Addr::new(10, 10, 30, 11))]),
        );
        let path = dir.path().join(lab::state::ASSIGNMENTS_FILE);
        let assigned = fabric::assign(
            &load.snapshot,
            &fabric::Assignments::default(),
            "10.96.0.0/12".parse().expect("cidr"),
            fabric::assign::NODE_PORT_RANGE_DEFAULT,
        );
        let ip = assigned.cluster_ip("apps", "web").expect("assigned");
        lab::state::write_assignments(&path, &assigned).expect("write");
        let mut view = Assigned::File(lab::state::AssignmentsView::new(Some(path.clone())));
        let frontends =
            |plan: &ServicePlan| -> Vec<Ipv4Addr> { plan.frontends.keys().map(|k| k.ip).collect() };
        let plan = |view: &mut Assigned| {
            fabric::compile(&load.snapshot, &cfg, view.refresh(&load.snapshot, None))
        };
        assert_eq!(frontends(&plan(&mut view)), [ip]);
        std::fs::write(&path, b"{\"services\": {\"apps/web\": {\"clu").expect("tear");
        assert_eq!(
            frontends(&plan(&mut view)),
            [ip],
            "the Service keeps its address"
        );
        assert!(
            frontends(&fabric::compile(&load.snapshot, &cfg, None)).is_empty(),
            "what reading the torn file as no assignments gave"
        );
    }

    /// With `state` and no file, the agent keeps the backend's document itself: it writes the
    /// first assignments, and a document that stops reading (here: garbled) leaves the last
    /// good ones in the plan.
    #[test]
    fn shared_assignments_are_written_and_a_bad_document_keeps_the_last_good() {
        let conf: AgentConfig = serde_json::from_value(serde_json::json!({
            "node": "node-1", "node_ips": {"node-1": "10.10.30.11"}, "pod_cidr": "10.69.1.0/24",
            "cluster_cidr": "10.69.0.0/16", "lan_interface": "eth0", "pin_dir": "/nonexistent",
            "masquerade": true, "state": "memory", "source": "state",
            "service_cidr": "10.100.0.0/16"}))
        .expect("config");
        let snapshot = model::Snapshot::build(
            model::RawObject::from_yaml(
                "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: apps}\n\
                 spec: {selector: {app: web}, ports: [{port: 80}]}\n",
                "svc.yaml",
                "",
            )
            .expect("yaml"),
            vec![],
        );
        let mut a = Assigned::open(&conf).expect("open");
        a.first(&snapshot, Some(1)).expect("first");
        let ip = a
            .refresh(&snapshot, Some(1))
            .and_then(|a| a.cluster_ip("apps", "web"))
            .expect("assigned");
        assert!(
            "10.100.0.0/16"
                .parse::<ipnet::Ipv4Net>()
                .expect("cidr")
                .contains(&ip),
            "{ip} from the configured service CIDR"
        );
        let Assigned::Shared { rt, backend, .. } = &a else {
            panic!("state and no file: shared");
        };
        let (doc, rev) = rt
            .block_on(fabric::shared::read(backend.as_ref()))
            .expect("read")
            .expect("written");
        assert_eq!(doc.generation, 1);
        assert!(
            rt.block_on(backend.swap(&fabric::shared::key(), rev, b"garbled", None))
                .expect("swap")
        );
        let kept = a
            .refresh(&snapshot, Some(2))
            .and_then(|a| a.cluster_ip("apps", "web"));
        assert_eq!(kept, Some(ip), "the last good assignments stay");
    }
}
