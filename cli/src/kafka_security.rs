//! The Kafka client settings of the CLI's Kafka-protocol commands (`spate
//! acl`, `spate user`), with librdkafka's names: `security.protocol`,
//! `sasl.mechanism`, `sasl.username`, `sasl.password` (or Java's
//! `sasl.jaas.config`), `ssl.ca.location`, `ssl.certificate.location`,
//! `ssl.key.location`. They come from `--command-config FILE` (a Kafka
//! client's properties file, read by the broker's own parser) and flags,
//! the flags winning. TLS is rustls with the ring provider, as the broker;
//! the broker's host name is always verified.

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use spate_net::security::SecurityProtocol;

use spate_client::security::jaas_option;

use crate::limits::{COMMAND_CONFIG_BYTES_MAX, PEM_FILE_BYTES_MAX};

/// The security flags: global, for the native commands (SASL only: the
/// native port has no TLS yet) and the Kafka-protocol ones (acl, user,
/// txn) alike.
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct SecurityArgs {
    /// A Kafka client properties file (security.protocol, sasl.mechanism,
    /// sasl.username, sasl.password or sasl.jaas.config, ssl.ca.location,
    /// ssl.certificate.location, ssl.key.location); flags override it.
    #[arg(long, value_name = "FILE", global = true)]
    command_config: Option<PathBuf>,
    /// PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (default PLAINTEXT).
    #[arg(long, global = true)]
    security_protocol: Option<String>,
    /// PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (default PLAIN, as Kafka's).
    #[arg(long, global = true)]
    sasl_mechanism: Option<String>,
    /// The SASL user.
    #[arg(long, global = true)]
    sasl_username: Option<String>,
    /// The SASL password (better from the environment than the command
    /// line, where other users of the machine can read it).
    #[arg(long, env = "SPATE_SASL_PASSWORD", hide_env_values = true, global = true)]
    sasl_password: Option<String>,
    /// A PEM file of the CAs to trust (default: Mozilla's roots, built in).
    #[arg(long, global = true)]
    ssl_ca_location: Option<PathBuf>,
    /// This client's certificate chain (PEM), for mutual TLS.
    #[arg(long, global = true)]
    ssl_certificate_location: Option<PathBuf>,
    /// This client's private key (PEM), for mutual TLS.
    #[arg(long, global = true)]
    ssl_key_location: Option<PathBuf>,
}

/// Why the settings cannot make a connection.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SettingsError {
    #[error("reading {what} {path}: {source}")]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{what} {path} is over {max} bytes: not a {what}", max = .max_bytes)]
    TooLarge { what: &'static str, path: PathBuf, max_bytes: u64 },
    #[error("security.protocol {0:?}: expected PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")]
    Protocol(String),
    #[error("sasl.mechanism {0:?}: expected PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")]
    Mechanism(String),
    #[error("security.protocol {protocol} needs {what} (sasl.username and sasl.password, or sasl.jaas.config)")]
    MissingCredential { protocol: SecurityProtocol, what: &'static str },
    #[error("no certificate in {what} {path}")]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("no private key in ssl.key.location {path}")]
    NoKey { path: PathBuf },
    #[error("mutual TLS needs both ssl.certificate.location and ssl.key.location")]
    HalfClientCertificate,
    #[error("the client certificate and key do not go together: {0}")]
    ClientCertificate(rustls::Error),
    #[error("{0:?} is not a host name or address TLS can verify")]
    ServerName(String),
    #[error("TLS settings: {0}")]
    Tls(rustls::Error),
}

/// A SASL mechanism and login as the client library takes them (Debug
/// never shows the password).
pub(crate) use spate_client::{SaslConfig as SaslLogin, SaslMechanism};

/// The resolved settings of one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientSecurity {
    pub protocol: SecurityProtocol,
    pub sasl: Option<SaslLogin>,
    pub ssl_ca_location: Option<PathBuf>,
    pub ssl_certificate_location: Option<PathBuf>,
    pub ssl_key_location: Option<PathBuf>,
}

fn read_bounded(what: &'static str, path: &Path, max_bytes: u64) -> Result<Vec<u8>, SettingsError> {
    let read = |source| SettingsError::Read { what, path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(read)?;
    let mut bytes = Vec::new();
    file.take(max_bytes + 1).read_to_end(&mut bytes).map_err(read)?;
    if bytes.len() as u64 > max_bytes {
        return Err(SettingsError::TooLarge { what, path: path.to_path_buf(), max_bytes });
    }
    Ok(bytes)
}

impl SecurityArgs {
    /// The settings: the file's, then the flags over them.
    pub(crate) fn resolve(&self) -> Result<ClientSecurity, SettingsError> {
        let mut file: Vec<(String, String)> = Vec::new();
        if let Some(path) = &self.command_config {
            let bytes = read_bounded("--command-config", path, COMMAND_CONFIG_BYTES_MAX)?;
            file = spate_net::config::properties(&String::from_utf8_lossy(&bytes));
        }
        let from_file = |key: &str| file.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        let jaas = from_file("sasl.jaas.config");
        let protocol_name = self.security_protocol.clone().or_else(|| from_file("security.protocol"));
        let protocol = match protocol_name {
            None => SecurityProtocol::Plaintext,
            Some(name) => SecurityProtocol::parse(name.trim()).ok_or(SettingsError::Protocol(name))?,
        };
        let sasl = if protocol.uses_sasl() {
            let mechanism = match self.sasl_mechanism.clone().or_else(|| from_file("sasl.mechanism")) {
                None => SaslMechanism::Plain,
                Some(name) => SaslMechanism::parse(&name).ok_or(SettingsError::Mechanism(name))?,
            };
            let username = self
                .sasl_username
                .clone()
                .or_else(|| from_file("sasl.username"))
                .or_else(|| jaas.as_deref().and_then(|j| jaas_option(j, "username")))
                .ok_or(SettingsError::MissingCredential { protocol, what: "a user name" })?;
            let password = self
                .sasl_password
                .clone()
                .or_else(|| from_file("sasl.password"))
                .or_else(|| jaas.as_deref().and_then(|j| jaas_option(j, "password")))
                .ok_or(SettingsError::MissingCredential { protocol, what: "a password" })?;
            Some(SaslLogin { mechanism, username, password })
        } else {
            None
        };
        let path = |flag: &Option<PathBuf>, key: &str| flag.clone().or_else(|| from_file(key).map(PathBuf::from));
        Ok(ClientSecurity {
            protocol,
            sasl,
            ssl_ca_location: path(&self.ssl_ca_location, "ssl.ca.location"),
            ssl_certificate_location: path(&self.ssl_certificate_location, "ssl.certificate.location"),
            ssl_key_location: path(&self.ssl_key_location, "ssl.key.location"),
        })
    }
}

fn certificates(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, SettingsError> {
    let pem = read_bounded(what, path, PEM_FILE_BYTES_MAX)?;
    let certificates: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok).collect();
    if certificates.is_empty() {
        return Err(SettingsError::NoCertificate { what, path: path.to_path_buf() });
    }
    Ok(certificates)
}

impl ClientSecurity {
    /// The rustls configuration for a TLS protocol.
    pub(crate) fn tls_config(&self) -> Result<Arc<ClientConfig>, SettingsError> {
        let mut roots = RootCertStore::empty();
        match &self.ssl_ca_location {
            Some(path) => {
                for certificate in certificates("ssl.ca.location", path)? {
                    roots.add(certificate).map_err(SettingsError::Tls)?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        // ring, as the broker (net/src/security/tls.rs says why, and why
        // rustls's deprecation of it for lacking post-quantum key
        // exchange is accepted for now).
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(SettingsError::Tls)?
            .with_root_certificates(roots);
        let config = match (&self.ssl_certificate_location, &self.ssl_key_location) {
            (None, None) => builder.with_no_client_auth(),
            (Some(chain), Some(key_path)) => {
                let chain = certificates("ssl.certificate.location", chain)?;
                let key_pem = read_bounded("ssl.key.location", key_path, PEM_FILE_BYTES_MAX)?;
                let key = PrivateKeyDer::from_pem_slice(&key_pem)
                    .map_err(|_| SettingsError::NoKey { path: key_path.clone() })?;
                builder.with_client_auth_cert(chain, key).map_err(SettingsError::ClientCertificate)?
            }
            _ => return Err(SettingsError::HalfClientCertificate),
        };
        Ok(Arc::new(config))
    }

    /// Where the CAs trusted come from, for error messages.
    pub(crate) fn trust(&self) -> String {
        match &self.ssl_ca_location {
            Some(path) => format!("ssl.ca.location {}", path.display()),
            None => "the built-in public roots (no ssl.ca.location)".to_string(),
        }
    }
}

/// The host of `host:port` (`[v6]:port` too), as TLS verifies it.
pub(crate) fn server_name(bootstrap: &str) -> Result<ServerName<'static>, SettingsError> {
    let host = bootstrap.rsplit_once(':').map_or(bootstrap, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|_| SettingsError::ServerName(host.to_string()))
}

/// A connection's bytes: plain TCP or TLS over it.
pub(crate) enum Transport {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl std::io::Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Transport::Plain(stream) => stream.read(buf),
            Transport::Tls(stream) => stream.read(buf),
        }
    }
}

impl std::io::Write for Transport {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Transport::Plain(stream) => stream.write(buf),
            Transport::Tls(stream) => stream.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Transport::Plain(stream) => stream.flush(),
            Transport::Tls(stream) => stream.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(extra: &[&str]) -> SecurityArgs {
        #[derive(clap::Parser, Debug)]
        struct Wrapper {
            #[command(flatten)]
            security: SecurityArgs,
        }
        let args = std::iter::once("x").chain(extra.iter().copied());
        <Wrapper as clap::Parser>::try_parse_from(args).expect("valid flags").security
    }

    /// A Kafka client's properties file configures the connection; flags
    /// override it; Java's JAAS line gives the credentials when the
    /// librdkafka keys are absent.
    #[test]
    fn the_command_config_and_flags_resolve_as_kafka_clients_read_them() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/cli-security-unit");
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("client.properties");
        std::fs::write(
            &file,
            "# a client\nsecurity.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\nssl.ca.location=/ca.pem\n\
             sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required \
             username=\"alice\" password=\"se\\\"cret\";\n",
        )
        .expect("write");
        let file_arg = file.to_str().expect("utf-8");
        let resolved = parsed(&["--command-config", file_arg]).resolve().expect("valid");
        assert_eq!(resolved.protocol, SecurityProtocol::SaslSsl);
        let login = resolved.sasl.clone().expect("sasl");
        assert_eq!(login.mechanism, SaslMechanism::Scram(spate_client::scram::ScramMechanism::Sha512));
        assert_eq!((login.username.as_str(), login.password.as_str()), ("alice", "se\"cret"));
        assert_eq!(resolved.ssl_ca_location, Some(PathBuf::from("/ca.pem")));
        assert!(!format!("{resolved:?}").contains("cret"), "no password in Debug");

        let flags = parsed(&[
            "--command-config",
            file_arg,
            "--sasl-mechanism",
            "plain",
            "--sasl-username",
            "bob",
            "--sasl-password",
            "pw",
            "--ssl-ca-location",
            "/other.pem",
        ])
        .resolve()
        .expect("valid");
        assert_eq!(
            flags.sasl,
            Some(SaslLogin { mechanism: SaslMechanism::Plain, username: "bob".into(), password: "pw".into() })
        );
        assert_eq!(flags.ssl_ca_location, Some(PathBuf::from("/other.pem")));
        std::fs::remove_dir_all(&dir).expect("clean up");

        assert_eq!(parsed(&[]).resolve().expect("defaults").protocol, SecurityProtocol::Plaintext);
        assert!(matches!(
            parsed(&["--security-protocol", "tls"]).resolve(),
            Err(SettingsError::Protocol(name)) if name == "tls"
        ));
        assert!(matches!(
            parsed(&["--security-protocol", "sasl_plaintext", "--sasl-username", "a"]).resolve(),
            Err(SettingsError::MissingCredential { what: "a password", .. })
        ));
        assert!(matches!(
            parsed(&["--security-protocol", "SASL_PLAINTEXT", "--sasl-mechanism", "GSSAPI"]).resolve(),
            Err(SettingsError::Mechanism(_))
        ));
        assert!(matches!(
            parsed(&["--command-config", "/nonexistent/client.properties"]).resolve(),
            Err(SettingsError::Read { .. })
        ));
    }

    #[test]
    fn jaas_options_and_server_names_are_read() {
        let jaas = r#"org.apache.kafka.common.security.plain.PlainLoginModule required username="u" password="p\\q";"#;
        assert_eq!(jaas_option(jaas, "username").as_deref(), Some("u"));
        assert_eq!(jaas_option(jaas, "password").as_deref(), Some("p\\q"));
        assert_eq!(jaas_option("x required myusername=\"no\";", "username"), None);
        assert_eq!(jaas_option("x required username=\"unterminated", "username"), None);
        assert!(server_name("localhost:9093").is_ok());
        assert!(server_name("127.0.0.1:9093").is_ok());
        assert!(server_name("[::1]:9093").is_ok());
        assert!(server_name("bad host:1").is_err());
    }
}
