//! Network policy documents compiled against a fixed set of pods on two nodes, with an
//! address learned for a fuzzed name: the fuzzer's own text, and a CiliumNetworkPolicy whose
//! selector, ports, CIDRs, entity and toFQDNs pattern it chooses (so most inputs reach the
//! compile instead of failing to parse). Nothing may panic, and every entry is a
//! key the datapath can hold: port prefixes of at most 16 bits, no port on a wildcard
//! protocol, no entry for an endpoint of another node. The toFQDNs name matcher takes the
//! fuzzed pattern and name too.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use fabric::policy::{FqdnPattern, Learned, compile};
use libfuzzer_sys::fuzz_target;
use model::snapshot::{RawObject, Snapshot};

const PODS: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: default, labels: {app: web}}\n\
spec: {nodeName: n1, containers: [{name: c, image: x, ports: [{name: http, containerPort: 8080}]}]}\n\
status: {podIP: 10.0.1.5}\n---\n\
apiVersion: v1\nkind: Pod\nmetadata: {name: client, namespace: other, labels: {app: client}}\n\
spec: {nodeName: n2, containers: [{name: c, image: x}]}\nstatus: {podIP: 10.0.2.5}\n---\n";

type Input = (
    (String, String, String),
    (String, Option<i32>, u8),
    (String, String, String),
    (u8, String),
);

/// A JSON string is a YAML double-quoted scalar: any text goes in safely.
fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

fuzz_target!(|input: Input| {
    let ((raw, key, value), (port, end_port, flags), (cidr, except, entity), (proto, pattern)) =
        input;
    let name = format!("{value}.example.test");
    let protocol = ["TCP", "UDP", "SCTP", "ANY", "ICMP"][usize::from(proto % 5)];
    let (ingress, egress) = if flags & 1 == 0 {
        ("ingress", "egress")
    } else {
        ("ingressDeny", "egressDeny")
    };
    let templated = format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: fz, namespace: default}}\n\
         spec:\n  endpointSelector: {{matchLabels: {{app: web}}}}\n  \
         enableDefaultDeny: {{ingress: {}, egress: {}}}\n  {ingress}:\n  \
         - fromEndpoints: [{{matchLabels: {{{}: {}}}}}]\n    \
         toPorts: [{{ports: [{{port: {}, endPort: {}, protocol: {protocol}}}]}}]\n  \
         - fromCIDRSet: [{{cidr: {}, except: [{}]}}]\n  - fromEntities: [{}]\n  {egress}:\n  \
         - toFQDNs: [{{matchPattern: {}}}]\n    toPorts: [{{ports: [{{port: {}}}]}}]\n  \
         - toCIDR: [{}]\n---\n",
        flags & 2 == 0,
        flags & 4 == 0,
        q(&key),
        q(&value),
        q(&port),
        end_port.map_or("null".to_string(), |e| e.to_string()),
        q(&cidr),
        q(&except),
        q(&entity),
        q(&pattern),
        q(&port),
        q(&cidr),
    );
    let text = format!("{PODS}{templated}{raw}");
    let Ok(raws) = RawObject::from_yaml(&text, "fuzz.yaml", "default") else {
        return;
    };
    let s = Snapshot::build(raws, Vec::new());
    let nodes = BTreeMap::from([
        ("n1".to_string(), Ipv4Addr::new(10, 10, 30, 11)),
        ("n2".to_string(), Ipv4Addr::new(10, 10, 30, 12)),
    ]);
    let learned: Learned = BTreeMap::from([(
        Ipv4Addr::new(10, 0, 1, 5),
        BTreeMap::from([(Ipv4Addr::new(198, 51, 100, 7), BTreeSet::from([name.clone()]))]),
    )]);
    let plan = compile(&s, "n1", &nodes, &learned);
    if plan.over_bound.is_none() {
        for (ip, ep) in &plan.endpoints {
            assert_eq!(*ip, Ipv4Addr::new(10, 0, 1, 5), "only n1's pod is an endpoint");
            for k in ep.entries.keys() {
                assert!(k.port_bits <= 16, "{k:?}");
                assert!(k.proto != 0 || k.port_bits == 0, "{k:?}");
            }
        }
    }
    let _ = FqdnPattern::Pattern(pattern.to_ascii_lowercase()).matches(&name);
    let _ = FqdnPattern::Name(pattern).matches(&name);
});
