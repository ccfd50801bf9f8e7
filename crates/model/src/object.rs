//! What every loaded object carries: its identity, where it was written, and its conditions.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::yaml::{Pos, PosIndex};

/// The identity of an object: kind (with its API group) plus namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectKey {
    pub group: String,
    pub kind: String,
    /// Empty for cluster-scoped kinds.
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(group: &str, kind: &str, namespace: &str, name: &str) -> ObjectKey {
        ObjectKey {
            group: group.to_string(),
            kind: kind.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    /// `namespace/name`, or `name` for cluster-scoped objects.
    pub fn ns_name(&self) -> String {
        if self.namespace.is_empty() {
            self.name.clone()
        } else {
            format!("{}/{}", self.namespace, self.name)
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.ns_name())
    }
}

/// Where an object was written.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Source {
    pub file: Arc<PathBuf>,
    /// Position of the document's first line.
    pub pos: Pos,
    /// Positions of every field path of the document as written.
    pub index: Arc<PosIndex>,
}

impl Source {
    /// `file:line:col` of a field path of this object (or the object itself for "").
    pub fn locate(&self, path: &str) -> String {
        let pos = self.index.find(path).unwrap_or(self.pos);
        format!("{}:{}", self.file.display(), pos)
    }
}

/// The metadata trellis reads from every object.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339, as the API server sets it (manifests read from files have none). Of two
    /// policies on one target the older applies (GEP-713).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
}

/// A condition as in Kubernetes status (`metav1.Condition` without the timestamps, which a
/// pure compile cannot know).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: Status,
    pub reason: String,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Status {
    True,
    False,
    Unknown,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::True => "True",
            Status::False => "False",
            Status::Unknown => "Unknown",
        })
    }
}

impl Condition {
    pub fn new(type_: &str, status: Status, reason: &str, message: impl Into<String>) -> Self {
        Condition {
            type_: type_.to_string(),
            status,
            reason: reason.to_string(),
            message: message.into(),
        }
    }

    /// A condition that says something is wrong: a positive type that is not True, or a
    /// negative-polarity type (Conflicted) that is True.
    pub fn is_problem(&self) -> bool {
        match self.type_.as_str() {
            cond::CONFLICTED => self.status == Status::True,
            cond::ACCEPTED | cond::RESOLVED_REFS | cond::HEALTH_ENDPOINTS_ACCEPTED => {
                self.status != Status::True
            }
            _ => false,
        }
    }
}

/// Condition types and reasons, with the Gateway API's spellings where it has one.
pub mod cond {
    pub const ACCEPTED: &str = "Accepted";
    /// trellis's own: the health endpoints an object declares (a gatus-sidecar annotation, a
    /// Gatus ConfigMap) can all be probed. The object itself is still served when False.
    pub const HEALTH_ENDPOINTS_ACCEPTED: &str = "HealthEndpointsAccepted";
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
    pub const PROGRAMMED: &str = "Programmed";
    pub const CONFLICTED: &str = "Conflicted";

    pub mod reason {
        pub const ACCEPTED: &str = "Accepted";
        pub const RESOLVED_REFS: &str = "ResolvedRefs";
        pub const PROGRAMMED: &str = "Programmed";
        pub const INVALID: &str = "Invalid";
        pub const PENDING: &str = "Pending";
        pub const NO_CONFLICTS: &str = "NoConflicts";
        pub const PROTOCOL_CONFLICT: &str = "ProtocolConflict";
        pub const HOSTNAME_CONFLICT: &str = "HostnameConflict";
        pub const UNSUPPORTED_PROTOCOL: &str = "UnsupportedProtocol";
        pub const INVALID_ROUTE_KINDS: &str = "InvalidRouteKinds";
        pub const INVALID_CERTIFICATE_REF: &str = "InvalidCertificateRef";
        pub const INVALID_PARAMETERS: &str = "InvalidParameters";
        pub const NOT_ALLOWED_BY_LISTENERS: &str = "NotAllowedByListeners";
        pub const NO_MATCHING_LISTENER_HOSTNAME: &str = "NoMatchingListenerHostname";
        pub const NO_MATCHING_PARENT: &str = "NoMatchingParent";
        pub const REF_NOT_PERMITTED: &str = "RefNotPermitted";
        pub const BACKEND_NOT_FOUND: &str = "BackendNotFound";
        pub const INVALID_KIND: &str = "InvalidKind";
        pub const UNSUPPORTED_VALUE: &str = "UnsupportedValue";
        pub const TARGET_NOT_FOUND: &str = "TargetNotFound";
        pub const CONFLICTED: &str = "Conflicted";
        pub const UNSUPPORTED: &str = "Unsupported";
        pub const DUPLICATE: &str = "Duplicate";
        pub const INVALID_VALUE_REF: &str = "InvalidValueRef";
    }
}

/// The status of one object after validation: its own conditions, plus per-parent
/// conditions for routes and per-listener conditions for Gateways.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ObjectStatus {
    pub conditions: Vec<Condition>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<ParentStatus>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<ListenerStatus>,
    /// Problems with a field path, for `trellis check`'s file:line report.
    #[serde(skip)]
    pub problems: Vec<Problem>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentStatus {
    pub parent_ref: ParentRefOut,
    pub conditions: Vec<Condition>,
    /// Names of the parent Gateway's listeners that took the route (what the gateway serves).
    #[serde(skip)]
    pub listeners: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentRefOut {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerStatus {
    pub name: String,
    pub attached_routes: u32,
    pub supported_kinds: Vec<RouteGroupKind>,
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RouteGroupKind {
    pub group: String,
    pub kind: String,
}

/// One problem at a field path of an object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub path: String,
    pub message: String,
    /// A reference that does not resolve (as opposed to a value that is not valid).
    pub reference: bool,
}

impl ObjectStatus {
    /// Sets (or replaces) a condition of the object itself.
    pub fn set(&mut self, c: Condition) {
        set_condition(&mut self.conditions, c);
    }

    /// Records a value that is not valid.
    pub fn problem(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.push_problem(Problem {
            path: path.into(),
            message: message.into(),
            reference: false,
        });
    }

    /// Records a reference that does not resolve.
    pub fn unresolved(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.push_problem(Problem {
            path: path.into(),
            message: message.into(),
            reference: true,
        });
    }

    fn push_problem(&mut self, p: Problem) {
        if !self.problems.contains(&p) {
            self.problems.push(p);
        }
    }

    /// The first problem that is an invalid value (not an unresolved reference).
    pub fn first_invalid(&self) -> Option<&Problem> {
        self.problems.iter().find(|p| !p.reference)
    }

    /// All conditions: the object's, its parents' and its listeners'.
    pub fn all_conditions(&self) -> impl Iterator<Item = &Condition> {
        self.conditions
            .iter()
            .chain(self.parents.iter().flat_map(|p| &p.conditions))
            .chain(self.listeners.iter().flat_map(|l| &l.conditions))
    }

    pub fn has_problem(&self) -> bool {
        self.all_conditions().any(Condition::is_problem)
    }
}

pub fn set_condition(list: &mut Vec<Condition>, c: Condition) {
    match list.iter_mut().find(|x| x.type_ == c.type_) {
        Some(x) => *x = c,
        None => list.push(c),
    }
}

/// Serializes a file path as a string (lossy for non-UTF-8 names).
pub fn serialize_path<S: serde::Serializer>(p: &Arc<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&p.display().to_string())
}

/// Converts a value to another type with the same fields, through JSON: the gateway-api
/// crate generates one type per kind for the same shape (`HttpRouteParentRefs`,
/// `GrpcRouteParentRefs`, header modifiers of rules and of backendRefs); components read
/// them through one type of ours. Falls back to the default if the shapes differ.
pub fn same_shape<T: Serialize, U: serde::de::DeserializeOwned + Default>(t: &T) -> U {
    serde_json::to_value(t)
        .ok()
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default()
}
