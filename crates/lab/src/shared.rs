//! The supervisor's side of the lab's shared state (`lab up --state etcd` or `--state file`):
//! it publishes the objects the agents serve (the user's manifests and the lab's pods, one
//! generation per reconcile) and keeps the assignments document with the same function the
//! agents use. The etcd members listen on the LAN, so the connection lives on a thread inside
//! a namespace on the LAN (the client's), with a runtime of its own; each call is a job run
//! there.

use std::path::PathBuf;
use std::sync::mpsc;

use anyhow::{Context, Result, bail};
use store::state::{Backend, Location};

type Job = Box<dyn FnOnce(&tokio::runtime::Runtime, &dyn Backend) + Send>;

/// A connection to the lab's shared state from inside the LAN.
pub struct Shared {
    jobs: mpsc::Sender<Job>,
}

impl Shared {
    /// Connects from the namespace `netns` to the backend at `location`.
    pub fn start(netns: &str, location: Location) -> Result<Shared> {
        let path = PathBuf::from(crate::netns::NETNS_DIR).join(netns);
        let file = std::fs::File::open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let netns = netns.to_string();
        std::thread::Builder::new()
            .name("lab-state".into())
            .spawn(move || {
                let opened = (|| {
                    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                        .with_context(|| format!("cannot enter {netns}"))?;
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    let b = rt
                        .block_on(store::state::open(&location))
                        .context("opening the lab's shared state")?;
                    anyhow::Ok((rt, b))
                })();
                let (rt, b) = match opened {
                    Ok(v) => {
                        let _ = ready_tx.send(Ok(()));
                        v
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                for job in rx {
                    job(&rt, b.as_ref());
                }
            })?;
        ready_rx
            .recv()
            .unwrap_or_else(|_| bail!("the lab's state thread stopped"))?;
        Ok(Shared { jobs })
    }

    /// Runs `f` on the connection's thread and returns what it returns.
    pub fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&tokio::runtime::Runtime, &dyn Backend) -> T + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = mpsc::channel();
        self.jobs
            .send(Box::new(move |rt, b| {
                let _ = tx.send(f(rt, b));
            }))
            .map_err(|_| anyhow::anyhow!("the lab's state thread stopped"))?;
        rx.recv()
            .map_err(|_| anyhow::anyhow!("the lab's state thread stopped"))
    }

    /// Publishes what `roots` hold as the next generation and brings the assignments document
    /// up to it; returns the assignments.
    pub fn publish_and_assign(
        &self,
        roots: &[PathBuf],
        opts: &store::Options,
        service_cidr: ipnet::Ipv4Net,
    ) -> Result<fabric::Assignments> {
        let raws = store::state::manifests::documents(roots, opts).map_err(|errors| {
            anyhow::anyhow!(
                "not published ({} errors): {}",
                errors.len(),
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        })?;
        let snapshot = model::Snapshot::build(raws.clone(), Vec::new());
        self.call(move |rt, b| {
            rt.block_on(async {
                let p = store::state::manifests::publish(b, &raws).await?;
                let (a, _) = fabric::shared::update(
                    b,
                    &snapshot,
                    p.generation,
                    service_cidr,
                    fabric::assign::NODE_PORT_RANGE_DEFAULT,
                )
                .await?;
                Ok::<_, store::state::Error>(a)
            })
        })?
        .context("the lab's shared state")
    }
}
