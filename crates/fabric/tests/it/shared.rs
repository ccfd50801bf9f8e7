//! The shared assignments on a real 3-member etcd (Debian's etcd-server, on loopback): agents
//! racing through different members never give one address, cluster IP or node port twice,
//! and one writer wins each generation.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use fabric::shared::{Outcome, update};
use store::state::etcd::Etcd;

#[path = "../../../store/tests/it/etcd_cluster.rs"]
mod etcd_cluster;

/// Generation `g`: a pool and `g` LoadBalancer Services (each needs a cluster IP, a node port
/// and an LB address).
fn generation(g: usize) -> model::Snapshot {
    let mut text = String::from(
        "apiVersion: cilium.io/v2\nkind: CiliumLoadBalancerIPPool\nmetadata: {name: lan}\n\
         spec: {blocks: [{start: 10.10.30.50, stop: 10.10.30.250}]}\n",
    );
    for i in 0..g {
        text.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: lb-{i}, namespace: apps}}\n\
             spec: {{type: LoadBalancer, selector: {{app: a}}, ports: [{{port: 80}}]}}\n"
        ));
    }
    let s = model::Snapshot::build(
        model::RawObject::from_yaml(&text, "race.yaml", "apps").expect("yaml"),
        vec![],
    );
    assert!(!s.has_errors(), "{:?}", s.diagnostics);
    s
}

async fn connect(endpoint: &str) -> Etcd {
    let start = Instant::now();
    loop {
        let e = Etcd::connect(&[endpoint.to_string()], Duration::from_secs(3))
            .await
            .expect("client");
        match store::state::Backend::list(&e, "/").await {
            Ok(_) => return e,
            Err(err) => assert!(
                start.elapsed() < Duration::from_secs(30),
                "etcd never answered: {err}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// 100 generations after the first; each is written by two agents at once through two members, while a third
/// still on the previous generation writes too. Exactly one of the two wins each time, both
/// compile with the same assignments, the stale one never overwrites, and no value is ever
/// handed out twice or taken back from its Service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_agents_never_give_a_value_twice() {
    let cluster = etcd_cluster::Cluster::start();
    let eps = cluster.endpoints();
    let (a, b, c) = (
        connect(&eps[0]).await,
        connect(&eps[1]).await,
        connect(&eps[2]).await,
    );
    let cidr: ipnet::Ipv4Net = "10.96.0.0/16".parse().expect("cidr");
    let ports = fabric::assign::NODE_PORT_RANGE_DEFAULT;
    let mut given: BTreeMap<String, (Ipv4Addr, u16, Ipv4Addr)> = BTreeMap::new();
    // Generation 1 by one writer, so that every racing round has a stale writer (generations
    // start at 1).
    let mut previous = generation(1);
    update(&a, &previous, 1, cidr, ports.clone())
        .await
        .expect("generation 1");
    for g in 2..=101usize {
        let snapshot = generation(g);
        let number = g as u64;
        let (ra, rb, rc) = tokio::join!(
            update(&a, &snapshot, number, cidr, ports.clone()),
            update(&b, &snapshot, number, cidr, ports.clone()),
            update(&c, &previous, number - 1, cidr, ports.clone()),
        );
        let ((aa, oa), (ab, ob), (_, oc)) = (ra.expect("a"), rb.expect("b"), rc.expect("c"));
        let wrote = [&oa, &ob].iter().filter(|o| ***o == Outcome::Wrote).count();
        assert_eq!(wrote, 1, "generation {g}: {oa:?}, {ob:?}");
        assert_ne!(oc, Outcome::Wrote, "generation {g}: the stale writer wrote");
        // And once more after both: it takes the newer document.
        let (late, oc) = update(&c, &previous, number - 1, cidr, ports.clone())
            .await
            .expect("c late");
        assert_eq!(oc, Outcome::Newer(number), "generation {g}");
        assert_eq!(late, aa);
        assert_eq!(aa, ab, "generation {g}: two agents, two answers");
        let (doc, _) = fabric::shared::read(&a)
            .await
            .expect("read")
            .expect("a document");
        assert_eq!(doc.generation, number);
        assert_eq!(doc.assignments, aa);
        for i in 0..g {
            let name = format!("lb-{i}");
            let cip = aa.cluster_ip("apps", &name).expect("cluster ip");
            let np = aa.node_port("apps", &name, 80, "TCP").expect("node port");
            let lb = *aa
                .load_balancer_ips("apps", &name)
                .first()
                .unwrap_or_else(|| panic!("generation {g}: {name} has no LB address"));
            let now = (cip, np, lb);
            let was = given.entry(name.clone()).or_insert(now);
            assert_eq!(*was, now, "generation {g}: {name}'s values moved");
        }
        let distinct = |f: &dyn Fn(&(Ipv4Addr, u16, Ipv4Addr)) -> String| {
            given.values().map(f).collect::<BTreeSet<_>>().len()
        };
        assert_eq!(given.len(), g);
        assert_eq!(distinct(&|v| v.0.to_string()), g, "a cluster IP twice");
        assert_eq!(distinct(&|v| v.1.to_string()), g, "a node port twice");
        assert_eq!(distinct(&|v| v.2.to_string()), g, "an LB address twice");
        previous = snapshot;
    }
}
