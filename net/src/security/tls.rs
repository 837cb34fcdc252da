//! TLS for SSL and SASL_SSL listeners: rustls (no OpenSSL) with its ring
//! provider, PEM stores as Kafka's KIP-651 names them. The server config is
//! swapped whole on reload (SIGHUP), so a renewed certificate takes effect
//! for new connections without a restart; connections already up keep
//! theirs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::Principal;
use crate::config::{BrokerConfig, ClientAuth};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {what} from {path}: {source}")]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{what}: no PEM {expected} found")]
    Missing { what: String, expected: &'static str },
    #[error("{what}: bad PEM: {message}")]
    Pem { what: String, message: String },
    #[error(
        "an SSL or SASL_SSL listener needs the broker's certificate and key: set ssl.keystore.location (a PEM \
         file with both), or ssl.keystore.certificate.chain and ssl.keystore.key"
    )]
    NoKeystore,
    #[error(
        "ssl.client.auth={0} needs the CAs client certificates are checked against: set ssl.truststore.location or ssl.truststore.certificates"
    )]
    NoTruststore(&'static str),
    #[error(
        "the controller listener is SSL: its voters check each other's certificates against the CAs of ssl.truststore.location or ssl.truststore.certificates, which is not set"
    )]
    ControllerNoTruststore,
    #[error("TLS configuration: {0}")]
    Rustls(String),
}

/// The TLS side of every TLS listener of a broker.
#[derive(Debug)]
pub(crate) struct TlsServer {
    current: ArcSwap<rustls::ServerConfig>,
    /// The client side of this broker's TLS to other brokers' native ports
    /// (replication, markers): its keystore as the client certificate, its
    /// truststore as the roots. None without a truststore.
    peers: arc_swap::ArcSwapOption<rustls::ClientConfig>,
}

impl TlsServer {
    /// Loads the stores `config` names.
    pub fn load(config: &BrokerConfig) -> Result<TlsServer, TlsError> {
        Ok(TlsServer {
            current: ArcSwap::from(build(config)?),
            peers: arc_swap::ArcSwapOption::new(build_peer_client(config)?),
        })
    }

    /// Reads the stores again; on an error the config in use stays.
    pub fn reload(&self, config: &BrokerConfig) -> Result<(), TlsError> {
        let (server, peers) = (build(config)?, build_peer_client(config)?);
        self.current.store(server);
        self.peers.store(peers);
        Ok(())
    }

    /// How this broker connects to other brokers' native ports over TLS,
    /// or None (no truststore to check them against).
    pub fn peer_client(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.peers.load_full()
    }

    pub fn acceptor(&self) -> futures_rustls::TlsAcceptor {
        futures_rustls::TlsAcceptor::from(self.current.load_full())
    }
}

fn build(config: &BrokerConfig) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let client_auth = config.client_auth().map_err(|err| TlsError::Rustls(err.0))?;
    let (chain, key) = keystore(config)?;
    // rustls 0.23.48 deprecates ring's provider because it lacks hybrid
    // post-quantum key exchange (X25519MLKEM768), which only aws-lc-rs
    // offers; aws-lc-rs builds a large C library (minutes on this 2-core
    // machine, in every CI run). Kafka's own JVM brokers offer no
    // post-quantum exchange either; moving to aws-lc-rs is a one-line
    // change here and in Cargo.toml when the build cost is worth it.
    #[allow(deprecated)]
    let provider = Arc::new(cipher_suites(rustls::crypto::ring::default_provider(), &config.ssl_cipher_suites)?);
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&protocol_versions(&config.ssl_enabled_protocols)?)
        .map_err(|err| TlsError::Rustls(err.to_string()))?;
    let builder = match client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Requested | ClientAuth::Required => {
            let name = if client_auth == ClientAuth::Required { "required" } else { "requested" };
            let roots = truststore(config)?.ok_or(TlsError::NoTruststore(name))?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier =
                if client_auth == ClientAuth::Requested { verifier.allow_unauthenticated() } else { verifier };
            builder.with_client_cert_verifier(verifier.build().map_err(|err| TlsError::Rustls(err.to_string()))?)
        }
    };
    let mut server = builder.with_single_cert(chain, key).map_err(|err| TlsError::Rustls(err.to_string()))?;
    // An operator who lists suites ranks them (AES-128-GCM before
    // AES-256-GCM costs a third less CPU per byte, for instance); rustls
    // otherwise follows the client's order.
    server.ignore_client_order = !config.ssl_cipher_suites.trim().is_empty();
    Ok(Arc::new(server))
}

/// Mutual TLS for the controller's (Raft) port: the server side requires a
/// client certificate the truststore's CAs signed (only brokers hold one),
/// the client side is the brokers' (`build_peer_client`). A controller
/// listener that is SSL without a truststore cannot check its peers: an
/// error.
pub(crate) fn controller_tls_configs(
    config: &BrokerConfig,
) -> Result<(Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>), TlsError> {
    let roots = truststore(config)?.ok_or(TlsError::ControllerNoTruststore)?;
    let (chain, key) = keystore(config)?;
    #[allow(deprecated)]
    let provider = Arc::new(cipher_suites(rustls::crypto::ring::default_provider(), &config.ssl_cipher_suites)?);
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|err| TlsError::Rustls(err.to_string()))?;
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&protocol_versions(&config.ssl_enabled_protocols)?)
        .map_err(|err| TlsError::Rustls(err.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|err| TlsError::Rustls(err.to_string()))?;
    let client = build_peer_client(config)?.ok_or(TlsError::ControllerNoTruststore)?;
    Ok((Arc::new(server), client))
}

/// The client side of broker-to-broker TLS: the truststore's CAs check the
/// other broker, whose certificate must name the host it is reached by;
/// the keystore's certificate is presented (servers may require one).
fn build_peer_client(config: &BrokerConfig) -> Result<Option<Arc<rustls::ClientConfig>>, TlsError> {
    let Some(roots) = truststore(config)? else { return Ok(None) };
    let (chain, key) = keystore(config)?;
    #[allow(deprecated)]
    let provider = Arc::new(cipher_suites(rustls::crypto::ring::default_provider(), &config.ssl_cipher_suites)?);
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&protocol_versions(&config.ssl_enabled_protocols)?)
        .map_err(|err| TlsError::Rustls(err.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|err| TlsError::Rustls(err.to_string()))?;
    Ok(Some(Arc::new(client)))
}

/// The provider's suites that `list` names (Kafka's `ssl.cipher.suites`),
/// in its order; an empty list keeps them all.
fn cipher_suites(
    mut provider: rustls::crypto::CryptoProvider,
    list: &str,
) -> Result<rustls::crypto::CryptoProvider, TlsError> {
    let names: Vec<&str> = list.split(',').map(str::trim).filter(|name| !name.is_empty()).collect();
    if names.is_empty() {
        return Ok(provider);
    }
    // rustls names TLS 1.3's suites TLS13_*; their IANA (and Kafka's)
    // names are TLS_AES_128_GCM_SHA256 and so on.
    let iana = |suite: &rustls::SupportedCipherSuite| format!("{:?}", suite.suite()).replacen("TLS13_", "TLS_", 1);
    let mut chosen = Vec::with_capacity(names.len());
    for name in names {
        let found =
            provider.cipher_suites.iter().find(|suite| iana(suite) == name || format!("{:?}", suite.suite()) == name);
        match found {
            Some(suite) if !chosen.contains(suite) => chosen.push(*suite),
            Some(_) => {}
            None => {
                let offered: Vec<String> = provider.cipher_suites.iter().map(iana).collect();
                return Err(TlsError::Rustls(format!(
                    "ssl.cipher.suites: {name:?} is not a suite this broker offers ({})",
                    offered.join(", ")
                )));
            }
        }
    }
    provider.cipher_suites = chosen;
    Ok(provider)
}

/// Kafka's `ssl.enabled.protocols` as rustls's versions (empty: both).
fn protocol_versions(list: &str) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, TlsError> {
    let mut versions = Vec::new();
    for name in list.split(',').map(str::trim).filter(|name| !name.is_empty()) {
        let version = match name {
            "TLSv1.3" => &rustls::version::TLS13,
            "TLSv1.2" => &rustls::version::TLS12,
            other => {
                return Err(TlsError::Rustls(format!(
                    "ssl.enabled.protocols: {other:?} is not one of TLSv1.2, TLSv1.3 (older ones are not offered)"
                )));
            }
        };
        if !versions.contains(&version) {
            versions.push(version);
        }
    }
    if versions.is_empty() {
        versions = vec![&rustls::version::TLS13, &rustls::version::TLS12];
    }
    Ok(versions)
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.to_path_buf(), source })
}

/// The broker's certificate chain and private key: both from
/// `ssl_keystore_location`, or the inline `ssl_keystore_certificate_chain`
/// and `ssl_keystore_key`.
#[allow(clippy::type_complexity)]
fn keystore(config: &BrokerConfig) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let (chain_pem, chain_what, key_pem, key_what) =
        match (&config.ssl_keystore_location, &config.ssl_keystore_certificate_chain, &config.ssl_keystore_key) {
            (_, Some(chain), Some(key)) => (
                chain.as_bytes().to_vec(),
                "ssl.keystore.certificate.chain".to_string(),
                key.as_bytes().to_vec(),
                "ssl.keystore.key".to_string(),
            ),
            (Some(path), _, _) => {
                let pem = read("the keystore", path)?;
                let what = format!("ssl.keystore.location {}", path.display());
                (pem.clone(), what.clone(), pem, what)
            }
            _ => return Err(TlsError::NoKeystore),
        };
    let chain = certificates(&chain_pem, &chain_what)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|err| match err {
        rustls_pki_types::pem::Error::NoItemsFound => {
            TlsError::Missing { what: key_what.clone(), expected: "private key" }
        }
        other => TlsError::Pem { what: key_what.clone(), message: other.to_string() },
    })?;
    Ok((chain, key))
}

/// The CAs client certificates are verified against, if configured.
fn truststore(config: &BrokerConfig) -> Result<Option<RootCertStore>, TlsError> {
    let (pem, what) = match (&config.ssl_truststore_certificates, &config.ssl_truststore_location) {
        (Some(inline), _) => (inline.as_bytes().to_vec(), "ssl.truststore.certificates".to_string()),
        (None, Some(path)) => (read("the truststore", path)?, format!("ssl.truststore.location {}", path.display())),
        (None, None) => return Ok(None),
    };
    let mut roots = RootCertStore::empty();
    for certificate in certificates(&pem, &what)? {
        roots.add(certificate).map_err(|err| TlsError::Pem { what: what.clone(), message: err.to_string() })?;
    }
    Ok(Some(roots))
}

fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| TlsError::Pem { what: what.to_string(), message: err.to_string() })?;
    if certificates.is_empty() {
        return Err(TlsError::Missing { what: what.to_string(), expected: "certificate" });
    }
    Ok(certificates)
}

/// A verified client certificate's principal, as Kafka's default
/// principal builder makes it: `User:` and the subject's distinguished
/// name in RFC 2253 form (most specific first: `CN=alice,O=Example,C=US`).
pub(crate) fn principal_of(certificate: &CertificateDer<'_>) -> Option<Principal> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref()).ok()?;
    let registry = x509_parser::objects::oid_registry();
    let mut rdns: Vec<String> = Vec::new();
    for rdn in parsed.subject().iter() {
        let attributes: Vec<String> = rdn
            .iter()
            .map(|attribute| {
                let oid = attribute.attr_type();
                let kind =
                    x509_parser::objects::oid2abbrev(oid, registry).map_or_else(|_| oid.to_id_string(), str::to_string);
                let value = attribute.as_str().map_or_else(|_| "#".to_string(), escape_rfc2253);
                format!("{kind}={value}")
            })
            .collect();
        rdns.push(attributes.join("+"));
    }
    rdns.reverse();
    Some(Principal::user(rdns.join(",")))
}

/// RFC 2253's escapes in an attribute value.
fn escape_rfc2253(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for (i, c) in value.chars().enumerate() {
        let leading = i == 0 && (c == ' ' || c == '#');
        let trailing = i + 1 == value.chars().count() && c == ' ';
        if matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';') || leading || trailing {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The controller port's mutual TLS when the controller listener is SSL
/// (else None), loaded at start so a bad store stops it with the file
/// named; `reload_controller_tls` swaps the configs on SIGHUP.
pub(crate) fn controller_tls(config: &BrokerConfig) -> Result<Option<spate_replication::TransportTls>, TlsError> {
    let protocol = config.controller_security_protocol().map_err(|err| TlsError::Rustls(err.0))?;
    if !protocol.uses_tls() {
        return Ok(None);
    }
    let (server, client) = controller_tls_configs(config)?;
    Ok(Some(spate_replication::TransportTls {
        server: Arc::new(ArcSwap::new(server)),
        client: Arc::new(ArcSwap::new(client)),
        peer_names: config.controller_voter_hosts().into_iter().collect(),
    }))
}

/// Reads the stores again for the controller port's TLS; on an error the
/// configs in use stay.
pub(crate) fn reload_controller_tls(
    tls: &spate_replication::TransportTls,
    config: &BrokerConfig,
) -> Result<(), TlsError> {
    let (server, client) = controller_tls_configs(config)?;
    tls.server.store(server);
    tls.client.store(client);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn certificate(names: &[(rcgen::DnType, &str)]) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (kind, value) in names {
            params.distinguished_name.push(kind.clone(), *value);
        }
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn a_client_certificate_names_its_principal_as_kafka_does() {
        let der = certificate(&[
            (rcgen::DnType::CountryName, "US"),
            (rcgen::DnType::OrganizationName, "Example, Inc"),
            (rcgen::DnType::CommonName, "alice"),
        ]);
        assert_eq!(principal_of(&der).unwrap().to_string(), "User:CN=alice,O=Example\\, Inc,C=US");
    }

    #[test]
    fn missing_or_bad_stores_are_named_in_the_error() {
        let config = BrokerConfig::default();
        assert!(matches!(TlsServer::load(&config), Err(TlsError::NoKeystore)));
        let config = BrokerConfig {
            ssl_keystore_certificate_chain: Some("not pem".into()),
            ssl_keystore_key: Some("not pem".into()),
            ..BrokerConfig::default()
        };
        let err = TlsServer::load(&config).unwrap_err().to_string();
        assert!(err.contains("ssl.keystore.certificate.chain") && err.contains("certificate"), "{err}");
        let config =
            BrokerConfig { ssl_keystore_location: Some("/nonexistent/broker.pem".into()), ..BrokerConfig::default() };
        let err = TlsServer::load(&config).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/broker.pem"), "{err}");
    }

    /// Runs a TLS handshake in memory between `server` and a rustls client
    /// that trusts `cert` (offering its default suites in its default
    /// order, AES-256-GCM first); the suite they agree on.
    fn negotiated(server: Arc<rustls::ServerConfig>, cert: CertificateDer<'static>) -> rustls::CipherSuite {
        let mut roots = RootCertStore::empty();
        roots.add(cert).unwrap();
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(client), name).unwrap();
        let mut server = rustls::ServerConnection::new(server).unwrap();
        for _ in 0..10 {
            let mut bytes = Vec::new();
            client.write_tls(&mut bytes).unwrap();
            server.read_tls(&mut bytes.as_slice()).unwrap();
            server.process_new_packets().unwrap();
            let mut bytes = Vec::new();
            server.write_tls(&mut bytes).unwrap();
            client.read_tls(&mut bytes.as_slice()).unwrap();
            client.process_new_packets().unwrap();
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
        }
        client.negotiated_cipher_suite().unwrap().suite()
    }

    #[test]
    fn the_operators_cipher_suites_and_protocols_are_offered_in_its_order() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap().self_signed(&key).unwrap();
        let base = BrokerConfig {
            ssl_keystore_certificate_chain: Some(cert.pem()),
            ssl_keystore_key: Some(key.serialize_pem()),
            ..BrokerConfig::default()
        };
        let server = |suites: &str, protocols: &str| {
            build(&BrokerConfig {
                ssl_cipher_suites: suites.into(),
                ssl_enabled_protocols: protocols.into(),
                ..base.clone()
            })
        };
        // Without a list the client's first choice wins.
        let default = negotiated(server("", "").unwrap(), cert.der().clone());
        assert_eq!(default, rustls::CipherSuite::TLS13_AES_256_GCM_SHA384);
        // The operator's order wins over the client's.
        let listed = server("TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384", "TLSv1.3").unwrap();
        assert_eq!(negotiated(listed, cert.der().clone()), rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        let tls12 = server("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "TLSv1.2").unwrap();
        assert_eq!(negotiated(tls12, cert.der().clone()), rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256);
        let unknown = server("TLS_RSA_WITH_RC4_128_MD5", "").unwrap_err().to_string();
        assert!(
            unknown.contains("TLS_RSA_WITH_RC4_128_MD5") && unknown.contains("TLS_AES_128_GCM_SHA256"),
            "{unknown}"
        );
        let old = server("", "TLSv1.1").unwrap_err().to_string();
        assert!(old.contains("TLSv1.1"), "{old}");
    }

    #[test]
    fn client_auth_without_a_truststore_is_refused() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap().self_signed(&key).unwrap();
        let config = BrokerConfig {
            ssl_keystore_certificate_chain: Some(cert.pem()),
            ssl_keystore_key: Some(key.serialize_pem()),
            ssl_client_auth: "required".into(),
            ..BrokerConfig::default()
        };
        assert!(matches!(TlsServer::load(&config), Err(TlsError::NoTruststore("required"))));
        let config = BrokerConfig { ssl_client_auth: "none".into(), ..config };
        TlsServer::load(&config).unwrap();
    }
}
