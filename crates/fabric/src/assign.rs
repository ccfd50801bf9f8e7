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
//!
//! LoadBalancer addresses come from [`crate::lbipam`] in the same call and are stored here
//! too (`load_balancer_ips`), with LB-IPAM's condition per Service (stored as well, so that an
//! agent that only reads the file can say why a Service has no address).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use ipnet::Ipv4Net;
use model::Snapshot;
use serde::{Deserialize, Serialize};

use crate::lbipam::RequestCondition;
use crate::maglev::hash64;
use crate::plan::{Problem, protocol_number, service_type};

/// The node port range the API server uses by default (`--service-node-port-range`).
pub const NODE_PORT_RANGE_DEFAULT: RangeInclusive<u16> = 30000..=32767;

/// The service CIDR kubeadm gives a cluster (`--service-cidr`), the agents' default.
pub const SERVICE_CIDR_DEFAULT: &str = "10.96.0.0/12";

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
    /// LB-IPAM's verdict (Cilium's `cilium.io/IPAMRequestSatisfied` condition) on every
    /// Service it is responsible for, by `namespace/name`. Recomputed by every [`assign`];
    /// persisted for readers that do not run it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub load_balancer_conditions: BTreeMap<String, RequestCondition>,
}

/// The values assigned to one Service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceAssignment {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_ip: Option<Ipv4Addr>,
    /// By service port, `port/PROTOCOL` (`80/TCP`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_ports: BTreeMap<String, u16>,
    /// LoadBalancer addresses from LB-IPAM ([`crate::lbipam`]), sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub load_balancer_ips: Vec<Ipv4Addr>,
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

    /// The LoadBalancer addresses LB-IPAM assigned to a Service (empty when none).
    pub fn load_balancer_ips(&self, namespace: &str, name: &str) -> &[Ipv4Addr] {
        self.services
            .get(&service_key(namespace, name))
            .map_or(&[], |s| s.load_balancer_ips.as_slice())
    }

    /// LB-IPAM's condition on a Service, when LB-IPAM is responsible for it.
    pub fn load_balancer_condition(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<&RequestCondition> {
        self.load_balancer_conditions
            .get(&service_key(namespace, name))
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
    let lb = crate::lbipam::allocate_snapshot(snapshot, previous);
    for (key, ips) in lb.ips {
        out.services.entry(key).or_default().load_balancer_ips = ips;
    }
    out.load_balancer_conditions = lb.conditions;
    out.problems.extend(lb.problems);
    out.services.retain(|_, a| {
        a.cluster_ip.is_some() || !a.node_ports.is_empty() || !a.load_balancer_ips.is_empty()
    });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{FabricConfig, compile};
    use crate::testing::snapshot;

    fn cidr() -> Ipv4Net {
        "10.96.0.0/12".parse().expect("cidr")
    }

    fn svc(ns: &str, name: &str, spec: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n---\n"
        )
    }

    fn fixture() -> String {
        [
            svc("default", "kubernetes", "{ports: [{port: 443}]}"),
            svc(
                "kube-system",
                "kube-dns",
                "{ports: [{port: 53, protocol: UDP}, {port: 53}]}",
            ),
            svc("apps", "web", "{ports: [{port: 80}]}"),
            svc(
                "apps",
                "fixed",
                "{clusterIP: 10.96.0.50, ports: [{port: 80}]}",
            ),
            svc(
                "apps",
                "np",
                "{type: NodePort, ports: [{port: 80}, {port: 81, nodePort: 30081}]}",
            ),
            svc(
                "apps",
                "lb",
                "{type: LoadBalancer, allocateLoadBalancerNodePorts: false, ports: [{port: 80}]}",
            ),
            svc("apps", "headless", "{clusterIP: None, ports: [{port: 80}]}"),
            svc(
                "apps",
                "ext",
                "{type: ExternalName, externalName: example.org}",
            ),
        ]
        .concat()
    }

    fn assigned(text: &str, previous: &Assignments) -> Assignments {
        assign(&snapshot(text), previous, cidr(), NODE_PORT_RANGE_DEFAULT)
    }

    #[test]
    fn well_known_addresses_go_to_their_owners_and_the_rest_is_unique() {
        let a = assigned(&fixture(), &Assignments::default());
        assert!(a.problems.is_empty(), "{:?}", a.problems);
        assert_eq!(
            a.cluster_ip("default", "kubernetes"),
            Some(Ipv4Addr::new(10, 96, 0, 1))
        );
        assert_eq!(
            a.cluster_ip("kube-system", "kube-dns"),
            Some(Ipv4Addr::new(10, 96, 0, 10))
        );
        assert_eq!(
            a.cluster_ip("apps", "fixed"),
            None,
            "written in the manifest"
        );
        assert_eq!(a.cluster_ip("apps", "headless"), None);
        assert_eq!(a.cluster_ip("apps", "ext"), None);
        let ips: Vec<Ipv4Addr> = a.services.values().filter_map(|s| s.cluster_ip).collect();
        assert_eq!(ips.len(), 5, "kubernetes, kube-dns, web, np, lb: {a:?}");
        let unique: BTreeSet<_> = ips.iter().collect();
        assert_eq!(unique.len(), ips.len());
        assert!(ips.iter().all(|ip| cidr().contains(ip)));
        assert!(!ips.contains(&Ipv4Addr::new(10, 96, 0, 50)));

        let np = a.node_port("apps", "np", 80, "TCP").expect("assigned");
        assert!(NODE_PORT_RANGE_DEFAULT.contains(&np) && np != 30081);
        assert_eq!(
            a.node_port("apps", "np", 81, "TCP"),
            None,
            "written in the manifest"
        );
        assert_eq!(
            a.node_port("apps", "lb", 80, "TCP"),
            None,
            "allocateLoadBalancerNodePorts"
        );
    }

    #[test]
    fn assignments_are_stable_across_calls_and_persist() {
        let a = assigned(&fixture(), &Assignments::default());
        assert_eq!(assigned(&fixture(), &a), a);
        // The same manifests without the previous state give the same values too.
        assert_eq!(assigned(&fixture(), &Assignments::default()), a);

        let json = serde_json::to_string(&a).expect("serializes");
        let back: Assignments = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back, a);
        assert!(json.contains(r#""apps/np":{"cluster_ip":"#), "{json}");
        assert!(json.contains(r#""node_ports":{"80/TCP":"#), "{json}");
    }

    #[test]
    fn previous_assignments_are_kept_and_manifests_win() {
        let a = assigned(&fixture(), &Assignments::default());
        let web = a.cluster_ip("apps", "web").expect("assigned");
        let np = a.node_port("apps", "np", 80, "TCP").expect("assigned");

        // A previous state that differs from what hashing would pick is kept as it is.
        let mut previous = a.clone();
        let moved = Ipv4Addr::new(10, 96, 7, 7);
        previous
            .services
            .get_mut("apps/web")
            .expect("web")
            .cluster_ip = Some(moved);
        assert_eq!(
            assigned(&fixture(), &previous).cluster_ip("apps", "web"),
            Some(moved)
        );

        // A new Service whose manifest writes web's address and np's node port takes them;
        // web and np get new values, and nothing is handed out twice.
        let text = fixture()
            + &svc(
                "apps",
                "claims",
                &format!(
                    "{{type: NodePort, clusterIP: {web}, ports: [{{port: 80, nodePort: {np}}}]}}"
                ),
            );
        let b = assigned(&text, &a);
        assert!(b.problems.is_empty(), "{:?}", b.problems);
        let web2 = b.cluster_ip("apps", "web").expect("reassigned");
        assert_ne!(web2, web);
        assert_ne!(b.node_port("apps", "np", 80, "TCP"), Some(np));
        assert_eq!(b.cluster_ip("apps", "np"), a.cluster_ip("apps", "np"));

        // A Service that goes away frees its values.
        let c = assigned(&svc("apps", "web", "{ports: [{port: 80}]}"), &b);
        assert_eq!(c.services.keys().collect::<Vec<_>>(), ["apps/web"]);
    }

    #[test]
    fn previous_values_outside_the_range_or_reserved_are_replaced() {
        let mut previous = Assignments::default();
        previous.services.insert(
            "apps/web".into(),
            ServiceAssignment {
                cluster_ip: Some(Ipv4Addr::new(10, 96, 0, 10)),
                ..ServiceAssignment::default()
            },
        );
        previous.services.insert(
            "apps/np".into(),
            ServiceAssignment {
                cluster_ip: Some(Ipv4Addr::new(192, 168, 0, 1)),
                node_ports: [("80/TCP".to_string(), 8080)].into(),
                ..ServiceAssignment::default()
            },
        );
        let a = assigned(&fixture(), &previous);
        assert_ne!(
            a.cluster_ip("apps", "web"),
            Some(Ipv4Addr::new(10, 96, 0, 10))
        );
        assert_eq!(
            a.cluster_ip("kube-system", "kube-dns"),
            Some(Ipv4Addr::new(10, 96, 0, 10))
        );
        assert!(cidr().contains(&a.cluster_ip("apps", "np").expect("assigned")));
        assert_ne!(a.node_port("apps", "np", 80, "TCP"), Some(8080));
    }

    #[test]
    fn an_exhausted_range_is_a_problem_not_a_panic() {
        let text = [
            svc("apps", "a", "{type: NodePort, ports: [{port: 80}]}"),
            svc("apps", "b", "{type: NodePort, ports: [{port: 80}]}"),
            svc("apps", "c", "{type: NodePort, ports: [{port: 80}]}"),
        ]
        .concat();
        // A /30 leaves one address: not the network, not .1 (kubernetes), not the broadcast.
        // Two node ports for three Services.
        let a = assign(
            &snapshot(&text),
            &Assignments::default(),
            "10.96.0.0/30".parse().expect("cidr"),
            30000..=30001,
        );
        let ips = a
            .services
            .values()
            .filter(|s| s.cluster_ip.is_some())
            .count();
        let ports = a
            .services
            .values()
            .map(|s| s.node_ports.len())
            .sum::<usize>();
        assert_eq!((ips, ports), (1, 2));
        assert_eq!(a.problems.len(), 3, "{:?}", a.problems);
    }

    #[test]
    fn compile_uses_the_assignments() {
        let s = snapshot(&fixture());
        let a = assign(&s, &Assignments::default(), cidr(), NODE_PORT_RANGE_DEFAULT);
        let cfg = FabricConfig::new(
            "n1",
            [("n1".to_string(), Ipv4Addr::new(10, 10, 30, 11))].into(),
        );
        let without = compile(&s, &cfg, None);
        let with = compile(&s, &cfg, Some(&a));
        // Without assignments only what the manifests write: apps/fixed and np's port 81.
        assert_eq!(without.frontends.len(), 2, "{without}");
        let web = a.cluster_ip("apps", "web").expect("assigned");
        let np = a.node_port("apps", "np", 80, "TCP").expect("assigned");
        let text = with.to_string();
        assert!(
            text.contains(&format!("{web}:80/TCP ClusterIP apps/web ")),
            "{text}"
        );
        assert!(
            text.contains(&format!("10.10.30.11:{np}/TCP NodePort@n1 apps/np ")),
            "{text}"
        );
        assert!(
            text.contains("10.10.30.11:30081/TCP NodePort@n1 apps/np "),
            "{text}"
        );
        assert!(
            text.contains("10.96.0.10:53/UDP ClusterIP kube-system/kube-dns "),
            "{text}"
        );
        // The LB has no address yet; the kubernetes Service has no endpoints. Nothing else
        // is reported.
        assert_eq!(with.problems.len(), 1, "{:?}", with.problems);
    }
}
