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

/// Kafka's security protocols live with the listeners that name them
/// (`config`), a floor below; here they are used.
pub use crate::config::SecurityProtocol;

/// What `BrokerConfig::validate` cannot check from its floor: the
/// security settings, by the rules this floor holds (ACL policy, SASL
/// mechanisms). `server::start` runs both.
pub(crate) fn check_config(config: &crate::config::BrokerConfig) -> Result<(), crate::config::ConfigError> {
    AclPolicy::from_config(config)?;
    let mechanisms = sasl::enabled_mechanisms(&config.sasl_enabled_mechanisms)
        .map_err(|err| crate::config::ConfigError(err.to_string()))?;
    if mechanisms.contains(&sasl::Mechanism::OAuthBearer) && config.sasl_oauthbearer_jwks_endpoint_url.trim().is_empty()
    {
        return Err(crate::config::ConfigError(
            "sasl.enabled.mechanisms offers OAUTHBEARER: sasl.oauthbearer.jwks.endpoint.url must name the JWKS              (file:///path/jwks.json) whose keys sign the tokens"
                .into(),
        ));
    }
    Ok(())
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
