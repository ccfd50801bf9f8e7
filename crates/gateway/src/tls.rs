//! TLS termination: certificates from the listeners' Secrets, chosen by SNI.
//!
//! The listener is chosen the way routes are: the most specific listener hostname that
//! covers the SNI (exact, then wildcard, then none); among that listener's certificates, the
//! first whose names cover the SNI, else its first. Building a [`rustls::ServerConfig`] is
//! pure (PEM parsing, no I/O), so it happens in `compile`.

use std::fmt;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// One certificate with the names it is valid for.
pub struct Cert {
    pub key: Arc<CertifiedKey>,
    /// For matching: the leaf's DER, checked with webpki against the SNI.
    leaf: CertificateDer<'static>,
}

impl fmt::Debug for Cert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cert").finish_non_exhaustive()
    }
}

impl Cert {
    /// Parses a PEM certificate chain and key (a `kubernetes.io/tls` Secret's tls.crt/tls.key).
    pub fn from_pem(crt: &[u8], key: &[u8]) -> Result<Cert, String> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(crt)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("tls.crt: {e}"))?;
        let leaf = chain
            .first()
            .cloned()
            .ok_or("tls.crt holds no certificate")?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("tls.key: {e}"))?;
        let signing = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| format!("tls.key: {e}"))?;
        let certified = CertifiedKey::new(chain, signing);
        certified
            .keys_match()
            .map_err(|e| format!("tls.key does not belong to tls.crt: {e}"))?;
        Ok(Cert {
            key: Arc::new(certified),
            leaf,
        })
    }

    fn covers(&self, sni: &str) -> bool {
        let Ok(name) = ServerName::try_from(sni) else {
            return false;
        };
        webpki::EndEntityCert::try_from(&self.leaf)
            .is_ok_and(|c| c.verify_is_valid_for_subject_name(&name).is_ok())
    }
}

/// The certificates of one HTTPS listener.
#[derive(Debug)]
pub struct ListenerCerts {
    pub hostname: Option<String>,
    pub certs: Vec<Cert>,
}

/// Picks a certificate by SNI.
#[derive(Debug)]
pub struct CertStore {
    pub listeners: Vec<ListenerCerts>,
}

impl CertStore {
    pub fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let listener = match sni {
            Some(sni) => {
                let exact = self
                    .listeners
                    .iter()
                    .find(|l| l.hostname.as_deref() == Some(sni));
                let wild = || {
                    self.listeners
                        .iter()
                        .filter(|l| {
                            l.hostname
                                .as_deref()
                                .and_then(|h| h.strip_prefix("*."))
                                .is_some_and(|s| {
                                    sni.len() > s.len() + 1 && sni.ends_with(&format!(".{s}"))
                                })
                        })
                        .max_by_key(|l| l.hostname.as_ref().map(String::len))
                };
                exact
                    .or_else(wild)
                    .or_else(|| self.listeners.iter().find(|l| l.hostname.is_none()))
            }
            None => self.listeners.iter().find(|l| l.hostname.is_none()),
        }
        .or(self.listeners.first())?;
        let cert = match sni {
            Some(sni) => listener
                .certs
                .iter()
                .find(|c| c.covers(sni))
                .or(listener.certs.first()),
            None => listener.certs.first(),
        }?;
        Some(cert.key.clone())
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

/// Client-facing TLS settings (from a ClientTrafficPolicy).
#[derive(Clone, Debug)]
pub struct ClientTls {
    /// "1.2" or "1.3" (rustls offers nothing older).
    pub min_version: String,
    /// "1.2" or "1.3"/"Auto".
    pub max_version: String,
    pub alpn: Vec<Vec<u8>>,
}

impl Default for ClientTls {
    fn default() -> Self {
        ClientTls {
            min_version: "1.2".into(),
            max_version: "1.3".into(),
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        }
    }
}

/// Builds the server config of one TLS port.
pub fn server_config(
    store: CertStore,
    settings: &ClientTls,
) -> Result<rustls::ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] =
        match (settings.min_version.as_str(), settings.max_version.as_str()) {
            ("1.3", "1.2") => return Err("TLS minVersion 1.3 is above maxVersion 1.2".into()),
            ("1.3", _) => &[&rustls::version::TLS13],
            (_, "1.2") => &[&rustls::version::TLS12],
            _ => &[&rustls::version::TLS13, &rustls::version::TLS12],
        };
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(store));
    cfg.alpn_protocols = settings.alpn.clone();
    Ok(cfg)
}

/// QUIC settings from a port's TLS settings: the same certificates and versions, ALPN `h3`,
/// no 0-RTT (its early data could be replayed).
pub fn quic_server_config(
    tls: &rustls::ServerConfig,
    settings: &ClientTls,
) -> Result<quinn::ServerConfig, String> {
    // rustls keeps the versions to itself, and quinn only checks for a TLS 1.3 cipher suite:
    // a config capped at 1.2 would be taken and then fail every handshake.
    if settings.max_version == "1.2" {
        return Err("QUIC needs TLS 1.3 and the ClientTrafficPolicy caps TLS at 1.2".into());
    }
    let mut tls = tls.clone();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(tls))
        .map_err(|e| format!("QUIC needs TLS 1.3: {e}"))?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(crypto)))
}
