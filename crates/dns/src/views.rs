//! Split-horizon views (`trellis.dev/v1alpha1` `DNSView`): the same name answered
//! differently by the querier's address.
//!
//! Each view is its own [`Zone`], compiled from the snapshot: the hostnames of the routes
//! that its Gateways accepted (HTTPRoute, GRPCRoute, TLSRoute), answered with the Gateway's
//! address or with its ExternalDNS target; DNSEndpoint records when asked for; the cluster
//! zone when asked for. A view is authoritative for its zones, so a name it does not publish
//! is NXDOMAIN in it even when another view publishes it: an inside-only name never leaks to
//! an outside client. The first view (by `order`, then name) whose clients contain the
//! querier answers; a querier no view matches gets the cluster zone alone.

use std::net::IpAddr;

use hickory_proto::rr::rdata::{A, AAAA, CNAME, TXT};
use hickory_proto::rr::{Name, RData};
use model::Snapshot;
use model::validate::{GATEWAY_GROUP, gateway_address};

use crate::zone::{Zone, ZoneConfig, compile};

/// The ExternalDNS annotation that names what a Gateway's hostnames point at.
const TARGET: &str = "external-dns.alpha.kubernetes.io/target";
/// Routes ExternalDNS must not publish (the corpus's https-redirect carries it).
const CONTROLLER: &str = "external-dns.alpha.kubernetes.io/controller";

/// One compiled view.
#[derive(Debug)]
pub struct View {
    pub name: String,
    pub clients: Vec<ipnet::IpNet>,
    pub zone: Zone,
    /// Whether records of the dynamic zones (the webhook API's) are served here.
    pub dynamic_records: bool,
}

/// All views, in the order they are tried, and the zone for everyone else.
#[derive(Debug, Default)]
pub struct Views {
    pub views: Vec<View>,
    pub default: Zone,
    /// Rewrite rules (DNSRewrite), applied to every query first; the first match wins.
    pub rewrites: Vec<model::validate::RewriteRule>,
}

impl Views {
    /// The name to look up instead of `name` (lowercase, trailing dot), if a rule says so.
    pub fn rewrite(&self, name: &str) -> Option<String> {
        self.rewrites.iter().find_map(|r| r.apply(name))
    }
}

impl Views {
    /// The view that answers a querier, and its name ("" for the default).
    pub fn for_client(&self, ip: IpAddr) -> (&str, &Zone) {
        self.views
            .iter()
            .find(|v| v.clients.iter().any(|n| n.contains(&ip)))
            .map_or(("", &self.default), |v| (v.name.as_str(), &v.zone))
    }
}

fn fqdn(h: &str) -> String {
    format!("{}.", h.trim_end_matches('.').to_ascii_lowercase())
}

fn rdata_for(target: &str) -> Option<RData> {
    match target.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => Some(RData::A(A(v4))),
        Ok(IpAddr::V6(v6)) => Some(RData::AAAA(AAAA(v6))),
        Err(_) => Name::from_ascii(fqdn(target))
            .ok()
            .map(|n| RData::CNAME(CNAME(n))),
    }
}

/// The record data of one target of an ExternalDNS endpoint, for the types a zone serves
/// (A, AAAA, CNAME, TXT; a TXT value's surrounding double quotes are zone-file syntax, not
/// data).
pub(crate) fn endpoint_rdata(record_type: &str, target: &str) -> Option<RData> {
    match record_type {
        "A" | "AAAA" | "CNAME" => {
            rdata_for(target).filter(|r| r.record_type().to_string() == record_type)
        }
        "TXT" => {
            let v = target
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .unwrap_or(target);
            Some(RData::TXT(TXT::new(vec![v.to_string()])))
        }
        _ => None,
    }
}

/// Compiles every view of the snapshot. Pure.
pub fn compile_views(s: &Snapshot, cfg: &ZoneConfig) -> Views {
    let cluster = compile(s, cfg);
    let mut specs: Vec<_> = s.dns_views.values().collect();
    specs.sort_by(|a, b| {
        a.spec
            .order
            .cmp(&b.spec.order)
            .then_with(|| a.name().cmp(b.name()))
    });
    let mut views = Vec::new();
    for v in specs {
        let mut zone = if v.spec.cluster {
            cluster.clone()
        } else {
            Zone {
                ttl: cfg.ttl,
                soa: cluster.soa.clone(),
                ..Zone::default()
            }
        };
        for z in &v.spec.zones {
            let o = fqdn(z);
            if !zone.origins.contains(&o) {
                zone.origins.push(o.clone());
            }
            zone.exists(&o);
        }
        let zones: Vec<String> = v.spec.zones.iter().map(|z| fqdn(z)).collect();
        let in_view = |_: &Zone, n: &str| {
            zones
                .iter()
                .any(|z| n == z || n.ends_with(&format!(".{z}")))
        };
        for g in &v.spec.gateways {
            let Some(gw) = model::snapshot::get(&s.gateways, &g.namespace, &g.name) else {
                continue;
            };
            let answer = match g.answer.as_str() {
                "Target" => gw.meta.annotations.get(TARGET).cloned(),
                _ => gateway_address(gw),
            };
            let Some(rdata) = answer.as_deref().and_then(rdata_for) else {
                continue;
            };
            // The Gateway's own hostname (ExternalDNS's hostname annotation on its
            // infrastructure), then every accepted route's hostnames.
            let mut hosts: Vec<String> = gw
                .spec
                .infrastructure
                .as_ref()
                .and_then(|i| i.annotations.as_ref())
                .and_then(|a| a.get("external-dns.alpha.kubernetes.io/hostname"))
                .map(|h| h.split(',').map(|x| x.trim().to_string()).collect())
                .unwrap_or_default();
            hosts.extend(route_hostnames(s, &g.namespace, &g.name));
            for h in hosts {
                let n = fqdn(&h);
                if n.starts_with("*.") || !in_view(&zone, &n) {
                    continue;
                }
                zone.add_record(&n, rdata.clone());
            }
        }
        if v.spec.dns_endpoints {
            for d in s.dns_endpoints.values() {
                for e in &d.spec.endpoints {
                    let n = fqdn(&e.dns_name);
                    if !in_view(&zone, &n) {
                        continue;
                    }
                    for t in &e.targets {
                        if let Some(rd) = endpoint_rdata(&e.record_type, t) {
                            zone.add_record(&n, rd);
                        }
                    }
                }
            }
        }
        views.push(View {
            name: v.name().to_string(),
            clients: v
                .spec
                .clients
                .iter()
                .filter_map(|c| c.parse().ok())
                .collect(),
            zone,
            dynamic_records: v.spec.dynamic_records,
        });
    }
    let mut rewrites: Vec<_> = s.dns_rewrites.values().collect();
    rewrites.sort_by(|a, b| {
        a.spec
            .order
            .cmp(&b.spec.order)
            .then_with(|| a.name().cmp(b.name()))
    });
    let rewrites = rewrites
        .iter()
        .flat_map(|r| r.spec.rules.iter())
        .filter_map(|r| model::validate::parse_rewrite(r).ok())
        .collect();
    Views {
        views,
        default: cluster,
        rewrites,
    }
}

/// Hostnames of the routes that Gateway `ns/name` accepted, without the ones marked
/// `external-dns.alpha.kubernetes.io/controller: none`.
fn route_hostnames(s: &Snapshot, ns: &str, name: &str) -> Vec<String> {
    let gateway = model::ObjectKey::new(GATEWAY_GROUP, "Gateway", ns, name);
    let accepted_by_gateway = |kind: &str, rns: &str, rname: &str| {
        let key = model::ObjectKey::new(GATEWAY_GROUP, kind, rns, rname);
        !s.resolution.attached(&key, &gateway).is_empty()
    };
    let mut out = Vec::new();
    for r in s.http_routes.values() {
        if r.meta
            .annotations
            .get(CONTROLLER)
            .is_some_and(|c| c == "none")
            || !accepted_by_gateway("HTTPRoute", r.namespace(), r.name())
        {
            continue;
        }
        out.extend(r.spec.hostnames.clone().unwrap_or_default());
    }
    for r in s.grpc_routes.values() {
        if accepted_by_gateway("GRPCRoute", r.namespace(), r.name()) {
            out.extend(r.spec.hostnames.clone().unwrap_or_default());
        }
    }
    for r in s.tls_routes.values() {
        if accepted_by_gateway("TLSRoute", r.namespace(), r.name()) {
            out.extend(r.spec.hostnames.clone());
        }
    }
    out
}
