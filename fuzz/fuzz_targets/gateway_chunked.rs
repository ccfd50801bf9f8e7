//! The chunked reader both HTTP paths use on upstream responses: the own path finds where a
//! body ends as its bytes pass by, the general path also takes its chunk data out
//! (RFC 9112 §7.1).
//!
//! - A body encoded from arbitrary chunks, extensions and trailers, followed by anything,
//!   ends exactly where its encoding ends, however the bytes are split into reads, and the
//!   data read out of it is its chunks' data.
//! - Arbitrary bytes get the same verdict whole as split in two.
#![no_main]

use gateway::h1_fuzzing::{chunked_data, chunked_end};
use libfuzzer_sys::fuzz_target;

/// Text without CR or LF (extensions and trailer lines cannot hold them).
fn line(s: &str) -> String {
    s.chars().filter(|c| *c != '\r' && *c != '\n').collect()
}

fn encode(chunks: &[(Vec<u8>, String, u8)], trailers: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for (data, ext, zeros) in chunks {
        if data.is_empty() {
            continue;
        }
        let size = if zeros & 1 == 0 {
            format!("{:x}", data.len())
        } else {
            format!("{}{:X}", "0".repeat(usize::from(zeros % 4)), data.len())
        };
        out.extend_from_slice(size.as_bytes());
        let ext = line(ext);
        if !ext.is_empty() {
            out.push(b';');
            out.extend_from_slice(ext.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n");
    for t in trailers {
        let t = line(t);
        if !t.is_empty() {
            out.extend_from_slice(t.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Chunks (data, extension, leading zeros of the size), trailer lines, what follows the
/// body, where reads end.
type Input = (Vec<(Vec<u8>, String, u8)>, Vec<String>, Vec<u8>, Vec<u16>);

fuzz_target!(|input: Input| {
    let (chunks, trailers, tail, cuts) = input;
    let body = encode(&chunks, &trailers);
    let mut all = body.clone();
    all.extend_from_slice(&tail);
    assert_eq!(chunked_end(&[&all]), Ok(Some((0, body.len()))));
    // Split at the given places: the end is found in the piece that holds it.
    let mut at: Vec<usize> = cuts
        .iter()
        .map(|c| usize::from(*c) % (all.len() + 1))
        .collect();
    at.sort_unstable();
    at.dedup();
    let mut pieces = Vec::new();
    let mut from = 0;
    for c in at.into_iter().chain([all.len()]) {
        pieces.push(&all[from..c]);
        from = c;
    }
    let (found, data) = chunked_data(&pieces).expect("a valid body");
    let (k, end) = found.expect("its end is found");
    let before: usize = pieces[..k].iter().map(|p| p.len()).sum();
    assert_eq!(before + end, body.len());
    let sent: Vec<u8> = chunks.iter().flat_map(|(d, _, _)| d.iter().copied()).collect();
    assert_eq!(data, sent, "the data read out is the chunks' data");

    // The tail alone, as arbitrary bytes: whole or in two pieces, one verdict.
    let cut = cuts
        .first()
        .map_or(0, |c| usize::from(*c) % (tail.len() + 1));
    let whole = chunked_end(&[&tail]);
    let split = chunked_end(&[&tail[..cut], &tail[cut..]])
        .map(|e| e.map(|(k, end)| if k == 1 { cut + end } else { end }));
    match (whole, split) {
        (Err(_), Err(_)) => {}
        (a, b) => assert_eq!(a.map(|e| e.map(|(_, end)| end)), b),
    }
    if let Ok(Some((_, end))) = chunked_end(&[&tail]) {
        assert!(end <= tail.len());
    }
});
