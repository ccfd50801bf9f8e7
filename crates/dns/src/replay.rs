//! Answers from the zone, replayed: the same query from the same view gets the same bytes
//! until the views change, so a UDP listener keeps the encoded responses it sent and answers
//! a repeated query by copying one, with the query's ID and the case of its name put in.
//!
//! The key is the view's name and the whole query except its ID, the name in lower case: the
//! flags, the counts, the question and any EDNS record must match byte for byte, so whatever
//! a response depends on (RD, the EDNS payload size that decides truncation, the DO bit) is
//! part of it. Only plain queries (opcode QUERY, one question, no compression in the name)
//! are replayed; anything else takes the full path.
//!
//! Answers from the forwarder's cache are replayed too, with their TTLs lowered by their age
//! as the cache would, until 90 % of the smallest TTL has passed, and never within the last
//! second of it (then the query goes to the forwarder again, which prefetches popular names
//! before they expire, and serves the refreshed answer). Entries are dropped
//! all at once when the views are swapped or [`ENTRIES_MAX`] is reached.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// `coredns_dns_requests_total` and `coredns_dns_responses_total` of this answer (and
    /// `coredns_cache_hits_total` for a cached one).
    counters: Vec<Counter>,
    /// For an answer from the cache: when it was kept, for how long, and its TTL fields.
    aging: Option<Aging>,
}

struct Aging {
    stored: Instant,
    fresh_for: Duration,
    /// Offset and value of each TTL in the answer and authority sections.
    ttls: Vec<(usize, u32)>,
}

/// Where an answer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The view's zone: the same until the views change.
    Zone,
    /// The forwarder's cache: TTLs count down.
    Cache,
}

/// How long an answer from the cache whose smallest TTL is `ttl_s` is replayed: 90 % of it,
/// and never past `ttl_s - 1` seconds, because the cache ages TTLs in whole seconds, so the
/// entry behind the answer may expire up to a second before the TTL says (replaying it longer
/// would serve an answer the cache has dropped or refreshed). `None`: not replayed.
fn fresh_for(ttl_s: u32) -> Option<Duration> {
    let ttl = Duration::from_secs(u64::from(ttl_s));
    Some((ttl * 9 / 10).min(ttl.checked_sub(Duration::from_secs(1))?)).filter(|d| !d.is_zero())
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

/// The end of the name starting at `i` (labels, or a compression pointer).
fn skip_name(b: &[u8], mut i: usize) -> Option<usize> {
    loop {
        let l = *b.get(i)?;
        match l {
            0 => return Some(i + 1),
            l if l & 0xc0 == 0xc0 => return Some(i + 2),
            l if l > 63 => return None,
            l => i += 1 + usize::from(l),
        }
    }
}

/// Offset and value of the TTL of every record in the answer and authority sections of a
/// wire message; `None` when it does not parse. (Public for the fuzz targets only.)
#[doc(hidden)]
pub fn ttl_fields(b: &[u8]) -> Option<Vec<(usize, u32)>> {
    let count = |i: usize| {
        Some(usize::from(u16::from_be_bytes([
            *b.get(i)?,
            *b.get(i + 1)?,
        ])))
    };
    let (qd, an, ns) = (count(4)?, count(6)?, count(8)?);
    let mut i = HEADER;
    for _ in 0..qd {
        i = skip_name(b, i)? + 4;
    }
    let mut out = Vec::with_capacity(an + ns);
    for _ in 0..an + ns {
        i = skip_name(b, i)?;
        let fixed = b.get(i..i + 10)?;
        out.push((
            i + 4,
            u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]),
        ));
        i += 10 + usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
    }
    (i <= b.len()).then_some(out)
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
        let age = entry.aging.as_ref().map(|a| a.stored.elapsed());
        if let (Some(a), Some(age)) = (&entry.aging, age)
            && age >= a.fresh_for
        {
            self.entries.remove(self.key.as_slice());
            return false;
        }
        for c in &entry.counters {
            c.inc();
        }
        self.out.clear();
        self.out.extend_from_slice(&entry.response);
        self.out[..2].copy_from_slice(&packet[..2]);
        self.out[HEADER..HEADER + len].copy_from_slice(&packet[HEADER..HEADER + len]);
        if let (Some(a), Some(age)) = (&entry.aging, age) {
            let age = u32::try_from(age.as_secs()).unwrap_or(u32::MAX);
            for &(at, ttl) in &a.ttls {
                self.out[at..at + 4].copy_from_slice(&ttl.saturating_sub(age).to_be_bytes());
            }
        }
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
        source: Source,
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
        let aging = match source {
            Source::Zone => None,
            Source::Cache => {
                let Some(ttls) = ttl_fields(response) else {
                    return;
                };
                // Without a TTL there is no telling how long the answer stays fresh.
                let Some(min) = ttls.iter().map(|&(_, t)| t).min().filter(|&t| t > 0) else {
                    return;
                };
                let Some(fresh_for) = fresh_for(min) else {
                    return;
                };
                Some(Aging {
                    stored: Instant::now(),
                    fresh_for,
                    ttls,
                })
            }
        };
        if self.entries.len() >= ENTRIES_MAX {
            self.entries.clear();
        }
        let mut counters = Vec::new();
        if let Some(m) = metrics {
            let qtype = u16::from_be_bytes([packet[q.end], packet[q.end + 1]]);
            let rcode = hickory_proto::op::ResponseCode::from(0, response[3] & 0x0f);
            counters.push(
                m.requests
                    .get_or_create(&RequestLabels {
                        proto: "udp".into(),
                        view: view.to_string(),
                        qtype: crate::metrics::qtype_label(hickory_proto::rr::RecordType::from(
                            qtype,
                        ))
                        .into(),
                    })
                    .clone(),
            );
            counters.push(
                m.responses
                    .get_or_create(&ResponseLabels {
                        rcode: crate::server::rcode_name(rcode),
                        view: view.to_string(),
                    })
                    .clone(),
            );
            if source == Source::Cache {
                counters.push(m.cache_hits.clone());
            }
        }
        self.entries.insert(
            self.key.as_slice().into(),
            Entry {
                response: response.into(),
                counters,
                aging,
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
        r.insert(&views, "", &first, &response_to(&first), Source::Zone, None);
        let again = query(0xbeef, "WEB.apps.svc.Cluster.local.");
        assert!(r.answer(&views, "", &again));
        assert_eq!(r.response(), response_to(&again));
        // Another view, another name, or new views: not replayed.
        assert!(!r.answer(&views, "lan", &again));
        assert!(!r.answer(&views, "", &query(2, "db.apps.svc.cluster.local.")));
        assert!(!r.answer(&Arc::new(Views::default()), "", &again));
    }

    #[test]
    fn a_cached_answer_is_replayed_with_its_ttls_and_never_without_one() {
        use hickory_proto::rr::{RData, Record, rdata::A};
        let views = Arc::new(Views::default());
        let mut r = Replay::default();
        let q = query(1, "example.org.");
        let mut m = Message::from_vec(&q).expect("parses");
        m.metadata.message_type = MessageType::Response;
        let name = Name::from_ascii("example.org.").expect("name");
        m.answers.push(Record::from_rdata(
            name.clone(),
            300,
            RData::A(A::new(192, 0, 2, 1)),
        ));
        m.answers
            .push(Record::from_rdata(name, 60, RData::A(A::new(192, 0, 2, 2))));
        let resp = m.to_vec().expect("encodes");
        let fields = ttl_fields(&resp).expect("walks");
        assert_eq!(
            fields.iter().map(|f| f.1).collect::<Vec<_>>(),
            vec![300, 60]
        );
        r.insert(&views, "", &q, &resp, Source::Cache, None);
        assert!(r.answer(&views, "", &query(9, "example.org.")));
        let again = Message::from_vec(r.response()).expect("parses");
        assert_eq!(
            again.answers.iter().map(|a| a.ttl).collect::<Vec<_>>(),
            vec![300, 60]
        );
        assert_eq!(again.metadata.id, 9);
        // A cached answer without records (no TTL) is not kept.
        let other = query(1, "empty.org.");
        let mut e2 = Message::from_vec(&other).expect("parses");
        e2.metadata.message_type = MessageType::Response;
        r.insert(
            &views,
            "",
            &other,
            &e2.to_vec().expect("encodes"),
            Source::Cache,
            None,
        );
        assert!(!r.answer(&views, "", &other));
    }

    /// A cached answer showing TTL 1 may come from an entry with a few milliseconds left, so
    /// it is not replayed at all; long TTLs keep their 90 %.
    #[test]
    fn a_cached_answer_is_never_replayed_past_what_its_ttl_can_promise() {
        let cases = [0, 1, 2, 5, 9, 10, 300].map(|t| (t, fresh_for(t).map(|d| d.as_millis())));
        assert_eq!(
            cases,
            [
                (0, None),
                (1, None),
                (2, Some(1000)),
                (5, Some(4000)),
                (9, Some(8000)),
                (10, Some(9000)),
                (300, Some(270_000)),
            ]
        );
    }

    #[test]
    fn only_plain_queries_are_kept() {
        let views = Arc::new(Views::default());
        let mut r = Replay::default();
        let mut q = query(1, "a.b.");
        q[2] |= 0x80; // a response, not a query
        r.insert(&views, "", &q, &response_to(&q), Source::Zone, None);
        // A response that does not echo the question is not kept either.
        let q = query(1, "a.b.");
        r.insert(&views, "", &q, &q[..HEADER], Source::Zone, None);
        assert!(r.entries.is_empty());
        // Garbage never panics.
        for n in 0..64u8 {
            let junk: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37)).collect();
            r.insert(&views, "", &junk, &junk, Source::Cache, None);
            let _ = r.answer(&views, "", &junk);
        }
    }
}
