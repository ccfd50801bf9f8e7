//! The gateway serves what validation decided (`snapshot.resolution`), not its own reading of
//! the manifests: of two listeners with one name only the first (validation refuses the
//! other) is served, and of two ClientTrafficPolicies on one Gateway only the one validation
//! gave it applies (the other is Conflicted there, GEP-713), even for a field the owner
//! leaves unset.

use crate::harness;

#[tokio::test]
async fn only_what_validation_accepted_is_served() {
    let backends = harness::start_backends().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let case = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: twice, namespace: gateway-conformance-infra}\n\
spec:\n  gatewayClassName: trellis\n  listeners:\n    - {name: web, protocol: HTTP, port: 8081}\n    - {name: web, protocol: HTTP, port: 8082}\n---\n\
apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: ClientTrafficPolicy\nmetadata: {name: a-owner, namespace: gateway-conformance-infra}\n\
spec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: twice}]\n  clientIPDetection: {xForwardedFor: {numTrustedHops: 1}}\n---\n\
apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: ClientTrafficPolicy\nmetadata: {name: b-late, namespace: gateway-conformance-infra}\n\
spec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: twice}]\n  tcpKeepalive: {idleTime: 1230s}\n";
    let load = harness::load(
        dir.path(),
        &[
            ("base.yaml", &harness::base_manifests(&backends)),
            ("case.yaml", case),
        ],
    );
    let s = &load.snapshot;
    let late = model::ObjectKey::new(
        "gateway.envoyproxy.io",
        "ClientTrafficPolicy",
        "gateway-conformance-infra",
        "b-late",
    );
    let conflicted = s.status[&late]
        .conditions
        .iter()
        .any(|c| c.type_ == "Accepted" && c.reason == "Conflicted");
    assert!(conflicted, "{:?}", s.status[&late].conditions);
    let plan = gateway::compile(s, "gateway-conformance-infra", "twice").expect("compiles");
    assert_eq!(
        plan.ports.keys().copied().collect::<Vec<u16>>(),
        [8081],
        "only the first listener named web is served"
    );
    assert_eq!(
        plan.client_keepalive, None,
        "the Conflicted policy's tcpKeepalive does not apply"
    );
}

/// A listener's certificate in another namespace is served only with a ReferenceGrant there:
/// without one, validation says RefNotPermitted and the gateway never loads the Secret (the
/// listener is reported unserved, its port has no certificate for it). It used to load it.
/// And a ClientTrafficPolicy asking for client certificates (not verified by trellis) keeps
/// its Gateway's listeners from being served.
#[tokio::test]
async fn a_certificate_in_another_namespace_needs_a_reference_grant() {
    let backends = harness::start_backends().await;
    let cert = rcgen::generate_simple_self_signed(vec!["site.test".to_string()]).expect("cert");
    let indent = |pem: &str| -> String { pem.lines().map(|l| format!("    {l}\n")).collect() };
    let case = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: site-tls, namespace: other}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}---\n\
apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: edge, namespace: gateway-conformance-infra}}\nspec:\n  gatewayClassName: trellis\n  listeners:\n\
\x20   - {{name: https, protocol: HTTPS, port: 443, tls: {{certificateRefs: [{{name: site-tls, namespace: other}}]}}}}\n---\n",
        indent(&cert.cert.pem()),
        indent(&cert.signing_key.serialize_pem())
    );
    let grant = "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {name: certs, namespace: other}\n\
spec:\n  from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: gateway-conformance-infra}]\n  to: [{group: '', kind: Secret}]\n";
    let mtls = "apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: ClientTrafficPolicy\nmetadata: {name: mtls, namespace: gateway-conformance-infra}\n\
spec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: edge}]\n  tls:\n    clientValidation: {caCertificateRefs: [{name: ca}]}\n";
    let serves_the_certificate = |extra: &[(&'static str, &'static str)]| {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = harness::base_manifests(&backends);
        let mut files = vec![("base.yaml", base.as_str()), ("case.yaml", case.as_str())];
        files.extend_from_slice(extra);
        let load = harness::load(dir.path(), &files);
        let plan = gateway::compile(&load.snapshot, "gateway-conformance-infra", "edge")
            .expect("compiles");
        let served = match plan.ports.get(&443) {
            Some(gateway::plan::Listen::Tls(t)) => t.config.is_some(),
            Some(_) => panic!("port 443 is a TLS port"),
            None => false,
        };
        (served, plan.unserved)
    };
    let (served, unserved) = serves_the_certificate(&[]);
    assert!(
        !served,
        "a Secret of another namespace was loaded without a grant"
    );
    assert!(
        unserved
            .iter()
            .any(|(l, port, why)| l == "https" && *port == 443 && why.contains("ReferenceGrant")),
        "{unserved:?}"
    );
    let (served, unserved) = serves_the_certificate(&[("grant.yaml", grant)]);
    assert!(served && unserved.is_empty(), "{unserved:?}");
    // Client certificates asked for and not verified by trellis: the HTTPS listener is not
    // served at all (fail closed), rather than served to clients without one.
    let (served, unserved) = serves_the_certificate(&[("grant.yaml", grant), ("mtls.yaml", mtls)]);
    assert!(
        !served,
        "served without verifying the client certificates asked for"
    );
    assert!(
        unserved
            .iter()
            .any(|(l, _, why)| l == "https" && why.contains("clientValidation")),
        "{unserved:?}"
    );
}

/// A traffic policy validation refused is never applied in part: a BackendTrafficPolicy
/// asking for a rate limit (not enforced by trellis) makes its route answer 500, while one
/// asking only for what trellis leaves to its own defaults (load-balancer type) is applied; a
/// ClientTrafficPolicy asking for path normalisation keeps its Gateway's listeners unserved.
#[tokio::test]
async fn a_refused_traffic_policy_is_never_served_without_what_it_asks() {
    let backends = harness::start_backends().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let route = |name: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: gateway-conformance-infra}}\n\
spec:\n  parentRefs: [{{name: refusals}}]\n  hostnames: [{name}.example]\n  rules: [{{backendRefs: [{{name: infra-backend-v1, port: 8080}}]}}]\n---\n\
apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: BackendTrafficPolicy\nmetadata: {{name: {name}, namespace: gateway-conformance-infra}}\n\
spec:\n  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: {name}}}]\n"
        )
    };
    let case = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: refusals, namespace: gateway-conformance-infra}}\n\
spec:\n  gatewayClassName: trellis\n  listeners:\n    - {{name: http, protocol: HTTP, port: 80}}\n---\n\
{}  rateLimit: {{type: Local, local: {{rules: [{{limit: {{requests: 1, unit: Hour}}}}]}}}}\n---\n\
{}  loadBalancer: {{type: Random}}\n---\n\
apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: normalised, namespace: gateway-conformance-infra}}\n\
spec:\n  gatewayClassName: trellis\n  listeners:\n    - {{name: http, protocol: HTTP, port: 80}}\n---\n\
apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: ClientTrafficPolicy\nmetadata: {{name: paths, namespace: gateway-conformance-infra}}\n\
spec:\n  targetRefs: [{{group: gateway.networking.k8s.io, kind: Gateway, name: normalised}}]\n  path: {{disableMergeSlashes: true}}\n",
        route("limited"),
        route("tuned")
    );
    let load = harness::load(
        dir.path(),
        &[
            ("base.yaml", &harness::base_manifests(&backends)),
            ("case.yaml", &case),
        ],
    );
    let plan = gateway::compile(&load.snapshot, "gateway-conformance-infra", "normalised")
        .expect("compiles");
    assert!(plan.ports.is_empty(), "nothing is bound");
    assert!(
        plan.unserved
            .iter()
            .any(|(l, _, why)| l == "http" && why.contains("spec.path")),
        "{:?}",
        plan.unserved
    );
    let (running, _) = harness::start_gateway(
        dir.path(),
        &backends,
        &case,
        "refusals",
        &[80],
        gateway::Bind::default(),
    )
    .await;
    let addr = running.bound[&80];
    tokio::task::spawn_blocking(move || {
        let (status, _, body) = harness::request(addr, "Host: limited.example", &[]);
        assert_eq!(status, 500, "the rate-limited route is refused: {body}");
        let (status, _, body) = harness::request(addr, "Host: tuned.example", &[]);
        assert_eq!(status, 200, "the tuned route is served: {body}");
    })
    .await
    .expect("requests");
}

/// Of two SecurityPolicies on one route, the older (creationTimestamp, GEP-713) is the one
/// enforced, whatever the names: here it asks for basic authentication and the newer one, first
/// by name, asks for nothing. Validation and the compile agree on it.
#[tokio::test]
async fn the_older_of_two_policies_on_a_route_is_enforced() {
    let backends = harness::start_backends().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // `htpasswd -nbs alice secret`
    let case = "apiVersion: v1\nkind: Secret\nmetadata: {name: users, namespace: gateway-conformance-infra}\nstringData:\n  .htpasswd: \"alice:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\"\n---\n\
apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: ordered, namespace: gateway-conformance-infra}\n\
spec:\n  parentRefs: [{name: same-namespace}]\n  hostnames: [ordered.example]\n  rules: [{backendRefs: [{name: infra-backend-v1, port: 8080}]}]\n---\n\
apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: a-open, namespace: gateway-conformance-infra, creationTimestamp: '2026-02-01T00:00:00Z'}\n\
spec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: ordered}]\n  cors: {allowOrigins: ['https://a.example']}\n---\n\
apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: b-guard, namespace: gateway-conformance-infra, creationTimestamp: '2025-01-01T00:00:00Z'}\n\
spec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: ordered}]\n  basicAuth: {users: {name: users}}\n";
    let (running, _) = harness::start_gateway(
        dir.path(),
        &backends,
        case,
        "same-namespace",
        &[80],
        gateway::Bind::default(),
    )
    .await;
    let addr = running.bound[&80];
    tokio::task::spawn_blocking(move || {
        let (status, _, body) = harness::request(addr, "Host: ordered.example", &[]);
        assert_eq!(status, 401, "the older policy's authentication: {body}");
        let (status, _, body) =
            harness::request(addr, "Host: ordered.example", &["-u", "alice:secret"]);
        assert_eq!(status, 200, "{body}");
    })
    .await
    .expect("requests");
}

/// Policies on one section (`targetRefs[].sectionName`) apply there and only there, the most
/// specific first (GEP-713): a SecurityPolicy on a route rule guards that rule on every
/// listener and wins over one on a listener, which guards every other rule coming through
/// it; a refused BackendTrafficPolicy on one rule refuses that rule alone.
#[tokio::test]
async fn a_policy_on_one_section_applies_there_and_only_there() {
    let backends = harness::start_backends().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // `htpasswd -nbs alice secret`, `htpasswd -nbs bob hunter2`
    let case = "apiVersion: v1\nkind: Secret\nmetadata: {name: admins, namespace: gateway-conformance-infra}\nstringData:\n  .htpasswd: \"alice:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\"\n---\n\
apiVersion: v1\nkind: Secret\nmetadata: {name: staff, namespace: gateway-conformance-infra}\nstringData:\n  .htpasswd: \"bob:{SHA}87u9ZqY9S/F0eUBXjsPQEDUw4h0=\"\n---\n\
apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: sections, namespace: gateway-conformance-infra}\n\
spec:\n  gatewayClassName: trellis\n  listeners:\n    - {name: open, protocol: HTTP, port: 80}\n    - {name: staff, protocol: HTTP, port: 8080}\n---\n\
apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: split, namespace: gateway-conformance-infra}\n\
spec:\n  parentRefs: [{name: sections}]\n  rules:\n\
  \x20 - {name: admin, matches: [{path: {type: PathPrefix, value: /admin}}], backendRefs: [{name: infra-backend-v1, port: 8080}]}\n\
  \x20 - {name: limited, matches: [{path: {type: PathPrefix, value: /limited}}], backendRefs: [{name: infra-backend-v1, port: 8080}]}\n\
  \x20 - {name: public, backendRefs: [{name: infra-backend-v1, port: 8080}]}\n---\n\
apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: rule-guard, namespace: gateway-conformance-infra}\n\
spec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: split, sectionName: admin}]\n  basicAuth: {users: {name: admins}}\n---\n\
apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: listener-guard, namespace: gateway-conformance-infra}\n\
spec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: sections, sectionName: staff}]\n  basicAuth: {users: {name: staff}}\n---\n\
apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: BackendTrafficPolicy\nmetadata: {name: rule-limit, namespace: gateway-conformance-infra}\n\
spec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: split, sectionName: limited}]\n  rateLimit: {type: Local, local: {rules: [{limit: {requests: 1, unit: Hour}}]}}\n";
    let (running, _) = harness::start_gateway(
        dir.path(),
        &backends,
        case,
        "sections",
        &[80, 8080],
        gateway::Bind::default(),
    )
    .await;
    let (open, staff) = (running.bound[&80], running.bound[&8080]);
    tokio::task::spawn_blocking(move || {
        let status = |addr: std::net::SocketAddr, path: &str, user: Option<&str>| {
            let url = format!("http://{addr}{path}");
            let mut args = vec!["-o", "/dev/null", url.as_str()];
            if let Some(u) = user {
                args.extend(["-u", u]);
            }
            let (head, _) = harness::curl(&args);
            head.split_whitespace()
                .nth(1)
                .and_then(|s| s.parse::<u16>().ok())
                .expect("status")
        };
        let (alice, bob) = (Some("alice:secret"), Some("bob:hunter2"));
        // The open listener: only the admin rule asks for credentials.
        assert_eq!(status(open, "/", None), 200);
        assert_eq!(status(open, "/admin", None), 401);
        assert_eq!(status(open, "/admin", alice), 200);
        assert_eq!(status(open, "/admin", bob), 401);
        // The staff listener: its policy guards the rules without their own.
        assert_eq!(status(staff, "/", None), 401);
        assert_eq!(status(staff, "/", bob), 200);
        assert_eq!(status(staff, "/", alice), 401);
        // The rule's own policy is the more specific one.
        assert_eq!(status(staff, "/admin", alice), 200);
        assert_eq!(status(staff, "/admin", bob), 401);
        // The refused BackendTrafficPolicy refuses its rule alone.
        assert_eq!(status(open, "/limited", None), 500);
    })
    .await
    .expect("requests");
}

/// A ClientTrafficPolicy on one listener is refused (client settings are per port, which
/// listeners share): that listener is not served and no route comes in through it, while
/// the Gateway's other listeners are. A SecurityPolicy on a TCP listener refuses the
/// connections of the routes attached there.
#[tokio::test]
async fn a_listener_a_refused_policy_names_is_not_served() {
    let backends = harness::start_backends().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let case = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: two, namespace: gateway-conformance-infra}\n\
spec:\n  gatewayClassName: trellis\n  listeners:\n    - {name: a, protocol: HTTP, port: 80}\n    - {name: b, protocol: HTTP, port: 8080}\n    - {name: raw, protocol: TCP, port: 9000}\n    - {name: limited, protocol: TCP, port: 9001}\n---\n\
apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: both, namespace: gateway-conformance-infra}\n\
spec:\n  parentRefs: [{name: two}]\n  rules: [{backendRefs: [{name: infra-backend-v1, port: 8080}]}]\n---\n\
apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TCPRoute\nmetadata: {name: raw, namespace: gateway-conformance-infra}\n\
spec:\n  parentRefs: [{name: two, sectionName: raw}]\n  rules: [{backendRefs: [{name: infra-backend-v1, port: 8080}]}]\n---\n\
apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: ClientTrafficPolicy\nmetadata: {name: only-b, namespace: gateway-conformance-infra}\n\
spec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: two, sectionName: b}]\n  tcpKeepalive: {idleTime: 60s}\n---\n\
apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: raw-guard, namespace: gateway-conformance-infra}\n\
spec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: two, sectionName: raw}]\n  cors: {allowOrigins: ['https://a.example']}\n---\n\
apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TCPRoute\nmetadata: {name: limited, namespace: gateway-conformance-infra}\n\
spec:\n  parentRefs: [{name: two, sectionName: limited}]\n  rules: [{name: r0, backendRefs: [{name: infra-backend-v1, port: 8080}]}]\n---\n\
apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: BackendTrafficPolicy\nmetadata: {name: a-whole, namespace: gateway-conformance-infra, creationTimestamp: '2025-01-01T00:00:00Z'}\n\
spec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: TCPRoute, name: limited}]\n  tcpKeepalive: {idleTime: 60s}\n---\n\
apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: BackendTrafficPolicy\nmetadata: {name: b-rule, namespace: gateway-conformance-infra, creationTimestamp: '2026-01-01T00:00:00Z'}\n\
spec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: TCPRoute, name: limited, sectionName: r0}]\n  rateLimit: {type: Local, local: {rules: [{limit: {requests: 1, unit: Hour}}]}}\n";
    let load = harness::load(
        dir.path(),
        &[
            ("base.yaml", &harness::base_manifests(&backends)),
            ("case.yaml", case),
        ],
    );
    let plan =
        gateway::compile(&load.snapshot, "gateway-conformance-infra", "two").expect("compiles");
    let unserved: Vec<&str> = plan.unserved.iter().map(|(l, _, _)| l.as_str()).collect();
    assert_eq!(unserved, ["b"], "{:?}", plan.unserved);
    assert!(plan.unserved[0].2.contains("only-b"), "{:?}", plan.unserved);
    assert!(plan.ports.contains_key(&80), "listener a is served");
    assert!(!plan.ports.contains_key(&8080), "listener b is not");
    assert!(
        plan.problems
            .iter()
            .any(|(k, why)| k.name == "raw-guard" && why.contains("not enforced on L4 routes")),
        "{:?}",
        plan.problems
    );
    // A refused policy on one section of a TCPRoute refuses the route, even where an older
    // policy holds the whole route.
    let Some(gateway::plan::Listen::Tcp(limited)) = plan.ports.get(&9001) else {
        panic!("port 9001 serves TCP");
    };
    let why = limited.backends[0].1.invalid.as_deref().unwrap_or_default();
    assert!(why.contains("b-rule"), "{why:?}");
}

/// A request belongs to the most specific listener whose hostname matches it: a route
/// attached to a wildcard listener and to an exact one is guarded by the exact listener's
/// policy for that name, and a name whose listener has no route for it (or is not served)
/// is answered 404, never by a less specific listener's routes.
#[tokio::test]
async fn a_name_belongs_to_its_most_specific_listener() {
    let backends = harness::start_backends().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // `htpasswd -nbs alice secret`
    let case = "apiVersion: v1\nkind: Secret\nmetadata: {name: users, namespace: gateway-conformance-infra}\nstringData:\n  .htpasswd: \"alice:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\"\n---\n\
apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: hosts, namespace: gateway-conformance-infra}\n\
spec:\n  gatewayClassName: trellis\n  listeners:\n    - {name: wild, protocol: HTTP, port: 80, hostname: '*.example.com'}\n    - {name: foo, protocol: HTTP, port: 80, hostname: foo.example.com}\n    - {name: bar, protocol: HTTP, port: 80, hostname: bar.example.com}\n---\n\
apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: app, namespace: gateway-conformance-infra}\n\
spec:\n  parentRefs: [{name: hosts}]\n  hostnames: [foo.example.com, bar.example.com]\n  rules: [{backendRefs: [{name: infra-backend-v1, port: 8080}]}]\n---\n\
apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: rest, namespace: gateway-conformance-infra}\n\
spec:\n  parentRefs: [{name: hosts, sectionName: wild}]\n  rules: [{backendRefs: [{name: infra-backend-v1, port: 8080}]}]\n---\n\
apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: foo-guard, namespace: gateway-conformance-infra}\n\
spec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: hosts, sectionName: foo}]\n  basicAuth: {users: {name: users}}\n---\n\
apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: ClientTrafficPolicy\nmetadata: {name: bar-client, namespace: gateway-conformance-infra}\n\
spec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: hosts, sectionName: bar}]\n  tcpKeepalive: {idleTime: 60s}\n";
    let load = harness::load(
        dir.path(),
        &[
            ("base.yaml", &harness::base_manifests(&backends)),
            ("case.yaml", case),
        ],
    );
    let plan =
        gateway::compile(&load.snapshot, "gateway-conformance-infra", "hosts").expect("compiles");
    let unserved: Vec<&str> = plan.unserved.iter().map(|(l, _, _)| l.as_str()).collect();
    assert_eq!(unserved, ["bar"], "{:?}", plan.unserved);
    let bind = gateway::Bind {
        ip: Some("127.0.0.1".parse().expect("ip")),
        port_map: [(80, 0)].into_iter().collect(),
        ..gateway::Bind::default()
    };
    let metrics = std::sync::Arc::new(gateway::metrics::Metrics::default());
    let running = gateway::start(&plan, &bind, metrics).await.expect("starts");
    let addr = running.bound[&80];
    tokio::task::spawn_blocking(move || {
        let status =
            |host: &str, user: &[&str]| harness::request(addr, &format!("Host: {host}"), user).0;
        assert_eq!(status("foo.example.com", &[]), 401, "listener foo's policy");
        assert_eq!(status("foo.example.com", &["-u", "alice:secret"]), 200);
        assert_eq!(
            status("bar.example.com", &[]),
            404,
            "listener bar is not served"
        );
        assert_eq!(
            status("baz.example.com", &[]),
            200,
            "listener wild's own route"
        );
    })
    .await
    .expect("requests");
}
