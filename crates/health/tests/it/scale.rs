//! The scaler's prometheus trigger against a real Prometheus (Debian's, started here on
//! loopback with its own storage, scraping a metrics endpoint this test serves): the corpus's
//! query follows the probe result, the scaler's decisions follow the value, and with
//! Prometheus stopped the fallback holds after the failure threshold.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use health::scale::{Policy, State, step};
use health::trigger::Prometheus;

/// How long Prometheus may take to start and to show a scraped change (1 s scrapes).
const WAIT_MAX: Duration = Duration::from_secs(60);

/// Polls `f` until it gives `Some`, for at most [`WAIT_MAX`].
async fn until<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < WAIT_MAX,
            "{what}: not within {WAIT_MAX:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn prometheus_trigger_drives_the_corpus_scaled_object() {
    // The probe result Gatus's metric reports: 1 healthy, 0 failing.
    let success = Arc::new(AtomicU64::new(1));
    let s = success.clone();
    let handler: httpkit::Handler = Arc::new(move |_req: http::Request<Bytes>| {
        let v = s.load(Ordering::SeqCst);
        Box::pin(async move {
            httpkit::respond(
                200,
                "text/plain; version=0.0.4",
                format!(
                    "# TYPE gatus_results_endpoint_success gauge\n\
                     gatus_results_endpoint_success{{group=\"external\",key=\"external_echo\",name=\"echo\",type=\"HTTP\"}} {v}\n\
                     gatus_results_endpoint_success{{group=\"internal\",key=\"internal_echo\",name=\"echo\",type=\"HTTP\"}} 1\n"
                ),
            )
        })
    });
    let metrics = httpkit::serve("127.0.0.1:0".parse().expect("addr"), handler)
        .await
        .expect("bind metrics");
    let mut server = crate::prometheus::Prometheus::start(&[metrics.addr.to_string()]);
    // The corpus's trigger, pointed at this Prometheus.
    let corpus = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(
        "../../testdata/home-ops/kubernetes/apps/network/envoy-gateway/app/scaledobject.yaml",
    ))
    .expect("corpus");
    let query = corpus
        .lines()
        .find_map(|l| l.trim().strip_prefix("query: "))
        .expect("a query in the corpus")
        .to_string();
    assert_eq!(
        query,
        r#"1 - min(gatus_results_endpoint_success{group="external"})"#
    );
    let trigger = Prometheus {
        server: format!("http://{}", server.addr),
        query,
        ignore_null: false,
    };
    let client = httpkit::Client::default();

    // Healthy: 1 - 1 = 0.
    let healthy = until("the healthy value", async || {
        trigger.value(&client).await.ok().filter(|v| *v == 0.0)
    })
    .await;
    assert_eq!(healthy, 0.0);
    // The probe fails: 1 - 0 = 1.
    success.store(0, Ordering::SeqCst);
    until("the failing value", async || {
        trigger.value(&client).await.ok().filter(|v| *v == 1.0)
    })
    .await;
    // A query Prometheus refuses: its own error.
    let bad = Prometheus {
        query: "min(".into(),
        ..trigger.clone()
    };
    let e = bad.value(&client).await.expect_err("a parse error");
    assert!(e.contains("bad_data"), "{e}");

    // The corpus's envoy-internal policy fed with what Prometheus says (2 × the query, so
    // that a failing probe asks for 2 replicas: the corpus's own query asks for 1, see
    // health::scale's tests).
    let policy = Policy::from_spec(&serde_json::from_value(serde_json::json!({
        "scaleTargetRef": {"name": "envoy-internal"}, "cooldownPeriod": 5,
        "minReplicaCount": 1, "maxReplicaCount": 2,
        "fallback": {"failureThreshold": 2, "replicas": 1},
        "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {"scaleDown": {"stabilizationWindowSeconds": 5}}}},
        "triggers": [{"type": "prometheus", "metadata": {"serverAddress": "http://127.0.0.1:9", "query": "q", "threshold": "1"}}]
    })).expect("spec"))
    .expect("policy");
    let doubled = Prometheus {
        query: format!("2 * ({})", trigger.query),
        ..trigger.clone()
    };
    let mut state = State::default();
    let now = Instant::now();
    let v = doubled.value(&client).await;
    let up = step(&policy, &mut state, now, 1, &[v]);
    assert_eq!(up.replicas, 2, "{up:?}");
    // Prometheus gone: kept at the first failure, the fallback at the second.
    server.stop();
    let v = doubled.value(&client).await;
    assert!(v.is_err(), "{v:?}");
    let kept = step(&policy, &mut state, now + Duration::from_secs(1), 2, &[v]);
    assert_eq!((kept.replicas, kept.fallback), (2, false), "{kept:?}");
    let v = doubled.value(&client).await;
    let fallback = step(&policy, &mut state, now + Duration::from_secs(2), 2, &[v]);
    assert_eq!(
        (fallback.replicas, fallback.fallback),
        (1, true),
        "{fallback:?}"
    );
}

/// KEDA's metrics-api trigger against an HTTP server: the number at `valueLocation`, an error
/// (counted towards the fallback) for a missing field or a failing server.
#[tokio::test]
async fn metrics_api_trigger_reads_the_value_location() {
    let answer = Arc::new(AtomicU64::new(200));
    let a = answer.clone();
    let handler: httpkit::Handler = Arc::new(move |_req: http::Request<Bytes>| {
        let status = a.load(Ordering::SeqCst) as u16;
        Box::pin(async move {
            httpkit::respond(
                status,
                "application/json",
                r#"{"components": {"worker": {"tasks": 7}}, "items": [{"value": "1.5"}]}"#,
            )
        })
    });
    let srv = httpkit::serve("127.0.0.1:0".parse().expect("addr"), handler)
        .await
        .expect("bind");
    let trigger = |location: &str| {
        let t: model::kinds::misc::Trigger = serde_json::from_value(serde_json::json!({
            "type": "metrics-api",
            "metadata": {"url": format!("http://{}/stats", srv.addr), "valueLocation": location,
                         "targetValue": "5"}
        }))
        .expect("trigger");
        health::trigger::Trigger::from_spec(&t).expect("valid")
    };
    let client = httpkit::Client::default();
    assert_eq!(
        trigger("components.worker.tasks").value(&client).await,
        Ok(7.0)
    );
    assert_eq!(trigger("items.0.value").value(&client).await, Ok(1.5));
    let e = trigger("components.nope")
        .value(&client)
        .await
        .expect_err("missing");
    assert!(e.contains("nothing at"), "{e}");
    answer.store(503, Ordering::SeqCst);
    let e = trigger("components.worker.tasks")
        .value(&client)
        .await
        .expect_err("503");
    assert!(e.contains("503"), "{e}");
}
