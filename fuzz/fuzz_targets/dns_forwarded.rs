//! Arbitrary bytes as an upstream's answer to a forwarded query: accepted only when it
//! answers that query (ID and question), then cached, aged, encoded for the client and
//! replayed from the UDP listener's cache.
//!
//! - The cache time is bounded by `CACHE_TTL_MAX`; an aged answer's TTLs are the fresh ones
//!   less the age, never more.
//! - The client's answer fits its transport and carries the client's ID and question.
//! - A cached answer replayed at once is the encoded answer itself.
#![no_main]

use std::sync::Arc;
use std::time::Duration;

use dns::answer::{EDNS_PAYLOAD_MAX, Transport, UDP_PLAIN_MAX, encode};
use dns::forward::{CACHE_TTL_MAX, from_upstream};
use dns::replay::{Replay, Source};
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use libfuzzer_sys::fuzz_target;

fn ttls(m: &Message) -> Vec<u32> {
    m.answers
        .iter()
        .chain(&m.authorities)
        .map(|r| r.ttl)
        .collect()
}

fuzz_target!(|input: (bool, u16, u16, u32, Vec<u8>)| {
    let (own_question, id, client_id, age_s, bytes) = input;
    // The query the forwarder sent: the answer's own ID and question (so that it is taken),
    // or a fixed one (so that most answers are not).
    let (id, q) = match Message::from_vec(&bytes) {
        Ok(m) if own_question && !m.queries.is_empty() => (m.metadata.id, m.queries[0].clone()),
        _ => (
            id,
            Query::query(
                Name::from_ascii("example.org.").expect("name"),
                RecordType::A,
            ),
        ),
    };
    let mut req = Message::new(client_id, MessageType::Query, OpCode::Query);
    req.metadata.recursion_desired = true;
    req.add_query(q);
    let Some((ttl, fresh)) = from_upstream(&req, id, &bytes, Duration::ZERO) else {
        return;
    };
    assert!(ttl <= CACHE_TTL_MAX);
    let age = Duration::from_secs(u64::from(age_s));
    let (_, aged) = from_upstream(&req, id, &bytes, age).expect("taken once, taken again");
    let want: Vec<u32> = ttls(&fresh)
        .iter()
        .map(|t| t.saturating_sub(age_s))
        .collect();
    assert_eq!(ttls(&aged), want);
    assert_eq!(fresh.metadata.id, client_id);
    assert_eq!(fresh.queries, req.queries);
    for (t, limit) in [
        (
            Transport::Udp,
            usize::from(EDNS_PAYLOAD_MAX).max(UDP_PLAIN_MAX),
        ),
        (Transport::Tcp, usize::from(u16::MAX)),
    ] {
        if let Some(out) = encode(aged.clone(), &req, t) {
            assert!(out.len() <= limit);
        }
    }
    let (Some(out), Ok(query)) = (encode(fresh, &req, Transport::Udp), req.to_vec()) else {
        return;
    };
    let views = Arc::new(dns::Views::default());
    let mut replay = Replay::default();
    replay.insert(&views, "", &query, &out, Source::Cache, None);
    if replay.answer(&views, "", &query) {
        assert_eq!(replay.response(), out.as_slice());
    }
});
