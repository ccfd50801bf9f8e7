//! What the DNS server tells an observer about each query it answered: one [`QueryRecord`]
//! per query, handed to the [`QueryObserver`] in [`crate::server::Ops`].
//!
//! Plain values, no wire types: the binary turns records into flows without knowing DNS
//! messages (hickory stays inside this crate). Records are built only when an observer is
//! set; the observer runs on the answering task and must not block.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// One query and its answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryRecord {
    /// When the query was read.
    pub started: SystemTime,
    /// From reading the query to the response being ready.
    pub latency: Duration,
    pub client: SocketAddr,
    /// The address the query came in on.
    pub server: SocketAddr,
    /// `udp` or `tcp`.
    pub transport: &'static str,
    /// The view that answered ("" for the cluster zone everyone else gets).
    pub view: String,
    /// The name asked, as the client wrote it, with the trailing dot.
    pub query: String,
    /// Record types asked (`A`, `AAAA`, ...).
    pub qtypes: Vec<String>,
    /// The response code (0 NOERROR, 3 NXDOMAIN, ...).
    pub rcode: u16,
    /// Addresses in the answer section.
    pub ips: Vec<IpAddr>,
    /// CNAME targets in the answer section.
    pub cnames: Vec<String>,
    /// Types of the answer records.
    pub rrtypes: Vec<String>,
    /// The smallest TTL of the answer records (0 when none).
    pub ttl: u32,
    /// Answered by the forwarder (upstream or its cache) rather than a local zone.
    pub forwarded: bool,
}

/// Receives a record per answered query.
pub trait QueryObserver: Send + Sync {
    fn query(&self, record: QueryRecord);
}

impl<F: Fn(QueryRecord) + Send + Sync> QueryObserver for F {
    fn query(&self, record: QueryRecord) {
        self(record)
    }
}

/// A shareable observer, for [`crate::server::Ops`].
#[derive(Clone)]
pub struct Observer(pub Arc<dyn QueryObserver>);

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}
