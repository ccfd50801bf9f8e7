//! The provider boundary: where records are read from and changes applied to.
//!
//! A provider reads its current records (registry TXT records included) and applies a
//! [`Changes`]; a change that fails is reported as a [`Failure`] and the rest are still
//! applied. Errors say whether trying again later can help ([`Error::Retryable`]: 5xx,
//! 429, timeouts, unreachable servers) or not ([`Error::Permanent`]: 4xx, refused updates,
//! bad input), as ExternalDNS's webhook provider and kube-runtime's controllers decide.

use super::{Changes, Endpoint};

/// Boxed futures (providers are chosen at run time, `dyn Provider`) and the errors of a
/// provider call: those of the HTTP the providers speak.
pub use httpkit::{BoxFuture, Error};

/// One change that was not applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// `create`, `update` or `delete`.
    pub action: &'static str,
    pub endpoint: Endpoint,
    pub error: Error,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {}: {}",
            self.action, self.endpoint.record_type, self.endpoint.name, self.error
        )
    }
}

/// Every change of `changes` failed with the same error (a batch that went as one request).
pub fn all_failed(changes: &Changes, error: &Error) -> Vec<Failure> {
    changes
        .each()
        .map(|(action, e)| Failure {
            action,
            endpoint: e.clone(),
            error: error.clone(),
        })
        .collect()
}

/// A DNS provider, as ExternalDNS's `provider.Provider`.
pub trait Provider: Send + Sync {
    /// Every record the provider holds under its zones, registry TXT records included.
    fn records(&self) -> BoxFuture<'_, Result<Vec<Endpoint>, Error>>;

    /// Applies the changes; returns the ones that failed (empty when all were applied).
    fn apply<'a>(&'a self, changes: &'a Changes) -> BoxFuture<'a, Vec<Failure>>;

    /// Lets the provider normalise desired records before planning (ExternalDNS's
    /// `AdjustEndpoints`); by default they are kept as they are.
    fn adjust_endpoints(
        &self,
        desired: Vec<Endpoint>,
    ) -> BoxFuture<'_, Result<Vec<Endpoint>, Error>> {
        Box::pin(async move { Ok(desired) })
    }

    /// The domains this provider serves (what a webhook server answers to `GET /`); empty
    /// means all.
    fn domain_filter(&self) -> Vec<String> {
        Vec::new()
    }
}
