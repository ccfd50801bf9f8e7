//! Reading the server name (SNI) from a TLS ClientHello without terminating TLS, for
//! passthrough listeners. Only the bytes of the first record are looked at; nothing is
//! allocated beyond the returned name.

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

/// Bytes read before giving up on finding a ClientHello.
pub const CLIENT_HELLO_BYTES_MAX: usize = 16 * 1024 + 5;

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
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|x| (usize::from(x[0]) << 16) | (usize::from(x[1]) << 8) | usize::from(x[2]))
    }
}

/// Parses the start of a connection.
pub fn parse(buf: &[u8]) -> Hello {
    // Record header: type 22 (handshake), version 3.x, length.
    if buf.is_empty() {
        return Hello::Incomplete;
    }
    if buf[0] != 22 {
        return Hello::NotTls;
    }
    if buf.len() < 5 {
        return Hello::Incomplete;
    }
    if buf[1] != 3 {
        return Hello::NotTls;
    }
    let record_len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
    if record_len < 4 {
        return Hello::NotTls;
    }
    let Some(record) = buf.get(5..5 + record_len) else {
        return if buf.len() >= CLIENT_HELLO_BYTES_MAX {
            Hello::NotTls
        } else {
            Hello::Incomplete
        };
    };
    // A ClientHello larger than one record is rare; read what the first record holds.
    client_hello(record).map_or(Hello::NotTls, Hello::Found)
}

fn client_hello(record: &[u8]) -> Option<Option<String>> {
    let mut r = Reader { b: record };
    if r.u8()? != 1 {
        return None;
    }
    let len = r.u24()?;
    let body = r.take(len.min(r.b.len()))?;
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
        assert_eq!(parse(&[22, 3, 1, 0, 1, 1]), Hello::NotTls);
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
