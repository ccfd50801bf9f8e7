//! Record sync with ExternalDNS's semantics: what records the snapshot wants published, and
//! the plan (creates, updates, deletes) that brings a provider's records there without ever
//! touching records this owner does not own.
//!
//! Pure: [`desired`] reads the snapshot, [`plan`] compares desired records with the
//! provider's current records and ownership TXT records, [`Plan::changes`] adds the TXT
//! records a provider is asked to write. The providers (I/O) are the submodules:
//! [`provider`] (the trait and its errors), [`webhook`] (ExternalDNS's webhook protocol, client
//! and server), [`rfc2136`] (DNS UPDATE with TSIG), [`cloudflare`] (the v4 API), [`dynamic`]
//! (the zone `trellis dns` serves), over [`http`]. The loop is `trellis sync`.
//!
//! Sources, as ExternalDNS's: `gateway-httproute`, `gateway-grpcroute`, `gateway-tlsroute`,
//! `gateway-tcproute`, `gateway-udproute` (hostnames of routes a Gateway accepted, plus the
//! route's hostname annotation, the only names a TCP or UDP route has; targets from the
//! Gateway's `external-dns.alpha.kubernetes.io/target` annotation, else its address), `service`
//! (LoadBalancer Services with the hostname annotation), `crd` (DNSEndpoint). Both the
//! `external-dns.alpha.kubernetes.io/` and `external-dns.kubernetes.io/` annotation prefixes
//! are read; `controller: none` skips an object.
//!
//! Registry: a TXT record beside each managed record, named `<prefix><type>-<name>` (the
//! record type in lowercase, ExternalDNS's "new format"), holding
//! `heritage=external-dns,external-dns/owner=<owner>,external-dns/resource=<resource>`.

pub mod cloudflare;
pub mod dynamic;
/// The HTTP client and server of the providers and the webhook API.
pub use httpkit as http;
pub mod provider;
pub mod rfc2136;
pub mod webhook;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use model::Snapshot;
use model::validate::{GATEWAY_GROUP, gateway_address};

/// One DNS record set, as ExternalDNS's `Endpoint`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    /// Lowercase, without trailing dot.
    pub name: String,
    pub record_type: String,
    pub targets: BTreeSet<String>,
    pub ttl: Option<u32>,
    /// `httproute/ns/name`, `service/ns/name`, `crd/ns/name`.
    pub resource: String,
    /// ExternalDNS's `providerSpecific` properties, by name (Cloudflare's
    /// `external-dns.alpha.kubernetes.io/cloudflare-proxied`).
    pub provider_specific: BTreeMap<String, String>,
}

impl Endpoint {
    /// A record set without TTL or provider-specific properties.
    pub fn new<T: Into<String>>(
        name: &str,
        record_type: &str,
        targets: impl IntoIterator<Item = T>,
        resource: &str,
    ) -> Endpoint {
        Endpoint {
            name: name.into(),
            record_type: record_type.into(),
            targets: targets.into_iter().map(Into::into).collect(),
            ttl: None,
            resource: resource.into(),
            provider_specific: BTreeMap::new(),
        }
    }
}

/// The provider-specific property that says whether Cloudflare proxies a record, as
/// ExternalDNS names it (also the annotation that sets it).
pub const CLOUDFLARE_PROXIED: &str = "external-dns.alpha.kubernetes.io/cloudflare-proxied";

/// What to publish and how to decide ownership.
#[derive(Clone, Debug, Default)]
pub struct SyncConfig {
    pub owner_id: String,
    pub txt_prefix: String,
    /// Only names under these domains (all when empty).
    pub domain_filters: Vec<String>,
    /// Only routes of these Gateways (`ns/name`; all when empty).
    pub gateways: Vec<String>,
    /// Delete records this owner no longer wants (`sync`), or never delete (`upsert-only`).
    pub upsert_only: bool,
}

/// The changes to make to the records; [`Plan::changes`] adds the registry's TXT records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub create: Vec<Endpoint>,
    pub update_old: Vec<Endpoint>,
    pub update_new: Vec<Endpoint>,
    pub delete: Vec<Endpoint>,
    /// Wanted names that exist but belong to someone else: left alone.
    pub conflicts: Vec<(Endpoint, String)>,
}

/// What a provider is asked to do: ExternalDNS's `plan.Changes`, registry TXT records
/// included. `update_old[i]` is replaced by `update_new[i]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub create: Vec<Endpoint>,
    pub update_old: Vec<Endpoint>,
    pub update_new: Vec<Endpoint>,
    pub delete: Vec<Endpoint>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty()
            && self.update_old.is_empty()
            && self.update_new.is_empty()
            && self.delete.is_empty()
    }

    /// Every change, as `(action, endpoint)`, updates by their new value.
    pub fn each(&self) -> impl Iterator<Item = (&'static str, &Endpoint)> {
        self.create
            .iter()
            .map(|e| ("create", e))
            .chain(self.update_new.iter().map(|e| ("update", e)))
            .chain(self.delete.iter().map(|e| ("delete", e)))
    }
}

impl Plan {
    /// The provider's changes: each created record with its ownership TXT record, each
    /// deleted record with its TXT record; an updated record keeps its TXT record, which is
    /// rewritten only when the owning resource changed.
    pub fn changes(&self, cfg: &SyncConfig) -> Changes {
        let txt = |e: &Endpoint| cfg.txt_record(e);
        let mut c = Changes {
            create: self.create.clone(),
            update_old: self.update_old.clone(),
            update_new: self.update_new.clone(),
            delete: self.delete.clone(),
        };
        c.create.extend(self.create.iter().map(txt));
        c.delete.extend(self.delete.iter().map(txt));
        c
    }
}

fn annotation<'a>(a: &'a BTreeMap<String, String>, key: &str) -> Option<&'a String> {
    a.get(&format!("external-dns.alpha.kubernetes.io/{key}"))
        .or_else(|| a.get(&format!("external-dns.kubernetes.io/{key}")))
}

/// The provider-specific properties an object's annotations ask for.
fn provider_specific(a: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    annotation(a, "cloudflare-proxied")
        .map(|v| (CLOUDFLARE_PROXIED.to_string(), v.clone()))
        .into_iter()
        .collect()
}

fn record_type(target: &str) -> &'static str {
    match target.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => "A",
        Ok(IpAddr::V6(_)) => "AAAA",
        Err(_) => "CNAME",
    }
}

fn norm(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl SyncConfig {
    /// Whether a lowercase name (without trailing dot) is under the domain filter.
    pub fn wants(&self, name: &str) -> bool {
        self.domain_filters.is_empty()
            || self
                .domain_filters
                .iter()
                .any(|d| name == norm(d) || name.ends_with(&format!(".{}", norm(d))))
    }

    /// The TXT registry record name for a record.
    pub fn txt_name(&self, e: &Endpoint) -> String {
        format!(
            "{}{}-{}",
            self.txt_prefix,
            e.record_type.to_ascii_lowercase(),
            e.name
        )
    }

    /// The TXT registry record content for a record.
    pub fn txt_value(&self, e: &Endpoint) -> String {
        format!(
            "heritage=external-dns,external-dns/owner={},external-dns/resource={}",
            self.owner_id, e.resource
        )
    }

    /// The TXT registry record of a record, its value in double quotes as ExternalDNS writes
    /// it to providers.
    pub fn txt_record(&self, e: &Endpoint) -> Endpoint {
        Endpoint {
            name: self.txt_name(e),
            record_type: "TXT".into(),
            targets: BTreeSet::from([format!("\"{}\"", self.txt_value(e))]),
            ttl: e.ttl,
            resource: e.resource.clone(),
            provider_specific: BTreeMap::new(),
        }
    }
}

/// The records the snapshot wants published.
pub fn desired(s: &Snapshot, cfg: &SyncConfig) -> Vec<Endpoint> {
    let mut out: BTreeMap<(String, String), Endpoint> = BTreeMap::new();
    let mut add = |name: &str,
                   targets: Vec<String>,
                   ttl: Option<u32>,
                   resource: String,
                   specific: &BTreeMap<String, String>| {
        let name = norm(name);
        if name.is_empty() || name.starts_with('*') || !cfg.wants(&name) {
            return;
        }
        for t in targets {
            let ty = record_type(&t).to_string();
            let e = out
                .entry((name.clone(), ty.clone()))
                .or_insert_with(|| Endpoint {
                    name: name.clone(),
                    record_type: ty,
                    targets: BTreeSet::new(),
                    ttl,
                    resource: resource.clone(),
                    provider_specific: specific.clone(),
                });
            e.targets.insert(if e.record_type == "CNAME" {
                norm(&t)
            } else {
                t
            });
        }
    };
    let accepted = |kind: &str, ns: &str, name: &str, gw_ns: &str, gw: &str| {
        let key = model::ObjectKey::new(GATEWAY_GROUP, kind, ns, name);
        let gw = model::ObjectKey::new(GATEWAY_GROUP, "Gateway", gw_ns, gw);
        !s.resolution.attached(&key, &gw).is_empty()
    };
    for gw in s.gateways.values() {
        let gkey = format!("{}/{}", gw.namespace(), gw.name());
        if !cfg.gateways.is_empty() && !cfg.gateways.contains(&gkey) {
            continue;
        }
        let targets: Vec<String> = match annotation(&gw.meta.annotations, "target") {
            Some(t) => t
                .split(',')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty())
                .collect(),
            None => gateway_address(gw).into_iter().collect(),
        };
        if targets.is_empty() {
            continue;
        }
        let routes = s
            .http_routes
            .values()
            .map(|r| {
                (
                    "HTTPRoute",
                    "httproute",
                    r.namespace(),
                    r.name(),
                    &r.meta,
                    r.spec.hostnames.clone().unwrap_or_default(),
                )
            })
            .chain(s.grpc_routes.values().map(|r| {
                (
                    "GRPCRoute",
                    "grpcroute",
                    r.namespace(),
                    r.name(),
                    &r.meta,
                    r.spec.hostnames.clone().unwrap_or_default(),
                )
            }))
            .chain(
                [
                    ("TLSRoute", "tlsroute", &s.tls_routes),
                    ("TCPRoute", "tcproute", &s.tcp_routes),
                    ("UDPRoute", "udproute", &s.udp_routes),
                ]
                .into_iter()
                .flat_map(|(kind, label, routes)| {
                    routes.values().map(move |r| {
                        (
                            kind,
                            label,
                            r.namespace(),
                            r.name(),
                            &r.meta,
                            r.spec.hostnames.clone(),
                        )
                    })
                }),
            );
        for (kind, label, ns, name, meta, hostnames) in routes {
            if annotation(&meta.annotations, "controller").is_some_and(|c| c == "none")
                || !accepted(kind, ns, name, gw.namespace(), gw.name())
            {
                continue;
            }
            let ttl = annotation(&meta.annotations, "ttl").and_then(|t| t.parse().ok());
            let specific = provider_specific(&meta.annotations);
            // The hostname annotation adds names (the only names a TCPRoute or UDPRoute has).
            let annotated = annotation(&meta.annotations, "hostname")
                .into_iter()
                .flat_map(|h| h.split(','))
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty());
            for h in hostnames.into_iter().chain(annotated) {
                add(
                    &h,
                    targets.clone(),
                    ttl,
                    format!("{label}/{ns}/{name}"),
                    &specific,
                );
            }
        }
    }
    for svc in s.services.values() {
        let a = &svc.meta.annotations;
        let is_lb = svc.spec.spec.as_ref().and_then(|x| x.type_.as_deref()) == Some("LoadBalancer");
        let (Some(hosts), true) = (annotation(a, "hostname"), is_lb) else {
            continue;
        };
        if annotation(a, "controller").is_some_and(|c| c == "none") {
            continue;
        }
        let targets: Vec<String> = match annotation(a, "target") {
            Some(t) => vec![t.clone()],
            None => a
                .get("lbipam.cilium.io/ips")
                .map(|ips| ips.split(',').map(|x| x.trim().to_string()).collect())
                .unwrap_or_default(),
        };
        let ttl = annotation(a, "ttl").and_then(|t| t.parse().ok());
        let specific = provider_specific(a);
        for h in hosts.split(',') {
            add(
                h.trim(),
                targets.clone(),
                ttl,
                format!("service/{}/{}", svc.namespace(), svc.name()),
                &specific,
            );
        }
    }
    let mut records = out.into_values().collect::<Vec<_>>();
    for d in s.dns_endpoints.values() {
        for e in &d.spec.endpoints {
            let name = norm(&e.dns_name);
            if !cfg.wants(&name) {
                continue;
            }
            let targets = e
                .targets
                .iter()
                .map(|t| {
                    if e.record_type == "CNAME" {
                        norm(t)
                    } else {
                        t.clone()
                    }
                })
                .collect();
            records.push(Endpoint {
                name,
                record_type: e.record_type.clone(),
                targets,
                ttl: e.record_ttl,
                resource: format!("crd/{}/{}", d.namespace(), d.name()),
                provider_specific: e
                    .provider_specific
                    .iter()
                    .map(|p| (p.name.clone(), p.value.clone()))
                    .collect(),
            });
        }
    }
    records.sort();
    records
}

/// The plan from the provider's `current` records (TXT registry records included).
pub fn plan(desired: &[Endpoint], current: &[Endpoint], cfg: &SyncConfig) -> Plan {
    let owner = format!("external-dns/owner={}", cfg.owner_id);
    let txt: BTreeMap<&str, &Endpoint> = current
        .iter()
        .filter(|e| e.record_type == "TXT" && cfg.wants(&e.name))
        .map(|e| (e.name.as_str(), e))
        .collect();
    let owned = |e: &Endpoint| {
        txt.get(cfg.txt_name(e).as_str()).is_some_and(|t| {
            t.targets
                .iter()
                .any(|v| v.trim_matches('"').split(',').any(|kv| kv == owner))
        })
    };
    // Records outside the domain filter are not ours to look at (ExternalDNS filters the
    // provider's records the same way).
    let current: Vec<&Endpoint> = current.iter().filter(|e| cfg.wants(&e.name)).collect();
    let by_key: BTreeMap<(&str, &str), &Endpoint> = current
        .iter()
        .copied()
        .filter(|e| e.record_type != "TXT")
        .map(|e| ((e.name.as_str(), e.record_type.as_str()), e))
        .collect();
    let mut p = Plan::default();
    for d in desired {
        match by_key.get(&(d.name.as_str(), d.record_type.as_str())) {
            None => p.create.push(d.clone()),
            Some(c) if !owned(c) => p.conflicts.push((
                d.clone(),
                format!(
                    "{} {} exists and is not owned by {}",
                    d.record_type, d.name, cfg.owner_id
                ),
            )),
            Some(c)
                if c.targets != d.targets
                    || (d.ttl.is_some() && c.ttl != d.ttl)
                    || d.provider_specific
                        .iter()
                        .any(|(k, v)| c.provider_specific.get(k) != Some(v)) =>
            {
                p.update_old.push((*c).clone());
                p.update_new.push(d.clone());
            }
            Some(_) => {}
        }
    }
    if !cfg.upsert_only {
        let wanted: BTreeSet<(&str, &str)> = desired
            .iter()
            .map(|d| (d.name.as_str(), d.record_type.as_str()))
            .collect();
        for c in current.iter().filter(|c| c.record_type != "TXT") {
            if owned(c) && !wanted.contains(&(c.name.as_str(), c.record_type.as_str())) {
                p.delete.push((*c).clone());
            }
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(name: &str, ty: &str, targets: &[&str], resource: &str) -> Endpoint {
        Endpoint::new(name, ty, targets.iter().copied(), resource)
    }

    fn owned_txt(cfg: &SyncConfig, e: &Endpoint, owner: &str) -> Endpoint {
        ep(
            &cfg.txt_name(e),
            "TXT",
            &[&format!(
                "\"heritage=external-dns,external-dns/owner={owner},external-dns/resource={}\"",
                e.resource
            )],
            "",
        )
    }

    #[test]
    fn creates_updates_deletes_and_leaves_others_alone() {
        let cfg = SyncConfig {
            owner_id: "trellis".into(),
            ..SyncConfig::default()
        };
        let want_new = ep(
            "new.example.com",
            "CNAME",
            &["external.example.com"],
            "httproute/a/new",
        );
        let want_changed = ep("moved.example.com", "A", &["10.0.0.2"], "httproute/a/moved");
        let want_same = ep("same.example.com", "A", &["10.0.0.3"], "httproute/a/same");
        let want_theirs = ep(
            "theirs.example.com",
            "A",
            &["10.0.0.4"],
            "httproute/a/theirs",
        );
        let cur_changed = ep("moved.example.com", "A", &["10.0.0.1"], "httproute/a/moved");
        let cur_same = want_same.clone();
        let cur_theirs = ep("theirs.example.com", "A", &["192.0.2.1"], "");
        let cur_gone = ep("gone.example.com", "A", &["10.0.0.9"], "httproute/a/gone");
        let cur_unowned = ep("manual.example.com", "A", &["10.0.0.8"], "");
        let current = vec![
            cur_changed.clone(),
            owned_txt(&cfg, &cur_changed, "trellis"),
            cur_same.clone(),
            owned_txt(&cfg, &cur_same, "trellis"),
            cur_theirs.clone(),
            owned_txt(&cfg, &cur_theirs, "someone-else"),
            cur_gone.clone(),
            owned_txt(&cfg, &cur_gone, "trellis"),
            cur_unowned,
        ];
        let p = plan(
            &[
                want_new.clone(),
                want_changed.clone(),
                want_same,
                want_theirs,
            ],
            &current,
            &cfg,
        );
        assert_eq!(p.create, vec![want_new]);
        assert_eq!(
            (p.update_old, p.update_new),
            (vec![cur_changed], vec![want_changed])
        );
        assert_eq!(p.delete, vec![cur_gone.clone()]);
        assert_eq!(p.conflicts.len(), 1);
        let upsert = plan(
            &[],
            &current,
            &SyncConfig {
                upsert_only: true,
                ..cfg.clone()
            },
        );
        assert!(upsert.delete.is_empty(), "upsert-only never deletes");
        assert_eq!(cfg.txt_name(&cur_gone), "a-gone.example.com");
    }
}
