//! Flows as text: the one-line summary, `compact` (one line per flow, in the shape of
//! `hubble observe`), `table`, and protobuf JSON with Hubble's field names.

use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};

use crate::proto::flow::{
    DropReason, Endpoint, Flow, FlowType, L7FlowType, LostEvent, LostEventSource,
    TraceObservationPoint, Verdict, layer4, layer7,
};
use crate::proto::observer::{GetFlowsResponse, get_flows_response::ResponseTypes};

/// What the flow was about, in a few words (Hubble's `Summary`): `HTTP/1.1 200 3ms (GET
/// http://echo/)`, `DNS Answer "10.0.0.5" TTL: 5 (echo.default.svc.cluster.local. A)`,
/// `TCP Flags: SYN`, `POLICY_DENIED`.
pub fn summary(f: &Flow) -> String {
    if let Some(l7) = &f.l7 {
        match &l7.record {
            Some(layer7::Record::Http(h)) => {
                return format!(
                    "{} {} {}ms ({} {})",
                    h.protocol,
                    h.code,
                    l7.latency_ns / 1_000_000,
                    h.method,
                    h.url
                );
            }
            Some(layer7::Record::Dns(d)) => {
                let what = format!("{} {}", d.query, d.qtypes.join(","));
                return if d.rcode != 0 {
                    format!(
                        "DNS Answer RCode: {} ({what})",
                        crate::metrics::rcode_name(d.rcode)
                    )
                } else if d.ips.is_empty() && d.cnames.is_empty() {
                    format!("DNS Answer TTL: {} ({what})", d.ttl)
                } else {
                    let mut all = d.ips.clone();
                    all.extend(d.cnames.iter().cloned());
                    format!("DNS Answer \"{}\" TTL: {} ({what})", all.join(","), d.ttl)
                };
            }
            None => {}
        }
    }
    if f.verdict == Verdict::Dropped as i32 {
        return DropReason::try_from(f.drop_reason_desc).map_or_else(
            |_| format!("drop reason {}", f.drop_reason_desc),
            |r| r.as_str_name().to_string(),
        );
    }
    match f.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        Some(layer4::Protocol::Tcp(t)) => {
            let mut flags = Vec::new();
            if let Some(fl) = &t.flags {
                for (on, name) in [
                    (fl.syn, "SYN"),
                    (fl.ack, "ACK"),
                    (fl.fin, "FIN"),
                    (fl.rst, "RST"),
                    (fl.psh, "PSH"),
                    (fl.urg, "URG"),
                    (fl.ece, "ECE"),
                    (fl.cwr, "CWR"),
                    (fl.ns, "NS"),
                ] {
                    if on {
                        flags.push(name);
                    }
                }
            }
            format!("TCP Flags: {}", flags.join(", "))
        }
        Some(layer4::Protocol::Udp(_)) => "UDP".into(),
        Some(layer4::Protocol::Sctp(_)) => "SCTP".into(),
        Some(layer4::Protocol::IcmPv4(i)) => format!("ICMPv4 type {} code {}", i.r#type, i.code),
        Some(layer4::Protocol::IcmPv6(i)) => format!("ICMPv6 type {} code {}", i.r#type, i.code),
        None => String::new(),
    }
}

/// `namespace/pod:port`, else `ip:port` (brackets around IPv6), plus the identity or
/// `(world)` / `(host)` when known.
fn endpoint_text(ip: &str, port: Option<u32>, ep: Option<&Endpoint>) -> String {
    let name = match ep {
        Some(e) if !e.pod_name.is_empty() => format!("{}/{}", e.namespace, e.pod_name),
        _ if ip.contains(':') => format!("[{ip}]"),
        _ => ip.to_string(),
    };
    let mut out = match port {
        Some(p) if p != 0 => format!("{name}:{p}"),
        _ => name,
    };
    if let Some(e) = ep {
        if e.identity != 0 {
            out.push_str(&format!(" (ID:{})", e.identity));
        } else if let Some(r) = e.labels.iter().find_map(|l| l.strip_prefix("reserved:")) {
            out.push_str(&format!(" ({r})"));
        }
    }
    out
}

/// `http-request`, `dns-response`, `to-endpoint`, `drop`, ...
pub fn type_text(f: &Flow) -> String {
    if f.r#type == FlowType::L7 as i32
        && let Some(l7) = &f.l7
    {
        let kind = match l7.record {
            Some(layer7::Record::Http(_)) => "http",
            Some(layer7::Record::Dns(_)) => "dns",
            None => "l7",
        };
        let dir = match L7FlowType::try_from(l7.r#type) {
            Ok(L7FlowType::Request) => "request",
            Ok(L7FlowType::Response) => "response",
            Ok(L7FlowType::Sample) => "sample",
            _ => "unknown",
        };
        return format!("{kind}-{dir}");
    }
    if is_policy_verdict(f) {
        let m = match f.policy_match_type {
            1 => "L3-Only",
            2 => "L3-L4",
            3 => "L4-Only",
            4 => "all",
            5 => "L3-Proto",
            6 => "Proto-Only",
            _ => "none",
        };
        let dir = crate::proto::flow::TrafficDirection::try_from(f.traffic_direction)
            .map_or("TRAFFIC_DIRECTION_UNKNOWN", |d| d.as_str_name());
        return format!("policy-verdict:{m} {dir}");
    }
    if f.verdict == Verdict::Dropped as i32 {
        return "drop".into();
    }
    match TraceObservationPoint::try_from(f.trace_observation_point) {
        Ok(p) if p != TraceObservationPoint::UnknownPoint => {
            p.as_str_name().to_ascii_lowercase().replace('_', "-")
        }
        _ => "trace".into(),
    }
}

fn addresses(f: &Flow) -> (String, String) {
    let (sp, dp) = match f.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        Some(layer4::Protocol::Tcp(t)) => (Some(t.source_port), Some(t.destination_port)),
        Some(layer4::Protocol::Udp(u)) => (Some(u.source_port), Some(u.destination_port)),
        Some(layer4::Protocol::Sctp(s)) => (Some(s.source_port), Some(s.destination_port)),
        _ => (None, None),
    };
    let (sip, dip) =
        f.ip.as_ref()
            .map_or(("", ""), |i| (i.source.as_str(), i.destination.as_str()));
    (
        endpoint_text(sip, sp, f.source.as_ref()),
        endpoint_text(dip, dp, f.destination.as_ref()),
    )
}

/// A policy verdict event (Cilium's monitor type 5).
fn is_policy_verdict(f: &Flow) -> bool {
    f.event_type.as_ref().is_some_and(|e| e.r#type == 5)
}

fn verdict_text(f: &Flow) -> &'static str {
    // Hubble reads a policy verdict as ALLOWED or DENIED.
    match Verdict::try_from(f.verdict) {
        Ok(Verdict::Forwarded) if is_policy_verdict(f) => "ALLOWED",
        Ok(Verdict::Dropped) if is_policy_verdict(f) => "DENIED",
        v => v.map_or("UNKNOWN", |v| v.as_str_name()),
    }
}

fn summary_or_computed(f: &Flow) -> String {
    if f.summary.is_empty() {
        summary(f)
    } else {
        f.summary.clone()
    }
}

/// One line per flow, like `hubble observe -o compact`:
/// `Nov 26 10:35:54.123 [node]: 203.0.113.7:40000 (world) -> default/echo-1:8080
/// http-response FORWARDED (HTTP/1.1 200 1ms (GET http://echo/))`.
pub fn compact(f: &Flow) -> String {
    let time = f
        .time
        .as_ref()
        .map(crate::time::compact)
        .unwrap_or_default();
    let (src, dst) = addresses(f);
    let (arrow, a, b) = if f.is_reply == Some(true) {
        ("<-", dst, src)
    } else {
        ("->", src, dst)
    };
    let node = if f.node_name.is_empty() {
        String::new()
    } else {
        format!(" [{}]", f.node_name)
    };
    format!(
        "{time}{node}: {a} {arrow} {b} {} {} ({})",
        type_text(f),
        verdict_text(f),
        summary_or_computed(f)
    )
}

/// How a `LostEvent` reads in compact and table output.
pub fn lost_text(l: &LostEvent) -> String {
    let source = LostEventSource::try_from(l.source)
        .map_or("UNKNOWN_LOST_EVENT_SOURCE", |s| s.as_str_name());
    format!("EVENTS LOST: {source} lost {} events", l.num_events_lost)
}

/// The header of [`table_row`].
pub fn table_header() -> String {
    format!(
        "{:<21} {:<36} {:<36} {:<14} {:<10} SUMMARY",
        "TIMESTAMP", "SOURCE", "DESTINATION", "TYPE", "VERDICT"
    )
}

/// The columns of a flow in a table (`-o table`, the web UI's flow table).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub time: String,
    pub source: String,
    pub destination: String,
    pub r#type: String,
    pub verdict: &'static str,
    pub summary: String,
}

pub fn row(f: &Flow) -> Row {
    let (source, destination) = addresses(f);
    Row {
        time: f
            .time
            .as_ref()
            .map(crate::time::compact)
            .unwrap_or_default(),
        source,
        destination,
        r#type: type_text(f),
        verdict: verdict_text(f),
        summary: summary_or_computed(f),
    }
}

/// One row of `-o table` (fixed columns, so rows line up while streaming).
pub fn table_row(f: &Flow) -> String {
    let r = row(f);
    format!(
        "{:<21} {:<36} {:<36} {:<14} {:<10} {}",
        r.time, r.source, r.destination, r.r#type, r.verdict, r.summary
    )
}

/// A response as one line of text in `compact` or `table` form.
pub fn response_line(r: &GetFlowsResponse, table: bool) -> Option<String> {
    match r.response_types.as_ref()? {
        ResponseTypes::Flow(f) => Some(if table { table_row(f) } else { compact(f) }),
        ResponseTypes::LostEvents(l) => Some(lost_text(l)),
        ResponseTypes::NodeStatus(n) => Some(format!("NODE STATUS: {}", n.message)),
    }
}

/// Protobuf JSON with the proto field names (what `hubble observe -o json` prints).
#[derive(Debug)]
pub struct Json {
    pool: DescriptorPool,
}

impl Json {
    pub fn new() -> Result<Json, prost_reflect::DescriptorError> {
        Ok(Json {
            pool: DescriptorPool::decode(crate::proto::DESCRIPTOR_SET)?,
        })
    }

    /// `message` (full name, e.g. `observer.GetFlowsResponse`) as JSON.
    pub fn encode(
        &self,
        full_name: &str,
        message: &impl prost::Message,
    ) -> Result<serde_json::Value, String> {
        let desc = self
            .pool
            .get_message_by_name(full_name)
            .ok_or_else(|| format!("no message {full_name} in the descriptors"))?;
        let dynamic = DynamicMessage::decode(desc, message.encode_to_vec().as_slice())
            .map_err(|e| e.to_string())?;
        let opts = SerializeOptions::new().use_proto_field_name(true);
        dynamic
            .serialize_with_options(serde_json::value::Serializer, &opts)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::flow::{Http, Ip, Layer4, Layer7, Tcp};

    fn http_flow() -> Flow {
        Flow {
            time: Some(prost_types::Timestamp {
                seconds: 1_795_689_354,
                nanos: 123_000_000,
            }),
            verdict: Verdict::Forwarded as i32,
            r#type: FlowType::L7 as i32,
            ip: Some(Ip {
                source: "203.0.113.7".into(),
                destination: "10.0.0.5".into(),
                ip_version: 1,
                ..Default::default()
            }),
            l4: Some(Layer4 {
                protocol: Some(layer4::Protocol::Tcp(Tcp {
                    source_port: 40000,
                    destination_port: 8080,
                    flags: None,
                })),
            }),
            source: Some(Endpoint {
                labels: vec!["reserved:world".into()],
                ..Default::default()
            }),
            destination: Some(Endpoint {
                namespace: "default".into(),
                pod_name: "echo-1".into(),
                ..Default::default()
            }),
            l7: Some(Layer7 {
                r#type: L7FlowType::Response as i32,
                latency_ns: 3_400_000,
                record: Some(layer7::Record::Http(Http {
                    code: 200,
                    method: "GET".into(),
                    url: "http://echo.example/".into(),
                    protocol: "HTTP/1.1".into(),
                    headers: vec![],
                })),
            }),
            node_name: "node-a".into(),
            ..Default::default()
        }
    }

    #[test]
    fn compact_line_reads_like_hubble() {
        assert_eq!(
            compact(&http_flow()),
            "Nov 26 10:35:54.123 [node-a]: 203.0.113.7:40000 (world) -> default/echo-1:8080 \
             http-response FORWARDED (HTTP/1.1 200 3ms (GET http://echo.example/))"
        );
    }

    #[test]
    fn json_uses_proto_names_and_enum_names() {
        let json = Json::new().expect("descriptors decode");
        let v = json
            .encode("flow.Flow", &http_flow())
            .expect("encodes as JSON");
        assert_eq!(v["verdict"], "FORWARDED");
        assert_eq!(v["Type"], "L7");
        assert_eq!(v["IP"]["ipVersion"], "IPv4");
        assert_eq!(v["l4"]["TCP"]["destination_port"], 8080);
        assert_eq!(v["l7"]["http"]["code"], 200);
        assert_eq!(v["time"], "2026-11-26T10:35:54.123Z");
    }
}
