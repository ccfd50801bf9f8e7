//! Answers from the zone, replayed: the same query from the same view gets the same bytes
//! until the views change, so a UDP listener keeps the encoded responses it sent and answers
//! a repeated query by copying one, with the query's ID and the case of its name put in.
//!
//! The key is the view's name and the whole query except its ID, the name in lower case: the
//! flags, the counts, the question and any EDNS record must match byte for byte, so whatever
//! a response depends on (RD, the EDNS payload size that decides truncation, the DO bit) is
//! part of it. Only plain queries (opcode QUERY, one question, no compression in the name)
//! are replayed; anything else, and every answer from the forwarder, takes the full path.
//! Entries are dropped all at once when the views are swapped or [`ENTRIES_MAX`] is reached.

use std::collections::HashMap;
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;

use crate::metrics::{Metrics, RequestLabels, ResponseLabels};
use crate::views::Views;

/// Responses kept per listener (each at most a UDP payload, 1232 bytes, plus its key).
pub const ENTRIES_MAX: usize = 16 * 1024;
/// Queries longer than this are not replayed (a plain query is far shorter).
const QUERY_MAX: usize = 512;
const HEADER: usize = 12;

struct Entry {
    response: Box<[u8]>,
    /// `coredns_dns_requests_total` and `coredns_dns_responses_total` of this answer.
    counters: Option<(Counter, Counter)>,
}

/// The responses one listener sent, by query.
#[derive(Default)]
pub struct Replay {
    /// The views the entries were answered from.
    views: Option<Arc<Views>>,
    entries: HashMap<Box<[u8]>, Entry>,
    key: Vec<u8>,
    out: Vec<u8>,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay")
            .field("entries", &self.entries.len())
            .finish_non_exhaustive()
    }
}

/// The length of the question name at the start of `q`, when it is a plain sequence of
/// labels (no compression pointer).
fn name_len(q: &[u8]) -> Option<usize> {
    let mut i = 0;
    loop {
        let l = usize::from(*q.get(i)?);
        if l == 0 {
            return Some(i + 1);
        }
        if l > 63 {
            return None;
        }
        i += 1 + l;
    }
}

impl Replay {
    /// Builds the key of `packet` for `view` into `self.key`; the name's length, or `None`
    /// for a query that is not replayed.
    fn make_key(&mut self, view: &str, packet: &[u8]) -> Option<usize> {
        if packet.len() > QUERY_MAX || packet.len() < HEADER + 5 {
            return None;
        }
        // QR = 0, opcode QUERY, exactly one question, no answers or authorities.
        if packet[2] & 0xf8 != 0 || packet[4..8] != [0, 1, 0, 0] || packet[8..10] != [0, 0] {
            return None;
        }
        let len = name_len(&packet[HEADER..])?;
        if packet.len() < HEADER + len + 4 {
            return None;
        }
        self.key.clear();
        self.key.extend_from_slice(view.as_bytes());
        self.key.push(0);
        self.key.extend_from_slice(&packet[2..HEADER]);
        self.key.extend(
            packet[HEADER..HEADER + len]
                .iter()
                .map(u8::to_ascii_lowercase),
        );
        self.key.extend_from_slice(&packet[HEADER + len..]);
        Some(len)
    }

    /// Forgets everything when `views` are not the ones the entries came from.
    fn check_views(&mut self, views: &Arc<Views>) {
        if !self.views.as_ref().is_some_and(|v| Arc::ptr_eq(v, views)) {
            self.entries.clear();
            self.views = Some(views.clone());
        }
    }

    /// Whether a response to `packet` from `view` was sent before; if so it is now in
    /// [`Replay::response`], counted as a request and a response.
    pub fn answer(&mut self, views: &Arc<Views>, view: &str, packet: &[u8]) -> bool {
        self.check_views(views);
        if self.entries.is_empty() {
            return false;
        }
        let Some(len) = self.make_key(view, packet) else {
            return false;
        };
        let Some(entry) = self.entries.get(self.key.as_slice()) else {
            return false;
        };
        if let Some((req, resp)) = &entry.counters {
            req.inc();
            resp.inc();
        }
        self.out.clear();
        self.out.extend_from_slice(&entry.response);
        self.out[..2].copy_from_slice(&packet[..2]);
        self.out[HEADER..HEADER + len].copy_from_slice(&packet[HEADER..HEADER + len]);
        true
    }

    /// The response [`Replay::answer`] found.
    pub fn response(&self) -> &[u8] {
        &self.out
    }

    /// Keeps `response`, the answer from `view` to `packet`, for the next time.
    pub fn insert(
        &mut self,
        views: &Arc<Views>,
        view: &str,
        packet: &[u8],
        response: &[u8],
        metrics: Option<&Metrics>,
    ) {
        self.check_views(views);
        let Some(len) = self.make_key(view, packet) else {
            return;
        };
        // The response must echo the one question where the query has it.
        let q = HEADER..HEADER + len;
        if response.len() < q.end + 4
            || response[4..6] != [0, 1]
            || !response[q.clone()].eq_ignore_ascii_case(&packet[q.clone()])
        {
            return;
        }
        if self.entries.len() >= ENTRIES_MAX {
            self.entries.clear();
        }
        let counters = metrics.map(|m| {
            let qtype = u16::from_be_bytes([packet[q.end], packet[q.end + 1]]);
            let rcode = hickory_proto::op::ResponseCode::from(0, response[3] & 0x0f);
            (
                m.requests
                    .get_or_create(&RequestLabels {
                        proto: "udp".into(),
                        view: view.to_string(),
                        qtype: hickory_proto::rr::RecordType::from(qtype).to_string(),
                    })
                    .clone(),
                m.responses
                    .get_or_create(&ResponseLabels {
                        rcode: crate::server::rcode_name(rcode),
                        view: view.to_string(),
                    })
                    .clone(),
            )
        });
        self.entries.insert(
            self.key.as_slice().into(),
            Entry {
                response: response.into(),
                counters,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};

    fn query(id: u16, name: &str) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(
            Name::from_ascii(name).expect("name"),
            RecordType::A,
        ));
        m.to_vec().expect("encodes")
    }

    fn response_to(q: &[u8]) -> Vec<u8> {
        let mut r = q.to_vec();
        r[2] |= 0x84;
        r
    }

    #[test]
    fn a_repeated_query_gets_the_same_answer_with_its_own_id_and_case() {
        let views = Arc::new(Views::default());
        let mut r = Replay::default();
        let first = query(1, "web.apps.svc.cluster.local.");
        assert!(!r.answer(&views, "", &first));
        r.insert(&views, "", &first, &response_to(&first), None);
        let again = query(0xbeef, "WEB.apps.svc.Cluster.local.");
        assert!(r.answer(&views, "", &again));
        assert_eq!(r.response(), response_to(&again));
        // Another view, another name, or new views: not replayed.
        assert!(!r.answer(&views, "lan", &again));
        assert!(!r.answer(&views, "", &query(2, "db.apps.svc.cluster.local.")));
        assert!(!r.answer(&Arc::new(Views::default()), "", &again));
    }

    #[test]
    fn only_plain_queries_are_kept() {
        let views = Arc::new(Views::default());
        let mut r = Replay::default();
        let mut q = query(1, "a.b.");
        q[2] |= 0x80; // a response, not a query
        r.insert(&views, "", &q, &response_to(&q), None);
        // A response that does not echo the question is not kept either.
        let q = query(1, "a.b.");
        r.insert(&views, "", &q, &q[..HEADER], None);
        assert!(r.entries.is_empty());
        // Garbage never panics.
        for n in 0..64u8 {
            let junk: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37)).collect();
            r.insert(&views, "", &junk, &junk, None);
            let _ = r.answer(&views, "", &junk);
        }
    }
}
