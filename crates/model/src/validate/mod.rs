//! Reference resolution and validation: every object of a snapshot gets its conditions.
//!
//! Gateway API objects follow the spec's status model: GatewayClass and Gateway conditions,
//! per-listener conditions (Accepted, Conflicted, ResolvedRefs, Programmed) with
//! attachedRoutes, and per-parent route conditions (Accepted, ResolvedRefs) with the spec's
//! reasons. Policies follow GEP-713 (Accepted with TargetNotFound / Conflicted / Invalid).
//! Other kinds get Accepted (and ResolvedRefs where they point at something).
//!
//! This module only reads the snapshot and writes statuses, and the typed [`Resolution`] the
//! components read; it never changes what is served.

mod cilium;
mod cni;
mod gateway;
mod policy;
mod workloads;

use cilium::*;
pub use cni::*;
pub use gateway::*;
pub use policy::*;
pub use workloads::*;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::str::FromStr;

use gateway_api::gateways::{
    GatewayListenersAllowedRoutesNamespacesFrom as From, GatewayListenersTlsMode,
};

use crate::kinds::LabelSelector;
use crate::kinds::envoy::{Policy, SecurityPolicySpec, TargetRef};
use crate::kinds::routes::{BackendRef, ParentRef};
use crate::object::same_shape;
use crate::object::{
    Condition, ListenerStatus, ObjectKey, ObjectStatus, ParentRefOut, ParentStatus, RouteGroupKind,
    Status, cond, cond::reason,
};
use crate::resolution::{
    Attachment, GatewayListeners, GatewayVerdict, PolicyTarget, PolicyVerdict, Resolution,
};
use crate::snapshot::{Coll, Object, Snapshot, get};

pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
pub const ENVOY_GROUP: &str = "gateway.envoyproxy.io";

/// The GatewayClass controller names trellis serves: its own, and Envoy Gateway's so that an
/// Envoy Gateway setup loads unchanged.
pub const CONTROLLER_NAMES: &[&str] = &[
    "trellis.dev/gateway-controller",
    "gateway.envoyproxy.io/gatewayclass-controller",
];

type Statuses = BTreeMap<ObjectKey, ObjectStatus>;

pub fn run(s: &mut Snapshot) {
    let mut st: Statuses = std::mem::take(&mut s.status);
    let mut res = Resolution::default();
    let classes = gateway_classes(s, &mut st);
    let mut listeners = gateways(s, &mut st, &mut res, &classes);
    routes(s, &mut st, &mut res, &mut listeners);
    write_listener_status(s, &mut st, &listeners);
    policies(s, &mut st, &mut res);
    core(s, &mut st);
    cilium(s, &mut st);
    misc(s, &mut st);
    // Every object that was loaded and has no Accepted condition yet is accepted.
    for key in s.entries.keys() {
        let status = st.entry(key.clone()).or_default();
        if !status.conditions.iter().any(|c| c.type_ == cond::ACCEPTED) {
            let bad = status
                .first_invalid()
                .map(|p| format!("{}: {}", p.path, p.message));
            match bad {
                Some(m) => status.set(Condition::new(
                    cond::ACCEPTED,
                    Status::False,
                    reason::INVALID,
                    m,
                )),
                None => status.set(ok(cond::ACCEPTED, reason::ACCEPTED, "")),
            }
        }
    }
    s.status = st;
    s.resolution = res;
}

fn ok(type_: &str, reason: &str, message: impl Into<String>) -> Condition {
    Condition::new(type_, Status::True, reason, message)
}

fn bad(type_: &str, reason: &str, message: impl Into<String>) -> Condition {
    Condition::new(type_, Status::False, reason, message)
}

fn key_of<S>(o: &Object<S>, group: &str, kind: &str) -> ObjectKey {
    ObjectKey::new(group, kind, o.namespace(), o.name())
}

/// Records an invalid value at a field path and returns its message.
fn problem(st: &mut ObjectStatus, path: impl Into<String>, msg: impl Into<String>) -> String {
    let msg = msg.into();
    st.problem(path, msg.clone());
    msg
}

/// Records an unresolved reference at a field path and returns its message.
fn unresolved(st: &mut ObjectStatus, path: impl Into<String>, msg: impl Into<String>) -> String {
    let msg = msg.into();
    st.unresolved(path, msg.clone());
    msg
}

// ---------------------------------------------------------------------------------------------
// GatewayClass

fn first_line(s: &str) -> String {
    s.lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or(s)
        .trim()
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// Envoy Gateway policies

/// Parses a Gateway API duration (GEP-2257: `1h`, `300s`, `500ms`, `0s`).
pub fn parse_duration(v: &str) -> Result<std::time::Duration, String> {
    let d = gateway_api::Duration::from_str(v).map_err(|e| e.to_string())?;
    Ok(std::time::Duration::new(d.as_secs(), d.subsec_nanos()))
}

fn check_duration(status: &mut ObjectStatus, path: &str, v: &Option<String>) {
    if let Some(v) = v
        && let Err(e) = parse_duration(v)
    {
        problem(status, path, format!("duration {v:?}: {e}"));
    }
}

/// The value a policy's `valueRef` names: the ConfigMap's `key` (`lua` for a Lua script,
/// `jwks` for a JWKS), else its only key.
pub fn config_map_value(
    s: &Snapshot,
    namespace: &str,
    r: &crate::kinds::envoy::LocalObjectRef,
    key: &str,
) -> Result<String, String> {
    let kind = r.kind.as_deref().unwrap_or("ConfigMap");
    if kind != "ConfigMap" {
        return Err(format!(
            "valueRef kind {kind} is not supported (use a ConfigMap)"
        ));
    }
    // A valueRef is a local reference: one naming another namespace is refused, never read
    // from the policy's own namespace in its place.
    if let Some(other) = r.namespace.as_deref().filter(|n| *n != namespace) {
        return Err(format!(
            "valueRef namespace {other}: a valueRef names a ConfigMap in the policy's own namespace {namespace}"
        ));
    }
    let Some(cm) = get(&s.config_maps, namespace, &r.name) else {
        return Err(format!("configmap {namespace}/{} not found", r.name));
    };
    let data = cm.spec.data.clone().unwrap_or_default();
    if let Some(v) = data.get(key) {
        return Ok(v.clone());
    }
    let mut values = data.values();
    match (values.next(), values.next()) {
        (Some(v), None) => Ok(v.clone()),
        (None, _) => Err(format!("configmap {namespace}/{} has no data", r.name)),
        (Some(_), Some(_)) => Err(format!(
            "configmap {namespace}/{} has several keys and none is named {key}",
            r.name
        )),
    }
}
