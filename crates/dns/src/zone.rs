//! The cluster zone, compiled from a snapshot.
//!
//! Records (the Kubernetes DNS specification, schema 1.1.0):
//! - `<svc>.<ns>.svc.<zone>`: A/AAAA of a ClusterIP Service's cluster IPs; for a headless
//!   Service, of its ready endpoints; CNAME for an ExternalName Service.
//! - `<hostname>.<svc>.<ns>.svc.<zone>`: A/AAAA of a headless Service's endpoint that has a
//!   hostname.
//! - `_<port>._<proto>.<svc>.<ns>.svc.<zone>`: SRV for each named port.
//! - PTR for cluster IPs and for headless endpoints with a hostname.
//! - `<a-b-c-d>.<ns>.pod.<zone>`: A, only for a pod with that address in that namespace
//!   (`pods verified`).
//! - `dns-version.<zone>`: TXT "1.1.0"; SOA and NS at the apex.
//!
//! Every ancestor of a name exists too (empty non-terminals), which is what makes a query
//! for `<ns>.svc.<zone>` NODATA and not NXDOMAIN.
//!
//! A Service without `spec.clusterIP` (manifests written for an API server leave it out) has
//! no address yet: its name exists (NODATA for A) until the fabric's IPAM assigns one.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, RecordType};
use model::Snapshot;
use model::endpoints::service_endpoints;

/// Settings of the zone.
#[derive(Clone, Debug)]
pub struct ZoneConfig {
    /// The cluster domain, without trailing dot.
    pub domain: String,
    /// TTL of every record (CoreDNS's kubernetes plugin defaults to 5 s; 30 s is common).
    pub ttl: u32,
}

impl Default for ZoneConfig {
    fn default() -> Self {
        ZoneConfig {
            domain: "cluster.local".into(),
            ttl: 30,
        }
    }
}

/// The records of the zone, by lowercase name (with trailing dot) and type.
#[derive(Clone, Debug, Default)]
pub struct Zone {
    /// The zones answered, lowercase with trailing dot (`cluster.local.` first).
    pub origins: Vec<String>,
    pub ttl: u32,
    pub records: BTreeMap<(String, RecordType), Vec<RData>>,
    /// Every name that exists, records or not (empty non-terminals included).
    pub names: BTreeSet<String>,
    pub soa: Option<SOA>,
}

impl Zone {
    fn add(&mut self, name: &str, rdata: RData) {
        let name = name.to_ascii_lowercase();
        let rtype = rdata.record_type();
        let list = self.records.entry((name.clone(), rtype)).or_default();
        if !list.contains(&rdata) {
            list.push(rdata);
        }
        self.exists(&name);
    }

    /// Marks a name and all its ancestors up to its zone's apex as existing.
    pub(crate) fn exists(&mut self, name: &str) {
        let Some(apex) = self.apex(name).map(str::to_string) else {
            self.names.insert(name.to_string());
            return;
        };
        let mut n = name.to_string();
        loop {
            self.names.insert(n.clone());
            if n == apex {
                return;
            }
            match n.find('.') {
                Some(i) if i + 1 < n.len() => n = n[i + 1..].to_string(),
                _ => return,
            }
        }
    }

    /// The zone apex a lowercase name (with trailing dot) falls under, if any.
    pub fn apex(&self, name: &str) -> Option<&str> {
        self.origins
            .iter()
            .filter(|o| name == o.as_str() || name.ends_with(&format!(".{o}")))
            .max_by_key(|o| o.len())
            .map(String::as_str)
    }

    /// Whether a lowercase name (with trailing dot) is answered here: the zones, and the
    /// reverse zones (as CoreDNS's kubernetes plugin serves `in-addr.arpa ip6.arpa`).
    pub fn contains(&self, name: &str) -> bool {
        self.apex(name).is_some()
            || name.ends_with(".in-addr.arpa.")
            || name.ends_with(".ip6.arpa.")
    }

    pub(crate) fn add_record(&mut self, name: &str, rdata: RData) {
        self.add(name, rdata);
    }
}

fn name(s: &str) -> Option<Name> {
    Name::from_ascii(s).ok()
}

fn addr_rdata(ip: IpAddr) -> RData {
    match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    }
}

/// `10.96.0.10` -> `10.0.96.10.in-addr.arpa.`; IPv6 nibbles under `ip6.arpa.`.
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::new();
            for b in v6.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", b & 0xf, b >> 4));
            }
            s.push_str("ip6.arpa.");
            s
        }
    }
}

/// An address as a DNS label: `10-69-1-5`, IPv6 with dashes for colons.
fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

/// Compiles the zone of a snapshot. Pure.
pub fn compile(s: &Snapshot, cfg: &ZoneConfig) -> Zone {
    let origin = format!("{}.", cfg.domain.trim_end_matches('.').to_ascii_lowercase());
    let mut z = Zone {
        origins: vec![origin.clone()],
        ttl: cfg.ttl,
        ..Zone::default()
    };
    let ns_name = format!("ns.dns.{origin}");
    if let (Some(mname), Some(rname)) = (name(&ns_name), name(&format!("hostmaster.{origin}"))) {
        z.soa = Some(SOA::new(
            mname.clone(),
            rname,
            1,
            7200,
            1800,
            86400,
            cfg.ttl,
        ));
        z.add(&origin, RData::NS(NS(mname)));
    }
    z.add(
        &format!("dns-version.{origin}"),
        RData::TXT(TXT::new(vec!["1.1.0".into()])),
    );
    z.exists(&format!("svc.{origin}"));
    z.exists(&format!("pod.{origin}"));

    for svc in s.services.values() {
        let ns = svc.namespace();
        let fqdn = format!("{}.{ns}.svc.{origin}", svc.name());
        z.exists(&fqdn);
        let Some(spec) = svc.spec.spec.as_ref() else {
            continue;
        };
        if spec.type_.as_deref() == Some("ExternalName") {
            if let Some(target) = spec
                .external_name
                .as_deref()
                .and_then(|t| name(&format!("{}.", t.trim_end_matches('.'))))
            {
                z.add(&fqdn, RData::CNAME(CNAME(target)));
            }
            continue;
        }
        let headless = spec.cluster_ip.as_deref() == Some("None");
        let ports = spec.ports.clone().unwrap_or_default();
        if headless {
            // Ready endpoints of every port, each address once.
            let mut eps = Vec::new();
            for p in &ports {
                eps.extend(
                    service_endpoints(s, ns, svc.name(), p.port)
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|e| e.ready),
                );
            }
            if ports.is_empty() {
                eps.extend(service_endpoints(s, ns, svc.name(), 0).unwrap_or_default());
            }
            let mut seen = BTreeSet::new();
            for e in &eps {
                if seen.insert(e.ip) {
                    z.add(&fqdn, addr_rdata(e.ip));
                }
                if let Some(h) = &e.hostname {
                    let host = format!("{h}.{fqdn}");
                    z.add(&host, addr_rdata(e.ip));
                    if let Some(n) = name(&host) {
                        z.add(&reverse_name(e.ip), RData::PTR(PTR(n)));
                    }
                }
            }
            for p in ports
                .iter()
                .filter(|p| p.name.as_deref().is_some_and(|n| !n.is_empty()))
            {
                let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
                let srv = format!("_{}._{proto}.{fqdn}", p.name.as_deref().unwrap_or_default());
                for e in service_endpoints(s, ns, svc.name(), p.port)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|e| e.ready)
                {
                    let target = format!(
                        "{}.{fqdn}",
                        e.hostname.clone().unwrap_or_else(|| dashed(e.ip))
                    );
                    z.add(&target, addr_rdata(e.ip));
                    if let Some(t) = name(&target) {
                        z.add(&srv, RData::SRV(SRV::new(0, 100, e.port, t)));
                    }
                }
            }
            continue;
        }
        let ips: Vec<IpAddr> = spec
            .cluster_ips
            .clone()
            .unwrap_or_else(|| spec.cluster_ip.clone().into_iter().collect())
            .iter()
            .filter_map(|ip| ip.parse().ok())
            .collect();
        for ip in &ips {
            z.add(&fqdn, addr_rdata(*ip));
            if let Some(n) = name(&fqdn) {
                z.add(&reverse_name(*ip), RData::PTR(PTR(n)));
            }
        }
        for p in ports
            .iter()
            .filter(|p| p.name.as_deref().is_some_and(|n| !n.is_empty()))
        {
            let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
            let srv = format!("_{}._{proto}.{fqdn}", p.name.as_deref().unwrap_or_default());
            if let (Some(t), Ok(port)) = (name(&fqdn), u16::try_from(p.port)) {
                z.add(&srv, RData::SRV(SRV::new(0, 100, port, t)));
            }
        }
    }
    for pod in s.pods.values() {
        let Some(ip) = model::endpoints::pod_ip(pod) else {
            continue;
        };
        z.add(
            &format!("{}.{}.pod.{origin}", dashed(ip), pod.namespace()),
            addr_rdata(ip),
        );
    }
    z
}
