//! The results kept for readers, served as Gatus's API serves them: `GET
//! /api/v1/endpoints/statuses` (every endpoint, newest results last) and `GET
//! /api/v1/endpoints/{key}/statuses` (one endpoint by Gatus's key). Each endpoint keeps its
//! last [`RESULTS_MAX`] results and its events (`START`, then `HEALTHY`/`UNHEALTHY` each time
//! the verdict changes, at most [`EVENTS_MAX`]), in memory as Gatus's memory store does.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use serde_json::{Value, json};

use crate::{Endpoint, Probed};

/// Results kept per endpoint (Gatus's memory store keeps 100; its API pages by 20).
pub const RESULTS_MAX: usize = 100;
/// Events kept per endpoint (Gatus keeps 50).
pub const EVENTS_MAX: usize = 50;
/// Results an answer carries unless `?pageSize=` asks for another count (Gatus's default).
pub const PAGE_SIZE_DEFAULT: usize = 20;

/// The path prefix of the API.
pub const API_PREFIX: &str = "/api/v1/endpoints/";

struct Kept {
    name: String,
    group: String,
    results: VecDeque<Value>,
    events: VecDeque<Value>,
    /// The verdict of the last result (an event is written when it changes).
    healthy: Option<bool>,
}

/// Every endpoint's kept results, by Gatus's key.
#[derive(Default)]
pub struct Statuses {
    kept: Mutex<BTreeMap<String, Kept>>,
}

impl Statuses {
    /// Keeps one result (`at`: when the probe was sent).
    pub fn record(&self, e: &Endpoint, p: &Probed, at: SystemTime) {
        let hostname = url_host(&e.url);
        let mut result = json!({
            "duration": u64::try_from(p.outcome.duration.as_nanos()).unwrap_or(u64::MAX),
            "conditionResults": p.verdicts.iter()
                .map(|v| json!({"condition": v.shown, "success": v.success}))
                .collect::<Vec<_>>(),
            "success": p.success,
            "timestamp": httpkit::rfc3339(at),
        });
        if p.outcome.status != 0 {
            result["status"] = p.outcome.status.into();
        }
        if !hostname.is_empty() {
            result["hostname"] = hostname.into();
        }
        if !p.outcome.errors.is_empty() {
            result["errors"] = p.outcome.errors.clone().into();
        }
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let k = kept.entry(e.key()).or_insert_with(|| Kept {
            name: e.name.clone(),
            group: e.group.clone(),
            results: VecDeque::new(),
            events: VecDeque::from([json!({"type": "START", "timestamp": httpkit::rfc3339(at)})]),
            healthy: None,
        });
        if k.healthy != Some(p.success) {
            k.healthy = Some(p.success);
            k.events.push_back(json!({
                "type": if p.success { "HEALTHY" } else { "UNHEALTHY" },
                "timestamp": httpkit::rfc3339(at),
            }));
            if k.events.len() > EVENTS_MAX {
                k.events.pop_front();
            }
        }
        k.results.push_back(result);
        if k.results.len() > RESULTS_MAX {
            k.results.pop_front();
        }
    }

    /// Drops an endpoint that is no longer probed.
    pub fn forget(&self, e: &Endpoint) {
        self.kept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&e.key());
    }

    fn doc(key: &str, k: &Kept, page: usize) -> Value {
        let skip = k.results.len().saturating_sub(page);
        json!({
            "name": k.name,
            "group": k.group,
            "key": key,
            "results": k.results.iter().skip(skip).collect::<Vec<_>>(),
            "events": k.events,
        })
    }

    /// Every endpoint (by key), each with its last `page` results.
    pub fn all(&self, page: usize) -> Value {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        Value::Array(
            kept.iter()
                .map(|(key, k)| Self::doc(key, k, page))
                .collect(),
        )
    }

    /// One endpoint by Gatus's key.
    pub fn one(&self, key: &str, page: usize) -> Option<Value> {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.get(key).map(|k| Self::doc(key, k, page))
    }

    /// How many endpoints have results, and how many of them passed their last probe.
    pub fn counts(&self) -> (usize, usize) {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let healthy = kept.values().filter(|k| k.healthy == Some(true)).count();
        (kept.len(), healthy)
    }

    /// The answer to an API request (`path` and `query` of the request); `None` for a path
    /// outside the API.
    pub fn answer(&self, path: &str, query: Option<&str>) -> Option<http::Response<Bytes>> {
        let rest = path.strip_prefix(API_PREFIX.trim_end_matches('/'))?;
        let page = query
            .into_iter()
            .flat_map(|q| form_urlencoded::parse(q.as_bytes()))
            .find(|(k, _)| k == "pageSize")
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(PAGE_SIZE_DEFAULT)
            .clamp(1, RESULTS_MAX);
        let json_answer = |v: Value| httpkit::respond(200, "application/json", format!("{v}\n"));
        Some(match rest.trim_start_matches('/') {
            "statuses" => json_answer(self.all(page)),
            other => match other.strip_suffix("/statuses") {
                Some(key) if !key.contains('/') => match self.one(key, page) {
                    Some(v) => json_answer(v),
                    None => httpkit::respond(404, "text/plain", "no endpoint with that key\n"),
                },
                _ => httpkit::respond(404, "text/plain", "not found\n"),
            },
        })
    }

    /// [`Statuses::answer`] as a handler (404 outside the API).
    pub fn handler(self: &Arc<Self>) -> httpkit::Handler {
        let me = self.clone();
        Arc::new(move |req: http::Request<Bytes>| {
            let answer = me
                .answer(req.uri().path(), req.uri().query())
                .unwrap_or_else(|| httpkit::respond(404, "text/plain", "not found\n"));
            Box::pin(async move { answer })
        })
    }
}

/// The host of a URL (`https://host:443/x` -> `host`), as Gatus's result `hostname`.
fn url_host(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = host.strip_prefix('[') {
        return v6.split(']').next().unwrap_or_default().to_string();
    }
    host.split(':').next().unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Outcome, Verdict};
    use std::time::Duration;

    fn endpoint(name: &str, group: &str) -> Endpoint {
        Endpoint {
            name: name.into(),
            group: group.into(),
            url: "http://127.0.0.1:8080/x".into(),
            kind: crate::Kind::Http,
            method: "GET".into(),
            headers: Vec::new(),
            body: String::new(),
            interval: Duration::from_secs(60),
            conditions: Vec::new(),
            dns: None,
            client: crate::endpoints::Client::default(),
            object: model::ObjectKey::new("", "Service", "apps", name),
        }
    }

    fn probed(success: bool, status: u16) -> Probed {
        Probed {
            outcome: {
                let mut o = Outcome::default();
                o.status = status;
                o.duration = Duration::from_millis(3);
                o.errors = if success { vec![] } else { vec!["boom".into()] };
                o
            },
            verdicts: vec![Verdict {
                success,
                shown: format!("[STATUS] ({status}) == 200"),
            }],
            success,
        }
    }

    #[test]
    fn results_and_events_as_gatus_serves_them() {
        let s = Statuses::default();
        let e = endpoint("Echo Ext", "external");
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        s.record(&e, &probed(true, 200), t0);
        s.record(&e, &probed(true, 200), t0 + Duration::from_secs(60));
        s.record(&e, &probed(false, 503), t0 + Duration::from_secs(120));
        let all = s.all(PAGE_SIZE_DEFAULT);
        let one = &all[0];
        assert_eq!(one["key"], "external_echo-ext");
        assert_eq!(one["name"], "Echo Ext");
        assert_eq!(one["group"], "external");
        let results = one["results"].as_array().expect("results");
        assert_eq!(results.len(), 3);
        assert_eq!(results[0]["status"], 200);
        assert_eq!(results[0]["hostname"], "127.0.0.1");
        assert_eq!(results[0]["duration"], 3_000_000);
        assert_eq!(results[0]["timestamp"], "2027-01-15T08:00:00.000Z");
        assert_eq!(results[2]["success"], false);
        assert_eq!(results[2]["errors"], json!(["boom"]));
        assert_eq!(
            results[2]["conditionResults"],
            json!([{"condition": "[STATUS] (503) == 200", "success": false}])
        );
        let events: Vec<&str> = one["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| e["type"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(events, ["START", "HEALTHY", "UNHEALTHY"]);
        assert_eq!(s.counts(), (1, 0));
        // Pages: the newest results, oldest first.
        let page = s.one("external_echo-ext", 2).expect("by key");
        assert_eq!(page["results"][1]["success"], false);
        assert_eq!(page["results"].as_array().map(Vec::len), Some(2));
        s.forget(&e);
        assert_eq!(s.all(20), json!([]));
    }

    #[test]
    fn the_api_answers_by_path_and_bounds_what_it_keeps() {
        let s = Statuses::default();
        let e = endpoint("a", "g");
        let t0 = SystemTime::UNIX_EPOCH;
        for i in 0..(RESULTS_MAX + 5) {
            s.record(&e, &probed(i % 2 == 0, 200), t0);
        }
        let page: Value = serde_json::from_slice(
            s.answer("/api/v1/endpoints/g_a/statuses", Some("pageSize=500"))
                .expect("an API path")
                .body(),
        )
        .expect("json");
        assert_eq!(page["results"].as_array().map(Vec::len), Some(RESULTS_MAX));
        assert_eq!(page["events"].as_array().map(Vec::len), Some(EVENTS_MAX));
        let all: Value = serde_json::from_slice(
            s.answer("/api/v1/endpoints/statuses", None)
                .expect("an API path")
                .body(),
        )
        .expect("json");
        assert_eq!(
            all[0]["results"].as_array().map(Vec::len),
            Some(PAGE_SIZE_DEFAULT)
        );
        let missing = s
            .answer("/api/v1/endpoints/nope/statuses", None)
            .expect("an API path");
        assert_eq!(missing.status(), 404);
        assert!(s.answer("/metrics", None).is_none());
        assert_eq!(url_host("https://user@[::1]:8443/x"), "::1");
        assert_eq!(url_host("tcp://db.home:5432"), "db.home");
    }
}
