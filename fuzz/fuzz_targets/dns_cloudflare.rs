//! Arbitrary Cloudflare v4 API answers (status and JSON body) as the cloudflare provider
//! reads them: the envelope (`success`, `errors`, `result`, `result_info`) around record
//! listings and other results.
//!
//! - Only a 2xx answer with `success` is a result; its page count is at least one.
//! - A 5xx or 429 is retryable, every other refusal permanent.
//! - A record read and written is the same record (its ID is not written).
#![no_main]

use dns::sync::cloudflare::{DnsRecord, answer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u16, Vec<u8>)| {
    let (status, body) = input;
    let status = status % 700;
    let what = "cloudflare GET /zones/z/dns_records";
    let listing = answer::<Vec<DnsRecord>>(what, status, &body);
    let other = answer::<serde_json::Value>(what, status, &body);
    for r in [
        listing.as_ref().map(|(_, p)| *p),
        other.as_ref().map(|(_, p)| *p),
    ] {
        match r {
            Ok(pages) => {
                assert!((200..300).contains(&status));
                assert!(pages >= 1);
            }
            Err(e) if !(200..300).contains(&status) => {
                assert_eq!(e.is_retryable(), status >= 500 || status == 429, "{e}");
            }
            Err(e) => assert!(!e.is_retryable(), "{e}"),
        }
    }
    if let Ok((Some(records), _)) = listing {
        for r in records {
            let text = serde_json::to_vec(&r).expect("a record serializes");
            let again: DnsRecord = serde_json::from_slice(&text).expect("and reads back");
            assert_eq!(
                again,
                DnsRecord {
                    id: String::new(),
                    ..r
                }
            );
        }
    }
});
