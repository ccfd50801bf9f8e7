//! Arbitrary bytes through trellis dns's packet path: parse a query, answer it from a zone
//! (cluster records, a view's records and a dynamic zone's records merged in), encode the
//! answer for UDP and for TCP. Nothing may panic; an answer is never larger than its
//! transport allows (the allocation an attacker can cause per packet is bounded by it).
#![no_main]

use std::sync::OnceLock;

use dns::answer::{Transport, respond, UDP_PLAIN_MAX};
use dns::sync::provider::Provider;
use libfuzzer_sys::fuzz_target;

fn zone() -> &'static dns::Zone {
    static ZONE: OnceLock<dns::Zone> = OnceLock::new();
    ZONE.get_or_init(|| {
        let mut views = dns::Views {
            default: dns::compile(&model::Snapshot::default(), &dns::ZoneConfig::default()),
            ..dns::Views::default()
        };
        let dynamic = dns::sync::dynamic::Dynamic::new(&["example.test".into()]);
        let ep = |name: &str, ty: &str, t: &str| dns::sync::Endpoint::new(name, ty, [t], "");
        let changes = dns::sync::Changes {
            create: vec![
                ep("a.example.test", "A", "192.0.2.1"),
                ep("b.example.test", "CNAME", "a.example.test"),
                ep("loop.example.test", "CNAME", "loop.example.test"),
                ep("t.example.test", "TXT", "\"x\""),
            ],
            ..Default::default()
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        assert!(rt.block_on(dynamic.apply(&changes)).is_empty());
        dynamic.merge_into(&mut views);
        views.default
    })
}

fuzz_target!(|data: &[u8]| {
    let z = zone();
    if let Some(out) = respond(z, data, Transport::Udp) {
        // EDNS0 can raise the limit to the advertised 1232 bytes, never beyond.
        assert!(out.len() <= usize::from(dns::answer::EDNS_PAYLOAD_MAX).max(UDP_PLAIN_MAX));
    }
    if let Some(out) = respond(z, data, Transport::Tcp) {
        assert!(out.len() <= usize::from(u16::MAX));
    }
});
