//! SecurityPolicy `oidc` end to end against a real OpenID provider (`tests/oidc_provider.py`,
//! Authlib + Flask, standing in for the corpus's Authentik/Kanidm): curl follows the whole
//! login with a cookie jar (gateway -> authorization endpoint -> callback -> the page first
//! asked for), the backend sees the access token; a tampered session cookie, an expired
//! session without a refresh token, a callback with a foreign state and a logged-out session
//! are all sent back to log in; an expired session with a refresh token is refreshed; a
//! provider that cannot be reached lets nobody in.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};

use crate::harness;

/// The provider process, killed when dropped (also when the test fails).
struct Provider {
    child: Child,
    port: u16,
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const ISSUER_PATH: &str = "/oauth2/openid/app";
const SECRET: &str = "s3cret-for-tests";
/// Seconds the provider's tokens last.
const TOKEN_TTL: u64 = 2;

fn provider() -> Provider {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oidc_provider.py");
    let mut child = Command::new("/usr/bin/python3")
        .args([
            script,
            ISSUER_PATH,
            "app",
            SECRET,
            "http://",
            &TOKEN_TTL.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 runs (python3-authlib and python3-flask installed by cargo xtask test)");
    let mut line = String::new();
    let out = child.stdout.take().expect("stdout");
    std::io::BufReader::new(out)
        .read_line(&mut line)
        .expect("provider prints its port");
    let port = line.trim().parse().unwrap_or_else(|_| {
        let _ = child.kill();
        panic!("the OpenID provider did not start (printed {line:?})")
    });
    Provider { child, port }
}

fn route(name: &str, oidc: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: gateway-conformance-infra}}\n\
         spec:\n  parentRefs: [{{name: same-namespace}}]\n  hostnames: [{name}.example.com]\n  rules: [{{backendRefs: [{{name: infra-backend-v1, port: 8080}}]}}]\n---\n\
         apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: SecurityPolicy\nmetadata: {{name: {name}-oidc, namespace: gateway-conformance-infra}}\n\
         spec:\n  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: {name}}}]\n  oidc:\n{oidc}---\n"
    )
}

/// One curl through the gateway at `name.example.com:port` with the cookie jar `jar`:
/// (every status of the exchange, lowercased heads, body).
fn get(port: u16, name: &str, path: &str, jar: &str, follow: bool) -> (Vec<u16>, String, String) {
    let resolve = format!("{name}.example.com:{port}:127.0.0.1");
    let url = format!("http://{name}.example.com:{port}{path}");
    let mut args = vec!["--resolve", &resolve, "-b", jar, "-c", jar, &url];
    if follow {
        args.push("-L");
    }
    let (head, body) = harness::curl(&args);
    let statuses = head
        .lines()
        .filter(|l| l.starts_with("http/"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect();
    (statuses, head, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_login_against_a_real_provider() {
    let p = provider();
    let (_held, closed) = crate::harness::refusing_port();
    let closed = std::net::SocketAddr::from(([127, 0, 0, 1], closed));
    let issuer = format!("http://127.0.0.1:{}{ISSUER_PATH}", p.port);
    let common = format!(
        "    provider: {{issuer: '{issuer}'}}\n    clientID: app\n    clientSecret: {{name: app-oidc}}\n    logoutPath: /logout\n"
    );
    let mut manifests = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: app-oidc, namespace: gateway-conformance-infra}}\nstringData:\n  client-secret: {SECRET}\n---\n"
    );
    manifests.push_str(&route(
        "app",
        &format!("{common}    forwardAccessToken: true\n"),
    ));
    manifests.push_str(&route(
        "norefresh",
        &format!("{common}    refreshToken: false\n"),
    ));
    manifests.push_str(&route(
        "down",
        &format!(
            "    provider: {{issuer: 'http://{closed}/x'}}\n    clientID: app\n    clientSecret: {{name: app-oidc}}\n"
        ),
    ));
    let backends = harness::start_backends().await;
    let metrics = std::sync::Arc::new(gateway::metrics::Metrics::default());
    let (plan, running) = harness::serve(&backends, &manifests, metrics.clone()).await;
    assert!(plan.problems.is_empty(), "{:?}", plan.problems);
    let gw = running.bound[&80].port();
    let echo = backends.0["gateway-conformance-infra/infra-backend-v1"].clone();
    let dir = tempfile::tempdir().expect("tmp");
    let jars = dir.path().to_path_buf();
    let jar = move |n: &str| jars.join(n).to_string_lossy().into_owned();

    let provider_port = p.port;
    tokio::task::spawn_blocking(move || {
        // The whole login: 302 to the provider, 302 back to the callback, 302 to the page,
        // 200 from the backend with the access token.
        let a = jar("a");
        let (statuses, head, body) = get(gw, "app", "/x?y=1", &a, true);
        assert_eq!(statuses, vec![302, 302, 302, 200], "{head}");
        let authorize = format!(
            "location: http://127.0.0.1:{provider_port}{ISSUER_PATH}/authorize?response_type=code&client_id=app&redirect_uri=http%3a%2f%2fapp.example.com%3a{gw}%2foauth2%2fcallback&scope=openid&state="
        );
        assert!(head.contains(&authorize), "{head}");
        assert!(head.contains("&code_challenge_method=s256"), "{head}");
        assert!(head.contains("location: /x?y=1\r\n"), "{head}");
        let seen: serde_json::Value = serde_json::from_str(&body).expect("echo json");
        assert_eq!((&seen["path"], &seen["query"]), (&"/x".into(), &"y=1".into()), "{seen}");
        // The session stays between the browser and the gateway.
        assert!(seen["headers"].get("cookie").is_none(), "{seen}");
        let bearer = seen["headers"]["authorization"].as_str().unwrap_or_default().to_string();
        assert!(bearer.starts_with("Bearer ") && bearer.len() > 20, "{seen}");

        // With the session: straight through.
        let (statuses, _, _) = get(gw, "app", "/again", &a, false);
        assert_eq!(statuses, vec![200]);

        // A tampered session cookie is no session.
        let text = std::fs::read_to_string(&a).expect("jar");
        let tampered: String = text
            .lines()
            .map(|l| {
                let mut cols: Vec<String> = l.split('\t').map(str::to_string).collect();
                if cols.len() == 7 && cols[5].starts_with("trellis-oidc-") && !cols[5].contains("login") {
                    let v = &mut cols[6];
                    let flipped = if v.ends_with('A') { 'B' } else { 'A' };
                    v.pop();
                    v.push(flipped);
                }
                cols.join("\t") + "\n"
            })
            .collect();
        let t = jar("tampered");
        std::fs::write(&t, tampered).expect("write jar");
        let (statuses, head, _) = get(gw, "app", "/x", &t, false);
        assert_eq!(statuses, vec![302], "{head}");
        assert!(head.contains(&format!("location: http://127.0.0.1:{provider_port}")), "{head}");

        // A callback nobody started (no login cookie, a made-up state): refused.
        let (statuses, _, body) = get(gw, "app", "/oauth2/callback?code=abc&state=forged", &jar("fresh"), false);
        assert_eq!((statuses, body.trim()), (vec![401], "OAuth flow failed."));

        // Log in without refresh as well, then let both sessions expire.
        let n = jar("n");
        let (statuses, _, _) = get(gw, "norefresh", "/n", &n, true);
        assert_eq!(statuses, vec![302, 302, 302, 200]);
        // Waiting for the tokens' expiry is the point here: nothing else to await.
        std::thread::sleep(std::time::Duration::from_secs(TOKEN_TTL + 1));
        let (statuses, head, _) = get(gw, "norefresh", "/n", &n, false);
        assert_eq!(statuses, vec![302], "expired, no refresh token: log in again: {head}");
        assert!(head.contains(&format!("location: http://127.0.0.1:{provider_port}")), "{head}");
        let before = stats(provider_port);
        let (statuses, head, _) = get(gw, "app", "/x", &a, true);
        assert_eq!(statuses, vec![302, 200], "expired with a refresh token: refreshed: {head}");
        assert!(head.contains("location: /x\r\n"), "{head}");
        assert_eq!(
            stats(provider_port)["refreshes"],
            before["refreshes"].as_u64().unwrap_or_default() + 1
        );

        // Logout clears the session.
        let (statuses, head, _) = get(gw, "app", "/logout", &a, false);
        assert_eq!(statuses, vec![302]);
        assert!(head.contains("location: /\r\n") && head.contains("max-age=0"), "{head}");
        let (statuses, _, _) = get(gw, "app", "/x", &a, false);
        assert_eq!(statuses, vec![302]);

        // A provider that cannot be reached: nobody in.
        let (statuses, _, body) = get(gw, "down", "/x", &jar("d"), false);
        assert_eq!((statuses, body.trim()), (vec![503], "OpenID provider unavailable"));
    })
    .await
    .expect("requests");
    // Only the authenticated requests reached the backend: two logins, one straight
    // through, one after refreshing.
    assert_eq!(echo.seen().len(), 4);
    assert_eq!(metrics.oidc_denied.get(), 1);
    assert_eq!(stats(p.port)["codes"], 2);
    running.stop().await;
}

/// What the provider issued: `codes` and `refreshes`.
fn stats(port: u16) -> serde_json::Value {
    let (_, body) = harness::curl(&[&format!("http://127.0.0.1:{port}/stats")]);
    serde_json::from_slice(&body).expect("stats json")
}
