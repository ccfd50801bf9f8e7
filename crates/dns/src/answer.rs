//! Answering one query from a zone: pure, no I/O.

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::zone::Zone;

/// The UDP payload size we advertise and use when the client asks for more (the DNS flag
/// day 2020 value: no fragmentation).
pub const EDNS_PAYLOAD_MAX: u16 = 1232;
/// Without EDNS0, a UDP answer fits 512 bytes or is truncated.
pub const UDP_PLAIN_MAX: usize = 512;
/// CNAMEs followed inside the zone before giving up (a loop guard).
const CNAME_CHAIN_MAX: usize = 8;

/// How the query arrived: over UDP answers are bounded by the payload size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// Parses a query. `Err(Some(bytes))` is the FORMERR to send back; `Err(None)` means the
/// bytes are not a query that can be answered at all (too short to hold an ID, or a
/// response).
pub fn parse(packet: &[u8]) -> Result<Message, Option<Vec<u8>>> {
    match Message::from_vec(packet) {
        Ok(m) if m.metadata.message_type == MessageType::Query => Ok(m),
        Ok(_) => Err(None),
        Err(_) => {
            if packet.len() < 12 {
                return Err(None);
            }
            let id = u16::from_be_bytes([packet[0], packet[1]]);
            let mut m = Message::new(id, MessageType::Response, OpCode::Query);
            m.metadata.response_code = ResponseCode::FormErr;
            Err(m.to_vec().ok())
        }
    }
}

/// Encodes a response for the transport the query came on: over UDP bounded by the client's
/// EDNS0 payload size (or 512 bytes without EDNS0), truncated with TC set when too big.
pub fn encode(mut resp: Message, req: &Message, transport: Transport) -> Option<Vec<u8>> {
    if req.edns.is_some() && resp.edns.is_none() {
        let mut e = Edns::new();
        e.set_max_payload(EDNS_PAYLOAD_MAX);
        resp.set_edns(e);
    }
    let limit = match transport {
        Transport::Tcp => usize::from(u16::MAX),
        Transport::Udp => match &req.edns {
            Some(e) => usize::from(e.max_payload().clamp(512, EDNS_PAYLOAD_MAX)),
            None => UDP_PLAIN_MAX,
        },
    };
    let bytes = resp.to_vec().ok()?;
    if bytes.len() <= limit {
        return Some(bytes);
    }
    // Too big: the header and question only, with TC set, so the client retries over TCP.
    resp.answers.clear();
    resp.authorities.clear();
    resp.additionals.clear();
    resp.metadata.truncation = true;
    let bytes = resp.to_vec().ok()?;
    if bytes.len() <= limit {
        return Some(bytes);
    }
    // Still too big: the query asked many (or long) questions. Echo the first only (one name
    // is at most 255 bytes), so no answer ever exceeds what the transport allows (found by the
    // dns_packet fuzz target).
    resp.queries.truncate(1);
    resp.to_vec().ok().filter(|b| b.len() <= limit)
}

/// Whether a query is for a name this zone answers (else it is forwarded, or refused).
pub fn is_local(zone: &Zone, req: &Message) -> bool {
    req.queries.first().is_none_or(|q| {
        let n = q.name().to_lowercase().to_ascii();
        let n = if n.ends_with('.') { n } else { format!("{n}.") };
        zone.contains(&n)
    })
}

/// Parses a query and returns the wire response from the zone alone (names outside it are
/// REFUSED), or `None` when there is nothing to answer.
pub fn respond(zone: &Zone, packet: &[u8], transport: Transport) -> Option<Vec<u8>> {
    let req = match parse(packet) {
        Ok(r) => r,
        Err(reply) => return reply,
    };
    encode(answer(zone, &req), &req, transport)
}

/// The response to a parsed query.
pub fn answer(zone: &Zone, req: &Message) -> Message {
    let mut m = Message::new(req.metadata.id, MessageType::Response, req.metadata.op_code);
    m.metadata.recursion_desired = req.metadata.recursion_desired;
    m.queries = req.queries.clone();
    if req.edns.is_some() {
        let mut e = Edns::new();
        e.set_max_payload(EDNS_PAYLOAD_MAX);
        m.set_edns(e);
    }
    if req.metadata.op_code != OpCode::Query {
        m.metadata.response_code = ResponseCode::NotImp;
        return m;
    }
    let [q] = req.queries.as_slice() else {
        m.metadata.response_code = ResponseCode::FormErr;
        return m;
    };
    let qname = q.name().to_lowercase().to_ascii();
    let qname = if qname.ends_with('.') {
        qname
    } else {
        format!("{qname}.")
    };
    if !zone.contains(&qname) {
        // Not ours; forwarding is not implemented yet.
        m.metadata.response_code = ResponseCode::Refused;
        return m;
    }
    m.metadata.authoritative = true;
    let qtype = q.query_type();
    let mut name = qname.clone();
    // The client sees the name it asked for, in its own case.
    let mut owner = q.name().clone();
    for _ in 0..CNAME_CHAIN_MAX {
        let found = records(zone, &name, qtype);
        if !found.is_empty() {
            m.answers.extend(
                found
                    .into_iter()
                    .map(|r| Record::from_rdata(owner.clone(), zone.ttl, r)),
            );
            return m;
        }
        // A CNAME answers any other type; follow it while it stays in the zone.
        let cname = zone
            .records
            .get(&(name.clone(), RecordType::CNAME))
            .and_then(|v| v.first())
            .cloned();
        match cname {
            Some(RData::CNAME(c)) if qtype != RecordType::CNAME => {
                m.answers.push(Record::from_rdata(
                    owner.clone(),
                    zone.ttl,
                    RData::CNAME(c.clone()),
                ));
                let target = c.0.to_lowercase().to_ascii();
                if !zone.contains(&target) {
                    return m;
                }
                owner = c.0.clone();
                name = target;
            }
            _ => break,
        }
    }
    if !m.answers.is_empty() {
        return m;
    }
    // Nothing of this type: NODATA when the name exists, NXDOMAIN when it does not; the SOA
    // in the authority section lets resolvers cache the negative answer.
    if !zone.names.contains(&name) {
        m.metadata.response_code = ResponseCode::NXDomain;
    }
    let apex = zone
        .apex(&name)
        .or(zone.origins.first().map(String::as_str))
        .unwrap_or(".");
    if let (Some(soa), Ok(origin)) = (&zone.soa, Name::from_ascii(apex)) {
        m.authorities.push(Record::from_rdata(
            origin,
            zone.ttl.min(soa.minimum),
            RData::SOA(soa.clone()),
        ));
    }
    m
}

fn records(zone: &Zone, name: &str, qtype: RecordType) -> Vec<RData> {
    if qtype == RecordType::ANY {
        return zone
            .records
            .range((name.to_string(), RecordType::Unknown(0))..)
            .take_while(|((n, _), _)| n == name)
            .flat_map(|(_, v)| v.clone())
            .collect();
    }
    if qtype == RecordType::SOA && zone.origins.iter().any(|o| o == name) {
        return zone.soa.clone().map(RData::SOA).into_iter().collect();
    }
    zone.records
        .get(&(name.to_string(), qtype))
        .cloned()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arbitrary_packets_never_panic() {
        let zone = Zone {
            origins: vec!["cluster.local.".into()],
            ttl: 5,
            ..Zone::default()
        };
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for len in 0..3000usize {
            let bytes: Vec<u8> = (0..len % 600)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 24) as u8
                })
                .collect();
            for t in [Transport::Udp, Transport::Tcp] {
                let _ = respond(&zone, &bytes, t);
            }
        }
    }

    #[test]
    fn formerr_keeps_the_id() {
        let zone = Zone::default();
        let mut junk = vec![0xAB, 0xCD];
        junk.extend_from_slice(&[0xFF; 20]);
        let out = respond(&zone, &junk, Transport::Udp).expect("an answer");
        let m = Message::from_vec(&out).expect("valid response");
        assert_eq!(m.metadata.id, 0xABCD);
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    }

    /// A query with many questions: even its truncated answer (header and questions) was
    /// larger than a UDP answer may be. Found by the `dns_packet` fuzz target.
    #[test]
    fn udp_answers_never_exceed_the_payload_size() {
        let packet = include_bytes!("../tests/fuzz/oversized-udp-answer.bin");
        let zone = crate::compile(&model::Snapshot::default(), &crate::ZoneConfig::default());
        let out = respond(&zone, packet, Transport::Udp).expect("an answer");
        assert!(
            out.len() <= usize::from(EDNS_PAYLOAD_MAX),
            "{} bytes",
            out.len()
        );
    }
}
