//! The bytes of a record: how a producer writes what it saw into the flow buffer (see
//! [`crate::RecordKind`]) and how its kind reads it back. Little-endian numbers; strings and
//! addresses carry their length or family, so a record is as long as what it holds.
//!
//! A reader never panics on short or odd input: every read returns `None` past the end.
//!
//! Writing is on a producer's path (once per request), so the writers are inlined into the
//! producer's one record-writing function: its code stays in one place.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Appends to a record.
pub struct Writer<'a>(pub &'a mut Vec<u8>);

impl Writer<'_> {
    #[inline]
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }

    #[inline]
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    #[inline]
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    #[inline]
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A string of up to 65,535 bytes; a longer one is cut at the last character boundary
    /// that fits.
    #[inline]
    pub fn str(&mut self, s: &str) -> &mut Self {
        let mut end = s.len().min(usize::from(u16::MAX));
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.u16(u16::try_from(end).unwrap_or(u16::MAX));
        self.0.extend_from_slice(&s.as_bytes()[..end]);
        self
    }

    /// An address: its family (4 or 6), the IP, the port.
    #[inline]
    pub fn addr(&mut self, a: SocketAddr) -> &mut Self {
        match a.ip() {
            IpAddr::V4(ip) => {
                self.u8(4);
                self.0.extend_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                self.u8(6);
                self.0.extend_from_slice(&ip.octets());
            }
        }
        self.u16(a.port())
    }
}

/// Reads a record from its start.
pub struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    #[inline]
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes }
    }

    #[inline]
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.bytes.split_first_chunk::<N>()?;
        self.bytes = rest;
        Some(*head)
    }

    #[inline]
    pub fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|[b]| b)
    }

    #[inline]
    pub fn u16(&mut self) -> Option<u16> {
        self.take().map(u16::from_le_bytes)
    }

    #[inline]
    pub fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }

    #[inline]
    pub fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }

    #[inline]
    pub fn str(&mut self) -> Option<&'a str> {
        let n = usize::from(self.u16()?);
        if self.bytes.len() < n {
            return None;
        }
        let (s, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        std::str::from_utf8(s).ok()
    }

    #[inline]
    pub fn addr(&mut self) -> Option<SocketAddr> {
        let ip = match self.u8()? {
            4 => IpAddr::V4(Ipv4Addr::from(self.take::<4>()?)),
            6 => IpAddr::V6(Ipv6Addr::from(self.take::<16>()?)),
            _ => return None,
        };
        Some(SocketAddr::new(ip, self.u16()?))
    }

    /// `read` when `on` (a part a flag says is there), else nothing; `None` when the part
    /// should be there and cannot be read.
    #[inline]
    pub fn when<T>(
        &mut self,
        on: bool,
        read: impl FnOnce(&mut Self) -> Option<T>,
    ) -> Option<Option<T>> {
        if on { read(self).map(Some) } else { Some(None) }
    }

    /// Whether everything was read.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_written_reads_back_and_short_input_is_none() {
        let mut buf = Vec::new();
        let v6: SocketAddr = "[2001:db8::1]:443".parse().expect("addr");
        let v4: SocketAddr = "10.0.0.7:80".parse().expect("addr");
        Writer(&mut buf)
            .u8(7)
            .u16(65_000)
            .u32(70_000)
            .u64(u64::MAX - 1)
            .str("héllo")
            .str("")
            .addr(v6)
            .addr(v4);
        let mut r = Reader::new(&buf);
        assert_eq!(r.u8(), Some(7));
        assert_eq!(r.u16(), Some(65_000));
        assert_eq!(r.u32(), Some(70_000));
        assert_eq!(r.u64(), Some(u64::MAX - 1));
        assert_eq!(r.str(), Some("héllo"));
        assert_eq!(r.when(true, Reader::str), Some(Some("")));
        assert_eq!(r.when(false, Reader::addr), Some(None));
        assert_eq!(r.addr(), Some(v6));
        assert_eq!(r.addr(), Some(v4));
        assert!(r.is_empty());
        assert_eq!(r.u8(), None);
        // Every truncation of a valid record fails somewhere instead of panicking.
        for cut in 0..buf.len() {
            let mut r = Reader::new(&buf[..cut]);
            let whole = (|| {
                r.u8()?;
                r.u16()?;
                r.u32()?;
                r.u64()?;
                r.str()?;
                r.str()?;
                r.addr()?;
                r.addr()
            })();
            assert_eq!(whole, None, "cut at {cut}");
        }
    }

    #[test]
    fn a_long_string_is_cut_at_a_character_boundary() {
        let s = "é".repeat(40_000);
        let mut buf = Vec::new();
        Writer(&mut buf).str(&s);
        let got = Reader::new(&buf).str().expect("reads");
        assert_eq!(got.len(), 65_534);
        assert!(s.starts_with(got));
    }
}
