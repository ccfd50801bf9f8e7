//! L2 announcements (CiliumL2AnnouncementPolicy semantics): for every LoadBalancer (and, when
//! a policy asks, external) address, exactly one node answers ARP, elected per Service through
//! a lease; the new holder sends a gratuitous ARP when it takes over.
//!
//! [`announcements`] is pure: which addresses this node may announce, under which lease.
//! [`Announcer`] does it: leases in the state store ([`store::lease`] on one machine,
//! [`store::state::leases`] in the shared backend), the address on the LAN
//! interface with a kernel lifetime (so a holder whose agent dies stops answering on its own
//! when the lifetime runs out, without anyone cleaning up), and the gratuitous ARP through a
//! raw packet socket. The kernel answers ARP for an address it holds; traffic to it then
//! meets the datapath's `from_netdev` like any frontend.
//!
//! Beyond Cilium: with `externalTrafficPolicy: Local`, only a node with a ready local endpoint
//! may hold the lease (Cilium ignores the policy here and can elect a node that drops).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use model::Snapshot;

use crate::plan::{FrontendKind, ServicePlan};

/// Lease settings tuned for a LAN (Cilium's defaults are 15 s / 2 s / 5 s): a holder renews
/// every [`RENEW`]; others take over [`LEASE_DURATION`] after its last renewal. The address
/// lifetime on the interface is [`ADDRESS_LIFETIME_S`], refreshed at every renewal.
pub const LEASE_DURATION: Duration = Duration::from_millis(1000);
pub const RENEW: Duration = Duration::from_millis(200);
pub const ADDRESS_LIFETIME_S: u32 = 1;

/// One lease and the addresses that go with it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Announcement {
    /// `l2announce-<namespace>-<service>` (Cilium's lease naming, without its prefix).
    pub lease: String,
    pub ips: BTreeSet<Ipv4Addr>,
}

/// What this node may announce: addresses of Services selected by a policy whose node
/// selector matches this node and whose interface patterns match `interface`.
pub fn announcements(
    snapshot: &Snapshot,
    plan: &ServicePlan,
    node_labels: &BTreeMap<String, String>,
    interface: &str,
) -> Vec<Announcement> {
    let policies: Vec<_> = snapshot
        .l2_announcement_policies
        .values()
        .filter(|p| {
            p.spec
                .node_selector
                .as_ref()
                .is_none_or(|s| s.matches(node_labels))
                && (p.spec.interfaces.is_empty()
                    // A search, as Go's regexp.MatchString does: an anchored match implies it.
                    || p.spec.interfaces.iter().any(|re| {
                        regex::Regex::new(re).is_ok_and(|r| r.is_match(interface))
                    }))
        })
        .collect();
    let mut by_service: BTreeMap<(String, String), BTreeSet<Ipv4Addr>> = BTreeMap::new();
    for (key, fe) in &plan.frontends {
        if !matches!(
            fe.kind,
            FrontendKind::LoadBalancer | FrontendKind::ExternalIp
        ) {
            continue;
        }
        let wanted_kind = |p: &model::kinds::cilium::L2AnnouncementPolicySpec| match fe.kind {
            FrontendKind::LoadBalancer => p.load_balancer_ips,
            _ => p.external_ips,
        };
        // externalTrafficPolicy: Local — only a node with a ready local endpoint holds it.
        if fe.traffic_policy_local && !fe.backends.iter().any(|b| b.is_local) {
            continue;
        }
        let labels = model::snapshot::get(&snapshot.services, &fe.namespace, &fe.service)
            .map(|s| s.meta.labels.clone())
            .unwrap_or_default();
        if policies.iter().any(|p| {
            wanted_kind(&p.spec)
                && p.spec
                    .service_selector
                    .as_ref()
                    .is_none_or(|s| s.matches(&labels))
        }) {
            by_service
                .entry((fe.namespace.clone(), fe.service.clone()))
                .or_default()
                .insert(key.ip);
        }
    }
    by_service
        .into_iter()
        .map(|((ns, name), ips)| Announcement {
            lease: format!("l2announce-{ns}-{name}"),
            ips,
        })
        .collect()
}

/// The announcing side, one per node agent.
#[derive(Debug)]
pub struct Announcer {
    leases: Box<dyn store::lease::LeaseStore>,
    /// The node's links, through netlink in the namespace the announcer was made in.
    links: datapath::link::Netlink,
    node: String,
    interface: String,
    /// Addresses this node announces now, with the lease they belong to.
    held: BTreeMap<Ipv4Addr, String>,
    /// Leases whose store failed at the last tick (logged once until they recover).
    failing: BTreeSet<String>,
    last_tick: Option<Instant>,
}

/// A takeover, for logs and the failover measurement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Takeover {
    pub lease: String,
    pub ip: Ipv4Addr,
}

impl Announcer {
    /// With the leases of the embedded state store in `lease_dir` (one machine).
    pub fn new(lease_dir: &Path, node: &str, interface: &str) -> std::io::Result<Announcer> {
        Announcer::with_leases(
            Box::new(store::lease::Leases::open(lease_dir)?),
            node,
            interface,
        )
    }

    /// With leases from any store (the shared state backend across machines).
    /// (Opens the netlink connection in the calling thread's network namespace.)
    pub fn with_leases(
        leases: Box<dyn store::lease::LeaseStore>,
        node: &str,
        interface: &str,
    ) -> std::io::Result<Announcer> {
        Ok(Announcer {
            leases,
            links: datapath::link::Netlink::open()?,
            node: node.to_string(),
            interface: interface.to_string(),
            held: BTreeMap::new(),
            failing: BTreeSet::new(),
            last_tick: None,
        })
    }

    /// Whether a renewal is due.
    pub fn due(&self) -> bool {
        self.last_tick.is_none_or(|t| t.elapsed() >= RENEW)
    }

    /// One round: renew or take the leases of `want`, announce what we hold, drop the rest.
    /// With the LAN link down nothing is renewed, so another node takes over.
    pub fn tick(&mut self, want: &[Announcement]) -> Vec<Takeover> {
        self.last_tick = Some(Instant::now());
        let link_up = self.links.link_is_up(&self.interface);
        let mut now_held: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
        let mut taken = Vec::new();
        if link_up {
            for a in want {
                match self
                    .leases
                    .acquire_or_renew(&a.lease, &self.node, LEASE_DURATION)
                {
                    Ok(true) => {
                        for ip in &a.ips {
                            now_held.insert(*ip, a.lease.clone());
                        }
                    }
                    Ok(false) => {}
                    // The lease cannot be read (a corrupt file) or written: nobody can take it
                    // (they cannot read it either), so the node that held it keeps what it
                    // announced, the last good state, rather than leaving the address dark.
                    Err(e) => {
                        let kept: Vec<Ipv4Addr> = self
                            .held
                            .iter()
                            .filter(|(_, l)| **l == a.lease)
                            .map(|(ip, _)| *ip)
                            .collect();
                        if self.failing.insert(a.lease.clone()) {
                            tracing::error!(lease = %a.lease, error = %e, kept = kept.len(), "lease store: keeping the addresses held before");
                        }
                        for ip in kept {
                            now_held.insert(ip, a.lease.clone());
                        }
                        continue;
                    }
                }
                if self.failing.remove(&a.lease) {
                    tracing::info!(lease = %a.lease, "lease store readable again");
                }
            }
        }
        for (ip, lease) in &now_held {
            let lifetime = Duration::from_secs(u64::from(ADDRESS_LIFETIME_S));
            if let Err(e) = self.links.set_address(&self.interface, *ip, lifetime) {
                tracing::warn!(%ip, error = %e, "cannot add the announced address");
                continue;
            }
            if !self.held.contains_key(ip) {
                if let Err(e) = datapath::link::gratuitous_arp(&self.interface, *ip) {
                    tracing::warn!(%ip, error = %e, "gratuitous ARP");
                }
                taken.push(Takeover {
                    lease: lease.clone(),
                    ip: *ip,
                });
            }
        }
        let wanted: BTreeSet<&String> = want.iter().map(|a| &a.lease).collect();
        for (ip, lease) in std::mem::take(&mut self.held) {
            if !now_held.contains_key(&ip) {
                let _ = self.links.remove_address(&self.interface, ip);
                if !wanted.contains(&lease) {
                    let _ = self.leases.release(&lease, &self.node);
                }
            }
        }
        self.held = now_held;
        taken
    }

    /// Gives everything up (agent shutdown): addresses removed, leases released.
    pub fn release_all(&mut self) {
        for (ip, lease) in std::mem::take(&mut self.held) {
            let _ = self.links.remove_address(&self.interface, ip);
            let _ = self.leases.release(&lease, &self.node);
        }
    }

    pub fn held(&self) -> impl Iterator<Item = &Ipv4Addr> {
        self.held.keys()
    }
}
