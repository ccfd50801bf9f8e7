//! LB-IPAM: addresses for LoadBalancer Services from `CiliumLoadBalancerIPPool`s, handed out
//! the way Cilium's operator does it, as a pure function of the snapshot and the previous
//! allocations.
//!
//! [`crate::assign::assign`] calls [`allocate_snapshot`] and stores the result in
//! [`Assignments`]: the addresses in `ServiceAssignment::load_balancer_ips` (persisted, so
//! allocations survive restarts) and one [`RequestCondition`] per Service in
//! `Assignments::load_balancer_conditions` (recomputed on every call, persisted too so that a
//! reader of the file, such as a node agent, can say why a Service has no address).
//!
//! The rules, with the Cilium 1.18 facts they follow (docs `network/lb-ipam`, the pool CRD's
//! field descriptions and `operator/pkg/lbipam`):
//!
//! - **Dormant without pools.** With no pool in the snapshot nothing is allocated and no
//!   condition is set ("LB IPAM is always enabled but dormant").
//! - **Which Services.** `type: LoadBalancer` with no `spec.loadBalancerClass` or one of
//!   [`LB_CLASSES`]; any other class is ignored entirely, without a condition. IPv4 only: IPv6
//!   requests are skipped, and a single-stack IPv6 Service is left alone.
//! - **Pools.** Ordered by name; blocks in the order written, a CIDR or an inclusive
//!   `start`/`stop` range (`stop` defaults to `start`). A pool's `serviceSelector` matches the
//!   Service's labels plus `io.kubernetes.service.namespace` and `io.kubernetes.service.name`;
//!   no selector matches every Service.
//! - **allowFirstLastIPs.** Only `"No"` reserves anything: the first and last address of each
//!   CIDR block (network and broadcast), and only for blocks of more than two addresses (a /31
//!   or /32 stays whole). Unset means `Yes` since Cilium 1.16 (the CRD: "if set to `Yes` or
//!   undefined means that the first and last IPs of each CIDR will be allocatable"; the docs'
//!   "will not assign these by default" predates that change). Ranges never reserve anything.
//! - **Disabled pools** hand out nothing new and do not accept requests (a request into one is
//!   `no_pool`, as in Cilium, whose lookup skips disabled ranges), but existing allocations are
//!   kept ("doesn't remove existing allocations"). A pool whose blocks overlap its own or those
//!   of a pool earlier by name is *conflicting* and treated as disabled. Cilium marks the newer
//!   pool by creation time; manifests have no creation time, so the name decides.
//! - **Requests.** `spec.loadBalancerIP` and the comma-separated `lbipam.cilium.io/ips`
//!   (or the older `io.cilium/lb-ipam-ips`), together. A requested address must lie in an
//!   enabled pool that selects the Service and must be free (or shareable), else the condition
//!   says why and the address is not assigned. Requested addresses are granted even when they
//!   are not the pool's first free one, and a Service that requests addresses gets only those.
//! - **Without a request**, a Service gets the first free address of the first enabled pool
//!   (by name) that selects it: `no_pool` when none selects it, `out_of_ips` when all that do
//!   are full.
//! - **Order and stability.** Cilium serves Services in event order; a pure function has
//!   none, so Services are handled in namespace/name order, in three passes:
//!   every previous allocation that is still valid (the address still lies in a pool that
//!   selects the Service, is still requested if the Service requests addresses, and is not
//!   taken by an incompatible Service kept before it), then the requests, then the rest.
//!   So a previous allocation is kept even when a Service that sorts earlier would now get it.
//!   Addresses in `status.loadBalancer.ingress` are imported like previous allocations when
//!   they lie in an enabled pool that selects the Service (Cilium's `stripOrImportIngresses`).
//! - **Sharing.** Never one address for two Services, except Services with the same
//!   `lbipam.cilium.io/sharing-key` (or `io.cilium/lb-ipam-sharing-key`) that are compatible:
//!   in one namespace, or both listing the other's namespace (or `*`) in
//!   `lbipam.cilium.io/sharing-cross-namespace`; no port+protocol in common (the current
//!   operator's rule; older releases compared port numbers alone); the same
//!   `externalTrafficPolicy`; and with `Local`, the same non-empty pod selector. A Service
//!   without a request shares the first compatible address of its key; when none is, it gets a
//!   new one. A Service that requests a taken address it may not share gets
//!   `already_allocated` (no sharing key) or `already_allocated_incompatible_service`.
//! - **Conditions** have Cilium's shape: type [`REQUEST_SATISFIED_CONDITION`] (Cilium 1.18
//!   writes `cilium.io/IPAMRequestSatisfied`; the docs' example still shows the pre-1.16
//!   `io.cilium/lb-ipam-request-satisfied`), status True with reason `satisfied`, or False
//!   with `no_pool`, `pool_selector_mismatch`, `already_allocated`,
//!   `already_allocated_incompatible_service` or `out_of_ips`. As in Cilium, when several
//!   requests fail the last failure is the condition; every failure is also a [`Problem`].
//!
//! Envoy Gateway creates a LoadBalancer Service per Gateway, copying the Gateway's
//! `spec.infrastructure.annotations` (where the corpus asks for its addresses) onto it.
//! [`gateway_requests`] synthesizes those Services' requests so the gateways get their
//! addresses here too; see [`gateway_service_name`] for where to look them up.
//!
//! Not here: IPv6, pool status counts, writing `status.loadBalancer` back (callers read
//! [`Assignments::load_balancer_ips`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use model::k8s_openapi::api::core::v1::Service;
use model::k8s_openapi::serde_json::Value;
use model::kinds::LabelSelector;
use model::snapshot::get;
use model::{Condition, Object, Snapshot, Status};
use serde::{Deserialize, Serialize};

use crate::assign::Assignments;
use crate::maglev::hash64;
use crate::plan::{Problem, protocol_name, protocol_number, service_type};

/// The annotation with the addresses a Service requests, comma-separated.
pub const IPS_ANNOTATION: &str = crate::plan::LBIPAM_IPS_ANNOTATION;
/// The older spelling of [`IPS_ANNOTATION`], still read by Cilium.
pub const IPS_ANNOTATION_LEGACY: &str = "io.cilium/lb-ipam-ips";
/// Services with the same value may share addresses.
pub const SHARING_KEY_ANNOTATION: &str = "lbipam.cilium.io/sharing-key";
pub const SHARING_KEY_ANNOTATION_LEGACY: &str = "io.cilium/lb-ipam-sharing-key";
/// The namespaces (comma-separated, or `*`) a Service may share its addresses with.
pub const SHARING_CROSS_NAMESPACE_ANNOTATION: &str = "lbipam.cilium.io/sharing-cross-namespace";
pub const SHARING_CROSS_NAMESPACE_ANNOTATION_LEGACY: &str =
    "io.cilium/lb-ipam-sharing-cross-namespace";
/// The condition type Cilium 1.18 sets on the Services it is responsible for.
pub const REQUEST_SATISFIED_CONDITION: &str = "cilium.io/IPAMRequestSatisfied";
/// The `spec.loadBalancerClass` values LB-IPAM serves besides none.
pub const LB_CLASSES: &[&str] = &["io.cilium/bgp-control-plane", "io.cilium/l2-announcer"];
/// Labels every Service carries for pool selectors, besides its own.
pub const SERVICE_NAMESPACE_LABEL: &str = "io.kubernetes.service.namespace";
pub const SERVICE_NAME_LABEL: &str = "io.kubernetes.service.name";
/// The labels Envoy Gateway puts on the resources it creates for a Gateway.
pub const OWNING_GATEWAY_NAME_LABEL: &str = "gateway.envoyproxy.io/owning-gateway-name";
pub const OWNING_GATEWAY_NAMESPACE_LABEL: &str = "gateway.envoyproxy.io/owning-gateway-namespace";

/// The condition reasons, Cilium's strings.
pub mod reason {
    pub const SATISFIED: &str = "satisfied";
    pub const NO_POOL: &str = "no_pool";
    pub const POOL_SELECTOR_MISMATCH: &str = "pool_selector_mismatch";
    pub const ALREADY_ALLOCATED: &str = "already_allocated";
    pub const ALREADY_ALLOCATED_INCOMPATIBLE: &str = "already_allocated_incompatible_service";
    pub const OUT_OF_IPS: &str = "out_of_ips";
}

/// LoadBalancer Services one allocation handles (the plan's bound on Services); the rest, by
/// namespace/name, get nothing and one problem says so.
pub const REQUESTS_MAX: usize = crate::plan::SERVICES_MAX;

/// The longest name prefix of a synthesized gateway Service, before its hash (Envoy Gateway's
/// limit, which keeps the name within Kubernetes' 63 characters).
const GATEWAY_SERVICE_PREFIX_MAX: usize = 48;

/// One LoadBalancer Service as LB-IPAM sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LbRequest {
    pub namespace: String,
    pub name: String,
    /// The Service's labels plus [`SERVICE_NAMESPACE_LABEL`] and [`SERVICE_NAME_LABEL`].
    pub labels: BTreeMap<String, String>,
    /// Requested IPv4 addresses, in the order written, without duplicates.
    pub requested: Vec<Ipv4Addr>,
    /// The field the requests come from, for problems.
    pub request_field: String,
    pub sharing_key: Option<String>,
    pub sharing_cross_namespace: Vec<String>,
    /// Service ports as (port, IP protocol number).
    pub ports: BTreeSet<(u16, u8)>,
    pub external_traffic_policy_local: bool,
    /// The pod selector (`spec.selector`).
    pub selector: BTreeMap<String, String>,
    /// IPv4 addresses in `status.loadBalancer.ingress`.
    pub status: Vec<Ipv4Addr>,
}

impl LbRequest {
    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// One address block of a pool, as `u32` bounds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// The block as written, for messages.
    pub text: String,
    /// Every address of the block.
    pub span: (u32, u32),
    /// What may be handed out: the span without its first and last address when they are
    /// reserved.
    pub usable: (u32, u32),
}

/// A `CiliumLoadBalancerIPPool`, parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct Pool {
    pub name: String,
    /// IPv4 blocks; IPv6 and malformed ones (which validation reports) are left out.
    pub blocks: Vec<Block>,
    pub selector: Option<LabelSelector>,
    pub disabled: bool,
    /// Why the pool conflicts with another, if it does; a conflicting pool allocates nothing.
    pub conflict: Option<String>,
}

impl Pool {
    fn enabled(&self) -> bool {
        !self.disabled && self.conflict.is_none()
    }

    fn selects(&self, r: &LbRequest) -> bool {
        self.selector.as_ref().is_none_or(|s| s.matches(&r.labels))
    }
}

/// LB-IPAM's verdict on one Service: Cilium's [`REQUEST_SATISFIED_CONDITION`] without the
/// timestamps, in a form that persists with the assignments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCondition {
    /// The condition's status: True when every request was met.
    pub satisfied: bool,
    /// One of [`reason`].
    pub reason: String,
    /// Names the Service and its addresses, or what was refused and why.
    pub message: String,
}

impl RequestCondition {
    /// The condition as it would sit in the Service's `status.conditions`.
    pub fn condition(&self) -> Condition {
        Condition {
            type_: REQUEST_SATISFIED_CONDITION.into(),
            status: if self.satisfied {
                Status::True
            } else {
                Status::False
            },
            reason: self.reason.clone(),
            message: self.message.clone(),
        }
    }
}

/// What LB-IPAM decided, by `namespace/name`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allocation {
    /// The addresses of each Service that has any, sorted.
    pub ips: BTreeMap<String, Vec<Ipv4Addr>>,
    /// One condition for every Service LB-IPAM is responsible for.
    pub conditions: BTreeMap<String, RequestCondition>,
    /// Every refused request and unparsable address.
    pub problems: Vec<Problem>,
}

/// Whether LB-IPAM is active: the snapshot has at least one pool.
pub fn active(snapshot: &Snapshot) -> bool {
    !snapshot.lb_ip_pools.is_empty()
}

/// Pools, requests and allocation for a snapshot, keeping `previous` where valid.
pub fn allocate_snapshot(snapshot: &Snapshot, previous: &Assignments) -> Allocation {
    if !active(snapshot) {
        return Allocation::default();
    }
    let (requests, problems) = requests(snapshot);
    let mut out = allocate(&pools(snapshot), &requests, previous);
    out.problems.splice(0..0, problems);
    out
}

/// The snapshot's pools, sorted by name, with conflicts marked.
pub fn pools(snapshot: &Snapshot) -> Vec<Pool> {
    let mut pools: Vec<Pool> = snapshot
        .lb_ip_pools
        .values()
        .map(|p| {
            let reserve_first_last = p.spec.allow_first_last_ips.as_deref() == Some("No");
            Pool {
                name: p.name().to_string(),
                blocks: p
                    .spec
                    .blocks
                    .iter()
                    .filter_map(|b| parse_block(b, reserve_first_last))
                    .collect(),
                selector: p.spec.service_selector.clone(),
                disabled: p.spec.disabled,
                conflict: None,
            }
        })
        .collect();
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    for i in 0..pools.len() {
        let overlap = |a: &Block, b: &Block| a.span.0 <= b.span.1 && b.span.0 <= a.span.1;
        let own = &pools[i].blocks;
        let mut conflict = own.iter().enumerate().find_map(|(j, a)| {
            own[j + 1..].iter().find(|b| overlap(a, b)).map(|b| {
                format!(
                    "range '{}' overlaps range '{}' of the same pool",
                    a.text, b.text
                )
            })
        });
        if conflict.is_none() {
            conflict = pools[..i]
                .iter()
                .filter(|p| p.conflict.is_none())
                .find_map(|p| {
                    own.iter().find_map(|a| {
                        p.blocks.iter().find(|b| overlap(a, b)).map(|b| {
                            format!(
                                "range '{}' overlaps range '{}' from IP Pool '{}'",
                                a.text, b.text, p.name
                            )
                        })
                    })
                });
        }
        pools[i].conflict = conflict;
    }
    pools
}

fn parse_block(b: &model::kinds::cilium::IpBlock, reserve_first_last: bool) -> Option<Block> {
    let (text, first, last, cidr) = match (&b.cidr, &b.start) {
        (Some(c), None) => match c.trim().parse::<IpNet>().ok()? {
            IpNet::V4(net) => (
                c.clone(),
                u32::from(net.network()),
                u32::from(net.broadcast()),
                true,
            ),
            IpNet::V6(_) => return None,
        },
        (None, Some(start)) => {
            let stop = b.stop.as_deref().unwrap_or(start);
            let (IpAddr::V4(s), IpAddr::V4(e)) = (
                start.trim().parse::<IpAddr>().ok()?,
                stop.trim().parse::<IpAddr>().ok()?,
            ) else {
                return None;
            };
            (format!("{s} - {e}"), u32::from(s), u32::from(e), false)
        }
        _ => return None,
    };
    if first > last {
        return None;
    }
    // Reserving the ends of a block of one or two addresses would leave nothing.
    let usable = if cidr && reserve_first_last && last - first >= 2 {
        (first + 1, last - 1)
    } else {
        (first, last)
    };
    Some(Block {
        text,
        span: (first, last),
        usable,
    })
}

/// The requests of every Service LB-IPAM is responsible for and of every Gateway whose
/// Service is not in the snapshot, sorted by namespace/name, with the problems found reading
/// them.
pub fn requests(snapshot: &Snapshot) -> (Vec<LbRequest>, Vec<Problem>) {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for svc in snapshot.services.values() {
        if let Some((r, p)) = service_request(svc) {
            out.push(r);
            problems.extend(p);
        }
    }
    for (r, p) in gateway_requests(snapshot) {
        out.push(r);
        problems.extend(p);
    }
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out.dedup_by(|a, b| a.namespace == b.namespace && a.name == b.name);
    (out, problems)
}

/// The request of one Service, or `None` when LB-IPAM is not responsible for it.
pub fn service_request(svc: &Object<Service>) -> Option<(LbRequest, Vec<Problem>)> {
    let spec = svc.spec.spec.as_ref()?;
    if service_type(spec) != "LoadBalancer" {
        return None;
    }
    if let Some(class) = spec.load_balancer_class.as_deref()
        && !LB_CLASSES.contains(&class)
    {
        return None;
    }
    let families = spec.ip_families.as_deref().unwrap_or_default();
    let dual = matches!(
        spec.ip_family_policy.as_deref(),
        Some("PreferDualStack" | "RequireDualStack")
    );
    if families.first().map(String::as_str) == Some("IPv6") && !dual {
        return None;
    }
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            let port = u16::try_from(p.port).ok()?;
            Some((
                port,
                protocol_number(p.protocol.as_deref().unwrap_or("TCP"))?,
            ))
        })
        .collect();
    let status = svc
        .spec
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| match i.ip.as_deref()?.trim().parse() {
            Ok(IpAddr::V4(ip)) => Some(ip),
            _ => None,
        })
        .collect();
    Some(build(Source {
        namespace: svc.namespace(),
        name: svc.name(),
        labels: &svc.meta.labels,
        annotations: &svc.meta.annotations,
        annotations_field: "metadata.annotations",
        load_balancer_ip: spec
            .load_balancer_ip
            .as_deref()
            .map(|ip| ("spec.loadBalancerIP".to_string(), ip)),
        addresses: Vec::new(),
        ports,
        external_traffic_policy_local: spec.external_traffic_policy.as_deref() == Some("Local"),
        selector: spec.selector.clone().unwrap_or_default(),
        status,
    }))
}

/// What a request is built from, for Services and synthesized gateway Services alike.
struct Source<'a> {
    namespace: &'a str,
    name: &'a str,
    labels: &'a BTreeMap<String, String>,
    annotations: &'a BTreeMap<String, String>,
    /// Where `annotations` live, for problems.
    annotations_field: &'a str,
    load_balancer_ip: Option<(String, &'a str)>,
    /// Further requested addresses with their fields (a Gateway's `spec.addresses`).
    addresses: Vec<(String, &'a str)>,
    ports: BTreeSet<(u16, u8)>,
    external_traffic_policy_local: bool,
    selector: BTreeMap<String, String>,
    status: Vec<Ipv4Addr>,
}

fn annotation<'a>(
    annotations: &'a BTreeMap<String, String>,
    keys: [&str; 2],
) -> Option<(&'a str, &'a str)> {
    keys.into_iter().find_map(|k| {
        annotations
            .get_key_value(k)
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .filter(|(_, v)| !v.trim().is_empty())
    })
}

fn build(src: Source<'_>) -> (LbRequest, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut labels = src.labels.clone();
    labels.insert(SERVICE_NAMESPACE_LABEL.into(), src.namespace.into());
    labels.insert(SERVICE_NAME_LABEL.into(), src.name.into());
    let mut texts: Vec<(String, &str)> = Vec::new();
    texts.extend(src.load_balancer_ip.filter(|(_, t)| !t.trim().is_empty()));
    let mut request_field = texts.first().map(|(f, _)| f.clone());
    if let Some((key, value)) = annotation(src.annotations, [IPS_ANNOTATION, IPS_ANNOTATION_LEGACY])
    {
        let field = format!("{}[{key}]", src.annotations_field);
        request_field = Some(field.clone());
        texts.extend(
            value
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(|t| (field.clone(), t)),
        );
    }
    if request_field.is_none() {
        request_field = src.addresses.first().map(|(f, _)| f.clone());
    }
    texts.extend(src.addresses);
    let mut requested = Vec::new();
    for (field, text) in texts {
        match text.trim().parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => {
                if !requested.contains(&ip) {
                    requested.push(ip);
                }
            }
            Ok(IpAddr::V6(_)) => {} // IPv4 only
            Err(_) => problems.push(Problem::new(
                src.namespace,
                src.name,
                field,
                format!("{text:?} is not an IP address; not requested"),
            )),
        }
    }
    let sharing_key = annotation(
        src.annotations,
        [SHARING_KEY_ANNOTATION, SHARING_KEY_ANNOTATION_LEGACY],
    )
    .map(|(_, v)| v.to_string());
    let sharing_cross_namespace = annotation(
        src.annotations,
        [
            SHARING_CROSS_NAMESPACE_ANNOTATION,
            SHARING_CROSS_NAMESPACE_ANNOTATION_LEGACY,
        ],
    )
    .map(|(_, v)| {
        v.split(',')
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect()
    })
    .unwrap_or_default();
    let request = LbRequest {
        namespace: src.namespace.into(),
        name: src.name.into(),
        labels,
        requested,
        request_field: request_field.unwrap_or_else(|| "status.loadBalancer".into()),
        sharing_key,
        sharing_cross_namespace,
        ports: src.ports,
        external_traffic_policy_local: src.external_traffic_policy_local,
        selector: src.selector,
        status: src.status,
    };
    (request, problems)
}

/// The name under which a Gateway's synthesized LoadBalancer Service is allocated, in the
/// Gateway's namespace: `envoy-<namespace>-<name>-<hash>`, Envoy Gateway's shape (its prefix
/// cut at 48 characters, then 8 hex digits). The hash is this crate's stable hash of
/// `namespace/name`, not Envoy Gateway's SHA-256, so the name is stable but not the one a
/// cluster running Envoy Gateway shows. Look gateways' addresses up with
/// `assignments.load_balancer_ips(namespace, &gateway_service_name(namespace, name))`.
pub fn gateway_service_name(namespace: &str, name: &str) -> String {
    let mut prefix = format!("envoy-{namespace}-{name}");
    if prefix.len() > GATEWAY_SERVICE_PREFIX_MAX {
        let mut cut = GATEWAY_SERVICE_PREFIX_MAX;
        while !prefix.is_char_boundary(cut) {
            cut -= 1;
        }
        prefix.truncate(cut);
    }
    let hash = hash64(format!("{namespace}/{name}").as_bytes(), 0) >> 32;
    format!("{prefix}-{hash:08x}")
}

/// The addresses LB-IPAM assigned to a Gateway's synthesized Service (empty when none).
pub fn gateway_load_balancer_ips<'a>(
    assignments: &'a Assignments,
    namespace: &str,
    name: &str,
) -> &'a [Ipv4Addr] {
    assignments.load_balancer_ips(namespace, &gateway_service_name(namespace, name))
}

/// A pool's status as Cilium's operator writes it: `cilium.io/PoolConflict` (True, with the
/// reason, when the pool conflicts with another) and the address counts `cilium.io/IPsTotal`,
/// `cilium.io/IPsAvailable` and `cilium.io/IPsUsed` (status Unknown, the count as message).
pub fn pool_conditions(pool: &Pool, allocation: &Allocation) -> Vec<Condition> {
    let total: u64 = pool
        .blocks
        .iter()
        .map(|b| {
            u64::from(b.usable.1.saturating_sub(b.usable.0)) + u64::from(b.usable.1 >= b.usable.0)
        })
        .sum();
    let used: BTreeSet<Ipv4Addr> = allocation
        .ips
        .values()
        .flatten()
        .copied()
        .filter(|ip| {
            let n = u32::from(*ip);
            pool.blocks
                .iter()
                .any(|b| b.usable.0 <= n && n <= b.usable.1)
        })
        .collect();
    let used = used.len() as u64;
    let count = |type_: &str, n: u64| Condition {
        type_: type_.into(),
        status: Status::Unknown,
        reason: "noreason".into(),
        message: n.to_string(),
    };
    vec![
        match &pool.conflict {
            Some(why) => Condition {
                type_: "cilium.io/PoolConflict".into(),
                status: Status::True,
                reason: "cidr_overlap".into(),
                message: why.clone(),
            },
            None => Condition {
                type_: "cilium.io/PoolConflict".into(),
                status: Status::False,
                reason: "resolved".into(),
                message: String::new(),
            },
        },
        count("cilium.io/IPsTotal", total),
        count("cilium.io/IPsAvailable", total.saturating_sub(used)),
        count("cilium.io/IPsUsed", used),
    ]
}

/// Each served Gateway's addresses in an allocation, by (namespace, name): those of its own
/// LoadBalancer Service when the snapshot has one (the owning-gateway labels), else those of
/// the Service [`gateway_requests`] synthesized for it.
pub fn gateway_addresses(
    snapshot: &Snapshot,
    allocation: &Allocation,
) -> BTreeMap<(String, String), Vec<Ipv4Addr>> {
    let mut out = BTreeMap::new();
    for svc in snapshot.services.values() {
        let label = |k: &str| svc.meta.labels.get(k).cloned();
        if let (Some(ns), Some(name)) = (
            label(OWNING_GATEWAY_NAMESPACE_LABEL),
            label(OWNING_GATEWAY_NAME_LABEL),
        ) && let Some(ips) = allocation
            .ips
            .get(&format!("{}/{}", svc.namespace(), svc.name()))
        {
            out.insert((ns, name), ips.clone());
        }
    }
    for gw in snapshot.gateways.values() {
        let (ns, name) = (gw.namespace(), gw.name());
        let key = (ns.to_string(), name.to_string());
        if out.contains_key(&key) {
            continue;
        }
        if let Some(ips) = allocation
            .ips
            .get(&format!("{ns}/{}", gateway_service_name(ns, name)))
        {
            out.insert(key, ips.clone());
        }
    }
    out
}

/// The LoadBalancer Service requests Envoy Gateway would create for the Gateways trellis
/// serves (GatewayClass controller in [`model::validate::CONTROLLER_NAMES`]), named by
/// [`gateway_service_name`]. What Envoy Gateway puts on that Service and LB-IPAM reads:
///
/// - annotations: the EnvoyProxy's `provider.kubernetes.envoyService.annotations`, then the
///   Gateway's `spec.infrastructure.annotations` over them;
/// - labels: the owning-gateway labels, `app.kubernetes.io/{name: envoy, component: proxy,
///   managed-by: envoy-gateway}`, the EnvoyProxy's service labels and the infrastructure's;
/// - `loadBalancerIP` and `loadBalancerClass` from the EnvoyProxy's service, and each
///   `IPAddress` in the Gateway's `spec.addresses` as a request;
/// - ports: the listeners' ports (UDP listeners UDP, the rest TCP);
/// - `externalTrafficPolicy`: the EnvoyProxy's, else `Local` (Envoy Gateway's default), and
///   the proxy pods' labels as selector.
///
/// The EnvoyProxy is the Gateway's `infrastructure.parametersRef`, else its class's. A Gateway
/// whose EnvoyProxy makes the Service something else than a LoadBalancer, or gives it a class
/// LB-IPAM does not serve, gets nothing; so does one whose Service is in the snapshot already
/// (a Service with the owning-gateway labels), which is then allocated as itself.
pub fn gateway_requests(snapshot: &Snapshot) -> Vec<(LbRequest, Vec<Problem>)> {
    let mut out = Vec::new();
    // Gateways whose Envoy Gateway Service is in the snapshot, by (namespace, name).
    let owned: BTreeSet<(&str, &str)> = snapshot
        .services
        .values()
        .filter_map(|s| {
            let label = |k: &str| s.meta.labels.get(k).map(String::as_str);
            Some((
                label(OWNING_GATEWAY_NAMESPACE_LABEL)?,
                label(OWNING_GATEWAY_NAME_LABEL)?,
            ))
        })
        .collect();
    for gw in snapshot.gateways.values() {
        let (ns, name) = (gw.namespace(), gw.name());
        if owned.contains(&(ns, name)) {
            continue;
        }
        let Some(class) = get(&snapshot.gateway_classes, "", &gw.spec.gateway_class_name) else {
            continue;
        };
        if !model::validate::CONTROLLER_NAMES.contains(&class.spec.controller_name.as_str()) {
            continue;
        }
        let infra = gw.spec.infrastructure.as_ref();
        let proxy = infra
            .and_then(|i| i.parameters_ref.as_ref())
            .filter(|p| p.kind == "EnvoyProxy")
            .and_then(|p| get(&snapshot.envoy_proxies, ns, &p.name))
            .or_else(|| {
                let p = class
                    .spec
                    .parameters_ref
                    .as_ref()
                    .filter(|p| p.kind == "EnvoyProxy")?;
                get(
                    &snapshot.envoy_proxies,
                    p.namespace.as_deref().unwrap_or_default(),
                    &p.name,
                )
            });
        let envoy_service = proxy
            .and_then(|p| p.spec.provider.as_ref())
            .and_then(|p| p.pointer("/kubernetes/envoyService"));
        let field = |k: &str| envoy_service.and_then(|s| s.get(k)).and_then(Value::as_str);
        if field("type").unwrap_or("LoadBalancer") != "LoadBalancer" {
            continue;
        }
        if let Some(class) = field("loadBalancerClass")
            && !LB_CLASSES.contains(&class)
        {
            continue;
        }
        let string_map = |v: Option<&Value>| -> BTreeMap<String, String> {
            v.and_then(Value::as_object)
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        };
        let mut annotations = string_map(envoy_service.and_then(|s| s.get("annotations")));
        annotations.extend(
            infra
                .and_then(|i| i.annotations.clone())
                .unwrap_or_default(),
        );
        let selector: BTreeMap<String, String> = [
            ("app.kubernetes.io/name", "envoy"),
            ("app.kubernetes.io/component", "proxy"),
            ("app.kubernetes.io/managed-by", "envoy-gateway"),
            (OWNING_GATEWAY_NAME_LABEL, name),
            (OWNING_GATEWAY_NAMESPACE_LABEL, ns),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut labels = selector.clone();
        labels.extend(string_map(envoy_service.and_then(|s| s.get("labels"))));
        labels.extend(infra.and_then(|i| i.labels.clone()).unwrap_or_default());
        let ports = gw
            .spec
            .listeners
            .iter()
            .filter_map(|l| {
                let proto = if l.protocol == "UDP" { "UDP" } else { "TCP" };
                Some((u16::try_from(l.port).ok()?, protocol_number(proto)?))
            })
            .collect();
        let addresses = gw
            .spec
            .addresses
            .iter()
            .flatten()
            .enumerate()
            .filter(|(_, a)| a.r#type.as_deref().is_none_or(|t| t == "IPAddress"))
            .filter_map(|(i, a)| Some((format!("spec.addresses[{i}].value"), a.value.as_deref()?)))
            .collect();
        let service_name = gateway_service_name(ns, name);
        let (mut request, mut problems) = build(Source {
            namespace: ns,
            name: &service_name,
            labels: &labels,
            annotations: &annotations,
            annotations_field: "spec.infrastructure.annotations",
            load_balancer_ip: field("loadBalancerIP").map(|ip| {
                (
                    "EnvoyProxy spec.provider.kubernetes.envoyService.loadBalancerIP".to_string(),
                    ip,
                )
            }),
            addresses,
            ports,
            external_traffic_policy_local: field("externalTrafficPolicy").unwrap_or("Local")
                == "Local",
            selector,
            status: Vec::new(),
        });
        // Problems name the Gateway, whose manifest holds the fields.
        for p in &mut problems {
            p.name = format!("{name} (gateway)");
        }
        request.request_field = format!("gateway {name}: {}", request.request_field);
        out.push((request, problems));
    }
    out
}

/// Why a request for an address was refused: a Cilium reason and a message.
type Refusal = (&'static str, String);

/// Whether `a` and `b` may share an address, or why not (Cilium's `isCompatible`).
fn compatible(a: &LbRequest, b: &LbRequest) -> Result<(), String> {
    if a.sharing_key.is_none() || a.sharing_key != b.sharing_key {
        return Err("different sharing key".into());
    }
    let allows = |r: &LbRequest, ns: &str| {
        r.sharing_cross_namespace
            .iter()
            .any(|n| n == ns || n == "*")
    };
    if a.namespace != b.namespace && !(allows(a, &b.namespace) && allows(b, &a.namespace)) {
        return Err("different and not permitted namespace".into());
    }
    if let Some((port, proto)) = a.ports.intersection(&b.ports).next() {
        return Err(format!(
            "same port and protocol ({port}/{})",
            protocol_name(*proto)
        ));
    }
    if a.external_traffic_policy_local != b.external_traffic_policy_local {
        return Err("different ExternalTrafficPolicy".into());
    }
    if a.external_traffic_policy_local
        && (a.selector.is_empty() || b.selector.is_empty() || a.selector != b.selector)
    {
        return Err("ExternalTrafficPolicy Local but selecting different sets of pods".into());
    }
    Ok(())
}

/// The allocator's working state: who holds which address.
struct State<'a> {
    pools: &'a [Pool],
    reqs: Vec<&'a LbRequest>,
    held: Vec<Vec<u32>>,
    owners: BTreeMap<u32, Vec<usize>>,
    /// The addresses held by Services with each sharing key.
    by_key: BTreeMap<&'a str, BTreeSet<u32>>,
    /// By usable range: every address below this one is held (addresses are only taken
    /// during one allocation, never given back), so the search for a free one starts here.
    cursor: BTreeMap<(u32, u32), u32>,
    failures: Vec<Option<Refusal>>,
    problems: Vec<Problem>,
}

/// Which addresses a lookup accepts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Keeping an address: any pool that selects the Service, disabled ones too, anywhere in
    /// its blocks (an address reserved after it was handed out is not taken back).
    Keep,
    /// A new address: enabled pools only, reserved addresses excluded.
    New,
}

impl<'a> State<'a> {
    /// A pool that selects request `i` and holds address `a`.
    fn pool_for(&self, i: usize, a: u32, mode: Mode) -> Option<&'a Pool> {
        self.pools.iter().find(|p| {
            p.selects(self.reqs[i])
                && (mode == Mode::Keep || p.enabled())
                && p.blocks.iter().any(|b| {
                    let (s, e) = if mode == Mode::Keep { b.span } else { b.usable };
                    (s..=e).contains(&a)
                })
        })
    }

    /// Whether request `i` may take address `a`, alone or sharing it.
    fn shareable(&self, i: usize, a: u32) -> Result<(), Refusal> {
        let Some(holders) = self.owners.get(&a).filter(|h| !h.is_empty()) else {
            return Ok(());
        };
        let ip = Ipv4Addr::from(a);
        let first = self.reqs[holders[0]].key();
        if self.reqs[i].sharing_key.is_none() {
            return Err((
                reason::ALREADY_ALLOCATED,
                format!("The IP '{ip}' is already allocated to another service ({first})"),
            ));
        }
        for &h in holders {
            if let Err(why) = compatible(self.reqs[h], self.reqs[i]) {
                return Err((
                    reason::ALREADY_ALLOCATED_INCOMPATIBLE,
                    format!(
                        "The IP '{ip}' is already allocated to an incompatible service ({}). Reason: {why}",
                        self.reqs[h].key()
                    ),
                ));
            }
        }
        Ok(())
    }

    fn take(&mut self, i: usize, a: u32) {
        self.owners.entry(a).or_default().push(i);
        self.held[i].push(a);
        if let Some(key) = &self.reqs[i].sharing_key {
            self.by_key.entry(key.as_str()).or_default().insert(a);
        }
    }

    fn fail(&mut self, i: usize, field: &str, (reason, message): Refusal) {
        let r = self.reqs[i];
        self.problems.push(Problem::new(
            &r.namespace,
            &r.name,
            field,
            format!("{reason}: {message}"),
        ));
        self.failures[i] = Some((reason, message));
    }

    /// Where a requested address may come from, or why it may not.
    fn requested_pool(&self, i: usize, a: u32) -> Result<(), Refusal> {
        let ip = Ipv4Addr::from(a);
        let containing: Vec<(&Pool, &Block)> = self
            .pools
            .iter()
            .filter(|p| p.enabled())
            .flat_map(|p| p.blocks.iter().map(move |b| (p, b)))
            .filter(|(_, b)| (b.span.0..=b.span.1).contains(&a))
            .collect();
        if containing.is_empty() {
            return Err((
                reason::NO_POOL,
                format!("No enabled pool exists with a CIDR containing '{ip}'"),
            ));
        }
        let Some((pool, block)) = containing.iter().find(|(p, _)| p.selects(self.reqs[i])) else {
            return Err((
                reason::POOL_SELECTOR_MISMATCH,
                format!("The pool with the CIDR containing '{ip}', doesn't select this service"),
            ));
        };
        if !(block.usable.0..=block.usable.1).contains(&a) {
            return Err((
                reason::ALREADY_ALLOCATED,
                format!(
                    "The IP '{ip}' is the first or last address of '{}' in pool '{}', reserved by allowFirstLastIPs: No",
                    block.text, pool.name
                ),
            ));
        }
        Ok(())
    }

    /// The first address of `usable` that nobody holds.
    fn first_free(&mut self, (s, e): (u32, u32)) -> Option<u32> {
        let mut next = self.cursor.get(&(s, e)).copied().unwrap_or(s);
        if next > e {
            return None;
        }
        for (&a, holders) in self.owners.range(next..=e) {
            if holders.is_empty() {
                continue;
            }
            if a > next {
                break;
            }
            next = a.checked_add(1)?;
        }
        self.cursor.insert((s, e), next);
        (next <= e).then_some(next)
    }
}

/// Allocates addresses for `requests` from `pools`, keeping `previous` where still valid. See
/// the module documentation for the rules. Nothing is allocated without pools.
pub fn allocate(pools: &[Pool], requests: &[LbRequest], previous: &Assignments) -> Allocation {
    if pools.is_empty() {
        return Allocation::default();
    }
    let mut reqs: Vec<&LbRequest> = requests.iter().collect();
    reqs.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    reqs.dedup_by(|a, b| a.namespace == b.namespace && a.name == b.name);
    let mut problems = Vec::new();
    if let Some(first) = reqs.get(REQUESTS_MAX) {
        problems.push(Problem::new(
            &first.namespace,
            &first.name,
            "",
            format!(
                "more than {REQUESTS_MAX} LoadBalancer services: this one and the {} after it get no address",
                reqs.len() - REQUESTS_MAX - 1
            ),
        ));
        reqs.truncate(REQUESTS_MAX);
    }
    let n = reqs.len();
    let mut st = State {
        pools,
        reqs,
        held: vec![Vec::new(); n],
        owners: BTreeMap::new(),
        by_key: BTreeMap::new(),
        cursor: BTreeMap::new(),
        failures: vec![None; n],
        problems,
    };

    // 1. What each Service held before (or its status says it holds), while still valid.
    for i in 0..n {
        let r = st.reqs[i];
        let previous_ips = previous.load_balancer_ips(&r.namespace, &r.name);
        let candidates = previous_ips
            .iter()
            .map(|&ip| (ip, Mode::Keep))
            .chain(r.status.iter().map(|&ip| (ip, Mode::New)));
        for (ip, mode) in candidates {
            let a = u32::from(ip);
            let wanted = if r.requested.is_empty() {
                st.held[i].is_empty() // one address of the family, as Cilium gives
            } else {
                r.requested.contains(&ip)
            };
            if wanted
                && !st.held[i].contains(&a)
                && st.pool_for(i, a, mode).is_some()
                && st.shareable(i, a).is_ok()
            {
                st.take(i, a);
            }
        }
    }

    // 2. Requested addresses.
    for i in 0..n {
        let r = st.reqs[i];
        for &ip in &r.requested {
            let a = u32::from(ip);
            if st.held[i].contains(&a) {
                continue;
            }
            match st.requested_pool(i, a).and_then(|()| st.shareable(i, a)) {
                Ok(()) => st.take(i, a),
                Err(refusal) => st.fail(i, &r.request_field, refusal),
            }
        }
    }

    // 3. Everyone else: an address of the sharing key, else the first free one.
    for i in 0..n {
        let r = st.reqs[i];
        if !r.requested.is_empty() || !st.held[i].is_empty() {
            continue;
        }
        if let Some(key) = &r.sharing_key {
            let shared = st
                .by_key
                .get(key.as_str())
                .into_iter()
                .flatten()
                .copied()
                .find(|&a| st.pool_for(i, a, Mode::Keep).is_some() && st.shareable(i, a).is_ok());
            if let Some(a) = shared {
                st.take(i, a);
                continue;
            }
        }
        let mut matched = false;
        let mut found = None;
        for p in pools.iter().filter(|p| p.enabled() && p.selects(r)) {
            matched = true;
            found = p.blocks.iter().find_map(|b| st.first_free(b.usable));
            if found.is_some() {
                break;
            }
        }
        match found {
            Some(a) => st.take(i, a),
            None if matched => st.fail(
                i,
                "status.loadBalancer",
                (
                    reason::OUT_OF_IPS,
                    "All enabled CiliumLoadBalancerIPPools that match this service ran out of allocatable IPs".into(),
                ),
            ),
            None => st.fail(
                i,
                "status.loadBalancer",
                (
                    reason::NO_POOL,
                    "There are no enabled CiliumLoadBalancerIPPools that match this service".into(),
                ),
            ),
        }
    }

    let mut out = Allocation {
        problems: std::mem::take(&mut st.problems),
        ..Allocation::default()
    };
    for (i, r) in st.reqs.iter().enumerate() {
        let key = r.key();
        let mut ips: Vec<Ipv4Addr> = st.held[i].iter().map(|&a| Ipv4Addr::from(a)).collect();
        ips.sort();
        let condition = match st.failures[i].take() {
            Some((reason, message)) => RequestCondition {
                satisfied: false,
                reason: reason.into(),
                message: format!("service {key}: {message}"),
            },
            None => RequestCondition {
                satisfied: true,
                reason: reason::SATISFIED.into(),
                message: format!(
                    "service {key}: {}",
                    ips.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            },
        };
        out.conditions.insert(key.clone(), condition);
        if !ips.is_empty() {
            out.ips.insert(key, ips);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use ipnet::Ipv4Net;

    use super::*;
    use crate::assign::{NODE_PORT_RANGE_DEFAULT, assign};
    use crate::plan::{FabricConfig, compile};
    use crate::testing::snapshot;

    fn pool(name: &str, spec: &str) -> String {
        format!(
            "apiVersion: cilium.io/v2\nkind: CiliumLoadBalancerIPPool\nmetadata: {{name: {name}}}\nspec: {spec}\n---\n"
        )
    }

    /// A LoadBalancer Service; `meta` and `spec` are extra flow-mapping entries.
    fn lb(ns: &str, name: &str, meta: &str, spec: &str) -> String {
        let spec = if spec.contains("ports:") {
            spec.to_string()
        } else {
            format!("ports: [{{port: 80}}], {spec}")
        };
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}, {meta}}}\n\
             spec: {{type: LoadBalancer, allocateLoadBalancerNodePorts: false, {spec}}}\n---\n"
        )
    }

    fn cidr() -> Ipv4Net {
        "10.96.0.0/12".parse().expect("cidr")
    }

    fn run(text: &str, previous: &Assignments) -> Assignments {
        assign(&snapshot(text), previous, cidr(), NODE_PORT_RANGE_DEFAULT)
    }

    fn ips(a: &Assignments, key: &str) -> Vec<String> {
        let (ns, name) = key.split_once('/').expect("ns/name");
        a.load_balancer_ips(ns, name)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// `True satisfied` or `False <reason>`.
    fn cond(a: &Assignments, key: &str) -> String {
        let (ns, name) = key.split_once('/').expect("ns/name");
        a.load_balancer_condition(ns, name)
            .map(|c| {
                let c = c.condition();
                assert_eq!(c.type_, REQUEST_SATISFIED_CONDITION);
                format!("{} {}", c.status, c.reason)
            })
            .unwrap_or_else(|| "none".into())
    }

    fn message(a: &Assignments, key: &str) -> String {
        let (ns, name) = key.split_once('/').expect("ns/name");
        a.load_balancer_condition(ns, name)
            .map(|c| c.message.clone())
            .unwrap_or_default()
    }

    #[test]
    fn cidr_blocks_reserve_first_and_last_only_when_told() {
        let services = [
            lb("apps", "a", "", ""),
            lb("apps", "b", "", ""),
            lb("apps", "c", "", ""),
        ]
        .concat();
        // "No": the network and broadcast addresses of the /30 are not handed out.
        let a = run(
            &(pool(
                "p",
                "{allowFirstLastIPs: 'No', blocks: [{cidr: 10.0.0.0/30}]}",
            ) + &services),
            &Assignments::default(),
        );
        assert_eq!(ips(&a, "apps/a"), ["10.0.0.1"]);
        assert_eq!(ips(&a, "apps/b"), ["10.0.0.2"]);
        assert_eq!(ips(&a, "apps/c"), Vec::<String>::new());
        assert_eq!(cond(&a, "apps/a"), "True satisfied");
        assert_eq!(message(&a, "apps/a"), "service apps/a: 10.0.0.1");
        assert_eq!(cond(&a, "apps/c"), "False out_of_ips");
        assert_eq!(a.problems.len(), 1, "{:?}", a.problems);

        // Unset is "Yes" (Cilium >= 1.16): every address of the block.
        for spec in [
            "{blocks: [{cidr: 10.0.0.0/30}]}",
            "{allowFirstLastIPs: 'Yes', blocks: [{cidr: 10.0.0.0/30}]}",
        ] {
            let a = run(&(pool("p", spec) + &services), &Assignments::default());
            assert_eq!(ips(&a, "apps/a"), ["10.0.0.0"], "{spec}");
            assert_eq!(ips(&a, "apps/c"), ["10.0.0.2"], "{spec}");
        }

        // A /31 keeps both addresses even with "No".
        let a = run(
            &(pool(
                "p",
                "{allowFirstLastIPs: 'No', blocks: [{cidr: 10.0.0.0/31}]}",
            ) + &services),
            &Assignments::default(),
        );
        assert_eq!(ips(&a, "apps/a"), ["10.0.0.0"]);
        assert_eq!(ips(&a, "apps/b"), ["10.0.0.1"]);

        // Requesting a reserved address is refused, saying why.
        let a = run(
            &(pool(
                "p",
                "{allowFirstLastIPs: 'No', blocks: [{cidr: 10.0.0.0/24}]}",
            ) + &lb(
                "apps",
                "net",
                "annotations: {lbipam.cilium.io/ips: 10.0.0.255}",
                "",
            )),
            &Assignments::default(),
        );
        assert_eq!(cond(&a, "apps/net"), "False already_allocated");
        assert!(
            message(&a, "apps/net").contains("reserved by allowFirstLastIPs: No"),
            "{a:?}"
        );
    }

    #[test]
    fn ranges_are_inclusive_and_never_reserve() {
        let text = pool(
            "p",
            "{allowFirstLastIPs: 'No', blocks: [{start: 10.0.0.10, stop: 10.0.0.11}, {start: 10.0.0.20}]}",
        ) + &[
            lb("apps", "a", "", ""),
            lb("apps", "b", "", ""),
            lb("apps", "c", "", ""),
            lb("apps", "d", "", ""),
        ]
        .concat();
        let a = run(&text, &Assignments::default());
        assert_eq!(ips(&a, "apps/a"), ["10.0.0.10"]);
        assert_eq!(ips(&a, "apps/b"), ["10.0.0.11"]);
        assert_eq!(ips(&a, "apps/c"), ["10.0.0.20"], "stop defaults to start");
        assert_eq!(cond(&a, "apps/d"), "False out_of_ips");
    }

    #[test]
    fn service_selectors_pick_the_pool() {
        let text = [
            pool(
                "blue",
                "{blocks: [{cidr: 10.0.1.0/24}], serviceSelector: {matchExpressions: [{key: color, operator: In, values: [blue, cyan]}]}}",
            ),
            pool(
                "red",
                "{blocks: [{cidr: 10.0.2.0/24}], serviceSelector: {matchLabels: {color: red}}}",
            ),
            pool(
                "tenant",
                "{blocks: [{cidr: 10.0.3.0/24}], serviceSelector: {matchLabels: {io.kubernetes.service.namespace: tenant-a}}}",
            ),
            lb("apps", "cyan", "labels: {color: cyan}", ""),
            lb("apps", "red", "labels: {color: red}", ""),
            lb("tenant-a", "x", "", ""),
            lb("apps", "plain", "", ""),
            lb(
                "apps",
                "wrong",
                "labels: {color: red}, annotations: {lbipam.cilium.io/ips: 10.0.1.9}",
                "",
            ),
            lb(
                "apps",
                "nowhere",
                "labels: {color: red}, annotations: {lbipam.cilium.io/ips: 192.0.2.1}",
                "",
            ),
        ]
        .concat();
        let a = run(&text, &Assignments::default());
        assert_eq!(ips(&a, "apps/cyan"), ["10.0.1.0"]);
        assert_eq!(ips(&a, "apps/red"), ["10.0.2.0"]);
        assert_eq!(ips(&a, "tenant-a/x"), ["10.0.3.0"]);
        assert_eq!(cond(&a, "apps/plain"), "False no_pool");
        assert_eq!(
            message(&a, "apps/plain"),
            "service apps/plain: There are no enabled CiliumLoadBalancerIPPools that match this service"
        );
        assert_eq!(cond(&a, "apps/wrong"), "False pool_selector_mismatch");
        assert_eq!(ips(&a, "apps/wrong"), Vec::<String>::new());
        assert_eq!(cond(&a, "apps/nowhere"), "False no_pool");
    }

    #[test]
    fn disabled_pools_keep_what_they_gave_and_give_nothing_new() {
        let text = |disabled: bool| {
            [
                pool(
                    "a",
                    &format!("{{disabled: {disabled}, blocks: [{{cidr: 10.0.0.0/24}}]}}"),
                ),
                pool("b", "{blocks: [{cidr: 10.1.0.0/24}]}"),
                lb("apps", "old", "", ""),
                lb("apps", "new", "", ""),
                lb(
                    "apps",
                    "asks",
                    "annotations: {lbipam.cilium.io/ips: 10.0.0.7}",
                    "",
                ),
            ]
            .concat()
        };
        let before = run(&text(false), &Assignments::default());
        assert_eq!(ips(&before, "apps/old"), ["10.0.0.1"]);
        assert_eq!(ips(&before, "apps/asks"), ["10.0.0.7"]);
        let mut previous = before.clone();
        previous.services.remove("apps/new");
        previous.services.remove("apps/asks");

        let after = run(&text(true), &previous);
        assert_eq!(ips(&after, "apps/old"), ["10.0.0.1"], "kept");
        assert_eq!(cond(&after, "apps/old"), "True satisfied");
        assert_eq!(
            ips(&after, "apps/new"),
            ["10.1.0.0"],
            "from the enabled pool"
        );
        assert_eq!(cond(&after, "apps/asks"), "False no_pool");
        assert_eq!(ips(&after, "apps/asks"), Vec::<String>::new());

        // A pool overlapping one earlier by name conflicts and hands out nothing.
        let text = [
            pool(
                "a",
                "{blocks: [{cidr: 10.0.0.0/24}], serviceSelector: {matchLabels: {x: y}}}",
            ),
            pool("b", "{blocks: [{start: 10.0.0.200, stop: 10.0.1.5}]}"),
            lb("apps", "s", "", ""),
        ]
        .concat();
        let s = snapshot(&text);
        let pools = pools(&s);
        assert_eq!(pools[0].conflict, None);
        assert_eq!(
            pools[1].conflict.as_deref(),
            Some("range '10.0.0.200 - 10.0.1.5' overlaps range '10.0.0.0/24' from IP Pool 'a'")
        );
        assert_eq!(
            cond(&run(&text, &Assignments::default()), "apps/s"),
            "False no_pool"
        );
    }

    #[test]
    fn requests_through_both_annotations_and_load_balancer_ip() {
        let text = [
            pool("p", "{blocks: [{cidr: 10.0.0.0/24}]}"),
            lb(
                "apps",
                "new",
                "annotations: {lbipam.cilium.io/ips: '10.0.0.20, 10.0.0.21'}",
                "",
            ),
            lb(
                "apps",
                "legacy",
                "annotations: {io.cilium/lb-ipam-ips: 10.0.0.30}",
                "",
            ),
            lb("apps", "field", "", "loadBalancerIP: 10.0.0.40"),
            lb(
                "apps",
                "both",
                "annotations: {lbipam.cilium.io/ips: 10.0.0.50}",
                "loadBalancerIP: 10.0.0.51",
            ),
            lb(
                "apps",
                "bad",
                "annotations: {lbipam.cilium.io/ips: 'nope, 10.0.0.60, fd00::1'}",
                "",
            ),
            lb("apps", "generic", "", ""),
        ]
        .concat();
        let a = run(&text, &Assignments::default());
        assert_eq!(ips(&a, "apps/new"), ["10.0.0.20", "10.0.0.21"]);
        assert_eq!(
            message(&a, "apps/new"),
            "service apps/new: 10.0.0.20, 10.0.0.21"
        );
        assert_eq!(ips(&a, "apps/legacy"), ["10.0.0.30"]);
        assert_eq!(ips(&a, "apps/field"), ["10.0.0.40"]);
        assert_eq!(ips(&a, "apps/both"), ["10.0.0.50", "10.0.0.51"]);
        assert_eq!(
            ips(&a, "apps/bad"),
            ["10.0.0.60"],
            "IPv6 skipped, junk reported"
        );
        assert_eq!(cond(&a, "apps/bad"), "True satisfied");
        assert_eq!(ips(&a, "apps/generic"), ["10.0.0.0"]);
        let problems: Vec<String> = a.problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            problems,
            [
                "service apps/bad: metadata.annotations[lbipam.cilium.io/ips]: \"nope\" is not an IP address; not requested"
            ]
        );
    }

    #[test]
    fn sharing_keys_share_when_ports_do_not_collide() {
        let key = |k: &str| format!("annotations: {{lbipam.cilium.io/sharing-key: {k}}}");
        let text = [
            pool("p", "{blocks: [{cidr: 10.0.0.0/24}]}"),
            lb("apps", "a", &key("k"), "ports: [{port: 80}]"),
            lb("apps", "b", &key("k"), "ports: [{port: 443}]"),
            lb("apps", "c", &key("k"), "ports: [{port: 80}]"),
            lb("apps", "d", &key("k"), "ports: [{port: 80, protocol: UDP}]"),
            lb(
                "apps",
                "e",
                "annotations: {io.cilium/lb-ipam-sharing-key: k}",
                "ports: [{port: 8080}]",
            ),
            lb("apps", "f", &key("other"), "ports: [{port: 9090}]"),
            lb("apps", "g", "", "ports: [{port: 9091}]"),
            lb(
                "apps",
                "l",
                &key("k"),
                "externalTrafficPolicy: Local, ports: [{port: 7002}]",
            ),
        ]
        .concat();
        let a = run(&text, &Assignments::default());
        assert_eq!(ips(&a, "apps/a"), ["10.0.0.0"]);
        assert_eq!(ips(&a, "apps/b"), ["10.0.0.0"], "no port in common");
        assert_eq!(ips(&a, "apps/c"), ["10.0.0.1"], "80/TCP collides with a");
        assert_eq!(ips(&a, "apps/d"), ["10.0.0.0"], "80/UDP is another port");
        assert_eq!(ips(&a, "apps/e"), ["10.0.0.0"], "the older annotation");
        assert_eq!(ips(&a, "apps/f"), ["10.0.0.2"], "another key");
        assert_eq!(ips(&a, "apps/g"), ["10.0.0.3"], "no key");
        assert_eq!(
            ips(&a, "apps/l"),
            ["10.0.0.4"],
            "another externalTrafficPolicy"
        );
        assert_eq!(run(&text, &a), a, "stable");

        // Services added later that request the shared address: incompatible, without a
        // key, compatible.
        let more = text + &[
            lb(
                "apps",
                "h",
                "annotations: {lbipam.cilium.io/sharing-key: k, lbipam.cilium.io/ips: 10.0.0.0}",
                "ports: [{port: 443}]",
            ),
            lb(
                "apps",
                "i",
                "annotations: {lbipam.cilium.io/ips: 10.0.0.0}",
                "ports: [{port: 7000}]",
            ),
            lb(
                "apps",
                "j",
                "annotations: {lbipam.cilium.io/sharing-key: k, lbipam.cilium.io/ips: 10.0.0.0}",
                "ports: [{port: 7001}]",
            ),
        ]
        .concat();
        let a = run(&more, &a);
        assert_eq!(ips(&a, "apps/b"), ["10.0.0.0"]);
        assert_eq!(ips(&a, "apps/h"), Vec::<String>::new());
        assert_eq!(
            cond(&a, "apps/h"),
            "False already_allocated_incompatible_service"
        );
        assert_eq!(
            message(&a, "apps/h"),
            "service apps/h: The IP '10.0.0.0' is already allocated to an incompatible service \
             (apps/b). Reason: same port and protocol (443/TCP)"
        );
        assert_eq!(cond(&a, "apps/i"), "False already_allocated");
        assert_eq!(
            message(&a, "apps/i"),
            "service apps/i: The IP '10.0.0.0' is already allocated to another service (apps/a)"
        );
        assert_eq!(ips(&a, "apps/j"), ["10.0.0.0"]);
        assert_eq!(cond(&a, "apps/j"), "True satisfied");
        assert_eq!(run(&more, &a), a, "stable");
    }

    #[test]
    fn sharing_across_namespaces_needs_both_sides() {
        let meta = |cross: &str| {
            format!(
                "annotations: {{lbipam.cilium.io/sharing-key: k, lbipam.cilium.io/sharing-cross-namespace: '{cross}'}}"
            )
        };
        let text = [
            pool("p", "{blocks: [{cidr: 10.0.0.0/24}]}"),
            lb("ns1", "a", &meta("ns2, ns4"), "ports: [{port: 80}]"),
            lb("ns2", "b", &meta("ns1"), "ports: [{port: 81}]"),
            lb("ns3", "c", &meta("*"), "ports: [{port: 82}]"),
            lb(
                "ns4",
                "d",
                "annotations: {lbipam.cilium.io/sharing-key: k}",
                "ports: [{port: 83}]",
            ),
            lb("ns5", "e", &meta("*"), "ports: [{port: 84}]"),
        ]
        .concat();
        let a = run(&text, &Assignments::default());
        assert_eq!(ips(&a, "ns1/a"), ["10.0.0.0"]);
        assert_eq!(ips(&a, "ns2/b"), ["10.0.0.0"], "both allow it");
        assert_eq!(ips(&a, "ns3/c"), ["10.0.0.1"], "ns1 does not allow ns3");
        assert_eq!(ips(&a, "ns4/d"), ["10.0.0.2"], "ns4 allows nobody");
        assert_eq!(ips(&a, "ns5/e"), ["10.0.0.1"], "both say *");
    }

    #[test]
    fn conflicting_requests_go_to_the_first_by_name() {
        let text = [
            pool("p", "{blocks: [{cidr: 10.0.0.0/24}]}"),
            lb(
                "apps",
                "b",
                "annotations: {lbipam.cilium.io/ips: 10.0.0.5}",
                "selector: {app: web}",
            ),
            lb(
                "apps",
                "a",
                "",
                "loadBalancerIP: 10.0.0.5, selector: {app: web}",
            ),
        ]
        .concat();
        let s = snapshot(&text);
        let a = assign(&s, &Assignments::default(), cidr(), NODE_PORT_RANGE_DEFAULT);
        assert_eq!(ips(&a, "apps/a"), ["10.0.0.5"]);
        assert_eq!(cond(&a, "apps/a"), "True satisfied");
        assert_eq!(ips(&a, "apps/b"), Vec::<String>::new());
        assert_eq!(cond(&a, "apps/b"), "False already_allocated");

        // The plan serves the address for a only, and says why b has none.
        let cfg = FabricConfig::new("n1", [("n1".into(), Ipv4Addr::new(10, 10, 30, 11))].into());
        let plan = compile(&s, &cfg, Some(&a));
        let lb_lines: Vec<String> = plan
            .to_string()
            .lines()
            .filter(|l| l.contains("LoadBalancer"))
            .map(String::from)
            .collect();
        assert_eq!(
            lb_lines,
            ["10.0.0.5:80/TCP LoadBalancer apps/a -> (none: refuse)"]
        );
        let problems: Vec<String> = plan.problems.iter().map(ToString::to_string).collect();
        assert!(
            problems.contains(
                &"service apps/b: status.conditions[cilium.io/IPAMRequestSatisfied]: already_allocated: \
                  service apps/b: The IP '10.0.0.5' is already allocated to another service (apps/a)"
                    .to_string()
            ),
            "{problems:#?}"
        );
    }

    #[test]
    fn a_partly_refused_request_serves_what_was_granted() {
        let text = [
            pool("p", "{blocks: [{cidr: 10.0.0.0/24}]}"),
            lb(
                "apps",
                "a",
                "annotations: {lbipam.cilium.io/ips: '10.0.0.5, 192.0.2.9'}",
                "",
            ),
        ]
        .concat();
        let s = snapshot(&text);
        let a = assign(&s, &Assignments::default(), cidr(), NODE_PORT_RANGE_DEFAULT);
        assert_eq!(ips(&a, "apps/a"), ["10.0.0.5"]);
        assert_eq!(cond(&a, "apps/a"), "False no_pool");
        let cfg = FabricConfig::new("n1", [("n1".into(), Ipv4Addr::new(10, 10, 30, 11))].into());
        let plan = compile(&s, &cfg, Some(&a));
        let text = plan.to_string();
        assert!(
            text.contains("10.0.0.5:80/TCP LoadBalancer apps/a "),
            "{text}"
        );
        assert!(!text.contains("192.0.2.9"), "{text}");
        let problems: Vec<String> = plan.problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            problems,
            [
                "service apps/a: status.conditions[cilium.io/IPAMRequestSatisfied]: no_pool: \
              service apps/a: No enabled pool exists with a CIDR containing '192.0.2.9'"
            ]
        );
    }

    #[test]
    fn exhaustion_is_a_condition_and_others_are_unaffected() {
        let text = [
            pool("small", "{blocks: [{start: 10.0.0.1, stop: 10.0.0.2}]}"),
            pool(
                "vip",
                "{blocks: [{cidr: 10.9.0.0/30}], serviceSelector: {matchLabels: {vip: 'yes'}}}",
            ),
            lb("apps", "a", "", ""),
            lb("apps", "b", "", ""),
            lb("apps", "c", "", ""),
            lb("apps", "d", "", ""),
            lb("apps", "v", "labels: {vip: 'yes'}", ""),
        ]
        .concat();
        let a = run(&text, &Assignments::default());
        assert_eq!(ips(&a, "apps/a"), ["10.0.0.1"]);
        assert_eq!(ips(&a, "apps/b"), ["10.0.0.2"]);
        assert_eq!(cond(&a, "apps/c"), "False out_of_ips");
        assert_eq!(cond(&a, "apps/d"), "False out_of_ips");
        assert_eq!(
            ips(&a, "apps/v"),
            ["10.9.0.0"],
            "its own pool, first of two matching"
        );
        assert_eq!(a.problems.len(), 2, "{:?}", a.problems);
    }

    #[test]
    fn allocations_are_stable_and_persist() {
        let text = [
            pool("p", "{blocks: [{cidr: 10.0.0.0/24}]}"),
            lb("apps", "zeta", "", ""),
        ]
        .concat();
        let first = run(&text, &Assignments::default());
        assert_eq!(ips(&first, "apps/zeta"), ["10.0.0.0"]);
        assert_eq!(run(&text, &first), first, "the same again");

        // Persisted through JSON, conditions too.
        let json = serde_json::to_string(&first).expect("serializes");
        assert!(
            json.contains(r#""load_balancer_ips":["10.0.0.0"]"#),
            "{json}"
        );
        let back: Assignments = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back, first);
        assert!(
            json.contains(r#""load_balancer_conditions":{"apps/zeta":{"satisfied":true,"reason":"satisfied","message":"service apps/zeta: 10.0.0.0"}}"#),
            "{json}"
        );

        // A Service that sorts earlier does not take zeta's address, with the previous state
        // from disk; without it, the name order decides.
        let more = text.clone() + &lb("apps", "alpha", "", "");
        let a = run(&more, &back);
        assert_eq!(ips(&a, "apps/zeta"), ["10.0.0.0"]);
        assert_eq!(ips(&a, "apps/alpha"), ["10.0.0.1"]);
        assert_eq!(run(&more, &a), a);
        let fresh = run(&more, &Assignments::default());
        assert_eq!(ips(&fresh, "apps/alpha"), ["10.0.0.0"]);

        // An address a Service no longer asks for, or that left its pool, is given up.
        let mut stale = a.clone();
        stale
            .services
            .get_mut("apps/zeta")
            .expect("zeta")
            .load_balancer_ips = vec![Ipv4Addr::new(192, 0, 2, 1)];
        assert_eq!(ips(&run(&more, &stale), "apps/zeta"), ["10.0.0.0"]);
        let asks = text
            + &lb(
                "apps",
                "alpha",
                "annotations: {lbipam.cilium.io/ips: 10.0.0.9}",
                "",
            );
        let b = run(&asks, &a);
        assert_eq!(ips(&b, "apps/alpha"), ["10.0.0.9"]);
    }

    #[test]
    fn status_wins_and_the_rest_comes_from_lbipam() {
        let text = [
            pool("p", "{blocks: [{cidr: 10.0.0.0/24}]}"),
            lb("apps", "web", "", "selector: {app: web}"),
            format!(
                "{}status: {{loadBalancer: {{ingress: [{{ip: 10.0.0.77}}]}}}}\n---\n",
                lb("apps", "reported", "", "selector: {app: web}").trim_end_matches("---\n")
            ),
            lb("apps", "other", "", "loadBalancerClass: example.com/lb"),
        ]
        .concat();
        let s = snapshot(&text);
        let a = assign(&s, &Assignments::default(), cidr(), NODE_PORT_RANGE_DEFAULT);
        assert_eq!(
            ips(&a, "apps/reported"),
            ["10.0.0.77"],
            "imported from status"
        );
        assert_eq!(ips(&a, "apps/web"), ["10.0.0.0"]);
        assert_eq!(cond(&a, "apps/other"), "none", "another class: ignored");
        let cfg = FabricConfig::new("n1", [("n1".into(), Ipv4Addr::new(10, 10, 30, 11))].into());
        let text = compile(&s, &cfg, Some(&a)).to_string();
        assert!(
            text.contains("10.0.0.0:80/TCP LoadBalancer apps/web "),
            "{text}"
        );
        assert!(
            text.contains("10.0.0.77:80/TCP LoadBalancer apps/reported "),
            "{text}"
        );
        assert!(!text.contains("LoadBalancer apps/other"), "{text}");

        // Without pools LB-IPAM is dormant: nothing assigned, requests taken as written.
        let text = lb(
            "apps",
            "asks",
            "annotations: {lbipam.cilium.io/ips: 10.0.0.5}",
            "",
        );
        let s = snapshot(&text);
        let a = assign(&s, &Assignments::default(), cidr(), NODE_PORT_RANGE_DEFAULT);
        assert!(a.load_balancer_conditions.is_empty());
        assert!(a.services.values().all(|s| s.load_balancer_ips.is_empty()));
        let plan = compile(&s, &cfg, Some(&a)).to_string();
        assert!(
            plan.contains("10.0.0.5:80/TCP LoadBalancer apps/asks "),
            "{plan}"
        );
    }

    #[test]
    fn gateway_service_names_follow_envoy_gateway_and_are_stable() {
        let n = gateway_service_name("network", "envoy-internal");
        assert!(n.starts_with("envoy-network-envoy-internal-"), "{n}");
        assert_eq!(n.len(), "envoy-network-envoy-internal-".len() + 8);
        assert_eq!(n, gateway_service_name("network", "envoy-internal"));
        assert_ne!(n, gateway_service_name("network", "envoy-external"));
        let long =
            gateway_service_name("a-very-long-namespace-name", "and-a-very-long-gateway-name");
        assert_eq!(long.len(), 48 + 1 + 8, "{long}");
    }

    #[test]
    fn gateways_get_a_synthesized_request_unless_their_service_exists() {
        let gw = |name: &str, infra: &str| {
            format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
                 metadata: {{name: {name}, namespace: net}}\n\
                 spec: {{gatewayClassName: eg, infrastructure: {{{infra}}}, \
                 listeners: [{{name: dns, protocol: UDP, port: 53}}, {{name: web, protocol: HTTP, port: 80}}]}}\n---\n"
            )
        };
        let text = [
            pool("p", "{blocks: [{cidr: 10.0.0.0/24}]}"),
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: eg}\n\
             spec: {controllerName: gateway.envoyproxy.io/gatewayclass-controller}\n---\n"
                .to_string(),
            "apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: EnvoyProxy\n\
             metadata: {name: cluster-ip, namespace: net}\n\
             spec: {provider: {type: Kubernetes, kubernetes: {envoyService: {type: ClusterIP}}}}\n---\n"
                .to_string(),
            gw("a", "annotations: {lbipam.cilium.io/ips: 10.0.0.9}"),
            gw("b", ""),
            gw(
                "c",
                "parametersRef: {group: gateway.envoyproxy.io, kind: EnvoyProxy, name: cluster-ip}",
            ),
            lb(
                "envoy-gateway-system",
                "envoy-net-b-12345678",
                "labels: {gateway.envoyproxy.io/owning-gateway-name: b, \
                 gateway.envoyproxy.io/owning-gateway-namespace: net}",
                "",
            ),
        ]
        .concat();
        let s = snapshot(&text);
        let reqs = gateway_requests(&s);
        let names: Vec<&str> = reqs.iter().map(|(r, _)| r.name.as_str()).collect();
        assert_eq!(names, [gateway_service_name("net", "a")]);
        let a = &reqs[0].0;
        assert_eq!(
            a.ports.iter().copied().collect::<Vec<_>>(),
            [(53, 17), (80, 6)]
        );
        assert!(a.external_traffic_policy_local, "Envoy Gateway's default");
        let out = run(&text, &Assignments::default());
        assert_eq!(
            ips(&out, &format!("net/{}", gateway_service_name("net", "a"))),
            ["10.0.0.9"]
        );
        assert_eq!(
            ips(&out, "envoy-gateway-system/envoy-net-b-12345678"),
            ["10.0.0.0"]
        );
    }

    #[test]
    fn thousands_of_services_get_distinct_addresses() {
        let mut text = pool("p", "{blocks: [{cidr: 10.0.0.0/20}]}");
        for i in 0..3000 {
            text += &lb("apps", &format!("s{i:04}"), "", "");
        }
        let a = run(&text, &Assignments::default());
        let all: BTreeSet<Ipv4Addr> = a
            .services
            .values()
            .flat_map(|s| s.load_balancer_ips.iter().copied())
            .collect();
        assert_eq!(all.len(), 3000);
        assert_eq!(ips(&a, "apps/s2999"), ["10.0.11.183"]);
        assert_eq!(run(&text, &a), a);
    }

    fn repo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    #[test]
    fn the_corpus_gets_the_addresses_it_asks_for() {
        let dir = repo().join("testdata/home-ops/kubernetes");
        let load = store::load(
            &[dir],
            &store::Options {
                default_namespace: "default".into(),
                ..Default::default()
            },
        );
        let s = load.snapshot;
        let a = assign(&s, &Assignments::default(), cidr(), NODE_PORT_RANGE_DEFAULT);
        assert!(a.problems.is_empty(), "{:?}", a.problems);
        let mut got: Vec<(String, Vec<String>)> = a
            .load_balancer_conditions
            .iter()
            .map(|(k, c)| {
                assert!(c.satisfied, "{k}: {c:?}");
                (k.clone(), ips(&a, k))
            })
            .collect();
        // The gateways' synthesized Services, under their Gateways' names.
        for gw in s.gateways.values() {
            let key = format!(
                "{}/{}",
                gw.namespace(),
                gateway_service_name(gw.namespace(), gw.name())
            );
            for g in &mut got {
                if g.0 == key {
                    g.0 = format!("{}/{} (gateway)", gw.namespace(), gw.name());
                }
            }
        }
        got.sort();
        let want: Vec<(String, Vec<String>)> = [
            ("database/postgres-lb", "10.10.30.11"),
            ("kube-system/kube-api", "10.10.30.30"),
            ("network/envoy-external (gateway)", "10.10.30.26"),
            ("network/envoy-internal (gateway)", "10.10.30.25"),
        ]
        .into_iter()
        .map(|(k, ip)| (k.to_string(), vec![ip.to_string()]))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn the_home_lab_gateways_get_their_addresses_from_the_pool() {
        let dir = repo().join("examples/home-lab");
        let vars_file = dir.join("vars.yaml");
        let vars = model::subst::parse_vars(
            &std::fs::read_to_string(&vars_file).expect("vars.yaml reads"),
        )
        .expect("vars parse");
        let load = store::load(
            &[dir],
            &store::Options {
                vars,
                default_namespace: "default".into(),
                ignore: vec![vars_file],
                ..Default::default()
            },
        );
        assert!(
            !load.snapshot.has_errors(),
            "{:?}",
            load.snapshot.diagnostics
        );
        let s = load.snapshot;
        let a = assign(&s, &Assignments::default(), cidr(), NODE_PORT_RANGE_DEFAULT);
        assert!(a.problems.is_empty(), "{:?}", a.problems);
        let gateways: Vec<(String, Vec<String>, String)> = s
            .gateways
            .values()
            .map(|gw| {
                let svc = gateway_service_name(gw.namespace(), gw.name());
                let key = format!("{}/{svc}", gw.namespace());
                let ips: Vec<String> = gateway_load_balancer_ips(&a, gw.namespace(), gw.name())
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                (gw.name().to_string(), ips, cond(&a, &key))
            })
            .collect();
        assert_eq!(
            gateways,
            [
                (
                    "envoy-external".to_string(),
                    vec!["10.10.30.26".to_string()],
                    "True satisfied".to_string()
                ),
                (
                    "envoy-internal".to_string(),
                    vec!["10.10.30.25".to_string()],
                    "True satisfied".to_string()
                ),
            ]
        );
        assert_eq!(assign(&s, &a, cidr(), NODE_PORT_RANGE_DEFAULT), a, "stable");

        // The synthesized request: listeners' ports, Local from the EnvoyProxy, the
        // infrastructure annotation as the request.
        let (req, problems) = gateway_requests(&s)
            .into_iter()
            .find(|(r, _)| r.name.contains("envoy-internal"))
            .expect("internal gateway");
        assert!(problems.is_empty());
        assert_eq!(req.requested, [Ipv4Addr::new(10, 10, 30, 25)]);
        assert_eq!(
            req.ports.iter().copied().collect::<Vec<_>>(),
            [(80, 6), (443, 6)]
        );
        assert!(req.external_traffic_policy_local);
        assert_eq!(
            req.labels
                .get(OWNING_GATEWAY_NAME_LABEL)
                .map(String::as_str),
            Some("envoy-internal")
        );
    }
}
