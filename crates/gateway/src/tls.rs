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
    /// The TLS 1.2 suites offered, by IANA code in the policy's order of preference (`tls.
    /// ciphers`); `None` offers rustls's own. TLS 1.3's suites are never restricted.
    pub tls12_suites: Option<Vec<u16>>,
}

impl Default for ClientTls {
    fn default() -> Self {
        ClientTls {
            min_version: "1.2".into(),
            max_version: "1.3".into(),
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            tls12_suites: None,
        }
    }
}

/// The crypto provider of a TLS port: rustls's (ring), with its TLS 1.2 suites cut to and
/// ordered by `tls12_suites` when the policy lists them.
fn provider(tls12_suites: Option<&[u16]>) -> rustls::crypto::CryptoProvider {
    let mut p = rustls::crypto::ring::default_provider();
    if let Some(wanted) = tls12_suites {
        let rank = |s: &rustls::SupportedCipherSuite| {
            let code = u16::from(s.suite());
            wanted.iter().position(|w| *w == code)
        };
        p.cipher_suites.retain(|s| match s {
            rustls::SupportedCipherSuite::Tls13(_) => true,
            rustls::SupportedCipherSuite::Tls12(_) => rank(s).is_some(),
        });
        // TLS 1.3's first, as rustls has them; then 1.2's in the policy's order.
        p.cipher_suites.sort_by_key(|s| match s {
            rustls::SupportedCipherSuite::Tls13(_) => 0,
            rustls::SupportedCipherSuite::Tls12(_) => 1 + rank(s).unwrap_or(usize::MAX - 1),
        });
    }
    p
}

/// Builds the server config of one TLS port.
pub fn server_config(
    store: CertStore,
    settings: &ClientTls,
) -> Result<rustls::ServerConfig, String> {
    let provider = Arc::new(provider(settings.tls12_suites.as_deref()));
    let has_tls12 = provider
        .cipher_suites
        .iter()
        .any(|s| matches!(s, rustls::SupportedCipherSuite::Tls12(_)));
    let versions: &[&rustls::SupportedProtocolVersion] = match (
        settings.min_version.as_str(),
        settings.max_version.as_str(),
        has_tls12,
    ) {
        ("1.3", "1.2", _) => return Err("TLS minVersion 1.3 is above maxVersion 1.2".into()),
        (_, "1.2", false) => {
            return Err(
                "no TLS 1.2 cipher suite listed is one trellis offers, and maxVersion 1.2 \
                     leaves no other way to connect"
                    .into(),
            );
        }
        ("1.3", _, _) | (_, _, false) => &[&rustls::version::TLS13],
        (_, "1.2", true) => &[&rustls::version::TLS12],
        _ => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(store));
    cfg.alpn_protocols = settings.alpn.clone();
    // A listed order is the server's preference, as Envoy takes it.
    cfg.ignore_client_order = settings.tls12_suites.is_some();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The suites validation says trellis offers are the TLS 1.2 suites rustls implements.
    #[test]
    fn the_offered_cipher_table_is_rustls_s() {
        let mut ours: Vec<u16> = model::kinds::envoy::TLS12_CIPHERS
            .iter()
            .filter(|(_, _, offered)| *offered)
            .map(|(_, code, _)| *code)
            .collect();
        let mut rustls_s: Vec<u16> = rustls::crypto::ring::default_provider()
            .cipher_suites
            .iter()
            .filter(|s| matches!(s, rustls::SupportedCipherSuite::Tls12(_)))
            .map(|s| u16::from(s.suite()))
            .collect();
        ours.sort_unstable();
        rustls_s.sort_unstable();
        assert_eq!(ours, rustls_s);
        // A list keeps TLS 1.3's suites and the named 1.2 ones, in the list's order.
        let p = provider(Some(&[0xCCA9, 0xC02B]));
        let tls12: Vec<u16> = p
            .cipher_suites
            .iter()
            .filter(|s| matches!(s, rustls::SupportedCipherSuite::Tls12(_)))
            .map(|s| u16::from(s.suite()))
            .collect();
        assert_eq!(tls12, [0xCCA9, 0xC02B]);
        assert!(
            p.cipher_suites
                .iter()
                .any(|s| matches!(s, rustls::SupportedCipherSuite::Tls13(_)))
        );
    }
}
