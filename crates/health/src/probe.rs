//! One probe of one endpoint, as Gatus makes it: http/https (method, headers, body,
//! redirects followed unless `client.ignore-redirect`, `client.insecure`, `client.timeout`,
//! `client.dns-resolver`), icmp (one echo), tcp and udp (optionally a body sent and up to
//! [`NETWORK_REPLY_BYTES_MAX`] read back), dns (one UDP query, the rcode and the last answer
//! as the body), tls and starttls (SMTP) with the certificate's expiry. The whole probe runs
//! within the endpoint's `client.timeout`.
//!
//! Errors are data: a probe never fails, it returns an [`Outcome`] with `errors`, and the
//! endpoint is healthy when there are none and every condition holds.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UdpSocket};

use crate::condition::{Outcome, Verdict};
use crate::endpoints::{Client, Endpoint, Kind};

/// The largest HTTP body read; a larger one is an error (a health endpoint answers small).
pub const BODY_BYTES_MAX: usize = 1 << 20;
/// What Gatus reads back from a tcp/udp/tls endpoint after sending its body.
pub const NETWORK_REPLY_BYTES_MAX: usize = 1024;
/// Redirects followed before giving up (Go's http.Client default).
pub const REDIRECTS_MAX: usize = 10;
/// One SMTP reply line, and the lines of one reply.
pub const SMTP_LINE_BYTES_MAX: usize = 1024;
pub const SMTP_REPLY_LINES_MAX: usize = 100;
/// Gatus's User-Agent, sent unless the endpoint sets one.
pub const USER_AGENT: &str = "Gatus/1.0";

/// One probe's result: what was found, each condition's verdict, and the overall health.
#[derive(Clone, Debug)]
pub struct Probed {
    pub outcome: Outcome,
    pub verdicts: Vec<Verdict>,
    pub success: bool,
}

/// TLS settings shared by every probe: one verifying configuration (the system's CA bundle,
/// or the roots given) and one that verifies nothing (`client.insecure`).
#[derive(Clone)]
pub struct Tls {
    verified: Arc<rustls::ClientConfig>,
    insecure: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

impl Tls {
    /// Trusts the certificates of a PEM bundle (the system's is [`httpkit::CA_BUNDLE`]); a
    /// missing or empty bundle trusts nothing (verified probes then fail, insecure ones work).
    pub fn with_roots(pem: &std::path::Path) -> Tls {
        let roots = httpkit::root_store(pem).unwrap_or_else(|e| {
            tracing::warn!(bundle = %pem.display(), error = %e, "no CA certificates");
            rustls::RootCertStore::empty()
        });
        let verified =
            httpkit::client_config(roots).expect("ring supports the default protocol versions");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let insecure = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
            .with_no_client_auth();
        Tls {
            verified: Arc::new(verified),
            insecure: Arc::new(insecure),
        }
    }

    pub fn system() -> Tls {
        Tls::with_roots(std::path::Path::new(httpkit::CA_BUNDLE))
    }

    fn config(&self, insecure: bool) -> Arc<rustls::ClientConfig> {
        if insecure {
            self.insecure.clone()
        } else {
            self.verified.clone()
        }
    }
}

/// `client.insecure`: any certificate, any name (signatures are still checked so the
/// handshake means something).
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Probes `e` once and evaluates its conditions.
pub async fn probe(e: &Endpoint, tls: &Tls) -> Probed {
    let mut o = Outcome::default();
    let start = Instant::now();
    let work = async {
        match e.kind {
            Kind::Http => http(e, tls, &mut o, start).await,
            Kind::Tcp => tcp(e, &mut o).await,
            Kind::Udp => udp(e, &mut o).await,
            Kind::Dns => dns(e, &mut o).await,
            Kind::Tls => tls_probe(e, tls, &mut o, false).await,
            Kind::StartTls => tls_probe(e, tls, &mut o, true).await,
            Kind::Icmp => icmp(e, &mut o).await,
        }
    };
    let result = tokio::time::timeout(e.client.timeout, work).await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(err)) => o.errors.push(err),
        Err(_) => o.errors.push(format!(
            "no answer within {:?} (client.timeout)",
            e.client.timeout
        )),
    }
    if o.duration.is_zero() {
        o.duration = start.elapsed();
    }
    let verdicts: Vec<Verdict> = e.conditions.iter().map(|c| c.evaluate(&o)).collect();
    let success = o.errors.is_empty() && verdicts.iter().all(|v| v.success);
    Probed {
        outcome: o,
        verdicts,
        success,
    }
}

/// `host:port` of a URL's authority (brackets allowed around IPv6), with a default port.
fn host_port(authority: &str, default_port: Option<u16>) -> Result<(String, u16), String> {
    let authority = authority.split('/').next().unwrap_or("");
    // `user:pass@host:port`: the host is after the last `@`.
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or("unclosed [ in the address")?;
        (h.to_string(), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    let port = match (port, default_port) {
        (Some(p), _) => p.parse().map_err(|_| format!("port {p:?}"))?,
        (None, Some(d)) => d,
        (None, None) => return Err(format!("{authority:?}: no port (host:port)")),
    };
    if host.is_empty() {
        return Err(format!("{authority:?}: no host"));
    }
    Ok((host, port))
}

/// The address to reach: an IP as written, else resolved through `client.dns-resolver` or
/// the system's resolver.
async fn resolve(host: &str, port: u16, client: &Client) -> Result<SocketAddr, String> {
    let bare = host.trim_end_matches('.');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    if let Some(r) = &client.dns_resolver {
        let answer = query(r.addr, r.tcp, host, RecordType::A, client.timeout)
            .await
            .map_err(|e| format!("resolving {host} at {}: {e}", r.addr))?;
        return answer
            .answers
            .iter()
            .find_map(|rec| match &rec.data {
                RData::A(a) => Some(SocketAddr::new(IpAddr::V4(a.0), port)),
                _ => None,
            })
            .ok_or_else(|| format!("resolving {host} at {}: no address", r.addr));
    }
    tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("resolving {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("resolving {host}: no address"))
}

async fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))
}

/// Connects TLS over `tcp` and returns the stream and the peer certificate's expiry (ms
/// from now).
async fn handshake(
    tcp: TcpStream,
    host: &str,
    tls: &Tls,
    insecure: bool,
) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, i64), String> {
    let name = rustls_pki_types::ServerName::try_from(host.trim_end_matches('.').to_string())
        .map_err(|e| format!("TLS server name {host:?}: {e}"))?;
    let stream = tokio_rustls::TlsConnector::from(tls.config(insecure))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake with {host}: {e}"))?;
    let expiry = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| crate::x509::not_after(c))
        .map(|not_after| {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            not_after * 1000 - now
        })
        .unwrap_or(0);
    Ok((stream, expiry))
}

async fn http(e: &Endpoint, tls: &Tls, o: &mut Outcome, start: Instant) -> Result<(), String> {
    let mut url = e.url.clone();
    let mut method = http::Method::from_bytes(e.method.as_bytes())
        .map_err(|_| format!("method {:?}", e.method))?;
    let mut body = Bytes::from(e.body.clone());
    for _hop in 0..=REDIRECTS_MAX {
        let uri: http::Uri = url.parse().map_err(|err| format!("url {url:?}: {err}"))?;
        let https = uri.scheme_str() == Some("https");
        let authority = uri
            .authority()
            .ok_or_else(|| format!("url {url:?}: no host"))?;
        let (host, port) = host_port(authority.as_str(), Some(if https { 443 } else { 80 }))?;
        let addr = resolve(&host, port, &e.client).await?;
        o.ip = addr.ip().to_string();
        let mut req = http::Request::builder()
            .method(method.clone())
            .uri(uri.path_and_query().map_or("/", |p| p.as_str()));
        let has = |name: &str| e.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
        if !has("host") {
            req = req.header(http::header::HOST, authority.as_str());
        }
        if !has("user-agent") {
            req = req.header(http::header::USER_AGENT, USER_AGENT);
        }
        for (k, v) in &e.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req
            .body(body.clone())
            .map_err(|err| format!("request: {err}"))?;
        let what = format!("{method} {url}");
        let tcp = connect(addr).await?;
        let resp = if https {
            let (stream, expiry) = handshake(tcp, &host, tls, e.client.insecure).await?;
            o.certificate_expiration_ms = expiry;
            httpkit::exchange_on(stream, req, &what, BODY_BYTES_MAX).await
        } else {
            httpkit::exchange_on(tcp, req, &what, BODY_BYTES_MAX).await
        }
        .map_err(|err| err.to_string())?;
        let redirect = matches!(resp.status, 301 | 302 | 303 | 307 | 308);
        let location = resp
            .headers
            .get(http::header::LOCATION)
            .and_then(|l| l.to_str().ok());
        if redirect
            && !e.client.ignore_redirect
            && let Some(location) = location
        {
            url = join(&uri, location);
            // As browsers and Go do: 303, and 301/302 after a POST, continue with a GET.
            if resp.status == 303
                || (matches!(resp.status, 301 | 302) && method == http::Method::POST)
            {
                method = http::Method::GET;
                body = Bytes::new();
            }
            continue;
        }
        o.duration = start.elapsed();
        o.status = resp.status;
        o.connected = true;
        o.body = resp.body.to_vec();
        return Ok(());
    }
    Err(format!("stopped after {REDIRECTS_MAX} redirects"))
}

/// `location` resolved against `base` (absolute, scheme-relative, absolute path, or
/// relative path).
fn join(base: &http::Uri, location: &str) -> String {
    let scheme = base.scheme_str().unwrap_or("http");
    let authority = base.authority().map_or("", |a| a.as_str());
    if location.contains("://") {
        location.to_string()
    } else if let Some(rest) = location.strip_prefix("//") {
        format!("{scheme}://{rest}")
    } else if location.starts_with('/') {
        format!("{scheme}://{authority}{location}")
    } else {
        let dir = base.path().rsplit_once('/').map_or("", |(d, _)| d);
        format!("{scheme}://{authority}{dir}/{location}")
    }
}

fn network_target(e: &Endpoint, scheme: &str) -> Result<(String, u16), String> {
    let rest = e
        .url
        .strip_prefix(scheme)
        .ok_or_else(|| format!("url {:?}: expected {scheme}host:port", e.url))?;
    host_port(rest, None)
}

async fn icmp(e: &Endpoint, o: &mut Outcome) -> Result<(), String> {
    let rest = e.url.trim_start_matches("icmp://");
    let rest = rest.split('/').next().unwrap_or("");
    let host = rest
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(rest);
    if host.is_empty() {
        return Err(format!("url {:?}: expected icmp://host", e.url));
    }
    let addr = resolve(host, 0, &e.client).await?;
    o.ip = addr.ip().to_string();
    // As Gatus: no reply is `[CONNECTED] == false`; a socket that cannot be had is an error.
    match crate::icmp::echo(addr.ip()).await {
        Ok(rtt) => {
            o.duration = rtt;
            o.connected = true;
            Ok(())
        }
        Err(err) if err.starts_with("ICMP socket") => Err(err),
        Err(_) => Ok(()),
    }
}

async fn tcp(e: &Endpoint, o: &mut Outcome) -> Result<(), String> {
    let (host, port) = network_target(e, "tcp://")?;
    let addr = resolve(&host, port, &e.client).await?;
    o.ip = addr.ip().to_string();
    // As Gatus: a refused connection is `[CONNECTED] == false`, not an error.
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return Ok(());
    };
    if !e.body.is_empty() {
        let body = e.body.replace(
            "[LOCAL_ADDRESS]",
            &stream
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
        );
        if stream.write_all(body.as_bytes()).await.is_err() {
            return Ok(());
        }
        let mut buf = vec![0u8; NETWORK_REPLY_BYTES_MAX];
        match stream.read(&mut buf).await {
            Ok(n) => o.body = buf[..n].to_vec(),
            Err(_) => return Ok(()),
        }
    }
    o.connected = true;
    Ok(())
}

async fn udp(e: &Endpoint, o: &mut Outcome) -> Result<(), String> {
    let (host, port) = network_target(e, "udp://")?;
    let addr = resolve(&host, port, &e.client).await?;
    o.ip = addr.ip().to_string();
    let bind: SocketAddr = if addr.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let Ok(sock) = UdpSocket::bind(bind).await else {
        return Ok(());
    };
    if sock.connect(addr).await.is_err() {
        return Ok(());
    }
    if !e.body.is_empty() {
        if sock.send(e.body.as_bytes()).await.is_err() {
            return Ok(());
        }
        let mut buf = vec![0u8; NETWORK_REPLY_BYTES_MAX];
        match sock.recv(&mut buf).await {
            Ok(n) => o.body = buf[..n].to_vec(),
            Err(_) => return Ok(()),
        }
    }
    o.connected = true;
    Ok(())
}

async fn tls_probe(e: &Endpoint, tls: &Tls, o: &mut Outcome, starttls: bool) -> Result<(), String> {
    let scheme = if starttls { "starttls://" } else { "tls://" };
    let (host, port) = network_target(e, scheme)?;
    let addr = resolve(&host, port, &e.client).await?;
    o.ip = addr.ip().to_string();
    let mut tcp = connect(addr).await?;
    if starttls {
        smtp_starttls(&mut tcp).await?;
    }
    let (mut stream, expiry) = handshake(tcp, &host, tls, e.client.insecure).await?;
    o.certificate_expiration_ms = expiry;
    if !starttls && !e.body.is_empty() {
        stream
            .write_all(e.body.as_bytes())
            .await
            .map_err(|err| format!("writing to {addr}: {err}"))?;
        let mut buf = vec![0u8; NETWORK_REPLY_BYTES_MAX];
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|err| format!("reading from {addr}: {err}"))?;
        o.body = buf[..n].to_vec();
    }
    o.connected = true;
    Ok(())
}

/// The SMTP dialogue up to the TLS handshake: greeting (220), EHLO (250), STARTTLS (220).
async fn smtp_starttls(tcp: &mut TcpStream) -> Result<(), String> {
    let mut reader = BufReader::new(tcp);
    smtp_reply(&mut reader, 220, "greeting").await?;
    reader
        .get_mut()
        .write_all(b"EHLO localhost\r\n")
        .await
        .map_err(|e| format!("SMTP EHLO: {e}"))?;
    let ehlo = smtp_reply(&mut reader, 250, "EHLO").await?;
    if !ehlo.iter().any(|l| {
        l.get(4..)
            .is_some_and(|x| x.trim().eq_ignore_ascii_case("STARTTLS"))
    }) {
        return Err("SMTP server does not offer STARTTLS".into());
    }
    reader
        .get_mut()
        .write_all(b"STARTTLS\r\n")
        .await
        .map_err(|e| format!("SMTP STARTTLS: {e}"))?;
    smtp_reply(&mut reader, 220, "STARTTLS").await?;
    if !reader.buffer().is_empty() {
        return Err("SMTP server sent data before the TLS handshake".into());
    }
    Ok(())
}

/// One SMTP reply (`250-…` lines up to `250 …`), bounded; its lines.
async fn smtp_reply(
    r: &mut BufReader<&mut TcpStream>,
    want: u16,
    step: &str,
) -> Result<Vec<String>, String> {
    let mut lines = Vec::new();
    loop {
        if lines.len() >= SMTP_REPLY_LINES_MAX {
            return Err(format!(
                "SMTP {step}: more than {SMTP_REPLY_LINES_MAX} lines"
            ));
        }
        let mut line = Vec::new();
        let n = (&mut *r)
            .take(SMTP_LINE_BYTES_MAX as u64)
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| format!("SMTP {step}: {e}"))?;
        if n == 0 {
            return Err(format!("SMTP {step}: connection closed"));
        }
        if line.last() != Some(&b'\n') {
            return Err(format!(
                "SMTP {step}: a line over {SMTP_LINE_BYTES_MAX} bytes"
            ));
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        let code: u16 = text
            .get(..3)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("SMTP {step}: not a reply: {text:?}"))?;
        let last = text.as_bytes().get(3) != Some(&b'-');
        if code != want {
            return Err(format!("SMTP {step}: {text}"));
        }
        lines.push(text);
        if last {
            return Ok(lines);
        }
    }
}

async fn dns(e: &Endpoint, o: &mut Outcome) -> Result<(), String> {
    let q = e.dns.as_ref().ok_or("dns endpoint without a dns section")?;
    let (host, port) = host_port(e.url.trim_start_matches("udp://"), Some(53))?;
    let server = resolve(&host, port, &e.client).await?;
    o.ip = server.ip().to_string();
    let rtype: RecordType = q
        .query_type
        .parse()
        .map_err(|_| format!("query type {:?}", q.query_type))?;
    let start = Instant::now();
    let answer = query(server, false, &q.query_name, rtype, e.client.timeout).await?;
    o.duration = start.elapsed();
    o.connected = true;
    o.dns_rcode = rcode_name(u16::from(answer.metadata.response_code));
    // As Gatus: the body is the last answer's value (TXT answers are joined by lines).
    let mut body: Vec<u8> = Vec::new();
    for rec in &answer.answers {
        match &rec.data {
            RData::A(a) => body = a.0.to_string().into_bytes(),
            RData::AAAA(a) => body = a.0.to_string().into_bytes(),
            RData::CNAME(c) => body = c.0.to_ascii().into_bytes(),
            RData::MX(mx) => body = mx.exchange.to_ascii().into_bytes(),
            RData::NS(ns) => body = ns.0.to_ascii().into_bytes(),
            RData::PTR(p) => body = p.0.to_ascii().into_bytes(),
            RData::SRV(s) => body = format!("{}:{}", s.target.to_ascii(), s.port).into_bytes(),
            RData::TXT(t) => {
                if !body.is_empty() {
                    body.push(b'\n');
                }
                for part in t.txt_data.iter() {
                    body.extend_from_slice(part);
                }
            }
            _ => body = b"query type is not supported yet".to_vec(),
        }
    }
    o.body = body;
    Ok(())
}

/// The rcode's name as Gatus (miekg/dns) prints it.
fn rcode_name(code: u16) -> String {
    match code {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        16 => "BADSIG",
        17 => "BADKEY",
        18 => "BADTIME",
        19 => "BADMODE",
        20 => "BADNAME",
        21 => "BADALG",
        22 => "BADTRUNC",
        23 => "BADCOOKIE",
        other => return other.to_string(),
    }
    .to_string()
}

/// One DNS query (recursion desired) to `server` over UDP (TCP when truncated) or TCP, each
/// step bounded by `timeout` (the caller bounds the whole probe as well).
async fn query(
    server: SocketAddr,
    tcp: bool,
    name: &str,
    rtype: RecordType,
    timeout: std::time::Duration,
) -> Result<Message, String> {
    let fqdn = if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    };
    let name = Name::from_ascii(&fqdn).map_err(|e| format!("query name {fqdn:?}: {e}"))?;
    let transport = if tcp {
        dns::forward::Transport::Tcp
    } else {
        dns::forward::Transport::Udp
    };
    dns::forward::exchange(server, &Query::query(name, rtype), transport, timeout)
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(host_port("a:80", None), Ok(("a".into(), 80)));
        assert_eq!(host_port("[::1]:53", None), Ok(("::1".into(), 53)));
        assert_eq!(host_port("1.1.1.1", Some(53)), Ok(("1.1.1.1".into(), 53)));
        assert!(host_port("a", None).is_err());
        assert!(host_port(":80", None).is_err());
        assert_eq!(
            host_port("user:p@ss:w@a.example:8443/x", None),
            Ok(("a.example".into(), 8443))
        );
    }

    #[test]
    fn redirects_resolve_against_the_request() {
        let base: http::Uri = "https://a.test/x/y?q".parse().expect("uri");
        assert_eq!(join(&base, "/z"), "https://a.test/z");
        assert_eq!(join(&base, "z"), "https://a.test/x/z");
        assert_eq!(join(&base, "//b.test/"), "https://b.test/");
        assert_eq!(join(&base, "http://c.test/"), "http://c.test/");
    }
}
