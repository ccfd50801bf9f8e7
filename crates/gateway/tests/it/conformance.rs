//! Runs every case in `tests/conformance/`. Each file mirrors one Gateway API conformance
//! test: manifests, requests, and what the client and the backend must see.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde::Deserialize;

use crate::harness;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default)]
    gateway: Option<String>,
    manifests: String,
    requests: Vec<Step>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Step {
    request: Req,
    #[serde(default)]
    response: Option<Resp>,
    #[serde(default)]
    backend: Option<String>,
    #[serde(default)]
    expect_request: Option<ExpectRequest>,
    #[serde(default)]
    redirect: Option<String>,
    #[serde(default)]
    repeat: Option<usize>,
    #[serde(default)]
    distribution: BTreeMap<String, f64>,
    #[serde(default)]
    tolerance: Option<f64>,
    #[serde(default)]
    mirrored_to: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Req {
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    method: Option<String>,
    path: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    port: Option<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Resp {
    status: u16,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    absent_headers: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ExpectRequest {
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    absent_headers: Vec<String>,
}

/// Header values compared as comma-separated lists, ignoring spaces after commas.
fn norm(v: &str) -> String {
    v.split(',').map(str::trim).collect::<Vec<_>>().join(",")
}

struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
}

async fn send(addr: std::net::SocketAddr, r: &Req) -> Result<Answer, String> {
    let mut b = http::Request::builder()
        .method(r.method.as_deref().unwrap_or("GET"))
        .uri(format!("http://{addr}{}", r.path));
    if let Some(h) = &r.host {
        b = b.header(http::header::HOST, h);
    }
    for (k, v) in &r.headers {
        b = b.header(k, v);
    }
    let req = b.body(Full::new(Bytes::new())).map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(30), harness::client().request(req))
        .await
        .map_err(|_| "no answer within 30 s".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Answer {
        status,
        headers,
        body,
    })
}

fn backend_of(a: &Answer) -> Option<(String, serde_json::Value)> {
    let v: serde_json::Value = serde_json::from_slice(&a.body).ok()?;
    Some((
        format!("{}/{}", v["namespace"].as_str()?, v["backend"].as_str()?),
        v,
    ))
}

async fn run_case(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).expect("case readable");
    let doc = &model::yaml::parse_documents(&text).expect("case is YAML")[0];
    let case: Case = serde_json::from_value(doc.to_json(&mut model::yaml::PosIndex::default()))
        .expect("case format");
    let mut fails = Vec::new();
    let backends = harness::start_backends().await;
    let dir = tempfile::tempdir().expect("tmp");
    let load = harness::load(
        dir.path(),
        &[
            ("base.yaml", &harness::base_manifests(&backends)),
            ("case.yaml", &case.manifests),
        ],
    );
    if load.snapshot.has_errors() {
        return vec![format!(
            "manifests do not load: {:?}",
            load.snapshot.diagnostics
        )];
    }
    let gw = case
        .gateway
        .clone()
        .unwrap_or_else(|| "gateway-conformance-infra/same-namespace".into());
    let (ns, name) = gw.split_once('/').expect("ns/name");
    let plan = match gateway::compile(&load.snapshot, ns, name) {
        Ok(p) => p,
        Err(e) => return vec![format!("compile: {e}")],
    };
    let bind = gateway::Bind {
        ip: Some("127.0.0.1".parse().expect("ip")),
        port_map: plan.ports.keys().map(|p| (*p, 0)).collect(),
        ..Default::default()
    };
    let running = gateway::start(&plan, &bind, Arc::default())
        .await
        .expect("gateway starts");

    for (i, step) in case.requests.iter().enumerate() {
        let port = step.request.port.unwrap_or(80);
        let Some(addr) = running.bound.get(&port).copied() else {
            fails.push(format!("step {i}: no listener on port {port}"));
            continue;
        };
        let at = format!(
            "step {i} ({} {})",
            step.request.host.as_deref().unwrap_or(""),
            step.request.path
        );
        if let Some(n) = step.repeat {
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for _ in 0..n {
                match send(addr, &step.request).await {
                    Ok(a) => {
                        *counts
                            .entry(
                                backend_of(&a)
                                    .map(|b| b.0)
                                    .unwrap_or_else(|| format!("status {}", a.status)),
                            )
                            .or_default() += 1
                    }
                    Err(e) => *counts.entry(format!("error {e}")).or_default() += 1,
                }
            }
            let tol = step.tolerance.unwrap_or(0.05);
            for (b, want) in &step.distribution {
                let got = counts.get(b).copied().unwrap_or(0) as f64 / n as f64;
                let ok = if *want == 0.0 {
                    got == 0.0
                } else {
                    (got - want).abs() <= tol
                };
                if !ok {
                    fails.push(format!(
                        "{at}: {b} got {got:.3} of traffic, want {want} ± {tol} ({counts:?})"
                    ));
                }
            }
            continue;
        }
        let answer = match send(addr, &step.request).await {
            Ok(a) => a,
            Err(e) => {
                fails.push(format!("{at}: {e}"));
                continue;
            }
        };
        if let Some(r) = &step.response {
            if answer.status != r.status {
                fails.push(format!(
                    "{at}: status {} want {} (body {:?})",
                    answer.status,
                    r.status,
                    String::from_utf8_lossy(&answer.body)
                ));
            }
            for (k, v) in &r.headers {
                let got: Vec<String> = answer
                    .headers
                    .get_all(k.as_str())
                    .iter()
                    .map(|x| String::from_utf8_lossy(x.as_bytes()).into_owned())
                    .collect();
                if norm(&got.join(",")) != norm(v) {
                    fails.push(format!("{at}: response header {k} = {got:?}, want {v:?}"));
                }
            }
            for k in &r.absent_headers {
                if answer.headers.contains_key(k.as_str()) {
                    fails.push(format!("{at}: response header {k} should be absent"));
                }
            }
        }
        if let Some(want) = &step.redirect {
            let got = answer
                .headers
                .get(http::header::LOCATION)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            if got.as_deref() != Some(want.as_str()) {
                fails.push(format!("{at}: Location {got:?}, want {want:?}"));
            }
        }
        let seen = backend_of(&answer);
        if let Some(want) = &step.backend {
            match &seen {
                Some((b, _)) if b == want => {}
                other => fails.push(format!(
                    "{at}: answered by {:?}, want {want}",
                    other.as_ref().map(|o| &o.0)
                )),
            }
        }
        if let (Some(exp), Some((_, v))) = (&step.expect_request, &seen) {
            if let Some(p) = &exp.path
                && v["path"].as_str() != Some(p.as_str())
            {
                fails.push(format!("{at}: backend saw path {}, want {p}", v["path"]));
            }
            if let Some(h) = &exp.host
                && v["host"].as_str() != Some(h.as_str())
            {
                fails.push(format!("{at}: backend saw host {}, want {h}", v["host"]));
            }
            for (k, want) in &exp.headers {
                let got = v["headers"][k.to_ascii_lowercase()].as_str().map(norm);
                if got.as_deref() != Some(norm(want).as_str()) {
                    fails.push(format!(
                        "{at}: backend saw header {k} = {got:?}, want {want:?}"
                    ));
                }
            }
            for k in &exp.absent_headers {
                if !v["headers"][k.to_ascii_lowercase()].is_null() {
                    fails.push(format!(
                        "{at}: backend saw header {k}, which should be absent"
                    ));
                }
            }
        } else if step.expect_request.is_some() {
            fails.push(format!("{at}: expected the request to reach a backend"));
        }
        for m in &step.mirrored_to {
            let Some(e) = backends.0.get(m) else {
                fails.push(format!("{at}: unknown mirror backend {m}"));
                continue;
            };
            let path = step
                .request
                .path
                .split('?')
                .next()
                .unwrap_or("")
                .to_string();
            if !e
                .wait_for(|s| s.path == path, Duration::from_secs(10))
                .await
            {
                fails.push(format!("{at}: mirror {m} never saw {path}"));
            }
        }
    }
    running.stop().await;
    fails
        .into_iter()
        .map(|f| format!("{}: {f}", case.name))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_cases() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 25, "found only {} cases", paths.len());
    let mut all = Vec::new();
    for p in &paths {
        all.extend(run_case(p).await);
    }
    assert!(
        all.is_empty(),
        "{} failures:\n{}",
        all.len(),
        all.join("\n")
    );
}
