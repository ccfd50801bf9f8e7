//! Arbitrary request heads (method, target, host, headers) through the gateway's routing and
//! request filters: every router of the routing fixture
//! (`crates/gateway/tests/fixtures/routing.yaml`) and of the home-lab example's Gateways.
//! No I/O per input; nothing may panic.
#![no_main]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use gateway::plan::Router;
use libfuzzer_sys::fuzz_target;

fn routers() -> &'static [Arc<Router>] {
    static ROUTERS: OnceLock<Vec<Arc<Router>>> = OnceLock::new();
    ROUTERS.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let load = |roots: &[PathBuf], vars: model::subst::Vars| {
            let opts = store::Options {
                vars,
                default_namespace: "default".into(),
                ..Default::default()
            };
            store::load(roots, &opts).snapshot
        };
        let fixture = load(
            &[root.join("crates/gateway/tests/fixtures/routing.yaml")],
            Default::default(),
        );
        let vars_file = root.join("examples/home-lab/vars.yaml");
        let text = std::fs::read_to_string(&vars_file).expect("the example's vars file");
        let vars = model::subst::parse_vars(&text).expect("the example's vars parse");
        let lab = load(&[root.join("examples/home-lab")], vars);
        let plans = [
            gateway::compile(&fixture, "edge", "edge"),
            gateway::compile(&lab, "network", "envoy-internal"),
            gateway::compile(&lab, "network", "envoy-external"),
        ];
        let routers: Vec<Arc<Router>> = plans
            .iter()
            .flat_map(|p| p.as_ref().expect("the fixtures compile").ports.values())
            .filter_map(|l| l.router().cloned())
            .collect();
        assert!(routers.len() >= 4, "expected the fixtures' routers");
        routers
    })
}

fuzz_target!(
    |input: (u8, Vec<u8>, String, String, Vec<(String, Vec<u8>)>)| {
        let (which, method, target, host, headers) = input;
        let routers = routers();
        let router = &routers[usize::from(which) % routers.len()];
        let mut b = http::Request::builder()
            .method(method.as_slice())
            .uri(target.as_str());
        if !host.is_empty() {
            b = b.header("host", host.as_str());
        }
        for (n, v) in &headers {
            b = b.header(n.as_str(), v.as_slice());
        }
        // Heads that http itself rejects never reach the router.
        let Ok(mut req) = b.body(()) else { return };
        let peer = SocketAddr::from(([127, 0, 0, 1], 40000));
        let _ = gateway::proxy::decide(router, peer, &mut req);
    }
);
