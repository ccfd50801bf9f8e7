//! The node agent's configuration (what `trellis agent --config` reads): the node, its
//! addresses and pod range, where the manifests and the shared state are. Any supervisor
//! writes it (the lab does today; a package's unit or a person on a real host can too), so
//! the type lives here, beside the plan the agent compiles, not in the lab.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;

/// The agent's configuration file (what `trellis agent --config` reads).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AgentConfig {
    pub node: String,
    pub node_ips: BTreeMap<String, Ipv4Addr>,
    pub pod_cidr: Ipv4Net,
    pub cluster_cidr: Ipv4Net,
    pub lan_interface: String,
    pub pin_dir: PathBuf,
    /// The manifests to serve (the lab adds its published objects).
    pub manifests: Vec<PathBuf>,
    pub assignments: Option<PathBuf>,
    pub masquerade: bool,
    /// Where L2-announcement leases live (the embedded state store); none: no announcing.
    #[serde(default)]
    pub leases: Option<PathBuf>,
    /// This node's labels (policies' nodeSelector).
    #[serde(default)]
    pub node_labels: BTreeMap<String, String>,
    /// Where the agent serves Hubble's Observer API with the datapath's flows.
    #[serde(default)]
    pub observe_listen: Option<std::net::SocketAddr>,
    /// Cilium's `loadBalancer.mode`: `snat`, `dsr` or `hybrid` (DSR for TCP, SNAT for UDP).
    #[serde(default = "default_lb_mode")]
    pub load_balancer_mode: String,
    /// Where the agent hears which addresses DNS answered its pods (toFQDNs; `trellis dns
    /// --policy-agents` writes to it); none: toFQDNs allows nothing.
    #[serde(default)]
    pub fqdn_socket: Option<PathBuf>,
    /// The shortest time an address answered for toFQDNs stays allowed, in seconds (the
    /// answer's TTL when longer).
    #[serde(default)]
    pub fqdn_min_ttl_s: Option<u64>,
    /// The shared state backend (`etcd://HOST:PORT,...`): the agent registers its node there
    /// and claims its pod CIDR; none: the lab's files only.
    #[serde(default)]
    pub state: Option<String>,
}

fn default_lb_mode() -> String {
    "snat".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a person writes for a real host: the required keys, the rest defaulted.
    #[test]
    fn a_hand_written_config_reads_with_defaults() {
        let c: AgentConfig = serde_json::from_str(
            r#"{"node": "host-1", "node_ips": {"host-1": "192.168.1.10", "host-2": "192.168.1.11"},
                "pod_cidr": "10.69.1.0/24", "cluster_cidr": "10.69.0.0/16", "lan_interface": "enp1s0",
                "pin_dir": "/sys/fs/bpf/trellis/host-1", "manifests": ["/etc/trellis/manifests"],
                "assignments": null, "masquerade": true, "state": "etcd://192.168.1.10:2379"}"#,
        )
        .expect("parses");
        assert_eq!(c.load_balancer_mode, "snat");
        assert_eq!(c.leases, None);
        assert_eq!(c.state.as_deref(), Some("etcd://192.168.1.10:2379"));
    }
}
