//! The Kubernetes manifests in `deploy/kubernetes`: they render with kustomize (Debian's
//! kubectl, no cluster), every object is its Kubernetes type with no field the type does not
//! have, `trellis check` reads the output cleanly, the reader role lists exactly the kinds
//! trellis watches, and the CRDs are what `trellis crds` prints.

use std::process::Command;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

use crate::{repo, text, trellis};

fn render(dir: &str) -> String {
    let out = Command::new("kubectl")
        .args(["kustomize", &repo().join(dir).display().to_string()])
        .output()
        .expect("kubectl runs (apt-get install kubectl)");
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

fn documents(yaml: &str) -> Vec<Value> {
    model::RawObject::from_yaml(yaml, "rendered.yaml", "")
        .expect("rendered YAML parses")
        .into_iter()
        .map(|r| r.value)
        .collect()
}

/// Decodes `v` as `T`, failing on any field `T` does not have.
fn strictly<T: serde::de::DeserializeOwned>(v: &Value) -> T {
    let mut unknown = Vec::new();
    let t: T = serde_ignored::deserialize(v.clone(), |p| unknown.push(p.to_string()))
        .unwrap_or_else(|e| panic!("{e}: {v}"));
    assert!(unknown.is_empty(), "unknown fields {unknown:?} in {v}");
    t
}

#[test]
fn the_manifests_render_and_every_object_is_its_kubernetes_type() {
    for dir in ["deploy/kubernetes", "deploy/kubernetes/gateways"] {
        let rendered = render(dir);
        let docs = documents(&rendered);
        assert!(!docs.is_empty(), "{dir}");
        for d in &docs {
            match d["kind"].as_str().unwrap_or_default() {
                "Namespace" => drop(strictly::<Namespace>(d)),
                "CustomResourceDefinition" => drop(strictly::<CustomResourceDefinition>(d)),
                "ServiceAccount" => drop(strictly::<ServiceAccount>(d)),
                "ClusterRole" => drop(strictly::<ClusterRole>(d)),
                "ClusterRoleBinding" => drop(strictly::<ClusterRoleBinding>(d)),
                "Role" => drop(strictly::<Role>(d)),
                "RoleBinding" => drop(strictly::<RoleBinding>(d)),
                "Deployment" => {
                    let dep = strictly::<Deployment>(d);
                    let spec = dep.spec.expect("spec");
                    let pod = spec.template.spec.expect("pod spec");
                    // Every workload runs as non-root with no capability and a read-only root.
                    for c in &pod.containers {
                        let sc = c.security_context.as_ref().expect("securityContext");
                        assert_eq!(sc.read_only_root_filesystem, Some(true), "{}", c.name);
                        assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
                        let caps = sc.capabilities.as_ref().expect("capabilities");
                        assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
                        assert!(caps.add.is_none(), "{}", c.name);
                    }
                    let psc = pod.security_context.expect("pod securityContext");
                    assert_eq!(psc.run_as_non_root, Some(true));
                }
                "DaemonSet" => {
                    let ds = strictly::<DaemonSet>(d);
                    let pod = ds.spec.expect("spec").template.spec.expect("pod spec");
                    // The agent: named capabilities, never privileged (so no Bidirectional
                    // mount propagation, which the API server allows privileged containers
                    // only).
                    for c in &pod.containers {
                        let sc = c.security_context.as_ref().expect("securityContext");
                        assert_eq!(sc.privileged, Some(false), "{}", c.name);
                        for m in c.volume_mounts.iter().flatten() {
                            assert_ne!(
                                m.mount_propagation.as_deref(),
                                Some("Bidirectional"),
                                "{}: {}",
                                c.name,
                                m.mount_path
                            );
                        }
                        let caps = sc.capabilities.as_ref().expect("capabilities");
                        assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
                    }
                }
                "ConfigMap" => {
                    let cm = strictly::<ConfigMap>(d);
                    // The agent's configuration reads as one.
                    if let Some(text) = cm.data.as_ref().and_then(|m| m.get("agent.json")) {
                        let mut v: Value = serde_json::from_str(text).expect("agent.json is JSON");
                        assert_eq!(v["source"], "kube");
                        // Completed from a Node, it is an agent configuration.
                        let node = model::RawObject::from_yaml(
                            "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nspec: {podCIDR: 10.69.1.0/24}\n\
                             status: {addresses: [{type: InternalIP, address: 192.168.1.11}]}\n",
                            "node.yaml",
                            "",
                        )
                        .expect("node");
                        let nodes = model::Snapshot::build(node, vec![]);
                        fabric::agent::complete_from_nodes(&mut v, &nodes, Some("n1"))
                            .expect("completes");
                        let c: fabric::agent::AgentConfig =
                            serde_json::from_value(v).expect("an agent configuration");
                        assert!(c.cni_install.is_some());
                    }
                }
                "Service" => drop(strictly::<Service>(d)),
                "PodDisruptionBudget" => drop(strictly::<PodDisruptionBudget>(d)),
                other => panic!("{dir}: a {other} this test does not know; add its type"),
            }
        }
        // `trellis check` reads the rendered output without an error.
        let t = tempfile::tempdir().expect("tmp");
        let file = t.path().join("rendered.yaml");
        std::fs::write(&file, &rendered).expect("write");
        let out = trellis(&["check", "-f", &file.display().to_string()]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{dir}:\n{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
}

#[test]
fn the_reader_role_lists_exactly_the_kinds_trellis_watches() {
    let docs = documents(&render("deploy/kubernetes"));
    let mut granted = std::collections::BTreeSet::new();
    let roles = docs.iter().filter(|d| {
        d["kind"] == "ClusterRole"
            && (d["metadata"]["name"] == "trellis-reader"
                || d["metadata"]["name"] == "trellis-secrets-reader")
    });
    for role in roles {
        let role: ClusterRole = strictly(role);
        for r in role.rules.unwrap_or_default() {
            let mut verbs = r.verbs.clone();
            verbs.sort();
            assert_eq!(verbs, ["get", "list", "watch"], "{r:?}");
            for g in r.api_groups.unwrap_or_default() {
                for res in r.resources.clone().unwrap_or_default() {
                    assert!(granted.insert((g.clone(), res)), "granted twice");
                }
            }
        }
    }
    let watched: std::collections::BTreeSet<(String, String)> = model::snapshot::KINDS
        .iter()
        .map(|k| {
            let r = store::kubernetes::Resource::new(*k, k.versions[0]);
            (r.api.group, r.api.plural)
        })
        .collect();
    assert_eq!(granted, watched);
}

#[test]
fn the_crds_are_what_trellis_crds_prints() {
    let out = trellis(&["crds"]);
    assert!(out.status.success());
    let committed =
        std::fs::read_to_string(repo().join("deploy/kubernetes/crds.yaml")).expect("crds.yaml");
    assert_eq!(
        committed,
        text(&out.stdout),
        "deploy/kubernetes/crds.yaml is stale: run `trellis crds > deploy/kubernetes/crds.yaml`"
    );
}
