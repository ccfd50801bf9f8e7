//! Flow metrics with Hubble's names and labels, so Hubble's dashboards and alerts read
//! trellis: `hubble_flows_processed_total`, `hubble_lost_events_total`,
//! `hubble_http_requests_total`, `hubble_http_request_duration_seconds`,
//! `hubble_dns_queries_total`, `hubble_dns_responses_total`, `hubble_drop_total`.
//!
//! They are counted where flows enter the buffer (off the producers' path), from the flows
//! themselves, so every producer is counted the same way. Label values come from fixed
//! lists (methods, record types, rcodes) so a client cannot grow the label space.

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::proto::flow::{Flow, FlowType, LostEventSource, Verdict, layer4, layer7};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlowLabels {
    pub r#type: &'static str,
    pub subtype: &'static str,
    pub verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LostLabels {
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: &'static str,
    pub protocol: &'static str,
    pub status: u16,
    pub reporter: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpDurationLabels {
    pub method: &'static str,
    pub reporter: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsLabels {
    pub rcode: &'static str,
    pub qtypes: &'static str,
    pub ips_returned: &'static str,
}

/// `hubble_policy_verdicts_total`'s labels, as Hubble's `policy` metric names them.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    pub direction: &'static str,
    pub r#match: &'static str,
    pub action: &'static str,
}

/// Hubble's name of a `policy_match_type`, lower case as its metric labels it.
pub fn match_label(m: u32) -> &'static str {
    match m {
        1 => "l3-only",
        2 => "l3-l4",
        3 => "l4-only",
        4 => "all",
        5 => "l3-proto",
        6 => "proto-only",
        _ => "none",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    pub reason: &'static str,
    pub protocol: &'static str,
}

/// HTTP methods with a label of their own (the others are `other`), and the index a producer
/// can count by ([`Batch::http_indexed`]).
pub const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];
/// HTTP versions as Hubble labels them (the others are `other`).
pub const PROTOCOLS: [&str; 4] = ["HTTP/1.0", "HTTP/1.1", "HTTP/2", "HTTP/3"];

/// The index of a method in [`METHODS`] (any case).
#[inline]
pub fn method_index(m: &str) -> Option<u8> {
    let i = METHODS.iter().position(|k| k.eq_ignore_ascii_case(m))?;
    u8::try_from(i).ok()
}

/// The index of a version in [`PROTOCOLS`] (`HTTP/2.0` is `HTTP/2`).
#[inline]
pub fn protocol_index(p: &str) -> Option<u8> {
    let p = if p == "HTTP/2.0" { "HTTP/2" } else { p };
    let i = PROTOCOLS.iter().position(|k| *k == p)?;
    u8::try_from(i).ok()
}

/// Buckets of `hubble_http_request_duration_seconds`: 0.1 ms doubling up to ~13 s, then
/// +Inf. (Hubble's start at 5 ms; a proxy on a LAN answers in less.)
const DURATION_BUCKETS: usize = 18;
const DURATION_FIRST_NS: u64 = 100_000;

/// The bucket of a duration: the first whose bound is at least it.
fn duration_bucket(ns: u64) -> usize {
    // ns <= FIRST * 2^i  <=>  (ns - 1) / FIRST < 2^i.
    let q = ns.saturating_sub(1) / DURATION_FIRST_NS;
    usize::try_from(u64::BITS - q.leading_zeros())
        .unwrap_or(DURATION_BUCKETS)
        .min(DURATION_BUCKETS)
}

/// Observations of a duration histogram not yet added to it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct DurationCounts {
    sum_ns: u128,
    count: u64,
    /// Per bucket, not cumulative; the last is +Inf.
    buckets: [u64; DURATION_BUCKETS + 1],
}

impl DurationCounts {
    fn observe(&mut self, ns: u64) {
        self.sum_ns += u128::from(ns);
        self.count += 1;
        self.buckets[duration_bucket(ns)] += 1;
    }
}

/// A duration histogram counted in batches: observations are gathered by the [`Batch`] and
/// added under one lock, instead of a lock per observation.
#[derive(Clone, Debug, Default)]
pub struct DurationHistogram(Arc<Mutex<DurationCounts>>);

impl DurationHistogram {
    fn add(&self, c: &DurationCounts) {
        let mut h = self.0.lock().unwrap_or_else(|e| e.into_inner());
        h.sum_ns += c.sum_ns;
        h.count += c.count;
        for (a, b) in h.buckets.iter_mut().zip(c.buckets) {
            *a += b;
        }
    }
}

impl TypedMetric for DurationHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for DurationHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let h = *self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut bound = DURATION_FIRST_NS as f64 / 1e9;
        let mut buckets = [(0.0, 0); DURATION_BUCKETS + 1];
        for (i, (b, n)) in buckets.iter_mut().enumerate() {
            *b = if i == DURATION_BUCKETS {
                f64::INFINITY
            } else {
                bound
            };
            *n = h.buckets[i];
            bound *= 2.0;
        }
        encoder.encode_histogram::<NoLabelSet>(h.sum_ns as f64 / 1e9, h.count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// What picks an HTTP series: method and protocol indices (`None`: `other`), status.
type HttpKey = (Option<u8>, Option<u8>, u16);
/// The series a batch counts HTTP exchanges in: its key, counter, histogram.
type HttpSeries = (HttpKey, Counter, DurationHistogram);

/// The flow metrics of one process.
#[derive(Debug)]
pub struct Metrics {
    pub flows_processed: Family<FlowLabels, Counter>,
    pub lost_events: Family<LostLabels, Counter>,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: Family<HttpDurationLabels, DurationHistogram>,
    pub dns_queries: Family<DnsLabels, Counter>,
    pub dns_responses: Family<DnsLabels, Counter>,
    pub drops: Family<DropLabels, Counter>,
    pub policy_verdicts: Family<PolicyLabels, Counter>,
    /// The series the last flow and the last HTTP exchange were counted in: most repeat them,
    /// and then counting is an atomic add instead of a hashed lookup.
    last_processed: Mutex<Option<(FlowLabels, Counter)>>,
    last_http: Mutex<Option<HttpSeries>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            flows_processed: Family::default(),
            lost_events: Family::default(),
            http_requests: Family::default(),
            http_duration: Family::default(),
            dns_queries: Family::default(),
            dns_responses: Family::default(),
            drops: Family::default(),
            policy_verdicts: Family::default(),
            last_processed: Mutex::new(None),
            last_http: Mutex::new(None),
        }
    }
}

/// See [`Metrics::batch`]; the counts are added when it is dropped.
pub struct Batch<'a> {
    metrics: &'a Metrics,
    processed: std::sync::MutexGuard<'a, Option<(FlowLabels, Counter)>>,
    /// Counts not yet added to the series in `processed`.
    processed_n: u64,
    http: std::sync::MutexGuard<'a, Option<HttpSeries>>,
    durations: DurationCounts,
}

impl Batch<'_> {
    /// [`Metrics::flow`].
    pub fn flow(&mut self, f: &Flow) {
        let verdict = Verdict::try_from(f.verdict).unwrap_or(Verdict::Unknown);
        let (r#type, subtype) = flow_type_label(f);
        self.processed(r#type, subtype, verdict);
        let reason = crate::proto::flow::DropReason::try_from(f.drop_reason_desc).ok();
        if verdict == Verdict::Dropped {
            self.dropped(reason.map_or("other", |r| r.as_str_name()), l4_label(f));
        }
        // A policy decision: a verdict event, or a drop by policy (the datapath does not send
        // a verdict event beside its drop, as Cilium does; it counts the same).
        use crate::proto::flow::DropReason as R;
        if f.event_type.as_ref().is_some_and(|e| e.r#type == 5)
            || (verdict == Verdict::Dropped
                && matches!(reason, Some(R::PolicyDenied | R::PolicyDeny)))
        {
            self.policy_verdict(
                crate::proto::flow::TrafficDirection::try_from(f.traffic_direction)
                    .unwrap_or(crate::proto::flow::TrafficDirection::Unknown),
                f.policy_match_type,
                verdict,
            );
        }
        let m = self.metrics;
        let Some(l7) = &f.l7 else { return };
        match &l7.record {
            Some(layer7::Record::Http(h)) => {
                self.http(&h.method, &h.protocol, h.code, l7.latency_ns);
            }
            Some(layer7::Record::Dns(d)) => {
                let labels = DnsLabels {
                    rcode: rcode_name(d.rcode),
                    qtypes: d.qtypes.first().map_or("", |q| qtype_label(q)),
                    ips_returned: match d.ips.len() {
                        0 => "0",
                        1 => "1",
                        2 => "2",
                        3 => "3",
                        _ => "4+",
                    },
                };
                m.dns_queries.get_or_create(&labels).inc();
                m.dns_responses.get_or_create(&labels).inc();
            }
            None => {}
        }
    }

    /// Counts one flow in `hubble_flows_processed_total`.
    /// Counts one dropped packet in `hubble_drop_total`.
    pub fn dropped(&mut self, reason: &'static str, protocol: &'static str) {
        self.metrics
            .drops
            .get_or_create(&DropLabels { reason, protocol })
            .inc();
    }

    /// Counts one policy decision in `hubble_policy_verdicts_total`: its direction, Hubble's
    /// match type and the verdict.
    pub fn policy_verdict(
        &mut self,
        direction: crate::proto::flow::TrafficDirection,
        match_type: u32,
        verdict: Verdict,
    ) {
        use crate::proto::flow::TrafficDirection as D;
        self.metrics
            .policy_verdicts
            .get_or_create(&PolicyLabels {
                direction: match direction {
                    D::Ingress => "ingress",
                    D::Egress => "egress",
                    D::Unknown => "unknown",
                },
                r#match: match_label(match_type),
                action: match verdict {
                    Verdict::Forwarded => "forwarded",
                    Verdict::Dropped => "dropped",
                    Verdict::Audit => "audit",
                    Verdict::Redirected => "redirected",
                    _ => "unknown",
                },
            })
            .inc();
    }

    pub fn processed(&mut self, r#type: &'static str, subtype: &'static str, verdict: Verdict) {
        let labels = FlowLabels {
            r#type,
            subtype,
            verdict: verdict.as_str_name(),
        };
        // Label values are static strings from fixed lists: the same value is the same
        // pointer almost always, so compare those before the text.
        let same = |a: &str, b: &str| std::ptr::eq(a, b) || a == b;
        let held = |l: &FlowLabels| {
            same(l.r#type, labels.r#type)
                && same(l.subtype, labels.subtype)
                && same(l.verdict, labels.verdict)
        };
        if !matches!(&*self.processed, Some((l, _)) if held(l)) {
            self.flush_processed();
            let c = self.metrics.flows_processed.get_or_create(&labels).clone();
            *self.processed = Some((labels, c));
        }
        self.processed_n += 1;
    }

    /// Counts one HTTP exchange (`hubble_http_requests_total` and its duration).
    pub fn http(&mut self, method: &str, protocol: &str, code: u32, latency_ns: u64) {
        self.http_indexed(
            method_index(method),
            protocol_index(protocol),
            code,
            latency_ns,
        );
    }

    /// [`Batch::http`] by [`method_index`] and [`protocol_index`] (`None`: `other`).
    pub fn http_indexed(
        &mut self,
        method: Option<u8>,
        protocol: Option<u8>,
        code: u32,
        latency_ns: u64,
    ) {
        let key = (method, protocol, u16::try_from(code.min(999)).unwrap_or(0));
        if !matches!(&*self.http, Some((k, ..)) if *k == key) {
            self.flush_http();
            let label = |table: &[&'static str], i: Option<u8>| {
                i.and_then(|i| table.get(usize::from(i)).copied())
                    .unwrap_or("other")
            };
            let method = label(&METHODS, method);
            let labels = HttpLabels {
                method,
                protocol: label(&PROTOCOLS, protocol),
                status: key.2,
                reporter: "server",
            };
            let m = self.metrics;
            let requests = m.http_requests.get_or_create(&labels).clone();
            let duration = m
                .http_duration
                .get_or_create(&HttpDurationLabels {
                    method,
                    reporter: "server",
                })
                .clone();
            *self.http = Some((key, requests, duration));
        }
        self.durations.observe(latency_ns);
    }

    fn flush_processed(&mut self) {
        if let Some((_, c)) = &*self.processed
            && self.processed_n > 0
        {
            c.inc_by(self.processed_n);
        }
        self.processed_n = 0;
    }

    fn flush_http(&mut self) {
        if let Some((_, requests, duration)) = &*self.http
            && self.durations.count > 0
        {
            requests.inc_by(self.durations.count);
            duration.add(&self.durations);
        }
        self.durations = DurationCounts::default();
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        self.flush_processed();
        self.flush_http();
    }
}

/// Lost-event sources as Hubble labels them.
pub fn lost_source_label(s: LostEventSource) -> &'static str {
    match s {
        LostEventSource::PerfEventRingBuffer => "perf_event_ring_buffer",
        LostEventSource::ObserverEventsQueue => "observer_events_queue",
        LostEventSource::HubbleRingBuffer => "hubble_ring_buffer",
        LostEventSource::UnknownLostEventSource => "unknown",
    }
}

fn qtype_label(q: &str) -> &'static str {
    const TYPES: [&str; 16] = [
        "A", "AAAA", "CNAME", "MX", "NS", "PTR", "SOA", "SRV", "TXT", "CAA", "HTTPS", "SVCB",
        "ANY", "DS", "DNSKEY", "NAPTR",
    ];
    TYPES.iter().find(|k| **k == q).copied().unwrap_or("other")
}

/// An rcode by its mnemonic (RFC 6895's names), else `other`.
pub fn rcode_name(r: u32) -> &'static str {
    match r {
        0 => "No Error",
        1 => "Format Error",
        2 => "Server Failure",
        3 => "Non-Existent Domain",
        4 => "Not Implemented",
        5 => "Query Refused",
        _ => "other",
    }
}

/// The protocol of a flow's L4 header, as `hubble_drop_total` labels it.
/// The label of an IP protocol number, as [`l4_label`] names a flow's.
pub fn proto_label(proto: u8) -> &'static str {
    match proto {
        6 => "TCP",
        17 => "UDP",
        1 => "ICMPv4",
        58 => "ICMPv6",
        132 => "SCTP",
        _ => "Unknown",
    }
}

fn l4_label(f: &Flow) -> &'static str {
    match f.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        Some(layer4::Protocol::Tcp(_)) => "TCP",
        Some(layer4::Protocol::Udp(_)) => "UDP",
        Some(layer4::Protocol::IcmPv4(_)) => "ICMPv4",
        Some(layer4::Protocol::IcmPv6(_)) => "ICMPv6",
        Some(layer4::Protocol::Sctp(_)) => "SCTP",
        None => "Unknown",
    }
}

/// `type` of `hubble_flows_processed_total`: Hubble names it by the monitor event type.
fn flow_type_label(f: &Flow) -> (&'static str, &'static str) {
    let t = f.event_type.as_ref().map_or(0, |e| e.r#type);
    match FlowType::try_from(f.r#type).unwrap_or(FlowType::UnknownType) {
        FlowType::L7 => match f.l7.as_ref().and_then(|l| l.record.as_ref()) {
            Some(layer7::Record::Http(_)) => ("L7", "HTTP"),
            Some(layer7::Record::Dns(_)) => ("L7", "DNS"),
            None => ("L7", ""),
        },
        FlowType::Sock => ("Sock", ""),
        _ => match t {
            1 => ("Drop", ""),
            5 => ("PolicyVerdict", ""),
            _ => ("Trace", ""),
        },
    }
}

impl Metrics {
    /// Counts one flow entering the buffer.
    pub fn flow(&self, f: &Flow) {
        self.batch().flow(f);
    }

    /// Counting for many flows or records at once: the series last counted in are held for
    /// the whole batch, and repeated counts are added once at its end.
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            metrics: self,
            processed: self
                .last_processed
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
            processed_n: 0,
            http: self.last_http.lock().unwrap_or_else(|e| e.into_inner()),
            durations: DurationCounts::default(),
        }
    }

    /// Counts events lost at `source`.
    pub fn lost(&self, source: LostEventSource, n: u64) {
        self.lost_events
            .get_or_create(&LostLabels {
                source: lost_source_label(source),
            })
            .inc_by(n);
    }

    /// Registers every metric under Hubble's names.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "hubble_flows_processed",
            "Flows processed, by type, subtype and verdict",
            self.flows_processed.clone(),
        );
        r.register(
            "hubble_lost_events",
            "Events lost before or inside the flow buffer, by where they were lost",
            self.lost_events.clone(),
        );
        r.register(
            "hubble_http_requests",
            "HTTP requests, by method, protocol and status",
            self.http_requests.clone(),
        );
        r.register(
            "hubble_http_request_duration_seconds",
            "Time from request to response headers",
            self.http_duration.clone(),
        );
        r.register(
            "hubble_dns_queries",
            "DNS queries, by rcode, query type and number of addresses returned",
            self.dns_queries.clone(),
        );
        r.register(
            "hubble_dns_responses",
            "DNS responses, by rcode, query type and number of addresses returned",
            self.dns_responses.clone(),
        );
        r.register(
            "hubble_drop",
            "Dropped packets, by reason and protocol",
            self.drops.clone(),
        );
        r.register(
            "hubble_policy_verdicts",
            "Network policy verdicts, by direction, match type and action",
            self.policy_verdicts.clone(),
        );
    }
}

/// Every metric name [`Metrics::register`] exports, as it appears in the exposition (with
/// `_total` on counters and the histogram's series), for dashboards' tests.
pub const EXPORTED: &[&str] = &[
    "hubble_flows_processed_total",
    "hubble_lost_events_total",
    "hubble_http_requests_total",
    "hubble_http_request_duration_seconds_bucket",
    "hubble_http_request_duration_seconds_sum",
    "hubble_http_request_duration_seconds_count",
    "hubble_dns_queries_total",
    "hubble_dns_responses_total",
    "hubble_drop_total",
    "hubble_policy_verdicts_total",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::flow::{Dns, Http, Layer7};

    /// [`EXPORTED`] is exactly what the registry shows once every kind of flow went by.
    #[test]
    fn exported_lists_every_series_name() {
        let m = Metrics::default();
        let l7 = |record| Flow {
            verdict: Verdict::Forwarded as i32,
            r#type: FlowType::L7 as i32,
            l7: Some(Layer7 {
                r#type: 2,
                latency_ns: 1000,
                record: Some(record),
            }),
            ..Default::default()
        };
        m.flow(&l7(layer7::Record::Http(Http {
            code: 200,
            method: "GET".into(),
            ..Default::default()
        })));
        m.flow(&l7(layer7::Record::Dns(Dns::default())));
        m.flow(&Flow {
            verdict: Verdict::Dropped as i32,
            ..Default::default()
        });
        m.flow(&Flow {
            verdict: Verdict::Forwarded as i32,
            event_type: Some(crate::proto::flow::CiliumEventType {
                r#type: 5,
                sub_type: 0,
            }),
            ..Default::default()
        });
        m.lost(LostEventSource::ObserverEventsQueue, 1);
        let mut r = Registry::default();
        m.register(&mut r);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).expect("encodes");
        let mut names: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| l.split(['{', ' ']).next())
            .collect();
        names.sort_unstable();
        names.dedup();
        let mut want = EXPORTED.to_vec();
        want.sort_unstable();
        assert_eq!(names, want);
    }

    #[test]
    fn a_duration_lands_in_the_first_bucket_whose_bound_holds_it() {
        let ms = 1_000_000;
        for (ns, bucket) in [
            (0, 0),
            (100_000, 0),
            (100_001, 1),
            (200_000, 1),
            (200_001, 2),
            (3 * ms, 5),
            (DURATION_FIRST_NS << 17, 17),
            ((DURATION_FIRST_NS << 17) + 1, 18),
            (u64::MAX, 18),
        ] {
            assert_eq!(duration_bucket(ns), bucket, "{ns} ns");
        }
    }

    #[test]
    fn batched_http_counts_add_up_in_the_text_exposition() {
        let m = Metrics::default();
        {
            let mut b = m.batch();
            b.http("GET", "HTTP/1.1", 200, 50_000);
            b.http("get", "HTTP/1.1", 200, 300_000);
            b.http("POST", "HTTP/2.0", 503, 2_000_000);
            b.http("BREW", "HTTP/9", 200, 1);
        }
        // A second batch continues the same series.
        m.batch().http("GET", "HTTP/1.1", 200, 150_000);
        let mut r = Registry::default();
        m.register(&mut r);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).expect("encodes");
        for line in [
            r#"hubble_http_requests_total{method="GET",protocol="HTTP/1.1",status="200",reporter="server"} 3"#,
            r#"hubble_http_requests_total{method="POST",protocol="HTTP/2",status="503",reporter="server"} 1"#,
            r#"hubble_http_requests_total{method="other",protocol="other",status="200",reporter="server"} 1"#,
            r#"hubble_http_request_duration_seconds_count{method="GET",reporter="server"} 3"#,
            r#"hubble_http_request_duration_seconds_sum{method="GET",reporter="server"} 0.0005"#,
            r#"hubble_http_request_duration_seconds_bucket{le="0.0001",method="GET",reporter="server"} 1"#,
            r#"hubble_http_request_duration_seconds_bucket{le="0.0002",method="GET",reporter="server"} 2"#,
            r#"hubble_http_request_duration_seconds_bucket{le="0.0004",method="GET",reporter="server"} 3"#,
            r#"hubble_http_request_duration_seconds_bucket{le="+Inf",method="GET",reporter="server"} 3"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
