//! What validation decided about the objects that point at each other, typed.
//!
//! [`crate::validate::run`] fills a [`Resolution`] while it writes the conditions, from the
//! same decisions: which Gateways are accepted and which of their listeners take routes,
//! which listeners each route attached to, what each Envoy Gateway policy applies to, which
//! policy owns a target, and which policies are refused. Components (the gateway, record
//! sync) read this, never the condition strings.

use std::collections::BTreeMap;

use crate::object::ObjectKey;

/// Validation's decisions, kept on the [`crate::Snapshot`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resolution {
    /// Every Gateway validation looked at.
    pub gateways: BTreeMap<ObjectKey, GatewayVerdict>,
    /// The routes accepted by at least one Gateway: for each, the listeners that took it.
    pub attachments: BTreeMap<ObjectKey, Vec<Attachment>>,
    /// Every Envoy Gateway policy validation looked at.
    pub policies: BTreeMap<ObjectKey, PolicyVerdict>,
    /// The policy that applies to a target, by (policy kind, target): the first of its kind
    /// (in GEP-713's order) that names it; later ones are Conflicted there. A target with a
    /// section and the whole object are different targets: where both have a policy of one
    /// kind, the section's applies to it (the more specific one).
    pub owners: BTreeMap<(String, PolicyTarget), ObjectKey>,
}

/// What a policy attaches to: an object, or one section of it (`targetRefs[].sectionName`:
/// a listener of a Gateway, a named rule of an HTTPRoute or GRPCRoute).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyTarget {
    pub object: ObjectKey,
    pub section: Option<String>,
}

impl PolicyTarget {
    pub fn whole(object: ObjectKey) -> PolicyTarget {
        PolicyTarget {
            object,
            section: None,
        }
    }

    pub fn section(object: ObjectKey, section: &str) -> PolicyTarget {
        PolicyTarget {
            object,
            section: Some(section.to_string()),
        }
    }
}

impl std::fmt::Display for PolicyTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.section {
            None => write!(f, "{}", self.object),
            Some(s) => write!(f, "{} section {s}", self.object),
        }
    }
}

/// A Gateway: accepted with the listeners that take routes, or why not.
#[derive(Clone, Debug, PartialEq)]
pub enum GatewayVerdict {
    Accepted(GatewayListeners),
    /// Not accepted (or not served by trellis), with the condition's message.
    NotAccepted(String),
}

/// The listeners of an accepted Gateway, by name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GatewayListeners {
    /// Valid and not conflicted: they take routes. Of two with one name, the first.
    pub usable: Vec<String>,
    /// Usable listeners whose references do not resolve (a certificate Secret missing, not
    /// valid, or in another namespace without a ReferenceGrant), with why: they take routes
    /// but cannot be programmed, so nothing of those references may be served.
    pub unresolved: BTreeMap<String, String>,
}

/// The listeners of one Gateway that took a route.
#[derive(Clone, Debug, PartialEq)]
pub struct Attachment {
    pub gateway: ObjectKey,
    pub listeners: Vec<String>,
}

/// An Envoy Gateway policy: what it names, and whether it may be enforced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicyVerdict {
    /// The objects (or sections of them) it names that exist, through targetRefs and
    /// targetSelectors.
    pub targets: Vec<PolicyTarget>,
    /// Why its targets must not be served with it: invalid, or a reference that does not
    /// resolve. A policy that only lost its targets to an older one, or has none, is not
    /// refused: it applies nowhere.
    pub refused: Option<String>,
}

impl Resolution {
    /// The Gateway's listeners, or why it is not accepted.
    pub fn gateway(&self, key: &ObjectKey) -> Result<&GatewayListeners, String> {
        match self.gateways.get(key) {
            Some(GatewayVerdict::Accepted(listeners)) => Ok(listeners),
            Some(GatewayVerdict::NotAccepted(why)) => Err(why.clone()),
            None => Err("not validated".into()),
        }
    }

    /// The listeners of Gateway `gateway` that took route `route` (none when not attached).
    pub fn attached(&self, route: &ObjectKey, gateway: &ObjectKey) -> &[String] {
        self.attachments
            .get(route)
            .into_iter()
            .flatten()
            .find(|a| &a.gateway == gateway)
            .map(|a| a.listeners.as_slice())
            .unwrap_or_default()
    }

    /// The targets a policy names (empty for a policy never validated).
    pub fn targets(&self, policy: &ObjectKey) -> &[PolicyTarget] {
        self.policies
            .get(policy)
            .map(|p| p.targets.as_slice())
            .unwrap_or_default()
    }

    /// Why a policy must not be enforced as written; a policy never validated is refused.
    pub fn refused(&self, policy: &ObjectKey) -> Option<String> {
        match self.policies.get(policy) {
            Some(p) => p.refused.clone(),
            None => Some("not validated".into()),
        }
    }

    /// The policy of `kind` that owns `target` (a whole object or one of its sections).
    pub fn owner(&self, kind: &str, target: &PolicyTarget) -> Option<&ObjectKey> {
        self.owners.get(&(kind.to_string(), target.clone()))
    }

    /// The policies of `kind` that own `object` or one of its sections, with what they own.
    pub fn owners_within<'a>(
        &'a self,
        kind: &'a str,
        object: &'a ObjectKey,
    ) -> impl Iterator<Item = (&'a PolicyTarget, &'a ObjectKey)> {
        self.owners
            .range((kind.to_string(), PolicyTarget::whole(object.clone()))..)
            .take_while(move |((k, t), _)| k == kind && &t.object == object)
            .map(|((_, t), owner)| (t, owner))
    }

    /// The policy of `kind` that applies where `chain` says, most specific first (GEP-713: a
    /// route rule, its route, the listener, the Gateway): the owner of the first target of
    /// the chain that has one.
    pub fn applying<'a>(
        &self,
        kind: &str,
        chain: impl IntoIterator<Item = &'a PolicyTarget>,
    ) -> Option<&ObjectKey> {
        chain.into_iter().find_map(|t| self.owner(kind, t))
    }
}
