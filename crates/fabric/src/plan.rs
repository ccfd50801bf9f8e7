//! The service plan: every frontend (address, port, protocol) the datapath answers on this
//! node, and the backends behind it, compiled from the snapshot's Services and endpoints.
//!
//! This is what kube-proxy, or Cilium's kube-proxy replacement, would program, written as plain
//! sorted data so that two plans diff cheaply ([`ServicePlan::diff`]) and a plan prints well.
//! Endpoints come from [`model::endpoints`] (its index), like everywhere else, so the
//! gateway, DNS and the fabric agree on what backs a Service port.
//!
//! What a frontend gets, per Service port:
//!
//! - the cluster IP: scope [`Scope::Internal`];
//! - NodePort and LoadBalancer Services: every node's LAN address on the node port
//!   ([`Scope::External`]). Each node's datapath programs its own address; the others are in
//!   the plan so that it shows the whole cluster's view and so every node computes the same
//!   tables;
//! - LoadBalancer Services: the addresses in `status.loadBalancer.ingress` (what a cluster
//!   reports wins), else those LB-IPAM assigned ([`crate::lbipam`], through the assignments),
//!   on the service port. `lbipam.cilium.io/ips` and `spec.loadBalancerIP` are requests to
//!   LB-IPAM: a refused request gives no frontend, and a problem. Only when there are no
//!   assignments or no pool (LB-IPAM dormant, the addresses owned by something else) are they
//!   taken as written;
//! - `spec.externalIPs`, on the service port.
//!
//! Backends are the ready endpoints (all of them with `publishNotReadyAddresses`); a frontend
//! with none stays in the plan with an empty list, so the datapath refuses its connections
//! instead of letting them fall through. `externalTrafficPolicy: Local` limits external
//! frontends to backends on the node that receives the traffic (for a node port, the node whose
//! address it is), `internalTrafficPolicy: Local` does the same for the cluster IP. External
//! frontends carry a Maglev table over their backend list; internal ones are balanced at random
//! and pinned by connection tracking, as Cilium does.
//!
//! Not here: IPv6 (frontends and backends are IPv4; IPv6 addresses are skipped), source
//! ranges, topology-aware routing, health-check node ports.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use model::Snapshot;
use model::endpoints::EndpointIndex;
use model::k8s_openapi::api::core::v1::{Service, ServiceSpec};
use serde::{Deserialize, Serialize};

use crate::assign::Assignments;
use crate::maglev::{self, MaglevBackend};

/// Services compiled into one plan; the rest are reported and left out.
pub const SERVICES_MAX: usize = 16384;
/// Frontends in one plan: the size of Cilium's default lb4 service map.
pub const FRONTENDS_MAX: usize = 65536;
/// Backends behind one frontend; the rest (by address order) are reported and left out.
pub const BACKENDS_PER_FRONTEND_MAX: usize = 1024;
/// Problems listed in one plan; beyond that they are only counted.
pub const PROBLEMS_MAX: usize = 1000;
/// `sessionAffinityConfig.clientIP.timeoutSeconds` when absent (Kubernetes' default, 3 hours).
pub const AFFINITY_TIMEOUT_S_DEFAULT: u32 = 10800;
/// The longest affinity Kubernetes accepts (one day).
pub const AFFINITY_TIMEOUT_S_MAX: u32 = 86400;

/// IP protocol numbers, as the datapath keys frontends.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_SCTP: u8 = 132;

/// The annotation Cilium's LB-IPAM reads for the addresses a LoadBalancer Service asks for.
pub const LBIPAM_IPS_ANNOTATION: &str = "lbipam.cilium.io/ips";

/// What the compile needs to know about the cluster and this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FabricConfig {
    /// This node's name, as pods' `spec.nodeName` and endpoints' `nodeName` say it.
    pub node: String,
    /// Every node's LAN address, by node name: node ports are served on each.
    pub node_ips: BTreeMap<String, Ipv4Addr>,
    /// Maglev table size, one of [`maglev::M_ALLOWED`].
    pub maglev_m: u32,
    /// Maglev seed; the same on every node, so every node builds the same tables.
    pub maglev_seed: u32,
}

impl FabricConfig {
    /// A configuration with Cilium's Maglev defaults.
    pub fn new(node: impl Into<String>, node_ips: BTreeMap<String, Ipv4Addr>) -> FabricConfig {
        FabricConfig {
            node: node.into(),
            node_ips,
            maglev_m: maglev::M_DEFAULT,
            maglev_seed: maglev::SEED_DEFAULT,
        }
    }
}

/// What the datapath matches a packet's destination on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FrontendKey {
    pub ip: Ipv4Addr,
    pub port: u16,
    /// IP protocol number: [`PROTO_TCP`], [`PROTO_UDP`] or [`PROTO_SCTP`].
    pub protocol: u8,
}

impl fmt::Display for FrontendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}/{}",
            self.ip,
            self.port,
            protocol_name(self.protocol)
        )
    }
}

/// Where traffic to a frontend comes from, which decides the traffic policy and the balancing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The cluster IP: in-cluster clients. Random backend, pinned by conntrack.
    Internal,
    /// Node ports, LoadBalancer and external addresses: clients outside the cluster. Maglev.
    External,
}

/// Which part of the Service a frontend comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum FrontendKind {
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalIp,
}

/// One backend of a frontend.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Backend {
    pub ip: Ipv4Addr,
    pub port: u16,
    /// The node the backend runs on, when the endpoints say.
    pub node: Option<String>,
    /// The pod behind the backend, when known (for display).
    pub pod: Option<String>,
    /// Whether the backend runs on this node ([`FabricConfig::node`]).
    pub is_local: bool,
}

/// One frontend and what the datapath does with its traffic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Frontend {
    pub namespace: String,
    pub service: String,
    /// The service port's name ("" when unnamed).
    pub port_name: String,
    pub kind: FrontendKind,
    pub scope: Scope,
    /// For node ports: the node whose address this is.
    pub node: Option<String>,
    /// Ready backends, sorted by address and port. Empty: refuse the connection.
    pub backends: Vec<Backend>,
    /// `sessionAffinity: ClientIP`: how long a client sticks to its backend.
    pub affinity_timeout_s: Option<u32>,
    /// The Service's traffic policy for this scope is `Local`: `backends` holds only the
    /// receiving node's endpoints.
    pub traffic_policy_local: bool,
    /// External frontends with backends: the Maglev table, `m` indices into `backends`.
    /// Empty otherwise. Frontends with the same backends share one table.
    #[serde(skip)]
    pub maglev: Arc<[u32]>,
}

impl Frontend {
    /// Whether `node`'s datapath serves this frontend: node ports on their own node's address,
    /// everything else on every node.
    pub fn served_by(&self, node: &str) -> bool {
        self.node.as_deref().is_none_or(|n| n == node)
    }
}

/// Something in the manifests the plan could not honour, naming the Service and field.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Problem {
    pub namespace: String,
    pub name: String,
    /// The field path, e.g. `spec.ports[1].protocol`.
    pub field: String,
    pub message: String,
}

impl Problem {
    pub fn new(namespace: &str, name: &str, field: impl Into<String>, message: String) -> Problem {
        Problem {
            namespace: namespace.to_string(),
            name: name.to_string(),
            field: field.into(),
            message,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name.is_empty() {
            write!(f, "{}: {}", self.field, self.message)
        } else {
            write!(
                f,
                "service {}/{}: {}: {}",
                self.namespace, self.name, self.field, self.message
            )
        }
    }
}

/// Everything the datapath serves on this node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ServicePlan {
    pub frontends: BTreeMap<FrontendKey, Frontend>,
    /// The Maglev table size every table in this plan has.
    pub maglev_m: u32,
    /// What could not be honoured, at most [`PROBLEMS_MAX`].
    pub problems: Vec<Problem>,
    /// Problems beyond [`PROBLEMS_MAX`], only counted.
    pub problems_dropped: usize,
}

/// What changed between two plans, by frontend, each list sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PlanDiff {
    pub added: Vec<FrontendKey>,
    /// Frontends in both plans whose backends, flags or table differ.
    pub changed: Vec<FrontendKey>,
    pub removed: Vec<FrontendKey>,
}

impl PlanDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

impl ServicePlan {
    /// The frontends to add, change and remove to go from `old` to `new`.
    pub fn diff(old: &ServicePlan, new: &ServicePlan) -> PlanDiff {
        let mut d = PlanDiff::default();
        let mut o = old.frontends.iter().peekable();
        let mut n = new.frontends.iter().peekable();
        // A merge of two sorted maps: one pass, no lookups.
        loop {
            match (o.peek(), n.peek()) {
                (None, None) => break,
                (Some((ok, _)), None) => {
                    d.removed.push(**ok);
                    o.next();
                }
                (None, Some((nk, _))) => {
                    d.added.push(**nk);
                    n.next();
                }
                (Some((ok, ov)), Some((nk, nv))) => match ok.cmp(nk) {
                    std::cmp::Ordering::Less => {
                        d.removed.push(**ok);
                        o.next();
                    }
                    std::cmp::Ordering::Greater => {
                        d.added.push(**nk);
                        n.next();
                    }
                    std::cmp::Ordering::Equal => {
                        if ov != nv {
                            d.changed.push(**nk);
                        }
                        o.next();
                        n.next();
                    }
                },
            }
        }
        d
    }

    fn problem(&mut self, p: Problem) {
        if self.problems.len() < PROBLEMS_MAX {
            self.problems.push(p);
        } else {
            self.problems_dropped += 1;
        }
    }
}

/// One line per frontend, sorted, for `trellis explain` and tests:
/// `10.96.0.20:80/TCP ClusterIP apps/web:http -> 10.69.1.10:8080 (n1, local)`.
impl fmt::Display for ServicePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (key, fe) in &self.frontends {
            write!(f, "{key} {}", kind_name(fe.kind))?;
            if let Some(n) = &fe.node {
                write!(f, "@{n}")?;
            }
            write!(f, " {}/{}", fe.namespace, fe.service)?;
            if !fe.port_name.is_empty() {
                write!(f, ":{}", fe.port_name)?;
            }
            if let Some(t) = fe.affinity_timeout_s {
                write!(f, " affinity={t}s")?;
            }
            if fe.traffic_policy_local {
                f.write_str(" policy=Local")?;
            }
            f.write_str(" ->")?;
            if fe.backends.is_empty() {
                f.write_str(" (none: refuse)")?;
            }
            for (i, b) in fe.backends.iter().enumerate() {
                let sep = if i == 0 { " " } else { ", " };
                write!(f, "{sep}{}:{}", b.ip, b.port)?;
                match (&b.node, b.is_local) {
                    (Some(n), true) => write!(f, " ({n}, local)")?,
                    (Some(n), false) => write!(f, " ({n})")?,
                    (None, _) => {}
                }
            }
            if !fe.maglev.is_empty() {
                write!(f, " maglev={}", fe.maglev.len())?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

fn kind_name(kind: FrontendKind) -> &'static str {
    match kind {
        FrontendKind::ClusterIp => "ClusterIP",
        FrontendKind::NodePort => "NodePort",
        FrontendKind::LoadBalancer => "LoadBalancer",
        FrontendKind::ExternalIp => "ExternalIP",
    }
}

/// A Service's type, `ClusterIP` when unset.
pub(crate) fn service_type(spec: &ServiceSpec) -> &str {
    spec.type_.as_deref().unwrap_or("ClusterIP")
}

/// The IP protocol number of a Service port protocol.
pub(crate) fn protocol_number(name: &str) -> Option<u8> {
    match name {
        "TCP" => Some(PROTO_TCP),
        "UDP" => Some(PROTO_UDP),
        "SCTP" => Some(PROTO_SCTP),
        _ => None,
    }
}

/// A protocol number as Kubernetes spells it.
pub fn protocol_name(protocol: u8) -> &'static str {
    match protocol {
        PROTO_TCP => "TCP",
        PROTO_UDP => "UDP",
        PROTO_SCTP => "SCTP",
        _ => "?",
    }
}

/// The parts of a frontend shared by all frontends of one service port.
struct PortContext<'a> {
    namespace: &'a str,
    service: &'a str,
    port_name: &'a str,
    protocol: u8,
    affinity_timeout_s: Option<u32>,
    backends: &'a [Backend],
}

/// Compiles the Services of `snapshot` into this node's plan. `assignments` supplies cluster IPs
/// and node ports for Services whose manifests leave them out (see [`crate::assign`]); without
/// them such Services get no cluster IP / node port frontend, and a problem says so.
pub fn compile(
    snapshot: &Snapshot,
    cfg: &FabricConfig,
    assignments: Option<&Assignments>,
) -> ServicePlan {
    let mut plan = ServicePlan {
        maglev_m: cfg.maglev_m,
        ..ServicePlan::default()
    };
    if let Err(e) = maglev::check_table_size(cfg.maglev_m) {
        plan.problem(Problem::new(
            "",
            "",
            "maglev table size",
            format!("{e}; using {}", maglev::M_DEFAULT),
        ));
        plan.maglev_m = maglev::M_DEFAULT;
    }
    let mut tables = Tables {
        m: plan.maglev_m,
        seed: cfg.maglev_seed,
        built: HashMap::new(),
    };
    let endpoints = EndpointIndex::new(snapshot);
    let lbipam_active = crate::lbipam::active(snapshot);
    let mut services = 0usize;
    for svc in snapshot.services.values() {
        let Some(spec) = &svc.spec.spec else { continue };
        match service_type(spec) {
            "ClusterIP" | "NodePort" | "LoadBalancer" => {}
            "ExternalName" => continue,
            other => {
                plan.problem(Problem::new(
                    svc.namespace(),
                    svc.name(),
                    "spec.type",
                    format!("type {other:?} is not a Service type"),
                ));
                continue;
            }
        }
        if spec.cluster_ip.as_deref() == Some("None") {
            continue; // headless: DNS answers with the endpoints, nothing to balance
        }
        services += 1;
        if services > SERVICES_MAX {
            plan.problem(Problem::new(
                svc.namespace(),
                svc.name(),
                "",
                format!("more than {SERVICES_MAX} services; left out"),
            ));
            continue;
        }
        compile_service(
            &endpoints,
            cfg,
            assignments,
            lbipam_active,
            svc,
            &mut tables,
            &mut plan,
        );
    }
    plan
}

/// What makes two tables equal: the protocol and the backends' addresses, in order.
type TableKey = (u8, Vec<(Ipv4Addr, u16)>);

/// The Maglev tables of one compile: frontends with the same backends share one.
struct Tables {
    m: u32,
    seed: u32,
    built: HashMap<TableKey, Arc<[u32]>>,
}

impl Tables {
    /// The table for `backends`, which the caller has cut to at most `m` entries.
    fn get(
        &mut self,
        protocol: u8,
        backends: &[Backend],
    ) -> Result<Arc<[u32]>, maglev::MaglevError> {
        if backends.is_empty() {
            return Ok(Arc::from(Vec::new()));
        }
        let key = (
            protocol,
            backends.iter().map(|b| (b.ip, b.port)).collect::<Vec<_>>(),
        );
        if let Some(t) = self.built.get(&key) {
            return Ok(t.clone());
        }
        let mb: Vec<MaglevBackend> = backends
            .iter()
            .map(|b| MaglevBackend::new(maglev::backend_key(b.ip, b.port, protocol)))
            .collect();
        let t: Arc<[u32]> = Arc::from(maglev::maglev_table(&mb, self.m, self.seed)?);
        self.built.insert(key, t.clone());
        Ok(t)
    }
}

fn compile_service(
    endpoints: &EndpointIndex<'_>,
    cfg: &FabricConfig,
    assignments: Option<&Assignments>,
    lbipam_active: bool,
    svc: &model::Object<Service>,
    tables: &mut Tables,
    plan: &mut ServicePlan,
) {
    let Some(spec) = &svc.spec.spec else { return };
    let (ns, name) = (svc.namespace(), svc.name());
    let ty = service_type(spec);
    let cluster_ip = match spec.cluster_ip.as_deref().unwrap_or("") {
        "" => {
            let ip = assignments.and_then(|a| a.cluster_ip(ns, name));
            if ip.is_none() {
                plan.problem(Problem::new(
                    ns,
                    name,
                    "spec.clusterIP",
                    "no cluster IP in the manifest and none assigned".into(),
                ));
            }
            ip
        }
        text => parse_v4(text, ns, name, "spec.clusterIP", plan),
    };
    let affinity_timeout_s = affinity(spec, ns, name, plan);
    let etp_local = spec.external_traffic_policy.as_deref() == Some("Local");
    let itp_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
    let lb_ips = if ty == "LoadBalancer" {
        let assigned = assignments.filter(|_| lbipam_active);
        lb_addresses(svc, spec, assigned, plan)
    } else {
        Vec::new()
    };
    let external_ips: Vec<Ipv4Addr> = spec
        .external_ips
        .iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, t)| parse_v4(t, ns, name, &format!("spec.externalIPs[{i}]"), plan))
        .collect();

    for (i, sp) in spec.ports.iter().flatten().enumerate() {
        let proto_name = sp.protocol.as_deref().unwrap_or("TCP");
        let Some(protocol) = protocol_number(proto_name) else {
            plan.problem(Problem::new(
                ns,
                name,
                format!("spec.ports[{i}].protocol"),
                format!("protocol {proto_name:?} is not TCP, UDP or SCTP"),
            ));
            continue;
        };
        let Some(port) = u16::try_from(sp.port).ok().filter(|&p| p != 0) else {
            plan.problem(Problem::new(
                ns,
                name,
                format!("spec.ports[{i}].port"),
                format!("port {} is out of range", sp.port),
            ));
            continue;
        };
        let endpoints = match endpoints.service_port_endpoints(ns, name, sp.port, proto_name) {
            Ok(e) => e,
            Err(e) => {
                plan.problem(Problem::new(
                    ns,
                    name,
                    format!("spec.ports[{i}]"),
                    e.to_string(),
                ));
                continue;
            }
        };
        let mut backends: BTreeMap<(Ipv4Addr, u16), Backend> = BTreeMap::new();
        for e in endpoints {
            let IpAddr::V4(ip) = e.ip else { continue };
            if !(e.ready || publish_not_ready) {
                continue;
            }
            let is_local = e.node.as_deref() == Some(cfg.node.as_str());
            backends.entry((ip, e.port)).or_insert(Backend {
                ip,
                port: e.port,
                node: e.node,
                pod: e.pod,
                is_local,
            });
        }
        let mut backends: Vec<Backend> = backends.into_values().collect();
        if backends.len() > BACKENDS_PER_FRONTEND_MAX {
            plan.problem(Problem::new(
                ns,
                name,
                format!("spec.ports[{i}]"),
                format!(
                    "{} ready endpoints, more than {BACKENDS_PER_FRONTEND_MAX}; the rest are left out",
                    backends.len()
                ),
            ));
            backends.truncate(BACKENDS_PER_FRONTEND_MAX);
        }
        let ctx = PortContext {
            namespace: ns,
            service: name,
            port_name: sp.name.as_deref().unwrap_or(""),
            protocol,
            affinity_timeout_s,
            backends: &backends,
        };
        let here = cfg.node.as_str();

        if let Some(ip) = cluster_ip {
            let local = itp_local.then_some(here);
            add(
                plan,
                tables,
                &ctx,
                (ip, port),
                FrontendKind::ClusterIp,
                None,
                local,
            );
        }
        if ty != "ClusterIP" {
            let node_port = match sp.node_port {
                Some(n) => u16::try_from(n).ok().filter(|&n| n != 0),
                None => assignments.and_then(|a| a.node_port(ns, name, port, proto_name)),
            };
            match node_port {
                Some(np) => {
                    for (node, &nip) in &cfg.node_ips {
                        // With Local, a node port serves the endpoints of the node it is on.
                        let local = etp_local.then_some(node.as_str());
                        add(
                            plan,
                            tables,
                            &ctx,
                            (nip, np),
                            FrontendKind::NodePort,
                            Some(node),
                            local,
                        );
                    }
                }
                None if ty == "NodePort"
                    || spec.allocate_load_balancer_node_ports != Some(false) =>
                {
                    plan.problem(Problem::new(
                        ns,
                        name,
                        format!("spec.ports[{i}].nodePort"),
                        "no node port in the manifest and none assigned".into(),
                    ));
                }
                None => {}
            }
        }
        let local = etp_local.then_some(here);
        for &ip in &lb_ips {
            add(
                plan,
                tables,
                &ctx,
                (ip, port),
                FrontendKind::LoadBalancer,
                None,
                local,
            );
        }
        for &ip in &external_ips {
            add(
                plan,
                tables,
                &ctx,
                (ip, port),
                FrontendKind::ExternalIp,
                None,
                local,
            );
        }
    }
}

/// Adds one frontend. `local_to`: the traffic policy is Local, keep only that node's backends.
fn add(
    plan: &mut ServicePlan,
    tables: &mut Tables,
    ctx: &PortContext<'_>,
    (ip, port): (Ipv4Addr, u16),
    kind: FrontendKind,
    node: Option<&String>,
    local_to: Option<&str>,
) {
    let key = FrontendKey {
        ip,
        port,
        protocol: ctx.protocol,
    };
    let problem = |message: String| Problem::new(ctx.namespace, ctx.service, "spec.ports", message);
    if let Some(other) = plan.frontends.get(&key) {
        let message = format!(
            "frontend {key} is already served by service {}/{}",
            other.namespace, other.service
        );
        plan.problem(problem(message));
        return;
    }
    if plan.frontends.len() >= FRONTENDS_MAX {
        plan.problem(problem(format!(
            "frontend {key} left out: more than {FRONTENDS_MAX} frontends"
        )));
        return;
    }
    let scope = match kind {
        FrontendKind::ClusterIp => Scope::Internal,
        _ => Scope::External,
    };
    let mut backends: Vec<Backend> = match local_to {
        Some(n) => ctx
            .backends
            .iter()
            .filter(|b| b.node.as_deref() == Some(n))
            .cloned()
            .collect(),
        None => ctx.backends.to_vec(),
    };
    let mut maglev_table: Arc<[u32]> = Arc::from(Vec::new());
    if scope == Scope::External {
        let m = plan.maglev_m;
        if backends.len() > m as usize {
            plan.problem(problem(format!(
                "frontend {key}: {} backends do not fit a maglev table of {m}; the rest are left out",
                backends.len()
            )));
            backends.truncate(m as usize);
        }
        match tables.get(ctx.protocol, &backends) {
            Ok(t) => maglev_table = t,
            Err(e) => {
                // Unreachable with the checks above; without a table the frontend refuses.
                plan.problem(problem(format!("frontend {key}: {e}")));
                backends.clear();
            }
        }
    }
    plan.frontends.insert(
        key,
        Frontend {
            namespace: ctx.namespace.to_string(),
            service: ctx.service.to_string(),
            port_name: ctx.port_name.to_string(),
            kind,
            scope,
            node: node.cloned(),
            backends,
            affinity_timeout_s: ctx.affinity_timeout_s,
            traffic_policy_local: local_to.is_some(),
            maglev: maglev_table,
        },
    );
}

/// An IPv4 address from the manifests. IPv6 is skipped quietly (this fabric is IPv4 only);
/// anything else is a problem.
fn parse_v4(
    text: &str,
    ns: &str,
    name: &str,
    field: &str,
    plan: &mut ServicePlan,
) -> Option<Ipv4Addr> {
    match text.trim().parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => Some(ip),
        Ok(IpAddr::V6(_)) => None,
        Err(_) => {
            plan.problem(Problem::new(
                ns,
                name,
                field,
                format!("{text:?} is not an IP address"),
            ));
            None
        }
    }
}

/// The affinity timeout, when `sessionAffinity` is `ClientIP`.
fn affinity(spec: &ServiceSpec, ns: &str, name: &str, plan: &mut ServicePlan) -> Option<u32> {
    if spec.session_affinity.as_deref() != Some("ClientIP") {
        return None;
    }
    let t = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds);
    match t {
        None => Some(AFFINITY_TIMEOUT_S_DEFAULT),
        Some(t) => match u32::try_from(t) {
            Ok(t) if (1..=AFFINITY_TIMEOUT_S_MAX).contains(&t) => Some(t),
            _ => {
                plan.problem(Problem::new(
                    ns,
                    name,
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    format!("{t} is not in 1..={AFFINITY_TIMEOUT_S_MAX}; using {AFFINITY_TIMEOUT_S_DEFAULT}"),
                ));
                Some(AFFINITY_TIMEOUT_S_DEFAULT)
            }
        },
    }
}

/// A LoadBalancer Service's addresses: its status, else what LB-IPAM assigned when `assigned`
/// is given, else (LB-IPAM not running) what it asks for, annotation before
/// `spec.loadBalancerIP`. Sorted, without duplicates.
fn lb_addresses(
    svc: &model::Object<Service>,
    spec: &ServiceSpec,
    assigned: Option<&Assignments>,
    plan: &mut ServicePlan,
) -> Vec<Ipv4Addr> {
    let (ns, name) = (svc.namespace(), svc.name());
    let status: Vec<(String, &str)> = svc
        .spec
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, ing)| {
            let ip = ing.ip.as_deref()?;
            Some((format!("status.loadBalancer.ingress[{i}].ip"), ip))
        })
        .collect();
    if status.is_empty()
        && let Some(a) = assigned
    {
        let ips = a.load_balancer_ips(ns, name).to_vec();
        match a.load_balancer_condition(ns, name) {
            Some(c) if !c.satisfied => plan.problem(Problem::new(
                ns,
                name,
                format!(
                    "status.conditions[{}]",
                    crate::lbipam::REQUEST_SATISFIED_CONDITION
                ),
                format!("{}: {}", c.reason, c.message),
            )),
            None if ips.is_empty() => plan.problem(Problem::new(
                ns,
                name,
                "status.loadBalancer",
                "no LoadBalancer address: none in status and none from LB-IPAM".into(),
            )),
            _ => {}
        }
        return ips;
    }
    let texts: Vec<(String, &str)> = if !status.is_empty() {
        status
    } else if let Some(a) = svc.meta.annotations.get(LBIPAM_IPS_ANNOTATION) {
        a.split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| (format!("metadata.annotations[{LBIPAM_IPS_ANNOTATION}]"), t))
            .collect()
    } else if let Some(ip) = spec.load_balancer_ip.as_deref().filter(|t| !t.is_empty()) {
        vec![("spec.loadBalancerIP".to_string(), ip)]
    } else {
        Vec::new()
    };
    let mut ips: Vec<Ipv4Addr> = texts
        .into_iter()
        .filter_map(|(field, t)| parse_v4(t, ns, name, &field, plan))
        .collect();
    ips.sort();
    ips.dedup();
    if ips.is_empty() {
        plan.problem(Problem::new(
            ns,
            name,
            "status.loadBalancer",
            format!(
                "no LoadBalancer address yet (status, {LBIPAM_IPS_ANNOTATION} or spec.loadBalancerIP)"
            ),
        ));
    }
    ips
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::snapshot;

    /// Three web pods (one not ready) on two nodes, each container port named `http`.
    const PODS: &str = "
apiVersion: v1
kind: Pod
metadata: {name: web-a, labels: {app: web}}
spec: {nodeName: n1, containers: [{name: c, image: x, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.69.1.10, conditions: [{type: Ready, status: 'True'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-b, labels: {app: web}}
spec: {nodeName: n2, containers: [{name: c, image: x, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.69.2.10, conditions: [{type: Ready, status: 'True'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-c, labels: {app: web}}
spec: {nodeName: n2, containers: [{name: c, image: x, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.69.2.11, conditions: [{type: Ready, status: 'False'}]}
";

    fn cfg() -> FabricConfig {
        FabricConfig::new(
            "n1",
            [
                ("n1".to_string(), Ipv4Addr::new(10, 10, 30, 11)),
                ("n2".to_string(), Ipv4Addr::new(10, 10, 30, 12)),
            ]
            .into(),
        )
    }

    fn plan(services: &str) -> ServicePlan {
        compile(&snapshot(&format!("{PODS}---\n{services}")), &cfg(), None)
    }

    #[test]
    fn cluster_ip_with_a_named_target_port() {
        let p = plan(
            "
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.0.20
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
",
        );
        assert_eq!(
            p.to_string(),
            "10.96.0.20:80/TCP ClusterIP apps/web:http -> 10.69.1.10:8080 (n1, local), \
             10.69.2.10:8080 (n2)\n"
        );
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        let fe = p.frontends.values().next().expect("one frontend");
        assert_eq!(fe.scope, Scope::Internal);
        assert!(
            fe.maglev.is_empty(),
            "in-cluster traffic is not balanced by Maglev"
        );
    }

    #[test]
    fn node_port_on_every_node_with_external_traffic_policy_local() {
        let p = plan(
            "
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  clusterIP: 10.96.0.21
  externalTrafficPolicy: Local
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080, nodePort: 30080}]
",
        );
        assert_eq!(
            p.to_string(),
            "\
10.10.30.11:30080/TCP NodePort@n1 apps/web policy=Local -> 10.69.1.10:8080 (n1, local) maglev=16381
10.10.30.12:30080/TCP NodePort@n2 apps/web policy=Local -> 10.69.2.10:8080 (n2) maglev=16381
10.96.0.21:80/TCP ClusterIP apps/web -> 10.69.1.10:8080 (n1, local), 10.69.2.10:8080 (n2)
"
        );
        let fe = &p.frontends[&FrontendKey {
            ip: Ipv4Addr::new(10, 10, 30, 11),
            port: 30080,
            protocol: PROTO_TCP,
        }];
        assert_eq!(fe.scope, Scope::External);
        assert!(
            fe.maglev.iter().all(|&i| i == 0),
            "one local backend takes every slot"
        );
        let served: Vec<String> = p
            .frontends
            .iter()
            .filter(|(_, f)| f.served_by("n1"))
            .map(|(k, _)| k.to_string())
            .collect();
        assert_eq!(served, ["10.10.30.11:30080/TCP", "10.96.0.21:80/TCP"]);
    }

    #[test]
    fn load_balancer_from_the_lbipam_annotation_with_client_ip_affinity() {
        let p = plan(
            "
apiVersion: v1
kind: Service
metadata: {name: web, annotations: {lbipam.cilium.io/ips: '10.10.30.26, 10.10.30.27'}}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.22
  loadBalancerIP: 10.10.30.99
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http, nodePort: 30081}]
",
        );
        assert_eq!(
            p.to_string(),
            "\
10.10.30.11:30081/TCP NodePort@n1 apps/web:http affinity=600s -> 10.69.1.10:8080 (n1, local), 10.69.2.10:8080 (n2) maglev=16381
10.10.30.12:30081/TCP NodePort@n2 apps/web:http affinity=600s -> 10.69.1.10:8080 (n1, local), 10.69.2.10:8080 (n2) maglev=16381
10.10.30.26:80/TCP LoadBalancer apps/web:http affinity=600s -> 10.69.1.10:8080 (n1, local), 10.69.2.10:8080 (n2) maglev=16381
10.10.30.27:80/TCP LoadBalancer apps/web:http affinity=600s -> 10.69.1.10:8080 (n1, local), 10.69.2.10:8080 (n2) maglev=16381
10.96.0.22:80/TCP ClusterIP apps/web:http affinity=600s -> 10.69.1.10:8080 (n1, local), 10.69.2.10:8080 (n2)
"
        );
        // Frontends with the same backends share one table.
        let tables: Vec<_> = p
            .frontends
            .values()
            .filter(|f| !f.maglev.is_empty())
            .collect();
        assert!(
            tables
                .windows(2)
                .all(|w| Arc::ptr_eq(&w[0].maglev, &w[1].maglev))
        );
    }

    #[test]
    fn load_balancer_from_status_with_default_affinity_and_no_node_ports() {
        let p = plan(
            "
apiVersion: v1
kind: Service
metadata: {name: web, annotations: {lbipam.cilium.io/ips: 10.10.30.26}}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.23
  allocateLoadBalancerNodePorts: false
  externalTrafficPolicy: Local
  sessionAffinity: ClientIP
  externalIPs: [192.0.2.7]
  selector: {app: web}
  ports: [{port: 53, targetPort: 8080, protocol: UDP}]
status:
  loadBalancer: {ingress: [{ip: 10.10.30.40}]}
",
        );
        assert_eq!(
            p.to_string(),
            "\
10.10.30.40:53/UDP LoadBalancer apps/web affinity=10800s policy=Local -> 10.69.1.10:8080 (n1, local) maglev=16381
10.96.0.23:53/UDP ClusterIP apps/web affinity=10800s -> 10.69.1.10:8080 (n1, local), 10.69.2.10:8080 (n2)
192.0.2.7:53/UDP ExternalIP apps/web affinity=10800s policy=Local -> 10.69.1.10:8080 (n1, local) maglev=16381
"
        );
        assert!(p.problems.is_empty(), "{:?}", p.problems);
    }

    #[test]
    fn internal_traffic_policy_local_and_a_service_without_endpoints() {
        let p = plan(
            "
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.0.24
  internalTrafficPolicy: Local
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: nobody}
spec:
  type: NodePort
  clusterIP: 10.96.0.25
  selector: {app: nobody}
  ports: [{port: 80, nodePort: 30090}]
",
        );
        assert_eq!(
            p.to_string(),
            "\
10.10.30.11:30090/TCP NodePort@n1 apps/nobody -> (none: refuse)
10.10.30.12:30090/TCP NodePort@n2 apps/nobody -> (none: refuse)
10.96.0.24:80/TCP ClusterIP apps/web policy=Local -> 10.69.1.10:8080 (n1, local)
10.96.0.25:80/TCP ClusterIP apps/nobody -> (none: refuse)
"
        );
    }

    #[test]
    fn endpoint_slices_exclude_not_ready_and_terminating_endpoints() {
        let p = plan(
            "
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: 10.96.0.30
  ports: [{name: pg, port: 5432}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-1, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
ports: [{name: pg, port: 5433}]
endpoints:
  - {addresses: [10.69.1.20], nodeName: n1, conditions: {ready: true}}
  - {addresses: [10.69.2.20], nodeName: n2}
  - {addresses: [10.69.2.21], nodeName: n2, conditions: {ready: false}}
  - {addresses: [10.69.2.22], nodeName: n2, conditions: {ready: false, serving: true, terminating: true}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-2, labels: {kubernetes.io/service-name: db}}
addressType: IPv6
ports: [{name: pg, port: 5433}]
endpoints:
  - {addresses: ['fd00::1'], nodeName: n1}
",
        );
        assert_eq!(
            p.to_string(),
            "10.96.0.30:5432/TCP ClusterIP apps/db:pg -> 10.69.1.20:5433 (n1, local), \
             10.69.2.20:5433 (n2)\n"
        );
    }

    #[test]
    fn skipped_kinds_and_reported_problems() {
        let p = plan(
            "
apiVersion: v1
kind: Service
metadata: {name: headless}
spec: {clusterIP: None, selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: ext}
spec: {type: ExternalName, externalName: example.org}
---
apiVersion: v1
kind: Service
metadata: {name: pending}
spec: {type: LoadBalancer, selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: twin}
spec: {clusterIP: 10.96.0.40, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: twin2}
spec: {clusterIP: 10.96.0.40, ports: [{port: 80}]}
",
        );
        assert_eq!(
            p.to_string(),
            "10.96.0.40:80/TCP ClusterIP apps/twin -> (none: refuse)\n"
        );
        let problems: Vec<String> = p.problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            problems,
            [
                "service apps/pending: spec.clusterIP: no cluster IP in the manifest and none assigned",
                "service apps/pending: status.loadBalancer: no LoadBalancer address yet (status, lbipam.cilium.io/ips or spec.loadBalancerIP)",
                "service apps/pending: spec.ports[0].nodePort: no node port in the manifest and none assigned",
                "service apps/twin2: spec.ports: frontend 10.96.0.40:80/TCP is already served by service apps/twin",
            ]
        );
    }

    #[test]
    fn same_port_number_for_tcp_and_udp() {
        let p = compile(
            &snapshot(
                "
apiVersion: v1
kind: Pod
metadata: {name: coredns-a, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  nodeName: n2
  containers:
    - name: coredns
      image: x
      ports: [{name: dns, containerPort: 5353, protocol: UDP}, {name: dns-tcp, containerPort: 5354}]
status: {podIP: 10.69.2.53}
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system}
spec:
  clusterIP: 10.96.0.10
  selector: {k8s-app: kube-dns}
  ports:
    - {name: dns, port: 53, protocol: UDP, targetPort: dns}
    - {name: dns-tcp, port: 53, protocol: TCP, targetPort: dns-tcp}
",
            ),
            &cfg(),
            None,
        );
        assert_eq!(
            p.to_string(),
            "\
10.96.0.10:53/TCP ClusterIP kube-system/kube-dns:dns-tcp -> 10.69.2.53:5354 (n2)
10.96.0.10:53/UDP ClusterIP kube-system/kube-dns:dns -> 10.69.2.53:5353 (n2)
"
        );
    }

    #[test]
    fn diff_lists_added_changed_and_removed_frontends() {
        let svc = |name: &str, ip: &str, selector: &str| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\n\
                 spec: {{clusterIP: {ip}, selector: {{app: {selector}}}, ports: [{{port: 80, targetPort: 8080}}]}}\n---\n"
            )
        };
        let old = plan(&(svc("a", "10.96.0.1", "web") + &svc("b", "10.96.0.2", "web")));
        let new = plan(&(svc("b", "10.96.0.2", "nobody") + &svc("c", "10.96.0.3", "web")));
        let key = |last| FrontendKey {
            ip: Ipv4Addr::new(10, 96, 0, last),
            port: 80,
            protocol: PROTO_TCP,
        };
        assert_eq!(
            ServicePlan::diff(&old, &new),
            PlanDiff {
                added: vec![key(3)],
                changed: vec![key(2)],
                removed: vec![key(1)],
            }
        );
        assert!(ServicePlan::diff(&new, &new).is_empty());
        // Deterministic: compiling twice gives equal plans.
        assert_eq!(
            old,
            plan(&(svc("a", "10.96.0.1", "web") + &svc("b", "10.96.0.2", "web")))
        );
    }

    #[test]
    fn a_bad_table_size_falls_back_to_the_default() {
        let mut c = cfg();
        c.maglev_m = 1000;
        let p = compile(&snapshot(PODS), &c, None);
        assert_eq!(p.maglev_m, maglev::M_DEFAULT);
        assert_eq!(p.problems.len(), 1);
    }
}
