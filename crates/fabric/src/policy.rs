//! Network policy, compiled as Cilium's datapath consumes it: security identities, the ipcache
//! (address or prefix to identity) and, per local endpoint and direction, policy entries keyed
//! by (peer identity, protocol, port prefix) with wildcards.
//!
//! Pure: the same snapshot gives the same identities on every node, so a node reads a remote
//! pod's identity from its address without asking anyone.
//!
//! - **Identities.** A pod's identity is the set of its labels plus the labels Cilium derives
//!   (`io.kubernetes.pod.namespace`, `io.cilium.k8s.namespace.labels.*`,
//!   `io.cilium.k8s.policy.serviceaccount`, `io.cilium.k8s.policy.cluster`); the pod name is
//!   not part of it, so replicas share one. Numbers come from a hash of the label set in
//!   Cilium's cluster-local range (256..65535), probed on collision in label-set order, so an
//!   identity keeps its number while others come and go. Reserved identities use Cilium's
//!   numbers; CIDR identities (one per prefix a policy names) carry Cilium's local-scope bit.
//! - **Selection.** CiliumNetworkPolicy selectors match these labels (`k8s:`/`any:` prefixes
//!   stripped, `reserved:<entity>` keys select a reserved identity) and are confined to the
//!   policy's namespace unless they name `io.kubernetes.pod.namespace`; clusterwide ones are
//!   not confined. CIDR rules select CIDR identities (never pods or nodes, as in Cilium), the
//!   `world` entity selects the world and every CIDR identity.
//! - **Default deny** as Cilium: an endpoint is enforced in a direction when a rule selecting
//!   it has rules (allow or deny) in that direction, unless that rule says
//!   `enableDefaultDeny.<direction>: false`; NetworkPolicy by its `policyTypes`. Traffic from
//!   the local host is always allowed in (Cilium's allow-localhost).
//! - **Deny wins.** The datapath looks up (endpoint, peer identity, ...) and (endpoint, any,
//!   ...), longest port prefix each, and drops if either says deny; the compile removes allows
//!   that a broader deny of the same identity covers, so the longest match never hides one.
//! - **Fail closed.** What trellis does not enforce (the fields
//!   `model::kinds::cilium::*::unenforced*` name; an unresolved CIDR group) allows nothing in
//!   an allow rule and denies its ports to every peer in a deny rule; validation marks the
//!   policy `Accepted=False` saying so.
//!
//! Not here yet: toFQDNs (allows nothing, see above), ICMPv6 type rules, node selectors, IPv6.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use model::Snapshot;
use model::k8s_openapi::api::networking::v1::{NetworkPolicyPeer, NetworkPolicyPort};
use model::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use model::kinds::LabelSelector;
use model::kinds::cilium::{CidrRule, PolicyRule, PortRule};
use serde::Serialize;

use crate::plan::{PROTO_SCTP, PROTO_TCP, PROTO_UDP};

/// The wildcard identity in a policy key: any peer.
pub const ID_ANY: u32 = 0;
/// Cilium's reserved identities.
pub const ID_HOST: u32 = 1;
pub const ID_WORLD: u32 = 2;
pub const ID_UNMANAGED: u32 = 3;
pub const ID_HEALTH: u32 = 4;
pub const ID_INIT: u32 = 5;
pub const ID_REMOTE_NODE: u32 = 6;
pub const ID_KUBE_APISERVER: u32 = 7;
pub const ID_INGRESS: u32 = 8;
/// First and number of endpoint identities (Cilium's cluster-local range).
pub const ENDPOINT_ID_MIN: u32 = 256;
pub const ENDPOINT_ID_SPACE: u32 = 65536 - 256;
/// CIDR identities: Cilium's local-scope bit, then a hash of the prefix.
pub const CIDR_ID_BASE: u32 = 1 << 24;
pub const CIDR_ID_SPACE: u32 = 1 << 20;
/// Distinct CIDR prefixes named by all policies.
pub const CIDR_IDENTITIES_MAX: usize = 16384;
/// Policy entries of one endpoint, both directions (Cilium's default policy map size).
pub const ENTRIES_PER_ENDPOINT_MAX: usize = 16384;
/// ipcache entries: pods, nodes, CIDR prefixes (the datapath's map bound).
pub const IPCACHE_MAX: usize = 65536;
/// Policy entries of all of a node's endpoints together (the datapath's map bound).
pub const ENTRIES_MAX: usize = 262_144;
/// Endpoints of one node (the datapath's map bound).
pub const ENDPOINTS_MAX: usize = 4096;
/// The seed of the identity hash (any fixed value: every node must use the same).
const IDENTITY_HASH_SEED: u64 = 0x007e_1115;
/// The rule id of the implicit allow from the local host.
pub const RULE_HOST: u32 = u32::MAX;

/// Label keys Cilium derives for every pod.
pub const LABEL_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const LABEL_NAMESPACE_LABELS: &str = "io.cilium.k8s.namespace.labels.";
pub const LABEL_SERVICE_ACCOUNT: &str = "io.cilium.k8s.policy.serviceaccount";
pub const LABEL_CLUSTER: &str = "io.cilium.k8s.policy.cluster";

/// Traffic direction, as the endpoint sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Direction {
    Ingress = 0,
    Egress = 1,
}

/// One policy map key of an endpoint: the peer's identity ([`ID_ANY`]: any), the protocol (0:
/// any, then `port_bits` is 0) and the first `port_bits` bits of the port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PolicyKey {
    pub direction: Direction,
    pub identity: u32,
    pub proto: u8,
    pub port: u16,
    pub port_bits: u8,
}

impl PolicyKey {
    /// Whether every packet this key matches is matched by `self` (same identity and direction).
    fn covers(&self, other: &PolicyKey) -> bool {
        if self.direction != other.direction || self.identity != other.identity {
            return false;
        }
        if self.proto == 0 {
            return true;
        }
        if self.proto != other.proto || other.port_bits < self.port_bits {
            return false;
        }
        let mask = if self.port_bits == 0 {
            0
        } else {
            u16::MAX << (16 - u32::from(self.port_bits))
        };
        other.port & mask == self.port & mask
    }
}

/// What a key says, and which rule said it (an index into [`PolicyPlan::rules`], or
/// [`RULE_HOST`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub deny: bool,
    pub rule: u32,
}

/// A local endpoint's policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EndpointPolicy {
    pub namespace: String,
    pub name: String,
    pub identity: u32,
    pub ingress_enforced: bool,
    pub egress_enforced: bool,
    pub entries: BTreeMap<PolicyKey, Verdict>,
    /// The policies selecting this endpoint (`Kind ns/name`).
    pub selected_by: BTreeSet<String>,
    /// Its toFQDNs allows, for the addresses DNS will answer it.
    pub fqdn: Vec<FqdnRule>,
    /// Its egress allows that reach port 53, when one of them carries `rules.dns` (empty
    /// otherwise: no DNS rule applies and the names it asks are not restricted).
    pub dns: Vec<DnsAllow>,
}

/// An egress allow reaching port 53 (of some peers, by its keys), and the names it lets the
/// endpoint ask over it (`None`: any, a rule without `rules.dns`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DnsAllow {
    pub keys: Vec<PolicyKey>,
    pub names: Option<Vec<FqdnPattern>>,
    pub rule: u32,
}

/// The DNS port, which `rules.dns` guards.
const DNS_PORT: u16 = 53;

impl EndpointPolicy {
    /// Whether this endpoint may ask `name` of a DNS server of identity `server` (its address
    /// unknown: `None`) over `proto`, as Cilium's DNS proxy decides: the egress allows that
    /// reach the server's port 53 decide; if one of them has no `rules.dns`, any name; else
    /// the names one of them lets through. With no DNS rule for the endpoint, or none of its
    /// allows reaching the server, any name (the datapath decides whether the query passes).
    pub fn dns_allows(&self, server: Option<u32>, proto: u8, name: &str) -> bool {
        let probe = |identity| PolicyKey {
            direction: Direction::Egress,
            identity,
            proto,
            port: DNS_PORT,
            port_bits: 16,
        };
        let reaching: Vec<&DnsAllow> = self
            .dns
            .iter()
            .filter(|a| {
                a.keys.iter().any(|k| match server {
                    Some(id) => k.covers(&probe(id)) || k.covers(&probe(ID_ANY)),
                    // Server unknown: every allow of port 53 counts.
                    None => k.covers(&probe(k.identity)),
                })
            })
            .collect();
        if reaching.is_empty() {
            return true;
        }
        reaching.iter().any(|a| match &a.names {
            None => true,
            Some(names) => names.iter().any(|m| m.matches(name)),
        })
    }
}

impl PolicyPlan {
    /// The identity of `addr` as the datapath finds it (the ipcache's longest prefix).
    pub fn identity_of(&self, addr: Ipv4Addr) -> u32 {
        (0..=32u8)
            .rev()
            .filter_map(|len| Ipv4Net::new(addr, len).ok())
            .find_map(|net| self.ipcache.get(&net.trunc()).copied())
            .unwrap_or(ID_WORLD)
    }
}

/// What [`learn`] added to a plan: the ipcache entries of new address identities and the
/// policy entries (endpoint, key, verdict) that were not there.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Added {
    pub ipcache: Vec<(Ipv4Net, u32)>,
    pub entries: Vec<(Ipv4Addr, PolicyKey, Verdict)>,
}

impl Added {
    /// Takes in what another [`learn`] added.
    pub fn extend(&mut self, other: Added) {
        self.ipcache.extend(other.ipcache);
        self.entries.extend(other.entries);
    }
}

/// Adds to a compiled plan what DNS answered endpoint `ep` (`addr`, for `names`), as
/// [`compile`] with that answer in its `learned` makes it, without compiling again: a first
/// answer for toFQDNs waits for this. The address gets a CIDR identity of its own (/32) that
/// every endpoint's entries for the identity it had so far also name (what selected it still
/// does), and `ep` gets its toFQDNs rules' keys for it. `None` when it cannot be done here (a
/// bound, or an address that is not outside the cluster's identities): compile instead.
pub fn learn(
    plan: &mut PolicyPlan,
    ep: Ipv4Addr,
    addr: Ipv4Addr,
    names: &BTreeSet<String>,
) -> Option<Added> {
    if plan.over_bound.is_some() {
        return None;
    }
    let rules: Vec<FqdnRule> = plan
        .endpoints
        .get(&ep)?
        .fqdn
        .iter()
        .filter(|f| names.iter().any(|n| f.names.iter().any(|m| m.matches(n))))
        .cloned()
        .collect();
    let mut added = Added::default();
    if rules.is_empty() {
        return Some(added);
    }
    let net = Ipv4Net::from(addr);
    let is_cidr = |id: u32| (CIDR_ID_BASE..CIDR_ID_BASE + CIDR_ID_SPACE).contains(&id);
    let identity = match plan.ipcache.get(&net) {
        Some(&id) if is_cidr(id) => id,
        // A node's or a pod's address: compile decides.
        Some(_) => return None,
        None => {
            let before = plan.identity_of(addr);
            if before != ID_WORLD && !is_cidr(before) {
                return None;
            }
            let cidrs = plan.identities.keys().filter(|id| is_cidr(**id)).count();
            if cidrs >= CIDR_IDENTITIES_MAX || plan.ipcache.len() >= IPCACHE_MAX {
                return None;
            }
            // The number compile gives it: its hash, probed forward past numbers taken.
            let mut n = (crate::maglev::hash64(net.to_string().as_bytes(), IDENTITY_HASH_SEED)
                % u64::from(CIDR_ID_SPACE)) as u32;
            while plan.identities.contains_key(&(CIDR_ID_BASE + n)) {
                n = (n + 1) % CIDR_ID_SPACE;
            }
            let id = CIDR_ID_BASE + n;
            // What selected the address through the identity it had selects it still.
            for (ip, e) in plan.endpoints.iter_mut() {
                let copies: Vec<(PolicyKey, Verdict)> = e
                    .entries
                    .iter()
                    .filter(|(k, _)| k.identity == before)
                    .map(|(k, v)| (PolicyKey { identity: id, ..*k }, *v))
                    .collect();
                for (k, v) in copies {
                    e.entries.insert(k, v);
                    added.entries.push((*ip, k, v));
                }
            }
            plan.identities
                .insert(id, BTreeMap::from([("cidr".to_string(), net.to_string())]));
            plan.ipcache.insert(net, id);
            added.ipcache.push((net, id));
            id
        }
    };
    let e = plan.endpoints.get_mut(&ep)?;
    let keys: Vec<(PolicyKey, Verdict)> = rules
        .iter()
        .flat_map(|f| {
            f.keys.iter().map(|k| {
                (
                    PolicyKey { identity, ..*k },
                    Verdict {
                        deny: false,
                        rule: f.rule,
                    },
                )
            })
        })
        .collect();
    for (k, v) in keys {
        if let std::collections::btree_map::Entry::Vacant(slot) = e.entries.entry(k) {
            slot.insert(v);
            added.entries.push((ep, k, v));
        }
    }
    prune_covered_allows(&mut e.entries);
    if e.entries.len() > ENTRIES_PER_ENDPOINT_MAX {
        return None;
    }
    // What pruning took away again was not added.
    added.entries.retain(|(ip, k, _)| {
        plan.endpoints
            .get(ip)
            .is_some_and(|e| e.entries.contains_key(k))
    });
    Some(added)
}

/// The pods whose DNS queries `rules.dns` restricts (selected by a policy with an egress
/// allow that carries it), on every node: the DNS server refuses their queries when it
/// cannot ask their node's agent (fail closed).
pub fn dns_restricted(snapshot: &Snapshot) -> BTreeSet<Ipv4Addr> {
    let nodes: BTreeSet<String> = pods(snapshot).into_iter().map(|p| p.node).collect();
    let mut out = BTreeSet::new();
    for node in nodes {
        let plan = compile(snapshot, &node, &BTreeMap::new(), &Learned::default());
        out.extend(
            plan.endpoints
                .iter()
                .filter(|(_, ep)| !ep.dns.is_empty())
                .map(|(ip, _)| *ip),
        );
    }
    out
}

/// A toFQDNs allow of one endpoint: the names it covers and the keys (identity 0, to be
/// replaced by each learned address's) an address answered for one of them gets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FqdnRule {
    pub names: Vec<FqdnPattern>,
    pub keys: Vec<PolicyKey>,
    pub rule: u32,
}

/// A toFQDNs selector: `matchName` (exact) or `matchPattern` (`*` is any run of name
/// characters within one label; `*` alone is every name). Case and a final dot do not count.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum FqdnPattern {
    Name(String),
    Pattern(String),
}

fn fqdn_normal(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl FqdnPattern {
    fn of(s: &model::kinds::cilium::FqdnSelector) -> Option<FqdnPattern> {
        match (&s.match_name, &s.match_pattern) {
            (Some(n), None) => Some(FqdnPattern::Name(fqdn_normal(n))),
            (None, Some(p)) => Some(FqdnPattern::Pattern(fqdn_normal(p))),
            _ => None,
        }
    }

    pub fn matches(&self, name: &str) -> bool {
        let name = fqdn_normal(name);
        match self {
            FqdnPattern::Name(n) => *n == name,
            FqdnPattern::Pattern(p) if p == "*" => true,
            FqdnPattern::Pattern(p) => glob(p.as_bytes(), name.as_bytes()),
        }
    }
}

/// `*` matches any run of bytes other than `.`; everything else matches itself. Label by
/// label, each in time linear in its length times the pattern's (a name comes from a pod: no
/// backtracking blow-up whatever the pattern).
fn glob(p: &[u8], s: &[u8]) -> bool {
    let mut ps = p.split(|b| *b == b'.');
    let mut ss = s.split(|b| *b == b'.');
    loop {
        match (ps.next(), ss.next()) {
            (None, None) => return true,
            (Some(p), Some(s)) if glob_label(p, s) => {}
            _ => return false,
        }
    }
}

fn glob_label(p: &[u8], s: &[u8]) -> bool {
    let (mut i, mut j) = (0, 0);
    // The last `*` seen and where in `s` it started matching.
    let mut star: Option<(usize, usize)> = None;
    while j < s.len() {
        if p.get(i) == Some(&b'*') {
            star = Some((i, j));
            i += 1;
        } else if p.get(i) == Some(&s[j]) {
            i += 1;
            j += 1;
        } else if let Some((si, sj)) = star {
            // Let that `*` take one more byte and try again after it.
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|b| *b == b'*')
}

/// The addresses DNS answered each endpoint: endpoint -> address -> the names it was
/// answered for.
pub type Learned = BTreeMap<Ipv4Addr, BTreeMap<Ipv4Addr, BTreeSet<String>>>;

/// A policy rule, for naming it in flows and status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleRef {
    /// `CiliumNetworkPolicy`, `CiliumClusterwideNetworkPolicy` or `NetworkPolicy`.
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    /// e.g. `spec.egress[2]`.
    pub path: String,
}

impl std::fmt::Display for RuleRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}: {}", self.kind, self.name, self.path)
        } else {
            write!(
                f,
                "{} {}/{}: {}",
                self.kind, self.namespace, self.name, self.path
            )
        }
    }
}

/// Everything one node's datapath enforces.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PolicyPlan {
    /// Identity number to its labels (endpoint identities) or prefix (CIDR identities).
    pub identities: BTreeMap<u32, BTreeMap<String, String>>,
    /// Prefix to identity (the datapath looks up the longest prefix).
    pub ipcache: BTreeMap<Ipv4Net, u32>,
    /// This node's endpoints by address.
    pub endpoints: BTreeMap<Ipv4Addr, EndpointPolicy>,
    pub rules: Vec<RuleRef>,
    /// Warnings, each naming its policy and field (`Kind ns/name: path: message`).
    pub problems: Vec<String>,
    /// A bound was exceeded: the plan must not be programmed (the last good one stays).
    pub over_bound: Option<String>,
}

/// A pod the policies can select.
#[derive(Clone, Debug)]
struct Pod {
    namespace: String,
    name: String,
    ip: Ipv4Addr,
    node: String,
    labels: BTreeMap<String, String>,
    ports: Vec<(String, u16, u8)>,
}

/// A peer set: any peer, or these identities.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Peers {
    Any,
    Set(BTreeSet<u32>),
}

/// A port item of a rule: protocol (0: TCP, UDP and SCTP), range, or a container port name.
#[derive(Clone, Debug, PartialEq, Eq)]
enum PortItem {
    Range {
        proto: u8,
        lo: u16,
        hi: u16,
    },
    Named {
        proto: u8,
        name: String,
    },
    /// An ICMP type (IPv4): the datapath looks ICMP up with the type where ports go.
    IcmpType(u8),
}

/// Ports of a clause: all traffic (every protocol), or these items.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ports {
    All,
    Items(Vec<PortItem>),
}

#[derive(Clone, Debug)]
struct Clause {
    deny: bool,
    peers: Peers,
    ports: Ports,
    rule: u32,
    /// Egress allows with `rules.dns`: the names a pod may ask its peers over these ports.
    dns: Option<Vec<FqdnPattern>>,
}

/// One rule in a common form: who it selects, and per direction whether it turns on default
/// deny and its clauses.
struct Rule {
    namespace: Option<String>,
    subject: LabelSelector,
    /// NetworkPolicy: the pod selector matches pod labels in `namespace` only.
    label: String,
    enforce: [bool; 2],
    clauses: [Vec<Clause>; 2],
    /// toFQDNs allows (egress): the names, the ports, the rule.
    fqdn: Vec<(Vec<FqdnPattern>, Ports, u32)>,
}

/// The identity labels of a pod (Cilium's derivation, without the source prefix).
pub fn identity_labels(
    snapshot: &Snapshot,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    service_account: Option<&str>,
) -> BTreeMap<String, String> {
    let mut out = labels.clone();
    out.insert(LABEL_NAMESPACE.into(), namespace.to_string());
    for (k, v) in snapshot.namespace_labels(namespace) {
        out.insert(format!("{LABEL_NAMESPACE_LABELS}{k}"), v);
    }
    out.insert(
        LABEL_SERVICE_ACCOUNT.into(),
        service_account.unwrap_or("default").to_string(),
    );
    out.insert(LABEL_CLUSTER.into(), "default".into());
    out
}

/// Numbers for `keys` (sorted) in `base .. base + space`: a stable hash of each, probed
/// forward on collision in key order.
fn allocate<K: Ord + Clone>(keys: &[(K, Vec<u8>)], base: u32, space: u32) -> BTreeMap<K, u32> {
    let mut taken = BTreeSet::new();
    let mut out = BTreeMap::new();
    for (k, bytes) in keys {
        let mut n = (crate::maglev::hash64(bytes, IDENTITY_HASH_SEED) % u64::from(space)) as u32;
        while !taken.insert(n) {
            n = (n + 1) % space;
        }
        out.insert(k.clone(), base + n);
    }
    out
}

fn pods(snapshot: &Snapshot) -> Vec<Pod> {
    let mut out = Vec::new();
    for p in snapshot.pods.values() {
        let spec = p.spec.spec.as_ref();
        if spec.and_then(|s| s.host_network).unwrap_or(false) {
            continue;
        }
        let Some(ip) = p
            .spec
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|s| s.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        let labels = p.spec.metadata.labels.clone().unwrap_or_default();
        let labels = identity_labels(
            snapshot,
            p.namespace(),
            &labels,
            spec.and_then(|s| s.service_account_name.as_deref()),
        );
        let mut ports = Vec::new();
        for c in spec.map(|s| s.containers.as_slice()).unwrap_or_default() {
            for cp in c.ports.iter().flatten() {
                if let (Some(name), Ok(port)) = (&cp.name, u16::try_from(cp.container_port)) {
                    let proto = proto_number(cp.protocol.as_deref()).unwrap_or(PROTO_TCP);
                    ports.push((name.clone(), port, proto));
                }
            }
        }
        out.push(Pod {
            namespace: p.namespace().to_string(),
            name: p.name().to_string(),
            ip,
            node: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
            labels,
            ports,
        });
    }
    out
}

/// IP protocol numbers the datapath sees.
const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;

/// A protocol name as policies and pods write it (TCP when absent; 0 for ANY); `None` for a
/// name trellis does not know (validation reports it).
fn proto_number(p: Option<&str>) -> Option<u8> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(PROTO_TCP),
        "UDP" => Some(PROTO_UDP),
        "SCTP" => Some(PROTO_SCTP),
        "ICMP" => Some(PROTO_ICMP),
        "ICMPv6" => Some(PROTO_ICMPV6),
        "ANY" => Some(0),
        _ => None,
    }
}

/// A Cilium selector with the source prefixes taken off its keys.
fn normalize(sel: &LabelSelector) -> LabelSelector {
    let strip = |k: &str| {
        k.strip_prefix("k8s:")
            .or_else(|| k.strip_prefix("any:"))
            .unwrap_or(k)
            .to_string()
    };
    let mut out = sel.clone();
    out.match_labels = sel
        .match_labels
        .iter()
        .map(|(k, v)| (strip(k), v.clone()))
        .collect();
    for e in &mut out.match_expressions {
        e.key = strip(&e.key);
    }
    out
}

/// Confines a namespaced policy's peer selector to its namespace unless it names one.
fn confine(sel: &LabelSelector, namespace: Option<&str>) -> LabelSelector {
    let mut out = normalize(sel);
    if let Some(ns) = namespace {
        let names_ns = out.match_labels.contains_key(LABEL_NAMESPACE)
            || out
                .match_expressions
                .iter()
                .any(|e| e.key == LABEL_NAMESPACE);
        if !names_ns {
            out.match_labels
                .insert(LABEL_NAMESPACE.into(), ns.to_string());
        }
    }
    out
}

/// The identities and prefixes the compile selects from.
struct Universe {
    /// Endpoint identity -> labels.
    endpoints: BTreeMap<u32, BTreeMap<String, String>>,
    /// CIDR prefix -> identity.
    cidrs: BTreeMap<Ipv4Net, u32>,
}

const RESERVED: &[(&str, u32)] = &[
    ("host", ID_HOST),
    ("world", ID_WORLD),
    ("world-ipv4", ID_WORLD),
    ("unmanaged", ID_UNMANAGED),
    ("health", ID_HEALTH),
    ("init", ID_INIT),
    ("remote-node", ID_REMOTE_NODE),
    ("kube-apiserver", ID_KUBE_APISERVER),
    ("ingress", ID_INGRESS),
];

impl Universe {
    fn select_endpoints(&self, sel: &LabelSelector) -> BTreeSet<u32> {
        let mut out: BTreeSet<u32> = self
            .endpoints
            .iter()
            .filter(|(_, labels)| sel.matches(labels))
            .map(|(id, _)| *id)
            .collect();
        // `reserved:<entity>` keys select reserved identities.
        for k in sel.match_labels.keys() {
            if let Some(entity) = k.strip_prefix("reserved:")
                && sel.match_labels.len() == 1
                && let Some((_, id)) = RESERVED.iter().find(|(n, _)| *n == entity)
            {
                out.insert(*id);
            }
        }
        out
    }

    fn world(&self) -> BTreeSet<u32> {
        let mut s: BTreeSet<u32> = self.cidrs.values().copied().collect();
        s.insert(ID_WORLD);
        s
    }

    fn entity(&self, name: &str) -> Peers {
        let mut s = BTreeSet::new();
        match name {
            "all" => return Peers::Any,
            "world" | "world-ipv4" => s = self.world(),
            "cluster" => {
                s.extend(self.endpoints.keys().copied());
                s.extend([
                    ID_HOST,
                    ID_REMOTE_NODE,
                    ID_HEALTH,
                    ID_INIT,
                    ID_INGRESS,
                    ID_KUBE_APISERVER,
                ]);
            }
            other => {
                if let Some((_, id)) = RESERVED.iter().find(|(n, _)| *n == other) {
                    s.insert(*id);
                }
            }
        }
        Peers::Set(s)
    }

    /// CIDR identities inside `net` and outside every `except`; the world with 0.0.0.0/0.
    fn cidr(&self, net: Ipv4Net, except: &[Ipv4Net]) -> BTreeSet<u32> {
        let mut s: BTreeSet<u32> = self
            .cidrs
            .iter()
            .filter(|(p, _)| net.contains(*p) && !except.iter().any(|e| e.contains(*p)))
            .map(|(_, id)| *id)
            .collect();
        if net.prefix_len() == 0 {
            s.insert(ID_WORLD);
        }
        s
    }
}

fn parse_net(s: &str) -> Option<Ipv4Net> {
    match s.parse::<ipnet::IpNet>() {
        Ok(ipnet::IpNet::V4(n)) => Some(n.trunc()),
        Ok(ipnet::IpNet::V6(_)) => None,
        Err(_) => match s.parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) => Some(Ipv4Net::from(a)),
            _ => None,
        },
    }
}

/// Every IPv4 prefix a policy names (CIDRs, excepts, CIDR groups' members).
fn named_prefixes(snapshot: &Snapshot) -> BTreeSet<Ipv4Net> {
    let mut out = BTreeSet::new();
    let cidr_rule = |c: &CidrRule, out: &mut BTreeSet<Ipv4Net>| {
        let group = c
            .cidr_group_ref
            .as_deref()
            .and_then(|g| model::snapshot::get(&snapshot.cidr_groups, "", g))
            .map(|g| g.spec.external_cidrs.clone())
            .unwrap_or_default();
        for s in c.cidr.iter().chain(&group).chain(&c.except) {
            out.extend(parse_net(s));
        }
    };
    for p in snapshot
        .cilium_network_policies
        .values()
        .chain(snapshot.cilium_clusterwide_network_policies.values())
    {
        for r in p.spec.spec.iter().chain(&p.spec.specs) {
            for i in r.ingress.iter().chain(&r.ingress_deny) {
                for c in &i.from_cidr {
                    out.extend(parse_net(c));
                }
                for c in &i.from_cidr_set {
                    cidr_rule(c, &mut out);
                }
            }
            for e in r.egress.iter().chain(&r.egress_deny) {
                for c in &e.to_cidr {
                    out.extend(parse_net(c));
                }
                for c in &e.to_cidr_set {
                    cidr_rule(c, &mut out);
                }
            }
        }
    }
    for np in snapshot.network_policies.values() {
        let Some(spec) = &np.spec.spec else { continue };
        let peers = spec
            .ingress
            .iter()
            .flatten()
            .flat_map(|r| r.from.iter().flatten())
            .chain(
                spec.egress
                    .iter()
                    .flatten()
                    .flat_map(|r| r.to.iter().flatten()),
            );
        for peer in peers {
            if let Some(b) = &peer.ip_block {
                out.extend(parse_net(&b.cidr));
                for e in b.except.iter().flatten() {
                    out.extend(parse_net(e));
                }
            }
        }
    }
    // 0.0.0.0/0 is the world itself, not a CIDR identity.
    out.retain(|n| n.prefix_len() > 0);
    out
}

/// Cilium port rules into port items; `None` when this port rule is not enforced.
fn cilium_ports(rules: &[PortRule], deny: bool, egress: bool) -> Option<Ports> {
    if rules.is_empty() {
        return Some(Ports::All);
    }
    let mut items = Vec::new();
    let mut any_rule = false;
    for r in rules {
        if !deny && !r.unenforced(egress).is_empty() {
            continue;
        }
        any_rule = true;
        if r.ports.is_empty() {
            return Some(Ports::All);
        }
        for p in &r.ports {
            // Fail closed on a protocol trellis does not know or cannot match ports of (ICMP
            // carries none): an allow allows nothing through it, a deny denies every protocol
            // (unknown) or the whole protocol (ICMP).
            let proto = match (proto_number(p.protocol.as_deref()), deny) {
                (Some(PROTO_ICMP | PROTO_ICMPV6), false) | (None, false) => continue,
                (Some(pr @ (PROTO_ICMP | PROTO_ICMPV6)), true) => {
                    items.push(PortItem::Range {
                        proto: pr,
                        lo: 0,
                        hi: 0,
                    });
                    continue;
                }
                (Some(pr), _) => pr,
                (None, true) => 0,
            };
            let text = match &p.port {
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::String(s) => s.clone(),
                _ => continue,
            };
            match text.parse::<u16>() {
                Ok(lo) => {
                    let hi = p
                        .end_port
                        .and_then(|e| u16::try_from(e).ok())
                        .filter(|e| *e >= lo)
                        .unwrap_or(lo);
                    items.push(PortItem::Range { proto, lo, hi })
                }
                Err(_) => items.push(PortItem::Named { proto, name: text }),
            }
        }
    }
    any_rule.then_some(Ports::Items(items))
}

/// Cilium `icmps` rules into port items. IPv4 types are looked up exactly; ICMPv6 is not
/// checked by this datapath and an unknown type matches nothing, so an allow of either allows
/// nothing through it and a deny of either denies the whole protocol (fail closed).
fn cilium_icmps(icmps: &[serde_json::Value], deny: bool) -> Ports {
    let mut items = Vec::new();
    for rule in icmps {
        let fields = rule.get("fields").and_then(serde_json::Value::as_array);
        for f in fields.into_iter().flatten() {
            let family = f
                .get("family")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("IPv4");
            let ty = f.get("type").and_then(model::kinds::cilium::icmp_type);
            match (family, ty) {
                ("IPv4", Some(t)) => items.push(PortItem::IcmpType(t)),
                _ if deny => items.push(PortItem::Range {
                    proto: if family == "IPv6" {
                        PROTO_ICMPV6
                    } else {
                        PROTO_ICMP
                    },
                    lo: 0,
                    hi: 0,
                }),
                _ => {}
            }
        }
    }
    Ports::Items(items)
}

fn np_ports(ports: Option<&[NetworkPolicyPort]>) -> Ports {
    let Some(ports) = ports.filter(|p| !p.is_empty()) else {
        return Ports::All;
    };
    // NetworkPolicy only allows: a protocol trellis does not know, or a port number out of
    // range (validation reports both), allows nothing rather than the whole protocol.
    Ports::Items(
        ports
            .iter()
            .filter_map(|p| {
                let proto = proto_number(p.protocol.as_deref())?;
                Some(match &p.port {
                    None => PortItem::Range {
                        proto,
                        lo: 0,
                        hi: 0,
                    },
                    Some(IntOrString::Int(n)) => {
                        let lo = u16::try_from(*n).ok().filter(|n| *n > 0)?;
                        let hi = p
                            .end_port
                            .and_then(|e| u16::try_from(e).ok())
                            .filter(|e| *e >= lo)
                            .unwrap_or(lo);
                        PortItem::Range { proto, lo, hi }
                    }
                    Some(IntOrString::String(name)) => PortItem::Named {
                        proto,
                        name: name.clone(),
                    },
                })
            })
            .collect(),
    )
}

fn selector_of(
    k8s: &model::k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
) -> LabelSelector {
    // The same JSON shape; an unknown operator (validation reports it) matches nothing.
    serde_json::to_value(k8s)
        .ok()
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_else(|| LabelSelector {
            match_expressions: vec![model::kinds::LabelSelectorRequirement {
                key: String::new(),
                operator: "Invalid".into(),
                values: Vec::new(),
            }],
            ..LabelSelector::default()
        })
}

/// A NetworkPolicy peer's identities.
fn np_peer(
    u: &Universe,
    snapshot: &Snapshot,
    pods_ns: &BTreeMap<u32, String>,
    ns: &str,
    peer: &NetworkPolicyPeer,
) -> BTreeSet<u32> {
    if let Some(b) = &peer.ip_block {
        let Some(net) = parse_net(&b.cidr) else {
            return BTreeSet::new();
        };
        let except: Vec<Ipv4Net> = b
            .except
            .iter()
            .flatten()
            .filter_map(|e| parse_net(e))
            .collect();
        return u.cidr(net, &except);
    }
    let pod_sel = peer.pod_selector.as_ref().map(selector_of);
    let ns_sel = peer.namespace_selector.as_ref().map(selector_of);
    u.endpoints
        .iter()
        .filter(|(id, labels)| {
            let Some(pod_ns) = pods_ns.get(id) else {
                return false;
            };
            let ns_ok = match &ns_sel {
                None => pod_ns == ns,
                Some(sel) => sel.matches(&snapshot.namespace_labels(pod_ns)),
            };
            ns_ok && pod_sel.as_ref().is_none_or(|s| s.matches(labels))
        })
        .map(|(id, _)| *id)
        .collect()
}

/// Compiles every policy for the endpoints on `node` (all nodes' pods and node addresses
/// enter the ipcache).
pub fn compile(
    snapshot: &Snapshot,
    node: &str,
    node_ips: &BTreeMap<String, Ipv4Addr>,
    learned: &Learned,
) -> PolicyPlan {
    let mut plan = PolicyPlan::default();
    let pods = pods(snapshot);

    // Identities.
    let mut label_sets: BTreeMap<BTreeMap<String, String>, ()> = BTreeMap::new();
    for p in &pods {
        label_sets.insert(p.labels.clone(), ());
    }
    let keys: Vec<(BTreeMap<String, String>, Vec<u8>)> = label_sets
        .keys()
        .map(|l| {
            let text: String = l.iter().map(|(k, v)| format!("{k}={v};")).collect();
            (l.clone(), text.into_bytes())
        })
        .collect();
    if keys.len() > ENDPOINT_ID_SPACE as usize {
        plan.over_bound = Some(format!(
            "{} distinct label sets, more than the {} endpoint identities",
            keys.len(),
            ENDPOINT_ID_SPACE
        ));
        return plan;
    }
    let ids = allocate(&keys, ENDPOINT_ID_MIN, ENDPOINT_ID_SPACE);
    let mut prefixes = named_prefixes(snapshot);
    // Addresses DNS answered for toFQDNs are CIDR identities of their own (/32).
    prefixes.extend(
        learned
            .values()
            .flat_map(|m| m.keys())
            .map(|a| Ipv4Net::from(*a)),
    );
    if prefixes.len() > CIDR_IDENTITIES_MAX {
        plan.over_bound = Some(format!(
            "policies name {} CIDR prefixes, more than {CIDR_IDENTITIES_MAX}",
            prefixes.len()
        ));
        return plan;
    }
    let prefix_keys: Vec<(Ipv4Net, Vec<u8>)> = prefixes
        .iter()
        .map(|n| (*n, n.to_string().into_bytes()))
        .collect();
    let universe = Universe {
        endpoints: ids.iter().map(|(l, id)| (*id, l.clone())).collect(),
        cidrs: allocate(&prefix_keys, CIDR_ID_BASE, CIDR_ID_SPACE),
    };
    let pods_ns: BTreeMap<u32, String> = universe
        .endpoints
        .iter()
        .map(|(id, l)| (*id, l.get(LABEL_NAMESPACE).cloned().unwrap_or_default()))
        .collect();
    plan.identities = universe.endpoints.clone();
    for (net, id) in &universe.cidrs {
        plan.identities
            .insert(*id, BTreeMap::from([("cidr".to_string(), net.to_string())]));
    }

    // The ipcache: the world, CIDR prefixes, nodes, pods (more specific wins in the LPM).
    plan.ipcache.insert(Ipv4Net::default(), ID_WORLD);
    for (net, id) in &universe.cidrs {
        plan.ipcache.insert(*net, *id);
    }
    for (name, ip) in node_ips {
        let id = if name == node {
            ID_HOST
        } else {
            ID_REMOTE_NODE
        };
        plan.ipcache.insert(Ipv4Net::from(*ip), id);
    }
    let identity_of = |p: &Pod| ids.get(&p.labels).copied().unwrap_or(ID_WORLD);
    for p in &pods {
        plan.ipcache.insert(Ipv4Net::from(p.ip), identity_of(p));
    }
    if plan.ipcache.len() > IPCACHE_MAX {
        plan.over_bound = Some(format!(
            "{} ipcache entries, more than {IPCACHE_MAX}",
            plan.ipcache.len()
        ));
        return plan;
    }

    let rules = rules(snapshot, &universe, &pods_ns, &mut plan);

    // Named ports of peers, by identity (egress named ports resolve on the destination).
    let mut named: BTreeMap<u32, Vec<(String, u16, u8)>> = BTreeMap::new();
    for p in &pods {
        named
            .entry(identity_of(p))
            .or_default()
            .extend(p.ports.iter().cloned());
    }

    for p in pods.iter().filter(|p| p.node == node) {
        let identity = identity_of(p);
        let mut ep = EndpointPolicy {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            identity,
            ..EndpointPolicy::default()
        };
        let selecting: Vec<&Rule> = rules
            .iter()
            .filter(|r| {
                r.namespace.as_deref().is_none_or(|ns| ns == p.namespace)
                    && r.subject.matches(&p.labels)
            })
            .collect();
        let named_egress = |name: &str, proto: u8, peer: u32| {
            if peer == ID_ANY {
                ports_named(named.values().flatten(), name, proto)
            } else {
                ports_named(named.get(&peer).into_iter().flatten(), name, proto)
            }
        };
        if selecting.iter().any(|r| {
            r.clauses[Direction::Egress as usize]
                .iter()
                .any(|c| c.dns.is_some())
        }) {
            ep.dns = dns_allows(&selecting, &named_egress);
        }
        for r in selecting {
            ep.selected_by.insert(r.label.clone());
            for (names, ports, rule) in &r.fqdn {
                let mut keys = BTreeMap::new();
                let clause = Clause {
                    deny: false,
                    peers: Peers::Any,
                    ports: ports.clone(),
                    rule: *rule,
                    dns: None,
                };
                add_clause(&mut keys, Direction::Egress, &clause, |name, proto, _| {
                    ports_named(named.values().flatten(), name, proto)
                });
                ep.fqdn.push(FqdnRule {
                    names: names.clone(),
                    keys: keys.into_keys().collect(),
                    rule: *rule,
                });
            }
            for dir in [Direction::Ingress, Direction::Egress] {
                let d = dir as usize;
                if r.enforce[d] {
                    match dir {
                        Direction::Ingress => ep.ingress_enforced = true,
                        Direction::Egress => ep.egress_enforced = true,
                    }
                }
                for c in &r.clauses[d] {
                    // A named port is the selected pod's on ingress, the peer's on egress (any
                    // pod's for any peer).
                    add_clause(&mut ep.entries, dir, c, |name, proto, peer| match dir {
                        Direction::Ingress => ports_named(p.ports.iter(), name, proto),
                        Direction::Egress => named_egress(name, proto, peer),
                    });
                }
            }
        }
        if ep.ingress_enforced {
            let host = PolicyKey {
                direction: Direction::Ingress,
                identity: ID_HOST,
                proto: 0,
                port: 0,
                port_bits: 0,
            };
            ep.entries.entry(host).or_insert(Verdict {
                deny: false,
                rule: RULE_HOST,
            });
        }
        for (addr, names) in learned.get(&p.ip).into_iter().flatten() {
            let Some(&identity) = universe.cidrs.get(&Ipv4Net::from(*addr)) else {
                continue;
            };
            for f in &ep.fqdn {
                if names.iter().any(|n| f.names.iter().any(|m| m.matches(n))) {
                    for k in &f.keys {
                        ep.entries
                            .entry(PolicyKey { identity, ..*k })
                            .or_insert(Verdict {
                                deny: false,
                                rule: f.rule,
                            });
                    }
                }
            }
        }
        prune_covered_allows(&mut ep.entries);
        if ep.entries.len() > ENTRIES_PER_ENDPOINT_MAX {
            plan.over_bound = Some(format!(
                "pod {}/{} needs {} policy entries, more than {ENTRIES_PER_ENDPOINT_MAX}",
                p.namespace,
                p.name,
                ep.entries.len()
            ));
            return plan;
        }
        plan.endpoints.insert(p.ip, ep);
    }
    // Over a bound of the node's maps: refused here, whole, so the agent keeps the last good
    // policy and its services still sync.
    let entries: usize = plan.endpoints.values().map(|e| e.entries.len()).sum();
    if entries > ENTRIES_MAX || plan.endpoints.len() > ENDPOINTS_MAX {
        plan.over_bound = Some(format!(
            "{} endpoints with {entries} policy entries, more than {ENDPOINTS_MAX} or {ENTRIES_MAX}",
            plan.endpoints.len()
        ));
    }
    plan
}

/// Who each policy rule selects, for `trellis check`: the rules are read once, then asked
/// for every workload.
pub struct Selectors<'a> {
    snapshot: &'a Snapshot,
    rules: Vec<Rule>,
}

impl<'a> Selectors<'a> {
    pub fn new(snapshot: &'a Snapshot) -> Selectors<'a> {
        let none = Universe {
            endpoints: BTreeMap::new(),
            cidrs: BTreeMap::new(),
        };
        let mut scratch = PolicyPlan::default();
        Selectors {
            snapshot,
            rules: rules(snapshot, &none, &BTreeMap::new(), &mut scratch),
        }
    }

    /// The policies (`Kind ns/name`) that select a pod with these labels in `namespace`.
    pub fn selecting(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        service_account: Option<&str>,
    ) -> BTreeSet<String> {
        let labels = identity_labels(self.snapshot, namespace, labels, service_account);
        self.rules
            .iter()
            .filter(|r| {
                r.namespace.as_deref().is_none_or(|ns| ns == namespace)
                    && r.subject.matches(&labels)
            })
            .map(|r| r.label.clone())
            .collect()
    }
}

/// The numbers of the ports called `name` (protocol `proto`, 0: any) among `ports` (name,
/// number, protocol), sorted, each once.
fn ports_named<'a>(
    ports: impl Iterator<Item = &'a (String, u16, u8)>,
    name: &str,
    proto: u8,
) -> Vec<u16> {
    let mut out: Vec<u16> = ports
        .filter(|(n, _, pr)| n == name && (proto == 0 || *pr == proto))
        .map(|(_, port, _)| *port)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Adds a clause's keys; `named(name, proto, peer)` resolves a port name.
/// The egress allows of `rules` that reach port 53, each with the names it lets through.
fn dns_allows(rules: &[&Rule], named: &dyn Fn(&str, u8, u32) -> Vec<u16>) -> Vec<DnsAllow> {
    let mut out = Vec::new();
    for c in rules
        .iter()
        .flat_map(|r| &r.clauses[Direction::Egress as usize])
        .filter(|c| !c.deny)
    {
        let mut keys = BTreeMap::new();
        add_clause(&mut keys, Direction::Egress, c, named);
        let keys: Vec<PolicyKey> = keys
            .into_keys()
            .filter(|k| {
                [PROTO_UDP, PROTO_TCP].iter().any(|&proto| {
                    k.covers(&PolicyKey {
                        proto,
                        port: DNS_PORT,
                        port_bits: 16,
                        ..*k
                    })
                })
            })
            .collect();
        if !keys.is_empty() {
            out.push(DnsAllow {
                keys,
                names: c.dns.clone(),
                rule: c.rule,
            });
        }
    }
    out
}

fn add_clause(
    entries: &mut BTreeMap<PolicyKey, Verdict>,
    direction: Direction,
    c: &Clause,
    named: impl Fn(&str, u8, u32) -> Vec<u16>,
) {
    let peers: Vec<u32> = match &c.peers {
        Peers::Any => vec![ID_ANY],
        Peers::Set(s) => s.iter().copied().collect(),
    };
    let verdict = Verdict {
        deny: c.deny,
        rule: c.rule,
    };
    let mut put = |k: PolicyKey| {
        let e = entries.entry(k).or_insert(verdict);
        if verdict.deny && !e.deny {
            *e = verdict;
        }
    };
    for peer in peers {
        let key = |proto: u8, port: u16, port_bits: u8| PolicyKey {
            direction,
            identity: peer,
            proto,
            port,
            port_bits,
        };
        match &c.ports {
            Ports::All => put(key(0, 0, 0)),
            Ports::Items(items) => {
                for item in items {
                    let (proto, ranges): (u8, Vec<(u16, u16)>) = match item {
                        // Exact, type 0 (echo reply) included: never the wildcard.
                        PortItem::IcmpType(t) => {
                            put(key(PROTO_ICMP, u16::from(*t), 16));
                            continue;
                        }
                        PortItem::Range { proto, lo, hi } => (*proto, vec![(*lo, *hi)]),
                        PortItem::Named { proto, name } => (
                            *proto,
                            named(name, *proto, peer)
                                .into_iter()
                                .map(|p| (p, p))
                                .collect(),
                        ),
                    };
                    let protos: &[u8] = if proto == 0 {
                        &[PROTO_TCP, PROTO_UDP, PROTO_SCTP]
                    } else {
                        std::slice::from_ref(&proto)
                    };
                    for &pr in protos {
                        for &(lo, hi) in &ranges {
                            if lo == 0 {
                                put(key(pr, 0, 0));
                            } else {
                                for (port, bits) in port_prefixes(lo, hi) {
                                    put(key(pr, port, bits));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The fewest (port, prefix bits) covering `lo..=hi` exactly.
pub fn port_prefixes(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let mut start = u32::from(lo);
    let end = u32::from(hi);
    while start <= end {
        // The largest aligned block starting at `start` that stays within `end`.
        let mut size = if start == 0 {
            1 << 16
        } else {
            start & start.wrapping_neg()
        };
        while start + size - 1 > end {
            size >>= 1;
        }
        let bits = 16 - size.trailing_zeros() as u8;
        out.push((start as u16, bits));
        start += size;
    }
    out
}

/// Removes allows that a deny of the same identity covers (the datapath takes the longest
/// match per lookup, which would otherwise pick the narrower allow).
fn prune_covered_allows(entries: &mut BTreeMap<PolicyKey, Verdict>) {
    let denies: Vec<PolicyKey> = entries
        .iter()
        .filter(|(_, v)| v.deny)
        .map(|(k, _)| *k)
        .collect();
    entries.retain(|k, v| v.deny || !denies.iter().any(|d| d.covers(k)));
}

fn rules(
    snapshot: &Snapshot,
    u: &Universe,
    pods_ns: &BTreeMap<u32, String>,
    plan: &mut PolicyPlan,
) -> Vec<Rule> {
    let mut out = Vec::new();
    for (kind, clusterwide, coll) in [
        (
            "CiliumNetworkPolicy",
            false,
            &snapshot.cilium_network_policies,
        ),
        (
            "CiliumClusterwideNetworkPolicy",
            true,
            &snapshot.cilium_clusterwide_network_policies,
        ),
    ] {
        for p in coll.values() {
            let ns = (!clusterwide).then(|| p.namespace().to_string());
            let label = format!(
                "{kind} {}",
                if clusterwide {
                    p.name().to_string()
                } else {
                    format!("{}/{}", p.namespace(), p.name())
                }
            );
            let rules = p.spec.spec.iter().map(|r| ("spec".to_string(), r)).chain(
                p.spec
                    .specs
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (format!("specs[{i}]"), r)),
            );
            for (path, r) in rules {
                let Some(sel) = &r.endpoint_selector else {
                    continue;
                };
                let mut rule = Rule {
                    namespace: ns.clone(),
                    subject: normalize(sel),
                    label: label.clone(),
                    enforce: [false; 2],
                    clauses: [Vec::new(), Vec::new()],
                    fqdn: Vec::new(),
                };
                let mut refer = |sub: String| {
                    plan.rules.push(RuleRef {
                        kind,
                        namespace: ns.clone().unwrap_or_default(),
                        name: p.name().to_string(),
                        path: format!("{path}.{sub}"),
                    });
                    (plan.rules.len() - 1) as u32
                };
                cilium_rule(snapshot, u, ns.as_deref(), r, &mut rule, &mut refer);
                if u.endpoints.values().all(|l| {
                    ns.as_deref()
                        .is_some_and(|n| l.get(LABEL_NAMESPACE).map(String::as_str) != Some(n))
                        || !rule.subject.matches(l)
                }) {
                    plan.problems.push(format!(
                        "{label}: {path}.endpointSelector: selects no running pod"
                    ));
                }
                out.push(rule);
            }
        }
    }
    for np in snapshot.network_policies.values() {
        let Some(spec) = &np.spec.spec else { continue };
        let ns = np.namespace().to_string();
        let has_egress = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
        let types: Vec<String> = spec.policy_types.clone().unwrap_or_else(|| {
            let mut t = vec!["Ingress".to_string()];
            if has_egress {
                t.push("Egress".into());
            }
            t
        });
        let mut rule = Rule {
            namespace: Some(ns.clone()),
            subject: spec
                .pod_selector
                .as_ref()
                .map(selector_of)
                .unwrap_or_default(),
            label: format!("NetworkPolicy {ns}/{}", np.name()),
            enforce: [
                types.iter().any(|t| t == "Ingress"),
                types.iter().any(|t| t == "Egress"),
            ],
            clauses: [Vec::new(), Vec::new()],
            fqdn: Vec::new(),
        };
        let mut refer = |path: String| {
            plan.rules.push(RuleRef {
                kind: "NetworkPolicy",
                namespace: ns.clone(),
                name: np.name().to_string(),
                path,
            });
            (plan.rules.len() - 1) as u32
        };
        let ingress = spec.ingress.iter().flatten().enumerate().map(|(i, r)| {
            (
                Direction::Ingress,
                format!("spec.ingress[{i}]"),
                r.from.as_deref(),
                r.ports.as_deref(),
            )
        });
        let egress = spec.egress.iter().flatten().enumerate().map(|(i, r)| {
            (
                Direction::Egress,
                format!("spec.egress[{i}]"),
                r.to.as_deref(),
                r.ports.as_deref(),
            )
        });
        for (dir, path, peers, ports) in ingress.chain(egress) {
            if !rule.enforce[dir as usize] {
                continue;
            }
            let peers = match peers.filter(|p| !p.is_empty()) {
                None => Peers::Any,
                Some(list) => Peers::Set(
                    list.iter()
                        .flat_map(|peer| np_peer(u, snapshot, pods_ns, &ns, peer))
                        .collect(),
                ),
            };
            let id = refer(path);
            rule.clauses[dir as usize].push(Clause {
                deny: false,
                peers,
                ports: np_ports(ports),
                rule: id,
                dns: None,
            });
        }
        out.push(rule);
    }
    out
}

/// The identities of the pods behind a `toServices` entry (a Service's selector, in its
/// namespace): Cilium allows the Service's backends. `None` when it cannot be resolved: no
/// such Service, a Service without a selector (its endpoints are not pods trellis knows by
/// labels), or a clusterwide policy that names no namespace for a Service by name.
fn service_backends(
    snapshot: &Snapshot,
    u: &Universe,
    policy_ns: Option<&str>,
    r: &model::kinds::cilium::ServiceRef,
) -> Option<BTreeSet<u32>> {
    use model::kinds::cilium::ServiceRef;
    let services: Vec<&model::Object<_>> = match r {
        ServiceRef::Name { name, namespace } => {
            let ns = namespace.as_deref().or(policy_ns)?;
            vec![model::snapshot::get(&snapshot.services, ns, name)?]
        }
        ServiceRef::Selector {
            selector,
            namespace,
        } => {
            let ns = namespace.as_deref().or(policy_ns);
            snapshot
                .services
                .values()
                .filter(|s| ns.is_none_or(|n| s.namespace() == n))
                .filter(|s| selector.matches(&s.meta.labels))
                .collect()
        }
    };
    let mut out = BTreeSet::new();
    for svc in services {
        let mut labels = model::kinds::cilium::service_selector(svc)?.clone();
        labels.insert(LABEL_NAMESPACE.into(), svc.namespace().to_string());
        out.extend(u.select_endpoints(&LabelSelector {
            match_labels: labels,
            match_expressions: Vec::new(),
        }));
    }
    Some(out)
}

/// One Cilium rule's clauses and default-deny switches.
fn cilium_rule(
    snapshot: &Snapshot,
    u: &Universe,
    ns: Option<&str>,
    r: &PolicyRule,
    rule: &mut Rule,
    refer: &mut dyn FnMut(String) -> u32,
) {
    // Cilium: unset, default deny is on for each direction the rule has rules in; set, it is
    // what it says, rules or not (`ingress: true` with egress rules only still denies ingress).
    let default_deny = r.enable_default_deny.as_ref();
    rule.enforce[0] = default_deny
        .and_then(|d| d.ingress)
        .unwrap_or(!r.ingress.is_empty() || !r.ingress_deny.is_empty());
    rule.enforce[1] = default_deny
        .and_then(|d| d.egress)
        .unwrap_or(!r.egress.is_empty() || !r.egress_deny.is_empty());
    let cidr_set = |set: &[CidrRule], deny: bool| -> (BTreeSet<u32>, bool) {
        // (identities, whether an unresolved group made a deny rule deny everyone)
        let mut ids = BTreeSet::new();
        let mut everyone = false;
        for c in set {
            let except: Vec<Ipv4Net> = c.except.iter().filter_map(|e| parse_net(e)).collect();
            let nets: Vec<Ipv4Net> = match (&c.cidr, &c.cidr_group_ref) {
                (Some(cidr), _) => parse_net(cidr).into_iter().collect(),
                (None, Some(g)) => match model::snapshot::get(&snapshot.cidr_groups, "", g) {
                    Some(group) => group
                        .spec
                        .external_cidrs
                        .iter()
                        .filter_map(|s| parse_net(s))
                        .collect(),
                    None => {
                        everyone |= deny;
                        Vec::new()
                    }
                },
                // cidrGroupSelector: groups by their labels.
                (None, None) => match &c.cidr_group_selector {
                    Some(sel) => snapshot
                        .cidr_groups
                        .values()
                        .filter(|g| sel.matches(&g.meta.labels))
                        .flat_map(|g| g.spec.external_cidrs.iter().filter_map(|s| parse_net(s)))
                        .collect(),
                    None => Vec::new(),
                },
            };
            for n in nets {
                ids.extend(u.cidr(n, &except));
            }
        }
        (ids, everyone)
    };
    for (d, deny, list) in [
        (
            0usize,
            false,
            r.ingress.iter().map(Side::Ingress).collect::<Vec<_>>(),
        ),
        (0, true, r.ingress_deny.iter().map(Side::Ingress).collect()),
        (1, false, r.egress.iter().map(Side::Egress).collect()),
        (1, true, r.egress_deny.iter().map(Side::Egress).collect()),
    ] {
        let field = match (d, deny) {
            (0, false) => "ingress",
            (0, true) => "ingressDeny",
            (_, false) => "egress",
            (_, true) => "egressDeny",
        };
        for (i, side) in list.into_iter().enumerate() {
            let (selectors, entities, cidrs, cidr_sets, ports, unenforced) = side.parts(deny);
            let mut ids = BTreeSet::new();
            // toFQDNs selects peers too (the addresses DNS answers), so it is not "any peer".
            let fqdns: Vec<FqdnPattern> = if deny {
                Vec::new()
            } else {
                side.fqdns().iter().filter_map(FqdnPattern::of).collect()
            };
            let mut any_l3 = !side.fqdns().is_empty();
            let mut everyone = deny && !unenforced.is_empty();
            for sel in selectors {
                any_l3 = true;
                ids.extend(u.select_endpoints(&confine(sel, ns)));
            }
            for e in entities {
                any_l3 = true;
                match u.entity(e) {
                    Peers::Any => everyone = true,
                    Peers::Set(s) => ids.extend(s),
                }
            }
            if !side.services().is_empty() {
                any_l3 = true;
                // (Entries neither form are in `unenforced`: the rule is handled above.)
                for r in model::kinds::cilium::service_refs(side.services()).unwrap_or_default() {
                    match service_backends(snapshot, u, ns, &r) {
                        Some(backends) => ids.extend(backends),
                        // Not resolved: an allow selects nobody, a deny everyone.
                        None => everyone |= deny,
                    }
                }
            }
            for c in cidrs {
                any_l3 = true;
                if let Some(n) = parse_net(c) {
                    ids.extend(u.cidr(n, &[]));
                }
            }
            if !cidr_sets.is_empty() {
                any_l3 = true;
                let (s, all) = cidr_set(cidr_sets, deny);
                ids.extend(s);
                everyone |= all;
            }
            // An egress allow whose port rules carry `rules.dns`: a clause per port rule, so
            // that each keeps its names; otherwise one clause of all the ports.
            let groups: Vec<(Ports, Option<Vec<FqdnPattern>>)> = if d == 1
                && !deny
                && side.icmps().is_empty()
                && ports.iter().any(|r| r.dns_names().is_some())
            {
                ports
                    .iter()
                    .filter_map(|r| {
                        let names = r
                            .dns_names()
                            .map(|n| n.iter().filter_map(FqdnPattern::of).collect());
                        Some((cilium_ports(std::slice::from_ref(r), false, true)?, names))
                    })
                    .collect()
            } else {
                let ports = match (side.icmps(), ports.is_empty()) {
                    ([], _) => cilium_ports(ports, deny, d == 1),
                    (icmps, true) => Some(cilium_icmps(icmps, deny)),
                    // Both (Cilium refuses the rule; validation says so): an allow allows
                    // nothing, a deny denies every port of its peers.
                    (_, false) if deny => Some(Ports::All),
                    (_, false) => None,
                };
                // None: every port rule carries what trellis does not enforce: allows nothing.
                ports.into_iter().map(|p| (p, None)).collect()
            };
            let mut id = None;
            for (ports, dns) in groups {
                if !any_l3 && unenforced.is_empty() && matches!(ports, Ports::All) {
                    // `{}`: turns default deny on, allows nothing.
                    continue;
                }
                let peers = if everyone || (!any_l3 && unenforced.is_empty()) {
                    Peers::Any
                } else {
                    Peers::Set(ids.clone())
                };
                let id = *id.get_or_insert_with(|| refer(format!("{field}[{i}]")));
                if !fqdns.is_empty() {
                    rule.fqdn.push((fqdns.clone(), ports.clone(), id));
                }
                rule.clauses[d].push(Clause {
                    deny,
                    peers,
                    ports,
                    rule: id,
                    dns,
                });
            }
        }
    }
}

/// An ingress or egress rule, read through one shape.
enum Side<'a> {
    Ingress(&'a model::kinds::cilium::IngressRule),
    Egress(&'a model::kinds::cilium::EgressRule),
}

type Parts<'a> = (
    &'a [LabelSelector],
    &'a [String],
    &'a [String],
    &'a [CidrRule],
    &'a [PortRule],
    Vec<(&'static str, &'static str)>,
);

impl<'a> Side<'a> {
    /// The rule's ICMP type rules.
    fn icmps(&self) -> &'a [serde_json::Value] {
        match *self {
            Side::Ingress(r) => &r.icmps,
            Side::Egress(r) => &r.icmps,
        }
    }

    /// The rule's toServices entries (none on ingress).
    fn services(&self) -> &'a [serde_json::Value] {
        match *self {
            Side::Ingress(_) => &[],
            Side::Egress(r) => &r.to_services,
        }
    }

    /// The rule's toFQDNs selectors (none on ingress).
    fn fqdns(&self) -> &'a [model::kinds::cilium::FqdnSelector] {
        match *self {
            Side::Ingress(_) => &[],
            Side::Egress(r) => &r.to_fqdns,
        }
    }

    fn parts(&self, deny: bool) -> Parts<'a> {
        match *self {
            Side::Ingress(r) => (
                &r.from_endpoints,
                &r.from_entities,
                &r.from_cidr,
                &r.from_cidr_set,
                &r.to_ports,
                r.unenforced_peers(),
            ),
            Side::Egress(r) => (
                &r.to_endpoints,
                &r.to_entities,
                &r.to_cidr,
                &r.to_cidr_set,
                &r.to_ports,
                r.unenforced_peers(deny),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::snapshot;

    fn pod(ns: &str, name: &str, ip: &str, node: &str, labels: &str) -> String {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {labels}}}\n\
             spec: {{nodeName: {node}, containers: [{{name: c, image: x, ports: [{{name: http, containerPort: 8080}}]}}]}}\n\
             status: {{podIP: {ip}}}\n"
        )
    }

    fn nodes() -> BTreeMap<String, Ipv4Addr> {
        BTreeMap::from([
            ("n1".to_string(), Ipv4Addr::new(10, 10, 30, 11)),
            ("n2".to_string(), Ipv4Addr::new(10, 10, 30, 12)),
        ])
    }

    fn key(direction: Direction, identity: u32, proto: u8, port: u16, port_bits: u8) -> PolicyKey {
        PolicyKey {
            direction,
            identity,
            proto,
            port,
            port_bits,
        }
    }

    fn pods_and(policies: &str) -> Snapshot {
        let mut text = String::new();
        text += &pod("default", "web", "10.0.1.5", "n1", "{app: web}");
        text += &pod("default", "client", "10.0.2.5", "n2", "{app: client}");
        text += &pod("other", "client", "10.0.2.6", "n2", "{app: client}");
        text += &pod(
            "kube-system",
            "dns",
            "10.0.2.7",
            "n2",
            "{k8s-app: kube-dns}",
        );
        text += policies;
        snapshot(&text)
    }

    #[test]
    fn port_ranges_become_the_fewest_exact_prefixes() {
        assert_eq!(port_prefixes(80, 80), [(80, 16)]);
        assert_eq!(port_prefixes(8080, 8083), [(8080, 14)]);
        assert_eq!(port_prefixes(1, 65535).len(), 16);
        for (lo, hi) in [
            (80u16, 90u16),
            (1, 1024),
            (32768, 60999),
            (5, 5),
            (65534, 65535),
        ] {
            let mut covered = BTreeSet::new();
            for (p, bits) in port_prefixes(lo, hi) {
                let size = 1u32 << (16 - u32::from(bits));
                assert_eq!(u32::from(p) % size, 0, "aligned");
                covered.extend(u32::from(p)..u32::from(p) + size);
            }
            assert_eq!(
                covered,
                (u32::from(lo)..=u32::from(hi)).collect(),
                "{lo}-{hi}"
            );
        }
    }

    #[test]
    fn the_corpus_default_deny_and_dns_allow() {
        let s = pods_and(include_str!(
            "../../../testdata/home-ops/docs/security-improvements/network-policies/default-deny.yaml"
        ));
        let plan = compile(&s, "n1", &nodes(), &Learned::default());
        let web = &plan.endpoints[&Ipv4Addr::new(10, 0, 1, 5)];
        assert!(web.ingress_enforced && web.egress_enforced);
        let egress: Vec<&PolicyKey> = web
            .entries
            .keys()
            .filter(|k| k.direction == Direction::Egress)
            .collect();
        assert_eq!(
            egress,
            [
                &key(Direction::Egress, ID_ANY, PROTO_TCP, 53, 16),
                &key(Direction::Egress, ID_ANY, PROTO_UDP, 53, 16)
            ]
        );
        // Ingress: only the host (the selected-by-label allow is for component=server pods).
        let ingress: Vec<&PolicyKey> = web
            .entries
            .keys()
            .filter(|k| k.direction == Direction::Ingress)
            .collect();
        assert_eq!(ingress, [&key(Direction::Ingress, ID_HOST, 0, 0, 0)]);
        assert_eq!(
            plan.ipcache[&"10.10.30.11/32".parse().expect("net")],
            ID_HOST
        );
        assert_eq!(
            plan.ipcache[&"10.10.30.12/32".parse().expect("net")],
            ID_REMOTE_NODE
        );
        assert_eq!(plan.ipcache[&Ipv4Net::default()], ID_WORLD);
        // Only n1's pods are endpoints of n1.
        assert_eq!(plan.endpoints.len(), 1);
    }

    #[test]
    fn cilium_selectors_entities_fqdns_and_dns_rules() {
        let s = pods_and(
            r#"---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: default}
spec:
  endpointSelector: {matchLabels: {"k8s:app": web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: http, protocol: TCP}]}]
  egress:
  - toEntities: [world]
  - toEndpoints: [{matchLabels: {io.kubernetes.pod.namespace: kube-system, k8s-app: kube-dns}}]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules: {dns: [{matchPattern: "*"}]}
  - toFQDNs: [{matchName: vw.example.test}]
  - toCIDR: [192.0.2.0/24]
    toPorts: [{ports: [{port: "443"}], rules: {http: [{method: GET}]}}]
"#,
        );
        let plan = compile(&s, "n1", &nodes(), &Learned::default());
        let web = &plan.endpoints[&Ipv4Addr::new(10, 0, 1, 5)];
        let id = |ip: &str| plan.ipcache[&Ipv4Net::from(ip.parse::<Ipv4Addr>().expect("ip"))];
        // The client in `default` only (confined to the policy's namespace), on the named port.
        assert!(web.entries.contains_key(&key(
            Direction::Ingress,
            id("10.0.2.5"),
            PROTO_TCP,
            8080,
            16
        )));
        assert_ne!(
            id("10.0.2.5"),
            id("10.0.2.6"),
            "namespaces differ, identities differ"
        );
        assert!(!web.entries.keys().any(|k| k.identity == id("10.0.2.6")));
        // World, and DNS to kube-dns on TCP/UDP/SCTP 53.
        assert!(
            web.entries
                .contains_key(&key(Direction::Egress, ID_WORLD, 0, 0, 0))
        );
        for proto in [PROTO_TCP, PROTO_UDP, PROTO_SCTP] {
            assert!(web.entries.contains_key(&key(
                Direction::Egress,
                id("10.0.2.7"),
                proto,
                53,
                16
            )));
        }
        // toFQDNs and the HTTP-rule port allow nothing: no ANY key, no CIDR key on 443.
        assert!(!web.entries.keys().any(|k| k.identity == ID_ANY));
        let cidr = plan.ipcache[&"192.0.2.0/24".parse().expect("net")];
        assert!(
            !web.entries
                .keys()
                .any(|k| k.identity == cidr && k.port == 443)
        );
        // The world selects the CIDR identity too (it is part of the world).
        assert!(
            web.entries
                .contains_key(&key(Direction::Egress, cidr, 0, 0, 0))
        );
    }

    #[test]
    fn dns_rules_restrict_the_names_asked_of_the_servers_they_reach() {
        let policy = |extra: &str| {
            pods_and(&format!(
                r#"---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: web, namespace: default}}
spec:
  endpointSelector: {{matchLabels: {{app: web}}}}
  egress:
  - toEntities: [world]
  - toEndpoints: [{{matchLabels: {{io.kubernetes.pod.namespace: kube-system, k8s-app: kube-dns}}}}]
    toPorts:
    - ports: [{{port: "53", protocol: ANY}}]
      rules: {{dns: [{{matchPattern: "*.example.test"}}, {{matchName: api.other.test}}]}}
{extra}"#
            ))
        };
        let s = policy("");
        let plan = compile(&s, "n1", &nodes(), &Learned::default());
        let web = &plan.endpoints[&Ipv4Addr::new(10, 0, 1, 5)];
        let dns = plan.identity_of(Ipv4Addr::new(10, 0, 2, 7));
        assert_ne!(dns, ID_WORLD);
        for (name, allowed) in [
            ("a.example.test", true),
            ("A.Example.Test.", true),
            ("api.other.test", true),
            ("example.test", false),
            ("a.b.example.test", false),
            ("evil.test", false),
        ] {
            assert_eq!(
                web.dns_allows(Some(dns), PROTO_UDP, name),
                allowed,
                "{name} of kube-dns"
            );
        }
        // A server in the world is reached by the world rule, which has no DNS rules.
        let world = plan.identity_of(Ipv4Addr::new(8, 8, 8, 8));
        assert!(web.dns_allows(Some(world), PROTO_UDP, "evil.test"));
        // The server's address unknown: every allow of port 53 counts (the world's too).
        assert!(web.dns_allows(None, PROTO_UDP, "evil.test"));
        // The L4 allow is there as before (the names are the DNS server's to refuse).
        assert!(
            web.entries
                .contains_key(&key(Direction::Egress, dns, PROTO_UDP, 53, 16))
        );
        // Only web is restricted.
        assert_eq!(
            dns_restricted(&s),
            BTreeSet::from([Ipv4Addr::new(10, 0, 1, 5)])
        );

        // Another rule reaching kube-dns on 53 without DNS rules: any name (Cilium merges an
        // L7-less rule on the same port into a wildcard).
        let s = policy(
            "  - toEndpoints: [{matchLabels: {k8s-app: kube-dns}}]\n    toPorts: [{ports: [{port: \"53\"}]}]\n",
        );
        let plan = compile(&s, "n1", &nodes(), &Learned::default());
        let web = &plan.endpoints[&Ipv4Addr::new(10, 0, 1, 5)];
        // (Confined to default: that rule selects no kube-dns pod, so names stay restricted.)
        assert!(!web.dns_allows(Some(dns), PROTO_UDP, "evil.test"));
        let s = policy(
            "  - toEndpoints: [{matchLabels: {io.kubernetes.pod.namespace: kube-system}}]\n    toPorts: [{ports: [{port: \"53\", protocol: UDP}]}]\n",
        );
        let plan = compile(&s, "n1", &nodes(), &Learned::default());
        let web = &plan.endpoints[&Ipv4Addr::new(10, 0, 1, 5)];
        assert!(web.dns_allows(Some(dns), PROTO_UDP, "evil.test"));
        // ... over UDP; over TCP only the DNS rule reaches it.
        assert!(!web.dns_allows(Some(dns), PROTO_TCP, "evil.test"));

        // DNS rules on ingress are not enforced: that allow allows nothing.
        let s = pods_and(
            r#"---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "53"}], rules: {dns: [{matchPattern: "*"}]}}]
"#,
        );
        let plan = compile(&s, "n1", &nodes(), &Learned::default());
        let web = &plan.endpoints[&Ipv4Addr::new(10, 0, 1, 5)];
        assert!(web.ingress_enforced);
        assert!(
            !web.entries
                .keys()
                .any(|k| k.direction == Direction::Ingress && k.identity != ID_HOST)
        );
    }

    #[test]
    fn learning_an_answer_makes_what_compiling_with_it_makes() {
        let mut text = pod("default", "db", "10.0.1.6", "n1", "{app: db}");
        text += r#"---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress:
  - toFQDNs: [{matchPattern: "*.example.test"}]
    toPorts: [{ports: [{port: "443"}, {port: "8000", endPort: 8003}]}]
  - toCIDRSet: [{cidr: 192.0.2.0/24, except: [192.0.2.128/25]}]
    toPorts: [{ports: [{port: "80"}]}]
  egressDeny:
  - toCIDR: [192.0.2.0/28]
    toPorts: [{ports: [{port: "443"}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: db}}
  egress:
  - toEntities: [world]
    toPorts: [{ports: [{port: "5432"}]}]
"#;
        let s = pods_and(&text);
        let web = Ipv4Addr::new(10, 0, 1, 5);
        let names = BTreeSet::from(["a.example.test".to_string()]);
        let mut learned = Learned::default();
        learned
            .entry(web)
            .or_default()
            .insert(Ipv4Addr::new(203, 0, 113, 9), names.clone());
        for addr in [
            // Inside the allowed CIDR and the denied /28; in the except; the world; known.
            Ipv4Addr::new(192, 0, 2, 5),
            Ipv4Addr::new(192, 0, 2, 200),
            Ipv4Addr::new(198, 51, 100, 7),
            Ipv4Addr::new(203, 0, 113, 9),
        ] {
            let mut plan = compile(&s, "n1", &nodes(), &learned);
            let added = learn(&mut plan, web, addr, &names).expect("learned in place");
            let mut with = learned.clone();
            with.entry(web)
                .or_default()
                .entry(addr)
                .or_default()
                .extend(names.iter().cloned());
            let full = compile(&s, "n1", &nodes(), &with);
            assert_eq!(plan.ipcache, full.ipcache, "{addr}");
            assert_eq!(plan.identities, full.identities, "{addr}");
            for (ip, e) in &full.endpoints {
                assert_eq!(plan.endpoints[ip].entries, e.entries, "{addr}: {ip}");
            }
            // What it says it added is what changed.
            let before = compile(&s, "n1", &nodes(), &learned);
            for (ip, k, v) in &added.entries {
                assert!(!before.endpoints[ip].entries.contains_key(k));
                assert_eq!(full.endpoints[ip].entries.get(k), Some(v));
            }
            let new_keys: usize = full
                .endpoints
                .iter()
                .map(|(ip, e)| e.entries.len() - before.endpoints[ip].entries.len())
                .sum();
            assert_eq!(added.entries.len(), new_keys, "{addr}");
            assert_eq!(
                added.ipcache.is_empty(),
                addr == Ipv4Addr::new(203, 0, 113, 9)
            );
        }
        // A name no rule covers: nothing; an address of the cluster: compile decides.
        let mut plan = compile(&s, "n1", &nodes(), &learned);
        let other = BTreeSet::from(["a.example.org".to_string()]);
        assert_eq!(
            learn(&mut plan, web, Ipv4Addr::new(198, 51, 100, 7), &other),
            Some(Added::default())
        );
        assert_eq!(
            learn(&mut plan, web, Ipv4Addr::new(10, 0, 2, 5), &names),
            None
        );
    }

    #[test]
    fn enable_default_deny_set_applies_without_rules_in_its_direction() {
        // The corpus's Forgejo runner: egress rules only, `enableDefaultDeny: {ingress: true}`.
        let s = pods_and(
            r#"---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  enableDefaultDeny: {ingress: true}
  egress:
  - toEntities: [world]
"#,
        );
        let plan = compile(&s, "n1", &nodes(), &Learned::default());
        let web = &plan.endpoints[&Ipv4Addr::new(10, 0, 1, 5)];
        assert!(web.ingress_enforced && web.egress_enforced);
        // Unset: only the direction with rules.
        let s = pods_and(
            r#"---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress:
  - toEntities: [world]
"#,
        );
        let plan = compile(&s, "n1", &nodes(), &Learned::default());
        let web = &plan.endpoints[&Ipv4Addr::new(10, 0, 1, 5)];
        assert!(!web.ingress_enforced && web.egress_enforced);
    }

    #[test]
    fn to_services_selects_the_backends_of_the_services_named() {
        let svc = |ns: &str, name: &str, labels: &str, selector: &str| {
            format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}, labels: {labels}}}\n\
                 spec: {{{selector}ports: [{{port: 53}}]}}\n"
            )
        };
        let mut text = svc(
            "kube-system",
            "kube-dns",
            "{}",
            "selector: {k8s-app: kube-dns}, ",
        );
        text += &svc(
            "default",
            "client",
            "{tier: front}",
            "selector: {app: client}, ",
        );
        text += &svc("default", "outside", "{}", "");
        text += r#"---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress:
  - toServices: [{k8sService: {serviceName: kube-dns, namespace: kube-system}}]
    toPorts: [{ports: [{port: "53"}]}]
  - toServices: [{k8sServiceSelector: {selector: {matchLabels: {tier: front}}}}]
    toPorts: [{ports: [{port: "8080"}]}]
  - toServices: [{k8sService: {serviceName: missing}}, {k8sService: {serviceName: outside}}]
    toPorts: [{ports: [{port: "9000"}]}]
  egressDeny:
  - toServices: [{k8sService: {serviceName: outside}}]
    toPorts: [{ports: [{port: "7000"}]}]
"#;
        let s = pods_and(&text);
        let plan = compile(&s, "n1", &nodes(), &Learned::default());
        let web = &plan.endpoints[&Ipv4Addr::new(10, 0, 1, 5)];
        let id = |ip: [u8; 4]| plan.identity_of(Ipv4Addr::from(ip));
        let allows = |peer: u32, port: u16| {
            web.entries.iter().any(|(k, v)| {
                !v.deny && k.direction == Direction::Egress && k.identity == peer && k.port == port
            })
        };
        // By name, in the namespace named; by labels, in the policy's namespace only.
        assert!(allows(id([10, 0, 2, 7]), 53));
        assert!(allows(id([10, 0, 2, 5]), 8080));
        assert!(
            !allows(id([10, 0, 2, 6]), 8080),
            "other/client is not behind it"
        );
        // A missing Service, or one without a selector, allows nobody...
        assert!(!web.entries.keys().any(|k| k.port == 9000));
        // ... and a deny of one denies its ports to everyone.
        assert!(
            web.entries
                .iter()
                .any(|(k, v)| v.deny && k.identity == ID_ANY && k.port == 7000)
        );
    }

    #[test]
    fn deny_wins_and_default_deny_can_be_switched_off() {
        let s = pods_and(
            r#"---
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: web}
spec:
  endpointSelector: {matchLabels: {app: web}}
  enableDefaultDeny: {ingress: false}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "80"}]}]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: client, io.kubernetes.pod.namespace: other}}]
  egressDeny:
  - toCIDRSet: [{cidrGroupRef: missing}]
    toPorts: [{ports: [{port: "25"}]}]
"#,
        );
        let plan = compile(&s, "n1", &nodes(), &Learned::default());
        let web = &plan.endpoints[&Ipv4Addr::new(10, 0, 1, 5)];
        let other = plan.ipcache[&"10.0.2.6/32".parse().expect("net")];
        assert!(!web.ingress_enforced, "enableDefaultDeny.ingress: false");
        assert!(
            web.egress_enforced,
            "a deny rule turns egress default deny on"
        );
        // The deny of everything from `other/client` removed its narrower allow on port 80.
        assert_eq!(
            web.entries
                .get(&key(Direction::Ingress, other, 0, 0, 0))
                .map(|v| v.deny),
            Some(true)
        );
        assert!(
            !web.entries
                .contains_key(&key(Direction::Ingress, other, PROTO_TCP, 80, 16))
        );
        // An unresolved CIDR group in a deny rule denies its port to everyone (fail closed).
        assert_eq!(
            web.entries
                .get(&key(Direction::Egress, ID_ANY, PROTO_TCP, 25, 16))
                .map(|v| v.deny),
            Some(true)
        );
        assert!(
            plan.rules
                [web.entries[&key(Direction::Egress, ID_ANY, PROTO_TCP, 25, 16)].rule as usize]
                .to_string()
                .contains("egressDeny[0]")
        );
    }

    /// A port or protocol trellis cannot match never becomes "the whole protocol".
    #[test]
    fn ports_it_cannot_match_allow_nothing() {
        let s = pods_and(
            r#"---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{ports: [{port: 70000}, {port: 80, protocol: QUIC}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress: [{toPorts: [{ports: [{port: "8", protocol: ICMP}]}]}]
  egressDeny: [{toPorts: [{ports: [{port: "0", protocol: ICMP}, {port: "25", protocol: GRE}]}]}]
"#,
        );
        let plan = compile(&s, "n1", &nodes(), &Learned::default());
        let web = &plan.endpoints[&Ipv4Addr::new(10, 0, 1, 5)];
        let allows: Vec<&PolicyKey> = web
            .entries
            .iter()
            .filter(|(k, v)| !v.deny && k.identity != ID_HOST)
            .map(|(k, _)| k)
            .collect();
        assert!(allows.is_empty(), "{allows:?}");
        // The deny covers all of ICMP, and port 25 of every protocol (GRE is not known).
        let denies: BTreeSet<PolicyKey> = web
            .entries
            .iter()
            .filter(|(_, v)| v.deny)
            .map(|(k, _)| *k)
            .collect();
        assert!(denies.contains(&key(Direction::Egress, ID_ANY, PROTO_ICMP, 0, 0)));
        for proto in [PROTO_TCP, PROTO_UDP, PROTO_SCTP] {
            assert!(denies.contains(&key(Direction::Egress, ID_ANY, proto, 25, 16)));
        }
    }

    /// `icmps` are looked up by type, exactly (echo reply, type 0, is not the wildcard); an
    /// ICMPv6 or unknown type allows nothing and, in a deny, denies the whole protocol.
    #[test]
    fn icmp_types_are_exact_and_fail_closed() {
        let s = pods_and(
            r#"---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - icmps: [{fields: [{type: 8, family: IPv4}, {type: EchoReply}, {type: 128, family: IPv6}, {type: Nonsense}]}]
  egressDeny:
  - icmps: [{fields: [{type: "13"}, {type: 128, family: IPv6}]}]
"#,
        );
        let plan = compile(&s, "n1", &nodes(), &Learned::default());
        let web = &plan.endpoints[&Ipv4Addr::new(10, 0, 1, 5)];
        let of = |deny: bool| -> BTreeSet<PolicyKey> {
            web.entries
                .iter()
                .filter(|(k, v)| v.deny == deny && k.identity != ID_HOST)
                .map(|(k, _)| *k)
                .collect()
        };
        assert_eq!(
            of(false),
            BTreeSet::from([
                key(Direction::Ingress, ID_ANY, PROTO_ICMP, 8, 16),
                key(Direction::Ingress, ID_ANY, PROTO_ICMP, 0, 16),
            ])
        );
        assert_eq!(
            of(true),
            BTreeSet::from([
                key(Direction::Egress, ID_ANY, PROTO_ICMP, 13, 16),
                key(Direction::Egress, ID_ANY, PROTO_ICMPV6, 0, 0),
            ])
        );
    }

    #[test]
    fn identities_stay_when_other_pods_come() {
        let a = compile(&pods_and(""), "n1", &nodes(), &Learned::default());
        let mut text = String::new();
        for i in 0..50 {
            text += &pod(
                "default",
                &format!("p{i}"),
                &format!("10.0.3.{i}"),
                "n2",
                &format!("{{app: a{i}}}"),
            );
        }
        let b = compile(&pods_and(&text), "n1", &nodes(), &Learned::default());
        for ip in ["10.0.1.5/32", "10.0.2.5/32", "10.0.2.6/32"] {
            let n: Ipv4Net = ip.parse().expect("net");
            assert_eq!(a.ipcache[&n], b.ipcache[&n], "{ip}");
        }
    }
}
