//! What a running lab looks like, written by its supervisor to `<state dir>/state.json` and
//! read by `lab status`, `lab exec` and `lab down` (which must also work after a crash).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::schedule::PodPlan;

pub const STATE_FILE: &str = "state.json";
/// The Pod objects of running pods, as manifests: agents and `lab status` read them.
pub const PODS_FILE: &str = "pods.yaml";
/// Cluster IPs and node ports the lab (playing the API server) assigned.
pub const ASSIGNMENTS_FILE: &str = "assignments.json";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabState {
    pub name: String,
    /// Every namespace and pin of this lab starts with this.
    pub prefix: String,
    pub manifests: Vec<PathBuf>,
    pub supervisor_pid: u32,
    pub lan_netns: String,
    pub lan_cidr: Ipv4Net,
    pub client: ClientState,
    pub nodes: Vec<NodeState>,
    pub pods: Vec<PodState>,
    pub services: Vec<ServiceRow>,
    /// The supervisor finished bringing the lab up.
    pub ready: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClientState {
    pub netns: String,
    pub ip: Ipv4Addr,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeState {
    pub name: String,
    pub netns: String,
    pub lan_ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
    pub pin_dir: PathBuf,
    pub agent_pid: Option<u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PodState {
    pub plan: PodPlan,
    pub netns: String,
    pub container_id: String,
    pub ip: Option<Ipv4Addr>,
    pub pid: Option<u32>,
    pub ready: bool,
}

/// One Service as `lab status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServiceRow {
    pub namespace: String,
    pub name: String,
    pub type_: String,
    pub cluster_ip: Option<Ipv4Addr>,
    /// `port:nodePort/PROTO`.
    pub node_ports: Vec<String>,
    pub load_balancer: Vec<String>,
    /// `ip:port` of ready endpoints.
    pub endpoints: Vec<String>,
}

impl LabState {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(STATE_FILE)
    }

    pub fn read(state_dir: &Path) -> Result<LabState> {
        let p = Self::path(state_dir);
        let text = std::fs::read_to_string(&p).with_context(|| {
            format!(
                "no lab state at {} (is a lab up? `trellis lab up -f DIR`)",
                p.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("reading {}", p.display()))
    }

    /// Writes atomically (rename), so readers never see half a file.
    pub fn write(&self, state_dir: &Path) -> Result<()> {
        write_atomic(&Self::path(state_dir), &serde_json::to_vec_pretty(self)?)
    }

    /// The namespace of a node, pod (`ns/name` or `name`) or `client`.
    pub fn netns_of(&self, name: &str) -> Option<String> {
        if name == "client" {
            return Some(self.client.netns.clone());
        }
        if name == "lan" {
            return Some(self.lan_netns.clone());
        }
        if let Some(n) = self
            .nodes
            .iter()
            .find(|n| n.name == name || n.netns == name)
        {
            return Some(n.netns.clone());
        }
        self.pods
            .iter()
            .find(|p| {
                p.plan.name == name
                    || format!("{}/{}", p.plan.namespace, p.plan.name) == name
                    || p.netns == name
            })
            .map(|p| p.netns.clone())
    }
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}
