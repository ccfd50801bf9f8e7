//! The `cloudflare` provider: Cloudflare's v4 API, as ExternalDNS's cloudflare provider uses
//! it.
//!
//! - Zones: the ones given (`CF_ZONE_ID`, as the corpus's ExternalDNS has it), else
//!   `GET /zones?name=<domain>` for each domain filter, else every zone (`GET /zones`, paged).
//! - Records: `GET /zones/:id/dns_records?page=N&per_page=P`, page after page until
//!   `result_info.total_pages`; one Cloudflare record per target.
//! - Changes: `POST /zones/:id/dns_records` per new target, `PUT /zones/:id/dns_records/:id`
//!   for a kept target whose TTL or proxying changes, `DELETE /zones/:id/dns_records/:id`
//!   per removed target. `proxied` comes from the `external-dns.alpha.kubernetes.io/
//!   cloudflare-proxied` provider-specific property, else the default (`--cloudflare-proxied`);
//!   TXT records are never proxied; a proxied record's TTL is 1 (automatic).
//! - Auth: `Authorization: Bearer <token>` (`CF_API_TOKEN`).
//! - Rate limits: a 429 is waited out (its `Retry-After`, in seconds or as an HTTP-date, else
//!   an exponential backoff from 1 s), at most [`RATE_LIMIT_RETRIES_MAX`] times and
//!   [`BACKOFF_MAX`] each; then the request fails as retryable, and so does every request
//!   left in the same listing or apply without being sent: the next loop tries again. Never a
//!   crash loop, and never [`RATE_LIMIT_RETRIES_MAX`] waits per change.
//! - Partial failure: each record set is changed on its own, so some changes can be made and
//!   others fail. Ownership is kept whole across that: a record is created only after its
//!   registry TXT record was, and a TXT record is deleted only after the record it owns was
//!   (a record left without its TXT record would belong to nobody, and no later run would
//!   touch it again). What failed or was held back is returned as [`Failure`]s; the next run
//!   lists the records again and plans only what is still missing.
//!
//! Cloudflare is not reachable from where trellis is tested: the tests run this client
//! against a local server that checks every request against the documented API.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::http::Client;
use super::provider::{BoxFuture, Error, Failure, Provider};
use super::{CLOUDFLARE_PROXIED, Changes, Endpoint};

/// The API's address.
pub const API_BASE: &str = "https://api.cloudflare.com/client/v4";
/// Records per page (ExternalDNS's `--cloudflare-dns-records-per-page`; the API allows 5,000).
pub const PER_PAGE_DEFAULT: u32 = 100;
/// Pages read from one listing at most.
pub const PAGES_MAX: u32 = 10_000;
/// Waits for a rate limit per request at most.
pub const RATE_LIMIT_RETRIES_MAX: u32 = 5;
/// The longest wait for one rate limit.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// How to reach the API.
#[derive(Clone, Debug)]
pub struct Config {
    /// [`API_BASE`], or a test server.
    pub base: String,
    pub token: String,
    /// Zone IDs to manage; empty: found by name from `domains`, else all.
    pub zone_ids: Vec<String>,
    pub domains: Vec<String>,
    pub per_page: u32,
    /// Whether records are proxied when they do not say.
    pub proxied_default: bool,
}

#[derive(Debug, Deserialize)]
struct Envelope<T> {
    #[serde(default)]
    success: bool,
    #[serde(default)]
    errors: Vec<ApiMessage>,
    result: Option<T>,
    result_info: Option<ResultInfo>,
}

#[derive(Debug, Deserialize)]
struct ApiMessage {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    message: String,
}

#[derive(Debug, Deserialize)]
struct ResultInfo {
    #[serde(default)]
    total_pages: u32,
}

#[derive(Debug, Deserialize)]
struct Zone {
    id: String,
    name: String,
}

/// A DNS record as the API reads and writes it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DnsRecord {
    #[serde(default, skip_serializing)]
    pub id: String,
    #[serde(rename = "type")]
    pub record_type: String,
    pub name: String,
    pub content: String,
    pub ttl: u32,
    pub proxied: bool,
}

/// What a listing saw: each record set's Cloudflare records.
type Seen = BTreeMap<(String, String), Vec<(String, DnsRecord)>>;

/// The provider.
#[derive(Debug)]
pub struct Cloudflare {
    cfg: Config,
    client: Client,
    /// Zone ID by lowercase zone name, found on the first listing.
    zones: Mutex<BTreeMap<String, String>>,
    /// From the last listing: record IDs for updates and deletes.
    seen: Mutex<Seen>,
    /// A request of the current listing or apply used up its rate-limit waits: the rest fail
    /// without being sent.
    rate_limited: AtomicBool,
}

/// How long a 429's `Retry-After` asks to wait from `now` (RFC 9110, section 10.2.3):
/// delay-seconds, or an HTTP-date in any of the three forms a recipient must accept (section
/// 5.6.7); a date already past is no wait. `None` when the value is neither.
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(s) = v.parse::<u64>() {
        return Some(Duration::from_secs(s));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Whether `txt` is the registry TXT record of `record`: named `<prefix><type>-<name>`
/// ([`super::SyncConfig::txt_name`]). The prefix is not known here, so a TXT record of
/// another name that ends the same way also matches: holding back one change too many only
/// leaves it to the next run.
fn registry_of(txt: &Endpoint, record: &Endpoint) -> bool {
    txt.record_type == "TXT"
        && record.record_type != "TXT"
        && txt.name.ends_with(&format!(
            "{}-{}",
            record.record_type.to_ascii_lowercase(),
            record.name
        ))
}

/// Reads an answer other than a rate limit: the envelope's `result` and
/// `result_info.total_pages`, or the error its status and `errors` say. (Public for the fuzz
/// targets only.)
#[doc(hidden)]
pub fn answer<T: serde::de::DeserializeOwned>(
    what: &str,
    status: u16,
    body: &[u8],
) -> Result<(Option<T>, u32), Error> {
    let env: Option<Envelope<T>> = serde_json::from_slice(body).ok();
    let detail = env
        .as_ref()
        .map(|e| {
            e.errors
                .iter()
                .map(|m| format!("{} {}", m.code, m.message))
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default();
    if !(200..300).contains(&status) {
        return Err(Error::from_status(status, format!("{what} ({detail})")));
    }
    let env = env.ok_or_else(|| Error::Permanent(format!("{what}: not an API answer")))?;
    if !env.success {
        return Err(Error::Permanent(format!("{what}: {detail}")));
    }
    let pages = env.result_info.map_or(1, |i| i.total_pages.max(1));
    Ok((env.result, pages))
}

fn failure(action: &'static str, e: &Endpoint, error: Error) -> Failure {
    Failure {
        action,
        endpoint: e.clone(),
        error,
    }
}

/// The error of a change held back because the change it depends on (`on`) failed.
fn held_back(e: &Endpoint, what: &str, on: &Endpoint) -> Error {
    Error::Retryable(format!(
        "{} {} {what}: {} {} failed first, and a record must never be left without its \
         ownership TXT record",
        e.record_type, e.name, on.record_type, on.name
    ))
}

fn proxiable(record_type: &str) -> bool {
    matches!(record_type, "A" | "AAAA" | "CNAME")
}

impl Cloudflare {
    pub fn new(cfg: Config, client: Client) -> Cloudflare {
        Cloudflare {
            cfg,
            client,
            zones: Mutex::new(BTreeMap::new()),
            seen: Mutex::new(BTreeMap::new()),
            rate_limited: AtomicBool::new(false),
        }
    }

    /// One API call, waiting out rate limits. Returns the envelope's `result` and
    /// `result_info.total_pages`.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: http::Method,
        path: &str,
        body: Option<&DnsRecord>,
    ) -> Result<(Option<T>, u32), Error> {
        let what = format!("cloudflare {method} {path}");
        let body = match body {
            Some(r) => {
                Bytes::from(serde_json::to_vec(r).map_err(|e| Error::Permanent(e.to_string()))?)
            }
            None => Bytes::new(),
        };
        if self.rate_limited.load(Ordering::Relaxed) {
            return Err(Error::Retryable(format!(
                "{what}: not sent, the API is rate limiting this run"
            )));
        }
        let mut backoff = Duration::from_secs(1);
        for attempt in 0..=RATE_LIMIT_RETRIES_MAX {
            let mut req = http::Request::new(body.clone());
            *req.method_mut() = method.clone();
            *req.uri_mut() = format!("{}{path}", self.cfg.base)
                .parse()
                .map_err(|e| Error::Permanent(format!("{what}: {e}")))?;
            let h = req.headers_mut();
            let auth = http::HeaderValue::from_str(&format!("Bearer {}", self.cfg.token))
                .map_err(|_| Error::Permanent("CF_API_TOKEN is not a valid header value".into()))?;
            h.insert(http::header::AUTHORIZATION, auth);
            h.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            let resp = self.client.send(req).await?;
            if resp.status == 429 {
                if attempt == RATE_LIMIT_RETRIES_MAX {
                    break;
                }
                let wait = resp
                    .headers
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| retry_after(v, SystemTime::now()))
                    .unwrap_or(backoff)
                    .min(BACKOFF_MAX);
                tracing::warn!(%what, wait_s = wait.as_secs(), "rate limited");
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
            return answer(&what, resp.status, &resp.body);
        }
        self.rate_limited.store(true, Ordering::Relaxed);
        Err(Error::Retryable(format!(
            "{what}: still rate limited after {RATE_LIMIT_RETRIES_MAX} waits"
        )))
    }

    /// Every page of a listing.
    async fn list<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<Vec<T>, Error> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut out = Vec::new();
        let mut page = 1;
        loop {
            let url = format!("{path}{sep}page={page}&per_page={}", self.cfg.per_page);
            let (items, pages) = self.call::<Vec<T>>(http::Method::GET, &url, None).await?;
            out.extend(items.unwrap_or_default());
            if page >= pages || page >= PAGES_MAX {
                return Ok(out);
            }
            page += 1;
        }
    }

    /// Zone IDs by name, looked up once.
    async fn zones(&self) -> Result<BTreeMap<String, String>, Error> {
        let known = self.zones.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if !known.is_empty() {
            return Ok(known);
        }
        let mut zones = BTreeMap::new();
        if !self.cfg.zone_ids.is_empty() {
            for id in &self.cfg.zone_ids {
                let (z, _) = self
                    .call::<Zone>(http::Method::GET, &format!("/zones/{id}"), None)
                    .await?;
                if let Some(z) = z {
                    zones.insert(z.name.to_ascii_lowercase(), z.id);
                }
            }
        } else if !self.cfg.domains.is_empty() {
            for d in &self.cfg.domains {
                for z in self.list::<Zone>(&format!("/zones?name={d}")).await? {
                    zones.insert(z.name.to_ascii_lowercase(), z.id);
                }
            }
        } else {
            for z in self.list::<Zone>("/zones").await? {
                zones.insert(z.name.to_ascii_lowercase(), z.id);
            }
        }
        *self.zones.lock().unwrap_or_else(|e| e.into_inner()) = zones.clone();
        Ok(zones)
    }

    fn proxied(&self, e: &Endpoint) -> bool {
        proxiable(&e.record_type)
            && e.provider_specific
                .get(CLOUDFLARE_PROXIED)
                .map_or(self.cfg.proxied_default, |v| v == "true")
    }

    fn record(&self, e: &Endpoint, content: &str) -> DnsRecord {
        let proxied = self.proxied(e);
        DnsRecord {
            id: String::new(),
            record_type: e.record_type.clone(),
            name: e.name.clone(),
            content: content.to_string(),
            // 1 is "automatic", the only TTL of a proxied record.
            ttl: if proxied { 1 } else { e.ttl.unwrap_or(1) },
            proxied,
        }
    }

    /// The zone ID of a name: its longest zone.
    fn zone_of(zones: &BTreeMap<String, String>, name: &str) -> Option<String> {
        zones
            .iter()
            .filter(|(z, _)| name == z.as_str() || name.ends_with(&format!(".{z}")))
            .max_by_key(|(z, _)| z.len())
            .map(|(_, id)| id.clone())
    }

    /// Brings one record set to `want` (None deletes it).
    async fn set(&self, name: &str, rtype: &str, want: Option<&Endpoint>) -> Result<(), Error> {
        let zones = self.zones().await?;
        let zone = Self::zone_of(&zones, name)
            .ok_or_else(|| Error::Permanent(format!("{name} is in no Cloudflare zone")))?;
        let have = self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(name.to_string(), rtype.to_string()))
            .cloned()
            .unwrap_or_default();
        let base = format!("/zones/{zone}/dns_records");
        let wanted: Vec<DnsRecord> = want
            .map(|e| e.targets.iter().map(|t| self.record(e, t)).collect())
            .unwrap_or_default();
        for (_, old) in &have {
            if !wanted.iter().any(|w| w.content == old.content) {
                self.call::<serde_json::Value>(
                    http::Method::DELETE,
                    &format!("{base}/{}", old.id),
                    None,
                )
                .await?;
            }
        }
        for w in &wanted {
            match have.iter().find(|(_, o)| o.content == w.content) {
                Some((_, o)) if o.ttl == w.ttl && o.proxied == w.proxied => {}
                Some((_, o)) => {
                    self.call::<serde_json::Value>(
                        http::Method::PUT,
                        &format!("{base}/{}", o.id),
                        Some(w),
                    )
                    .await?;
                }
                None => {
                    self.call::<serde_json::Value>(http::Method::POST, &base, Some(w))
                        .await?;
                }
            }
        }
        Ok(())
    }
}

impl Provider for Cloudflare {
    fn records(&self) -> BoxFuture<'_, Result<Vec<Endpoint>, Error>> {
        Box::pin(async move {
            self.rate_limited.store(false, Ordering::Relaxed);
            let zones = self.zones().await?;
            let mut seen: Seen = BTreeMap::new();
            for (zone_name, id) in &zones {
                for r in self
                    .list::<DnsRecord>(&format!("/zones/{id}/dns_records"))
                    .await?
                {
                    let name = r.name.trim_end_matches('.').to_ascii_lowercase();
                    if !(name == *zone_name || name.ends_with(&format!(".{zone_name}"))) {
                        continue;
                    }
                    seen.entry((name, r.record_type.clone()))
                        .or_default()
                        .push((id.clone(), r));
                }
            }
            let out = seen
                .iter()
                .map(|((name, rtype), recs)| Endpoint {
                    name: name.clone(),
                    record_type: rtype.clone(),
                    targets: recs
                        .iter()
                        .map(|(_, r)| {
                            if rtype == "CNAME" {
                                r.content.trim_end_matches('.').to_ascii_lowercase()
                            } else {
                                r.content.clone()
                            }
                        })
                        .collect(),
                    ttl: recs.first().map(|(_, r)| r.ttl).filter(|t| *t > 1),
                    resource: String::new(),
                    provider_specific: if proxiable(rtype) {
                        BTreeMap::from([(
                            CLOUDFLARE_PROXIED.to_string(),
                            recs.iter().any(|(_, r)| r.proxied).to_string(),
                        )])
                    } else {
                        BTreeMap::new()
                    },
                })
                .collect();
            *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = seen;
            Ok(out)
        })
    }

    fn apply<'a>(&'a self, changes: &'a Changes) -> BoxFuture<'a, Vec<Failure>> {
        Box::pin(async move {
            self.rate_limited.store(false, Ordering::Relaxed);
            let mut failures: Vec<Failure> = Vec::new();
            let is_txt = |e: &&Endpoint| e.record_type == "TXT";
            // Deletes: records first, then the TXT records of those that went.
            let (txt, records): (Vec<&Endpoint>, Vec<&Endpoint>) =
                changes.delete.iter().partition(is_txt);
            for e in records {
                if let Err(error) = self.set(&e.name, &e.record_type, None).await {
                    failures.push(failure("delete", e, error));
                }
            }
            for e in txt {
                let r = match failures.iter().find(|f| registry_of(e, &f.endpoint)) {
                    Some(f) => Err(held_back(e, "kept", &f.endpoint)),
                    None => self.set(&e.name, &e.record_type, None).await,
                };
                if let Err(error) = r {
                    failures.push(failure("delete", e, error));
                }
            }
            for (old, e) in changes.update_old.iter().zip(&changes.update_new) {
                if old.name != e.name || old.record_type != e.record_type {
                    let r = self.set(&old.name, &old.record_type, None).await;
                    if let Err(error) = r {
                        failures.push(failure("update", e, error));
                    }
                }
                if let Err(error) = self.set(&e.name, &e.record_type, Some(e)).await {
                    failures.push(failure("update", e, error));
                }
            }
            // Creates: TXT records first, then the records whose TXT record was written.
            let (txt, records): (Vec<&Endpoint>, Vec<&Endpoint>) =
                changes.create.iter().partition(is_txt);
            let mut txt_failed = Vec::new();
            for e in txt {
                if let Err(error) = self.set(&e.name, &e.record_type, Some(e)).await {
                    txt_failed.push(e);
                    failures.push(failure("create", e, error));
                }
            }
            for e in records {
                let r = match txt_failed.iter().find(|t| registry_of(t, e)) {
                    Some(t) => Err(held_back(e, "not created", t)),
                    None => self.set(&e.name, &e.record_type, Some(e)).await,
                };
                if let Err(error) = r {
                    failures.push(failure("create", e, error));
                }
            }
            failures
        })
    }

    /// Records say whether they are proxied (the default where they do not), as ExternalDNS's
    /// cloudflare provider adjusts them, so a change of proxying is planned as an update.
    fn adjust_endpoints(
        &self,
        desired: Vec<Endpoint>,
    ) -> BoxFuture<'_, Result<Vec<Endpoint>, Error>> {
        Box::pin(async move {
            Ok(desired
                .into_iter()
                .map(|mut e| {
                    if proxiable(&e.record_type) {
                        let p = self.proxied(&e);
                        e.provider_specific
                            .insert(CLOUDFLARE_PROXIED.to_string(), p.to_string());
                    }
                    e
                })
                .collect())
        })
    }

    fn domain_filter(&self) -> Vec<String> {
        self.cfg.domains.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 9110, 10.2.3: delay-seconds or an HTTP-date, the date in each of the three forms
    /// of 5.6.7 (the RFC's own example instant).
    #[test]
    fn retry_after_in_seconds_and_as_each_form_of_http_date() {
        // Sun, 06 Nov 1994 08:49:37 GMT: 60 s before the first three dates.
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        let want = [
            ("120", Some(120)),
            (" 7 ", Some(7)),
            ("Sun, 06 Nov 1994 08:50:37 GMT", Some(60)),
            ("Sunday, 06-Nov-94 08:50:37 GMT", Some(60)),
            ("Sun Nov  6 08:50:37 1994", Some(60)),
            // Already past: no wait.
            ("Sun, 06 Nov 1994 08:48:37 GMT", Some(0)),
            ("soon", None),
            ("-1", None),
            ("", None),
        ];
        let got = want.map(|(v, _)| (v, retry_after(v, now).map(|d| d.as_secs())));
        assert_eq!(got, want);
    }
}
