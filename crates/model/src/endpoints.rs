//! Endpoints of a Service: the addresses and ports behind one of its ports.
//!
//! One function for every component that needs them (the gateway picks upstreams from them,
//! DNS answers headless Services with them, the fabric programs backends from them), so they
//! all agree on what "the endpoints of service X port P" means:
//! EndpointSlices labelled `kubernetes.io/service-name` first (the corpus's external services
//! are written this way), else the Pods the Service selects.

use std::net::IpAddr;

use crate::snapshot::{Snapshot, get};

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
    port_endpoints(s, namespace, name, port, None)
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
    port_endpoints(s, namespace, name, port, Some(protocol))
}

fn port_endpoints(
    s: &Snapshot,
    namespace: &str,
    name: &str,
    port: i32,
    protocol: Option<&str>,
) -> Result<Vec<Endpoint>, EndpointsError> {
    let svc = get(&s.services, namespace, name)
        .ok_or_else(|| EndpointsError::NoService(namespace.into(), name.into()))?;
    let spec = svc.spec.spec.clone().unwrap_or_default();
    let ports = spec.ports.unwrap_or_default();
    let sp = ports
        .iter()
        .find(|p| {
            p.port == port
                && protocol.is_none_or(|want| p.protocol.as_deref().unwrap_or("TCP") == want)
        })
        .ok_or_else(|| EndpointsError::NoPort {
            namespace: namespace.into(),
            name: name.into(),
            port,
        })?;
    let port_name = sp.name.clone().unwrap_or_default();
    let protocol = sp.protocol.clone().unwrap_or_else(|| "TCP".into());

    let slices: Vec<_> = s
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
        .collect();
    let mut out = Vec::new();
    if !slices.is_empty() {
        for es in slices {
            let slice_ports = es.spec.ports.clone().unwrap_or_default();
            // The slice port for this service port: same name (both may be empty), same protocol.
            let target = slice_ports
                .iter()
                .find(|p| {
                    p.name.clone().unwrap_or_default() == port_name
                        && p.protocol.clone().unwrap_or_else(|| "TCP".into()) == protocol
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
    } else if let Some(selector) = spec.selector.filter(|s| !s.is_empty()) {
        for pod in s.pods.values().filter(|p| p.namespace() == namespace) {
            let labels = pod.spec.metadata.labels.clone().unwrap_or_default();
            if !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
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
