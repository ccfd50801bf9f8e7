//! SecurityPolicies fail closed: every policy trellis cannot enforce as written is
//! `Accepted=False` (or `ResolvedRefs=False`) with the reason, and the route it guards answers
//! 500 without the backend being asked, over HTTP/1.1 and HTTP/2 alike (curl). Basic
//! authentication is enforced, with `{SHA}` and bcrypt entries written by Apache's htpasswd.

use std::sync::Arc;

use crate::harness::{self, request};

/// A route `name.example.com` to infra-backend-v1 guarded by a SecurityPolicy with `spec`
/// (YAML lines indented by two).
fn guarded(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: gateway-conformance-infra}}\n\
         spec:\n  parentRefs: [{{name: same-namespace}}]\n  hostnames: [{name}.example.com]\n  rules: [{{backendRefs: [{{name: infra-backend-v1, port: 8080}}]}}]\n---\n\
         apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: SecurityPolicy\nmetadata: {{name: {name}, namespace: gateway-conformance-infra}}\n\
         spec:\n  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: {name}}}]\n{spec}---\n"
    )
}

/// Cases that must be refused: name, policy spec, what the condition's message must say.
const REFUSED: &[(&str, &str, &str)] = &[
    (
        // The corpus's envoy-oidc component, with its variables filled in, without its
        // Secret (which the cluster's external-secrets would make).
        "oidc",
        "  oidc:\n    provider: {issuer: 'https://auth.example.com/oauth2/openid/app'}\n    clientID: app\n    clientSecret: {name: app-oidc}\n    redirectURL: https://app.example.com/oauth2/callback\n    logoutPath: /logout\n",
        "secret gateway-conformance-infra/app-oidc not found",
    ),
    (
        // JWT is enforced, but not a JWKS reached through a backend.
        "jwtbackend",
        "  jwt:\n    providers: [{name: a, remoteJWKS: {uri: 'https://auth.example.com/jwks', backendRefs: [{name: infra-backend-v2, port: 8080}]}}]\n",
        "spec.jwt.providers[0].remoteJWKS.backendRefs: fetching a JWKS through a backend",
    ),
    (
        "jwtrecompute",
        "  jwt:\n    providers: [{name: a, recomputeRoute: true, claimToHeaders: [{header: x-a, claim: a}], remoteJWKS: {uri: 'https://auth.example.com/jwks'}}]\n",
        "spec.jwt.providers[0].recomputeRoute",
    ),
    (
        "jwtnokeys",
        "  jwt:\n    providers: [{name: a, localJWKS: {type: Inline, inline: '{\"keys\": 1}'}}]\n",
        "the JWKS has no `keys` array",
    ),
    (
        // A field of Envoy Gateway's OIDC that trellis does not implement yet.
        "oidcdeny",
        "  oidc:\n    provider: {issuer: 'https://auth.example.com'}\n    clientID: app\n    clientSecret: {name: users}\n    denyRedirect: {headers: [{name: accept, value: application/json}]}\n",
        "field `spec.oidc.denyRedirect` is not known to trellis",
    ),
    (
        "authz",
        // A rule about a token no provider of the policy verifies.
        "  authorization:\n    defaultAction: Deny\n    rules: [{action: Allow, principal: {jwt: {provider: nobody, scopes: [read]}}}]\n",
        "spec.authorization.rules[0].principal.jwt.provider: provider \"nobody\" is not one of this policy's jwt providers",
    ),
    (
        // sanitize cannot take a key out of the query: refused rather than leaked upstream.
        "keyleak",
        "  apiKeyAuth:\n    credentialRefs: [{name: api-keys}]\n    extractFrom: [{params: [key]}]\n    sanitize: true\n",
        "sanitize cannot take a key out of a query parameter",
    ),
    (
        "apikey",
        "  apiKeyAuth:\n    credentialRefs: [{name: keys}]\n    extractFrom: [{headers: [x-api-key]}]\n",
        "secret gateway-conformance-infra/keys not found",
    ),
    (
        // Another namespace's Secret without a ReferenceGrant there: never read.
        "apikeyother",
        "  apiKeyAuth:\n    credentialRefs: [{name: keys, namespace: gateway-conformance-app-backend}]\n    extractFrom: [{headers: [x-api-key]}]\n",
        "is in another namespace and no ReferenceGrant",
    ),
    (
        // The users are read from the policy's namespace: naming another is refused.
        "basicother",
        "  basicAuth:\n    users: {name: users, namespace: gateway-conformance-app-backend}\n",
        "the users Secret must be in the policy's namespace",
    ),
    (
        "oidcother",
        "  oidc:\n    provider: {issuer: 'https://auth.example.com'}\n    clientID: app\n    clientSecret: {name: users, namespace: gateway-conformance-app-backend}\n",
        "is in another namespace and no ReferenceGrant",
    ),
    (
        "nobackend",
        "  extAuth:\n    failOpen: true\n    http: {path: /auth}\n",
        "spec.extAuth.http: extAuth.http needs backendRef",
    ),
    (
        // An authorization service that does not exist is a wrong policy, not an unavailable
        // service: failOpen does not apply.
        "missingservice",
        "  extAuth:\n    failOpen: true\n    http:\n      backendRefs: [{name: no-such-service, port: 80}]\n",
        "no-such-service",
    ),
    (
        "body",
        "  extAuth:\n    bodyToExtAuth: {maxRequestBytes: 100}\n    http:\n      backendRefs: [{name: infra-backend-v2, port: 8080}]\n",
        "spec.extAuth.bodyToExtAuth",
    ),
    (
        // A field trellis does not know might narrow access: refused, not ignored.
        "unknown",
        "  basicAuth:\n    users: {name: users}\n    allowedNetworks: [10.0.0.0/8]\n",
        "field `spec.basicAuth.allowedNetworks` is not known to trellis",
    ),
    (
        "nosecret",
        "  basicAuth:\n    users: {name: no-such-secret}\n",
        "no-such-secret not found",
    ),
    (
        // APR1-MD5 (`htpasswd -m`) is a format Envoy's basic_auth does not take either.
        "apr1",
        "  basicAuth:\n    users: {name: apr1-users}\n",
        "APR1-MD5 hash format is not supported",
    ),
    (
        // A bcrypt cost that would make each wrong password cost seconds of CPU.
        "costly",
        "  basicAuth:\n    users: {name: costly-users}\n",
        "bcrypt cost 14 is outside 4 to 12",
    ),
];

/// `htpasswd -nbs alice secret`
const HTPASSWD: &str = "alice:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\n";

/// An `.htpasswd` line from Apache's `htpasswd` (apache2-utils), with its `args`.
fn htpasswd(args: &[&str]) -> String {
    let out = std::process::Command::new("htpasswd")
        .args(args)
        .output()
        .expect("htpasswd (apache2-utils; cargo xtask test installs it)");
    assert!(out.status.success(), "htpasswd {args:?}: {out:?}");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

fn secrets() -> String {
    let secret = |name: &str, line: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: gateway-conformance-infra}}\nstringData:\n  .htpasswd: \"{line}\\n\"\n---\n"
        )
    };
    [
        secret("users", HTPASSWD.trim_end()),
        "apiVersion: v1\nkind: Secret\nmetadata: {name: api-keys, namespace: gateway-conformance-infra}\nstringData: {client-a: key-of-a, client-b: key-of-b}\n---\n".to_string(),
        secret("apr1-users", &htpasswd(&["-nbm", "bob", "secret"])),
        secret("costly-users", &htpasswd(&["-nbB", "-C", "14", "bob", "secret"])),
        // bcrypt, as `htpasswd -B` writes it (cost 5), beyond what Envoy takes.
        secret("bcrypt-users", &htpasswd(&["-nbB", "carol", "s3cret"])),
    ]
    .concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_that_cannot_be_enforced_refuse_their_routes() {
    let backends = harness::start_backends().await;
    let mut manifests = secrets();
    for (name, spec, _) in REFUSED {
        manifests.push_str(&guarded(name, spec));
    }
    manifests.push_str(&guarded(
        "corsy",
        "  cors:\n    allowOrigins: ['https://*.example.com', 'https://app.test']\n    allowMethods: [GET, POST]\n    allowHeaders: [x-custom]\n    exposeHeaders: [x-total]\n    maxAge: 600s\n    allowCredentials: true\n  basicAuth:\n    users: {name: users}\n",
    ));
    manifests.push_str(&guarded(
        "keyed",
        "  apiKeyAuth:\n    credentialRefs: [{name: api-keys}]\n    extractFrom: [{headers: [x-api-key]}]\n    forwardClientIDHeader: x-client\n    sanitize: true\n",
    ));
    manifests.push_str(&guarded(
        "keyedparam",
        "  apiKeyAuth:\n    credentialRefs: [{name: api-keys}]\n    extractFrom: [{params: [key]}]\n    forwardClientIDHeader: x-client\n",
    ));
    manifests.push_str(&guarded(
        "basic",
        "  basicAuth:\n    users: {name: users}\n    forwardUsernameHeader: x-user\n",
    ));
    manifests.push_str(&guarded(
        "bcrypt",
        "  basicAuth:\n    users: {name: bcrypt-users}\n    forwardUsernameHeader: x-user\n",
    ));

    // The verdict `trellis check` shows.
    let dir = tempfile::tempdir().expect("tmp");
    let load = harness::load(
        dir.path(),
        &[
            ("base.yaml", &harness::base_manifests(&backends)),
            ("case.yaml", &manifests),
        ],
    );
    for (name, _, why) in REFUSED {
        let key = model::ObjectKey::new(
            "gateway.envoyproxy.io",
            "SecurityPolicy",
            "gateway-conformance-infra",
            name,
        );
        let status = load.snapshot.status_of(&key).expect("status");
        let refused = status.conditions.iter().any(|c| {
            (c.type_ == "Accepted" || c.type_ == "ResolvedRefs")
                && c.status == model::Status::False
                && c.message.contains(why)
        });
        // The hash formats are found when compiling (the secret exists and resolves).
        assert!(
            refused || *name == "apr1" || *name == "costly",
            "{name}: {:?}",
            status.conditions
        );
    }
    let basic_key = model::ObjectKey::new(
        "gateway.envoyproxy.io",
        "SecurityPolicy",
        "gateway-conformance-infra",
        "basic",
    );
    assert!(
        !load
            .snapshot
            .status_of(&basic_key)
            .expect("status")
            .has_problem(),
        "{:?}",
        load.snapshot.status_of(&basic_key)
    );

    let metrics = Arc::new(gateway::metrics::Metrics::default());
    let (plan, running) = harness::serve(&backends, &manifests, metrics.clone()).await;
    for (name, why) in [
        ("apr1", "APR1-MD5 hash format"),
        ("costly", "bcrypt cost 14"),
    ] {
        assert!(
            plan.problems
                .iter()
                .any(|(k, m)| k.name == name && m.contains(why)),
            "{name}: {:?}",
            plan.problems
        );
    }
    assert!(
        !plan.problems.iter().any(|(k, _)| k.name == "bcrypt"),
        "{:?}",
        plan.problems
    );
    let addr = running.bound[&80];
    let echo = backends.0["gateway-conformance-infra/infra-backend-v1"].clone();
    tokio::task::spawn_blocking(move || {
        for (name, _, _) in REFUSED {
            let host = format!("Host: {name}.example.com");
            for proto in ["--http1.1", "--http2-prior-knowledge"] {
                // Credentials that would pass basic auth change nothing.
                let (status, _, body) = request(addr, &host, &[proto, "-u", "alice:secret"]);
                assert_eq!(status, 500, "{name} {proto}: {body}");
            }
        }
        assert!(
            echo.seen().is_empty(),
            "a refused route reached its backend"
        );

        // CORS: a preflight from an allowed origin is answered here, before authentication;
        // answers to an allowed origin carry its headers, others none.
        for proto in ["--http1.1", "--http2-prior-knowledge"] {
            let host = "Host: corsy.example.com";
            let before = echo.seen().len();
            let (status, head, _) = request(
                addr,
                host,
                &[
                    proto,
                    "-X",
                    "OPTIONS",
                    "-H",
                    "Origin: https://a.example.com",
                    "-H",
                    "Access-Control-Request-Method: POST",
                ],
            );
            assert_eq!(status, 200, "{head}");
            for h in [
                "access-control-allow-origin: https://a.example.com",
                "access-control-allow-methods: get, post",
                "access-control-allow-headers: x-custom",
                "access-control-max-age: 600",
                "access-control-allow-credentials: true",
            ] {
                assert!(head.contains(h), "{h}: {head}");
            }
            assert_eq!(echo.seen().len(), before, "a preflight is not forwarded");
            let (status, head, _) = request(
                addr,
                host,
                &[
                    proto,
                    "-u",
                    "alice:secret",
                    "-H",
                    "Origin: https://app.test",
                ],
            );
            assert_eq!(status, 200);
            assert!(
                head.contains("access-control-allow-origin: https://app.test"),
                "{head}"
            );
            assert!(
                head.contains("access-control-expose-headers: x-total"),
                "{head}"
            );
            let (status, head, _) = request(
                addr,
                host,
                &[
                    proto,
                    "-u",
                    "alice:secret",
                    "-H",
                    "Origin: https://evil.test",
                ],
            );
            assert_eq!(status, 200);
            assert!(!head.contains("access-control-"), "{head}");
            let (status, head, _) =
                request(addr, host, &[proto, "-H", "Origin: https://b.example.com"]);
            assert_eq!(status, 401, "still authenticated");
            assert!(
                head.contains("access-control-allow-origin: https://b.example.com"),
                "{head}"
            );
        }

        // API keys: from the header (taken off before the backend) or the parameter.
        for proto in ["--http1.1", "--http2-prior-knowledge"] {
            let host = "Host: keyed.example.com";
            let (status, _, body) = request(addr, host, &[proto]);
            assert_eq!(
                (status, body.trim()),
                (401, "Client authentication failed.")
            );
            let (status, _, _) = request(addr, host, &[proto, "-H", "x-api-key: key-of-c"]);
            assert_eq!(status, 401, "a key nobody has");
            let (status, _, body) = request(addr, host, &[proto, "-H", "x-api-key: key-of-b"]);
            assert_eq!(status, 200, "{body}");
            let seen: serde_json::Value = serde_json::from_str(&body).expect("echo json");
            assert_eq!(seen["headers"]["x-client"], "client-b");
            assert!(
                seen["headers"].get("x-api-key").is_none(),
                "sanitized: {seen}"
            );
        }
        let url = format!("http://{addr}/x?key=key-of-a");
        let (head, body) = harness::curl(&["-H", "Host: keyedparam.example.com", &url]);
        assert!(head.starts_with("http/1.1 200"), "{head}");
        let seen: serde_json::Value = serde_json::from_slice(&body).expect("echo json");
        assert_eq!(seen["headers"]["x-client"], "client-a");

        // Basic authentication: 401 with Envoy's challenge, then through with the user named.
        for proto in ["--http1.1", "--http2-prior-knowledge"] {
            let host = "Host: basic.example.com";
            let (status, head, body) = request(addr, host, &[proto]);
            assert_eq!(status, 401, "{proto}: {body}");
            assert!(
                head.contains("www-authenticate: basic realm=\"http://basic.example.com\""),
                "{head}"
            );
            assert!(body.contains("Missing username and password"), "{body}");
            let (status, _, body) = request(addr, host, &[proto, "-u", "alice:wrong"]);
            assert_eq!((status, body.contains("Invalid username")), (401, true));
            let (status, _, body) = request(addr, host, &[proto, "-u", "alice:secret"]);
            assert_eq!(status, 200, "{proto}: {body}");
            let seen: serde_json::Value = serde_json::from_str(&body).expect("echo json");
            assert_eq!(seen["headers"]["x-user"], "alice");
            // bcrypt entries (htpasswd -B): wrong, right, right again (remembered).
            let host = "Host: bcrypt.example.com";
            let (status, _, body) = request(addr, host, &[proto, "-u", "carol:wrong"]);
            assert_eq!((status, body.contains("Invalid username")), (401, true));
            let (status, _, body) = request(addr, host, &[proto, "-u", "alice:secret"]);
            assert_eq!(status, 401, "another policy's user: {body}");
            for _ in 0..2 {
                let (status, _, body) = request(addr, host, &[proto, "-u", "carol:s3cret"]);
                assert_eq!(status, 200, "{proto}: {body}");
                let seen: serde_json::Value = serde_json::from_str(&body).expect("echo json");
                assert_eq!(seen["headers"]["x-user"], "carol");
            }
        }
        // Failed logins from this address on the bcrypt policy: two per protocol above, then
        // unknown names up to the limit; past it, a login that would take a bcrypt slot is
        // answered 429, and a remembered credential still passes.
        let host = "Host: bcrypt.example.com";
        for _ in 4..gateway::limits::BASIC_AUTH_FAILURES_PER_CLIENT {
            let (status, _, _) = request(addr, host, &["-u", "nobody:x"]);
            assert_eq!(status, 401);
        }
        let (status, head, body) = request(addr, host, &["-u", "carol:wrong"]);
        assert_eq!(status, 429, "{body}");
        assert!(head.contains("retry-after: 60"), "{head}");
        let (status, _, body) = request(addr, host, &["-u", "carol:s3cret"]);
        assert_eq!(status, 200, "remembered: {body}");
    })
    .await
    .expect("requests");
    assert_eq!(
        metrics.security_policy_refused.get(),
        u64::try_from(REFUSED.len() * 2).expect("fits")
    );
    running.stop().await;
}
