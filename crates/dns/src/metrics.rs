//! DNS metrics, with CoreDNS's names so its dashboards and alerts keep working.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub proto: String,
    pub view: String,
    /// The query's record type (CoreDNS's `type` label).
    pub qtype: String,
}

/// The `type` label of a query: the record types CoreDNS's metrics name, `other` for the rest,
/// so that a client cannot make a series per type number (65,536 of them).
pub fn qtype_label(t: hickory_proto::rr::RecordType) -> &'static str {
    use hickory_proto::rr::RecordType as T;
    match t {
        T::A => "A",
        T::AAAA => "AAAA",
        T::ANY => "ANY",
        T::CNAME => "CNAME",
        T::DNSKEY => "DNSKEY",
        T::DS => "DS",
        T::HTTPS => "HTTPS",
        T::IXFR => "IXFR",
        T::AXFR => "AXFR",
        T::MX => "MX",
        T::NAPTR => "NAPTR",
        T::NS => "NS",
        T::NSEC => "NSEC",
        T::NSEC3 => "NSEC3",
        T::OPT => "OPT",
        T::PTR => "PTR",
        T::RRSIG => "RRSIG",
        T::SOA => "SOA",
        T::SRV => "SRV",
        T::SVCB => "SVCB",
        T::TXT => "TXT",
        _ => "other",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    pub rcode: String,
    pub view: String,
}

#[derive(Debug)]
pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub responses: Family<ResponseLabels, Counter>,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    /// Answers served from expired cache entries because no upstream answered (CoreDNS's
    /// `coredns_cache_served_stale_total`).
    pub cache_served_stale: Counter,
    pub forward_duration: Histogram,
    pub request_duration: Histogram,
    /// TCP connections closed because a message or its answer did not move within
    /// `server::TCP_MESSAGE_TIMEOUT`.
    pub tcp_timeouts: Counter,
    /// Failed accepts on the TCP listener (each followed by `server::ACCEPT_ERROR_BACKOFF`).
    pub tcp_accept_errors: Counter,
    /// Queries answered REFUSED because `forward::FORWARD_CONCURRENT_MAX` were being asked of
    /// the upstreams (CoreDNS's `coredns_forward_max_concurrent_rejects_total`).
    pub forward_max_concurrent_rejects: Counter,
    /// TCP connections closed on arrival because `server::TCP_CONNECTIONS_MAX` were open.
    pub tcp_connections_refused: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Family::default(),
            responses: Family::default(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            cache_served_stale: Counter::default(),
            forward_duration: Histogram::new(exponential_buckets(0.00025, 2.0, 16)),
            request_duration: Histogram::new(exponential_buckets(0.00001, 2.0, 20)),
            tcp_timeouts: Counter::default(),
            tcp_accept_errors: Counter::default(),
            forward_max_concurrent_rejects: Counter::default(),
            tcp_connections_refused: Counter::default(),
        }
    }
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("coredns");
        r.register(
            "dns_requests",
            "DNS requests by transport, record type and view",
            self.requests.clone(),
        );
        r.register(
            "dns_responses",
            "DNS responses by rcode and view",
            self.responses.clone(),
        );
        r.register(
            "cache_hits",
            "Forwarded queries answered from the cache",
            self.cache_hits.clone(),
        );
        r.register(
            "cache_misses",
            "Forwarded queries not in the cache",
            self.cache_misses.clone(),
        );
        r.register(
            "cache_served_stale",
            "Answers served from expired cache entries because no upstream answered",
            self.cache_served_stale.clone(),
        );
        r.register(
            "forward_request_duration_seconds",
            "Time upstreams took to answer",
            self.forward_duration.clone(),
        );
        r.register(
            "dns_request_duration_seconds",
            "Time to answer a query",
            self.request_duration.clone(),
        );
        r.register(
            "forward_max_concurrent_rejects",
            "Queries refused because max_concurrent were being forwarded",
            self.forward_max_concurrent_rejects.clone(),
        );
        // Limits CoreDNS has no metric for: trellis's own names.
        let t = registry.sub_registry_with_prefix("trellis_dns");
        t.register(
            "tcp_timeouts",
            "TCP connections closed because a message or its answer did not move in time",
            self.tcp_timeouts.clone(),
        );
        t.register(
            "tcp_accept_errors",
            "Failed accepts on the TCP listener",
            self.tcp_accept_errors.clone(),
        );
        t.register(
            "tcp_connections_refused",
            "TCP connections closed on arrival because the most allowed were open",
            self.tcp_connections_refused.clone(),
        );
    }

    pub fn observe_forward(&self, d: Duration) {
        self.forward_duration.observe(d.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_types_from_the_wire_make_a_bounded_label_set() {
        let labels: std::collections::BTreeSet<&str> = (0..=u16::MAX)
            .map(|t| qtype_label(hickory_proto::rr::RecordType::from(t)))
            .collect();
        assert!(labels.len() <= 24, "{labels:?}");
        assert!(labels.contains("A") && labels.contains("other"));
    }
}
