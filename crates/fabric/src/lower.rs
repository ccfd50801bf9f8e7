//! The lowering of the fabric's plans to the eBPF maps' contents: pure functions from a
//! [`ServicePlan`] and a [`PolicyPlan`](crate::policy::PolicyPlan) to what
//! [`datapath::Maps::sync`] writes (the agent only reads and writes the maps).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use datapath::abi::{
    BACKEND_F_LOCAL, LB4_MAGLEV_CHUNK, MaglevChunk, SVC_F_AFFINITY, SVC_F_EXTERNAL,
};
use datapath::{Desired, Lb4Backend, Lb4Key, Lb4Service, MaglevKey, NodeConfig};

use crate::ServicePlan;
use crate::plan::Scope;

/// Stable ids for frontends and backends, so a sync rewrites only what changed and a restarted
/// agent keeps the ids connection-tracking and affinity entries refer to.
#[derive(Debug, Default)]
pub struct Ids {
    frontends: BTreeMap<(Ipv4Addr, u16, u8), u32>,
    backends: BTreeMap<(Ipv4Addr, u16, u8), u32>,
    next_frontend: u32,
    next_backend: u32,
}

impl Ids {
    /// Recovers the ids from the service and backend maps a previous agent left.
    pub fn recover(
        services: impl IntoIterator<Item = (Lb4Key, Lb4Service)>,
        backends: impl IntoIterator<Item = (u32, Lb4Backend)>,
    ) -> Ids {
        let mut ids = Ids::default();
        for (k, v) in services {
            if k.slot == 0 {
                ids.frontends.insert((k.addr, k.port, k.proto), v.id);
            }
        }
        for (id, b) in backends {
            ids.backends.insert((b.addr, b.port, b.proto), id);
        }
        ids.next_frontend = ids.frontends.values().max().copied().unwrap_or(0);
        ids.next_backend = ids.backends.values().max().copied().unwrap_or(0);
        ids
    }

    fn frontend(&mut self, key: (Ipv4Addr, u16, u8)) -> u32 {
        *self.frontends.entry(key).or_insert_with(|| {
            self.next_frontend += 1;
            self.next_frontend
        })
    }

    fn backend(&mut self, key: (Ipv4Addr, u16, u8)) -> u32 {
        *self.backends.entry(key).or_insert_with(|| {
            self.next_backend += 1;
            self.next_backend
        })
    }
}

/// Turns the fabric's plan into map contents. Frontends without backends are left out: the
/// node's routing then refuses them (unreachable route, or RST from the node's own stack).
pub fn desired(
    plan: &ServicePlan,
    ids: &mut Ids,
    config: Option<NodeConfig>,
    node_ips: &BTreeMap<String, Ipv4Addr>,
) -> Desired {
    let mut d = Desired {
        config,
        ..Desired::default()
    };
    for (fk, fe) in &plan.frontends {
        if fe.backends.is_empty() {
            continue;
        }
        let fid = ids.frontend((fk.ip, fk.port, fk.protocol));
        let mut flags = 0;
        if fe.scope == Scope::External {
            flags |= SVC_F_EXTERNAL;
        }
        if fe.affinity_timeout_s.is_some() {
            flags |= SVC_F_AFFINITY;
        }
        let mut bids = Vec::with_capacity(fe.backends.len());
        for (i, b) in fe.backends.iter().enumerate() {
            let bid = ids.backend((b.ip, b.port, fk.protocol));
            bids.push(bid);
            d.backends.insert(
                bid,
                Lb4Backend {
                    addr: b.ip,
                    port: b.port,
                    proto: fk.protocol,
                    flags: if b.is_local { BACKEND_F_LOCAL } else { 0 },
                    node_ip: b
                        .node
                        .as_ref()
                        .and_then(|n| node_ips.get(n))
                        .copied()
                        .unwrap_or(Ipv4Addr::UNSPECIFIED),
                },
            );
            d.services.insert(
                Lb4Key {
                    addr: fk.ip,
                    port: fk.port,
                    proto: fk.protocol,
                    slot: (i + 1) as u16,
                },
                Lb4Service {
                    id: bid,
                    count: 0,
                    flags: 0,
                    affinity_timeout_s: 0,
                },
            );
        }
        d.services.insert(
            Lb4Key {
                addr: fk.ip,
                port: fk.port,
                proto: fk.protocol,
                slot: 0,
            },
            Lb4Service {
                id: fid,
                count: fe.backends.len() as u16,
                flags,
                affinity_timeout_s: fe.affinity_timeout_s.unwrap_or(0),
            },
        );
        for (chunk, slots) in fe.maglev.chunks(LB4_MAGLEV_CHUNK).enumerate() {
            let mut c: Box<MaglevChunk> = Box::new([0; LB4_MAGLEV_CHUNK]);
            for (slot, &bi) in c.iter_mut().zip(slots) {
                *slot = bids.get(bi as usize).copied().unwrap_or(0);
            }
            d.maglev.insert(
                MaglevKey {
                    frontend_id: fid,
                    chunk: chunk as u32,
                },
                c,
            );
        }
    }
    d
}

/// One policy entry of endpoint `ep` as the policy map holds it.
fn lower_entry(
    ep: std::net::Ipv4Addr,
    k: &crate::policy::PolicyKey,
    v: &crate::policy::Verdict,
) -> (datapath::PolicyKey, datapath::PolicyValue) {
    use crate::policy::Direction;
    let flag = |on: bool, f: u32| if on { f } else { 0 };
    (
        datapath::PolicyKey {
            ep,
            identity: k.identity,
            dir: match k.direction {
                Direction::Ingress => datapath::abi::POLICY_DIR_INGRESS,
                Direction::Egress => datapath::abi::POLICY_DIR_EGRESS,
            },
            proto: k.proto,
            port: k.port,
            port_bits: k.port_bits,
        },
        datapath::PolicyValue {
            rule: v.rule,
            flags: flag(v.deny, datapath::abi::POLICY_F_DENY)
                | flag(k.proto != 0, datapath::abi::POLICY_F_PROTO)
                | flag(k.port_bits != 0, datapath::abi::POLICY_F_PORT),
        },
    )
}

/// What [`crate::policy::learn`] added, as entries to add to the policy maps.
pub fn added_desired(a: &crate::policy::Added) -> datapath::PolicyDesired {
    datapath::PolicyDesired {
        ipcache: a
            .ipcache
            .iter()
            .map(|(net, id)| ((net.network(), net.prefix_len()), *id))
            .collect(),
        endpoints: Default::default(),
        entries: a
            .entries
            .iter()
            .map(|(ep, k, v)| lower_entry(*ep, k, v))
            .collect(),
    }
}

/// Turns the fabric's policy plan into the policy maps' contents; `None` when the plan went over
/// a bound (the maps then keep the last good policy, never a partial one).
pub fn policy_desired(plan: &crate::policy::PolicyPlan) -> Option<datapath::PolicyDesired> {
    if plan.over_bound.is_some() {
        return None;
    }
    let mut d = datapath::PolicyDesired {
        ipcache: plan
            .ipcache
            .iter()
            .map(|(net, id)| ((net.network(), net.prefix_len()), *id))
            .collect(),
        ..Default::default()
    };
    for (ip, ep) in &plan.endpoints {
        let mut flags = 0;
        if ep.ingress_enforced {
            flags |= datapath::abi::EP_F_INGRESS;
        }
        if ep.egress_enforced {
            flags |= datapath::abi::EP_F_EGRESS;
        }
        d.endpoints.insert(
            *ip,
            datapath::Endpoint4 {
                identity: ep.identity,
                flags,
            },
        );
        for (k, v) in &ep.entries {
            let (k, v) = lower_entry(*ip, k, v);
            d.entries.insert(k, v);
        }
    }
    Some(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Backend, Frontend, FrontendKey, FrontendKind};

    fn frontend(backends: &[&str], scope: Scope, maglev: &[u32]) -> Frontend {
        Frontend {
            namespace: "apps".into(),
            service: "echo".into(),
            port_name: "http".into(),
            kind: FrontendKind::ClusterIp,
            scope,
            node: None,
            backends: backends
                .iter()
                .map(|b| Backend {
                    ip: b.parse().expect("ip"),
                    port: 8080,
                    node: Some("node-2".into()),
                    pod: None,
                    is_local: *b == "10.69.1.5",
                })
                .collect(),
            affinity_timeout_s: None,
            traffic_policy_local: false,
            maglev: maglev.into(),
        }
    }

    fn key(ip: &str, port: u16) -> FrontendKey {
        FrontendKey {
            ip: ip.parse().expect("ip"),
            port,
            protocol: 6,
        }
    }

    #[test]
    fn a_plan_becomes_service_backend_and_maglev_entries_with_stable_ids() {
        let mut plan = ServicePlan::default();
        plan.frontends.insert(
            key("10.96.0.50", 80),
            frontend(&["10.69.1.5", "10.69.2.7"], Scope::Internal, &[]),
        );
        plan.frontends.insert(
            key("10.10.30.25", 443),
            frontend(&["10.69.2.7"], Scope::External, &[0, 0, 0]),
        );
        // No backends: left out, so the node's routing refuses it.
        plan.frontends
            .insert(key("10.96.0.60", 80), frontend(&[], Scope::Internal, &[]));
        let node_ips = BTreeMap::from([("node-2".to_string(), "10.10.30.12".parse().expect("ip"))]);
        let mut ids = Ids::default();
        let d = desired(&plan, &mut ids, None, &node_ips);
        // Two frontends: a master slot each plus one slot per backend.
        assert_eq!(d.services.len(), 2 + 2 + 1);
        let master = |ip: &str, port| {
            d.services[&Lb4Key {
                addr: ip.parse().expect("ip"),
                port,
                proto: 6,
                slot: 0,
            }]
        };
        assert_eq!(master("10.96.0.50", 80).count, 2);
        assert_eq!(master("10.10.30.25", 443).flags, SVC_F_EXTERNAL);
        // One backend entry per distinct backend, shared between frontends.
        assert_eq!(d.backends.len(), 2);
        let local = d
            .backends
            .values()
            .find(|b| b.addr == "10.69.1.5".parse::<Ipv4Addr>().expect("ip"))
            .expect("backend");
        assert_eq!(local.flags, BACKEND_F_LOCAL);
        assert_eq!(
            local.node_ip,
            "10.10.30.12".parse::<Ipv4Addr>().expect("ip")
        );
        assert_eq!(
            d.maglev.len(),
            1,
            "the external frontend's table: one chunk"
        );
        let table = d.maglev.values().next().expect("a chunk");
        let bid = table[0];
        assert!(
            bid != 0 && table[..3] == [bid; 3],
            "three slots of its one backend"
        );
        assert!(
            table[3..].iter().all(|&b| b == 0),
            "the rest of the chunk empty"
        );
        // The same plan again: the same ids, so a sync rewrites nothing.
        let again = desired(&plan, &mut ids, None, &node_ips);
        assert_eq!(again.services, d.services);
        // Recovered from the maps a previous agent left: the same ids too.
        let mut recovered = Ids::recover(
            d.services.iter().map(|(k, v)| (*k, *v)),
            d.backends.iter().map(|(k, v)| (*k, *v)),
        );
        assert_eq!(
            desired(&plan, &mut recovered, None, &node_ips).services,
            d.services
        );
    }

    #[test]
    fn a_policy_plan_over_its_bound_is_not_lowered() {
        let plan = crate::policy::PolicyPlan {
            over_bound: Some("262145 entries".into()),
            ..Default::default()
        };
        assert!(policy_desired(&plan).is_none());
        assert!(policy_desired(&crate::policy::PolicyPlan::default()).is_some());
    }
}
