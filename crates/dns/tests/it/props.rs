//! The no-leak guarantee of split-horizon views, as a property over generated zones and
//! client addresses: an outside client never gets an inside address, and a name published
//! only inside is NXDOMAIN outside.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use model::snapshot::{RawObject, Snapshot};
use model::yaml::{PosIndex, parse_documents};
use proptest::prelude::*;

const INSIDE: Ipv4Addr = Ipv4Addr::new(10, 10, 30, 25);

fn snapshot(text: &str) -> Snapshot {
    let raws = parse_documents(text)
        .expect("generated YAML parses")
        .into_iter()
        .map(|d| {
            let mut index = PosIndex::default();
            let value = d.to_json(&mut index);
            RawObject {
                value,
                source: model::Source {
                    file: Arc::new("gen.yaml".into()),
                    pos: d.pos,
                    index: Arc::new(index),
                },
                default_namespace: Some("net".into()),
            }
        })
        .collect();
    Snapshot::build(raws, Vec::new())
}

fn ask(zone: &dns::Zone, name: &str) -> Message {
    let mut q = Message::new(7, MessageType::Query, OpCode::Query);
    q.queries.push(Query::query(
        Name::from_ascii(name).expect("name"),
        RecordType::A,
    ));
    dns::answer::answer(zone, &q)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn inside_names_and_addresses_never_leak(
        routes in prop::collection::vec(("[a-z]{1,8}", 0u8..3), 1..12),
        client in any::<u32>(),
    ) {
        // Route i attaches to the internal gateway (0), the external one (1), or both (2).
        let mut text = String::from(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: t}\nspec: {controllerName: trellis.dev/gateway-controller}\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: internal, namespace: net}\nspec: {gatewayClassName: t, addresses: [{value: 10.10.30.25}], listeners: [{name: h, protocol: HTTP, port: 80}]}\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: external, namespace: net, annotations: {external-dns.alpha.kubernetes.io/target: edge.example.net}}\nspec: {gatewayClassName: t, addresses: [{value: 10.10.30.26}], listeners: [{name: h, protocol: HTTP, port: 80}]}\n---\n\
             apiVersion: trellis.dev/v1alpha1\nkind: DNSView\nmetadata: {name: lan}\nspec: {order: 1, clients: [10.0.0.0/8], zones: [example.com], gateways: [{name: internal, namespace: net}, {name: external, namespace: net}]}\n---\n\
             apiVersion: trellis.dev/v1alpha1\nkind: DNSView\nmetadata: {name: public}\nspec: {order: 2, clients: [0.0.0.0/0], zones: [example.com], gateways: [{name: external, namespace: net, answer: Target}]}\n---\n",
        );
        for (i, (host, which)) in routes.iter().enumerate() {
            let parents = match which { 0 => "[{name: internal}]", 1 => "[{name: external}]", _ => "[{name: internal}, {name: external}]" };
            text.push_str(&format!("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r{i}}}\nspec: {{parentRefs: {parents}, hostnames: [{host}.example.com]}}\n---\n"));
        }
        let s = snapshot(&text);
        let views = dns::compile_views(&s, &dns::ZoneConfig::default());
        let ip = IpAddr::V4(Ipv4Addr::from(client));
        let (view, zone) = views.for_client(ip);
        let outside = !"10.0.0.0/8".parse::<ipnet::IpNet>().expect("cidr").contains(&ip);
        prop_assert_eq!(view, if outside { "public" } else { "lan" });
        for (host, which) in &routes {
            let name = format!("{host}.example.com.");
            let resp = ask(zone, &name);
            if outside {
                // Never an inside address.
                prop_assert!(!resp.answers.iter().any(|r| matches!(&r.data, RData::A(a) if a.0 == INSIDE)), "{} leaked", name);
                let published_outside = routes.iter().any(|(h, w)| h == host && *w != 0);
                if !published_outside {
                    prop_assert_eq!(resp.metadata.response_code, ResponseCode::NXDomain, "{} exists outside ({})", name, which);
                    prop_assert!(resp.answers.is_empty());
                }
            } else {
                prop_assert_eq!(resp.metadata.response_code, ResponseCode::NoError);
            }
        }
    }
}
