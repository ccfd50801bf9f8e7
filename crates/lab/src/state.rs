//! What a running lab looks like, written by its supervisor to `<state dir>/state.json` and
//! read by `lab status`, `lab exec` and `lab down` (which must also work after a crash); and
//! the cluster IP / node port / LoadBalancer assignments (`assignments.json`), written by the
//! supervisor and read by it at start and by every agent.
//!
//! Every file here is written with [`store::durable::write`]. A file that is there but does
//! not parse is an error naming it: the supervisor refuses to start over it (rather than hand
//! every Service a new address) and an agent keeps the assignments it last read whole.

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
    /// The ScaledObjects the lab's scaler runs, and what each decided.
    #[serde(default)]
    pub scaling: Vec<ScalingRow>,
    /// The etcd members (`lab up --state etcd`); none with the embedded state.
    #[serde(default)]
    pub etcd: Vec<EtcdMember>,
    /// The state backend the agents share (`--state` as an agent takes it: `etcd://...` or
    /// `file:///...`); none: the embedded files (assignments.json, lease files).
    #[serde(default)]
    pub shared: Option<String>,
    /// The supervisor finished bringing the lab up.
    pub ready: bool,
}

/// One etcd member of the lab.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EtcdMember {
    pub node: String,
    /// `ip:port` its clients use (on the LAN).
    pub client: String,
    pub pid: u32,
}

/// One ScaledObject as `lab status` shows it: its target, the replicas it set, KEDA's
/// conditions and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScalingRow {
    /// `namespace/name` of the ScaledObject.
    pub scaled_object: String,
    /// `Deployment namespace/name` (a Gateway's proxy when no Deployment has the name).
    pub target: String,
    /// The target's replicas now (`None`: not found).
    pub replicas: Option<u32>,
    pub ready: bool,
    pub active: bool,
    pub fallback: bool,
    pub paused: bool,
    pub reason: String,
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
    /// Every interface as `k8s.v1.cni.cncf.io/network-status` lists it (cluster network first).
    #[serde(default)]
    pub network_status: Vec<serde_json::Value>,
    /// Why the pod could not start (it holds no namespace or address then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
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

    /// Writes durably ([`write_file`]), so readers never see half a file.
    pub fn write(&self, state_dir: &Path) -> Result<()> {
        write_file(&Self::path(state_dir), &serde_json::to_vec_pretty(self)?)
    }

    /// The namespace of a node, pod (`ns/name` or `name`) or `client`.
    pub fn netns_of(&self, name: &str) -> Option<String> {
        if name == "client" {
            return Some(self.client.netns.clone());
        }
        if name == "lan" {
            return Some(self.lan_netns.clone());
        }
        if crate::cluster::VLANS.iter().any(|v| v.name == name) {
            return Some(format!("{}{name}", self.prefix));
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

/// Replaces `path` with `bytes` durably ([`store::durable::write`]: temp file, fsync, rename,
/// fsync of the directory).
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(store::durable::write(path, bytes)?)
}

/// The assignments stored at `path`; `None` when there is no file. A file that does not parse
/// is an error naming it.
pub fn read_assignments(path: &Path) -> Result<Option<fabric::Assignments>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .with_context(|| format!("{}: not whole assignments JSON", path.display()))
}

pub fn write_assignments(path: &Path, assignments: &fabric::Assignments) -> Result<()> {
    write_file(path, &serde_json::to_vec_pretty(assignments)?)
}

/// The assignments an agent compiles with: the file as last read whole. A file that went
/// missing or bad after that leaves the last good assignments current (and is reported by
/// [`AssignmentsView::refresh`]), so Services keep their addresses instead of dropping out of
/// the maps.
#[derive(Debug, Default)]
pub struct AssignmentsView {
    path: Option<PathBuf>,
    last_good: Option<fabric::Assignments>,
}

impl AssignmentsView {
    /// `None`: the agent runs without assignments (addresses only from manifests).
    pub fn new(path: Option<PathBuf>) -> AssignmentsView {
        AssignmentsView {
            path,
            last_good: None,
        }
    }

    /// Reads the file again. On error (it names the file) the last good assignments stay.
    pub fn refresh(&mut self) -> Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        match read_assignments(path)? {
            Some(a) => self.last_good = Some(a),
            None if self.last_good.is_some() => {
                anyhow::bail!("{}: gone after it was read", path.display())
            }
            None => {}
        }
        Ok(())
    }

    pub fn current(&self) -> Option<&fabric::Assignments> {
        self.last_good.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assigned(ip: [u8; 4]) -> fabric::Assignments {
        let mut a = fabric::Assignments::default();
        a.services.insert(
            "apps/web".into(),
            fabric::ServiceAssignment {
                cluster_ip: Some(ip.into()),
                ..Default::default()
            },
        );
        a
    }

    /// Before: a file that did not parse read as "no assignments" (the supervisor then handed
    /// out every address anew, agents dropped every Service without one in its manifest).
    #[test]
    fn a_corrupt_assignments_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(ASSIGNMENTS_FILE);
        assert!(read_assignments(&path).expect("no file yet").is_none());
        write_assignments(&path, &assigned([10, 96, 0, 20])).expect("write");
        assert_eq!(
            read_assignments(&path).expect("read"),
            Some(assigned([10, 96, 0, 20]))
        );
        for torn in [
            &b"{\"services\": {\"apps/web\": {\"cluster_"[..],
            b"",
            b"null",
        ] {
            std::fs::write(&path, torn).expect("tear");
            let err = read_assignments(&path).expect_err("torn");
            assert!(
                format!("{err:#}").contains(&path.display().to_string()),
                "{err:#}"
            );
        }
    }

    #[test]
    fn an_agent_keeps_the_last_good_assignments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(ASSIGNMENTS_FILE);
        let mut view = AssignmentsView::new(Some(path.clone()));
        view.refresh().expect("no file yet is fine");
        assert!(view.current().is_none());
        write_assignments(&path, &assigned([10, 96, 0, 20])).expect("write");
        view.refresh().expect("read");
        std::fs::write(&path, b"{\"services\": {").expect("tear");
        let err = view.refresh().expect_err("torn");
        assert!(format!("{err:#}").contains(&path.display().to_string()));
        assert_eq!(view.current(), Some(&assigned([10, 96, 0, 20])));
        std::fs::remove_file(&path).expect("remove");
        view.refresh().expect_err("gone");
        assert_eq!(view.current(), Some(&assigned([10, 96, 0, 20])));
        write_assignments(&path, &assigned([10, 96, 0, 21])).expect("write");
        view.refresh().expect("whole again");
        assert_eq!(view.current(), Some(&assigned([10, 96, 0, 21])));
    }
}
