//! Who is on a connection and what it may do (design decision 11).
//! Every connection has a principal: ANONYMOUS on a listener without
//! authentication, the SASL user once SASL succeeds, the certificate's
//! subject under mutual TLS. Front-ends authorize each request by it
//! before any shard operation runs. This floor sits beside the shard core:
//! it names no front-end.

pub(crate) mod acl;
pub(crate) mod principal;
pub(crate) mod quota;
pub(crate) mod sasl;
pub mod tls;

pub use self::acl::{AclPolicy, Authorizer};
pub use self::principal::{Principal, PrincipalError};

/// Kafka's security protocols, as a listener names them (directly, or
/// through `listener.security.protocol.map`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    /// Kafka's name for it (`PLAINTEXT`, `SSL`, `SASL_PLAINTEXT`, `SASL_SSL`).
    pub fn name(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "PLAINTEXT",
            SecurityProtocol::Ssl => "SSL",
            SecurityProtocol::SaslPlaintext => "SASL_PLAINTEXT",
            SecurityProtocol::SaslSsl => "SASL_SSL",
        }
    }

    /// The protocol Kafka calls `name` (any case), if there is one.
    pub fn parse(name: &str) -> Option<SecurityProtocol> {
        [SecurityProtocol::Plaintext, SecurityProtocol::Ssl, SecurityProtocol::SaslPlaintext, SecurityProtocol::SaslSsl]
            .into_iter()
            .find(|protocol| protocol.name().eq_ignore_ascii_case(name))
    }

    /// Bytes on this listener are encrypted (TLS).
    pub fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    /// A client must authenticate with SASL before anything but
    /// ApiVersions and the SASL handshake.
    pub fn uses_sasl(self) -> bool {
        matches!(self, SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl)
    }
}

impl std::fmt::Display for SecurityProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a connection knows of its peer when it is accepted: the address,
/// the listener's protocol, and the principal TLS established (a client
/// certificate's subject under `ssl.client.auth=required|requested`).
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    /// ip:port of the peer.
    pub peer: String,
    pub protocol: SecurityProtocol,
    /// The listener's name.
    pub listener: std::rc::Rc<str>,
    /// Set by a verified client certificate; else the connection starts
    /// as ANONYMOUS (and SASL listeners require authentication).
    pub tls_principal: Option<Principal>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_parse_by_kafka_names_in_any_case() {
        assert_eq!(SecurityProtocol::parse("sasl_ssl"), Some(SecurityProtocol::SaslSsl));
        assert_eq!(SecurityProtocol::parse("PLAINTEXT"), Some(SecurityProtocol::Plaintext));
        assert_eq!(SecurityProtocol::parse("TLS"), None);
        assert!(SecurityProtocol::SaslSsl.uses_tls() && SecurityProtocol::SaslSsl.uses_sasl());
        assert!(!SecurityProtocol::Ssl.uses_sasl() && !SecurityProtocol::SaslPlaintext.uses_tls());
    }
}
