//! Cluster IPs and node ports for Services whose manifests leave them out.
//!
//! In a real cluster the API server allocates these when a Service is created; manifests
//! usually omit them. Standalone and in the lab there is no API server, so [`assign`] plays
//! its allocator: a pure function from the snapshot and the previous assignments to the new
//! ones, which the caller persists (the type is serde) and hands back next time.
//!
//! The rules, in order of precedence:
//!
//! 1. An address or node port written in a manifest is the Service's, and nobody else's.
//! 2. A previous assignment is kept while its Service exists, still needs it, and it is still
//!    valid (inside the range, not claimed by a manifest in the meantime).
//! 3. The first host of the service CIDR (10.96.0.1) is reserved for `default/kubernetes` and
//!    the tenth (10.96.0.10) for cluster DNS: `kube-system/kube-dns`, else
//!    `kube-system/coredns` (the names kubeadm and the CoreDNS chart use). Other Services
//!    never get them, even when their owners do not exist.
//! 4. Anything else gets a free value chosen by a hash of its name (then the next free one),
//!    so the same manifests give the same addresses even when the previous state is lost.
//!
//! Nothing is ever handed out twice. Only values the allocator chose are stored; those from
//! manifests are read from the snapshot each time.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use ipnet::Ipv4Net;
use model::Snapshot;
use serde::{Deserialize, Serialize};

use crate::maglev::hash64;
use crate::plan::{Problem, protocol_number, service_type};

/// The node port range the API server uses by default (`--service-node-port-range`).
pub const NODE_PORT_RANGE_DEFAULT: RangeInclusive<u16> = 30000..=32767;

/// Where the cluster DNS Service's address sits in the service CIDR (kubeadm's convention).
const DNS_HOST_INDEX: u32 = 10;

/// The Services that may take the DNS address, best first.
const DNS_SERVICES: [(&str, &str); 2] = [("kube-system", "kube-dns"), ("kube-system", "coredns")];

/// What the allocator handed out, by Service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignments {
    /// By `namespace/name`.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceAssignment>,
    /// What could not be assigned (range exhausted, conflicting manifests). Not persisted.
    #[serde(skip)]
    pub problems: Vec<Problem>,
}

/// The values assigned to one Service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceAssignment {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_ip: Option<Ipv4Addr>,
    /// By service port, `port/PROTOCOL` (`80/TCP`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_ports: BTreeMap<String, u16>,
}

impl Assignments {
    /// The cluster IP assigned to a Service.
    pub fn cluster_ip(&self, namespace: &str, name: &str) -> Option<Ipv4Addr> {
        self.services.get(&service_key(namespace, name))?.cluster_ip
    }

    /// The node port assigned to a Service port.
    pub fn node_port(&self, namespace: &str, name: &str, port: u16, protocol: &str) -> Option<u16> {
        self.services
            .get(&service_key(namespace, name))?
            .node_ports
            .get(&port_key(port, protocol))
            .copied()
    }
}

fn service_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

fn port_key(port: u16, protocol: &str) -> String {
    format!("{port}/{protocol}")
}

/// What one Service needs from the allocator.
struct Need {
    namespace: String,
    name: String,
    cluster_ip: bool,
    /// `port/PROTOCOL` keys of the ports that need a node port.
    node_ports: Vec<String>,
}

/// Assigns cluster IPs and node ports to the Services of `snapshot` that need them, keeping
/// `previous` where it is still valid. See the module documentation for the rules.
pub fn assign(
    snapshot: &Snapshot,
    previous: &Assignments,
    service_cidr: Ipv4Net,
    node_port_range: RangeInclusive<u16>,
) -> Assignments {
    let mut out = Assignments::default();
    let mut used_ips: BTreeSet<Ipv4Addr> = BTreeSet::new();
    let mut used_ports: BTreeSet<u16> = BTreeSet::new();
    let mut needs = Vec::new();

    // Manifests first: what they write is taken before anything is handed out.
    for svc in snapshot.services.values() {
        let Some(spec) = &svc.spec.spec else { continue };
        let ty = service_type(spec);
        if ty == "ExternalName" {
            continue;
        }
        let written = spec.cluster_ip.as_deref().unwrap_or("");
        let mut need = Need {
            namespace: svc.namespace().to_string(),
            name: svc.name().to_string(),
            cluster_ip: false,
            node_ports: Vec::new(),
        };
        match written {
            "None" => continue, // headless: no address, no node ports
            "" => need.cluster_ip = true,
            ip => {
                if let Ok(ip) = ip.parse::<Ipv4Addr>()
                    && !used_ips.insert(ip)
                {
                    out.problems.push(Problem::new(
                        &need.namespace,
                        &need.name,
                        "spec.clusterIP",
                        format!("clusterIP {ip} is also written in another Service"),
                    ));
                }
            }
        }
        let wants_node_ports = ty == "NodePort"
            || (ty == "LoadBalancer" && spec.allocate_load_balancer_node_ports != Some(false));
        for p in spec.ports.iter().flatten() {
            match p.node_port.map(u16::try_from) {
                Some(Ok(n)) => {
                    used_ports.insert(n);
                }
                Some(Err(_)) => {}
                None if wants_node_ports => {
                    let proto = p.protocol.as_deref().unwrap_or("TCP");
                    if let (Ok(port), Some(_)) = (u16::try_from(p.port), protocol_number(proto)) {
                        need.node_ports.push(port_key(port, proto));
                    }
                }
                None => {}
            }
        }
        if need.cluster_ip || !need.node_ports.is_empty() {
            needs.push(need);
        }
    }

    let first = u32::from(service_cidr.network());
    let kubernetes_ip = Ipv4Addr::from(first.saturating_add(1));
    let dns_ip = Ipv4Addr::from(first.saturating_add(DNS_HOST_INDEX));
    let dns_owner = DNS_SERVICES.iter().find(|(ns, n)| {
        needs
            .iter()
            .any(|x| x.cluster_ip && x.namespace == *ns && x.name == *n)
    });
    let reserved_for = |ip: Ipv4Addr| -> Option<(&str, &str)> {
        if ip == kubernetes_ip {
            Some(("default", "kubernetes"))
        } else if ip == dns_ip {
            Some(dns_owner.copied().unwrap_or(DNS_SERVICES[0]))
        } else {
            None
        }
    };
    let usable = |ip: Ipv4Addr, need: &Need| -> bool {
        service_cidr.contains(&ip)
            && ip != service_cidr.network()
            && ip != service_cidr.broadcast()
            && reserved_for(ip).is_none_or(|(ns, n)| need.namespace == ns && need.name == n)
    };

    // Previous assignments that still hold.
    for need in &needs {
        let key = service_key(&need.namespace, &need.name);
        let Some(prev) = previous.services.get(&key) else {
            continue;
        };
        let entry = out.services.entry(key).or_default();
        if need.cluster_ip
            && let Some(ip) = prev.cluster_ip
            && usable(ip, need)
            && used_ips.insert(ip)
        {
            entry.cluster_ip = Some(ip);
        }
        for pk in &need.node_ports {
            if let Some(&n) = prev.node_ports.get(pk)
                && node_port_range.contains(&n)
                && used_ports.insert(n)
            {
                entry.node_ports.insert(pk.clone(), n);
            }
        }
    }

    // New ones. The well-known addresses go to their owners before the hash probing starts,
    // though probing never picks them anyway.
    for need in &needs {
        let key = service_key(&need.namespace, &need.name);
        let entry = out.services.entry(key.clone()).or_default();
        if need.cluster_ip && entry.cluster_ip.is_none() {
            let well_known = [kubernetes_ip, dns_ip].into_iter().find(|&ip| {
                reserved_for(ip) == Some((need.namespace.as_str(), need.name.as_str()))
            });
            let ip = match well_known {
                Some(ip) if usable(ip, need) && !used_ips.contains(&ip) => Some(ip),
                _ => probe_ip(&key, service_cidr, |ip| {
                    usable(ip, need) && !used_ips.contains(&ip)
                }),
            };
            match ip {
                Some(ip) => {
                    used_ips.insert(ip);
                    entry.cluster_ip = Some(ip);
                }
                None => out.problems.push(Problem::new(
                    &need.namespace,
                    &need.name,
                    "spec.clusterIP",
                    format!("no free address left in service CIDR {service_cidr}"),
                )),
            }
        }
        for pk in &need.node_ports {
            if entry.node_ports.contains_key(pk) {
                continue;
            }
            match probe_port(&format!("{key}/{pk}"), &node_port_range, |p| {
                !used_ports.contains(&p)
            }) {
                Some(p) => {
                    used_ports.insert(p);
                    entry.node_ports.insert(pk.clone(), p);
                }
                None => out.problems.push(Problem::new(
                    &need.namespace,
                    &need.name,
                    "spec.ports",
                    format!(
                        "no free node port left in {}-{} for port {pk}",
                        node_port_range.start(),
                        node_port_range.end()
                    ),
                )),
            }
        }
    }
    out.services
        .retain(|_, a| a.cluster_ip.is_some() || !a.node_ports.is_empty());
    out
}

/// The first address accepted by `free`, starting at a hash of `key` and wrapping around.
fn probe_ip(key: &str, cidr: Ipv4Net, free: impl Fn(Ipv4Addr) -> bool) -> Option<Ipv4Addr> {
    let first = u64::from(u32::from(cidr.network()));
    let size = 1u64 << (32 - u32::from(cidr.prefix_len()));
    let start = hash64(key.as_bytes(), 0) % size;
    (0..size)
        .map(|i| Ipv4Addr::from(u32::try_from(first + (start + i) % size).unwrap_or(0)))
        .find(|&ip| free(ip))
}

/// The first port of `range` accepted by `free`, starting at a hash of `key`.
fn probe_port(key: &str, range: &RangeInclusive<u16>, free: impl Fn(u16) -> bool) -> Option<u16> {
    if range.is_empty() {
        return None;
    }
    let first = u64::from(*range.start());
    let size = u64::from(*range.end()) - first + 1;
    let start = hash64(key.as_bytes(), 0) % size;
    (0..size)
        .filter_map(|i| u16::try_from(first + (start + i) % size).ok())
        .find(|&p| free(p))
}
