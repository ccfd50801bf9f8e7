//! The cluster's [`Assignments`] (cluster IPs, node ports, LB-IPAM addresses) kept in the
//! state backend, where every agent (and the lab's supervisor) updates them with the same
//! function: read the document and its revision, run [`assign`] from it, and swap it at that
//! revision; another writer in between makes it read again. Nothing is handed out twice,
//! because there is one document and [`assign`] never gives a value held by another Service.
//!
//! The document names the manifests generation it was computed for. A writer on an older
//! generation than the document's does not write (it would drop Services it has not seen yet):
//! it takes the document as it is, and its newer snapshot arrives shortly. Writers on the
//! same generation compute the same document ([`assign`] keeps what the document holds), so
//! at most one of them writes.

use std::ops::RangeInclusive;

use ipnet::Ipv4Net;
use model::Snapshot;
use serde::{Deserialize, Serialize};
use store::state::{Backend, Error, alloc::ROOT};

use crate::assign::{Assignments, assign};

/// How many times an update reads again after losing a race.
pub const ATTEMPTS_MAX: usize = 16;

/// Where the document lives.
pub fn key() -> String {
    format!("{ROOT}assignments")
}

/// The document.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Document {
    /// The manifests generation the assignments were computed for.
    pub generation: u64,
    pub assignments: Assignments,
}

/// What an update did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// This writer's swap stored its assignments.
    Wrote,
    /// The document already said this.
    Unchanged,
    /// The document is for a newer generation than this writer's: taken as it is.
    Newer(u64),
}

/// Reads the document (none: nothing assigned yet) and its revision.
pub async fn read(b: &dyn Backend) -> Result<Option<(Document, i64)>, Error> {
    let Some(kv) = b.get(&key()).await? else {
        return Ok(None);
    };
    let doc: Document = serde_json::from_slice(&kv.value).map_err(|e| {
        Error::Refused(format!(
            "{}: not an assignments document ({e}); repair it or delete it to assign anew",
            kv.key
        ))
    })?;
    Ok(Some((doc, kv.mod_revision)))
}

/// Brings the document up to `snapshot` (of published manifests `generation`, at least 1) and
/// returns the assignments to compile with, and what this call did.
pub async fn update(
    b: &dyn Backend,
    snapshot: &Snapshot,
    generation: u64,
    service_cidr: Ipv4Net,
    node_ports: RangeInclusive<u16>,
) -> Result<(Assignments, Outcome), Error> {
    if generation == 0 {
        // Writers without a generation cannot tell whose snapshot is newer.
        return Err(Error::Refused(format!(
            "{}: only writers on a published manifests generation update it",
            key()
        )));
    }
    for _ in 0..ATTEMPTS_MAX {
        let (doc, revision) = read(b).await?.unwrap_or_default();
        if doc.generation > generation {
            let newer = doc.generation;
            return Ok((doc.assignments, Outcome::Newer(newer)));
        }
        let mut next = assign(snapshot, &doc.assignments, service_cidr, node_ports.clone());
        let problems = std::mem::take(&mut next.problems);
        if revision != 0 && doc.generation == generation && next == doc.assignments {
            next.problems = problems;
            return Ok((next, Outcome::Unchanged));
        }
        let text = serde_json::to_vec(&Document {
            generation,
            assignments: next.clone(),
        })
        .map_err(|e| Error::Refused(e.to_string()))?;
        if b.swap(&key(), revision, &text, None).await? {
            next.problems = problems;
            return Ok((next, Outcome::Wrote));
        }
    }
    Err(Error::Unavailable(format!(
        "{}: other writers overtook {ATTEMPTS_MAX} updates in a row",
        key()
    )))
}

#[cfg(test)]
mod tests {
    use store::state::memory::Memory;

    use super::*;
    use crate::testing::snapshot;

    const CIDR: &str = "10.96.0.0/16";

    fn services(names: &[&str]) -> Snapshot {
        let text: String = names
            .iter()
            .map(|n| {
                format!(
                    "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {n}}}\nspec:\n  type: NodePort\n  ports: [{{port: 80}}]\n"
                )
            })
            .collect();
        snapshot(&text)
    }

    async fn up(b: &Memory, s: &Snapshot, generation: u64) -> (Assignments, Outcome) {
        update(
            b,
            s,
            generation,
            CIDR.parse().expect("cidr"),
            crate::assign::NODE_PORT_RANGE_DEFAULT,
        )
        .await
        .expect("update")
    }

    #[tokio::test]
    async fn one_writer_per_generation_and_an_older_one_never_writes() {
        let b = Memory::default();
        let one = services(&["a", "b"]);
        let (a1, o) = up(&b, &one, 1).await;
        assert_eq!(o, Outcome::Wrote);
        assert!(a1.cluster_ip("apps", "a").is_some());
        // A second writer on the same generation computes the same and writes nothing.
        let (again, o) = up(&b, &one, 1).await;
        assert_eq!((again.clone(), o), (a1.clone(), Outcome::Unchanged));
        // Generation 2 adds c and keeps a and b.
        let two = services(&["a", "b", "c"]);
        let (a2, o) = up(&b, &two, 2).await;
        assert_eq!(o, Outcome::Wrote);
        assert_eq!(a2.cluster_ip("apps", "a"), a1.cluster_ip("apps", "a"));
        assert!(a2.cluster_ip("apps", "c").is_some());
        // A writer still on generation 1 (it has not seen c) takes generation 2's document.
        let (stale, o) = up(&b, &one, 1).await;
        assert_eq!(o, Outcome::Newer(2));
        assert_eq!(stale, a2);
        let (doc, _) = read(&b).await.expect("read").expect("doc");
        assert_eq!(doc.generation, 2);
        // A writer without a published generation is refused.
        let e = update(
            &b,
            &two,
            0,
            CIDR.parse().expect("cidr"),
            crate::assign::NODE_PORT_RANGE_DEFAULT,
        )
        .await
        .expect_err("no generation");
        assert!(e.to_string().contains("published"), "{e}");
        assert!(doc.assignments.cluster_ip("apps", "c").is_some());
    }

    #[tokio::test]
    async fn a_corrupt_document_is_an_error_that_names_it() {
        let b = Memory::default();
        assert!(b.create(&key(), b"{not json", None).await.expect("put"));
        let e = update(
            &b,
            &services(&["a"]),
            1,
            CIDR.parse().expect("cidr"),
            crate::assign::NODE_PORT_RANGE_DEFAULT,
        )
        .await
        .expect_err("corrupt");
        assert!(e.to_string().contains("/trellis/v1/assignments"), "{e}");
    }
}
