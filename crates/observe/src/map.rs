//! The service map: who talks to whom, aggregated from flows. Nodes are workloads (a pod's
//! owner, else the pod), Services (`destination_service`) and Hubble's reserved identities
//! (`world`, `host`, ...); an edge is a source, a target and a verdict, with the number of
//! flows. A flow to a Service makes two edges: client -> Service, and Service -> the
//! workload that answered (when a workload answered; a reserved endpoint behind a Service
//! adds nothing the Service does not already say).
//!
//! Pure: the UI hands it the flows of the buffer that pass its filters.

use std::collections::BTreeMap;

use crate::proto::flow::{Endpoint, Flow, Verdict};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum NodeKind {
    /// `reserved:world`, `reserved:host` and the other reserved identities.
    Reserved,
    Service,
    Workload,
}

impl NodeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeKind::Reserved => "reserved",
            NodeKind::Service => "service",
            NodeKind::Workload => "workload",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub kind: NodeKind,
    /// What the page shows: `apps/web`, `world`.
    pub label: String,
}

/// One edge: flows from `source` to `target` with one verdict.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct EdgeKey {
    pub source: String,
    pub target: String,
    pub verdict: String,
}

/// Nodes by id (`world`, `service:apps/web`, `workload:apps/web`) and flows per edge.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceMap {
    pub nodes: BTreeMap<String, Node>,
    pub edges: BTreeMap<EdgeKey, u64>,
    /// Flows aggregated.
    pub flows: u64,
}

/// The node of an endpoint: its workload, else its pod, else its reserved identity; an
/// endpoint with nothing known is the world, as Hubble names addresses outside the cluster.
fn endpoint_node(ep: Option<&Endpoint>) -> (String, Node) {
    let Some(ep) = ep else {
        return reserved("world");
    };
    let workload = ep
        .workloads
        .first()
        .map(|w| w.name.as_str())
        .filter(|n| !n.is_empty())
        .unwrap_or(&ep.pod_name);
    if !workload.is_empty() {
        let label = format!("{}/{workload}", ep.namespace);
        return (
            format!("workload:{label}"),
            Node {
                kind: NodeKind::Workload,
                label,
            },
        );
    }
    match ep.labels.iter().find_map(|l| l.strip_prefix("reserved:")) {
        Some(r) => reserved(r),
        None => reserved("world"),
    }
}

fn reserved(name: &str) -> (String, Node) {
    (
        name.to_string(),
        Node {
            kind: NodeKind::Reserved,
            label: name.to_string(),
        },
    )
}

impl ServiceMap {
    pub fn add(&mut self, f: &Flow) {
        let verdict = Verdict::try_from(f.verdict).map_or("UNKNOWN", |v| v.as_str_name());
        let (src, src_node) = endpoint_node(f.source.as_ref());
        let (dst, dst_node) = endpoint_node(f.destination.as_ref());
        self.nodes.insert(src.clone(), src_node);
        let mut edge = |source: &str, target: &str| {
            *self
                .edges
                .entry(EdgeKey {
                    source: source.to_string(),
                    target: target.to_string(),
                    verdict: verdict.to_string(),
                })
                .or_insert(0) += 1;
        };
        match &f.destination_service {
            Some(s) if !s.name.is_empty() => {
                let label = format!("{}/{}", s.namespace, s.name);
                let id = format!("service:{label}");
                edge(&src, &id);
                if dst_node.kind == NodeKind::Workload {
                    edge(&id, &dst);
                    self.nodes.insert(dst, dst_node);
                }
                self.nodes.insert(
                    id,
                    Node {
                        kind: NodeKind::Service,
                        label,
                    },
                );
            }
            _ => {
                edge(&src, &dst);
                self.nodes.insert(dst, dst_node);
            }
        }
        self.flows += 1;
    }

    /// `{"flows": n, "nodes": [{"id", "kind", "label"}], "edges": [{"source", "target",
    /// "verdict", "flows"}]}`, both sorted by id.
    pub fn to_json(&self) -> serde_json::Value {
        let nodes: Vec<serde_json::Value> = self
            .nodes
            .iter()
            .map(|(id, n)| serde_json::json!({"id": id, "kind": n.kind.as_str(), "label": n.label}))
            .collect();
        let edges: Vec<serde_json::Value> = self
            .edges
            .iter()
            .map(|(k, n)| {
                serde_json::json!({
                    "source": k.source, "target": k.target, "verdict": k.verdict, "flows": n
                })
            })
            .collect();
        serde_json::json!({"flows": self.flows, "nodes": nodes, "edges": edges})
    }
}

impl<'a> FromIterator<&'a Flow> for ServiceMap {
    fn from_iter<I: IntoIterator<Item = &'a Flow>>(flows: I) -> Self {
        let mut m = ServiceMap::default();
        for f in flows {
            m.add(f);
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::flow::{Service, Workload};

    fn reserved_ep(r: &str) -> Option<Endpoint> {
        Some(Endpoint {
            labels: vec![format!("reserved:{r}")],
            ..Default::default()
        })
    }

    fn pod(ns: &str, name: &str, owner: Option<&str>) -> Option<Endpoint> {
        Some(Endpoint {
            namespace: ns.into(),
            pod_name: name.into(),
            labels: vec!["k8s:app=x".into()],
            workloads: owner
                .map(|o| Workload {
                    name: o.into(),
                    kind: "ReplicaSet".into(),
                })
                .into_iter()
                .collect(),
            ..Default::default()
        })
    }

    fn flow(
        src: Option<Endpoint>,
        dst: Option<Endpoint>,
        service: Option<(&str, &str)>,
        verdict: Verdict,
    ) -> Flow {
        Flow {
            source: src,
            destination: dst,
            destination_service: service.map(|(ns, name)| Service {
                namespace: ns.into(),
                name: name.into(),
            }),
            verdict: verdict as i32,
            ..Default::default()
        }
    }

    fn edges(m: &ServiceMap) -> Vec<String> {
        m.edges
            .iter()
            .map(|(k, n)| format!("{} -> {} {} {n}", k.source, k.target, k.verdict))
            .collect()
    }

    #[test]
    fn flows_become_nodes_and_edges_counted_per_verdict() {
        let web = || pod("apps", "web-5d8f-abcde", Some("web-5d8f"));
        let through_web =
            |verdict| flow(reserved_ep("world"), web(), Some(("apps", "web")), verdict);
        let flows = [
            // Three requests from the world through Service apps/web to its pod, and one
            // dropped on the way.
            through_web(Verdict::Forwarded),
            through_web(Verdict::Forwarded),
            through_web(Verdict::Forwarded),
            through_web(Verdict::Dropped),
            // The gateway's answer without a route: host to host, no Service.
            flow(
                reserved_ep("host"),
                reserved_ep("host"),
                None,
                Verdict::Forwarded,
            ),
            // Through a Service to an endpoint that is no pod: one edge, to the Service.
            flow(
                reserved_ep("host"),
                reserved_ep("host"),
                Some(("apps", "db")),
                Verdict::Forwarded,
            ),
            // Pod to pod without a Service (a pod without owner is its own workload).
            flow(pod("apps", "client", None), web(), None, Verdict::Error),
            // A flow with no endpoints at all is the world talking to the world.
            flow(None, None, None, Verdict::Dropped),
        ];
        let m: ServiceMap = flows.iter().collect();
        assert_eq!(m.flows, 8);
        assert_eq!(
            edges(&m),
            [
                "host -> host FORWARDED 1",
                "host -> service:apps/db FORWARDED 1",
                "service:apps/web -> workload:apps/web-5d8f DROPPED 1",
                "service:apps/web -> workload:apps/web-5d8f FORWARDED 3",
                "workload:apps/client -> workload:apps/web-5d8f ERROR 1",
                "world -> service:apps/web DROPPED 1",
                "world -> service:apps/web FORWARDED 3",
                "world -> world DROPPED 1",
            ]
        );
        let nodes: Vec<(&str, &str, &str)> = m
            .nodes
            .iter()
            .map(|(id, n)| (id.as_str(), n.kind.as_str(), n.label.as_str()))
            .collect();
        assert_eq!(
            nodes,
            [
                ("host", "reserved", "host"),
                ("service:apps/db", "service", "apps/db"),
                ("service:apps/web", "service", "apps/web"),
                ("workload:apps/client", "workload", "apps/client"),
                ("workload:apps/web-5d8f", "workload", "apps/web-5d8f"),
                ("world", "reserved", "world"),
            ]
        );
        let json = m.to_json();
        assert_eq!(json["flows"], 8);
        assert_eq!(json["edges"][6]["source"], "world");
        assert_eq!(json["edges"][6]["target"], "service:apps/web");
        assert_eq!(json["edges"][6]["flows"], 3);
        assert_eq!(json["nodes"][5]["kind"], "reserved");
    }
}
