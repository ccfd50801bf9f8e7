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
  -- One pass over 60 KB is allowed; a pattern that could backtrack over it is not run.
  seen[#seen + 1] = "plainscan=" .. tostring(pcall(string.find, string.rep("a", 60000), "b", 1, true))
  seen[#seen + 1] = "backtrack=" .. tostring(pcall(string.find, string.rep("a", 60000), "a*b"))
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
    manifests.push_str(
        &policy(
            "respfails",
            "respfails-lua",
            "function envoy_on_response(h)\n  error(\"boom\")\nend\n",
        )
        .replace("wiki.cloudjur.com", "respfails-wiki.example.com"),
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
    // A response script that fails: the backend's answer is not sent as it came.
    assert_eq!(
        send(addr, "respfails.example.com", "/", "curl/8").await.0,
        500
    );
    // The route whose script did not load is not served without it (fail closed).
    assert_eq!(send(addr, "broken.example.com", "/", "curl/8").await.0, 500);
    // Each way out of the sandbox is closed.
    assert_eq!(
        send(addr, "escapes.example.com", "/", "curl/8").await,
        (
            200,
            "load=nil loadfile=nil dofile=nil collectgarbage=nil require=nil dump=nil \
             leak=false bigfind=false smallfind=true plainscan=true backtrack=false"
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

/// A slow script holds its own request only. The gateway runs on a runtime with one worker;
/// once the backend has answered the slow route's request, its response script counts for a
/// long while, and requests to another route (sent one at a time on a keep-alive connection
/// from a thread of their own) are answered meanwhile. Were the script run on the worker itself, at most the
/// one request already under way could finish before it ends.
#[test]
fn a_slow_script_does_not_hold_up_other_routes() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let backends = rt.block_on(harness::start_backends());
    // Close to the instruction budget, below it: the script ends and answers 200.
    let slow = "function envoy_on_response(h)\n  local x = 0\n  for i = 1, 3000000 do x = x + i end\n  h:headers():add(\"x-sum\", tostring(x))\nend\n";
    let manifests = policy("slow", "slow-lua", slow)
        .replace("wiki.cloudjur.com", "slow-wiki.example.com")
        .replace("infra-backend-v1", "infra-backend-v2")
        + "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: quick, namespace: gateway-conformance-infra}\n\
           spec:\n  parentRefs: [{name: same-namespace}]\n  hostnames: [quick.example.com]\n  rules: [{backendRefs: [{name: infra-backend-v1, port: 8080}]}]\n";
    let (_, running) = rt.block_on(harness::serve(
        &backends,
        &manifests,
        Arc::new(gateway::metrics::Metrics::default()),
    ));
    let addr = running.bound[&80];
    let slow_backend = backends.0["gateway-conformance-infra/infra-backend-v2"].clone();
    let (running_script, slow_done) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let meanwhile = Arc::new(AtomicUsize::new(0));
    let quick = {
        let (running_script, slow_done, meanwhile) =
            (running_script.clone(), slow_done.clone(), meanwhile.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            // One keep-alive connection: each request costs little, so many fit in the wait.
            let mut c = std::net::TcpStream::connect(addr).expect("connect");
            for _ in 0..100_000 {
                if slow_done.load(Ordering::SeqCst) {
                    break;
                }
                let during = running_script.load(Ordering::SeqCst);
                c.write_all(b"GET / HTTP/1.1\r\nHost: quick.example.com\r\n\r\n")
                    .expect("write");
                let head = harness::read_response(&mut c);
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                if during && !slow_done.load(Ordering::SeqCst) {
                    meanwhile.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };
    // The slow request on a connection of its own: the moment its answer arrives is the
    // moment the script ended, and the count of other answers stops there.
    let slow_request = {
        let slow_done = slow_done.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut c = std::net::TcpStream::connect(addr).expect("connect");
            c.write_all(b"GET / HTTP/1.1\r\nHost: slow.example.com\r\n\r\n")
                .expect("write");
            let head = harness::read_response(&mut c);
            slow_done.store(true, Ordering::SeqCst);
            head
        })
    };
    // The backend has the slow request: its answer goes back through the script now.
    let answered_by_backend = (0..1000).any(|_| {
        !slow_backend.seen().is_empty() || {
            std::thread::sleep(std::time::Duration::from_millis(1));
            false
        }
    });
    assert!(
        answered_by_backend,
        "the slow route's request reached its backend"
    );
    running_script.store(true, Ordering::SeqCst);
    let head = slow_request.join().expect("slow request");
    quick.join().expect("quick requests");
    assert!(
        head.contains("x-sum: 4500001500000"),
        "the script ran to its end: {head}"
    );
    let n = meanwhile.load(Ordering::SeqCst);
    eprintln!("requests answered on another route while the slow script ran: {n}");
    assert!(
        n > 1,
        "other routes were held up by a slow script ({n} answered meanwhile)"
    );
    rt.block_on(running.stop());
}
