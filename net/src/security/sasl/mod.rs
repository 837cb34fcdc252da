//! SASL mechanisms on the server side: SCRAM-SHA-256 and SCRAM-SHA-512
//! (RFC 5802, RFC 7677) and PLAIN (RFC 4616), checked against the SCRAM
//! credentials of the metadata log, and OAUTHBEARER (RFC 7628), a JWT
//! checked against the configured JWKS (`oauthbearer.rs`). An `Exchange` is one connection's
//! authentication: it takes the client's tokens one at a time and answers
//! with a challenge, a success (the user, and a last token for the
//! client), or a failure. It knows no protocol: the Kafka front-end
//! carries its tokens in SaslAuthenticate, a native handshake could carry
//! them in its own frames.

mod oauthbearer;
mod plain;
mod scram;

use std::collections::BTreeMap;

use spate_replication::{ScramCredential, ScramMechanism};

use crate::limits::SASL_TOKEN_BYTES_MAX;

pub(crate) use self::oauthbearer::OAuthValidator;
pub(crate) use self::scram::scram_keys;

/// Every user's SCRAM credentials, by user then mechanism, as the
/// metadata image holds them.
pub(crate) type ScramCredentials = BTreeMap<String, BTreeMap<ScramMechanism, ScramCredential>>;

/// A SASL mechanism Spate serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mechanism {
    Plain,
    Scram(ScramMechanism),
    OAuthBearer,
}

impl Mechanism {
    pub const ALL: [Mechanism; 4] = [
        Mechanism::Scram(ScramMechanism::Sha256),
        Mechanism::Scram(ScramMechanism::Sha512),
        Mechanism::Plain,
        Mechanism::OAuthBearer,
    ];

    /// Its SASL name, as clients ask for it (`sasl.mechanism`).
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Scram(scram) => scram.name(),
            Mechanism::OAuthBearer => "OAUTHBEARER",
        }
    }

    /// The mechanism named `name`, exactly (SASL names are upper case).
    pub fn parse(name: &str) -> Option<Mechanism> {
        Mechanism::ALL.into_iter().find(|m| m.name() == name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "sasl.enabled.mechanisms: {name:?} is not a mechanism Spate serves (SCRAM-SHA-256, SCRAM-SHA-512, PLAIN, OAUTHBEARER)"
)]
pub struct UnknownMechanism {
    pub name: String,
}

/// Kafka's `sasl.enabled.mechanisms` (a comma-separated list), in its
/// order.
pub(crate) fn enabled_mechanisms(list: &str) -> Result<Vec<Mechanism>, UnknownMechanism> {
    list.split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(|name| Mechanism::parse(name).ok_or_else(|| UnknownMechanism { name: name.into() }))
        .collect()
}

/// Why an authentication failed, for the broker's log (never a password
/// or a key). The client learns only that its credentials were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    /// The user the client named, once it has.
    pub user: Option<String>,
    pub reason: String,
}

impl Failure {
    fn new(user: Option<&str>, reason: impl Into<String>) -> Failure {
        Failure { user: user.map(str::to_string), reason: reason.into() }
    }

    /// Logs the failure (one line per failure, for operators and
    /// intrusion detection: who tried from where how, never the password)
    /// and returns what the client is told: Kafka's text, which says
    /// nothing of what was wrong.
    pub fn report(&self, client: &str, mechanism: Mechanism, front_end: &str) -> String {
        tracing::warn!(client, user = self.user.as_deref().unwrap_or("?"), mechanism = mechanism.name(),
            reason = %self.reason, front_end, "SASL authentication failed");
        format!(
            "Authentication failed during authentication due to invalid credentials with SASL mechanism {}",
            mechanism.name()
        )
    }
}

/// What a client's token led to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Send this to the client and wait for its next token.
    Challenge(Vec<u8>),
    /// The client is `user`; send it `token` (SCRAM's server signature,
    /// which proves the server knew the credential; empty for PLAIN).
    Success {
        user: String,
        token: Vec<u8>,
    },
    Failure(Failure),
}

/// One connection's authentication, from the first client token to
/// success or failure. Holds at most the first SCRAM message's fields
/// (bounded by `SASL_TOKEN_BYTES_MAX`).
#[derive(Debug)]
pub(crate) struct Exchange {
    mechanism: Mechanism,
    state: State,
}

#[derive(Debug)]
enum State {
    Plain,
    Scram(Box<scram::ScramServer>),
    OAuthBearer,
    /// Succeeded or failed: no further token is taken.
    Over,
}

/// What a client's credentials are checked against.
#[derive(Clone, Copy)]
pub(crate) struct Verifiers<'a> {
    /// SCRAM's and PLAIN's: the metadata log's SCRAM credentials.
    pub scram: &'a ScramCredentials,
    /// OAUTHBEARER's: the JWKS, when one is configured.
    pub oauth: Option<&'a OAuthValidator>,
}

impl Exchange {
    pub fn new(mechanism: Mechanism) -> Exchange {
        let state = match mechanism {
            Mechanism::Plain => State::Plain,
            Mechanism::Scram(scram) => State::Scram(Box::new(scram::ScramServer::new(scram, scram::random_nonce()))),
            Mechanism::OAuthBearer => State::OAuthBearer,
        };
        Exchange { mechanism, state }
    }

    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// Takes the client's next token. After a success or a failure the
    /// exchange is over and every further token fails.
    pub fn step(&mut self, token: &[u8], verifiers: Verifiers<'_>) -> Step {
        let credentials = verifiers.scram;
        if token.len() > SASL_TOKEN_BYTES_MAX {
            self.state = State::Over;
            return Step::Failure(Failure::new(None, format!("a token of {} bytes", token.len())));
        }
        let step = match &mut self.state {
            State::Plain => plain::authenticate(token, credentials),
            State::Scram(server) => server.step(token, credentials),
            State::OAuthBearer => match verifiers.oauth {
                Some(validator) => validator.authenticate(token),
                None => Step::Failure(Failure::new(None, "OAUTHBEARER without sasl.oauthbearer.jwks.endpoint.url")),
            },
            State::Over => Step::Failure(Failure::new(None, "a token after the exchange ended")),
        };
        if !matches!(step, Step::Challenge(_)) {
            self.state = State::Over;
        }
        step
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enabled_mechanisms_parse_kafkas_list_and_refuse_unknown_names() {
        assert_eq!(
            enabled_mechanisms("SCRAM-SHA-256, SCRAM-SHA-512,PLAIN"),
            Ok(vec![
                Mechanism::Scram(ScramMechanism::Sha256),
                Mechanism::Scram(ScramMechanism::Sha512),
                Mechanism::Plain
            ])
        );
        assert_eq!(enabled_mechanisms(""), Ok(vec![]));
        assert_eq!(enabled_mechanisms("PLAIN,GSSAPI"), Err(UnknownMechanism { name: "GSSAPI".into() }));
        assert!(enabled_mechanisms("plain").is_err(), "SASL names are upper case");
    }

    #[test]
    fn oversized_tokens_fail_and_end_the_exchange() {
        let mut exchange = Exchange::new(Mechanism::Plain);
        let token = vec![b'a'; SASL_TOKEN_BYTES_MAX + 1];
        let credentials = ScramCredentials::new();
        let verifiers = Verifiers { scram: &credentials, oauth: None };
        assert!(matches!(exchange.step(&token, verifiers), Step::Failure(_)));
        assert!(matches!(exchange.step(b"\0alice\0pw", verifiers), Step::Failure(_)));
    }
}
