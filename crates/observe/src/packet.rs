//! L3/L4 flows from the datapath: what a BPF ring buffer reader decodes each record into
//! ([`PacketEvent`], plain values mirroring the datapath's C event struct), and the flow it
//! makes. The reader then calls [`crate::Flows::push`] per event and
//! [`crate::Flows::lost`] with `PERF_EVENT_RING_BUFFER` for what the kernel could not queue.

use std::net::IpAddr;
use std::time::SystemTime;

use crate::endpoints::Endpoints;
use crate::proto::flow::{
    CiliumEventType, Flow, FlowType, IcmPv4, IcmPv6, Ip, IpVersion, Layer4, NetworkInterface, Tcp,
    TcpFlags, TraceObservationPoint, Udp, Verdict, layer4,
};

/// What kind of datapath event (Cilium's monitor message types, so Hubble filters by
/// `event_type` work unchanged).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A packet was dropped (monitor type 1).
    Drop,
    /// A packet passed an observation point, e.g. a new connection (monitor type 4).
    Trace,
    /// A policy decision (monitor type 5).
    PolicyVerdict,
}

impl EventKind {
    pub fn monitor_type(self) -> i32 {
        match self {
            EventKind::Drop => 1,
            EventKind::Trace => 4,
            EventKind::PolicyVerdict => 5,
        }
    }
}

/// The L4 header of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    /// `flags` as in the TCP header: FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10,
    /// URG 0x20, ECE 0x40, CWR 0x80.
    Tcp {
        source_port: u16,
        destination_port: u16,
        flags: u8,
    },
    Udp {
        source_port: u16,
        destination_port: u16,
    },
    Icmp {
        r#type: u8,
        code: u8,
    },
    /// Another IP protocol, by number.
    Other(u8),
}

/// One datapath event, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketEvent {
    pub time: SystemTime,
    pub kind: EventKind,
    pub source: IpAddr,
    pub destination: IpAddr,
    pub l4: L4,
    pub verdict: Verdict,
    /// Hubble's drop reason number (`flow.DropReason`), 0 unless dropped.
    pub drop_reason: u32,
    pub observation_point: TraceObservationPoint,
    pub is_reply: Option<bool>,
    pub ifindex: u32,
    pub ifname: String,
    /// Policy drops: the direction the local endpoint's policy was checked in.
    pub direction: Option<crate::proto::flow::TrafficDirection>,
    /// Policy drops: the security identity of the other side (0: not known).
    pub peer_identity: u32,
    /// Policy drops: the rule that denied (`Kind ns/name: path`) or `default deny`.
    pub denied_by: String,
    /// Policy drops and verdicts: the policy whose rule decided (none for default deny).
    pub policy: Option<crate::proto::flow::Policy>,
    /// Policy drops and verdicts: Hubble's `policy_match_type`.
    pub match_type: u32,
}

/// The L3/L4 flow of a datapath event, endpoints named from `endpoints`.
pub fn flow(ev: &PacketEvent, endpoints: &Endpoints) -> Flow {
    let v6 = ev.source.is_ipv6();
    let l4 = match ev.l4 {
        L4::Tcp {
            source_port,
            destination_port,
            flags,
        } => Some(layer4::Protocol::Tcp(Tcp {
            source_port: u32::from(source_port),
            destination_port: u32::from(destination_port),
            flags: Some(TcpFlags {
                fin: flags & 0x01 != 0,
                syn: flags & 0x02 != 0,
                rst: flags & 0x04 != 0,
                psh: flags & 0x08 != 0,
                ack: flags & 0x10 != 0,
                urg: flags & 0x20 != 0,
                ece: flags & 0x40 != 0,
                cwr: flags & 0x80 != 0,
                ns: false,
            }),
        })),
        L4::Udp {
            source_port,
            destination_port,
        } => Some(layer4::Protocol::Udp(Udp {
            source_port: u32::from(source_port),
            destination_port: u32::from(destination_port),
        })),
        L4::Icmp { r#type, code } if v6 => Some(layer4::Protocol::IcmPv6(IcmPv6 {
            r#type: u32::from(r#type),
            code: u32::from(code),
        })),
        L4::Icmp { r#type, code } => Some(layer4::Protocol::IcmPv4(IcmPv4 {
            r#type: u32::from(r#type),
            code: u32::from(code),
        })),
        L4::Other(_) => None,
    };
    let dropped = ev.verdict == Verdict::Dropped;
    // Who decided, in the field of the direction and the verdict (Hubble's `*_allowed_by`,
    // `*_denied_by`).
    let (mut egress_allowed_by, mut ingress_allowed_by) = (Vec::new(), Vec::new());
    let (mut egress_denied_by, mut ingress_denied_by) = (Vec::new(), Vec::new());
    if let (Some(p), Some(d)) = (&ev.policy, ev.direction) {
        use crate::proto::flow::TrafficDirection as D;
        match (d, dropped) {
            (D::Egress, false) => egress_allowed_by.push(p.clone()),
            (D::Ingress, false) => ingress_allowed_by.push(p.clone()),
            (D::Egress, true) => egress_denied_by.push(p.clone()),
            (D::Ingress, true) => ingress_denied_by.push(p.clone()),
            _ => {}
        }
    }
    let mut source = endpoints.endpoint(ev.source);
    let mut destination = endpoints.endpoint(ev.destination);
    // The peer of a policy decision is the source on ingress, the destination on egress.
    match ev.direction {
        Some(crate::proto::flow::TrafficDirection::Ingress) => source.identity = ev.peer_identity,
        Some(crate::proto::flow::TrafficDirection::Egress) => {
            destination.identity = ev.peer_identity
        }
        _ => {}
    }
    Flow {
        time: Some(crate::time::from_system(ev.time)),
        verdict: ev.verdict as i32,
        drop_reason: if dropped { ev.drop_reason } else { 0 },
        drop_reason_desc: if dropped {
            i32::try_from(ev.drop_reason).unwrap_or(0)
        } else {
            0
        },
        ip: Some(Ip {
            source: ev.source.to_string(),
            destination: ev.destination.to_string(),
            ip_version: if v6 { IpVersion::IPv6 } else { IpVersion::IPv4 } as i32,
            encrypted: false,
        }),
        l4: l4.map(|p| Layer4 { protocol: Some(p) }),
        source: Some(source),
        destination: Some(destination),
        traffic_direction: ev.direction.map_or(0, |d| d as i32),
        policy_match_type: ev.match_type,
        egress_allowed_by,
        ingress_allowed_by,
        egress_denied_by,
        ingress_denied_by,
        trellis_denied_by: ev.denied_by.clone(),
        r#type: FlowType::L3L4 as i32,
        event_type: Some(CiliumEventType {
            r#type: ev.kind.monitor_type(),
            sub_type: if dropped {
                i32::try_from(ev.drop_reason).unwrap_or(0)
            } else {
                0
            },
        }),
        trace_observation_point: ev.observation_point as i32,
        is_reply: ev.is_reply,
        interface: (ev.ifindex != 0 || !ev.ifname.is_empty()).then(|| NetworkInterface {
            index: ev.ifindex,
            name: ev.ifname.clone(),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::flow::DropReason;

    #[test]
    fn a_policy_verdict_names_its_policy_and_match() {
        let ev = PacketEvent {
            time: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_795_689_354),
            kind: EventKind::PolicyVerdict,
            source: "10.0.2.1".parse().expect("ip"),
            destination: "10.0.0.5".parse().expect("ip"),
            l4: L4::Tcp {
                source_port: 41000,
                destination_port: 80,
                flags: 0x02,
            },
            verdict: Verdict::Forwarded,
            drop_reason: 0,
            observation_point: TraceObservationPoint::ToEndpoint,
            is_reply: Some(false),
            ifindex: 7,
            ifname: String::new(),
            direction: Some(crate::proto::flow::TrafficDirection::Ingress),
            peer_identity: 4242,
            denied_by: String::new(),
            policy: Some(crate::proto::flow::Policy {
                name: "web".into(),
                namespace: "default".into(),
                kind: "NetworkPolicy".into(),
                ..Default::default()
            }),
            match_type: 2,
        };
        let f = flow(&ev, &Endpoints::default());
        assert_eq!(f.ingress_allowed_by.len(), 1);
        assert_eq!(f.ingress_allowed_by[0].name, "web");
        assert!(f.egress_allowed_by.is_empty() && f.ingress_denied_by.is_empty());
        assert_eq!(f.policy_match_type, 2);
        assert_eq!(f.event_type.as_ref().map(|e| e.r#type), Some(5));
        assert_eq!(
            crate::format::compact(&f),
            "Nov 26 10:35:54.000: 10.0.2.1:41000 (ID:4242) -> 10.0.0.5:80 (world) \
             policy-verdict:L3-L4 INGRESS ALLOWED (TCP Flags: SYN)"
        );
        let m = crate::metrics::Metrics::default();
        m.flow(&f);
        // A drop by a deny rule counts as a dropped verdict of its match.
        let mut drop = ev.clone();
        drop.kind = EventKind::Drop;
        drop.verdict = Verdict::Dropped;
        drop.drop_reason = crate::proto::flow::DropReason::PolicyDenied as u32;
        drop.match_type = 0;
        let d = flow(&drop, &Endpoints::default());
        assert_eq!(d.ingress_denied_by.len(), 1);
        m.flow(&d);
        let mut r = prometheus_client::registry::Registry::default();
        m.register(&mut r);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).expect("encodes");
        for want in [
            r#"hubble_policy_verdicts_total{direction="ingress",match="l3-l4",action="forwarded"} 1"#,
            r#"hubble_policy_verdicts_total{direction="ingress",match="none",action="dropped"} 1"#,
        ] {
            assert!(text.contains(want), "{want} in:\n{text}");
        }
    }

    #[test]
    fn a_policy_drop_reads_like_hubbles() {
        let ev = PacketEvent {
            time: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_795_689_354),
            kind: EventKind::Drop,
            source: "10.0.2.1".parse().expect("ip"),
            destination: "10.0.0.5".parse().expect("ip"),
            l4: L4::Tcp {
                source_port: 41000,
                destination_port: 80,
                flags: 0x02,
            },
            verdict: Verdict::Dropped,
            drop_reason: DropReason::PolicyDenied as u32,
            observation_point: TraceObservationPoint::UnknownPoint,
            is_reply: Some(false),
            ifindex: 7,
            ifname: "lxc1".into(),
            direction: Some(crate::proto::flow::TrafficDirection::Ingress),
            peer_identity: 4242,
            denied_by: "default deny".into(),
            policy: None,
            match_type: 0,
        };
        let f = flow(&ev, &Endpoints::default());
        // The peer of an ingress drop is the source, with the identity the datapath found.
        assert_eq!(
            f.traffic_direction,
            crate::proto::flow::TrafficDirection::Ingress as i32
        );
        assert_eq!(f.source.as_ref().map(|e| e.identity), Some(4242));
        assert_eq!(f.trellis_denied_by, "default deny");
        assert_eq!(
            crate::format::compact(&f),
            "Nov 26 10:35:54.000: 10.0.2.1:41000 (ID:4242) -> 10.0.0.5:80 (world) drop DROPPED \
             (POLICY_DENIED)"
        );
        let drop_filter = crate::proto::flow::FlowFilter {
            event_type: vec![crate::proto::flow::EventTypeFilter {
                r#type: 1,
                ..Default::default()
            }],
            tcp_flags: vec![TcpFlags {
                syn: true,
                ..Default::default()
            }],
            ..Default::default()
        };
        let set = crate::FilterSet::new(&[drop_filter], &[]).expect("compiles");
        assert!(set.matches(&f));
        let m = crate::metrics::Metrics::default();
        m.flow(&f);
        let mut r = prometheus_client::registry::Registry::default();
        m.register(&mut r);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).expect("encodes");
        assert!(
            text.contains("hubble_drop_total{reason=\"POLICY_DENIED\",protocol=\"TCP\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "hubble_flows_processed_total{type=\"Drop\",subtype=\"\",verdict=\"DROPPED\"} 1"
            ),
            "{text}"
        );
    }
}
