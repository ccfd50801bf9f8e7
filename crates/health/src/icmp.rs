//! `icmp://host`: one ICMP echo, as Gatus sends it. `[CONNECTED]` is whether the echo came
//! back, `[RESPONSE_TIME]` its round trip.
//!
//! The socket is the unprivileged ping socket (`SOCK_DGRAM`, allowed by
//! `net.ipv4.ping_group_range`) where the kernel permits it, else a raw socket (needs
//! `CAP_NET_RAW`); without either the probe fails with an error that says so. Replies are
//! matched by type, sequence number and a per-probe payload, so another process's pings and
//! stray replies are skipped until the caller's deadline.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

const ECHO_REQUEST_V4: u8 = 8;
const ECHO_REPLY_V4: u8 = 0;
const ECHO_REQUEST_V6: u8 = 128;
const ECHO_REPLY_V6: u8 = 129;
/// The largest datagram read back (an echo reply with its IPv4 header).
const REPLY_BYTES_MAX: usize = 1500;

/// The RFC 1071 checksum of `b`.
fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An echo request: type, code 0, checksum (IPv4 only; the kernel fills ICMPv6's), identifier,
/// sequence, payload.
fn request(v6: bool, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut m = vec![if v6 { ECHO_REQUEST_V6 } else { ECHO_REQUEST_V4 }, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(payload);
    if !v6 {
        let c = checksum(&m);
        m[2..4].copy_from_slice(&c.to_be_bytes());
    }
    m
}

/// Whether `datagram` is the reply to our request. A raw IPv4 socket hands over the IP
/// header too; a ping socket and IPv6 sockets do not.
fn is_reply(datagram: &[u8], v6: bool, seq: u16, payload: &[u8]) -> bool {
    let icmp = if !v6 && datagram.first().is_some_and(|b| b >> 4 == 4) {
        let ihl = usize::from(datagram[0] & 0x0f) * 4;
        datagram.get(ihl..).unwrap_or(&[])
    } else {
        datagram
    };
    let want = if v6 { ECHO_REPLY_V6 } else { ECHO_REPLY_V4 };
    icmp.len() >= 8
        && icmp[0] == want
        && icmp[1] == 0
        && icmp[6..8] == seq.to_be_bytes()
        && &icmp[8..] == payload
}

fn open(v6: bool) -> Result<Socket, String> {
    let (domain, protocol) = if v6 {
        (Domain::IPV6, Protocol::ICMPV6)
    } else {
        (Domain::IPV4, Protocol::ICMPV4)
    };
    let socket = Socket::new(domain, Type::DGRAM, Some(protocol))
        .or_else(|_| Socket::new(domain, Type::RAW, Some(protocol)))
        .map_err(|e| {
            format!(
                "ICMP socket: {e} (allow this group in net.ipv4.ping_group_range, or give \
                 trellis CAP_NET_RAW)"
            )
        })?;
    socket
        .set_nonblocking(true)
        .map_err(|e| format!("ICMP socket: {e}"))?;
    Ok(socket)
}

/// Sends one echo to `ip` and waits for its reply; the caller bounds the time. Returns the
/// round trip.
pub async fn echo(ip: IpAddr) -> Result<Duration, String> {
    let v6 = ip.is_ipv6();
    // The socket is driven as a connected datagram socket: send and recv are the same calls
    // for ICMP as for UDP, and connected, the kernel passes on only what comes from `ip`.
    let socket = open(v6)?;
    socket
        .connect(&SocketAddr::new(ip, 0).into())
        .map_err(|e| format!("ICMP socket to {ip}: {e}"))?;
    let socket =
        tokio::net::UdpSocket::from_std(socket.into()).map_err(|e| format!("ICMP socket: {e}"))?;
    let id = dns::forward::random_u16();
    let seq = dns::forward::random_u16();
    let payload: Vec<u8> = format!("trellis-health-{id:04x}{seq:04x}").into_bytes();
    let message = request(v6, id, seq, &payload);
    let start = Instant::now();
    socket
        .send(&message)
        .await
        .map_err(|e| format!("sending an echo to {ip}: {e}"))?;
    let mut buf = [0u8; REPLY_BYTES_MAX];
    loop {
        let n = socket
            .recv(&mut buf)
            .await
            .map_err(|e| format!("reading from {ip}: {e}"))?;
        if is_reply(&buf[..n], v6, seq, &payload) {
            return Ok(start.elapsed());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_a_known_echo() {
        // An echo request with id 1, seq 1 and no payload sums to 0xf7fd.
        let m = request(false, 1, 1, b"");
        assert_eq!(&m[2..4], &0xf7fdu16.to_be_bytes());
        assert_eq!(checksum(&m), 0);
    }

    #[test]
    fn replies_are_matched_with_and_without_an_ip_header() {
        let payload = b"abc";
        let mut reply = request(false, 7, 9, payload);
        reply[0] = ECHO_REPLY_V4;
        assert!(is_reply(&reply, false, 9, payload));
        let mut with_header = vec![0x45; 1];
        with_header.extend_from_slice(&[0; 19]);
        with_header.extend_from_slice(&reply);
        assert!(is_reply(&with_header, false, 9, payload));
        assert!(!is_reply(&reply, false, 10, payload));
        assert!(!is_reply(&request(false, 7, 9, payload), false, 9, payload));
        assert!(!is_reply(&reply, false, 9, b"abd"));
    }
}
