//! OAUTHBEARER (RFC 7628) on the server side, validated as Kafka's
//! `OAuthBearerValidatorCallbackHandler` validates it (KIP-768): the
//! client sends one message carrying a JWT; its signature must verify
//! against a key of the configured JWKS (`sasl.oauthbearer.jwks.endpoint.url`,
//! a `file:` URL: Spate fetches nothing over HTTP), it must not be
//! expired (`exp` required, `sasl.oauthbearer.clock.skew.seconds` of
//! leeway, `nbf` honoured), its `aud` and `iss` must match the expected
//! ones when configured, and the principal is the `User:` named by its
//! `sub` claim (`sasl.oauthbearer.sub.claim.name`).
//!
//! Only asymmetric keys are used (RSA, EC P-256/P-384, Ed25519), each
//! with the algorithms of its family: a token signed with an HMAC or with
//! `alg: none` is refused, so a public key can never be used as a shared
//! secret (the JWT algorithm-confusion attack).

use std::path::{Path, PathBuf};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::{Failure, Step};
use crate::config::{BrokerConfig, ConfigError};

/// The JWKS and the rules a token must meet. Built at start and again on
/// SIGHUP (a rotated key set); a bad file fails the start, or keeps the
/// previous set on a reload.
pub(crate) struct OAuthValidator {
    keys: Vec<Key>,
    audience: Vec<String>,
    issuer: Option<String>,
    sub_claim: String,
    clock_skew_s: u64,
}

impl std::fmt::Debug for OAuthValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthValidator").field("keys", &self.keys.len()).finish_non_exhaustive()
    }
}

struct Key {
    kid: Option<String>,
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

/// The file a `file:` URL names.
fn jwks_path(url: &str) -> Result<PathBuf, ConfigError> {
    let path = url.strip_prefix("file://").or_else(|| url.strip_prefix("file:"));
    match path {
        Some(path) if !path.is_empty() => Ok(PathBuf::from(path)),
        _ => Err(ConfigError(format!(
            "sasl.oauthbearer.jwks.endpoint.url={url:?}: Spate reads the JWKS from a file: URL (file:///path/jwks.json); \
             fetch an identity provider's keys into that file"
        ))),
    }
}

impl OAuthValidator {
    /// The validator `config` asks for; None when no JWKS is configured.
    pub fn from_config(config: &BrokerConfig) -> Result<Option<OAuthValidator>, ConfigError> {
        let url = config.sasl_oauthbearer_jwks_endpoint_url.trim();
        if url.is_empty() {
            return Ok(None);
        }
        let path = jwks_path(url)?;
        let text = std::fs::read_to_string(&path).map_err(|err| {
            ConfigError(format!("sasl.oauthbearer.jwks.endpoint.url: reading {}: {err}", path.display()))
        })?;
        let keys = parse_jwks(&text, &path)?;
        let list = |text: &str| -> Vec<String> {
            text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
        };
        let issuer = config.sasl_oauthbearer_expected_issuer.trim();
        let sub_claim = config.sasl_oauthbearer_sub_claim_name.trim();
        Ok(Some(OAuthValidator {
            keys,
            audience: list(&config.sasl_oauthbearer_expected_audience),
            issuer: (!issuer.is_empty()).then(|| issuer.to_string()),
            sub_claim: if sub_claim.is_empty() { "sub".to_string() } else { sub_claim.to_string() },
            clock_skew_s: config.sasl_oauthbearer_clock_skew_seconds,
        }))
    }

    /// The client's one message: success as the token's subject, or a
    /// failure saying why (for the log; never the token).
    pub fn authenticate(&self, message: &[u8]) -> Step {
        match self.subject(message) {
            Ok(user) => Step::Success { user, token: Vec::new() },
            Err(reason) => Step::Failure(Failure::new(None, reason)),
        }
    }

    fn subject(&self, message: &[u8]) -> Result<String, String> {
        let token = bearer_token(message)?;
        let header = jsonwebtoken::decode_header(token).map_err(|err| format!("not a JWT: {err}"))?;
        let key = self
            .keys
            .iter()
            .find(|key| match (&header.kid, &key.kid) {
                (Some(wanted), Some(kid)) => wanted == kid,
                (Some(_), None) => false,
                (None, _) => self.keys.len() == 1,
            })
            .ok_or_else(|| format!("no key of the JWKS for key id {:?}", header.kid))?;
        if !key.algorithms.contains(&header.alg) {
            return Err(format!("algorithm {:?} is not one of its key's", header.alg));
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.clock_skew_s;
        validation.validate_nbf = true;
        validation.required_spec_claims = ["exp".to_string()].into();
        if self.audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&self.audience);
        }
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
        }
        let claims = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &key.key, &validation)
            .map_err(|err| format!("token refused: {err}"))?
            .claims;
        match claims.get(&self.sub_claim) {
            Some(serde_json::Value::String(subject)) if !subject.is_empty() => Ok(subject.clone()),
            _ => Err(format!("no {:?} claim naming the principal", self.sub_claim)),
        }
    }
}

/// The keys of a JWKS document, each with its algorithms. A set without a
/// usable key is an error, as is a symmetric key.
fn parse_jwks(text: &str, path: &Path) -> Result<Vec<Key>, ConfigError> {
    let bad = |what: String| ConfigError(format!("sasl.oauthbearer.jwks.endpoint.url: {}: {what}", path.display()));
    let set: JwkSet = serde_json::from_str(text).map_err(|err| bad(format!("not a JWKS: {err}")))?;
    let mut keys = Vec::with_capacity(set.keys.len());
    for jwk in &set.keys {
        let kid = jwk.common.key_id.clone();
        let algorithms = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => vec![
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ],
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => vec![Algorithm::ES256],
                EllipticCurve::P384 => vec![Algorithm::ES384],
                ref other => return Err(bad(format!("key {kid:?}: curve {other:?} is not supported"))),
            },
            AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => vec![Algorithm::EdDSA],
            AlgorithmParameters::OctetKeyPair(okp) => {
                return Err(bad(format!("key {kid:?}: curve {:?} does not sign", okp.curve)));
            }
            AlgorithmParameters::OctetKey(_) => {
                return Err(bad(format!("key {kid:?} is a symmetric key: a JWKS for OAUTHBEARER holds public keys")));
            }
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|err| bad(format!("key {kid:?}: {err}")))?;
        keys.push(Key { kid, key, algorithms });
    }
    if keys.is_empty() {
        return Err(bad("no keys".into()));
    }
    Ok(keys)
}

/// The bearer token of RFC 7628's client message:
/// `gs2-header %x01 "auth=Bearer " token %x01 *(kvpair %x01) %x01`.
fn bearer_token(message: &[u8]) -> Result<&str, String> {
    let text = std::str::from_utf8(message).map_err(|_| "the message is not UTF-8".to_string())?;
    let mut parts = text.split('\u{1}');
    let gs2 = parts.next().unwrap_or_default();
    // No channel binding: `n,` (or `y,`, a client that could bind but
    // was not offered it), then an optional authzid, then `,`.
    if !(gs2.starts_with("n,") || gs2.starts_with("y,")) || !gs2.ends_with(',') {
        return Err("not an OAUTHBEARER client message (GS2 header)".into());
    }
    let auth = parts
        .filter_map(|kv| kv.split_once('='))
        .find(|(key, _)| *key == "auth")
        .map(|(_, value)| value)
        .ok_or("no auth= in the message")?;
    let (scheme, token) = auth.split_once(' ').ok_or("auth= holds no token")?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err("auth= is not a Bearer token".into());
    }
    Ok(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_token_is_read_from_rfc_7628s_message() {
        assert_eq!(bearer_token(b"n,,\x01auth=Bearer abc.def.ghi\x01\x01"), Ok("abc.def.ghi"));
        assert_eq!(bearer_token(b"n,a=alice,\x01host=x\x01auth=bearer t\x01\x01"), Ok("t"));
        for bad in
            [&b"p=tls-unique,,\x01auth=Bearer t\x01\x01"[..], b"n,,\x01\x01", b"n,,\x01auth=Basic t\x01\x01", b"\xff"]
        {
            assert!(bearer_token(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_jwks_with_a_symmetric_key_or_no_key_is_refused() {
        let path = Path::new("jwks.json");
        let symmetric = r#"{"keys":[{"kty":"oct","kid":"k","k":"c2VjcmV0"}]}"#;
        assert!(parse_jwks(symmetric, path).is_err());
        assert!(parse_jwks(r#"{"keys":[]}"#, path).is_err());
        assert!(parse_jwks("{", path).is_err());
        assert!(jwks_path("https://idp.example/jwks").is_err());
        assert_eq!(jwks_path("file:///etc/jwks.json").expect("a file"), PathBuf::from("/etc/jwks.json"));
    }
}
