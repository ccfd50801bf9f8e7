//! The value of a ScaledObject trigger, read as KEDA's scalers read it: `prometheus` (an
//! instant query over Prometheus's HTTP API) and `metrics-api` (a number in a JSON document
//! over HTTP). What a trigger cannot give is an error with the reason, which
//! [`crate::scale::step`] counts towards the fallback. Any other trigger type is refused.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::Value;

/// A trigger trellis reads.
#[derive(Clone, Debug, PartialEq)]
pub enum Trigger {
    Prometheus(Prometheus),
    MetricsApi(MetricsApi),
}

impl Trigger {
    /// The trigger of a ScaledObject's `triggers[i]`; a problem names the field (relative to
    /// the trigger).
    pub fn from_spec(t: &model::kinds::misc::Trigger) -> Result<Trigger, (String, String)> {
        if t.authentication_ref.is_some() {
            return Err((
                "authenticationRef".into(),
                "TriggerAuthentication is not supported: the trigger would be read without it"
                    .into(),
            ));
        }
        match t.type_.as_str() {
            "prometheus" => Prometheus::from_metadata(&t.metadata).map(Trigger::Prometheus),
            "metrics-api" => MetricsApi::from_metadata(&t.metadata).map(Trigger::MetricsApi),
            other => Err((
                "type".into(),
                format!("trigger type {other:?} is not supported (prometheus, metrics-api)"),
            )),
        }
    }

    pub async fn value(&self, client: &httpkit::Client) -> Result<f64, String> {
        match self {
            Trigger::Prometheus(p) => p.value(client).await,
            Trigger::MetricsApi(m) => m.value(client).await,
        }
    }
}

/// KEDA's metrics-api trigger: GET `url`, the number at `valueLocation` (a GJSON-style dotted
/// path: `components.worker.tasks`, `items.0.value`) of the JSON answer.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricsApi {
    pub url: String,
    pub value_location: String,
}

impl MetricsApi {
    pub fn from_metadata(m: &BTreeMap<String, Value>) -> Result<MetricsApi, (String, String)> {
        let url = text(m, "url")
            .filter(|s| s.starts_with("http://") || s.starts_with("https://"))
            .ok_or_else(|| {
                (
                    "metadata.url".to_string(),
                    "an http:// or https:// URL is required".to_string(),
                )
            })?;
        let value_location = text(m, "valueLocation")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                (
                    "metadata.valueLocation".to_string(),
                    "the path of the value in the JSON answer is required".to_string(),
                )
            })?;
        match text(m, "format") {
            None | Some("json") => {}
            Some(other) => {
                return Err((
                    "metadata.format".into(),
                    format!("{other:?}: only json is supported"),
                ));
            }
        }
        Ok(MetricsApi {
            url: url.to_string(),
            value_location: value_location.to_string(),
        })
    }

    pub async fn value(&self, client: &httpkit::Client) -> Result<f64, String> {
        let req = http::Request::get(&self.url)
            .header(http::header::ACCEPT, "application/json")
            .body(Bytes::new())
            .map_err(|e| format!("{}: {e}", self.url))?;
        let resp = client.send(req).await.map_err(|e| e.to_string())?;
        if resp.status != 200 {
            return Err(format!("{} answered {}", self.url, resp.status));
        }
        let doc: Value = serde_json::from_slice(&resp.body)
            .map_err(|e| format!("{}: not JSON: {e}", self.url))?;
        value_at(&doc, &self.value_location)
    }
}

/// The number at a dotted path (array elements by index); a numeric string counts.
pub fn value_at(doc: &Value, path: &str) -> Result<f64, String> {
    let mut at = doc;
    for part in path.split('.') {
        at = match at {
            Value::Object(m) => m.get(part),
            Value::Array(a) => part.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        }
        .ok_or_else(|| format!("nothing at {path:?} (stopped at {part:?})"))?;
    }
    let v = match at {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| format!("{path:?} is {at}, not a number"))?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("{path:?} is {v}"))
    }
}

/// KEDA's prometheus trigger.
#[derive(Clone, Debug, PartialEq)]
pub struct Prometheus {
    /// `serverAddress`: `http://host:port` (a path prefix is kept).
    pub server: String,
    pub query: String,
    /// `ignoreNullValues` (KEDA's default: true): an empty result is 0, not an error.
    pub ignore_null: bool,
}

fn text<'a>(m: &'a BTreeMap<String, Value>, k: &str) -> Option<&'a str> {
    m.get(k).and_then(Value::as_str).map(str::trim)
}

impl Prometheus {
    /// From a trigger's `metadata`; a problem names the field.
    pub fn from_metadata(m: &BTreeMap<String, Value>) -> Result<Prometheus, (String, String)> {
        let server = text(m, "serverAddress")
            .filter(|s| s.starts_with("http://") || s.starts_with("https://"))
            .ok_or_else(|| {
                (
                    "metadata.serverAddress".to_string(),
                    "an http:// or https:// address of Prometheus is required".to_string(),
                )
            })?;
        let query = text(m, "query").filter(|q| !q.is_empty()).ok_or_else(|| {
            (
                "metadata.query".to_string(),
                "a PromQL query is required".to_string(),
            )
        })?;
        let ignore_null = match m.get("ignoreNullValues") {
            None => true,
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) if s == "true" || s == "false" => s == "true",
            Some(_) => {
                return Err(("metadata.ignoreNullValues".into(), "true or false".into()));
            }
        };
        Ok(Prometheus {
            server: server.trim_end_matches('/').to_string(),
            query: query.to_string(),
            ignore_null,
        })
    }

    /// The query's value now: one sample (or a scalar), finite.
    pub async fn value(&self, client: &httpkit::Client) -> Result<f64, String> {
        let qs: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("query", &self.query)
            .finish();
        let url = format!("{}/api/v1/query?{qs}", self.server);
        let req = http::Request::get(&url)
            .header(http::header::ACCEPT, "application/json")
            .body(Bytes::new())
            .map_err(|e| format!("{url}: {e}"))?;
        let resp = client.send(req).await.map_err(|e| e.to_string())?;
        let body: Value = serde_json::from_slice(&resp.body)
            .map_err(|e| format!("Prometheus answered {} with no JSON: {e}", resp.status))?;
        if body["status"] != "success" {
            return Err(format!(
                "Prometheus: {} ({})",
                body["error"].as_str().unwrap_or("query failed"),
                body["errorType"].as_str().unwrap_or("no type"),
            ));
        }
        parse_instant(&body["data"], self.ignore_null)
    }
}

/// The value of an instant query's `data`.
pub fn parse_instant(data: &Value, ignore_null: bool) -> Result<f64, String> {
    let sample = match data["resultType"].as_str() {
        Some("vector") => match data["result"].as_array().map(Vec::as_slice) {
            Some([]) | None => {
                return if ignore_null {
                    Ok(0.0)
                } else {
                    Err("the query returned no sample (ignoreNullValues: false)".into())
                };
            }
            Some([one]) => &one["value"],
            Some(more) => {
                return Err(format!(
                    "the query returned {} samples; it must return one (aggregate it)",
                    more.len()
                ));
            }
        },
        Some("scalar") => &data["result"],
        other => return Err(format!("result type {other:?}: a vector or a scalar")),
    };
    let v: f64 = sample[1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not a sample value: {sample}"))?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("the query's value is {v}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn instant_results() {
        let one = json!({"resultType": "vector", "result": [{"metric": {}, "value": [1.5, "2"]}]});
        assert_eq!(parse_instant(&one, false), Ok(2.0));
        let scalar = json!({"resultType": "scalar", "result": [1.5, "0.25"]});
        assert_eq!(parse_instant(&scalar, false), Ok(0.25));
        let empty = json!({"resultType": "vector", "result": []});
        assert_eq!(parse_instant(&empty, true), Ok(0.0));
        assert!(parse_instant(&empty, false).is_err());
        let two =
            json!({"resultType": "vector", "result": [{"value": [1, "1"]}, {"value": [1, "2"]}]});
        assert!(
            parse_instant(&two, true)
                .expect_err("two")
                .contains("2 samples")
        );
        let nan = json!({"resultType": "vector", "result": [{"value": [1, "NaN"]}]});
        assert!(parse_instant(&nan, true).is_err());
    }

    #[test]
    fn values_at_paths() {
        let doc =
            json!({"components": {"worker": {"tasks": 12}}, "items": [{"v": "2.5"}], "s": "x"});
        assert_eq!(value_at(&doc, "components.worker.tasks"), Ok(12.0));
        assert_eq!(value_at(&doc, "items.0.v"), Ok(2.5));
        assert!(value_at(&doc, "items.1.v").is_err());
        assert!(
            value_at(&doc, "s")
                .expect_err("text")
                .contains("not a number")
        );
    }

    #[test]
    fn unsupported_triggers_are_refused() {
        let t = |v: Value| -> model::kinds::misc::Trigger {
            serde_json::from_value(v).expect("trigger")
        };
        let e = Trigger::from_spec(&t(json!({"type": "cpu", "metadata": {"value": "50"}})))
            .expect_err("cpu");
        assert_eq!(e.0, "type");
        let e = Trigger::from_spec(&t(json!({"type": "prometheus",
            "metadata": {"serverAddress": "http://p", "query": "up"},
            "authenticationRef": {"name": "creds"}})))
        .expect_err("auth");
        assert_eq!(e.0, "authenticationRef");
        assert!(matches!(
            Trigger::from_spec(&t(json!({"type": "metrics-api",
                "metadata": {"url": "http://a/b", "valueLocation": "x.y", "targetValue": "3"}}))),
            Ok(Trigger::MetricsApi(_))
        ));
    }

    #[test]
    fn metadata() {
        let m = |v: Value| -> BTreeMap<String, Value> { serde_json::from_value(v).expect("map") };
        let p = Prometheus::from_metadata(&m(json!({
            "serverAddress": "http://prometheus:9090/", "query": "up", "threshold": "1"})))
        .expect("valid");
        assert_eq!(p.server, "http://prometheus:9090");
        assert!(p.ignore_null);
        let e = Prometheus::from_metadata(&m(json!({"query": "up"}))).expect_err("no server");
        assert_eq!(e.0, "metadata.serverAddress");
        let e = Prometheus::from_metadata(&m(json!({"serverAddress": "http://p", "query": "up",
            "ignoreNullValues": "maybe"})))
        .expect_err("bad bool");
        assert_eq!(e.0, "metadata.ignoreNullValues");
    }
}
