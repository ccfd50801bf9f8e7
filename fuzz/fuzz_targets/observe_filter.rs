//! The flow filter language from outside: the web UI's query string (the `hubble observe`
//! flags as keys, parsed by the same clap definition) and the gRPC API's `GetFlowsRequest`
//! whitelist and blacklist (protobuf), compiled and matched against fixed and arbitrary
//! flows.
//!
//! - A filter set whose blacklist is its whitelist passes no flow.
//! - A whitelist passes a flow when one of its filters alone does.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use observe::FilterSet;
use observe::proto::flow::{Flow, FlowFilter};
use observe::proto::observer::GetFlowsRequest;
use observe::query::Query;
use prost::Message;

/// A few flows of every kind the filters look at, written as protobuf JSON would have them.
fn flows() -> &'static [Flow] {
    static FLOWS: OnceLock<Vec<Flow>> = OnceLock::new();
    FLOWS.get_or_init(|| {
        use observe::proto::flow::{Endpoint, Ip, Layer4, Layer7, Tcp, layer4, layer7};
        let ep = |ns: &str, pod: &str, labels: &[&str]| Endpoint {
            namespace: ns.into(),
            pod_name: pod.into(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            ..Default::default()
        };
        let mut http = Flow {
            ip: Some(Ip {
                source: "10.69.1.5".into(),
                destination: "10.69.2.9".into(),
                ..Default::default()
            }),
            source: Some(ep("apps", "web-1", &["k8s:app=web"])),
            destination: Some(ep("db", "pg-0", &["k8s:app=pg", "k8s:tier=data"])),
            l4: Some(Layer4 {
                protocol: Some(layer4::Protocol::Tcp(Tcp {
                    source_port: 40000,
                    destination_port: 80,
                    ..Default::default()
                })),
            }),
            ..Default::default()
        };
        let mut dns = http.clone();
        http.l7 = Some(Layer7 {
            record: Some(layer7::Record::Http(observe::proto::flow::Http {
                code: 404,
                method: "GET".into(),
                url: "http://web/a/b?c=d".into(),
                ..Default::default()
            })),
            ..Default::default()
        });
        dns.l7 = Some(Layer7 {
            record: Some(layer7::Record::Dns(observe::proto::flow::Dns {
                query: "web.apps.svc.cluster.local.".into(),
                rcode: 3,
                ..Default::default()
            })),
            ..Default::default()
        });
        vec![Flow::default(), http, dns]
    })
}

fn check(white: &[FlowFilter], black: &[FlowFilter], extra: &Option<Flow>) {
    let Ok(set) = FilterSet::new(white, black) else {
        return;
    };
    let all = flows().iter().chain(extra);
    for f in all.clone() {
        let passes = set.matches(f);
        if black.is_empty() {
            let one = white
                .iter()
                .any(|w| FilterSet::new(std::slice::from_ref(w), &[]).is_ok_and(|s| s.matches(f)));
            assert_eq!(passes, white.is_empty() || one);
        }
    }
    // (Twice the values may be too many.)
    if !white.is_empty()
        && let Ok(both) = FilterSet::new(white, white)
    {
        for f in all {
            assert!(!both.matches(f));
        }
    }
}

fuzz_target!(|input: (String, Vec<u8>, Vec<u8>)| {
    let (qs, request, flow) = input;
    let extra = Flow::decode(flow.as_slice()).ok();
    if let Ok(q) = Query::from_query_string(&qs)
        && let Ok(white) = q.whitelist()
    {
        check(&white, &[], &extra);
    }
    if let Ok(req) = GetFlowsRequest::decode(request.as_slice()) {
        check(&req.whitelist, &req.blacklist, &extra);
    }
});
