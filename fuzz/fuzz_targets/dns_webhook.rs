//! Arbitrary requests to the ExternalDNS webhook API that `trellis dns --webhook-listen`
//! serves (Host and bearer-token checks, media types, `plan.Changes` and endpoint-list JSON),
//! backed by the in-process zone as in `trellis dns`; then the zone's records answer a query.
//! And the JSON a webhook client reads (domain filter, record lists) on its own.
//!
//! - A request without the token is refused (401), one naming a host 421; `/healthz` is open.
//! - Accepted changes (204) are valid `plan.Changes`.
//! - The wire types round-trip through JSON; changes round-trip through the wire form.
#![no_main]

use std::sync::Arc;

use bytes::Bytes;
use dns::sync::Changes;
use dns::sync::dynamic::Dynamic;
use dns::sync::webhook::{Access, DomainFilter, MEDIA_TYPE, WireChanges, WireEndpoint, handle};
use libfuzzer_sys::fuzz_target;

mod common;

const PORT: u16 = 8888;
const TOKEN: &str = "s3cret";
const PATHS: &[&str] = &["/", "/records", "/adjustendpoints", "/healthz", "/other"];
const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE"];
const HEADERS: &[&str] = &["host", "accept", "content-type", "authorization", "x-other"];

/// A JSON value read, written and read again is the same value.
fn round_trip<T>(body: &[u8]) -> Option<T>
where
    T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
{
    let v: T = serde_json::from_slice(body).ok()?;
    let again: T = serde_json::from_slice(&serde_json::to_vec(&v).expect("serializes"))
        .expect("what was written reads back");
    assert_eq!(again, v);
    Some(v)
}

fuzz_target!(|input: (u8, u8, bool, Vec<(u8, String)>, Vec<u8>)| {
    let (method, path, proper, headers, body) = input;
    if let Some(w) = round_trip::<WireChanges>(&body) {
        let c = Changes::from(w);
        assert_eq!(Changes::from(WireChanges::from(&c)), c);
    }
    round_trip::<Vec<WireEndpoint>>(&body);
    round_trip::<Option<Vec<WireEndpoint>>>(&body);
    round_trip::<DomainFilter>(&body);

    let method = METHODS[usize::from(method) % METHODS.len()];
    let path = PATHS[usize::from(path) % PATHS.len()];
    let mut req = http::Request::new(Bytes::from(body));
    *req.method_mut() = method.parse().expect("a method");
    *req.uri_mut() = path.parse().expect("a path");
    let h = req.headers_mut();
    if proper {
        // What ExternalDNS sends, so that bodies get read.
        let v = |s: &str| http::HeaderValue::from_str(s).expect("a header value");
        h.insert(http::header::HOST, v(&format!("127.0.0.1:{PORT}")));
        h.insert(http::header::AUTHORIZATION, v(&format!("Bearer {TOKEN}")));
        h.insert(http::header::ACCEPT, v(MEDIA_TYPE));
        h.insert(http::header::CONTENT_TYPE, v(MEDIA_TYPE));
    }
    for (n, value) in &headers {
        if let Ok(v) = http::HeaderValue::from_str(value) {
            h.append(HEADERS[usize::from(*n) % HEADERS.len()], v);
        }
    }
    let has_auth = req.headers().contains_key(http::header::AUTHORIZATION);
    let changes = serde_json::from_slice::<WireChanges>(req.body()).ok();
    let zone = Arc::new(Dynamic::new(&["example.test".into()]));
    let resp = common::runtime().block_on(handle(zone.clone(), &Access::token(TOKEN), PORT, req));
    let status = resp.status().as_u16();
    if path == "/healthz" {
        assert_eq!(status, 200);
    } else if !has_auth {
        assert!(matches!(status, 401 | 421), "{status} without a token");
    }
    if status == 204 {
        assert!(method == "POST" && path == "/records" && changes.is_some());
    }
    // Whatever the webhook took is served.
    let mut views = dns::Views::default();
    zone.merge_into(&mut views);
    let mut q = hickory_proto::op::Message::query();
    q.add_query(hickory_proto::op::Query::query(
        hickory_proto::rr::Name::from_ascii("a.example.test.").expect("name"),
        hickory_proto::rr::RecordType::A,
    ));
    let packet = q.to_vec().expect("encodes");
    let _ = dns::answer::respond(&views.default, &packet, dns::answer::Transport::Udp);
});
