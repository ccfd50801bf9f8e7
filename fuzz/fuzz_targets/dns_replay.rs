//! The UDP listener's replay of answers: its key (view, query without ID, name in lower
//! case) and its TTL walker, on arbitrary queries and responses.
//!
//! - The TTL walker agrees with hickory's parser on every message hickory reads: one TTL per
//!   answer and authority record, in order, each at an offset inside the message.
//! - A replayed response is the kept one with only the query's ID, the case of its name and
//!   (for a cached answer) its TTLs changed; it never goes to another view.
#![no_main]

use std::sync::{Arc, OnceLock};

use dns::replay::{Replay, Source, ttl_fields};
use hickory_proto::op::Message;
use libfuzzer_sys::fuzz_target;

#[path = "common/mod.rs"]
mod common;

fn views() -> Arc<dns::Views> {
    static VIEWS: OnceLock<Arc<dns::Views>> = OnceLock::new();
    VIEWS
        .get_or_init(|| Arc::new(dns::Views::default()))
        .clone()
}

/// Checks the walker on `b` against hickory; the offsets of its TTLs.
fn walk(b: &[u8]) -> Option<Vec<(usize, u32)>> {
    let fields = ttl_fields(b);
    if let Some(f) = &fields {
        let mut last = None;
        for &(at, ttl) in f {
            let bytes = b.get(at..at + 4).expect("a TTL inside the message");
            assert_eq!(u32::from_be_bytes(bytes.try_into().expect("4 bytes")), ttl);
            assert!(last.is_none_or(|l| l < at), "TTL offsets increase");
            last = Some(at);
        }
    }
    if let Ok(m) = Message::from_vec(b) {
        let want: Vec<u32> = m
            .answers
            .iter()
            .chain(&m.authorities)
            .map(|r| r.ttl)
            .collect();
        let got: Vec<u32> = fields
            .as_ref()
            .expect("a message hickory reads is walked")
            .iter()
            .map(|f| f.1)
            .collect();
        assert_eq!(got, want);
    }
    fields
}

fuzz_target!(|input: (bool, Vec<u8>, Vec<u8>)| {
    let (cached, query, response) = input;
    walk(&query);
    let ttls = walk(&response);
    let views = views();
    let mut r = Replay::default();
    let source = if cached { Source::Cache } else { Source::Zone };
    r.insert(&views, "lan", &query, &response, source, None);
    let again = common::variant(&query);
    if !r.answer(&views, "lan", &again) {
        return;
    }
    let out = r.response().to_vec();
    assert_eq!(out.len(), response.len());
    assert_eq!(out[..2], again[..2], "the query's ID");
    let name = 12..12 + common::question_name_len(&query).expect("a replayed query has a name");
    assert_eq!(out[name.clone()], again[name.clone()], "the query's name");
    let mut expect = response.clone();
    expect[..2].copy_from_slice(&again[..2]);
    expect[name.clone()].copy_from_slice(&again[name]);
    if cached {
        // Kept just now: aged by less than a second, so the TTLs are as they came.
        assert!(
            ttls.is_some(),
            "a cached answer is kept only when its TTLs are found"
        );
    }
    assert_eq!(out, expect);
    // Never to another view, nor once the views change.
    assert!(!r.answer(&views, "public", &again));
    assert!(!r.answer(&Arc::new(dns::Views::default()), "lan", &again));
});
