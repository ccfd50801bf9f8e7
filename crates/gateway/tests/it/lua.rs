//! The corpus's Lua filter (`block-user-agents.lua`, loaded unchanged through an
//! EnvoyExtensionPolicy and its ConfigMap) on real requests, plus scripts that fail.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use crate::harness;

async fn send(addr: std::net::SocketAddr, host: &str, path: &str, ua: &str) -> (u16, String) {
    let req = http::Request::get(format!("http://{addr}{path}"))
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, ua)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = harness::client().request(req).await.expect("answer");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Reports which escapes a script can reach.
const ESCAPES: &str = r#"function envoy_on_request(h)
  local seen = {}
  for _, n in ipairs({"load", "loadfile", "dofile", "collectgarbage", "require"}) do
    seen[#seen + 1] = n .. "=" .. type(_G[n])
  end
  seen[#seen + 1] = "dump=" .. type(string.dump)
  local ok, contents = pcall(dofile, "/etc/hostname")
  seen[#seen + 1] = "leak=" .. tostring(ok)
  seen[#seen + 1] = "bigfind=" .. tostring(pcall(string.find, string.rep("a", 70000), "b"))
  seen[#seen + 1] = "smallfind=" .. tostring(("abc"):find("b") == 2)
  h:respond({[":status"] = "200"}, table.concat(seen, " "))
end
"#;

fn policy(name: &str, configmap: &str, script: &str) -> String {
    let indented: String = script.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {configmap}, namespace: gateway-conformance-infra}}\ndata:\n  script.lua: |\n{indented}---\n\
         apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: EnvoyExtensionPolicy\nmetadata: {{name: {name}, namespace: gateway-conformance-infra}}\n\
         spec:\n  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: {name}}}]\n  lua: [{{type: ValueRef, valueRef: {{kind: ConfigMap, name: {configmap}, group: v1}}}}]\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: gateway-conformance-infra}}\n\
         spec:\n  parentRefs: [{{name: same-namespace}}]\n  hostnames: [{name}.example.com, wiki.cloudjur.com]\n  rules: [{{backendRefs: [{{name: infra-backend-v1, port: 8080}}]}}]\n---\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_lua_filter_and_failing_scripts() {
    let corpus_script = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/home-ops/kubernetes/apps/network/envoy-gateway/app/resources/block-user-agents.lua")).expect("corpus script");
    let backends = harness::start_backends().await;
    let mut manifests = policy("bots", "bots-lua", &corpus_script);
    manifests.push_str(
        &policy(
            "broken",
            "broken-lua",
            "function envoy_on_request(h)\n  if then\nend\n",
        )
        .replace("wiki.cloudjur.com", "broken-wiki.example.com"),
    );
    manifests.push_str(
        &policy(
            "fails",
            "fails-lua",
            "function envoy_on_request(h)\n  error(\"boom\")\nend\n",
        )
        .replace("wiki.cloudjur.com", "fails-wiki.example.com"),
    );
    manifests.push_str(
        &policy(
            "spins",
            "spins-lua",
            "function envoy_on_request(h)\n  while true do end\nend\n",
        )
        .replace("wiki.cloudjur.com", "spins-wiki.example.com"),
    );
    manifests.push_str(&policy("resp", "resp-lua", "function envoy_on_response(h)\n  h:headers():add(\"x-lua\", h:headers():get(\":status\"))\nend\n").replace("wiki.cloudjur.com", "resp-wiki.example.com"));
    manifests.push_str(
        &policy("escapes", "escapes-lua", ESCAPES)
            .replace("wiki.cloudjur.com", "escapes-wiki.example.com"),
    );
    manifests.push_str(
        &policy(
            "hog",
            "hog-lua",
            "function envoy_on_request(h)\n  local t = string.rep(\"x\", 64 * 1024 * 1024)\n  h:respond({[\":status\"] = \"200\"}, tostring(#t))\nend\n",
        )
        .replace("wiki.cloudjur.com", "hog-wiki.example.com"),
    );
    let (plan, running) = harness::serve(&backends, &manifests, Arc::default()).await;
    // The script with a syntax error is reported against its policy, with the line.
    assert_eq!(plan.problems.len(), 1, "{:?}", plan.problems);
    let (key, why) = &plan.problems[0];
    assert_eq!(key.ns_name(), "gateway-conformance-infra/broken");
    assert!(
        why.contains("the script does not load") && why.contains(":2:"),
        "{why}"
    );

    let addr = running.bound[&80];
    let echo = backends.0["gateway-conformance-infra/infra-backend-v1"].clone();

    // Every listed bot gets the empty 200 and nothing reaches the backend.
    for ua in [
        "Mozilla/5.0 (compatible; GPTBot/1.1)",
        "CCBot/2.0",
        "meta-webindexer/1.1",
        "Bytespider",
        "Amazonbot/0.1",
        "Applebot-Extended",
        "Google-Extended",
        "Meta-ExternalAgent/1.1",
    ] {
        assert_eq!(
            send(addr, "bots.example.com", "/page", ua).await,
            (200, String::new()),
            "{ua}"
        );
    }
    assert!(echo.seen().is_empty(), "bots reached the backend");

    // On the wiki host, extensionless paths gain .html and keep their query.
    let (status, body) = send(addr, "wiki.cloudjur.com", "/docs/intro?lang=en", "curl/8").await;
    assert_eq!(status, 200);
    let seen: serde_json::Value = serde_json::from_str(&body).expect("echo json");
    assert_eq!(
        (seen["path"].as_str(), seen["query"].as_str()),
        (Some("/docs/intro.html"), Some("lang=en"))
    );
    // Paths with an extension, directories and other hosts pass unchanged.
    for (host, path, want) in [
        ("wiki.cloudjur.com", "/style.css", "/style.css"),
        ("wiki.cloudjur.com", "/docs/", "/docs/"),
        ("bots.example.com", "/docs/intro", "/docs/intro"),
    ] {
        let (status, body) = send(addr, host, path, "curl/8").await;
        assert_eq!(status, 200);
        let seen: serde_json::Value = serde_json::from_str(&body).expect("echo json");
        assert_eq!(seen["path"].as_str(), Some(want), "{host}{path}");
    }

    // A script that fails at run time, or runs away, answers 500 for that request.
    assert_eq!(send(addr, "fails.example.com", "/", "curl/8").await.0, 500);
    assert_eq!(send(addr, "spins.example.com", "/", "curl/8").await.0, 500);
    // The route whose script did not load is not served without it (fail closed).
    assert_eq!(send(addr, "broken.example.com", "/", "curl/8").await.0, 500);
    // Each way out of the sandbox is closed.
    assert_eq!(
        send(addr, "escapes.example.com", "/", "curl/8").await,
        (
            200,
            "load=nil loadfile=nil dofile=nil collectgarbage=nil require=nil dump=nil \
             leak=false bigfind=false smallfind=true"
                .to_string()
        )
    );
    // The memory bound stops a script that asks for more (and only its request fails).
    assert_eq!(send(addr, "hog.example.com", "/", "curl/8").await.0, 500);
    // envoy_on_response sees :status and can add headers.
    let req = http::Request::get(format!("http://{addr}/"))
        .header(http::header::HOST, "resp.example.com")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = harness::client().request(req).await.expect("answer");
    assert_eq!(
        resp.headers()
            .get("x-lua")
            .map(|v| v.to_str().unwrap_or("")),
        Some("200")
    );
    running.stop().await;
}
