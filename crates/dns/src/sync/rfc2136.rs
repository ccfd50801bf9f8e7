//! The `rfc2136` provider: DNS UPDATE (RFC 2136) to the primary server of one zone, signed
//! with TSIG (RFC 8945), and a zone transfer (AXFR, RFC 5936) to read what is there.
//!
//! Each change is one UPDATE message, so one refused change does not stop the others:
//! a create adds the record set, an update deletes the old record set and adds the new one
//! (atomically, in one message), a delete deletes the record set. Prerequisites are not
//! used: ownership was decided by the plan from the registry's TXT records, as ExternalDNS's
//! rfc2136 provider does. Every message of an exchange goes over one TCP connection
//! (updates and transfers can exceed a UDP datagram); responses are TSIG-verified when a key
//! is set. `REFUSED`, `NOTAUTH`, `NOTZONE` and the like are permanent; `SERVFAIL`, timeouts
//! and connection errors are retryable.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType, TSigVerifier, TSigner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::provider::{BoxFuture, Error, Failure, Provider};
use super::{Changes, Endpoint};
use crate::views::endpoint_rdata;

/// Each message exchange (connect, send, read every answer) must finish within this.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// TTL of records that ask for none (ExternalDNS's default).
pub const TTL_DEFAULT: u32 = 300;
/// Records read from one zone transfer at most.
pub const TRANSFER_RECORDS_MAX: usize = 1_000_000;
/// Permitted clock difference for TSIG, in seconds (RFC 8945 recommends 300).
pub const TSIG_FUDGE_S: u16 = 300;

/// A TSIG key as `knotc`/`tsig-keygen` write it.
#[derive(Clone, Debug)]
pub struct TsigKey {
    pub name: String,
    /// `hmac-sha256`, `hmac-sha384` or `hmac-sha512`.
    pub algorithm: String,
    /// The secret, base64.
    pub secret: String,
}

/// The provider for one zone on one primary server.
pub struct Rfc2136 {
    server: SocketAddr,
    zone: Name,
    /// Lowercase, without trailing dot.
    zone_text: String,
    signer: Option<TSigner>,
}

impl std::fmt::Debug for Rfc2136 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rfc2136")
            .field("server", &self.server)
            .field("zone", &self.zone_text)
            .field(
                "tsig",
                &self.signer.as_ref().map(|s| s.signer_name().to_ascii()),
            )
            .finish()
    }
}

fn fqdn(name: &str) -> Result<Name, Error> {
    Name::from_ascii(format!("{}.", name.trim_end_matches('.')))
        .map_err(|e| Error::Permanent(format!("{name:?}: {e}")))
}

impl Rfc2136 {
    pub fn new(server: SocketAddr, zone: &str, key: Option<&TsigKey>) -> Result<Rfc2136, Error> {
        let signer = match key {
            None => None,
            Some(k) => {
                let algorithm = match k.algorithm.to_ascii_lowercase().as_str() {
                    "hmac-sha256" => TsigAlgorithm::HmacSha256,
                    "hmac-sha384" => TsigAlgorithm::HmacSha384,
                    "hmac-sha512" => TsigAlgorithm::HmacSha512,
                    other => {
                        return Err(Error::Permanent(format!(
                            "TSIG algorithm {other:?}: use hmac-sha256, hmac-sha384 or hmac-sha512"
                        )));
                    }
                };
                let secret = data_encoding::BASE64
                    .decode(k.secret.trim().as_bytes())
                    .map_err(|e| Error::Permanent(format!("TSIG secret of {}: {e}", k.name)))?;
                Some(
                    TSigner::new(secret, algorithm, fqdn(&k.name)?, TSIG_FUDGE_S)
                        .map_err(|e| Error::Permanent(format!("TSIG key {}: {e}", k.name)))?,
                )
            }
        };
        Ok(Rfc2136 {
            server,
            zone: fqdn(zone)?,
            zone_text: zone.trim_end_matches('.').to_ascii_lowercase(),
            signer,
        })
    }

    /// An UPDATE message for the zone with these update-section records.
    fn update(&self, records: Vec<Record>) -> Message {
        let mut m = Message::query();
        m.metadata.message_type = MessageType::Query;
        m.metadata.op_code = OpCode::Update;
        m.metadata.recursion_desired = false;
        let mut zone = Query::new();
        zone.set_name(self.zone.clone())
            .set_query_class(DNSClass::IN)
            .set_query_type(RecordType::SOA);
        m.add_query(zone);
        for r in records {
            m.add_authority(r);
        }
        m
    }

    /// "Delete an RRset" (RFC 2136 2.5.2): class ANY, TTL 0, no data.
    fn delete_rrset(name: &Name, rtype: RecordType) -> Record {
        let mut r = Record::update0(name.clone(), 0, rtype);
        r.dns_class = DNSClass::ANY;
        r
    }

    /// The records of an endpoint ("Add to an RRset", RFC 2136 2.5.1).
    fn add_rrset(&self, e: &Endpoint) -> Result<(Name, RecordType, Vec<Record>), Error> {
        if !(e.name == self.zone_text || e.name.ends_with(&format!(".{}", self.zone_text))) {
            return Err(Error::Permanent(format!(
                "{} is not in zone {}",
                e.name, self.zone_text
            )));
        }
        let name = fqdn(&e.name)?;
        let rtype: RecordType = e
            .record_type
            .parse()
            .map_err(|_| Error::Permanent(format!("record type {:?}", e.record_type)))?;
        let ttl = e.ttl.unwrap_or(TTL_DEFAULT);
        let mut out = Vec::new();
        for t in &e.targets {
            let rd = endpoint_rdata(&e.record_type, t).ok_or_else(|| {
                Error::Permanent(format!(
                    "{} {t:?}: not a record trellis writes (A, AAAA, CNAME, TXT)",
                    e.record_type
                ))
            })?;
            out.push(Record::from_rdata(name.clone(), ttl, rd));
        }
        Ok((name, rtype, out))
    }

    /// The UPDATE for one change.
    fn change(&self, action: &str, old: Option<&Endpoint>, e: &Endpoint) -> Result<Message, Error> {
        let (name, rtype, adds) = self.add_rrset(e)?;
        let mut records = Vec::new();
        match action {
            "delete" => records.push(Self::delete_rrset(&name, rtype)),
            "update" => {
                if let Some(o) = old.filter(|o| o.name != e.name || o.record_type != e.record_type)
                {
                    let (oname, otype, _) = self.add_rrset(o)?;
                    records.push(Self::delete_rrset(&oname, otype));
                }
                records.push(Self::delete_rrset(&name, rtype));
                records.extend(adds);
            }
            _ => records.extend(adds),
        }
        Ok(self.update(records))
    }
}

/// A TCP connection to the server; messages are framed by their length (RFC 1035 4.2.2).
struct Conn {
    stream: TcpStream,
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Conn {
    async fn open(server: SocketAddr) -> Result<Conn, Error> {
        let stream = tokio::time::timeout(EXCHANGE_TIMEOUT, TcpStream::connect(server))
            .await
            .map_err(|_| Error::Retryable(format!("{server}: connect timed out")))?
            .map_err(|e| Error::Retryable(format!("{server}: {e}")))?;
        Ok(Conn { stream })
    }

    async fn read_message(&mut self) -> Result<Vec<u8>, Error> {
        let io = |e: std::io::Error| Error::Retryable(format!("reading the answer: {e}"));
        let mut len = [0u8; 2];
        self.stream.read_exact(&mut len).await.map_err(io)?;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        self.stream.read_exact(&mut buf).await.map_err(io)?;
        Ok(buf)
    }

    /// Sends `m` (signed when a key is set) and reads answers until `done` says the last one
    /// came; each answer is verified and handed to `each`.
    async fn exchange(
        &mut self,
        signer: Option<&TSigner>,
        mut m: Message,
        mut each: impl FnMut(&Message) -> Result<bool, Error>,
    ) -> Result<(), Error> {
        let mut verifier = match signer {
            Some(s) => m
                .finalize(s, now_s())
                .map_err(|e| Error::Permanent(format!("TSIG signing: {e}")))?,
            None => None,
        };
        let bytes = m
            .to_vec()
            .map_err(|e| Error::Permanent(format!("encoding the message: {e}")))?;
        let len = u16::try_from(bytes.len())
            .map_err(|_| Error::Permanent("the message exceeds 65,535 bytes".into()))?;
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(&bytes);
        let work = async {
            self.stream
                .write_all(&framed)
                .await
                .map_err(|e| Error::Retryable(format!("sending: {e}")))?;
            loop {
                let buf = self.read_message().await?;
                let answer = read_answer(verifier.as_mut(), &buf)?;
                if answer.metadata.id != m.metadata.id {
                    continue;
                }
                if each(&answer)? {
                    return Ok(());
                }
            }
        };
        tokio::time::timeout(EXCHANGE_TIMEOUT, work)
            .await
            .map_err(|_| Error::Retryable(format!("no answer in {EXCHANGE_TIMEOUT:?}")))?
    }
}

/// Reads one answer of an exchange, verified with TSIG when `verifier` is set. (Public for
/// the fuzz targets only.)
#[doc(hidden)]
pub fn read_answer(verifier: Option<&mut TSigVerifier>, buf: &[u8]) -> Result<Message, Error> {
    // Read without TSIG first, always: hickory-proto's TSIG reader asserts what only its plain
    // reader checks (a TSIG record before the last one; more answer and authority records
    // than a count holds) and so panics on such an answer in a debug build (found by the
    // dns_axfr fuzz target).
    let plain = Message::from_vec(buf)
        .map_err(|e| Error::Permanent(format!("decoding the answer: {e}")))?;
    match verifier {
        Some(v) => v
            .verify(buf)
            .map(|r| r.into_message())
            .map_err(|e| Error::Permanent(format!("TSIG verification: {e}"))),
        None => Ok(plain),
    }
}

/// Classifies a response code of an answer.
fn rcode_error(what: &str, rcode: ResponseCode) -> Option<Error> {
    match rcode {
        ResponseCode::NoError => None,
        ResponseCode::ServFail => Some(Error::Retryable(format!("{what}: SERVFAIL"))),
        other => Some(Error::Permanent(format!("{what}: {other}"))),
    }
}

/// The endpoint form of a record's data, for the types trellis manages.
fn target_of(data: &RData) -> Option<String> {
    match data {
        RData::A(a) => Some(a.0.to_string()),
        RData::AAAA(a) => Some(a.0.to_string()),
        RData::CNAME(c) => Some(c.0.to_ascii().trim_end_matches('.').to_ascii_lowercase()),
        RData::TXT(t) => Some(format!(
            "\"{}\"",
            t.txt_data
                .iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect::<String>()
        )),
        _ => None,
    }
}

/// What a zone transfer read so far: the record sets trellis manages, by name and type.
/// (Public for the fuzz targets only.)
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct Transfer {
    out: BTreeMap<(String, String), Endpoint>,
    soas: usize,
    count: usize,
}

impl Transfer {
    /// Takes one answer of the transfer `what`; whether it was the last.
    pub fn take(&mut self, what: &str, m: &Message) -> Result<bool, Error> {
        if let Some(e) = rcode_error(what, m.metadata.response_code) {
            return Err(e);
        }
        for r in &m.answers {
            self.count += 1;
            if self.count > TRANSFER_RECORDS_MAX {
                return Err(Error::Permanent(format!(
                    "{what}: more than {TRANSFER_RECORDS_MAX} records"
                )));
            }
            if r.record_type() == RecordType::SOA {
                self.soas += 1;
                continue;
            }
            let Some(target) = target_of(&r.data) else {
                continue;
            };
            let name = r.name.to_ascii().trim_end_matches('.').to_ascii_lowercase();
            let rtype = r.record_type().to_string();
            self.out
                .entry((name.clone(), rtype.clone()))
                .or_insert_with(|| Endpoint {
                    name,
                    record_type: rtype,
                    targets: Default::default(),
                    ttl: Some(r.ttl),
                    resource: String::new(),
                    provider_specific: Default::default(),
                })
                .targets
                .insert(target);
        }
        // The transfer ends with the SOA it began with.
        Ok(self.soas >= 2)
    }

    /// The record sets read, by name and type.
    pub fn endpoints(self) -> Vec<Endpoint> {
        self.out.into_values().collect()
    }
}

impl Provider for Rfc2136 {
    fn records(&self) -> BoxFuture<'_, Result<Vec<Endpoint>, Error>> {
        Box::pin(async move {
            let mut conn = Conn::open(self.server).await?;
            let mut axfr = Message::query();
            axfr.metadata.recursion_desired = false;
            let mut q = Query::new();
            q.set_name(self.zone.clone())
                .set_query_class(DNSClass::IN)
                .set_query_type(RecordType::AXFR);
            axfr.add_query(q);
            let what = format!("AXFR {} from {}", self.zone_text, self.server);
            let mut transfer = Transfer::default();
            conn.exchange(self.signer.as_ref(), axfr, |m| transfer.take(&what, m))
                .await?;
            Ok(transfer.endpoints())
        })
    }

    fn apply<'a>(&'a self, changes: &'a Changes) -> BoxFuture<'a, Vec<Failure>> {
        Box::pin(async move {
            let mut failures = Vec::new();
            let mut conn: Option<Conn> = None;
            let olds = changes.update_old.iter().map(Some);
            let work = changes
                .delete
                .iter()
                .map(|e| ("delete", None, e))
                .chain(olds.zip(&changes.update_new).map(|(o, e)| ("update", o, e)))
                .chain(changes.create.iter().map(|e| ("create", None, e)));
            for (action, old, e) in work {
                let what = format!("UPDATE {action} {} {}", e.record_type, e.name);
                let result = async {
                    let msg = self.change(action, old, e)?;
                    if conn.is_none() {
                        conn = Some(Conn::open(self.server).await?);
                    }
                    let c = conn
                        .as_mut()
                        .ok_or_else(|| Error::Retryable("no connection".into()))?;
                    let mut rcode = ResponseCode::NoError;
                    let r = c
                        .exchange(self.signer.as_ref(), msg, |m| {
                            rcode = m.metadata.response_code;
                            Ok(true)
                        })
                        .await;
                    if r.is_err() {
                        // The connection may be broken: the next change opens a new one.
                        conn = None;
                    }
                    r?;
                    rcode_error(&what, rcode).map_or(Ok(()), Err)
                }
                .await;
                if let Err(error) = result {
                    failures.push(Failure {
                        action,
                        endpoint: e.clone(),
                        error,
                    });
                }
            }
            failures
        })
    }

    fn domain_filter(&self) -> Vec<String> {
        vec![self.zone_text.clone()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier() -> TSigVerifier {
        let signer = TSigner::new(
            vec![7; 32],
            TsigAlgorithm::HmacSha256,
            Name::from_ascii("trellis.").expect("name"),
            TSIG_FUDGE_S,
        )
        .expect("a key");
        let mut m = Message::query();
        m.add_query(Query::query(
            Name::from_ascii("example.test.").expect("name"),
            RecordType::AXFR,
        ));
        m.finalize(&signer, now_s())
            .expect("signs")
            .expect("a verifier")
    }

    /// Answers that hickory-proto's TSIG reader asserted on (a panic in debug builds) are
    /// refused as errors (found by the dns_axfr fuzz target).
    #[test]
    fn malformed_signed_answers_are_errors_not_panics() {
        // 65,535 answers and one authority record promised (their sum overflows a u16), none
        // there.
        let counts = [0, 1, 0x84, 0, 0, 0, 0xff, 0xff, 0, 1, 0, 1];
        assert!(read_answer(Some(&mut verifier()), &counts).is_err());
        // A TSIG record that is not the last additional record.
        let signer = TSigner::new(
            vec![7; 32],
            TsigAlgorithm::HmacSha256,
            Name::from_ascii("trellis.").expect("name"),
            TSIG_FUDGE_S,
        )
        .expect("a key");
        let mut m = Message::query();
        m.metadata.message_type = MessageType::Response;
        m.finalize(&signer, now_s()).expect("signs");
        let mut bytes = m.to_vec().expect("encodes");
        // One more additional record after the TSIG: the root, type A, class IN, no data.
        bytes.extend_from_slice(&[0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0]);
        bytes[11] += 1;
        assert!(read_answer(Some(&mut verifier()), &bytes).is_err());
        assert!(read_answer(None, &bytes).is_err());
    }
}
