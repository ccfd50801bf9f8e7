//! Arbitrary bytes as a primary server's answers to the rfc2136 provider's zone transfer
//! (AXFR over TCP: length-framed messages), read as the provider reads them, with and
//! without TSIG verification.
//!
//! - The record sets read are no more than the records sent, each with a target, a type
//!   trellis manages and a lower-case name without trailing dot.
#![no_main]

use std::sync::OnceLock;

use dns::sync::rfc2136::{Transfer, read_answer};
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_proto::rr::{Name, RecordType, TSigner};
use libfuzzer_sys::fuzz_target;

#[path = "common/mod.rs"]
mod common;

fn signer() -> &'static TSigner {
    static SIGNER: OnceLock<TSigner> = OnceLock::new();
    SIGNER.get_or_init(|| {
        TSigner::new(
            vec![7; 32],
            TsigAlgorithm::HmacSha256,
            Name::from_ascii("trellis.").expect("name"),
            300,
        )
        .expect("a TSIG key")
    })
}

fuzz_target!(|input: (bool, Vec<u8>)| {
    let (tsig, stream) = input;
    let mut verifier = if tsig {
        let mut m = Message::new(1, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(
            Name::from_ascii("example.test.").expect("name"),
            RecordType::AXFR,
        ));
        m.finalize(signer(), 1_700_000_000).expect("signs")
    } else {
        None
    };
    let mut transfer = Transfer::default();
    let mut sent = 0;
    for frame in common::frames(&stream) {
        let Ok(m) = read_answer(verifier.as_mut(), frame) else {
            return;
        };
        sent += m.answers.len();
        match transfer.take("AXFR example.test from fuzz", &m) {
            Ok(true) => break,
            Ok(false) => {}
            Err(_) => return,
        }
    }
    let sets = transfer.endpoints();
    assert!(sets.len() <= sent);
    for e in &sets {
        assert!(!e.targets.is_empty());
        assert!(matches!(
            e.record_type.as_str(),
            "A" | "AAAA" | "CNAME" | "TXT"
        ));
        assert_eq!(e.name, e.name.trim_end_matches('.').to_ascii_lowercase());
    }
});
