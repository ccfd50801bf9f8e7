//! Leases with one holder each, in the shared state backend: the lease `name` is the key
//! `/trellis/v1/leases/<name>` holding the holder's name, written on a backend lease of the
//! lease's duration (whole seconds, at least the backend's minimum). The holder renews its
//! backend lease; when it stops, the key goes with the lease and the next node to try takes
//! it. A node that restarts finds its own key and adopts the backend lease under it.
//!
//! [`StateLeases`] is synchronous (the L2 announcer's loop is): it runs the calls on a
//! current-thread runtime of its own, each bounded by the backend's request timeout.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::{Backend, Error, LeaseId, alloc};
use crate::lease::LeaseStore;

/// Leases in a state backend.
pub struct StateLeases {
    backend: Arc<dyn Backend>,
    rt: tokio::runtime::Runtime,
    /// The backend lease under each lease this process holds.
    held: BTreeMap<String, LeaseId>,
}

impl std::fmt::Debug for StateLeases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateLeases")
            .field("held", &self.held)
            .finish()
    }
}

fn io(e: Error) -> std::io::Error {
    std::io::Error::other(e)
}

fn key(name: &str) -> String {
    format!("{}leases/{name}", alloc::ROOT)
}

impl StateLeases {
    /// Opens the backend at `location` on this store's own runtime (a gRPC channel belongs
    /// to the runtime it was made on).
    pub fn open(location: &super::Location) -> std::io::Result<StateLeases> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let backend = rt.block_on(super::open(location)).map_err(io)?;
        Ok(StateLeases {
            backend,
            rt,
            held: BTreeMap::new(),
        })
    }

    /// Over a backend made elsewhere (one that needs no runtime of its own, as `memory`).
    pub fn new(backend: Arc<dyn Backend>) -> std::io::Result<StateLeases> {
        Ok(StateLeases {
            backend,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
            held: BTreeMap::new(),
        })
    }
}

impl LeaseStore for StateLeases {
    fn acquire_or_renew(
        &mut self,
        name: &str,
        holder: &str,
        duration: Duration,
    ) -> std::io::Result<bool> {
        let b = self.backend.clone();
        let k = key(name);
        let known = self.held.get(name).copied();
        let got: Result<Option<LeaseId>, Error> = self.rt.block_on(async move {
            if let Some(id) = known
                && b.keep_alive(id).await?.is_some()
            {
                return Ok(Some(id));
            }
            // A read first: while another node holds the lease (the common case for all but
            // one node), nothing is written.
            match b.get(&k).await? {
                // Ours from before a restart: adopt the backend lease under it.
                Some(kv) if kv.value == holder.as_bytes() && kv.lease != 0 => {
                    Ok(b.keep_alive(kv.lease).await?.map(|_| kv.lease))
                }
                Some(_) => Ok(None),
                None => {
                    let id = b.grant(duration).await?;
                    if b.create(&k, holder.as_bytes(), Some(id)).await? {
                        return Ok(Some(id));
                    }
                    let _ = b.revoke(id).await;
                    Ok(None)
                }
            }
        });
        match got.map_err(io)? {
            Some(id) => {
                self.held.insert(name.to_string(), id);
                Ok(true)
            }
            None => {
                self.held.remove(name);
                Ok(false)
            }
        }
    }

    fn release(&mut self, name: &str, _holder: &str) -> std::io::Result<()> {
        let Some(id) = self.held.remove(name) else {
            return Ok(());
        };
        let b = self.backend.clone();
        self.rt
            .block_on(async move { b.revoke(id).await })
            .map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::super::memory::Memory;
    use super::*;

    #[test]
    fn one_holder_and_a_takeover_after_release() {
        let b: Arc<dyn Backend> = Arc::new(Memory::default());
        let mut one = StateLeases::new(b.clone()).expect("leases");
        let mut two = StateLeases::new(b.clone()).expect("leases");
        let d = Duration::from_secs(5);
        assert!(one.acquire_or_renew("l2-a", "node-1", d).expect("take"));
        assert!(!two.acquire_or_renew("l2-a", "node-2", d).expect("held"));
        assert!(one.acquire_or_renew("l2-a", "node-1", d).expect("renew"));
        // A restarted holder (no memory of its lease) adopts its own key.
        let mut again = StateLeases::new(b.clone()).expect("leases");
        assert!(again.acquire_or_renew("l2-a", "node-1", d).expect("adopt"));
        again.release("l2-a", "node-1").expect("release");
        assert!(
            two.acquire_or_renew("l2-a", "node-2", d)
                .expect("taken over")
        );
    }
}
