//! What trellis keeps in the state backend, and how it is claimed. Everything lives under
//! one versioned prefix ([`ROOT`]):
//!
//! | key | value | how |
//! |---|---|---|
//! | `nodes/<node>` | the node's registration (JSON) | on the node's own lease, kept alive by its agent ([`register_node`]) |
//! | `podcidr/<cidr>` | the node that owns it | create-if-absent ([`claim_pod_cidr`]) |
//! | `claims/<kind>/<item>` | the owner (a node, `ns/service`) | create-if-absent ([`claim`]); released by its owner only ([`release`]) |
//!
//! Create-if-absent is one transaction: of any number of agents claiming one item at once,
//! exactly one wins, whatever the backend's members see.

use std::time::Duration;

use ipnet::Ipv4Net;

use super::{Backend, Error, LeaseId};

/// The prefix of every key trellis writes (its version is the layout's).
pub const ROOT: &str = "/trellis/v1/";
/// How long a node's registration outlives its agent (Cilium's kvstore leases are 15 min;
/// trellis's agents renew every third of this).
pub const NODE_TTL_DEFAULT: Duration = Duration::from_secs(15);
/// Pod CIDRs tried per claim before giving up (a /16 pool of /24s has 256).
pub const POD_CIDRS_MAX: usize = 65_536;

fn key(parts: &[&str]) -> String {
    let mut k = String::from(ROOT);
    k.push_str(&parts.join("/"));
    k
}

/// A name that becomes part of a key: no `/` (it would make another key's prefix), not empty,
/// bounded.
fn check_name(what: &str, name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > 253 || name.contains('/') || name.contains('\0') {
        return Err(Error::Refused(format!(
            "{what} {name:?}: 1 to 253 characters, no `/`"
        )));
    }
    Ok(())
}

/// A node's registration: its key, on a lease the caller keeps alive
/// ([`Registration::renew`]); when the agent stops renewing, the key goes after the TTL.
#[derive(Debug)]
pub struct Registration {
    pub node: String,
    pub lease: LeaseId,
    pub ttl: Duration,
}

/// Registers `node` with `info`. Fails when a live registration of that name exists (two
/// agents claiming one node name): the caller says so and does not take the node over.
pub async fn register_node(
    b: &dyn Backend,
    node: &str,
    info: &[u8],
    ttl: Duration,
) -> Result<Registration, Error> {
    check_name("node", node)?;
    let lease = b.grant(ttl).await?;
    if b.create(&key(&["nodes", node]), info, Some(lease)).await? {
        return Ok(Registration {
            node: node.to_string(),
            lease,
            ttl,
        });
    }
    let _ = b.revoke(lease).await;
    Err(Error::Refused(format!(
        "node {node:?} is registered by another live agent (its key goes {} s after that agent stops)",
        ttl.as_secs()
    )))
}

impl Registration {
    /// Renews the registration; `Ok(false)` when it had already expired (the node must
    /// register again: what it claimed on the lease is gone).
    pub async fn renew(&self, b: &dyn Backend) -> Result<bool, Error> {
        Ok(b.keep_alive(self.lease).await?.is_some())
    }

    /// Ends the registration now (a clean shutdown).
    pub async fn end(self, b: &dyn Backend) -> Result<(), Error> {
        b.revoke(self.lease).await
    }
}

/// The live nodes and their registrations.
pub async fn nodes(b: &dyn Backend) -> Result<Vec<(String, Vec<u8>)>, Error> {
    let prefix = key(&["nodes", ""]);
    Ok(b.list(&prefix)
        .await?
        .kvs
        .into_iter()
        .map(|kv| (kv.key[prefix.len()..].to_string(), kv.value))
        .collect())
}

/// The pod CIDR of `node`: the one it already owns, else the first free `/len` of `pool`,
/// claimed by create-if-absent (so two nodes never get the same one).
pub async fn claim_pod_cidr(
    b: &dyn Backend,
    node: &str,
    pool: Ipv4Net,
    len: u8,
) -> Result<Ipv4Net, Error> {
    check_name("node", node)?;
    let prefix = key(&["podcidr", ""]);
    let owned = b.list(&prefix).await?;
    let taken: std::collections::BTreeSet<String> = owned
        .kvs
        .iter()
        .map(|kv| kv.key[prefix.len()..].to_string())
        .collect();
    if let Some(kv) = owned.kvs.iter().find(|kv| kv.value == node.as_bytes()) {
        let cidr = kv.key[prefix.len()..].replace('_', "/");
        return cidr
            .parse()
            .map_err(|_| Error::Refused(format!("{}: not a CIDR", kv.key)));
    }
    let subnets = pool
        .subnets(len)
        .map_err(|_| Error::Refused(format!("{pool} has no /{len} subnets")))?;
    for cidr in subnets.take(POD_CIDRS_MAX) {
        // `/` would make a key level; the CIDR is written `10.69.1.0_24`.
        let item = cidr.to_string().replace('/', "_");
        if taken.contains(&item) {
            continue;
        }
        if b.create(&format!("{prefix}{item}"), node.as_bytes(), None)
            .await?
        {
            return Ok(cidr);
        }
    }
    Err(Error::Refused(format!(
        "no /{len} of {pool} is free for node {node}"
    )))
}

/// Claims a pod CIDR chosen elsewhere (the lab's plan, a node's config) for `node`:
/// `Ok(true)` when it is the node's (now or already), `Ok(false)` when another node has it.
pub async fn own_pod_cidr(b: &dyn Backend, node: &str, cidr: Ipv4Net) -> Result<bool, Error> {
    check_name("node", node)?;
    let k = key(&["podcidr", &cidr.to_string().replace('/', "_")]);
    if b.create(&k, node.as_bytes(), None).await? {
        return Ok(true);
    }
    Ok(b.get(&k)
        .await?
        .is_some_and(|kv| kv.value == node.as_bytes()))
}

/// Claims `item` of `kind` (an LB address, a node port) for `owner`: `Ok(true)` when it is
/// the owner's (now or already), `Ok(false)` when another owner has it.
pub async fn claim(b: &dyn Backend, kind: &str, item: &str, owner: &str) -> Result<bool, Error> {
    check_name("kind", kind)?;
    check_name("item", item)?;
    let k = key(&["claims", kind, item]);
    if b.create(&k, owner.as_bytes(), None).await? {
        return Ok(true);
    }
    Ok(b.get(&k)
        .await?
        .is_some_and(|kv| kv.value == owner.as_bytes()))
}

/// Gives `item` back, only if `owner` holds it: `Ok(false)` when someone else does (nothing
/// is changed).
pub async fn release(b: &dyn Backend, kind: &str, item: &str, owner: &str) -> Result<bool, Error> {
    check_name("kind", kind)?;
    check_name("item", item)?;
    let k = key(&["claims", kind, item]);
    match b.get(&k).await? {
        Some(kv) if kv.value == owner.as_bytes() => b.delete(&k, kv.mod_revision).await,
        _ => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::super::memory::Memory;
    use super::*;

    #[tokio::test]
    async fn claims_have_one_owner() {
        let b = Memory::default();
        assert!(
            claim(&b, "lbip", "10.10.30.25", "network/a")
                .await
                .expect("claim")
        );
        assert!(
            claim(&b, "lbip", "10.10.30.25", "network/a")
                .await
                .expect("again")
        );
        assert!(
            !claim(&b, "lbip", "10.10.30.25", "network/b")
                .await
                .expect("taken")
        );
        assert!(
            !release(&b, "lbip", "10.10.30.25", "network/b")
                .await
                .expect("not b's")
        );
        assert!(
            release(&b, "lbip", "10.10.30.25", "network/a")
                .await
                .expect("a's")
        );
        assert!(
            claim(&b, "lbip", "10.10.30.25", "network/b")
                .await
                .expect("free now")
        );
        assert!(claim(&b, "lb/ip", "x", "o").await.is_err(), "a / in a name");
    }

    #[tokio::test]
    async fn pod_cidrs_are_distinct_and_stable() {
        let b = Memory::default();
        let pool: Ipv4Net = "10.69.0.0/22".parse().expect("pool");
        let one = claim_pod_cidr(&b, "node-1", pool, 24).await.expect("one");
        let two = claim_pod_cidr(&b, "node-2", pool, 24).await.expect("two");
        assert_ne!(one, two);
        assert_eq!(claim_pod_cidr(&b, "node-1", pool, 24).await, Ok(one));
        for n in 3..=4 {
            claim_pod_cidr(&b, &format!("node-{n}"), pool, 24)
                .await
                .expect("room for four");
        }
        let e = claim_pod_cidr(&b, "node-5", pool, 24)
            .await
            .expect_err("full");
        assert!(e.to_string().contains("no /24"), "{e}");
    }

    #[tokio::test]
    async fn a_node_name_is_registered_once() {
        let b = Memory::default();
        let r = register_node(&b, "node-1", b"{}", Duration::from_secs(15))
            .await
            .expect("register");
        let e = register_node(&b, "node-1", b"{}", Duration::from_secs(15))
            .await
            .expect_err("taken");
        assert!(e.to_string().contains("another live agent"), "{e}");
        assert!(r.renew(&b).await.expect("renew"));
        assert_eq!(nodes(&b).await.expect("nodes").len(), 1);
        r.end(&b).await.expect("end");
        assert!(nodes(&b).await.expect("nodes").is_empty());
    }
}
