//! The real cluster's manifests (`../shared/corpus/home-ops`) load unchanged, and the only
//! problems reported are references that truly point outside the corpus.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use model::ObjectKey;
use model::validate::GATEWAY_GROUP;

pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/home-ops/kubernetes")
}

fn load() -> store::Load {
    let dir = corpus_dir();
    assert!(dir.is_dir(), "corpus not found at {}", dir.display());
    store::load(
        &[dir],
        &store::Options {
            default_namespace: "default".into(),
            ..Default::default()
        },
    )
}

#[test]
fn every_file_is_read_and_nothing_fails_to_parse() {
    let load = load();
    let s = &load.snapshot;
    assert!(!s.has_errors(), "errors: {:#?}", s.diagnostics);
    let on_disk: BTreeSet<PathBuf> = walk(&corpus_dir())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "lua"))
        .map(|p| p.canonicalize().expect("exists"))
        .collect();
    let read: BTreeSet<PathBuf> = load
        .files
        .iter()
        .map(|p| p.canonicalize().expect("exists"))
        .collect();
    let unread: Vec<_> = on_disk.difference(&read).collect();
    assert!(unread.is_empty(), "files never read: {unread:#?}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("readable") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn served_kinds_and_namespaces() {
    let s = load().snapshot;
    let count = |kind: &str| s.entries.keys().filter(|k| k.kind == kind).count();
    assert_eq!(count("Gateway"), 2);
    assert_eq!(count("GatewayClass"), 1);
    assert_eq!(count("TLSRoute"), 3);
    assert_eq!(count("NetworkAttachmentDefinition"), 4);
    assert_eq!(count("CiliumNetworkPolicy"), 2);
    assert_eq!(count("EnvoyExtensionPolicy"), 2);
    assert_eq!(count("SecurityPolicy"), 5);
    // Namespaces come from the kustomization, the Flux Kustomization or the folder layout.
    let key = |g: &str, k: &str, ns: &str, n: &str| ObjectKey::new(g, k, ns, n);
    for k in [
        key(
            "gateway.networking.k8s.io",
            "Gateway",
            "network",
            "envoy-external",
        ),
        key("gateway.networking.k8s.io", "HTTPRoute", "dev", "forgejo"),
        key(
            "gateway.networking.k8s.io",
            "ReferenceGrant",
            "security",
            "ref-authentik-svc-embedded",
        ),
        key("cilium.io", "CiliumNetworkPolicy", "dev", "forgejo-runner"),
        key(
            "k8s.cni.cncf.io",
            "NetworkAttachmentDefinition",
            "network",
            "multus-iot",
        ),
    ] {
        assert!(s.entries.contains_key(&k), "{k} not loaded");
    }
    // Kinds trellis does not serve are counted, never errors.
    assert_eq!(
        s.skipped.get("helm.toolkit.fluxcd.io/HelmRelease"),
        Some(&10)
    );
    assert_eq!(
        s.skipped.get("grafana.integreatly.org/GrafanaDashboard"),
        Some(&6)
    );
}

#[test]
fn config_map_generator_feeds_the_lua_policy() {
    let s = load().snapshot;
    let cm = model::snapshot::get(&s.config_maps, "network", "envoy-external-extensions")
        .expect("generated");
    let lua = cm
        .spec
        .data
        .as_ref()
        .and_then(|d| d.get("block-user-agents.lua"))
        .expect("file key");
    assert!(lua.contains("envoy_on_request"), "{lua}");
    let key = ObjectKey::new(
        "gateway.envoyproxy.io",
        "EnvoyExtensionPolicy",
        "network",
        "envoy-external",
    );
    let st = s.status.get(&key).expect("status");
    assert!(!st.has_problem(), "{st:#?}");
}

/// Every object with a problem, with the reason: all must be references to objects that the
/// corpus does not hold (Services and Secrets made by HelmReleases and cert-manager), a
/// variable the corpus does not define, a real conflict in the corpus, or the unsupported BGP
/// kinds.
#[test]
fn only_true_outside_references_are_flagged() {
    let s = load().snapshot;
    let mut flagged = BTreeSet::new();
    for (k, st) in &s.status {
        for c in st.all_conditions().filter(|c| c.is_problem()) {
            flagged.insert(format!("{k} {}={}({})", c.type_, c.status, c.reason));
        }
    }
    let want: BTreeSet<String> = [
        "CiliumBGPAdvertisement l3-bgp-advertisement Accepted=False(Unsupported)",
        "CiliumBGPClusterConfig l3-bgp-cluster-config Accepted=False(Unsupported)",
        "CiliumBGPPeerConfig l3-bgp-peer-config Accepted=False(Unsupported)",
        "CiliumNetworkPolicy dev/forgejo-runner ResolvedRefs=False(CIDRGroupNotFound)",
        "DNSEndpoint network/cloudflare-tunnel Accepted=False(Invalid)",
        "DNSEndpoint workadventure/coturn Conflicted=True(Duplicate)",
        "Gateway network/envoy-external ResolvedRefs=False(InvalidCertificateRef)",
        "Gateway network/envoy-internal ResolvedRefs=False(InvalidCertificateRef)",
        "HTTPRoute ai/mcp-gateway ResolvedRefs=False(BackendNotFound)",
        "HTTPRoute ai/mcp-gateway-internal ResolvedRefs=False(BackendNotFound)",
        "HTTPRoute dev/forgejo ResolvedRefs=False(BackendNotFound)",
        "HTTPRoute flux-system/github-webhook ResolvedRefs=False(BackendNotFound)",
        "HTTPRoute flux-system/headlamp ResolvedRefs=False(BackendNotFound)",
        "HTTPRoute observability/alertmanager-ext ResolvedRefs=False(BackendNotFound)",
        "HTTPRoute observability/alloy-logs ResolvedRefs=False(BackendNotFound)",
        "HTTPRoute observability/alloy-profiles ResolvedRefs=False(BackendNotFound)",
        "HTTPRoute observability/alloy-receiver ResolvedRefs=False(BackendNotFound)",
        "HTTPRoute observability/alloy-singleton ResolvedRefs=False(BackendNotFound)",
        "HTTPRoute observability/loki-ext ResolvedRefs=False(BackendNotFound)",
        "HTTPRoute observability/prometheus-ext ResolvedRefs=False(BackendNotFound)",
        "HTTPRoute observability/pyroscope-ext Conflicted=True(Duplicate)",
        "HTTPRoute observability/pyroscope-ext ResolvedRefs=False(BackendNotFound)",
        "HTTPRoute observability/tempo-ext ResolvedRefs=False(BackendNotFound)",
        "HTTPRoute security/policy-reporter ResolvedRefs=False(BackendNotFound)",
        "SecurityPolicy observability/alertmanager-ext ResolvedRefs=False(BackendNotFound)",
        "SecurityPolicy observability/loki-ext ResolvedRefs=False(BackendNotFound)",
        "SecurityPolicy observability/prometheus-ext ResolvedRefs=False(BackendNotFound)",
        "SecurityPolicy observability/pyroscope-ext ResolvedRefs=False(BackendNotFound)",
        "SecurityPolicy observability/tempo-ext ResolvedRefs=False(BackendNotFound)",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let missing: Vec<_> = want.difference(&flagged).collect();
    let extra: Vec<_> = flagged.difference(&want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing: {missing:#?}\nextra: {extra:#?}"
    );
}

#[test]
fn the_cloudflare_tunnel_record_resolves_with_vars() {
    let dir = corpus_dir();
    let opts = store::Options {
        vars: [(
            "CLOUDFLARE_TUNNEL_ID".to_string(),
            "6f1f6c1e-2f35-4d4b-9c53-3f1a8c3b1e42".to_string(),
        )]
        .into(),
        default_namespace: "default".into(),
        ..Default::default()
    };
    let s = store::load(&[dir], &opts).snapshot;
    let key = ObjectKey::new(
        "externaldns.k8s.io",
        "DNSEndpoint",
        "network",
        "cloudflare-tunnel",
    );
    assert!(!s.status[&key].has_problem(), "{:#?}", s.status[&key]);
    let d = model::snapshot::get(&s.dns_endpoints, "network", "cloudflare-tunnel").expect("loaded");
    assert_eq!(
        d.spec.endpoints[0].targets[0],
        "6f1f6c1e-2f35-4d4b-9c53-3f1a8c3b1e42.cfargotunnel.com"
    );
}

/// The typed resolution the components read says what the conditions written beside it say:
/// accepted Gateways and their usable listeners, the listeners each route attached to, the
/// policies' targets, owners and refusals. Checked over the whole corpus.
#[test]
fn the_resolution_says_what_the_conditions_say() {
    use model::object::cond::{self, reason};
    use model::resolution::GatewayVerdict;
    use model::{Condition, Status};
    let s = load().snapshot;
    let is_true =
        |cs: &[Condition], t: &str| cs.iter().any(|c| c.type_ == t && c.status == Status::True);
    let mut accepted_gateways = 0;
    let mut unresolved_listeners = 0;
    for gw in s.gateways.values() {
        let key = ObjectKey::new(GATEWAY_GROUP, "Gateway", gw.namespace(), gw.name());
        let st = &s.status[&key];
        match &s.resolution.gateways[&key] {
            GatewayVerdict::Accepted(listeners) => {
                let usable = &listeners.usable;
                accepted_gateways += 1;
                // Usable listeners whose references do not resolve, with the condition's
                // message (the corpus's HTTPS listeners: their Secrets are not in it).
                let unresolved: std::collections::BTreeMap<String, String> = st
                    .listeners
                    .iter()
                    .filter(|l| usable.contains(&l.name))
                    .filter_map(|l| {
                        let c = l.conditions.iter().find(|c| {
                            c.type_ == cond::RESOLVED_REFS
                                && c.status != Status::True
                                && c.reason != reason::INVALID_ROUTE_KINDS
                        })?;
                        Some((l.name.clone(), c.message.clone()))
                    })
                    .collect();
                assert_eq!(listeners.unresolved, unresolved, "{key}");
                unresolved_listeners += unresolved.len();
                assert!(is_true(&st.conditions, cond::ACCEPTED), "{key}");
                let want: Vec<String> = st
                    .listeners
                    .iter()
                    .filter(|l| {
                        is_true(&l.conditions, cond::ACCEPTED)
                            && !is_true(&l.conditions, cond::CONFLICTED)
                    })
                    .map(|l| l.name.clone())
                    .collect();
                assert_eq!(usable, &want, "{key}");
            }
            GatewayVerdict::NotAccepted(why) => {
                let c = st.conditions.iter().find(|c| c.type_ == cond::ACCEPTED);
                assert!(
                    c.is_some_and(|c| c.status != Status::True && &c.message == why),
                    "{key}"
                );
            }
        }
    }
    assert_eq!(
        accepted_gateways, 2,
        "the corpus's external and internal gateways"
    );
    assert!(
        unresolved_listeners > 0,
        "the corpus's HTTPS listeners lack their Secrets"
    );
    // Every accepted parent of every route is an attachment with the same listeners, and
    // nothing else is.
    let mut attached = 0;
    for (key, st) in &s.status {
        if key.group != GATEWAY_GROUP || !key.kind.ends_with("Route") {
            continue;
        }
        let mut want: Vec<(ObjectKey, Vec<String>)> = Vec::new();
        for p in st
            .parents
            .iter()
            .filter(|p| is_true(&p.conditions, cond::ACCEPTED))
        {
            let gw = ObjectKey::new(
                GATEWAY_GROUP,
                "Gateway",
                &p.parent_ref.namespace,
                &p.parent_ref.name,
            );
            match want.iter_mut().find(|(g, _)| *g == gw) {
                Some((_, l)) => l.extend(p.listeners.iter().cloned()),
                None => want.push((gw, p.listeners.clone())),
            }
        }
        let got: Vec<(ObjectKey, Vec<String>)> = s
            .resolution
            .attachments
            .get(key)
            .into_iter()
            .flatten()
            .map(|a| (a.gateway.clone(), a.listeners.clone()))
            .collect();
        assert_eq!(got, want, "{key}");
        attached += got.len();
    }
    assert!(attached > 20, "{attached} attachments");
    // Policies: refused exactly when Accepted (other than Conflicted or TargetNotFound) or
    // ResolvedRefs is not True; the first policy of a kind naming a target owns it.
    let mut refused = 0;
    for (key, v) in &s.resolution.policies {
        let st = &s.status[key];
        let bad = st.conditions.iter().any(|c| {
            c.status != Status::True
                && (c.type_ == cond::RESOLVED_REFS
                    || (c.type_ == cond::ACCEPTED
                        && c.reason != reason::CONFLICTED
                        && c.reason != reason::TARGET_NOT_FOUND))
        });
        assert_eq!(v.refused.is_some(), bad, "{key}: {:?}", v.refused);
        refused += usize::from(bad);
        // The owner of each target is the first policy of the kind (in the snapshot's order)
        // that names it.
        for t in &v.targets {
            let first = s
                .resolution
                .policies
                .iter()
                .find(|(k, p)| k.kind == key.kind && p.targets.contains(t))
                .map(|(k, _)| k);
            assert_eq!(s.resolution.owner(&key.kind, t), first, "{key} -> {t}");
        }
    }
    assert!(
        refused > 0,
        "the corpus has refused SecurityPolicies (their backends are outside it)"
    );
    // Every Envoy Gateway policy of the corpus has a verdict.
    let keys = |kind: &str, names: Vec<&(String, String)>| -> Vec<ObjectKey> {
        names
            .into_iter()
            .map(|(ns, n)| ObjectKey::new("gateway.envoyproxy.io", kind, ns, n))
            .collect()
    };
    let all = [
        keys("SecurityPolicy", s.security_policies.keys().collect()),
        keys(
            "ClientTrafficPolicy",
            s.client_traffic_policies.keys().collect(),
        ),
        keys(
            "BackendTrafficPolicy",
            s.backend_traffic_policies.keys().collect(),
        ),
        keys(
            "EnvoyExtensionPolicy",
            s.envoy_extension_policies.keys().collect(),
        ),
    ];
    for key in all.iter().flatten() {
        assert!(
            s.resolution.policies.contains_key(key),
            "{key} has no verdict"
        );
    }
    assert!(s.resolution.policies.len() > 5);
}
