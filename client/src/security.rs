//! A Kafka client's security properties (`security.protocol`,
//! `sasl.mechanism`, `sasl.jaas.config` or `sasl.username` /
//! `sasl.password`, `ssl.ca.location`, `ssl.certificate.location`,
//! `ssl.key.location`) as this client's settings (`ClientConfig::sasl` and
//! `ClientConfig::tls`), so that the libraries and tools on top (Spate
//! Connect's worker, Spate Streams) read them as Kafka's clients do.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{ClientTls, SaslConfig, SaslMechanism};
use crate::error::ClientError;
use crate::limits::PEM_FILE_BYTES_MAX;

/// The keys `from_kafka_properties` reads.
pub const KAFKA_SECURITY_KEYS: [&str; 8] = [
    "security.protocol",
    "sasl.mechanism",
    "sasl.jaas.config",
    "sasl.username",
    "sasl.password",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
];

/// What the security properties ask of a connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientSecurity {
    pub sasl: Option<SaslConfig>,
    pub tls: Option<ClientTls>,
}

fn invalid(message: String) -> ClientError {
    ClientError::InvalidConfig(message)
}

/// Reads Kafka's client security keys through `get` (absent: None).
/// `security.protocol` PLAINTEXT (the default), SASL_PLAINTEXT, SSL or
/// SASL_SSL; SASL's mechanism PLAIN (the default, as Kafka's),
/// SCRAM-SHA-256 or SCRAM-SHA-512, its credentials from `sasl.username` and
/// `sasl.password` or Java's JAAS line; TLS trusting the PEM CAs of
/// `ssl.ca.location` (required: there is no system store to fall back on
/// here), with a client certificate for mutual TLS when both
/// `ssl.certificate.location` and `ssl.key.location` are given.
pub fn from_kafka_properties(get: &dyn Fn(&str) -> Option<String>) -> Result<ClientSecurity, ClientError> {
    let protocol = get("security.protocol").map_or("PLAINTEXT".to_string(), |p| p.trim().to_ascii_uppercase());
    let (uses_sasl, uses_tls) = match protocol.as_str() {
        "PLAINTEXT" => (false, false),
        "SASL_PLAINTEXT" => (true, false),
        "SSL" => (false, true),
        "SASL_SSL" => (true, true),
        other => {
            return Err(invalid(format!(
                "security.protocol {other:?}: expected PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
            )));
        }
    };
    let sasl = if uses_sasl { Some(sasl_login(get, &protocol)?) } else { None };
    let tls = if uses_tls { Some(tls(get)?) } else { None };
    Ok(ClientSecurity { sasl, tls })
}

fn sasl_login(get: &dyn Fn(&str) -> Option<String>, protocol: &str) -> Result<SaslConfig, ClientError> {
    let name = get("sasl.mechanism").unwrap_or_else(|| "PLAIN".to_string());
    let mechanism = SaslMechanism::parse(&name)
        .ok_or_else(|| invalid(format!("sasl.mechanism {name:?}: expected PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")))?;
    let jaas = get("sasl.jaas.config").unwrap_or_default();
    let username = get("sasl.username").or_else(|| jaas_option(&jaas, "username"));
    let password = get("sasl.password").or_else(|| jaas_option(&jaas, "password"));
    match (username, password) {
        (Some(username), Some(password)) => Ok(SaslConfig { mechanism, username, password }),
        _ => Err(invalid(format!(
            "security.protocol={protocol} needs a user name and password: sasl.username and sasl.password, or \
             sasl.jaas.config with username=\"...\" password=\"...\""
        ))),
    }
}

/// A value of `key="value"` in a JAAS line (`...ScramLoginModule required
/// username="alice" password="se\"cret";`; PlainLoginModule too), with
/// `\"` and `\\` escapes undone and spaces around `=` allowed.
pub fn jaas_option(jaas: &str, key: &str) -> Option<String> {
    let mut rest = jaas;
    loop {
        let at = rest.find(key)?;
        let before_ok = at == 0 || rest[..at].ends_with(|c: char| c.is_whitespace());
        let after = rest[at + key.len()..].trim_start();
        rest = &rest[at + key.len()..];
        let Some(value) = after.strip_prefix('=').map(str::trim_start) else { continue };
        if !before_ok {
            continue;
        }
        let quoted = value.strip_prefix('"')?;
        let mut out = String::new();
        let mut chars = quoted.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => return Some(out),
                '\\' => out.push(chars.next()?),
                c => out.push(c),
            }
        }
        return None;
    }
}

fn read_pem(key: &str, path: &Path) -> Result<Vec<u8>, ClientError> {
    let size = std::fs::metadata(path).map_err(|err| invalid(format!("{key} {}: {err}", path.display())))?.len();
    if size > PEM_FILE_BYTES_MAX {
        return Err(invalid(format!("{key} {} is {size} bytes: not a PEM file", path.display())));
    }
    std::fs::read(path).map_err(|err| invalid(format!("{key} {}: {err}", path.display())))
}

fn tls(get: &dyn Fn(&str) -> Option<String>) -> Result<ClientTls, ClientError> {
    let ca = get("ssl.ca.location").ok_or_else(|| invalid("TLS needs ssl.ca.location (the CAs to trust)".into()))?;
    let mut roots = rustls::RootCertStore::empty();
    let pem = read_pem("ssl.ca.location", Path::new(&ca))?;
    for certificate in CertificateDer::pem_slice_iter(&pem) {
        let certificate = certificate.map_err(|err| invalid(format!("ssl.ca.location {ca}: {err}")))?;
        roots.add(certificate).map_err(|err| invalid(format!("ssl.ca.location {ca}: {err}")))?;
    }
    if roots.is_empty() {
        return Err(invalid(format!("ssl.ca.location {ca}: no certificate")));
    }
    // ring, as the broker (net/src/security/tls.rs says why).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| invalid(format!("TLS: {err}")))?
        .with_root_certificates(roots);
    let config = match (get("ssl.certificate.location"), get("ssl.key.location")) {
        (None, None) => builder.with_no_client_auth(),
        (Some(chain_path), Some(key_path)) => {
            let chain_pem = read_pem("ssl.certificate.location", Path::new(&chain_path))?;
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(&chain_pem).filter_map(Result::ok).collect();
            if chain.is_empty() {
                return Err(invalid(format!("ssl.certificate.location {chain_path}: no certificate")));
            }
            let key_pem = read_pem("ssl.key.location", Path::new(&key_path))?;
            let key = PrivateKeyDer::from_pem_slice(&key_pem)
                .map_err(|_| invalid(format!("ssl.key.location {key_path}: no private key")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|err| invalid(format!("the client certificate: {err}")))?
        }
        _ => return Err(invalid("mutual TLS needs both ssl.certificate.location and ssl.key.location".into())),
    };
    Ok(ClientTls(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(text: &'static str) -> impl Fn(&str) -> Option<String> {
        move |key: &str| {
            text.lines().filter_map(|line| line.split_once('=')).find(|(k, _)| *k == key).map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn kafkas_keys_become_the_login_and_bad_ones_are_named() {
        assert_eq!(from_kafka_properties(&props("")).expect("plain"), ClientSecurity::default());
        let jaas = "security.protocol=SASL_PLAINTEXT\nsasl.mechanism=SCRAM-SHA-512\nsasl.jaas.config=org.apache.kafka.\
                    common.security.scram.ScramLoginModule required username=\"alice\" password=\"se\\\"cret\";";
        let sasl = from_kafka_properties(&props(jaas)).expect("valid").sasl.expect("a login");
        assert_eq!(
            (sasl.username.as_str(), sasl.password.as_str(), sasl.mechanism.name()),
            ("alice", "se\"cret", "SCRAM-SHA-512")
        );
        let plain =
            from_kafka_properties(&props("security.protocol=sasl_plaintext\nsasl.username=bob\nsasl.password=pw"));
        assert_eq!(plain.expect("valid").sasl.expect("login").mechanism.name(), "PLAIN");
        for (bad, named) in [
            ("security.protocol=TLS", "security.protocol"),
            ("security.protocol=SASL_PLAINTEXT", "sasl.username"),
            ("security.protocol=SASL_PLAINTEXT\nsasl.mechanism=GSSAPI\nsasl.username=a\nsasl.password=b", "GSSAPI"),
            ("security.protocol=SSL", "ssl.ca.location"),
            ("security.protocol=SSL\nssl.ca.location=/nonexistent/ca.pem", "/nonexistent/ca.pem"),
        ] {
            let err = from_kafka_properties(&props(bad)).expect_err(bad).to_string();
            assert!(err.contains(named), "{bad}: {err}");
        }
        assert_eq!(jaas_option("x myusername=\"no\" username=\"yes\"", "username").as_deref(), Some("yes"));
    }
}
