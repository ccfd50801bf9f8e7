//! An agent's node in the shared state (`state:` in its configuration, e.g.
//! `etcd://10.10.30.11:2379,...`): its registration on its own lease, kept alive, and the
//! pod CIDR it was given, claimed so that no other node can hold it. Runs on a thread of its
//! own; the datapath never waits for it. When the backend cannot be reached the agent keeps
//! forwarding with what it has and says so once; when the registration expired (the agent
//! was cut off longer than the lease), it registers again.

use std::time::Duration;

use ipnet::Ipv4Net;
use store::state::{Backend, Error, Location, alloc};

/// How often a registration is renewed: a third of its time to live.
fn renew_every(ttl: Duration) -> Duration {
    ttl / 3
}

/// How long to wait before trying an unreachable backend again.
const RETRY: Duration = Duration::from_secs(1);

/// Starts keeping `node` registered in the backend `state` names.
pub fn start(
    state: &str,
    node: &str,
    info: serde_json::Value,
    pod_cidr: Ipv4Net,
) -> anyhow::Result<()> {
    let location: Location = state.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    let node = node.to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("registry".into())
        .spawn(move || rt.block_on(keep(location, node, info, pod_cidr)))?;
    Ok(())
}

async fn keep(location: Location, node: String, info: serde_json::Value, pod_cidr: Ipv4Net) {
    let b = match store::state::open(&location).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(node = %node, error = %e, "state backend: cannot open; not registered");
            return;
        }
    };
    let info = info.to_string().into_bytes();
    let ttl = alloc::NODE_TTL_DEFAULT;
    let mut unavailable = false;
    let mut say = |r: &Result<(), Error>| match r {
        Ok(()) if unavailable => {
            unavailable = false;
            tracing::info!(node = %node, "state backend: available again");
        }
        Err(e @ Error::Unavailable(_)) if !unavailable => {
            unavailable = true;
            tracing::warn!(node = %node, error = %e, "state backend unavailable; the datapath keeps its maps");
        }
        _ => {}
    };
    loop {
        let reg = match alloc::register_node(b.as_ref(), &node, &info, ttl).await {
            Ok(r) => {
                say(&Ok(()));
                eprintln!(
                    "node {node}: registered in the state backend (lease {})",
                    r.lease
                );
                r
            }
            Err(e) => {
                if !matches!(e, Error::Unavailable(_)) {
                    tracing::error!(node = %node, error = %e, "state backend: not registered");
                }
                say(&Err(e));
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        claim_cidr(b.as_ref(), &node, pod_cidr).await;
        // Renew until the registration is gone.
        loop {
            tokio::time::sleep(renew_every(ttl)).await;
            match reg.renew(b.as_ref()).await {
                Ok(true) => say(&Ok(())),
                Ok(false) => {
                    tracing::warn!(node = %node, "state backend: the registration expired; registering again");
                    break;
                }
                Err(e) => say(&Err(e)),
            }
        }
    }
}

/// Claims the node's pod CIDR; another node holding it is an error said loudly (two nodes
/// routing one pod range), retried until the backend answers.
async fn claim_cidr(b: &dyn Backend, node: &str, cidr: Ipv4Net) {
    loop {
        match alloc::own_pod_cidr(b, node, cidr).await {
            Ok(true) => {
                eprintln!("node {node}: pod CIDR {cidr} claimed in the state backend");
                return;
            }
            Ok(false) => {
                tracing::error!(node = %node, %cidr, "state backend: this pod CIDR is claimed by another node");
                return;
            }
            Err(e) => {
                tracing::warn!(node = %node, error = %e, "state backend: pod CIDR not claimed yet");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}
