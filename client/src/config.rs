//! The client's configuration and the checks run on it before anything
//! connects, so that a bad setting is an `InvalidConfig` error, not a panic
//! or a hang later.

use spate_flatbuf::{FRAME_BYTES_MAX_DEFAULT, FRAME_BYTES_MAX_LIMIT};

use crate::error::ClientError;
use crate::limits::FRAME_BYTES_MAX_MIN;

/// How to reach the cluster and how long to wait for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Brokers to ask for metadata first, as "host:port". One that answers
    /// is enough; the rest of the cluster comes from its metadata.
    pub bootstrap: Vec<String>,
    /// Sent in the handshake, for the broker's logs.
    pub client_id: String,
    /// How long to wait for a connection or a response before giving up
    /// on it (and closing the connection, whose later answers are then
    /// stuck behind the missing one).
    pub request_timeout_ms: u64,
    /// Send each partition's requests to the port of the core that owns it
    /// (design decision 6) instead of the broker's main port, which
    /// forwards across cores.
    pub shard_aware: bool,
    /// The largest frame accepted from a broker.
    pub frame_bytes_max: usize,
    /// Metadata older than this is refreshed before it is used.
    pub metadata_max_age_ms: u64,
    /// Authenticate every connection with SASL after its handshake (as a
    /// Kafka client's `sasl.mechanism`, `sasl.username`,
    /// `sasl.password`); None: the connection is `User:ANONYMOUS`, and the
    /// broker's ACLs say what that may do.
    pub sasl: Option<SaslConfig>,
    /// Connect with TLS (as a Kafka client's `security.protocol=SSL` or
    /// `SASL_SSL`), to brokers whose native ports take clients over TLS
    /// (`native_security_protocol = SSL`): the rustls configuration (its
    /// roots, and a client certificate for mutual TLS). The broker's name
    /// is checked against the host of the address dialled. None: plain TCP.
    pub tls: Option<ClientTls>,
}

/// A TLS client configuration (rustls).
#[derive(Clone)]
pub struct ClientTls(pub std::sync::Arc<rustls::ClientConfig>);

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls")
    }
}

impl PartialEq for ClientTls {
    /// The same configuration, not an equal one (rustls's has no
    /// equality).
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for ClientTls {}

/// A SASL login (Kafka's mechanism names).
#[derive(Clone, PartialEq, Eq)]
pub struct SaslConfig {
    pub mechanism: SaslMechanism,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for SaslConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password, in logs or errors.
        f.debug_struct("SaslConfig").field("mechanism", &self.mechanism).field("username", &self.username).finish()
    }
}

/// The SASL mechanisms a Spate broker offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    /// SCRAM-SHA-256 or SCRAM-SHA-512: the password never crosses the
    /// wire, and the broker proves it holds the credential.
    Scram(crate::scram::ScramMechanism),
    /// PLAIN: the password is sent as is (use it only where the link is
    /// private).
    Plain,
}

impl SaslMechanism {
    /// Kafka's name (`SCRAM-SHA-512`, `PLAIN`).
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::Scram(scram) => scram.name(),
            SaslMechanism::Plain => "PLAIN",
        }
    }

    /// The mechanism of a Kafka name, case-insensitively as Kafka's
    /// clients take `sasl.mechanism`.
    pub fn parse(name: &str) -> Option<SaslMechanism> {
        use crate::scram::ScramMechanism;
        match name.trim().to_ascii_uppercase().as_str() {
            "SCRAM-SHA-256" => Some(SaslMechanism::Scram(ScramMechanism::Sha256)),
            "SCRAM-SHA-512" => Some(SaslMechanism::Scram(ScramMechanism::Sha512)),
            "PLAIN" => Some(SaslMechanism::Plain),
            _ => None,
        }
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            bootstrap: vec!["127.0.0.1:9400".to_string()],
            client_id: "spate-client".to_string(),
            request_timeout_ms: 30_000,
            shard_aware: true,
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
            metadata_max_age_ms: 300_000,
            sasl: None,
            tls: None,
        }
    }
}

impl ClientConfig {
    pub(crate) fn validate(&self) -> Result<(), ClientError> {
        if self.bootstrap.is_empty() {
            return Err(ClientError::InvalidConfig("bootstrap lists no broker".into()));
        }
        for address in &self.bootstrap {
            parse_address(address)?;
        }
        if self.request_timeout_ms == 0 {
            return Err(ClientError::InvalidConfig("request_timeout_ms must be positive".into()));
        }
        if !(FRAME_BYTES_MAX_MIN..=FRAME_BYTES_MAX_LIMIT).contains(&self.frame_bytes_max) {
            return Err(ClientError::InvalidConfig(format!(
                "frame_bytes_max must be between {FRAME_BYTES_MAX_MIN} and {FRAME_BYTES_MAX_LIMIT}, not {}",
                self.frame_bytes_max
            )));
        }
        Ok(())
    }
}

/// Splits "host:port" (or "[v6]:port"), refusing anything else with a
/// message that names the bad address.
pub(crate) fn parse_address(address: &str) -> Result<(&str, u16), ClientError> {
    let bad = || ClientError::InvalidConfig(format!("broker address {address:?} is not host:port"));
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if host.is_empty() {
        return Err(bad());
    }
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 {
        return Err(bad());
    }
    Ok((host, port))
}

/// The "host:port" string for a broker, bracketing IPv6 literals.
pub(crate) fn format_address(host: &str, port: u16) -> String {
    if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_must_be_host_and_port() {
        assert_eq!(parse_address("localhost:9400").ok(), Some(("localhost", 9400)));
        assert_eq!(parse_address("[::1]:9400").ok(), Some(("::1", 9400)));
        for bad in ["localhost", ":9400", "host:", "host:0", "host:70000", "host:port"] {
            assert!(matches!(parse_address(bad), Err(ClientError::InvalidConfig(_))), "{bad} accepted");
        }
        assert_eq!(format_address("::1", 1), "[::1]:1");
        assert_eq!(format_address("10.0.0.1", 2), "10.0.0.1:2");
    }

    #[test]
    fn config_checks_catch_settings_that_would_panic_or_hang() {
        assert!(ClientConfig::default().validate().is_ok());
        let no_brokers = ClientConfig { bootstrap: vec![], ..ClientConfig::default() };
        assert!(no_brokers.validate().is_err());
        let huge_frames = ClientConfig { frame_bytes_max: FRAME_BYTES_MAX_LIMIT + 1, ..ClientConfig::default() };
        assert!(huge_frames.validate().is_err());
        let no_timeout = ClientConfig { request_timeout_ms: 0, ..ClientConfig::default() };
        assert!(no_timeout.validate().is_err());
    }
}
