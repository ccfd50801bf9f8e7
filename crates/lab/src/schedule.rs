//! Which pods the lab runs and where: Deployments expanded into pods, spread over the nodes.
//!
//! Pure and deterministic: the same manifests and the same running pods give the same answer,
//! so a hot reload that scales a Deployment from 2 to 3 adds exactly one pod and moves none.

use std::collections::{BTreeMap, BTreeSet};

use model::Snapshot;
use serde::{Deserialize, Serialize};

/// Upper bound on pods per lab (a typo'd `replicas: 1000` must not fork a thousand namespaces).
pub const PODS_MAX: usize = 64;

/// A pod the lab should run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodPlan {
    pub namespace: String,
    pub name: String,
    /// `Deployment/<name>` or `Pod`.
    pub owner: String,
    /// Index within the owning Deployment (scale-down removes the highest first).
    pub ordinal: u32,
    pub node: String,
    pub labels: BTreeMap<String, String>,
    /// The pod's annotations (its template's): `k8s.v1.cni.cncf.io/networks` is acted on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The pod's spec from its template (containers, ports), as JSON.
    pub spec: serde_json::Value,
}

impl PodPlan {
    /// Every (name, port, protocol) the pod's containers declare; 8080/TCP when none.
    pub fn ports(&self) -> Vec<(String, u16, String)> {
        let mut out = Vec::new();
        for c in self.spec["containers"].as_array().into_iter().flatten() {
            for p in c["ports"].as_array().into_iter().flatten() {
                if let Some(port) = p["containerPort"]
                    .as_u64()
                    .and_then(|n| u16::try_from(n).ok())
                {
                    out.push((
                        p["name"].as_str().unwrap_or_default().to_string(),
                        port,
                        p["protocol"].as_str().unwrap_or("TCP").to_string(),
                    ));
                }
            }
        }
        if out.is_empty() {
            out.push((String::new(), 8080, "TCP".into()));
        }
        out
    }

    pub fn key(&self) -> (String, String) {
        (self.namespace.clone(), self.name.clone())
    }
}

/// A short stable suffix for pod names, like a ReplicaSet's random one but reproducible.
fn suffix(namespace: &str, deployment: &str, ordinal: u32) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("{namespace}/{deployment}/{ordinal}").bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|i| ALPHABET[((h >> (i * 8)) % ALPHABET.len() as u64) as usize] as char)
        .collect()
}

/// The pods the manifests ask for, keeping every running pod that is still wanted on its node.
/// New pods go to the node with the fewest pods (ties: the first node).
/// `extra` are pods the lab itself adds (the gateways' proxies), placed like the rest.
/// Replica counts a scaler set, by (namespace, Deployment name); they win over the
/// Deployment's own `spec.replicas` (a Gateway's name stands for its proxy's Deployment).
pub type Replicas = BTreeMap<(String, String), u32>;

/// A Deployment's own replica count (1 unless written).
pub fn spec_replicas(spec: &k8s_openapi::api::apps::v1::DeploymentSpec) -> u32 {
    u32::try_from(spec.replicas.unwrap_or(1).max(0)).unwrap_or(0)
}

pub fn desired_pods(
    snapshot: &Snapshot,
    extra: Vec<PodPlan>,
    nodes: &[String],
    running: &[PodPlan],
    scaled: &Replicas,
) -> Vec<PodPlan> {
    let mut wanted: Vec<PodPlan> = extra;
    for d in snapshot.deployments.values() {
        let spec = d.spec.spec.clone().unwrap_or_default();
        let replicas = scaled
            .get(&(d.namespace().to_string(), d.name().to_string()))
            .copied()
            .unwrap_or_else(|| spec_replicas(&spec));
        let template = spec.template;
        let labels: BTreeMap<String, String> = template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        let annotations: BTreeMap<String, String> = template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.clone())
            .unwrap_or_default();
        let pod_spec = template
            .spec
            .as_ref()
            .and_then(|s| serde_json::to_value(s).ok())
            .unwrap_or_default();
        for ordinal in 0..replicas {
            wanted.push(PodPlan {
                namespace: d.namespace().to_string(),
                name: format!("{}-{}", d.name(), suffix(d.namespace(), d.name(), ordinal)),
                owner: format!("Deployment/{}", d.name()),
                ordinal,
                node: String::new(),
                labels: labels.clone(),
                annotations: annotations.clone(),
                spec: pod_spec.clone(),
            });
        }
    }
    for p in snapshot.pods.values() {
        let spec = p.spec.spec.as_ref();
        wanted.push(PodPlan {
            namespace: p.namespace().to_string(),
            name: p.name().to_string(),
            owner: "Pod".into(),
            ordinal: 0,
            node: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
            labels: p.spec.metadata.labels.clone().unwrap_or_default(),
            annotations: p.spec.metadata.annotations.clone().unwrap_or_default(),
            spec: spec
                .and_then(|s| serde_json::to_value(s).ok())
                .unwrap_or_default(),
        });
    }
    wanted.sort_by(|a, b| {
        (&a.namespace, &a.owner, a.ordinal, &a.name).cmp(&(
            &b.namespace,
            &b.owner,
            b.ordinal,
            &b.name,
        ))
    });
    wanted.truncate(PODS_MAX);

    let node_set: BTreeSet<&String> = nodes.iter().collect();
    let running: BTreeMap<(String, String), &PodPlan> =
        running.iter().map(|p| (p.key(), p)).collect();
    let mut load: BTreeMap<&String, usize> = nodes.iter().map(|n| (n, 0)).collect();
    // Running pods keep their node.
    for w in &mut wanted {
        if let Some(r) = running.get(&w.key()).filter(|r| node_set.contains(&r.node)) {
            w.node = r.node.clone();
        } else if !w.node.is_empty() && !node_set.contains(&w.node) {
            w.node.clear();
        }
        if let Some(n) = load.get_mut(&w.node) {
            *n += 1;
        }
    }
    for w in wanted.iter_mut().filter(|w| w.node.is_empty()) {
        let Some((node, n)) = load
            .iter_mut()
            .min_by_key(|(name, n)| (**n, (**name).clone()))
        else {
            break;
        };
        w.node = (*node).clone();
        *n += 1;
    }
    wanted.retain(|w| !w.node.is_empty());
    wanted
}

/// The Pod object the lab publishes for a running pod (what a kubelet would report).
/// `network_status` is the pod's `k8s.v1.cni.cncf.io/network-status` (every interface, the
/// cluster network first), as Multus publishes it; empty: not published.
pub fn pod_object(
    p: &PodPlan,
    ip: &str,
    host_ip: &str,
    network_status: &[serde_json::Value],
) -> serde_json::Value {
    let mut spec = p.spec.clone();
    if !spec.is_object() {
        spec = serde_json::json!({ "containers": [] });
    }
    spec["nodeName"] = serde_json::Value::String(p.node.clone());
    let mut annotations = p.annotations.clone();
    annotations.insert("trellis.dev/owner".into(), p.owner.clone());
    if !network_status.is_empty() {
        annotations.insert(
            cni::multus::ANNOTATION_NETWORK_STATUS.into(),
            serde_json::to_string_pretty(network_status).unwrap_or_default(),
        );
    }
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": p.name,
            "namespace": p.namespace,
            "labels": p.labels,
            "annotations": annotations,
        },
        "spec": spec,
        "status": {
            "phase": "Running",
            "hostIP": host_ip,
            "podIP": ip,
            "podIPs": [ { "ip": ip } ],
            "conditions": [ { "type": "Ready", "status": "True" } ],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(yaml: &str) -> Snapshot {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("m.yaml"), yaml).expect("write");
        store::load(&[dir.path().to_path_buf()], &store::Options::default()).snapshot
    }

    fn deployment(replicas: u32) -> String {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: echo, namespace: default}}\n\
             spec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: echo}}}}\n  template:\n    \
             metadata: {{labels: {{app: echo}}}}\n    spec:\n      containers:\n      - name: echo\n        \
             image: ghcr.io/example/echo:1\n        ports: [{{name: http, containerPort: 8080}}]\n"
        )
    }

    fn nodes() -> Vec<String> {
        vec!["node-1".into(), "node-2".into(), "node-3".into()]
    }

    #[test]
    fn replicas_spread_over_nodes() {
        let pods = desired_pods(
            &snapshot(&deployment(3)),
            Vec::new(),
            &nodes(),
            &[],
            &Replicas::new(),
        );
        let on: BTreeSet<&str> = pods.iter().map(|p| p.node.as_str()).collect();
        assert_eq!(pods.len(), 3);
        assert_eq!(on.len(), 3, "{pods:?}");
        assert_eq!(
            pods[0].ports(),
            vec![("http".to_string(), 8080, "TCP".to_string())]
        );
        assert!(
            pods.iter()
                .all(|p| p.name.starts_with("echo-") && p.name.len() == 10)
        );
    }

    #[test]
    fn scaling_keeps_running_pods_in_place() {
        let three = desired_pods(
            &snapshot(&deployment(3)),
            Vec::new(),
            &nodes(),
            &[],
            &Replicas::new(),
        );
        let five = desired_pods(
            &snapshot(&deployment(5)),
            Vec::new(),
            &nodes(),
            &three,
            &Replicas::new(),
        );
        assert_eq!(five.len(), 5);
        for p in &three {
            assert!(five.contains(p), "{p:?} moved or vanished");
        }
        let two = desired_pods(
            &snapshot(&deployment(2)),
            Vec::new(),
            &nodes(),
            &five,
            &Replicas::new(),
        );
        assert_eq!(two.len(), 2);
        assert!(two.iter().all(|p| p.ordinal < 2));
        for p in &two {
            assert!(five.contains(p));
        }
    }

    #[test]
    fn pod_object_is_ready_and_placed() {
        let pods = desired_pods(
            &snapshot(&deployment(1)),
            Vec::new(),
            &nodes(),
            &[],
            &Replicas::new(),
        );
        let o = pod_object(&pods[0], "10.69.1.2", "10.10.30.11", &[]);
        assert_eq!(o["spec"]["nodeName"], "node-1");
        assert_eq!(o["status"]["podIP"], "10.69.1.2");
        assert_eq!(o["metadata"]["labels"]["app"], "echo");
    }
}
