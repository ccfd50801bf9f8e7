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
    /// Where cluster IPs are assigned from when the assignments are the agents' own (`state`
    /// set, no `assignments` file); none: kubeadm's 10.96.0.0/12.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_cidr: Option<Ipv4Net>,
    pub lan_interface: String,
    pub pin_dir: PathBuf,
    /// The manifests to serve (the lab adds its published objects).
    #[serde(default)]
    pub manifests: Vec<PathBuf>,
    /// A file of assignments another process decides (the one-host lab's supervisor). None
    /// with `state`: the agents assign cluster IPs, node ports and LB-IPAM addresses
    /// themselves, in the backend's one document (`fabric::shared`).
    #[serde(default)]
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
    /// The shared state backend (`etcd://HOST:PORT,...` or `kube://NAMESPACE`): the agent
    /// registers its node there
    /// and claims its pod CIDR; none: the lab's files only.
    #[serde(default)]
    pub state: Option<String>,
    /// `kube`: the manifests come from the Kubernetes API (not `manifests`), and what the
    /// file leaves out is read from the Node objects ([`complete_from_nodes`]). `state`: the
    /// generation published in the state backend (`trellis state publish`), the same on
    /// every node.
    #[serde(default)]
    pub source: Option<String>,
    /// The admin endpoint (/healthz, /ready, /status, /metrics); `trellis agent --admin` wins.
    #[serde(default)]
    pub admin_listen: Option<std::net::SocketAddr>,
    /// Install the CNI plugin and this node's network configuration at start (a DaemonSet's
    /// job on Kubernetes).
    #[serde(default)]
    pub cni_install: Option<CniInstall>,
}

/// Where the agent installs the CNI plugin for the node's container runtime.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CniInstall {
    /// The `trellis-cni` binary to copy (in the agent's image).
    pub plugin: PathBuf,
    /// The runtime's plugin directory (`/opt/cni/bin` on the host).
    pub bin_dir: PathBuf,
    /// The runtime's configuration directory (`/etc/cni/net.d` on the host).
    pub conf_dir: PathBuf,
    /// The plugin's state directory on the host (addresses handed out).
    pub state_dir: PathBuf,
    /// Ranges kept on the pod's primary interface (pods and Services).
    #[serde(default)]
    pub cluster_cidrs: Vec<Ipv4Net>,
    /// Where the agent answers the plugin (a pod's Multus attachments, its network-status);
    /// written into the network configuration as `agentSocket`. None: no attachments.
    #[serde(default)]
    pub agent_socket: Option<PathBuf>,
    /// Multus's `defaultNetworks`: NetworkAttachmentDefinitions (`namespace/name`, or a bare
    /// name in kube-system as Multus looks them up) attached to every pod before the ones its
    /// annotation asks for.
    #[serde(default)]
    pub default_networks: Vec<String>,
    /// Namespaces whose pods get no default networks (Multus's `systemNamespaces`; none
    /// given: kube-system).
    #[serde(default)]
    pub system_namespaces: Option<Vec<String>>,
}

/// Fills what a Kubernetes node's agent configuration leaves out from the API's Node objects
/// (`config` is the file as JSON, before it is read as an [`AgentConfig`]):
///
/// - `node`: `node_env` (the DaemonSet's `spec.nodeName`) when the file has none;
/// - `node_ips`: every Node's first IPv4 `InternalIP`;
/// - `pod_cidr`: this Node's `spec.podCIDR` (or first IPv4 of `podCIDRs`);
/// - `node_labels`: this Node's labels;
/// - `manifests`: none.
///
/// Values the file gives win. The error says which Node lacks what.
pub fn complete_from_nodes(
    config: &mut serde_json::Value,
    snapshot: &model::Snapshot,
    node_env: Option<&str>,
) -> Result<(), String> {
    use serde_json::{Value, json};
    let Some(c) = config.as_object_mut() else {
        return Err("the configuration is not a JSON object".into());
    };
    let given = |c: &serde_json::Map<String, Value>, k: &str| {
        c.get(k).is_some_and(|v| {
            !(v.is_null() || v.as_str() == Some("") || v.as_object().is_some_and(|o| o.is_empty()))
        })
    };
    if !given(c, "node") {
        let name = node_env.ok_or("no `node` in the configuration and no $NODE_NAME")?;
        c.insert("node".into(), json!(name));
    }
    let node = c["node"].as_str().unwrap_or_default().to_string();
    let internal_ip =
        |n: &model::Object<model::k8s_openapi::api::core::v1::Node>| -> Option<Ipv4Addr> {
            n.spec
                .status
                .as_ref()?
                .addresses
                .as_ref()?
                .iter()
                .filter(|a| a.type_ == "InternalIP")
                .find_map(|a| a.address.parse().ok())
        };
    if !given(c, "node_ips") {
        let ips: serde_json::Map<String, Value> = snapshot
            .nodes
            .values()
            .filter_map(|n| Some((n.name().to_string(), json!(internal_ip(n)?))))
            .collect();
        c.insert("node_ips".into(), Value::Object(ips));
    }
    let this = snapshot
        .nodes
        .get(&(String::new(), node.clone()))
        .ok_or_else(|| format!("Node {node} is not in the API"))?;
    if !c["node_ips"]
        .as_object()
        .is_some_and(|m| m.contains_key(&node))
    {
        return Err(format!(
            "Node {node} has no IPv4 InternalIP in status.addresses"
        ));
    }
    if !given(c, "pod_cidr") {
        let spec = this.spec.spec.as_ref();
        let cidr = spec
            .and_then(|s| s.pod_cidr.clone())
            .into_iter()
            .chain(spec.and_then(|s| s.pod_cidrs.clone()).into_iter().flatten())
            .find(|c| c.parse::<Ipv4Net>().is_ok())
            .ok_or_else(|| {
                format!(
                    "Node {node} has no IPv4 spec.podCIDR (the controller manager's --allocate-node-cidrs gives one)"
                )
            })?;
        c.insert("pod_cidr".into(), json!(cidr));
    }
    if !given(c, "node_labels") {
        c.insert("node_labels".into(), json!(this.meta.labels));
    }
    if !c.contains_key("manifests") {
        c.insert("manifests".into(), json!([]));
    }
    Ok(())
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

    /// A DaemonSet's config names no node, address or range: the API's Nodes give them.
    #[test]
    fn a_kubernetes_config_is_completed_from_the_nodes() {
        let nodes = model::RawObject::from_yaml(
            "apiVersion: v1\nkind: Node\nmetadata: {name: n1, labels: {zone: a}}\n\
             spec: {podCIDR: 10.69.1.0/24}\nstatus: {addresses: [{type: Hostname, address: n1}, {type: InternalIP, address: 192.168.1.11}]}\n---\n\
             apiVersion: v1\nkind: Node\nmetadata: {name: n2}\nspec: {podCIDRs: [fd00::/64, 10.69.2.0/24]}\n\
             status: {addresses: [{type: InternalIP, address: 192.168.1.12}]}\n",
            "nodes.yaml",
            "",
        )
        .expect("yaml");
        let snapshot = model::Snapshot::build(nodes, vec![]);
        let file = serde_json::json!({"source": "kube", "cluster_cidr": "10.69.0.0/16",
            "lan_interface": "eth0", "pin_dir": "/sys/fs/bpf/trellis", "assignments": null,
            "masquerade": true});
        let mut c = file.clone();
        complete_from_nodes(&mut c, &snapshot, Some("n1")).expect("completes");
        let c: AgentConfig = serde_json::from_value(c).expect("an agent config");
        assert_eq!(c.node, "n1");
        assert_eq!(c.pod_cidr.to_string(), "10.69.1.0/24");
        assert_eq!(c.node_ips["n2"].to_string(), "192.168.1.12");
        assert_eq!(c.node_labels["zone"], "a");
        let mut c = file.clone();
        complete_from_nodes(&mut c, &snapshot, Some("n2")).expect("completes");
        assert_eq!(c["pod_cidr"], "10.69.2.0/24");
        let mut c = file.clone();
        let e = complete_from_nodes(&mut c, &snapshot, Some("n3")).expect_err("no such node");
        assert!(e.contains("Node n3"), "{e}");
        let mut c = file;
        let e = complete_from_nodes(&mut c, &snapshot, None).expect_err("no node name");
        assert!(e.contains("NODE_NAME"), "{e}");
    }
}
