//! Hot reload: a new plan swapped in while requests flow, on both HTTP paths, changes routing
//! without failing any.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use crate::harness;

/// Requests one load client sends at most (the reloads end the load sooner).
const REQUESTS_PER_CLIENT_MAX: usize = 20_000;

/// Six clients (four HTTP/1.1 keep-alive on trellis's own path, two HTTP/2 on hyper's) keep
/// requests in flight while fifty plans are swapped in, each swap made once requests were
/// answered since the last and, as counted, while others were in flight: no request fails and
/// every client sees both plans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_plans_under_load_fails_no_request() {
    let backends = harness::start_backends().await;
    let base = harness::base_manifests(&backends);
    let route = |backend: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: gateway-conformance-infra}}\n\
             spec:\n  parentRefs: [{{name: same-namespace}}]\n  rules:\n    - backendRefs: [{{name: {backend}, port: 8080}}]\n"
        )
    };
    let dir = tempfile::tempdir().expect("tmp");
    let plans: Vec<gateway::Plan> = ["infra-backend-v1", "infra-backend-v2"]
        .iter()
        .map(|b| {
            let load = harness::load(
                dir.path(),
                &[("base.yaml", &base), ("case.yaml", &route(b))],
            );
            gateway::compile(
                &load.snapshot,
                "gateway-conformance-infra",
                "same-namespace",
            )
            .expect("compiles")
        })
        .collect();
    let bind = gateway::Bind {
        ip: Some("127.0.0.1".parse().expect("ip")),
        port_map: [(80, 0)].into(),
        ..Default::default()
    };
    let metrics = Arc::new(gateway::metrics::Metrics::default());
    let running = Arc::new(
        gateway::start(&plans[0], &bind, metrics.clone())
            .await
            .expect("starts"),
    );
    let addr = running.bound[&80];
    let fast_before = metrics.h1_fast.get();
    // Requests in flight now, and answered so far, over both paths.
    let in_flight = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for i in 0..6 {
        let (in_flight, answered, stop) = (in_flight.clone(), answered.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            // Four HTTP/1.1 keep-alive clients (trellis's own path), two HTTP/2 ones (hyper's).
            let h2 = i >= 4;
            let client = if h2 {
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .http2_only(true)
                    .build_http()
            } else {
                harness::client()
            };
            let mut seen = std::collections::BTreeMap::<String, usize>::new();
            let mut failed = 0;
            for _ in 0..REQUESTS_PER_CLIENT_MAX {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                // A short wait at the backend keeps each request in flight across swaps.
                let req = http::Request::get(format!("http://{addr}/?delay=2ms"))
                    .body(Full::new(Bytes::new()))
                    .expect("request");
                in_flight.fetch_add(1, Ordering::SeqCst);
                let r = client.request(req).await;
                let r = match r {
                    Ok(r) if r.status() == 200 => {
                        r.into_body().collect().await.ok().map(|b| b.to_bytes())
                    }
                    _ => None,
                };
                in_flight.fetch_sub(1, Ordering::SeqCst);
                match r {
                    Some(body) => {
                        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
                        *seen
                            .entry(v["backend"].as_str().unwrap_or("?").to_string())
                            .or_default() += 1;
                        answered.fetch_add(1, Ordering::SeqCst);
                    }
                    None => failed += 1,
                }
            }
            (h2, seen, failed)
        }));
    }
    // Fifty swaps, each with requests answered since the one before and some in flight at
    // the moment it is made.
    let mut overlapped = 0;
    for i in 0..50 {
        let mark = answered.load(Ordering::SeqCst);
        for _ in 0..1000 {
            if answered.load(Ordering::SeqCst) >= mark + 6 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        if in_flight.load(Ordering::SeqCst) > 0 {
            overlapped += 1;
        }
        running.update(&plans[(i + 1) % 2]);
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let (h2, seen, failed) = c.await.expect("client");
        assert_eq!(
            failed, 0,
            "requests failed during reloads (h2: {h2}): {seen:?}"
        );
        assert_eq!(seen.len(), 2, "both plans served (h2: {h2}): {seen:?}");
    }
    assert!(
        overlapped >= 25,
        "swaps made while requests were in flight: {overlapped} of 50"
    );
    assert!(
        metrics.h1_fast.get() > fast_before,
        "HTTP/1.1 requests took trellis's own path"
    );
    // The last swap (i = 49) installed plan 0.
    let client = harness::client();
    let req = http::Request::get(format!("http://{addr}/"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let body = client
        .request(req)
        .await
        .expect("answer")
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("infra-backend-v1"));
}

/// An endpoint found down stays skipped across a reload: the ejection is runtime state kept
/// beside the plan, not in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_does_not_forget_an_endpoint_is_down() {
    let backends = harness::start_backends().await;
    let echo = backends.0["gateway-conformance-infra/infra-backend-v1"].addr;
    let (held, dead) = harness::refusing_port();
    let manifests = pair_route(("pair-dead", dead), ("pair-live", echo.port()));
    let metrics = Arc::new(gateway::metrics::Metrics::default());
    let (plan, running) = harness::serve(&backends, &manifests, metrics.clone()).await;
    let addr = running.bound[&80];
    let client = harness::client();
    let get = || {
        let req = http::Request::get(format!("http://{addr}/"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        client.request(req)
    };
    // Until the dead endpoint has been tried once (round robin: within a few requests).
    for _ in 0..20 {
        assert_eq!(get().await.expect("answer").status(), 200);
        if metrics.upstream_connect_failures.get() > 0 {
            break;
        }
    }
    assert_eq!(metrics.upstream_connect_failures.get(), 1);
    // The same routes compiled again (new plan, new endpoints), swapped in: the dead endpoint
    // is still skipped.
    let dir = tempfile::tempdir().expect("tmp");
    let load = harness::load(
        dir.path(),
        &[
            ("base.yaml", &harness::base_manifests(&backends)),
            ("case.yaml", &manifests),
        ],
    );
    let again = gateway::compile(
        &load.snapshot,
        "gateway-conformance-infra",
        "same-namespace",
    )
    .expect("compiles");
    drop(plan);
    running.update(&again);
    for _ in 0..20 {
        assert_eq!(get().await.expect("answer").status(), 200);
    }
    assert_eq!(
        metrics.upstream_connect_failures.get(),
        1,
        "the reload forgot the endpoint was down"
    );
    drop(held);
    running.stop().await;
}

/// Round robin over a backend's endpoints: with two, both take requests (a shared counter
/// advanced twice per request once sent every request to the same one first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_of_a_backend_takes_its_turn() {
    let backends = harness::start_backends().await;
    let (v1, v2) = (
        backends.0["gateway-conformance-infra/infra-backend-v1"].clone(),
        backends.0["gateway-conformance-infra/infra-backend-v2"].clone(),
    );
    let manifests = pair_route(("pair-a", v1.addr.port()), ("pair-b", v2.addr.port()));
    let (_, running) = harness::serve(&backends, &manifests, Arc::default()).await;
    let addr = running.bound[&80];
    let client = harness::client();
    for _ in 0..10 {
        let req = http::Request::get(format!("http://{addr}/"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        assert_eq!(client.request(req).await.expect("answer").status(), 200);
    }
    assert_eq!((v1.seen().len(), v2.seen().len()), (5, 5));
    running.stop().await;
}

/// Service `pair` with one endpoint per (slice name, port) on 127.0.0.1, and a route to it.
fn pair_route(a: (&str, u16), b: (&str, u16)) -> String {
    let slice = |(name, port): (&str, u16)| {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: gateway-conformance-infra, labels: {{kubernetes.io/service-name: pair}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: {port}}}]\nendpoints: [{{addresses: [127.0.0.1]}}]\n---\n"
        )
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: pair, namespace: gateway-conformance-infra}}\nspec: {{ports: [{{name: http, port: 8080}}]}}\n---\n{}{}\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: gateway-conformance-infra}}\n\
         spec:\n  parentRefs: [{{name: same-namespace}}]\n  rules:\n    - backendRefs: [{{name: pair, port: 8080}}]\n",
        slice(a),
        slice(b),
    )
}
