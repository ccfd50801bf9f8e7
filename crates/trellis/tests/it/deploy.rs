//! The Kubernetes manifests in `deploy/kubernetes`: they render with kustomize (Debian's
//! kubectl, no cluster), every object is its Kubernetes type with no field the type does not
//! have, `trellis check` reads the output cleanly, the reader role lists exactly the kinds
//! trellis watches, and the CRDs are what `trellis crds` prints. The Helm chart in
//! `deploy/helm/trellis`, rendered by Helm itself (`cargo xtask test` puts Helm 3.17.3 in
//! `target/tools/helm`), gives the same objects.

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
                        // ... and says when it is ready.
                        assert!(c.readiness_probe.is_some(), "{}: no readinessProbe", c.name);
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
    for file in [
        "deploy/kubernetes/crds.yaml",
        "deploy/helm/trellis/crds/trellis.dev.yaml",
    ] {
        let committed = std::fs::read_to_string(repo().join(file)).expect("the CRDs");
        assert_eq!(
            committed,
            text(&out.stdout),
            "{file} is stale: run `trellis crds > {file}`"
        );
    }
}

/// `helm template` with `args` (the chart's defaults when empty).
fn helm_template(args: &[&str]) -> String {
    let helm = repo().join("target/tools/helm");
    let chart = repo().join("deploy/helm/trellis");
    let out = Command::new(&helm)
        .args(["template", "trellis", &chart.display().to_string()])
        .args(["--namespace", "trellis-system", "--include-crds"])
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (cargo xtask test installs Helm there)",
                helm.display()
            )
        });
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

/// Objects keyed by apiVersion, kind, namespace and name; a key twice fails.
fn by_key(docs: Vec<Value>) -> std::collections::BTreeMap<String, Value> {
    let mut out = std::collections::BTreeMap::new();
    for d in docs {
        let key = format!(
            "{} {} {}/{}",
            d["apiVersion"].as_str().unwrap_or_default(),
            d["kind"].as_str().unwrap_or_default(),
            d["metadata"]["namespace"].as_str().unwrap_or_default(),
            d["metadata"]["name"].as_str().unwrap_or_default(),
        );
        assert!(out.insert(key.clone(), d).is_none(), "{key} twice");
    }
    out
}

#[test]
fn the_helm_chart_renders_the_kustomize_objects() {
    let mut kustomized = documents(&render("deploy/kubernetes"));
    kustomized.extend(documents(&render("deploy/kubernetes/gateways")));
    let kustomized = by_key(kustomized);
    let charted = by_key(documents(&helm_template(&[])));
    let only = |a: &std::collections::BTreeMap<String, Value>,
                b: &std::collections::BTreeMap<String, Value>| {
        a.keys()
            .filter(|k| !b.contains_key(*k))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert!(
        only(&kustomized, &charted).is_empty() && only(&charted, &kustomized).is_empty(),
        "only kustomize: {:?}; only the chart: {:?}",
        only(&kustomized, &charted),
        only(&charted, &kustomized)
    );
    for (key, k) in &kustomized {
        assert_eq!(
            &charted[key], k,
            "{key} differs between the chart and kustomize"
        );
    }

    // Values change what they say: another namespace, image, DNS address and gateway set;
    // a component turned off takes its objects with it.
    let other = by_key(documents(&helm_template(&[
        "--namespace",
        "edge",
        "--set",
        "image.tag=9.9.9",
        "--set",
        "dns.clusterIP=10.96.0.53",
        "--set",
        "sync.enabled=false",
        "--set",
        "gateways[0].name=public,gateways[0].namespace=web,gateways[0].ports[0].name=https,gateways[0].ports[0].port=443",
    ])));
    let dns = &other["v1 Service edge/trellis-dns"];
    assert_eq!(dns["spec"]["clusterIP"], "10.96.0.53", "{dns}");
    assert!(
        other.keys().all(|k| !k.contains("trellis-system")),
        "{:?}",
        other.keys()
    );
    assert!(
        !other.keys().any(|k| k.contains("trellis-sync")),
        "{:?}",
        other.keys()
    );
    let proxy = &other["apps/v1 Deployment web/public"];
    assert_eq!(
        proxy["spec"]["template"]["spec"]["containers"][0]["image"],
        "ghcr.io/trellis-dev/trellis:9.9.9"
    );
    assert!(!other.keys().any(|k| k.contains("envoy-external")));
    for d in other.values() {
        let kind = d["kind"].as_str().unwrap_or_default();
        if kind == "Deployment" {
            drop(strictly::<Deployment>(d));
        }
    }
    // A gateway without ports is refused with the field.
    let out = Command::new(repo().join("target/tools/helm"))
        .args([
            "template",
            "t",
            &repo().join("deploy/helm/trellis").display().to_string(),
        ])
        .args(["--set", "gateways[0].name=x"])
        .output()
        .expect("helm runs");
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("ports"), "{}", text(&out.stderr));
}
