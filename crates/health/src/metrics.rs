//! Results as Gatus publishes them (its README, "Metrics"), so dashboards and the corpus's
//! KEDA query (`1 - min(gatus_results_endpoint_success{group="external"})`) work unchanged:
//! `gatus_results_total{key,group,name,type,success}`,
//! `gatus_results_code_total{key,group,name,type,code}`,
//! `gatus_results_connected_total`, `gatus_results_duration_seconds`,
//! `gatus_results_certificate_expiration_seconds` and `gatus_results_endpoint_success`
//! (`{key,group,name,type}`). Register them in a registry prefixed `gatus`.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::endpoints::Endpoint;
use crate::probe::Probed;

type Labels = [(&'static str, String); 4];
type Labels5 = [(&'static str, String); 5];

#[derive(Clone, Debug, Default)]
pub struct Metrics {
    results: Family<Labels5, Counter>,
    codes: Family<Labels5, Counter>,
    connected: Family<Labels, Counter>,
    duration: Family<Labels, Gauge<f64, AtomicU64>>,
    certificate_expiration: Family<Labels, Gauge<f64, AtomicU64>>,
    success: Family<Labels, Gauge>,
    /// The codes published per endpoint key, so that [`Metrics::forget`] finds their series.
    codes_seen: Arc<Mutex<HashMap<String, BTreeSet<String>>>>,
}

fn labels(e: &Endpoint) -> Labels {
    [
        ("key", e.key()),
        ("group", e.group.clone()),
        ("name", e.name.clone()),
        ("type", e.kind.as_str().to_string()),
    ]
}

fn with(l: &Labels, k: &'static str, v: String) -> Labels5 {
    [
        l[0].clone(),
        l[1].clone(),
        l[2].clone(),
        l[3].clone(),
        (k, v),
    ]
}

impl Metrics {
    /// Registers the families; give a registry made with `Registry::with_prefix("gatus")`.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "results",
            "Number of results per endpoint",
            self.results.clone(),
        );
        r.register(
            "results_code",
            "Total number of results by code",
            self.codes.clone(),
        );
        r.register(
            "results_connected",
            "Total number of results in which a connection was successfully established",
            self.connected.clone(),
        );
        r.register(
            "results_duration_seconds",
            "Duration of the request in seconds",
            self.duration.clone(),
        );
        r.register(
            "results_certificate_expiration_seconds",
            "Number of seconds until the certificate expires",
            self.certificate_expiration.clone(),
        );
        r.register(
            "results_endpoint_success",
            "Displays whether or not the endpoint was a success",
            self.success.clone(),
        );
    }

    /// Forgets one endpoint's series (it is gone, or changed and its results are stale).
    pub fn forget(&self, e: &Endpoint) {
        let l = labels(e);
        for success in ["true", "false"] {
            self.results.remove(&with(&l, "success", success.into()));
        }
        let codes = self
            .codes_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&e.key())
            .unwrap_or_default();
        for code in codes {
            self.codes.remove(&with(&l, "code", code));
        }
        self.connected.remove(&l);
        self.duration.remove(&l);
        self.certificate_expiration.remove(&l);
        self.success.remove(&l);
    }

    /// Records one result, as Gatus does: a code only when there was one, the certificate
    /// gauge only when a certificate was seen.
    pub fn publish(&self, e: &Endpoint, p: &Probed) {
        let l = labels(e);
        self.results
            .get_or_create(&with(&l, "success", p.success.to_string()))
            .inc();
        self.duration
            .get_or_create(&l)
            .set(p.outcome.duration.as_secs_f64());
        if p.outcome.connected {
            self.connected.get_or_create(&l).inc();
        }
        let code = if !p.outcome.dns_rcode.is_empty() {
            Some(p.outcome.dns_rcode.clone())
        } else {
            (p.outcome.status != 0).then(|| p.outcome.status.to_string())
        };
        if let Some(code) = code {
            self.codes_seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(e.key())
                .or_default()
                .insert(code.clone());
            self.codes.get_or_create(&with(&l, "code", code)).inc();
        }
        if p.outcome.certificate_expiration_ms != 0 {
            self.certificate_expiration
                .get_or_create(&l)
                .set(p.outcome.certificate_expiration_ms as f64 / 1000.0);
        }
        self.success.get_or_create(&l).set(i64::from(p.success));
    }
}
