//! Properties over generated Services: the allocator never hands a value out twice, keeps what
//! it handed out, and stays inside its ranges; every Maglev table entry names a backend.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use fabric::assign::{Assignments, assign};
use fabric::maglev::{M_ALLOWED, MaglevBackend, maglev_table};
use proptest::prelude::*;

/// Services with or without a written address / node port, drawn from small ranges so that
/// manifests collide with each other and with what the allocator picks.
fn manifests(services: &[(u8, Option<u8>, Option<u8>, bool)]) -> String {
    let mut text = String::new();
    for (i, (ty, ip, np, drop)) in services.iter().enumerate() {
        if *drop {
            continue;
        }
        let ty = ["ClusterIP", "NodePort", "LoadBalancer"][usize::from(*ty % 3)];
        let ip = ip
            .map(|o| format!("clusterIP: 10.96.0.{o}, "))
            .unwrap_or_default();
        let np = np
            .map(|p| format!(", nodePort: {}", 30000 + u16::from(p % 16)))
            .unwrap_or_default();
        text.push_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: apps}}\n\
             spec: {{type: {ty}, {ip}ports: [{{port: 80{np}}}, {{port: 81, protocol: UDP}}]}}\n---\n"
        ));
    }
    text
}

fn snapshot(text: &str) -> model::Snapshot {
    let raws =
        model::RawObject::from_yaml(text, "gen.yaml", "apps").expect("generated YAML parses");
    model::Snapshot::build(raws, Vec::new())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn assignments_are_unique_stable_and_in_range(
        services in prop::collection::vec(
            (any::<u8>(), prop::option::weighted(0.3, 0u8..64), prop::option::weighted(0.3, any::<u8>()), any::<bool>()),
            0..40,
        ),
    ) {
        let cidr = "10.96.0.0/26".parse().expect("cidr");
        let ports = 30000..=30047;
        let all: Vec<_> = services.iter().map(|(t, i, n, _)| (*t, *i, *n, false)).collect();
        let before = assign(&snapshot(&manifests(&all)), &Assignments::default(), cidr, ports.clone());
        // Some Services go away, then come back: what stayed keeps its values.
        let fewer = assign(&snapshot(&manifests(&services)), &before, cidr, ports.clone());
        for (i, (_, _, _, dropped)) in services.iter().enumerate() {
            let key = format!("apps/s{i}");
            let (Some(was), false) = (before.services.get(&key), dropped) else { continue };
            let now = fewer.services.get(&key);
            prop_assert!(now.is_some(), "{} lost its values", key);
            let now = now.expect("checked");
            prop_assert!(was.cluster_ip.is_none() || was.cluster_ip == now.cluster_ip, "{} moved", key);
            for (port, np) in &was.node_ports {
                prop_assert_eq!(Some(np), now.node_ports.get(port), "{} {} moved", key, port);
            }
        }
        let after = assign(&snapshot(&manifests(&all)), &fewer, cidr, ports.clone());
        prop_assert_eq!(&after, &assign(&snapshot(&manifests(&all)), &after, cidr, ports.clone()));

        let written_ips: BTreeSet<Ipv4Addr> = all
            .iter()
            .filter_map(|(_, ip, _, _)| ip.map(|o| Ipv4Addr::new(10, 96, 0, o)))
            .collect();
        let written_ports: BTreeSet<u16> =
            all.iter().filter_map(|(_, _, np, _)| np.map(|p| 30000 + u16::from(p % 16))).collect();
        let mut ips = BTreeSet::new();
        let mut nps = BTreeSet::new();
        for a in after.services.values() {
            if let Some(ip) = a.cluster_ip {
                prop_assert!(ips.insert(ip), "{} twice", ip);
                prop_assert!(!written_ips.contains(&ip), "{} is written in a manifest", ip);
                prop_assert!(cidr.contains(&ip));
                prop_assert!(![0, 1, 10, 63].contains(&ip.octets()[3]), "{} is reserved", ip);
            }
            for &p in a.node_ports.values() {
                prop_assert!(nps.insert(p), "node port {} twice", p);
                prop_assert!(!written_ports.contains(&p));
                prop_assert!(ports.contains(&p));
            }
        }
    }

    #[test]
    fn every_table_entry_names_a_backend(
        n in 1usize..300,
        weights in prop::collection::vec(0u16..4, 300),
        m in prop::sample::select(M_ALLOWED.to_vec()),
        seed in any::<u32>(),
    ) {
        let backends: Vec<MaglevBackend> = (0..n.min(m as usize))
            .map(|i| MaglevBackend::weighted(format!("10.69.0.{i}:80/TCP"), weights[i]))
            .collect();
        let t = maglev_table(&backends, m, seed).expect("valid");
        if backends.iter().all(|b| b.weight == 0) {
            prop_assert!(t.is_empty());
        } else {
            prop_assert_eq!(t.len(), m as usize);
            prop_assert!(t.iter().all(|&e| backends[e as usize].weight > 0));
        }
    }
}
