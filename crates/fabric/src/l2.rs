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
use std::process::Command;
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
        Ok(Announcer::with_leases(
            Box::new(store::lease::Leases::open(lease_dir)?),
            node,
            interface,
        ))
    }

    /// With leases from any store (the shared state backend across machines).
    pub fn with_leases(
        leases: Box<dyn store::lease::LeaseStore>,
        node: &str,
        interface: &str,
    ) -> Announcer {
        Announcer {
            leases,
            node: node.to_string(),
            interface: interface.to_string(),
            held: BTreeMap::new(),
            failing: BTreeSet::new(),
            last_tick: None,
        }
    }

    /// Whether a renewal is due.
    pub fn due(&self) -> bool {
        self.last_tick.is_none_or(|t| t.elapsed() >= RENEW)
    }

    /// One round: renew or take the leases of `want`, announce what we hold, drop the rest.
    /// With the LAN link down nothing is renewed, so another node takes over.
    pub fn tick(&mut self, want: &[Announcement]) -> Vec<Takeover> {
        self.last_tick = Some(Instant::now());
        let link_up = link_is_up(&self.interface);
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
            if let Err(e) = set_address(&self.interface, *ip) {
                tracing::warn!(%ip, error = %e, "cannot add the announced address");
                continue;
            }
            if !self.held.contains_key(ip) {
                if let Err(e) = gratuitous_arp(&self.interface, *ip) {
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
                let _ = remove_address(&self.interface, ip);
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
            let _ = remove_address(&self.interface, ip);
            let _ = self.leases.release(&lease, &self.node);
        }
    }

    pub fn held(&self) -> impl Iterator<Item = &Ipv4Addr> {
        self.held.keys()
    }
}

fn ip(args: &[&str]) -> std::io::Result<String> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Adds (or refreshes the lifetime of) `ip/32` on the interface.
fn set_address(interface: &str, addr: Ipv4Addr) -> std::io::Result<()> {
    let lft = ADDRESS_LIFETIME_S.to_string();
    ip(&[
        "addr",
        "replace",
        &format!("{addr}/32"),
        "dev",
        interface,
        "valid_lft",
        &lft,
        "preferred_lft",
        &lft,
    ])
    .map(|_| ())
}

fn remove_address(interface: &str, addr: Ipv4Addr) -> std::io::Result<()> {
    ip(&["addr", "del", &format!("{addr}/32"), "dev", interface]).map(|_| ())
}

fn link_is_up(interface: &str) -> bool {
    ip(&["-o", "link", "show", "dev", interface])
        .is_ok_and(|s| s.contains("LOWER_UP") && s.contains(",UP"))
}

/// The gratuitous ARP frame for `addr` from `mac`: a broadcast ARP request whose sender and
/// target address are both `addr` (RFC 5227's announcement).
pub fn gratuitous_arp_frame(mac: [u8; 6], addr: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&addr.octets());
    f[32..38].copy_from_slice(&[0; 6]);
    f[38..42].copy_from_slice(&addr.octets());
    f
}

/// Sends one gratuitous ARP for `addr` out of `interface` through an AF_PACKET socket.
fn gratuitous_arp(interface: &str, addr: Ipv4Addr) -> std::io::Result<()> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockProtocol, SockType, sendto, socket};
    // The interface's link-layer address from getifaddrs: it carries the ifindex the send
    // needs, and the MAC for the frame.
    let link = nix::ifaddrs::getifaddrs()
        .map_err(std::io::Error::from)?
        .filter(|i| i.interface_name == interface)
        .find_map(|i| i.address.and_then(|a| a.as_link_addr().copied()))
        .ok_or_else(|| std::io::Error::other(format!("no link address for {interface}")))?;
    let mac = link.addr().ok_or_else(|| std::io::Error::other("no MAC"))?;
    let fd = socket(
        AddressFamily::Packet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::EthAll,
    )
    .map_err(std::io::Error::from)?;
    let frame = gratuitous_arp_frame(mac, addr);
    sendto(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &frame,
        &link,
        nix::sys::socket::MsgFlags::empty(),
    )
    .map_err(std::io::Error::from)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gratuitous_arp_frame_layout() {
        let f = gratuitous_arp_frame([2, 0, 0, 0, 0, 1], Ipv4Addr::new(10, 10, 30, 25));
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[28..32], &[10, 10, 30, 25]);
        assert_eq!(&f[38..42], &[10, 10, 30, 25]);
    }
}
