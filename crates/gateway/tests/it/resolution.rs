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
