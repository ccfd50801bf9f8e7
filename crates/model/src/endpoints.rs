//! Endpoints of a Service: the addresses and ports behind one of its ports.
//!
//! One function for every component that needs them (the gateway picks upstreams from them,
//! DNS answers headless Services with them, the fabric programs backends from them), so they
//! all agree on what "the endpoints of service X port P" means:
//! EndpointSlices labelled `kubernetes.io/service-name` first (the corpus's external services
//! are written this way), else the Pods the Service selects.
//!
//! The functions look through every slice and pod of the snapshot; [`EndpointIndex`] gives the
//! same answers for callers that resolve every Service at once (the fabric), in time
//! proportional to the Service's own slices and pods.

use std::collections::HashMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Pod, ServiceSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::snapshot::{Object, Snapshot, get};

/// One endpoint of a Service port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
    /// Ready endpoints take traffic; not-ready ones are listed for DNS's publishNotReady.
    pub ready: bool,
    /// The endpoint's hostname (headless Services with `hostname`/`subdomain` pods).
    pub hostname: Option<String>,
    pub node: Option<String>,
    /// The pod behind the endpoint, when known.
    pub pod: Option<String>,
}

/// Why a Service port has no endpoints list at all.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EndpointsError {
    #[error("service {0}/{1} not found")]
    NoService(String, String),
    #[error("service {namespace}/{name} has no port {port}")]
    NoPort {
        namespace: String,
        name: String,
        port: i32,
    },
}

/// The endpoints behind port `port` of Service `namespace/name`, sorted. When the Service
/// lists the port for several protocols, the first one's.
pub fn service_endpoints(
    s: &Snapshot,
    namespace: &str,
    name: &str,
    port: i32,
) -> Result<Vec<Endpoint>, EndpointsError> {
    port_endpoints(s, namespace, name, port, None, &Scan(s))
}

/// The endpoints behind port `port`/`protocol` (`TCP`, `UDP`, `SCTP`) of Service
/// `namespace/name`, sorted: for Services such as cluster DNS that list one port number for
/// two protocols, each with its own targetPort.
pub fn service_port_endpoints(
    s: &Snapshot,
    namespace: &str,
    name: &str,
    port: i32,
    protocol: &str,
) -> Result<Vec<Endpoint>, EndpointsError> {
    port_endpoints(s, namespace, name, port, Some(protocol), &Scan(s))
}

/// The slices and pods of a snapshot by what [`service_port_endpoints`] looks them up by: slices
/// by namespace and `kubernetes.io/service-name`, pods by namespace and each label.
pub struct EndpointIndex<'a> {
    snapshot: &'a Snapshot,
    slices: HashMap<(&'a str, &'a str), Vec<&'a Object<EndpointSlice>>>,
    pods: HashMap<(&'a str, &'a str, &'a str), Vec<&'a Object<Pod>>>,
}

impl std::fmt::Debug for EndpointIndex<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointIndex")
            .field("slices", &self.slices.len())
            .field("pod_labels", &self.pods.len())
            .finish()
    }
}

impl<'a> EndpointIndex<'a> {
    pub fn new(s: &'a Snapshot) -> EndpointIndex<'a> {
        let mut slices: HashMap<_, Vec<_>> = HashMap::new();
        for es in s.endpoint_slices.values() {
            if let Some(svc) = es.meta.labels.get("kubernetes.io/service-name") {
                slices
                    .entry((es.namespace(), svc.as_str()))
                    .or_default()
                    .push(es);
            }
        }
        let mut pods: HashMap<_, Vec<_>> = HashMap::new();
        for pod in s.pods.values() {
            for (k, v) in pod.spec.metadata.labels.iter().flatten() {
                pods.entry((pod.namespace(), k.as_str(), v.as_str()))
                    .or_default()
                    .push(pod);
            }
        }
        EndpointIndex {
            snapshot: s,
            slices,
            pods,
        }
    }

    /// The same as [`service_port_endpoints`] on the indexed snapshot.
    pub fn service_port_endpoints(
        &self,
        namespace: &str,
        name: &str,
        port: i32,
        protocol: &str,
    ) -> Result<Vec<Endpoint>, EndpointsError> {
        port_endpoints(self.snapshot, namespace, name, port, Some(protocol), self)
    }
}

/// Where [`port_endpoints`] finds a Service's slices and candidate pods.
trait Candidates {
    /// The slices labelled with the Service's name, in the snapshot's order.
    fn slices<'s>(&'s self, namespace: &str, name: &str) -> Vec<&'s Object<EndpointSlice>>;
    /// At least every pod of `namespace` the non-empty `selector` selects, in the snapshot's
    /// order; the caller checks the selector.
    fn pods<'s>(
        &'s self,
        namespace: &str,
        selector: &std::collections::BTreeMap<String, String>,
    ) -> Vec<&'s Object<Pod>>;
}

/// Candidates by looking through the whole snapshot.
struct Scan<'a>(&'a Snapshot);

impl Candidates for Scan<'_> {
    fn slices<'s>(&'s self, namespace: &str, name: &str) -> Vec<&'s Object<EndpointSlice>> {
        self.0
            .endpoint_slices
            .values()
            .filter(|es| {
                es.namespace() == namespace
                    && es
                        .meta
                        .labels
                        .get("kubernetes.io/service-name")
                        .map(String::as_str)
                        == Some(name)
            })
            .collect()
    }

    fn pods<'s>(
        &'s self,
        namespace: &str,
        _selector: &std::collections::BTreeMap<String, String>,
    ) -> Vec<&'s Object<Pod>> {
        self.0
            .pods
            .values()
            .filter(|p| p.namespace() == namespace)
            .collect()
    }
}

impl Candidates for EndpointIndex<'_> {
    fn slices<'s>(&'s self, namespace: &str, name: &str) -> Vec<&'s Object<EndpointSlice>> {
        self.slices
            .get(&(namespace, name))
            .cloned()
            .unwrap_or_default()
    }

    fn pods<'s>(
        &'s self,
        namespace: &str,
        selector: &std::collections::BTreeMap<String, String>,
    ) -> Vec<&'s Object<Pod>> {
        // Every selected pod carries the selector's first label.
        selector
            .iter()
            .next()
            .and_then(|(k, v)| self.pods.get(&(namespace, k.as_str(), v.as_str())))
            .cloned()
            .unwrap_or_default()
    }
}

fn port_endpoints(
    s: &Snapshot,
    namespace: &str,
    name: &str,
    port: i32,
    protocol: Option<&str>,
    candidates: &dyn Candidates,
) -> Result<Vec<Endpoint>, EndpointsError> {
    let svc = get(&s.services, namespace, name)
        .ok_or_else(|| EndpointsError::NoService(namespace.into(), name.into()))?;
    let no_spec = ServiceSpec::default();
    let spec = svc.spec.spec.as_ref().unwrap_or(&no_spec);
    let sp = spec
        .ports
        .iter()
        .flatten()
        .find(|p| {
            p.port == port
                && protocol.is_none_or(|want| p.protocol.as_deref().unwrap_or("TCP") == want)
        })
        .ok_or_else(|| EndpointsError::NoPort {
            namespace: namespace.into(),
            name: name.into(),
            port,
        })?;
    let port_name = sp.name.as_deref().unwrap_or_default();
    let protocol = sp.protocol.as_deref().unwrap_or("TCP");

    let slices = candidates.slices(namespace, name);
    let mut out = Vec::new();
    if !slices.is_empty() {
        for es in slices {
            let slice_ports = es.spec.ports.as_deref().unwrap_or_default();
            // The slice port for this service port: same name (both may be empty), same protocol.
            let target = slice_ports
                .iter()
                .find(|p| {
                    p.name.as_deref().unwrap_or_default() == port_name
                        && p.protocol.as_deref().unwrap_or("TCP") == protocol
                })
                .or_else(|| {
                    if slice_ports.len() == 1 {
                        slice_ports.first()
                    } else {
                        None
                    }
                })
                .and_then(|p| p.port);
            let Some(target) = target.and_then(|p| u16::try_from(p).ok()) else {
                continue;
            };
            for e in es.spec.endpoints.iter().flatten() {
                let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                for a in &e.addresses {
                    if let Ok(ip) = a.parse::<IpAddr>() {
                        out.push(Endpoint {
                            ip,
                            port: target,
                            ready,
                            hostname: e.hostname.clone(),
                            node: e.node_name.clone(),
                            pod: e.target_ref.as_ref().and_then(|t| t.name.clone()),
                        });
                    }
                }
            }
        }
    } else if let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) {
        for pod in candidates.pods(namespace, selector) {
            let labels = pod.spec.metadata.labels.as_ref();
            if !selector
                .iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
            {
                continue;
            }
            let Some(ip) = pod_ip(pod) else { continue };
            let target = target_port(sp.target_port.as_ref(), pod, sp.port);
            let ready = pod
                .spec
                .status
                .as_ref()
                .and_then(|st| st.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
                .is_none_or(|c| c.status == "True");
            if let Some(port) = target {
                out.push(Endpoint {
                    ip,
                    port,
                    ready,
                    hostname: pod.spec.spec.as_ref().and_then(|p| p.hostname.clone()),
                    node: pod.spec.spec.as_ref().and_then(|p| p.node_name.clone()),
                    pod: Some(pod.name().to_string()),
                });
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// A pod's address, from its status.
pub fn pod_ip(pod: &crate::snapshot::Object<k8s_openapi::api::core::v1::Pod>) -> Option<IpAddr> {
    pod.spec.status.as_ref()?.pod_ip.as_ref()?.parse().ok()
}

/// A Service's targetPort on one pod: a number, or a container port name.
fn target_port(
    tp: Option<&k8s_openapi::apimachinery::pkg::util::intstr::IntOrString>,
    pod: &crate::snapshot::Object<k8s_openapi::api::core::v1::Pod>,
    port: i32,
) -> Option<u16> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    match tp {
        None => u16::try_from(port).ok(),
        Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
        Some(IntOrString::String(name)) => pod
            .spec
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::snapshot::RawObject;
    use crate::yaml::{PosIndex, parse_documents};

    fn snapshot(text: &str) -> Snapshot {
        let raws = parse_documents(text)
            .expect("fixture parses")
            .into_iter()
            .map(|d| {
                let mut index = PosIndex::default();
                let value = d.to_json(&mut index);
                RawObject {
                    value,
                    source: crate::Source {
                        file: Arc::new("fixture.yaml".into()),
                        pos: d.pos,
                        index: Arc::new(index),
                    },
                    default_namespace: Some("a".into()),
                }
            })
            .collect();
        Snapshot::build(raws, Vec::new())
    }

    /// The index answers exactly what looking through the whole snapshot answers.
    #[test]
    fn the_index_agrees_with_the_scan() {
        let s = snapshot(
            "
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web, tier: front}
  ports: [{name: http, port: 80, targetPort: http}, {name: dns, port: 80, protocol: UDP, targetPort: 5353}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: b}
spec: {selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: ext}
spec: {ports: [{name: https, port: 443}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ext-1, labels: {kubernetes.io/service-name: ext}}
addressType: IPv4
ports: [{name: https, port: 8443}]
endpoints: [{addresses: [192.0.2.1], conditions: {ready: false}}, {addresses: [192.0.2.2]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ext-2, labels: {kubernetes.io/service-name: ext}}
addressType: IPv4
ports: [{name: https, port: 8443}]
endpoints: [{addresses: [192.0.2.3], nodeName: n1}]
---
apiVersion: v1
kind: Pod
metadata: {name: p1, labels: {app: web, tier: front}}
spec: {nodeName: n1, containers: [{name: c, image: x, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.69.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: p2, labels: {app: web}}
spec: {containers: [{name: c, image: x}]}
status: {podIP: 10.69.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: p3, namespace: b, labels: {app: web, tier: front}}
spec: {containers: [{name: c, image: x}]}
status: {podIP: 10.69.2.3, conditions: [{type: Ready, status: 'False'}]}
",
        );
        let index = EndpointIndex::new(&s);
        let mut seen = 0;
        for ((ns, name), (port, protocol)) in [
            (("a", "web"), (80, "TCP")),
            (("a", "web"), (80, "UDP")),
            (("b", "web"), (80, "TCP")),
            (("a", "ext"), (443, "TCP")),
            (("a", "ext"), (443, "UDP")),
            (("a", "gone"), (80, "TCP")),
        ] {
            let scanned = service_port_endpoints(&s, ns, name, port, protocol);
            assert_eq!(
                index.service_port_endpoints(ns, name, port, protocol),
                scanned,
                "{ns}/{name} {port}/{protocol}"
            );
            seen += scanned.map(|e| e.len()).unwrap_or(0);
        }
        assert_eq!(seen, 1 + 1 + 1 + 3, "the fixture exercises every path");
        let web = service_port_endpoints(&s, "a", "web", 80, "UDP").expect("port");
        assert_eq!((web[0].pod.as_deref(), web[0].port), (Some("p1"), 5353));
    }
}
