//! The corpus's endpoints (testdata/home-ops): every HTTPRoute (the sidecar runs with
//! `--auto-httproute`), the annotated Service, and the smtp-relay ConfigMap; groups inherited
//! from the Gateways' annotations.

use std::path::Path;

use health::{Discovery, Kind};

fn corpus() -> model::Snapshot {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/home-ops/kubernetes");
    let load = store::load(
        &[dir],
        &store::Options {
            default_namespace: "default".into(),
            ..Default::default()
        },
    );
    assert!(
        !load.snapshot.has_errors(),
        "{:#?}",
        load.snapshot.diagnostics
    );
    load.snapshot
}

#[test]
fn endpoints_of_the_corpus() {
    let s = corpus();
    let found = health::endpoints(&s, &Discovery::default());
    assert!(found.problems.is_empty(), "{:#?}", found.problems);
    let by = |name: &str| {
        found
            .endpoints
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("no endpoint {name}"))
    };

    // A route on envoy-external inherits `group: external` and the resolver; its own
    // annotation sets the condition; its PathPrefix becomes the URL's path.
    let flux = by("github-webhook");
    assert_eq!(flux.group, "external");
    assert_eq!(flux.url, "https://flux-webhook.cloudjur.com/hook/");
    assert_eq!(flux.kind, Kind::Http);
    let conds: Vec<String> = flux.conditions.iter().map(|c| c.text.clone()).collect();
    assert_eq!(conds, ["[STATUS] == 404"]);
    assert_eq!(
        flux.client
            .dns_resolver
            .as_ref()
            .map(|r| (r.tcp, r.addr.to_string())),
        Some((true, "1.1.1.1:53".to_string()))
    );
    assert_eq!(flux.key(), "external_github-webhook");

    // A route on envoy-internal is guarded: a DNS query at 1.1.1.1 that must find nothing.
    let internal: Vec<_> = found
        .endpoints
        .iter()
        .filter(|e| e.group == "internal")
        .collect();
    assert!(!internal.is_empty());
    for e in &internal {
        assert_eq!(e.kind, Kind::Dns, "{}", e.name);
        assert_eq!(e.url, "1.1.1.1");
        let q = e.dns.as_ref().expect("dns");
        assert_eq!(q.query_type, "A");
        assert_eq!(e.conditions[0].text, "len([BODY]) == 0");
    }
    let mcp = by("mcp-gateway");
    assert_eq!(mcp.group, "internal");
    assert_eq!(
        mcp.dns.as_ref().expect("dns").query_name,
        "mcp.cloudjur.com"
    );

    // Every external route probes https://<host> with the default condition unless it says
    // otherwise.
    let external: Vec<_> = found
        .endpoints
        .iter()
        .filter(|e| e.group == "external")
        .collect();
    assert!(external.len() >= 2, "{external:#?}");
    for e in &external {
        assert_eq!(e.kind, Kind::Http, "{}", e.name);
        assert!(e.url.starts_with("https://"), "{}", e.url);
    }

    // The annotated Service: its cluster name and first port, [CONNECTED] == true.
    let pg = by("postgres-lb");
    assert_eq!(pg.group, "services");
    assert_eq!(pg.url, "tcp://postgres-lb.database.svc.cluster.local.:5432");
    assert_eq!(pg.conditions[0].text, "[CONNECTED] == true");

    // The ConfigMap's Gatus config, as written.
    let smtp = by("smtp-relay");
    assert_eq!(smtp.group, "infrastructure");
    assert_eq!(smtp.kind, Kind::StartTls);
    assert_eq!(smtp.url, "starttls://smtp.cloudjur.com:25");
    assert_eq!(smtp.interval, std::time::Duration::from_secs(60));
    assert_eq!(smtp.conditions[0].text, "[CONNECTED] == true");

    // Only the annotated Service: the sidecar runs with --enable-service, not --auto-service.
    assert_eq!(
        found
            .endpoints
            .iter()
            .filter(|e| e.object.kind == "Service")
            .count(),
        1
    );
    // One endpoint per HTTPRoute with a hostname.
    let routes = s
        .http_routes
        .values()
        .filter(|r| r.spec.hostnames.as_ref().is_some_and(|h| !h.is_empty()))
        .count();
    assert_eq!(
        found
            .endpoints
            .iter()
            .filter(|e| e.object.kind == "HTTPRoute")
            .count(),
        routes
    );
}

#[test]
fn annotation_mistakes_are_problems_on_the_object() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("x.yaml"),
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: bad
  namespace: web
  annotations:
    gatus.home-operations.com/endpoint: |
      conditions: ["[STATUS] == 200", "[BODY].items[x] == 1"]
spec:
  hostnames: [bad.example]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: off
  namespace: web
  annotations:
    gatus.home-operations.com/enabled: "false"
spec:
  hostnames: [off.example]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: good
  namespace: web
spec:
  hostnames: [good.example]
  rules:
    - matches: [{path: {type: PathPrefix, value: /}}]
"#,
    )
    .expect("write");
    let load = store::load(&[dir.path().to_path_buf()], &store::Options::default());
    let found = health::endpoints(&load.snapshot, &Discovery::default());
    let names: Vec<_> = found.endpoints.iter().map(|e| e.url.as_str()).collect();
    assert_eq!(names, ["https://good.example"]);
    assert_eq!(found.problems.len(), 1, "{:#?}", found.problems);
    let p = &found.problems[0];
    assert_eq!(p.object.name, "bad");
    assert!(p.at.ends_with("x.yaml:7:5"), "{}", p.at);
    assert_eq!(
        p.message,
        "conditions[1] \"[BODY].items[x] == 1\": column 14: array index \"x\" is not a number"
    );
}
