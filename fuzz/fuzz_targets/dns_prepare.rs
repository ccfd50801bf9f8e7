//! Arbitrary queries from clients of every view through the server's own path: parse,
//! rewrite (exact and regex DNSRewrite rules), pick the view by client address, answer, put
//! the client's name back, encode for UDP and TCP. Then the UDP replay of that answer.
//!
//! - An answer fits its transport, parses, carries the query's ID and the client's own
//!   question (never the rewritten name).
//! - With forwarding on, a name the views hold gets the same answer; others none.
//! - A query replayed (same query, other ID, other case) says what a fresh answer says.
#![no_main]

use dns::answer::{EDNS_PAYLOAD_MAX, Transport, UDP_PLAIN_MAX};
use dns::replay::{Replay, Source};
use dns::server::answer_local;
use hickory_proto::op::{Message, MessageType};
use libfuzzer_sys::fuzz_target;

#[path = "common/mod.rs"]
mod common;

/// A message as a client reads it: header, question, and records with names in lower case.
fn meaning(m: &Message) -> String {
    let records = |rs: &[hickory_proto::rr::Record]| {
        rs.iter()
            .map(|r| {
                format!(
                    "{} {} {} {:?}",
                    r.name.to_lowercase(),
                    r.record_type(),
                    r.ttl,
                    r.data
                )
            })
            .collect::<Vec<_>>()
    };
    format!(
        "{:?} {:?} {:?} {:?} {:?} {:?}",
        m.metadata,
        m.queries,
        records(&m.answers),
        records(&m.authorities),
        records(&m.additionals),
        m.edns
    )
}

fuzz_target!(|input: (u8, bool, Vec<u8>)| {
    let (who, tcp, packet) = input;
    let views = common::dns_views();
    let peer = common::peer(who);
    let t = if tcp { Transport::Tcp } else { Transport::Udp };
    let out = answer_local(&views, false, &packet, peer, t);
    let Some(out) = out else { return };
    let limit = match t {
        Transport::Udp => usize::from(EDNS_PAYLOAD_MAX).max(UDP_PLAIN_MAX),
        Transport::Tcp => usize::from(u16::MAX),
    };
    assert!(out.len() <= limit);
    let resp = Message::from_vec(&out).expect("an answer parses");
    assert_eq!(resp.metadata.message_type, MessageType::Response);
    if let Ok(q) = Message::from_vec(&packet) {
        assert_eq!(resp.metadata.id, q.metadata.id);
        // The client sees its own question (the first one, when too many did not fit).
        assert_eq!(resp.queries.first(), q.queries.first());
    }
    if let Some(fwd) = answer_local(&views, true, &packet, peer, t) {
        assert_eq!(
            fwd, out,
            "forwarding changes nothing for a name a view holds"
        );
    }
    if tcp {
        return;
    }
    let view = views.for_client(peer.ip()).0;
    let mut replay = Replay::default();
    replay.insert(&views, view, &packet, &out, Source::Zone, None);
    if replay.answer(&views, view, &packet) {
        assert_eq!(replay.response(), out.as_slice());
    }
    let again = common::variant(&packet);
    if replay.answer(&views, view, &again) {
        let replayed = Message::from_vec(replay.response()).expect("a replayed answer parses");
        let fresh = answer_local(&views, false, &again, peer, t).expect("a fresh answer");
        let fresh = Message::from_vec(&fresh).expect("a fresh answer parses");
        assert_eq!(meaning(&replayed), meaning(&fresh));
    }
});
