//! Multus: NetworkAttachmentDefinitions (their CNI configs) and pods' network annotations.

use super::*;

/// CNI plugins a NetworkAttachmentDefinition may name: the reference plugins.
pub const CNI_PLUGINS: &[&str] = &[
    "macvlan",
    "ipvlan",
    "bridge",
    "host-device",
    "ptp",
    "vlan",
    "tap",
    "dummy",
    "sbr",
    "tuning",
    "portmap",
    "bandwidth",
    "firewall",
    "vrf",
    "static",
    "host-local",
    "dhcp",
];

/// The highest CNI spec version the reference plugins (Debian's containernetworking-plugins
/// 1.1) speak.
pub const CNI_VERSION_MAX: &str = "1.0.0";

/// What is wrong with a NetworkAttachmentDefinition's `spec.config`, each at its field path
/// (`spec.config.plugins[0].master`; a single configuration is `spec.config.type`).
pub fn cni_config_problems(config: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut bad = |path: String, msg: String| out.push((path, msg));
    let cfg = match serde_json::from_str::<crate::kinds::misc::CniConfig>(config) {
        Ok(c) => c,
        Err(e) => {
            bad(
                "spec.config".into(),
                format!("config is not valid CNI JSON: {e}"),
            );
            return out;
        }
    };
    match cfg.cni_version.as_deref() {
        None => bad(
            "spec.config.cniVersion".into(),
            "cniVersion is required".into(),
        ),
        Some(v) if !version_at_most(v, CNI_VERSION_MAX) => bad(
            "spec.config.cniVersion".into(),
            format!("cniVersion {v:?}: the reference plugins speak up to {CNI_VERSION_MAX}"),
        ),
        Some(_) => {}
    }
    let (plugins, prefix): (Vec<serde_json::Value>, Box<dyn Fn(usize) -> String>) =
        if cfg.plugins.is_empty() {
            let mut single = serde_json::Map::new();
            if let Some(t) = &cfg.type_ {
                single.insert("type".into(), t.clone().into());
            }
            single.extend(cfg.rest.clone());
            (
                vec![serde_json::Value::Object(single)],
                Box::new(|_| "spec.config".to_string()),
            )
        } else {
            (
                cfg.plugins.clone(),
                Box::new(|i| format!("spec.config.plugins[{i}]")),
            )
        };
    for (i, p) in plugins.iter().enumerate() {
        let path = prefix(i);
        let ty = p.get("type").and_then(|t| t.as_str()).unwrap_or("");
        if !CNI_PLUGINS.contains(&ty) {
            bad(
                format!("{path}.type"),
                format!(
                    "plugin type {ty:?} is not a reference CNI plugin ({})",
                    CNI_PLUGINS.join(", ")
                ),
            );
        }
        if ty == "macvlan" {
            let mode = p.get("mode").and_then(|m| m.as_str()).unwrap_or("bridge");
            if !matches!(mode, "bridge" | "private" | "vepa" | "passthru") {
                bad(
                    format!("{path}.mode"),
                    format!("macvlan mode {mode:?} is not bridge, private, vepa or passthru"),
                );
            }
        }
        let Some(ipam) = p.get("ipam") else {
            continue;
        };
        let list = |k: &str| {
            ipam.get(k)
                .and_then(|a| a.as_array())
                .cloned()
                .unwrap_or_default()
        };
        for (j, a) in list("addresses").iter().enumerate() {
            let addr = a.get("address").and_then(|x| x.as_str()).unwrap_or("");
            if addr.parse::<ipnet::IpNet>().is_err() {
                bad(
                    format!("{path}.ipam.addresses[{j}].address"),
                    format!("{addr:?} is not an address with its prefix (10.10.33.254/24)"),
                );
            }
        }
        for (j, r) in list("routes").iter().enumerate() {
            let dst = r.get("dst").and_then(|x| x.as_str()).unwrap_or("");
            if dst.parse::<ipnet::IpNet>().is_err() {
                bad(
                    format!("{path}.ipam.routes[{j}].dst"),
                    format!("{dst:?} is not a CIDR"),
                );
            }
        }
    }
    out
}

/// Whether the version `v` (x.y.z) is at most `max`.
pub(super) fn version_at_most(v: &str, max: &str) -> bool {
    let parse = |v: &str| -> Option<Vec<u32>> { v.split('.').map(|p| p.parse().ok()).collect() };
    match (parse(v), parse(max)) {
        (Some(a), Some(b)) => a <= b,
        _ => false,
    }
}

/// Pods' and Deployments' `k8s.v1.cni.cncf.io/networks`: it must parse, and every
/// NetworkAttachmentDefinition it names must exist (an unresolved reference otherwise: the
/// pod would not start).
pub(super) fn multus_annotations(s: &Snapshot, st: &mut Statuses) {
    use crate::multus::{ANNOTATION_NETWORKS, parse_networks};
    let mut check = |key: ObjectKey, path: &str, annotations: Option<&BTreeMap<String, String>>| {
        let Some(text) = annotations.and_then(|a| a.get(ANNOTATION_NETWORKS)) else {
            return;
        };
        let status = st.entry(key.clone()).or_default();
        let path = format!("{path}[{ANNOTATION_NETWORKS}]");
        match parse_networks(text, &key.namespace) {
            Err(e) => {
                problem(status, path, e);
            }
            Ok(list) => {
                for (i, sel) in list.iter().enumerate() {
                    if get(&s.network_attachments, &sel.namespace, &sel.name).is_none() {
                        let m = unresolved(
                            status,
                            format!("{path}[{i}]"),
                            format!(
                                "NetworkAttachmentDefinition {}/{} not found: the pod would \
                                 not start",
                                sel.namespace, sel.name
                            ),
                        );
                        status.set(bad(cond::RESOLVED_REFS, reason::TARGET_NOT_FOUND, m));
                    }
                }
            }
        }
    };
    for d in s.deployments.values() {
        let template = d
            .spec
            .spec
            .as_ref()
            .and_then(|t| t.template.metadata.as_ref());
        check(
            key_of(d, "apps", "Deployment"),
            "spec.template.metadata.annotations",
            template.and_then(|m| m.annotations.as_ref()),
        );
    }
    for p in s.pods.values() {
        check(
            key_of(p, "", "Pod"),
            "metadata.annotations",
            p.spec.metadata.annotations.as_ref(),
        );
    }
}
