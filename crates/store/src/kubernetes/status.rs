//! Status written back to the API server: the conditions validation decided, as the Gateway
//! API and Envoy Gateway shape them, applied with server-side apply under trellis's field
//! manager.
//!
//! [`patches`] is pure: from a load (the snapshot and what the API server holds of each
//! object) it gives the status documents that differ from what is there. A condition whose
//! status did not change keeps its `lastTransitionTime`, so writing the same snapshot twice
//! gives no patch the second time (our own writes come back as watch events and must not
//! start a loop).
//!
//! Written today: GatewayClass and Gateway (conditions, listeners) of the classes trellis
//! serves; routes (one `parents` entry per parent Gateway of those classes); Envoy Gateway
//! policies (`ancestors`, one per targeted Gateway or route); LB-IPAM's Service addresses and
//! pool conditions ([`LoadBalancers`]); KEDA's ScaledObject conditions ([`scaled_object`]);
//! Cilium's `Valid` condition on CiliumNetworkPolicies and CiliumClusterwideNetworkPolicies.
//! Only the elected leader calls [`apply`].

use std::collections::BTreeMap;
use std::net::IpAddr;

use kube::api::{Api, DynamicObject, Patch as KubePatch, PatchParams};
use model::object::{Condition, ObjectKey, ObjectStatus};
use model::snapshot::{Snapshot, kind_info};
use model::validate::CONTROLLER_NAMES;
use serde_json::{Value, json};

use super::Resource;
use crate::dir::{Load, Observed};

/// The field manager of every status trellis writes.
pub const FIELD_MANAGER: &str = "trellis";
const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
const ROUTE_KINDS: &[&str] = &["HTTPRoute", "GRPCRoute", "TLSRoute", "TCPRoute", "UDPRoute"];

/// One object's status document to apply.
#[derive(Clone, Debug)]
pub struct Patch {
    pub resource: Resource,
    pub key: ObjectKey,
    /// `{apiVersion, kind, metadata: {name, namespace}, status}`: a server-side apply body.
    pub body: Value,
}

/// What LB-IPAM decided (the operator computes it with `fabric::lbipam`), for the status
/// writer: each LoadBalancer Service's addresses and its `cilium.io/IPAMRequestSatisfied`
/// condition, and each Gateway's addresses, by (namespace, name).
#[derive(Clone, Debug, Default)]
pub struct LoadBalancers {
    pub services: BTreeMap<(String, String), (Vec<IpAddr>, Condition)>,
    pub gateways: BTreeMap<(String, String), Vec<IpAddr>>,
    /// Each CiliumLoadBalancerIPPool's conditions (conflict, address counts), by name.
    pub pools: BTreeMap<String, Vec<Condition>>,
}

/// The patches a load asks for, `now` (RFC 3339) as the transition time of changed
/// conditions.
pub fn patches(load: &Load, lbs: &LoadBalancers, now: &str) -> Vec<Patch> {
    let s = &load.snapshot;
    let mut out = Vec::new();
    let no_status = Observed::default();
    for ((ns, name), (ips, condition)) in &lbs.services {
        let key = ObjectKey::new("", "Service", ns, name);
        if !s.services.contains_key(&(ns.clone(), name.clone())) {
            continue;
        }
        let observed = load.observed.get(&key).unwrap_or(&no_status);
        let ingress: Vec<Value> = ips
            .iter()
            .map(|ip| json!({ "ip": ip.to_string() }))
            .collect();
        let desired = json!({
            "loadBalancer": { "ingress": ingress },
            "conditions": conditions(
                std::slice::from_ref(condition),
                observed.status.get("conditions"),
                observed.generation,
                now,
            ),
        });
        if let Some(p) = patch(s, &key, &observed.status, desired) {
            out.push(p);
        }
    }
    for (name, conds) in &lbs.pools {
        let key = ObjectKey::new("cilium.io", "CiliumLoadBalancerIPPool", "", name);
        let observed = load.observed.get(&key).unwrap_or(&no_status);
        let desired = json!({
            "conditions": conditions(conds, observed.status.get("conditions"), observed.generation, now),
        });
        if let Some(p) = patch(s, &key, &observed.status, desired) {
            out.push(p);
        }
    }
    for (key, status) in &s.status {
        let observed = load.observed.get(key).unwrap_or(&no_status);
        let generation = observed.generation;
        let old = &observed.status;
        let desired = match (key.group.as_str(), key.kind.as_str()) {
            (GATEWAY_GROUP, "GatewayClass") if class_is_ours(s, &key.name) => {
                json!({ "conditions": conditions(&status.conditions, old.get("conditions"), generation, now) })
            }
            (GATEWAY_GROUP, "Gateway") if gateway_is_ours(s, &key.namespace, &key.name) => {
                let addresses = lbs
                    .gateways
                    .get(&(key.namespace.clone(), key.name.clone()))
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                gateway_status(status, addresses, old, generation, now)
            }
            (GATEWAY_GROUP, kind) if ROUTE_KINDS.contains(&kind) => {
                match route_status(s, status, old, generation, now) {
                    Some(v) => v,
                    None => continue,
                }
            }
            ("cilium.io", "CiliumNetworkPolicy" | "CiliumClusterwideNetworkPolicy") => {
                // Cilium's `Valid` condition, from whether trellis accepted the policy (a
                // policy it cannot enforce is refused, never half applied).
                let valid = status
                    .conditions
                    .iter()
                    .find(|c| c.type_ == model::object::cond::ACCEPTED)
                    .map(|c| {
                        let ok = c.status == model::Status::True;
                        Condition::new(
                            "Valid",
                            c.status,
                            if ok { "PolicyValid" } else { "PolicyInvalid" },
                            if ok {
                                "Policy validation succeeded".to_string()
                            } else {
                                c.message.clone()
                            },
                        )
                    });
                match valid {
                    Some(v) => {
                        json!({ "conditions": conditions(&[v], old.get("conditions"), generation, now) })
                    }
                    None => continue,
                }
            }
            (model::validate::ENVOY_GROUP, _) => {
                match policy_status(s, key, status, old, generation, now) {
                    Some(v) => v,
                    None => continue,
                }
            }
            _ => continue,
        };
        if let Some(p) = patch(s, key, old, desired) {
            out.push(p);
        }
    }
    out
}

/// The apply body for one object's status, or None when it already says all of `desired`.
fn patch(s: &Snapshot, key: &ObjectKey, old: &Value, desired: Value) -> Option<Patch> {
    if unchanged(old, &desired) {
        return None;
    }
    let info = kind_info(&key.group, &key.kind)?;
    let resource = Resource::new(info, served_version(s, key)?);
    let mut metadata = json!({ "name": key.name });
    if !key.namespace.is_empty() {
        metadata["namespace"] = json!(key.namespace);
    }
    Some(Patch {
        body: json!({
            "apiVersion": resource.api.api_version,
            "kind": resource.api.kind,
            "metadata": metadata,
            "status": desired,
        }),
        resource,
        key: key.clone(),
    })
}

/// A ScaledObject's status as KEDA writes it: its conditions, without timestamps (KEDA's
/// schema has none). None when it already says so.
pub fn scaled_object(
    load: &Load,
    namespace: &str,
    name: &str,
    conds: &[Condition],
) -> Option<Patch> {
    let key = ObjectKey::new("keda.sh", "ScaledObject", namespace, name);
    let no_status = Observed::default();
    let observed = load.observed.get(&key).unwrap_or(&no_status);
    let conditions: Vec<Value> = conds
        .iter()
        .map(|c| {
            json!({ "type": c.type_, "status": c.status.to_string(), "reason": c.reason, "message": c.message })
        })
        .collect();
    patch(
        &load.snapshot,
        &key,
        &observed.status,
        json!({ "conditions": conditions }),
    )
}

/// Sets a workload's replicas through its `scale` subresource (what KEDA's HPA does).
/// `kind` is an `apps/v1` kind (Deployment, StatefulSet).
pub async fn scale(
    client: &kube::Client,
    kind: &str,
    namespace: &str,
    name: &str,
    replicas: u32,
) -> Result<(), kube::Error> {
    let gvk = kube::api::GroupVersionKind::gvk("apps", "v1", kind);
    let api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        namespace,
        &kube::api::ApiResource::from_gvk(&gvk),
    );
    api.patch_scale(
        name,
        &PatchParams::default(),
        &KubePatch::Merge(json!({ "spec": { "replicas": replicas } })),
    )
    .await
    .map(|_| ())
}

/// Applies each patch to the status subresource; the first error is returned after every
/// patch was tried (one object the server refuses does not hold the others back).
pub async fn apply(client: &kube::Client, patches: &[Patch]) -> Result<usize, kube::Error> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut first_error = None;
    let mut written = 0;
    for p in patches {
        let api: Api<DynamicObject> = if p.key.namespace.is_empty() {
            Api::all_with(client.clone(), &p.resource.api)
        } else {
            Api::namespaced_with(client.clone(), &p.key.namespace, &p.resource.api)
        };
        match api
            .patch_status(&p.key.name, &params, &KubePatch::Apply(&p.body))
            .await
        {
            Ok(_) => written += 1,
            Err(e) => {
                tracing::warn!(object = %p.key, error = %e, "cannot write status");
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(written),
    }
}

fn served_version<'a>(s: &'a Snapshot, key: &ObjectKey) -> Option<&'a str> {
    let api_version = &s.entries.get(key)?.api_version;
    Some(api_version.rsplit('/').next().unwrap_or(api_version))
}

fn class_is_ours(s: &Snapshot, name: &str) -> bool {
    s.gateway_classes
        .get(&(String::new(), name.to_string()))
        .is_some_and(|c| CONTROLLER_NAMES.contains(&c.spec.controller_name.as_str()))
}

fn gateway_is_ours(s: &Snapshot, ns: &str, name: &str) -> bool {
    s.gateways
        .get(&(ns.to_string(), name.to_string()))
        .is_some_and(|g| class_is_ours(s, &g.spec.gateway_class_name))
}

fn controller_of(s: &Snapshot, ns: &str, gateway: &str) -> Option<String> {
    let g = s.gateways.get(&(ns.to_string(), gateway.to_string()))?;
    let c = s
        .gateway_classes
        .get(&(String::new(), g.spec.gateway_class_name.clone()))?;
    CONTROLLER_NAMES
        .contains(&c.spec.controller_name.as_str())
        .then(|| c.spec.controller_name.clone())
}

fn gateway_status(
    st: &ObjectStatus,
    addresses: &[IpAddr],
    old: &Value,
    generation: Option<i64>,
    now: &str,
) -> Value {
    let old_listeners = old.get("listeners").and_then(Value::as_array);
    let listeners: Vec<Value> = st
        .listeners
        .iter()
        .map(|l| {
            let old_conds = old_listeners
                .and_then(|ls| ls.iter().find(|o| o.get("name") == Some(&json!(l.name))))
                .and_then(|o| o.get("conditions"));
            json!({
                "name": l.name,
                "attachedRoutes": l.attached_routes,
                "supportedKinds": l.supported_kinds,
                "conditions": conditions(&l.conditions, old_conds, generation, now),
            })
        })
        .collect();
    let mut out = json!({
        "conditions": conditions(&st.conditions, old.get("conditions"), generation, now),
        "listeners": listeners,
    });
    // Written when there are addresses, and as an empty list once to take back addresses
    // shown before.
    let shown = old
        .get("addresses")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    if !addresses.is_empty() || shown {
        out["addresses"] = addresses
            .iter()
            .map(|a| json!({ "type": "IPAddress", "value": a.to_string() }))
            .collect();
    }
    out
}

fn route_status(
    s: &Snapshot,
    st: &ObjectStatus,
    old: &Value,
    generation: Option<i64>,
    now: &str,
) -> Option<Value> {
    let old_parents = old.get("parents").and_then(Value::as_array);
    let parents: Vec<Value> = st
        .parents
        .iter()
        .filter(|p| p.parent_ref.kind == "Gateway")
        .filter_map(|p| {
            let controller = controller_of(s, &p.parent_ref.namespace, &p.parent_ref.name)?;
            let mut parent_ref = json!({
                "group": GATEWAY_GROUP,
                "kind": "Gateway",
                "namespace": p.parent_ref.namespace,
                "name": p.parent_ref.name,
            });
            if let Some(section) = &p.parent_ref.section_name {
                parent_ref["sectionName"] = json!(section);
            }
            if let Some(port) = p.parent_ref.port {
                parent_ref["port"] = json!(port);
            }
            let old_conds = old_parents
                .and_then(|ps| ps.iter().find(|o| o.get("parentRef") == Some(&parent_ref)))
                .and_then(|o| o.get("conditions"));
            Some(json!({
                "parentRef": parent_ref,
                "controllerName": controller,
                "conditions": conditions(&p.conditions, old_conds, generation, now),
            }))
        })
        .collect();
    merged(old_parents, parents).map(|p| json!({ "parents": p }))
}

/// Whether a status entry (`parents[i]`, `ancestors[i]`) is one trellis writes.
fn is_ours(entry: &Value) -> bool {
    entry
        .get("controllerName")
        .and_then(Value::as_str)
        .is_some_and(|c| CONTROLLER_NAMES.contains(&c))
}

/// A per-controller list (route `parents`, policy `ancestors`) as trellis writes it: the
/// entries of other controllers kept as they are (these lists are atomic, so an apply
/// replaces them whole), then trellis's own. None when trellis has no entry to write and
/// none to take back.
fn merged(old: Option<&Vec<Value>>, ours: Vec<Value>) -> Option<Vec<Value>> {
    let old = old.map(Vec::as_slice).unwrap_or_default();
    if ours.is_empty() && !old.iter().any(is_ours) {
        return None;
    }
    Some(
        old.iter()
            .filter(|e| !is_ours(e))
            .cloned()
            .chain(ours)
            .collect(),
    )
}

/// A policy's status as Envoy Gateway writes it: one ancestor per targeted Gateway (a route
/// target stands for its parent Gateways), each with the policy's conditions.
fn policy_status(
    s: &Snapshot,
    key: &ObjectKey,
    st: &ObjectStatus,
    old: &Value,
    generation: Option<i64>,
    now: &str,
) -> Option<Value> {
    // Validation's targets of the policy (only Envoy Gateway policies have an entry).
    let targets = s.resolution.policies.get(key)?.targets.clone();
    // (namespace, name, listener): a policy on one listener has that listener's Gateway as
    // its ancestor, with the listener as `sectionName`; one on a route has the route's parent
    // Gateways as its parentRefs name them (with their `sectionName`), as Envoy Gateway
    // writes them.
    let mut gateways: Vec<(String, String, Option<String>)> = Vec::new();
    for t in targets {
        let o = &t.object;
        if o.kind == "Gateway" {
            gateways.push((o.namespace.clone(), o.name.clone(), t.section.clone()));
        } else if let Some(rs) = s.status.get(o) {
            gateways.extend(
                rs.parents
                    .iter()
                    .filter(|p| p.parent_ref.kind == "Gateway")
                    .map(|p| {
                        let r = &p.parent_ref;
                        (r.namespace.clone(), r.name.clone(), r.section_name.clone())
                    }),
            );
        }
    }
    gateways.sort();
    gateways.dedup();
    let old_ancestors = old.get("ancestors").and_then(Value::as_array);
    let ancestors: Vec<Value> = gateways
        .into_iter()
        .filter_map(|(ns, name, section)| {
            let controller = controller_of(s, &ns, &name)?;
            let mut ancestor_ref = json!({
                "group": GATEWAY_GROUP,
                "kind": "Gateway",
                "namespace": ns,
                "name": name,
            });
            if let Some(section) = section {
                ancestor_ref["sectionName"] = json!(section);
            }
            let old_conds = old_ancestors
                .and_then(|a| {
                    a.iter()
                        .find(|o| o.get("ancestorRef") == Some(&ancestor_ref))
                })
                .and_then(|o| o.get("conditions"));
            Some(json!({
                "ancestorRef": ancestor_ref,
                "controllerName": controller,
                "conditions": conditions(&st.conditions, old_conds, generation, now),
            }))
        })
        .collect();
    merged(old_ancestors, ancestors).map(|a| json!({ "ancestors": a }))
}

/// `metav1.Condition`s: the transition time kept from the old condition of the same type
/// when its status is the same, else `now`.
fn conditions(new: &[Condition], old: Option<&Value>, generation: Option<i64>, now: &str) -> Value {
    let old = old.and_then(Value::as_array);
    Value::Array(
        new.iter()
            .map(|c| {
                let status = c.status.to_string();
                let since = old
                    .and_then(|o| {
                        o.iter().find(|o| {
                            o.get("type") == Some(&json!(c.type_))
                                && o.get("status") == Some(&json!(status))
                        })
                    })
                    .and_then(|o| o.get("lastTransitionTime"))
                    .and_then(Value::as_str)
                    .unwrap_or(now);
                let mut v = json!({
                    "type": c.type_,
                    "status": status,
                    "reason": c.reason,
                    "message": c.message,
                    "lastTransitionTime": since,
                });
                if let Some(g) = generation {
                    v["observedGeneration"] = json!(g);
                }
                v
            })
            .collect(),
    )
}

/// Whether every field trellis writes already has the value it would write.
fn unchanged(old: &Value, desired: &Value) -> bool {
    desired
        .as_object()
        .is_some_and(|d| d.iter().all(|(k, v)| old.get(k) == Some(v)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A policy on one listener has that listener's Gateway as its ancestor, with the
    /// listener as `sectionName`; one on a route rule has the route's parentRefs.
    #[test]
    fn a_policy_on_one_listener_names_it_in_its_ancestor() {
        let case = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/cases/policy-sections.yaml");
        let opts = crate::Options {
            default_namespace: "default".into(),
            ..crate::Options::default()
        };
        let s = crate::load(&[case], &opts).snapshot;
        let ancestor = |name: &str| {
            let key = ObjectKey::new(
                model::validate::ENVOY_GROUP,
                "SecurityPolicy",
                "default",
                name,
            );
            let doc = policy_status(&s, &key, &s.status[&key], &json!({}), None, "now")
                .expect("a status");
            doc["ancestors"][0]["ancestorRef"].clone()
        };
        let mut listener = json!({"group": GATEWAY_GROUP, "kind": "Gateway", "namespace": "default", "name": "gw"});
        listener["sectionName"] = json!("http");
        assert_eq!(ancestor("on-listener"), listener);
        // The route attaches with `parentRefs: [{name: gw, sectionName: http}]`.
        assert_eq!(ancestor("admin-rule"), listener);
    }

    #[test]
    fn an_unchanged_condition_keeps_its_transition_time() {
        let c = [Condition::new(
            "Accepted",
            model::Status::True,
            "Accepted",
            "ok",
        )];
        let first = conditions(&c, None, Some(3), "2026-01-01T00:00:00Z");
        let again = conditions(&c, Some(&first), Some(3), "2026-02-02T00:00:00Z");
        assert_eq!(first, again);
        let flipped = [Condition::new(
            "Accepted",
            model::Status::False,
            "Invalid",
            "no",
        )];
        let later = conditions(&flipped, Some(&first), Some(4), "2026-02-02T00:00:00Z");
        assert_eq!(later[0]["lastTransitionTime"], "2026-02-02T00:00:00Z");
        assert_eq!(later[0]["observedGeneration"], 4);
    }
}
