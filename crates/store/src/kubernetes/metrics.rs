//! What the Kubernetes source counts, for the components' `/metrics`: events and re-lists
//! per kind, watch errors, objects held, and the lag from a change's first event to the
//! snapshot that serves it.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Debug)]
pub struct SourceMetrics {
    pub events: Family<KindLabel, Counter>,
    pub relists: Family<KindLabel, Counter>,
    pub watch_errors: Family<KindLabel, Counter>,
    pub objects: Family<KindLabel, Gauge>,
    /// Objects named but not held: the kind is past its bound and no snapshot is served.
    pub objects_over_bound: Family<KindLabel, Gauge>,
    /// Seconds from the first event of a change to its snapshot being published.
    pub snapshot_lag: Histogram,
    pub snapshots_rejected: Counter,
}

impl Default for SourceMetrics {
    fn default() -> Self {
        SourceMetrics {
            events: Family::default(),
            relists: Family::default(),
            watch_errors: Family::default(),
            objects: Family::default(),
            objects_over_bound: Family::default(),
            snapshot_lag: Histogram::new([0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0]),
            snapshots_rejected: Counter::default(),
        }
    }
}

impl SourceMetrics {
    /// Adds them under `trellis_kube_`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("trellis_kube");
        r.register(
            "events",
            "Watch events received, by kind",
            self.events.clone(),
        );
        r.register(
            "relists",
            "Lists after the first (a 410 Gone, a reconnect), by kind",
            self.relists.clone(),
        );
        r.register(
            "watch_errors",
            "Failed lists and watches, by kind",
            self.watch_errors.clone(),
        );
        r.register("objects", "Objects held, by kind", self.objects.clone());
        r.register(
            "objects_over_bound",
            "Objects past the kind's bound, named but not held (no snapshot is served while any are)",
            self.objects_over_bound.clone(),
        );
        r.register(
            "snapshot_lag_seconds",
            "From a change's first watch event to the snapshot serving it",
            self.snapshot_lag.clone(),
        );
        r.register(
            "snapshots_rejected",
            "Snapshots with errors, not served (the last good one kept serving)",
            self.snapshots_rejected.clone(),
        );
    }

    pub fn kind(kind: &str) -> KindLabel {
        KindLabel {
            kind: kind.to_string(),
        }
    }
}
