//! Reading the server name (SNI) from a TLS ClientHello without terminating TLS, for
//! passthrough listeners. A ClientHello nearly always fits its first record and is read in
//! place; one split across several handshake records (TLS allows any fragmentation, and a
//! client can choose it to hide its name from a reader of the first record) is joined into
//! one buffer, bounded by [`CLIENT_HELLO_BYTES_MAX`], before it is read.

pub use crate::limits::CLIENT_HELLO_BYTES_MAX;

/// What the first bytes of a connection say.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// More bytes are needed.
    Incomplete,
    /// Not a TLS handshake (or not one we can read).
    NotTls,
    /// A ClientHello, with its server name if it has one.
    Found(Option<String>),
}

/// The largest payload of one TLS record (RFC 8446 §5.1: 2^14 bytes).
const RECORD_PAYLOAD_MAX: usize = 16 * 1024;
/// Record header: content type, legacy version, length.
const RECORD_HEADER: usize = 5;
/// Handshake header: message type, 24-bit length.
const HANDSHAKE_HEADER: usize = 4;
const CONTENT_HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.b.len() < n {
            return None;
        }
        let (a, rest) = self.b.split_at(n);
        self.b = rest;
        Some(a)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|x| usize::from(x[0]))
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|x| usize::from(u16::from_be_bytes([x[0], x[1]])))
    }
}

/// The handshake record at the start of `b`.
enum Record<'a> {
    /// Its payload and the bytes after it.
    Complete(&'a [u8], &'a [u8]),
    Incomplete,
    /// Not a handshake record (another content type, a version that is not 3.x, an empty
    /// or oversized payload).
    Invalid,
}

fn record(b: &[u8]) -> Record<'_> {
    match b {
        [] => Record::Incomplete,
        [t, ..] if *t != CONTENT_HANDSHAKE => Record::Invalid,
        [_] => Record::Incomplete,
        [_, major, ..] if *major != 3 => Record::Invalid,
        [_, _, _, hi, lo, ..] => {
            let len = usize::from(u16::from_be_bytes([*hi, *lo]));
            // Zero-length handshake fragments are forbidden (RFC 8446 §5.1).
            if len == 0 || len > RECORD_PAYLOAD_MAX {
                return Record::Invalid;
            }
            match b.get(RECORD_HEADER..RECORD_HEADER + len) {
                Some(p) => Record::Complete(p, &b[RECORD_HEADER + len..]),
                None => Record::Incomplete,
            }
        }
        _ => Record::Incomplete,
    }
}

/// The body of the handshake message at the start of `b`, when all of it is there; `Err`
/// when it is not a ClientHello or can never fit [`CLIENT_HELLO_BYTES_MAX`].
fn handshake(b: &[u8]) -> Result<Option<&[u8]>, ()> {
    if b.first().is_some_and(|t| *t != CLIENT_HELLO) {
        return Err(());
    }
    let [_, a, m, l, ..] = b else {
        return Ok(None);
    };
    let len = (usize::from(*a) << 16) | (usize::from(*m) << 8) | usize::from(*l);
    if HANDSHAKE_HEADER + len > CLIENT_HELLO_BYTES_MAX {
        return Err(());
    }
    Ok(b.get(HANDSHAKE_HEADER..HANDSHAKE_HEADER + len))
}

/// Parses the start of a connection.
pub fn parse(buf: &[u8]) -> Hello {
    let incomplete = || {
        if buf.len() >= CLIENT_HELLO_BYTES_MAX {
            Hello::NotTls
        } else {
            Hello::Incomplete
        }
    };
    let (first, mut rest) = match record(buf) {
        Record::Complete(p, rest) => (p, rest),
        Record::Incomplete => return incomplete(),
        Record::Invalid => return Hello::NotTls,
    };
    // Nearly always: the whole ClientHello in the first record, read where it is.
    match handshake(first) {
        Ok(Some(body)) => return client_hello(body).map_or(Hello::NotTls, Hello::Found),
        Ok(None) => {}
        Err(()) => return Hello::NotTls,
    }
    let mut joined = first.to_vec();
    loop {
        match record(rest) {
            Record::Complete(p, r) => {
                joined.extend_from_slice(p);
                rest = r;
            }
            Record::Incomplete => return incomplete(),
            Record::Invalid => return Hello::NotTls,
        }
        match handshake(&joined) {
            Ok(Some(body)) => return client_hello(body).map_or(Hello::NotTls, Hello::Found),
            Ok(None) => {}
            Err(()) => return Hello::NotTls,
        }
    }
}

/// The server name of a ClientHello's body (after the handshake header).
fn client_hello(body: &[u8]) -> Option<Option<String>> {
    let mut r = Reader { b: body };
    r.take(2)?; // legacy_version
    r.take(32)?; // random
    let sid = r.u8()?;
    r.take(sid)?;
    let suites = r.u16()?;
    r.take(suites)?;
    let comp = r.u8()?;
    r.take(comp)?;
    if r.b.is_empty() {
        return Some(None);
    }
    let ext_len = r.u16()?;
    let mut exts = Reader {
        b: r.take(ext_len.min(r.b.len()))?,
    };
    while !exts.b.is_empty() {
        let ty = exts.u16()?;
        let len = exts.u16()?;
        let data = exts.take(len)?;
        if ty == 0 {
            let mut d = Reader { b: data };
            let list_len = d.u16()?;
            let mut list = Reader {
                b: d.take(list_len)?,
            };
            while !list.b.is_empty() {
                let name_type = list.u8()?;
                let n = list.u16()?;
                let name = list.take(n)?;
                if name_type == 0 {
                    let s = std::str::from_utf8(name).ok()?;
                    return Some(Some(s.trim_end_matches('.').to_ascii_lowercase()));
                }
            }
        }
    }
    Some(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ClientHello with the given SNI.
    pub fn hello(sni: Option<&str>) -> Vec<u8> {
        let mut ext = Vec::new();
        if let Some(name) = sni {
            let n = name.as_bytes();
            let mut sn = Vec::new();
            sn.push(0);
            sn.extend_from_slice(&(n.len() as u16).to_be_bytes());
            sn.extend_from_slice(n);
            ext.extend_from_slice(&0u16.to_be_bytes());
            ext.extend_from_slice(&((sn.len() + 2) as u16).to_be_bytes());
            ext.extend_from_slice(&(sn.len() as u16).to_be_bytes());
            ext.extend_from_slice(&sn);
        }
        let mut body = vec![3, 3];
        body.extend_from_slice(&[0; 32]);
        body.push(0);
        body.extend_from_slice(&[0, 2, 0x13, 0x01]);
        body.extend_from_slice(&[1, 0]);
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![1];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![22, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn reads_the_server_name() {
        assert_eq!(
            parse(&hello(Some("NAS.example.com"))),
            Hello::Found(Some("nas.example.com".into()))
        );
        assert_eq!(parse(&hello(None)), Hello::Found(None));
    }

    #[test]
    fn partial_and_foreign_input() {
        let h = hello(Some("a.example"));
        for cut in 0..h.len() {
            assert_eq!(parse(&h[..cut]), Hello::Incomplete, "cut at {cut}");
        }
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Hello::NotTls);
        // A first fragment that is a ClientHello's type byte waits for the rest; another
        // handshake type, an empty record or another content type is not a ClientHello.
        assert_eq!(parse(&[22, 3, 1, 0, 1, 1]), Hello::Incomplete);
        assert_eq!(parse(&[22, 3, 1, 0, 1, 2]), Hello::NotTls);
        assert_eq!(parse(&[22, 3, 1, 0, 0]), Hello::NotTls);
        assert_eq!(
            parse(&[22, 3, 1, 0, 1, 1, 23, 3, 3, 0, 1, 0]),
            Hello::NotTls
        );
    }

    /// The handshake bytes of `record` re-framed as records of at most `size` bytes each.
    fn fragmented(record: &[u8], size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for part in record[5..].chunks(size) {
            out.extend_from_slice(&[22, 3, 1]);
            out.extend_from_slice(&(part.len() as u16).to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    /// A ClientHello split across records has the same server name as one in a single
    /// record. Before the split hello was joined, only the first record was read, and a name
    /// past it was missed: the connection went to the listener's catch-all TLSRoute instead of
    /// the route for its name (found by the `gateway_sni` fuzz target).
    #[test]
    fn a_client_hello_split_across_records_is_joined() {
        let whole = hello(Some("NAS.example.com"));
        for size in [1, 2, 3, 4, 5, 17, 40, whole.len() - 6] {
            let split = fragmented(&whole, size);
            assert_eq!(
                parse(&split),
                Hello::Found(Some("nas.example.com".into())),
                "fragments of {size} bytes"
            );
            for cut in 0..split.len() {
                assert_eq!(
                    parse(&split[..cut]),
                    Hello::Incomplete,
                    "{size}, cut at {cut}"
                );
            }
        }
        // What follows the ClientHello (here an application data record) is not read.
        let mut then = fragmented(&whole, 9);
        then.extend_from_slice(&[23, 3, 3, 0, 2, 0, 0]);
        assert_eq!(parse(&then), Hello::Found(Some("nas.example.com".into())));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut x: u64 = 0x1234_5678;
        for len in 0..2000 {
            let bytes: Vec<u8> = (0..len % 300)
                .map(|i| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    if i < 3 { [22, 3, 1][i] } else { x as u8 }
                })
                .collect();
            let _ = parse(&bytes);
        }
    }
}
