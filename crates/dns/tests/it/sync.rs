//! Record sync against real peers: the webhook protocol (trellis's client against trellis's
//! server, the server backed by the zone `trellis dns` answers), rfc2136 to Knot DNS with the
//! records and ownership TXT records checked by kdig, and the Cloudflare client against a
//! local server that checks every request against the documented v4 API.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use dns::sync::provider::{BoxFuture, Error, Failure, Provider};
use dns::sync::webhook::{MEDIA_TYPE, WebhookProvider};
use dns::sync::{Changes, Endpoint, SyncConfig, plan};

use crate::knot::Knot;

fn ep(name: &str, ty: &str, targets: &[&str], resource: &str) -> Endpoint {
    Endpoint::new(name, ty, targets.iter().copied(), resource)
}

/// Asks the provider to create one record and expects a permanent refusal.
async fn create_is_refused(p: &dyn Provider, name: &str) -> Failure {
    let failed = p
        .apply(&Changes {
            create: vec![ep(name, "A", &["10.0.0.9"], "")],
            ..Changes::default()
        })
        .await;
    assert_eq!(failed.len(), 1);
    assert!(!failed[0].error.is_retryable(), "{}", failed[0]);
    failed[0].clone()
}

fn cfg() -> SyncConfig {
    SyncConfig {
        owner_id: "trellis".into(),
        ..SyncConfig::default()
    }
}

/// Plans `desired` against the provider and applies the changes; returns the failures.
async fn sync(p: &dyn Provider, desired: &[Endpoint], cfg: &SyncConfig) -> Vec<Failure> {
    let current = p.records().await.expect("records");
    let changes = plan(desired, &current, cfg).changes(cfg);
    p.apply(&changes).await
}

fn by_key(list: Vec<Endpoint>) -> BTreeMap<(String, String), BTreeSet<String>> {
    list.into_iter()
        .map(|e| ((e.name, e.record_type), e.targets))
        .collect()
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A webhook server for `provider` on a free loopback port and a client that negotiated with
/// it.
async fn webhook_pair(provider: Arc<dyn Provider>) -> (dns::sync::http::Serving, WebhookProvider) {
    let server = dns::sync::webhook::serve(
        "127.0.0.1:0".parse().expect("addr"),
        provider,
        dns::sync::webhook::Access::default(),
    )
    .await
    .expect("serves");
    let client =
        WebhookProvider::connect(&format!("http://{}", server.addr), Default::default(), None)
            .await
            .expect("negotiates");
    (server, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_round_trip_client_against_server() {
    let zone = Arc::new(dns::sync::dynamic::Dynamic::new(&["example.test".into()]));
    let (_server, client) = webhook_pair(zone.clone()).await;
    assert_eq!(
        client.negotiated().include,
        ["example.test"],
        "GET / is the domain filter"
    );

    let cfg = cfg();
    let app = ep("app.example.test", "A", &["10.0.0.1"], "crd/t/app");
    let www = ep(
        "www.example.test",
        "CNAME",
        &["app.example.test"],
        "crd/t/www",
    );
    assert!(
        sync(&client, &[app.clone(), www.clone()], &cfg)
            .await
            .is_empty()
    );
    let got = by_key(client.records().await.expect("records"));
    assert_eq!(
        got[&("app.example.test".into(), "A".into())],
        set(&["10.0.0.1"])
    );
    assert_eq!(
        got[&("a-app.example.test".into(), "TXT".into())],
        set(&[
            "\"heritage=external-dns,external-dns/owner=trellis,external-dns/resource=crd/t/app\""
        ]),
        "the ownership TXT record travelled with it"
    );

    // The records are in the zone trellis dns answers.
    let mut views = dns::Views::default();
    zone.merge_into(&mut views);
    let running = dns::server::start("127.0.0.1:0".parse().expect("addr"), views, None)
        .await
        .expect("dns");
    let port = running.udp.port();
    let answers = tokio::task::spawn_blocking(move || {
        (
            crate::short(port, "app.example.test", "A"),
            crate::short(port, "a-app.example.test", "TXT"),
        )
    })
    .await
    .expect("dig");
    assert_eq!(answers.0, ["10.0.0.1"]);
    assert_eq!(
        answers.1,
        ["\"heritage=external-dns,external-dns/owner=trellis,external-dns/resource=crd/t/app\""]
    );

    // Split horizon: only the view that opts in (and clients no view matches) gets them.
    let view = |name: &str, client: &str, dynamic_records: bool| dns::views::View {
        name: name.into(),
        clients: vec![client.parse().expect("cidr")],
        zone: Default::default(),
        dynamic_records,
    };
    let mut views = dns::Views {
        views: vec![
            view("lan", "127.0.0.2/32", true),
            view("public", "127.0.0.3/32", false),
        ],
        ..Default::default()
    };
    zone.merge_into(&mut views);
    let split = dns::server::start("127.0.0.1:0".parse().expect("addr"), views, None)
        .await
        .expect("dns");
    let port = split.udp.port();
    let by_client = tokio::task::spawn_blocking(move || {
        ["127.0.0.2", "127.0.0.3", "127.0.0.1"].map(|from| {
            crate::dig(port, &["-b", from, "+short", "app.example.test", "A"])
                .trim()
                .to_string()
        })
    })
    .await
    .expect("dig");
    assert_eq!(
        by_client,
        ["10.0.0.1", "", "10.0.0.1"],
        "lan, public, no view"
    );

    // Update one, drop the other: updateOld/updateNew and delete, TXT record included.
    let moved = ep(
        "app.example.test",
        "A",
        &["10.0.0.2", "10.0.0.3"],
        "crd/t/app",
    );
    assert!(sync(&client, &[moved], &cfg).await.is_empty());
    let got = by_key(client.records().await.expect("records"));
    assert_eq!(
        got[&("app.example.test".into(), "A".into())],
        set(&["10.0.0.2", "10.0.0.3"])
    );
    assert!(!got.contains_key(&("www.example.test".into(), "CNAME".into())));
    assert!(!got.contains_key(&("cname-www.example.test".into(), "TXT".into())));
    assert!(got.contains_key(&("a-app.example.test".into(), "TXT".into())));

    // 4xx: a record outside the zone, a create of a record that exists: permanent.
    let refused = create_is_refused(&client, "x.other.test").await;
    assert!(
        refused.error.to_string().contains("HTTP 400"),
        "{}",
        refused
    );
}

/// A provider whose every call fails as a server error would.
struct Failing;

impl Provider for Failing {
    fn records(&self) -> BoxFuture<'_, Result<Vec<Endpoint>, Error>> {
        Box::pin(async { Err(Error::Retryable("backend down".into())) })
    }
    fn apply<'a>(&'a self, changes: &'a Changes) -> BoxFuture<'a, Vec<Failure>> {
        Box::pin(async move {
            dns::sync::provider::all_failed(changes, &Error::Retryable("backend down".into()))
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_5xx_is_retryable_and_the_protocol_is_checked() {
    let (server, client) = webhook_pair(Arc::new(Failing)).await;
    let base = format!("http://{}", server.addr);
    assert!(
        client.negotiated().include.is_empty(),
        "no filter: all domains"
    );
    let err = client.records().await.expect_err("500");
    assert!(err.is_retryable(), "{err}");
    let failed = client
        .apply(&Changes {
            create: vec![ep("a.example.test", "A", &["10.0.0.1"], "")],
            delete: vec![ep("b.example.test", "A", &["10.0.0.2"], "")],
            ..Changes::default()
        })
        .await;
    assert_eq!(failed.len(), 2, "every change of the batch is reported");
    assert!(failed.iter().all(|f| f.error.is_retryable()));

    // The wire: media type on answers, 415 for another body type, Go's field casing read.
    let http = dns::sync::http::Client::default();
    let send = |method: &str, path: &str, ctype: &str, body: &str| {
        let mut req = http::Request::new(Bytes::from(body.to_string()));
        *req.method_mut() = method.parse().expect("method");
        *req.uri_mut() = format!("{base}{path}").parse().expect("uri");
        req.headers_mut()
            .insert("accept", http::HeaderValue::from_static(MEDIA_TYPE));
        req.headers_mut()
            .insert("content-type", ctype.parse().expect("ctype"));
        http.send(req)
    };
    let root = send("GET", "/", MEDIA_TYPE, "").await.expect("GET /");
    assert_eq!(root.status, 200);
    assert_eq!(root.headers["content-type"], MEDIA_TYPE);
    assert_eq!(
        send("POST", "/records", "application/json", "{}")
            .await
            .expect("post")
            .status,
        415
    );
    assert_eq!(
        send("GET", "/healthz", "", "")
            .await
            .expect("healthz")
            .status,
        200
    );
    let zone = Arc::new(dns::sync::dynamic::Dynamic::new(&["example.test".into()]));
    let server2 = dns::sync::webhook::serve(
        "127.0.0.1:0".parse().expect("addr"),
        zone.clone(),
        dns::sync::webhook::Access::default(),
    )
    .await
    .expect("serves");
    let base2 = format!("http://{}", server2.addr);
    let mut req = http::Request::new(Bytes::from(
        r#"{"Create":[{"dnsName":"go.example.test","targets":["10.0.0.7"],"recordType":"A","recordTTL":60,"labels":{"owner":"x"},"providerSpecific":[{"name":"n","value":"v"}]}]}"#,
    ));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = format!("{base2}/records").parse().expect("uri");
    req.headers_mut()
        .insert("content-type", http::HeaderValue::from_static(MEDIA_TYPE));
    assert_eq!(http.send(req).await.expect("post").status, 204);
    let got = zone.records().await.expect("records");
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].ttl, got[0].provider_specific["n"].as_str()),
        (Some(60), "v")
    );
}

/// The webhook server's bounds: a client that never finishes its request head is cut off
/// (it does not hold a connection slot forever), a body over the cap is refused before it is
/// read, and with a token only the token gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_server_bounds_slow_and_large_requests_and_checks_the_token() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let zone = Arc::new(dns::sync::dynamic::Dynamic::new(&["example.test".into()]));
    let counters = dns::sync::http::ServerCounters::default();
    let server = dns::sync::webhook::serve_counted(
        "127.0.0.1:0".parse().expect("addr"),
        zone,
        dns::sync::webhook::Access::token("s3cret\n"),
        counters.clone(),
    )
    .await
    .expect("serves");

    // A head that never ends: the server closes the connection (awaited, bounded).
    let mut slow = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    slow.write_all(b"GET /records HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .expect("write");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(
        dns::sync::http::SERVER_HEADER_TIMEOUT * 3,
        slow.read_to_end(&mut rest),
    )
    .await;
    assert!(
        matches!(closed, Ok(Ok(_))),
        "a slow head kept its connection: {closed:?}"
    );

    let raw = |head: String| async move {
        let mut c = tokio::net::TcpStream::connect(server.addr)
            .await
            .expect("connect");
        c.write_all(head.as_bytes()).await.expect("write");
        let mut answer = vec![0u8; 512];
        let n = c.read(&mut answer).await.expect("read");
        String::from_utf8_lossy(&answer[..n]).into_owned()
    };
    let host = format!("127.0.0.1:{}", server.addr.port());
    // A body over the cap is refused from its Content-Length, before any of it is sent.
    let big = raw(format!(
        "POST /records HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer s3cret\r\n\
         Content-Type: {MEDIA_TYPE}\r\nContent-Length: {}\r\n\r\n",
        dns::sync::http::SERVER_BODY_BYTES_MAX + 1
    ))
    .await;
    assert!(big.starts_with("HTTP/1.1 413"), "{big}");
    // Each bound hit is counted.
    assert_eq!((counters.timeouts.get(), counters.too_large.get()), (1, 1));
    let get = |auth: &'static str| {
        raw(format!(
            "GET /records HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n"
        ))
    };
    assert!(get("").await.starts_with("HTTP/1.1 401"));
    assert!(
        get("Authorization: Bearer s3cre\r\n")
            .await
            .starts_with("HTTP/1.1 401")
    );
    assert!(
        get("Authorization: Bearer s3cret\r\n")
            .await
            .starts_with("HTTP/1.1 200")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc2136_to_knot_with_ownership_checked_by_kdig() {
    let knot = tokio::task::spawn_blocking(|| {
        Knot::start(
            "example.test",
            "$ORIGIN example.test.\n$TTL 300\n@ SOA ns hostmaster 1 3600 600 86400 60\n@ NS ns\nns A 127.0.0.1\nmanual A 192.0.2.99\n",
            true,
            "manual.example.test",
            "192.0.2.99",
        )
    })
    .await
    .expect("knot");
    let key = dns::sync::rfc2136::TsigKey {
        name: crate::knot::TSIG_NAME.into(),
        algorithm: "hmac-sha256".into(),
        secret: crate::knot::TSIG_SECRET.into(),
    };
    let server = format!("127.0.0.1:{}", knot.port).parse().expect("addr");
    let p = dns::sync::rfc2136::Rfc2136::new(server, "example.test", Some(&key)).expect("provider");
    let cfg = SyncConfig {
        txt_prefix: "k8s.".into(),
        ..cfg()
    };
    let app = ep(
        "app.example.test",
        "A",
        &["10.0.0.1", "10.0.0.2"],
        "httproute/apps/app",
    );
    let www = ep(
        "www.example.test",
        "CNAME",
        &["app.example.test"],
        "crd/apps/www",
    );
    let manual = ep("manual.example.test", "A", &["10.0.0.5"], "crd/apps/manual");
    let failures = sync(&p, &[app.clone(), www.clone(), manual], &cfg).await;
    assert!(failures.is_empty(), "{failures:?}");
    let k = Arc::new(knot);
    let kdig = |name: &'static str, ty: &'static str| {
        let k = k.clone();
        async move {
            tokio::task::spawn_blocking(move || k.kdig(name, ty))
                .await
                .expect("kdig")
        }
    };
    assert_eq!(
        kdig("app.example.test", "A").await,
        ["10.0.0.1", "10.0.0.2"]
    );
    assert_eq!(
        kdig("www.example.test", "CNAME").await,
        ["app.example.test."]
    );
    assert_eq!(
        kdig("k8s.a-app.example.test", "TXT").await,
        [
            "\"heritage=external-dns,external-dns/owner=trellis,external-dns/resource=httproute/apps/app\""
        ]
    );
    assert_eq!(
        kdig("k8s.cname-www.example.test", "TXT").await,
        ["\"heritage=external-dns,external-dns/owner=trellis,external-dns/resource=crd/apps/www\""]
    );
    assert_eq!(
        kdig("manual.example.test", "A").await,
        ["192.0.2.99"],
        "a record trellis does not own stays untouched"
    );
    assert!(kdig("k8s.a-manual.example.test", "TXT").await.is_empty());

    // Read back by AXFR: nothing left to do.
    let current = p.records().await.expect("axfr");
    let again = plan(&[app.clone(), www.clone()], &current, &cfg);
    assert!(again.changes(&cfg).is_empty(), "{again:?}");

    // Move one, drop the other.
    let moved = ep("app.example.test", "A", &["10.0.0.3"], "httproute/apps/app");
    assert!(sync(&p, &[moved], &cfg).await.is_empty());
    assert_eq!(kdig("app.example.test", "A").await, ["10.0.0.3"]);
    assert!(kdig("www.example.test", "CNAME").await.is_empty());
    assert!(kdig("k8s.cname-www.example.test", "TXT").await.is_empty());
    assert_eq!(kdig("manual.example.test", "A").await, ["192.0.2.99"]);

    // A wrong key is refused by Knot: permanent, and reported per record.
    let bad = dns::sync::rfc2136::TsigKey {
        secret: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
        ..key
    };
    let p = dns::sync::rfc2136::Rfc2136::new(server, "example.test", Some(&bad)).expect("provider");
    create_is_refused(&p, "x.example.test").await;
    assert!(kdig("x.example.test", "A").await.is_empty());
}

/// A stand-in for api.cloudflare.com that checks every request against the v4 API's
/// documentation (method, path, query, bearer token, JSON body fields) and keeps records.
#[derive(Default)]
struct MockCloudflare {
    records: BTreeMap<String, serde_json::Value>,
    next_id: u32,
    /// Requests that do not match the documented API.
    violations: Vec<String>,
    /// Requests seen, as `METHOD path?query`.
    seen: Vec<String>,
    rate_limited_once: bool,
    /// The `Retry-After` of that one 429 (default `1`).
    retry_after: Option<String>,
    /// Every write (POST, PUT) answered 429 with `Retry-After: 0`.
    always_rate_limited: bool,
    /// When each write arrived (by the wall clock, as an HTTP-date counts).
    writes_at: Vec<std::time::SystemTime>,
    /// Changes answered 500, as (method, record name).
    refused: BTreeSet<(String, String)>,
}

const TOKEN: &str = "test-token";

fn cf_answer(
    status: u16,
    result: serde_json::Value,
    info: Option<serde_json::Value>,
) -> http::Response<Bytes> {
    let mut body = serde_json::json!({"success": status < 300, "errors": [], "messages": [], "result": result});
    if let Some(i) = info {
        body["result_info"] = i;
    }
    dns::sync::http::respond(status, "application/json", body.to_string())
}

impl MockCloudflare {
    fn handle(&mut self, req: &http::Request<Bytes>) -> http::Response<Bytes> {
        let path = req.uri().path().to_string();
        let query: BTreeMap<String, String> = req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.seen.push(format!("{} {}", req.method(), req.uri()));
        if req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            != Some(&format!("Bearer {TOKEN}"))
        {
            self.violations
                .push(format!("no bearer token: {}", req.uri()));
            return cf_answer(403, serde_json::Value::Null, None);
        }
        let page = |q: &BTreeMap<String, String>| -> Option<(usize, usize)> {
            Some((
                q.get("page")?.parse().ok()?,
                q.get("per_page")?.parse().ok()?,
            ))
        };
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (req.method().as_str(), segs.as_slice()) {
            ("GET", ["zones"]) => {
                if query.get("name").map(String::as_str) != Some("example.com")
                    || page(&query).is_none()
                {
                    self.violations.push(format!("zones lookup: {query:?}"));
                }
                cf_answer(
                    200,
                    serde_json::json!([{"id": "z1", "name": "example.com"}]),
                    Some(
                        serde_json::json!({"page": 1, "per_page": 2, "total_pages": 1, "count": 1, "total_count": 1}),
                    ),
                )
            }
            ("GET", ["zones", "z1", "dns_records"]) => {
                let Some((p, per)) = page(&query) else {
                    self.violations
                        .push(format!("listing without page/per_page: {query:?}"));
                    return cf_answer(400, serde_json::Value::Null, None);
                };
                let all: Vec<_> = self.records.values().cloned().collect();
                let pages = all.len().div_ceil(per).max(1);
                let items: Vec<_> = all.into_iter().skip((p - 1) * per).take(per).collect();
                let count = items.len();
                cf_answer(
                    200,
                    serde_json::Value::Array(items),
                    Some(
                        serde_json::json!({"page": p, "per_page": per, "total_pages": pages, "count": count, "total_count": self.records.len()}),
                    ),
                )
            }
            ("POST", ["zones", "z1", "dns_records"])
            | ("PUT", ["zones", "z1", "dns_records", _]) => {
                self.writes_at.push(std::time::SystemTime::now());
                if self.always_rate_limited || !self.rate_limited_once {
                    self.rate_limited_once = true;
                    let after = match &self.retry_after {
                        _ if self.always_rate_limited => "0".to_string(),
                        Some(v) => v.clone(),
                        None => "1".to_string(),
                    };
                    let mut r = cf_answer(429, serde_json::Value::Null, None);
                    r.headers_mut().insert(
                        "retry-after",
                        http::HeaderValue::from_str(&after).expect("header value"),
                    );
                    return r;
                }
                if req
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    != Some("application/json")
                {
                    self.violations.push("body without application/json".into());
                }
                let Ok(mut body) = serde_json::from_slice::<serde_json::Value>(req.body()) else {
                    self.violations.push("body is not JSON".into());
                    return cf_answer(400, serde_json::Value::Null, None);
                };
                let name = body["name"].as_str().unwrap_or_default().to_string();
                if self.refused.contains(&(req.method().to_string(), name)) {
                    return cf_answer(500, serde_json::Value::Null, None);
                }
                let fields_ok = body["type"].is_string()
                    && body["name"].is_string()
                    && body["content"].is_string()
                    && body["ttl"].is_u64()
                    && body["proxied"].is_boolean()
                    && body.get("id").is_none();
                if !fields_ok {
                    self.violations.push(format!("record body: {body}"));
                    return cf_answer(400, serde_json::Value::Null, None);
                }
                let id = match segs.as_slice() {
                    [_, _, _, id] if self.records.contains_key(*id) => id.to_string(),
                    [_, _, _, id] => {
                        self.violations.push(format!("PUT of unknown record {id}"));
                        return cf_answer(404, serde_json::Value::Null, None);
                    }
                    _ => {
                        self.next_id += 1;
                        format!("r{}", self.next_id)
                    }
                };
                body["id"] = id.clone().into();
                self.records.insert(id, body.clone());
                cf_answer(200, body, None)
            }
            ("DELETE", ["zones", "z1", "dns_records", id])
                if self.records.get(*id).is_some_and(|r| {
                    let name = r["name"].as_str().unwrap_or_default().to_string();
                    self.refused.contains(&("DELETE".to_string(), name))
                }) =>
            {
                cf_answer(500, serde_json::Value::Null, None)
            }
            ("DELETE", ["zones", "z1", "dns_records", id]) => match self.records.remove(*id) {
                Some(_) => cf_answer(200, serde_json::json!({"id": id}), None),
                None => {
                    self.violations
                        .push(format!("DELETE of unknown record {id}"));
                    cf_answer(404, serde_json::Value::Null, None)
                }
            },
            _ => {
                self.violations
                    .push(format!("not in the API: {} {path}", req.method()));
                cf_answer(404, serde_json::Value::Null, None)
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudflare_against_a_server_checking_the_documented_api() {
    let mock = Arc::new(Mutex::new(MockCloudflare::default()));
    // A record someone else made, not owned by trellis.
    mock.lock().expect("mock").records.insert(
        "manual".into(),
        serde_json::json!({"id": "manual", "type": "A", "name": "manual.example.com", "content": "192.0.2.1", "ttl": 300, "proxied": false}),
    );
    let m = mock.clone();
    let handler: dns::sync::http::Handler = Arc::new(move |req| {
        let resp = m.lock().expect("mock").handle(&req);
        Box::pin(async move { resp })
    });
    let server = dns::sync::http::serve("127.0.0.1:0".parse().expect("addr"), handler)
        .await
        .expect("mock serves");
    let p = dns::sync::cloudflare::Cloudflare::new(
        dns::sync::cloudflare::Config {
            base: format!("http://{}", server.addr),
            token: TOKEN.into(),
            zone_ids: Vec::new(),
            domains: vec!["example.com".into()],
            per_page: 2,
            proxied_default: true,
        },
        Default::default(),
    );
    let cfg = cfg();
    let web = ep(
        "web.example.com",
        "A",
        &["203.0.113.1", "203.0.113.2"],
        "httproute/a/web",
    );
    let mut direct = ep("ssh.example.com", "A", &["203.0.113.3"], "httproute/a/ssh");
    direct
        .provider_specific
        .insert(dns::sync::CLOUDFLARE_PROXIED.into(), "false".into());
    let manual = ep("manual.example.com", "A", &["203.0.113.9"], "crd/a/manual");
    let desired = p
        .adjust_endpoints(vec![web.clone(), direct.clone(), manual])
        .await
        .expect("adjust");
    let failures = sync(&p, &desired, &cfg).await;
    assert!(failures.is_empty(), "{failures:?}");
    {
        let m = mock.lock().expect("mock");
        assert!(m.violations.is_empty(), "{:?}", m.violations);
        assert!(m.rate_limited_once, "the 429 was waited out");
        let recs: BTreeSet<(String, String, String, bool)> = m
            .records
            .values()
            .map(|r| {
                (
                    r["type"].as_str().unwrap_or_default().to_string(),
                    r["name"].as_str().unwrap_or_default().to_string(),
                    r["content"].as_str().unwrap_or_default().to_string(),
                    r["proxied"].as_bool().unwrap_or_default(),
                )
            })
            .collect();
        for want in [
            ("A", "web.example.com", "203.0.113.1", true),
            ("A", "web.example.com", "203.0.113.2", true),
            ("A", "ssh.example.com", "203.0.113.3", false),
            ("A", "manual.example.com", "192.0.2.1", false),
            (
                "TXT",
                "a-web.example.com",
                "\"heritage=external-dns,external-dns/owner=trellis,external-dns/resource=httproute/a/web\"",
                false,
            ),
        ] {
            let want = (
                want.0.to_string(),
                want.1.to_string(),
                want.2.to_string(),
                want.3,
            );
            assert!(recs.contains(&want), "missing {want:?} in {recs:?}");
        }
        // 7 records at 2 a page: the listing read every page.
        assert!(m.seen.iter().any(|s| s.contains("page=2")), "{:?}", m.seen);
    }
    // Nothing left to do; then one target goes and proxying changes.
    let desired = p
        .adjust_endpoints(vec![web.clone(), direct.clone()])
        .await
        .expect("adjust");
    let current = p.records().await.expect("records");
    let again = plan(&desired, &current, &cfg);
    assert!(again.changes(&cfg).is_empty(), "{again:?}");
    let mut web2 = ep("web.example.com", "A", &["203.0.113.1"], "httproute/a/web");
    web2.provider_specific
        .insert(dns::sync::CLOUDFLARE_PROXIED.into(), "false".into());
    let desired = p
        .adjust_endpoints(vec![web2, direct])
        .await
        .expect("adjust");
    assert!(sync(&p, &desired, &cfg).await.is_empty());
    let m = mock.lock().expect("mock");
    assert!(m.violations.is_empty(), "{:?}", m.violations);
    let web: Vec<_> = m
        .records
        .values()
        .filter(|r| r["name"] == "web.example.com")
        .collect();
    assert_eq!(web.len(), 1, "{web:?}");
    assert_eq!(
        (web[0]["content"].as_str(), web[0]["proxied"].as_bool()),
        (Some("203.0.113.1"), Some(false))
    );
    assert!(
        m.seen.iter().any(|s| s.starts_with("DELETE "))
            && m.seen.iter().any(|s| s.starts_with("PUT "))
    );
}

/// A Cloudflare client of `mock`, served on a free loopback port (the server stops when the
/// first value is dropped).
async fn cloudflare_of(
    mock: &Arc<Mutex<MockCloudflare>>,
) -> (dns::sync::http::Serving, dns::sync::cloudflare::Cloudflare) {
    let m = mock.clone();
    let handler: dns::sync::http::Handler = Arc::new(move |req| {
        let resp = m.lock().expect("mock").handle(&req);
        Box::pin(async move { resp })
    });
    let server = dns::sync::http::serve("127.0.0.1:0".parse().expect("addr"), handler)
        .await
        .expect("mock serves");
    let p = dns::sync::cloudflare::Cloudflare::new(
        dns::sync::cloudflare::Config {
            base: format!("http://{}", server.addr),
            token: TOKEN.into(),
            zone_ids: Vec::new(),
            domains: vec!["example.com".into()],
            per_page: 100,
            proxied_default: false,
        },
        Default::default(),
    );
    (server, p)
}

/// The mock's records as (type, name, content).
fn cf_records(mock: &Arc<Mutex<MockCloudflare>>) -> BTreeSet<(String, String, String)> {
    let m = mock.lock().expect("mock");
    assert!(m.violations.is_empty(), "{:?}", m.violations);
    m.records
        .values()
        .map(|r| {
            let f = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            (f("type"), f("name"), f("content"))
        })
        .collect()
}

fn owner_txt(resource: &str) -> String {
    format!("\"heritage=external-dns,external-dns/owner=trellis,external-dns/resource={resource}\"")
}

/// A 429 whose `Retry-After` is an HTTP-date (RFC 9110 allows it in place of seconds) is
/// waited out until that date. Before: only seconds were read, and the request went again
/// after the 1 s backoff, before the date.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudflare_waits_until_a_retry_after_date() {
    use std::time::{Duration, SystemTime};
    // A whole second (HTTP-dates have no fractions) at least two seconds away.
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970");
    let date = SystemTime::UNIX_EPOCH + Duration::from_secs(now.as_secs() + 3);
    let mock = Arc::new(Mutex::new(MockCloudflare {
        retry_after: Some(httpdate::fmt_http_date(date)),
        ..MockCloudflare::default()
    }));
    let (_server, p) = cloudflare_of(&mock).await;
    let web = ep("web.example.com", "A", &["203.0.113.1"], "httproute/a/web");
    let failures = sync(&p, &[web], &cfg()).await;
    assert!(failures.is_empty(), "{failures:?}");
    let writes = mock.lock().expect("mock").writes_at.clone();
    assert!(writes.len() >= 2, "{writes:?}");
    assert!(
        writes[1] >= date,
        "the write after the 429 came {:?} before its Retry-After date",
        date.duration_since(writes[1]).unwrap_or_default()
    );
    assert_eq!(
        cf_records(&mock),
        BTreeSet::from([
            ("A".into(), "web.example.com".into(), "203.0.113.1".into()),
            (
                "TXT".into(),
                "a-web.example.com".into(),
                owner_txt("httproute/a/web")
            ),
        ])
    );
}

/// An API that rate limits every write: the first change is tried RATE_LIMIT_RETRIES_MAX + 1
/// times, then it and every other change of the run fail as retryable without another
/// request; the next run, with the limit lifted, makes them all. Before: each change used up
/// its own waits (here 4 × 6 requests; with real Retry-After values, minutes per change).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudflare_gives_up_after_the_retry_budget_and_the_next_run_catches_up() {
    use dns::sync::cloudflare::RATE_LIMIT_RETRIES_MAX;
    let mock = Arc::new(Mutex::new(MockCloudflare {
        always_rate_limited: true,
        ..MockCloudflare::default()
    }));
    let (_server, p) = cloudflare_of(&mock).await;
    let desired = [
        ep("web.example.com", "A", &["203.0.113.1"], "httproute/a/web"),
        ep("ssh.example.com", "A", &["203.0.113.3"], "httproute/a/ssh"),
    ];
    let failures = sync(&p, &desired, &cfg()).await;
    let writes = mock.lock().expect("mock").writes_at.len();
    assert_eq!(writes, RATE_LIMIT_RETRIES_MAX as usize + 1);
    let mut failed: Vec<(&str, &str, &str, bool)> = failures
        .iter()
        .map(|f| {
            (
                f.action,
                f.endpoint.record_type.as_str(),
                f.endpoint.name.as_str(),
                f.error.is_retryable(),
            )
        })
        .collect();
    failed.sort();
    assert_eq!(
        failed,
        [
            ("create", "A", "ssh.example.com", true),
            ("create", "A", "web.example.com", true),
            ("create", "TXT", "a-ssh.example.com", true),
            ("create", "TXT", "a-web.example.com", true),
        ],
        "{failures:#?}"
    );
    assert!(
        failures
            .iter()
            .any(|f| f.to_string().contains("still rate limited after")),
        "{failures:#?}"
    );
    assert!(cf_records(&mock).is_empty());

    mock.lock().expect("mock").always_rate_limited = false;
    let failures = sync(&p, &desired, &cfg()).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(cf_records(&mock).len(), 4);
}

/// Some changes made, one failing: the failure is reported, the record whose ownership TXT
/// record could not be written is held back (and, deleting, the TXT record of a record that
/// could not be deleted is kept), and the next run makes exactly what is missing. Before: the
/// record was created without its TXT record, and every later run left it alone as owned by
/// someone else ("exists and is not owned"); deleting, the TXT record went and the record
/// stayed, owned by nobody, for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudflare_partial_failure_keeps_ownership_and_the_next_run_completes() {
    let mock = Arc::new(Mutex::new(MockCloudflare {
        rate_limited_once: true,
        ..MockCloudflare::default()
    }));
    let (_server, p) = cloudflare_of(&mock).await;
    let cfg = cfg();
    let web = ep(
        "web.example.com",
        "A",
        &["203.0.113.1", "203.0.113.2"],
        "httproute/a/web",
    );
    let ssh = ep("ssh.example.com", "A", &["203.0.113.3"], "httproute/a/ssh");
    let rec = |t: &str, n: &str, c: &str| (t.to_string(), n.to_string(), c.to_string());
    let all = BTreeSet::from([
        rec("A", "web.example.com", "203.0.113.1"),
        rec("A", "web.example.com", "203.0.113.2"),
        rec("TXT", "a-web.example.com", &owner_txt("httproute/a/web")),
        rec("A", "ssh.example.com", "203.0.113.3"),
        rec("TXT", "a-ssh.example.com", &owner_txt("httproute/a/ssh")),
    ]);
    let failed = |f: &[Failure]| {
        let mut v: Vec<String> = f
            .iter()
            .map(|f| {
                format!(
                    "{} {} {}",
                    f.action, f.endpoint.record_type, f.endpoint.name
                )
            })
            .collect();
        v.sort();
        v
    };

    // Creating: web's TXT record is refused.
    mock.lock()
        .expect("mock")
        .refused
        .insert(("POST".into(), "a-web.example.com".into()));
    let failures = sync(&p, &[web.clone(), ssh.clone()], &cfg).await;
    assert_eq!(
        failed(&failures),
        ["create A web.example.com", "create TXT a-web.example.com"],
        "{failures:#?}"
    );
    assert!(failures.iter().all(|f| f.error.is_retryable()));
    assert_eq!(
        cf_records(&mock),
        BTreeSet::from([
            rec("A", "ssh.example.com", "203.0.113.3"),
            rec("TXT", "a-ssh.example.com", &owner_txt("httproute/a/ssh")),
        ]),
        "ssh made, web not made without its owner"
    );
    // The next run: the refusal is gone, only web is planned, and made.
    mock.lock().expect("mock").refused.clear();
    let current = p.records().await.expect("records");
    let next = plan(&[web.clone(), ssh.clone()], &current, &cfg);
    assert!(next.conflicts.is_empty(), "{:?}", next.conflicts);
    assert_eq!(
        next.create
            .iter()
            .map(|e| e.name.as_str())
            .collect::<Vec<_>>(),
        ["web.example.com"]
    );
    assert!(sync(&p, &[web.clone(), ssh.clone()], &cfg).await.is_empty());
    assert_eq!(cf_records(&mock), all);

    // Deleting web: its record is refused; its TXT record stays with it.
    mock.lock()
        .expect("mock")
        .refused
        .insert(("DELETE".into(), "web.example.com".into()));
    let failures = sync(&p, std::slice::from_ref(&ssh), &cfg).await;
    assert_eq!(
        failed(&failures),
        ["delete A web.example.com", "delete TXT a-web.example.com"],
        "{failures:#?}"
    );
    assert_eq!(cf_records(&mock), all, "web and its owner both kept");
    mock.lock().expect("mock").refused.clear();
    assert!(sync(&p, std::slice::from_ref(&ssh), &cfg).await.is_empty());
    assert_eq!(
        cf_records(&mock),
        BTreeSet::from([
            rec("A", "ssh.example.com", "203.0.113.3"),
            rec("TXT", "a-ssh.example.com", &owner_txt("httproute/a/ssh")),
        ])
    );
}
