//! The TLS passthrough listener's ClientHello reader (`sni::parse`), which routes a
//! connection by its server name without terminating TLS.
//!
//! - A ClientHello built from arbitrary parts (session ID, cipher suites, extensions before
//!   and after the server name, any name) and split into handshake records of arbitrary
//!   sizes gives the name the client sent (lower case, without trailing dot), and every
//!   prefix of it asks for more bytes.
//! - Arbitrary bytes never give a name longer than the input.
#![no_main]

use gateway::sni::{CLIENT_HELLO_BYTES_MAX, Hello, parse};
use libfuzzer_sys::fuzz_target;

type Extension = (u16, Vec<u8>);

fn u16be(n: usize) -> [u8; 2] {
    u16::try_from(n).expect("fits").to_be_bytes()
}

/// A ClientHello handshake message (type, 24-bit length, body).
fn client_hello(
    sid: &[u8],
    suites: &[u8],
    before: &[Extension],
    name: &[u8],
    after: &[Extension],
) -> Vec<u8> {
    let mut exts = Vec::new();
    let mut ext = |ty: u16, data: &[u8]| {
        exts.extend_from_slice(&ty.to_be_bytes());
        exts.extend_from_slice(&u16be(data.len()));
        exts.extend_from_slice(data);
    };
    for (ty, data) in before {
        ext(ty.max(&1).to_owned(), data);
    }
    let mut list = vec![0];
    list.extend_from_slice(&u16be(name.len()));
    list.extend_from_slice(name);
    let mut sn = u16be(list.len()).to_vec();
    sn.extend_from_slice(&list);
    ext(0, &sn);
    for (ty, data) in after {
        ext(*ty, data);
    }
    let mut body = vec![3, 3];
    body.extend_from_slice(&[0x42; 32]);
    body.push(u8::try_from(sid.len()).expect("fits"));
    body.extend_from_slice(sid);
    body.extend_from_slice(&u16be(suites.len()));
    body.extend_from_slice(suites);
    body.extend_from_slice(&[1, 0]);
    body.extend_from_slice(&u16be(exts.len()));
    body.extend_from_slice(&exts);
    let mut hs = vec![1];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    hs
}

/// The server name, extensions before it, session ID and cipher suites, extensions after it,
/// record sizes, and arbitrary bytes.
type Input = (
    Vec<u8>,
    Vec<Extension>,
    Vec<u8>,
    Vec<Extension>,
    Vec<u8>,
    Vec<u8>,
);

fuzz_target!(|input: Input| {
    let (name, before, suites, after, sizes, raw) = input;
    if let Hello::Found(Some(n)) = parse(&raw) {
        assert!(n.len() <= raw.len());
    }
    let sid = &suites[..suites.len().min(32)];
    let suites = &suites[..suites.len() & !1];
    let small = |e: &Vec<Extension>| {
        e.iter()
            .take(8)
            .map(|(t, d)| (*t, d[..d.len().min(512)].to_vec()))
            .collect::<Vec<_>>()
    };
    let (before, after) = (small(&before), small(&after));
    let name = &name[..name.len().min(255)];
    let hs = client_hello(sid, suites, &before, name, &after);
    // Split into records of the given sizes (each 1..=256 bytes; the last takes the rest).
    let mut wire = Vec::new();
    let mut rest = hs.as_slice();
    let mut sizes = sizes.iter().map(|s| usize::from(*s) + 1);
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(rest.len()).min(rest.len());
        wire.extend_from_slice(&[22, 3, 1]);
        wire.extend_from_slice(&u16be(n));
        wire.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
    }
    if wire.len() >= CLIENT_HELLO_BYTES_MAX {
        return;
    }
    let want = match std::str::from_utf8(name) {
        Ok(s) => Hello::Found(Some(s.trim_end_matches('.').to_ascii_lowercase())),
        Err(_) => Hello::NotTls,
    };
    assert_eq!(parse(&wire), want);
    for cut in [0, 1, 5, 6, wire.len() / 2, wire.len() - 1] {
        if cut < wire.len() {
            assert_eq!(parse(&wire[..cut]), Hello::Incomplete, "cut at {cut}");
        }
    }
});
