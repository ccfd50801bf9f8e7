//! Who an address is: the pod behind an IP (namespace, name, labels, owning workload) from
//! the current snapshot, else `reserved:host` (loopback) or `reserved:world`, as Hubble
//! labels endpoints. Every producer (gateway, DNS, the datapath's reader) names endpoints
//! through this one table, so the same pod reads the same in every flow.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::proto::flow::{Endpoint, Workload};

/// A pod as flows show it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct PodInfo {
    namespace: String,
    name: String,
    labels: Vec<String>,
    workloads: Vec<Workload>,
}

/// Pods by IP; [`Endpoints::update`] swaps in a new table on reload, readers never wait.
#[derive(Debug, Default)]
pub struct Endpoints(ArcSwap<HashMap<IpAddr, PodInfo>>);

impl Endpoints {
    /// Rebuilds the table from the pods of a snapshot (those with a `status.podIP`).
    pub fn update(&self, s: &model::Snapshot) {
        let mut by_ip = HashMap::new();
        for pod in s.pods.values() {
            let Some(ip) = model::endpoints::pod_ip(pod) else {
                continue;
            };
            let workloads = pod
                .spec
                .metadata
                .owner_references
                .iter()
                .flatten()
                .map(|o| Workload {
                    name: o.name.clone(),
                    kind: o.kind.clone(),
                })
                .collect();
            by_ip.insert(
                ip,
                PodInfo {
                    namespace: pod.meta.namespace.clone().unwrap_or_default(),
                    name: pod.meta.name.clone(),
                    // Cilium's source prefix; filters without one ignore it.
                    labels: pod
                        .meta
                        .labels
                        .iter()
                        .map(|(k, v)| format!("k8s:{k}={v}"))
                        .collect(),
                    workloads,
                },
            );
        }
        self.0.store(Arc::new(by_ip));
    }

    /// The endpoint of an address: its pod, else the host (loopback) or the world.
    pub fn endpoint(&self, ip: IpAddr) -> Endpoint {
        match self.0.load().get(&ip) {
            Some(p) => Endpoint {
                namespace: p.namespace.clone(),
                pod_name: p.name.clone(),
                labels: p.labels.clone(),
                workloads: p.workloads.clone(),
                ..Default::default()
            },
            None if ip.is_loopback() => Endpoint {
                labels: vec!["reserved:host".into()],
                ..Default::default()
            },
            None => Endpoint {
                labels: vec!["reserved:world".into()],
                ..Default::default()
            },
        }
    }
}
