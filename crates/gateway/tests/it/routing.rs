//! Property test of routing and request filters: arbitrary request heads through every
//! router of `tests/fixtures/routing.yaml` (the fixture the `gateway_route` fuzz target uses)
//! never panic, and what they decide is well formed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use gateway::plan::Router;
use gateway::proxy::{Decision, decide};
use proptest::prelude::*;

fn routers() -> &'static [Arc<Router>] {
    static ROUTERS: std::sync::OnceLock<Vec<Arc<Router>>> = std::sync::OnceLock::new();
    ROUTERS.get_or_init(load_routers)
}

fn load_routers() -> Vec<Arc<Router>> {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/routing.yaml");
    let load = store::load(
        &[fixture],
        &store::Options {
            default_namespace: "default".into(),
            ..Default::default()
        },
    );
    // The only problems are the references to Service `missing`, which is missing on purpose.
    let problems: Vec<_> = load
        .snapshot
        .status
        .values()
        .flat_map(|st| &st.problems)
        .filter(|p| !p.message.contains("edge/missing"))
        .collect();
    assert!(problems.is_empty(), "{problems:#?}");
    let plan = gateway::compile(&load.snapshot, "edge", "edge").expect("the fixture compiles");
    assert!(plan.unserved.is_empty(), "{:?}", plan.unserved);
    plan.ports
        .values()
        .filter_map(|l| l.router().cloned())
        .collect()
}

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("exact.example.com".to_string()),
        Just("a.wild.example.com".to_string()),
        Just("api.example.com:8080".to_string()),
        Just("other.net".to_string()),
        "[a-z.]{0,12}(:[0-9]{1,5})?",
        "\\PC{0,16}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        Just("exact"),
        Just("prefix"),
        Just("v2"),
        Just("rewrite"),
        Just("strip"),
        Just("full"),
        Just("to-https"),
        Just("to-host"),
        Just("to-prefix"),
        Just("to-full"),
        Just("health"),
        Just(""),
        Just("%2F"),
    ];
    (
        prop::collection::vec(segment, 0..4),
        prop::option::of("[a-z0-9=&%+ ]{0,12}"),
    )
        .prop_map(|(segs, q)| {
            let p = format!("/{}", segs.join("/"));
            match q {
                Some(q) => format!("{p}?{}", q.replace(' ', "+")),
                None => p,
            }
        })
}

fn header() -> impl Strategy<Value = (String, String)> {
    (
        prop_oneof![
            Just("x-version".to_string()),
            Just("x-re".to_string()),
            Just("x-canary".to_string()),
            Just("x-forwarded-for".to_string()),
            Just("connection".to_string()),
            Just("host".to_string()),
            "[a-z-]{1,10}",
        ],
        prop_oneof![
            Just("two".to_string()),
            Just("always".to_string()),
            Just("10.0.0.1, 127.0.0.1".to_string()),
            "[ -~]{0,16}",
        ],
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_requests_are_routed_without_panics(
        method in prop_oneof![
            Just("GET".to_string()),
            Just("POST".to_string()),
            Just("OPTIONS".to_string()),
            "[A-Z]{1,8}",
        ],
        host in host(),
        path in path(),
        headers in prop::collection::vec(header(), 0..6),
        router in 0usize..2,
    ) {
        let routers = routers();
        let router = &routers[router % routers.len()];
        let mut b = http::Request::builder().method(method.as_str()).uri(path.as_str());
        b = b.header("host", host.as_str());
        for (n, v) in &headers {
            b = b.header(n.as_str(), v.as_str());
        }
        // Heads http itself rejects never reach the router.
        let Ok(mut req) = b.body(()) else { return Ok(()) };
        let peer: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
        match decide(router, peer, &mut req) {
            Decision::NoRoute => {}
            Decision::Redirect { status, location } => {
                prop_assert!(status.is_redirection(), "{status}");
                prop_assert!(
                    location.starts_with("http://") || location.starts_with("https://"),
                    "{location}"
                );
            }
            Decision::Forward { path_and_query, .. } => {
                prop_assert!(path_and_query.starts_with('/'), "{path_and_query}");
                // Hop-by-hop headers are dropped; only the /health rule sets one again.
                let health = path_and_query.split('?').next() == Some("/health");
                prop_assert!(req.headers().get("connection").is_none() || health);
                prop_assert!(req.headers().contains_key("x-forwarded-for"));
            }
        }
    }
}

#[test]
fn the_fixture_routes_what_it_says() {
    let routers = routers();
    let peer: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
    let run = |port: u16, host: &str, path: &str| {
        let r = routers.iter().find(|r| r.port == port).expect("router");
        let mut req = http::Request::builder()
            .uri(path)
            .header("host", host)
            .body(())
            .expect("request");
        (decide(r, peer, &mut req), req)
    };
    let (d, req) = run(80, "exact.example.com", "/rewrite/prefix/x?a=1");
    assert_eq!(
        d,
        Decision::Forward {
            route: "edge/matching".into(),
            rule: 1,
            path_and_query: "/new/x?a=1".into()
        }
    );
    assert_eq!(req.headers()["host"], "rewritten.example.com");
    let (d, _) = run(80, "anything", "/to-host/a");
    assert_eq!(
        d,
        Decision::Redirect {
            status: http::StatusCode::FOUND,
            location: "http://other.example.com:8443/to-host/a".into()
        }
    );
    let (d, _) = run(8080, "nope.org", "/health");
    assert_eq!(d, Decision::NoRoute);
}
