//! SecurityPolicy `jwt` with tokens signed by `openssl` (RS256 with a remote JWKS served over
//! HTTP, ES256 with an inline JWKS read from a cookie), checked through the gateway with curl
//! over HTTP/1.1 and HTTP/2: a good token reaches the backend with its claim in a header;
//! missing, expired, wrong-audience, wrong-key, `none` and malformed tokens get 401 with
//! Envoy's message and `WWW-Authenticate`; a JWKS that cannot be fetched refuses every token.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use data_encoding::{BASE64URL_NOPAD, HEXUPPER_PERMISSIVE};

use crate::harness;

fn openssl(args: &[&str], input: Option<&[u8]>) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("openssl runs");
    if let Some(i) = input {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(i)
            .expect("write");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A private key made by openssl: `rsa` (2048 bits) or `ec` (P-256).
fn key(dir: &Path, name: &str, kind: &str) -> String {
    let path = dir.join(name).to_string_lossy().into_owned();
    let opt = if kind == "rsa" {
        "rsa_keygen_bits:2048"
    } else {
        "ec_paramgen_curve:P-256"
    };
    let alg = if kind == "rsa" { "RSA" } else { "EC" };
    openssl(
        &["genpkey", "-algorithm", alg, "-pkeyopt", opt, "-out", &path],
        None,
    );
    path
}

/// The public half of an RSA key as a JWK.
fn rsa_jwk(key: &str, kid: &str) -> serde_json::Value {
    let out = openssl(&["rsa", "-in", key, "-noout", "-modulus"], None);
    let text = String::from_utf8(out).expect("utf8");
    let hex = text.trim().trim_start_matches("Modulus=");
    let n = HEXUPPER_PERMISSIVE.decode(hex.as_bytes()).expect("hex");
    serde_json::json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
        "n": BASE64URL_NOPAD.encode(&n), "e": "AQAB"})
}

/// The public half of a P-256 key as a JWK (the point is the last 65 bytes of its SPKI).
fn ec_jwk(key: &str, kid: &str) -> serde_json::Value {
    let der = openssl(&["pkey", "-in", key, "-pubout", "-outform", "DER"], None);
    let point = &der[der.len() - 65..];
    assert_eq!(point[0], 4, "uncompressed point");
    serde_json::json!({"kty": "EC", "crv": "P-256", "kid": kid,
        "x": BASE64URL_NOPAD.encode(&point[1..33]), "y": BASE64URL_NOPAD.encode(&point[33..])})
}

/// An ECDSA signature from DER (`SEQUENCE { r INTEGER, s INTEGER }`) to JWS's `r || s`.
fn ecdsa_fixed(der: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 2;
    for _ in 0..2 {
        assert_eq!(der[i], 2, "INTEGER");
        let len = usize::from(der[i + 1]);
        let int = &der[i + 2..i + 2 + len];
        let int = &int[int.len().saturating_sub(32)..];
        out.extend(std::iter::repeat_n(0, 32 - int.len()));
        out.extend_from_slice(int);
        i += 2 + len;
    }
    out
}

/// A token signed by openssl with `key`.
fn sign(key: &str, alg: &str, kid: &str, claims: &serde_json::Value) -> String {
    let header = serde_json::json!({"alg": alg, "typ": "JWT", "kid": kid});
    let signed = format!(
        "{}.{}",
        BASE64URL_NOPAD.encode(header.to_string().as_bytes()),
        BASE64URL_NOPAD.encode(claims.to_string().as_bytes())
    );
    let sig = openssl(&["dgst", "-sha256", "-sign", key], Some(signed.as_bytes()));
    let sig = if alg == "ES256" {
        ecdsa_fixed(&sig)
    } else {
        sig
    };
    format!("{signed}.{}", BASE64URL_NOPAD.encode(&sig))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A route `name.example.com` guarded by a SecurityPolicy with `jwt` (YAML, indented by 4).
fn route(name: &str, jwt: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: gateway-conformance-infra}}\n\
         spec:\n  parentRefs: [{{name: same-namespace}}]\n  hostnames: [{name}.example.com]\n  rules: [{{backendRefs: [{{name: infra-backend-v1, port: 8080}}]}}]\n---\n\
         apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: SecurityPolicy\nmetadata: {{name: {name}, namespace: gateway-conformance-infra}}\n\
         spec:\n  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: {name}}}]\n  jwt:\n{jwt}---\n"
    )
}

/// One curl request through the gateway to `host.example.com`.
fn request(addr: std::net::SocketAddr, host: &str, extra: &[&str]) -> (u16, String, String) {
    harness::request(addr, &format!("Host: {host}.example.com"), extra)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_tokens_signed_by_openssl_are_verified() {
    let dir = tempfile::tempdir().expect("tmp");
    let rsa = key(dir.path(), "rsa.pem", "rsa");
    let other = key(dir.path(), "other.pem", "rsa");
    let ec = key(dir.path(), "ec.pem", "ec");

    // The remote JWKS, counting how often the gateway fetches it.
    let jwks = serde_json::json!({"keys": [rsa_jwk(&rsa, "r1")]}).to_string();
    let fetches = Arc::new(AtomicUsize::new(0));
    let counted = fetches.clone();
    let handler: httpkit::Handler = Arc::new(move |_req| {
        counted.fetch_add(1, Ordering::SeqCst);
        let body = jwks.clone();
        Box::pin(async move { httpkit::respond(200, "application/json", Bytes::from(body)) })
    });
    let jwks_server = httpkit::serve("127.0.0.1:0".parse().expect("addr"), handler)
        .await
        .expect("jwks server");
    // A port nothing listens on: its JWKS can never be fetched.
    let (_held, closed) = crate::harness::refusing_port();
    let closed = std::net::SocketAddr::from(([127, 0, 0, 1], closed));

    let ec_set = serde_json::json!({"keys": [ec_jwk(&ec, "e1")]}).to_string();
    let rsa_set = serde_json::json!({"keys": [rsa_jwk(&rsa, "r1")]}).to_string();
    let mut manifests = route(
        "rsa",
        &format!(
            "    providers:\n    - name: remote\n      issuer: https://issuer.test\n      audiences: [api]\n      remoteJWKS: {{uri: 'http://{}/jwks.json'}}\n      claimToHeaders: [{{header: x-sub, claim: sub}}, {{header: x-team, claim: org.team}}]\n",
            jwks_server.addr
        ),
    );
    manifests.push_str(&route(
        "ec",
        &format!(
            "    optional: true\n    providers:\n    - name: local\n      localJWKS: {{type: Inline, inline: '{ec_set}'}}\n      extractFrom: {{cookies: [tok]}}\n"
        ),
    ));
    // Authorization after authentication: a DELETE from anywhere is refused, a token with
    // the admin group and the read scope is allowed, so is a loopback client naming its team,
    // nothing else.
    manifests.push_str(&route(
        "rbac",
        &format!(
            "    optional: true\n    providers:\n    - name: local\n      localJWKS: {{type: Inline, inline: '{rsa_set}'}}\n  \
             authorization:\n    defaultAction: Deny\n    rules:\n    \
             - {{name: no-deletes, action: Deny, operation: {{methods: [DELETE]}}, principal: {{clientCIDRs: [0.0.0.0/0]}}}}\n    \
             - {{name: admins, action: Allow, principal: {{jwt: {{provider: local, scopes: [read], claims: [{{name: groups, valueType: StringArray, values: [admin]}}]}}}}}}\n    \
             - {{name: team, action: Allow, principal: {{clientCIDRs: [127.0.0.0/8], headers: [{{name: X-Team, values: [net, dns]}}]}}}}\n    \
             - {{name: elsewhere, action: Allow, principal: {{clientCIDRs: [10.0.0.0/8]}}}}\n"
        ),
    ));
    manifests.push_str(&route(
        "down",
        &format!("    providers:\n    - name: gone\n      remoteJWKS: {{uri: 'http://{closed}/jwks.json'}}\n"),
    ));

    let backends = harness::start_backends().await;
    let metrics = Arc::new(gateway::metrics::Metrics::default());
    let (plan, running) = harness::serve(&backends, &manifests, metrics.clone()).await;
    assert!(plan.problems.is_empty(), "{:?}", plan.problems);
    let addr = running.bound[&80];

    let t = now();
    let claims = |exp: u64, aud: &str| {
        serde_json::json!({"iss": "https://issuer.test", "aud": aud, "sub": "alice",
            "org": {"team": "net"}, "iat": t, "exp": exp})
    };
    let good = sign(&rsa, "RS256", "r1", &claims(t + 600, "api"));
    let expired = sign(&rsa, "RS256", "r1", &claims(t - 3600, "api"));
    let wrong_aud = sign(&rsa, "RS256", "r1", &claims(t + 600, "web"));
    let wrong_key = sign(&other, "RS256", "r1", &claims(t + 600, "api"));
    let unsigned = format!(
        "{}.{}.",
        BASE64URL_NOPAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        BASE64URL_NOPAD.encode(claims(t + 600, "api").to_string().as_bytes())
    );
    let es = sign(
        &ec,
        "ES256",
        "e1",
        &serde_json::json!({"sub": "bob", "exp": t + 600}),
    );
    let es_wrong = sign(
        &ec,
        "ES256",
        "e1",
        &serde_json::json!({"sub": "bob", "exp": t - 3600}),
    );
    let admin = sign(
        &rsa,
        "RS256",
        "r1",
        &serde_json::json!({"sub": "carol", "exp": t + 600,
        "groups": ["staff", "admin"], "scope": "read write"}),
    );
    let no_scope = sign(
        &rsa,
        "RS256",
        "r1",
        &serde_json::json!({"sub": "dan", "exp": t + 600,
        "groups": ["admin"], "scope": "write"}),
    );

    let echo = backends.0["gateway-conformance-infra/infra-backend-v1"].clone();
    tokio::task::spawn_blocking(move || {
        for proto in ["--http1.1", "--http2-prior-knowledge"] {
            let bearer = |t: &str| format!("Authorization: Bearer {t}");
            // No token: the realm only.
            let (status, head, body) = request(addr, "rsa", &[proto]);
            assert_eq!((status, body.trim()), (401, "Jwt is missing"), "{proto}");
            assert!(
                head.contains("www-authenticate: bearer realm=\"http://rsa.example.com/x\"\r\n"),
                "{head}"
            );
            // A good token: through, claims copied, the token kept.
            let h = bearer(&good);
            let (status, _, body) = request(addr, "rsa", &[proto, "-H", &h]);
            assert_eq!(status, 200, "{proto}: {body}");
            let seen: serde_json::Value = serde_json::from_str(&body).expect("echo json");
            assert_eq!(seen["headers"]["x-sub"], "alice");
            assert_eq!(seen["headers"]["x-team"], "net");
            assert_eq!(seen["headers"]["authorization"], format!("Bearer {good}"));
            // And as the `access_token` parameter, Envoy's other default place.
            let url = format!("http://{addr}/x?access_token={good}");
            let (head, _) = harness::curl(&[proto, "-H", "Host: rsa.example.com", &url]);
            assert!(head.starts_with("http/") && head.contains(" 200"), "{head}");
            for (what, token, message) in [
                ("expired", &expired, "Jwt is expired"),
                ("audience", &wrong_aud, "Audiences in Jwt are not allowed"),
                ("wrong key", &wrong_key, "Jwt verification fails"),
                ("alg none", &unsigned, "Jwt algorithm is not supported"),
                ("ES256 on the RSA provider", &es, "Jwt issuer is not configured"),
                ("garbage", &"abc.def".to_string(), "Jwt is not in the form"),
            ] {
                let h = bearer(token);
                let (status, head, body) = request(addr, "rsa", &[proto, "-H", &h]);
                assert_eq!(status, 401, "{what} {proto}: {body}");
                assert!(body.starts_with(message), "{what}: {body}");
                assert!(
                    head.contains(
                        "www-authenticate: bearer realm=\"http://rsa.example.com/x\", error=\"invalid_token\""
                    ),
                    "{what}: {head}"
                );
            }

            // ES256 from a cookie; the policy is optional: no token goes on, a bad one does not.
            let c = format!("tok={es}");
            let (status, _, body) = request(addr, "ec", &[proto, "-b", &c]);
            assert_eq!(status, 200, "{proto}: {body}");
            let (status, _, _) = request(addr, "ec", &[proto]);
            assert_eq!(status, 200, "optional, no token");
            let c = format!("tok={es_wrong}");
            let (status, _, body) = request(addr, "ec", &[proto, "-b", &c]);
            assert_eq!((status, body.trim()), (401, "Jwt is expired"));
            // The RSA token in a header is not where this provider looks.
            let h = bearer(&good);
            let (status, _, _) = request(addr, "ec", &[proto, "-H", &h]);
            assert_eq!(status, 200, "optional: a token elsewhere is no token");

            // Authorization.
            let h = bearer(&admin);
            let weak = bearer(&no_scope);
            for (what, extra, want) in [
                ("admin", vec!["-H", h.as_str()], 200),
                ("admin deleting", vec!["-H", h.as_str(), "-X", "DELETE"], 403),
                ("no scope", vec!["-H", weak.as_str()], 403),
                ("team header", vec!["-H", "x-team: dns"], 200),
                ("another team", vec!["-H", "x-team: web"], 403),
                ("nobody", vec![], 403),
            ] {
                let mut args = vec![proto];
                args.extend(extra);
                let (status, _, body) = request(addr, "rbac", &args);
                assert_eq!(status, want, "{what} {proto}: {body}");
                if want == 403 {
                    assert_eq!(body.trim(), "RBAC: access denied");
                }
            }

            // A JWKS that cannot be fetched: every token refused.
            let h = bearer(&good);
            let (status, _, body) = request(addr, "down", &[proto, "-H", &h]);
            assert_eq!((status, body.trim()), (401, "Jwks remote fetch is failed"));
        }
        let reached = echo.seen().len();
        assert_eq!(reached, 2 * 2 + 2 * 3 + 2 * 2, "only verified or optional requests reach the backend");
    })
    .await
    .expect("requests");
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        1,
        "the JWKS is fetched once and cached"
    );
    assert_eq!(metrics.jwt_denied.get(), 2 * (1 + 6 + 1 + 1));
    assert_eq!(metrics.authorization_denied.get(), 2 * 4);
    running.stop().await;
}
