//! SCRAM's client side (RFC 5802, RFC 7677's SHA-256, and SHA-512 as
//! Kafka names it), for the client's native connections (`conn.rs`) and
//! the CLI's Kafka ones:
//!
//! ```text
//! client-first  n,,n=user,r=cnonce
//! server-first  r=cnonce+snonce,s=base64(salt),i=iterations
//! client-final  c=biws,r=cnonce+snonce,p=base64(ClientKey XOR ClientSignature)
//! server-final  v=base64(ServerSignature)
//! ```
//!
//! The server signature is checked: a broker that cannot show it knows
//! the credential (an impostor that merely accepts any proof) is refused,
//! which is the point of SCRAM over PLAIN. No channel binding (`n,,`), as
//! Kafka's clients.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

use crate::limits::{SCRAM_CLIENT_NONCE_BYTES, SCRAM_ITERATIONS_MAX, SCRAM_ITERATIONS_MIN};

/// SCRAM's two hashes, as Kafka names the mechanisms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScramMechanism {
    /// SCRAM-SHA-256.
    Sha256,
    /// SCRAM-SHA-512.
    Sha512,
}

impl ScramMechanism {
    /// The SASL mechanism name.
    pub fn name(self) -> &'static str {
        match self {
            ScramMechanism::Sha256 => "SCRAM-SHA-256",
            ScramMechanism::Sha512 => "SCRAM-SHA-512",
        }
    }

    /// The hash's output bytes.
    pub fn hash_bytes(self) -> usize {
        match self {
            ScramMechanism::Sha256 => 32,
            ScramMechanism::Sha512 => 64,
        }
    }
}

/// Why a SCRAM exchange stopped on the client's side.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    #[error("the broker's SCRAM challenge is malformed: {0}")]
    Malformed(&'static str),
    #[error("the broker's SCRAM nonce does not extend ours (a replayed or forged challenge)")]
    NonceMismatch,
    #[error(
        "the broker asks for {iterations} SCRAM iterations, outside {SCRAM_ITERATIONS_MIN}..={SCRAM_ITERATIONS_MAX}"
    )]
    Iterations { iterations: u64 },
    #[error("the broker refused the SCRAM login: {0}")]
    ServerError(String),
    #[error(
        "the broker's SCRAM signature is wrong: it could not prove it knows the credential (an impostor?); refusing it"
    )]
    ServerSignature,
    #[error("SCRAM messages out of order")]
    OutOfOrder,
}

/// The hash functions of one mechanism.
#[derive(Debug, Clone, Copy)]
struct Hash(ScramMechanism);

impl Hash {
    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self.0 {
            ScramMechanism::Sha256 => Sha256::digest(data).to_vec(),
            ScramMechanism::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        // HMAC takes keys of any length, so new_from_slice cannot fail;
        // the fallback (an empty MAC) would only fail the login.
        match self.0 {
            ScramMechanism::Sha256 => <Hmac<Sha256> as Mac>::new_from_slice(key)
                .map(|mut mac| {
                    mac.update(data);
                    mac.finalize().into_bytes().to_vec()
                })
                .unwrap_or_default(),
            ScramMechanism::Sha512 => <Hmac<Sha512> as Mac>::new_from_slice(key)
                .map(|mut mac| {
                    mac.update(data);
                    mac.finalize().into_bytes().to_vec()
                })
                .unwrap_or_default(),
        }
    }
}

/// RFC 5802's Hi(): PBKDF2 with the mechanism's HMAC, one block. Also
/// what `spate user create` sends the broker, as Kafka's tools do.
pub fn salted_password(mechanism: ScramMechanism, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut out = vec![0; mechanism.hash_bytes()];
    match mechanism {
        ScramMechanism::Sha256 => pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out),
        ScramMechanism::Sha512 => pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out),
    }
    out
}

/// `n` random bytes from the OS.
pub fn random_bytes(n: usize) -> std::io::Result<Vec<u8>> {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).map_err(|err| std::io::Error::other(format!("the OS gave no random bytes: {err}")))?;
    Ok(bytes)
}

/// RFC 5802's saslname: `=` and `,` escaped.
fn sasl_name(user: &str) -> String {
    user.replace('=', "=3D").replace(',', "=2C")
}

/// One login's client side. Its Debug leaves the password out.
pub struct ScramClient {
    mechanism: ScramMechanism,
    password: String,
    nonce: String,
    client_first_bare: String,
    /// Set by the final message: the signature the server must answer.
    server_signature: Option<Vec<u8>>,
}

impl std::fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramClient").field("mechanism", &self.mechanism).finish_non_exhaustive()
    }
}

impl ScramClient {
    pub fn new(mechanism: ScramMechanism, user: &str, password: &str) -> std::io::Result<ScramClient> {
        let nonce = BASE64.encode(random_bytes(SCRAM_CLIENT_NONCE_BYTES)?);
        Ok(ScramClient::with_nonce(mechanism, user, password, nonce))
    }

    fn with_nonce(mechanism: ScramMechanism, user: &str, password: &str, nonce: String) -> ScramClient {
        let client_first_bare = format!("n={},r={nonce}", sasl_name(user));
        ScramClient { mechanism, password: password.to_string(), nonce, client_first_bare, server_signature: None }
    }

    /// The first message.
    pub fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.client_first_bare).into_bytes()
    }

    /// The final message, with the proof, for the server's challenge.
    pub fn client_final(&mut self, server_first: &[u8]) -> Result<Vec<u8>, ScramError> {
        let server_first = std::str::from_utf8(server_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        if let Some(message) = server_first.strip_prefix("e=") {
            return Err(ScramError::ServerError(message.to_string()));
        }
        let mut fields = server_first.split(',');
        let nonce = fields.next().and_then(|f| f.strip_prefix("r=")).ok_or(ScramError::Malformed("no r="))?;
        let salt = fields.next().and_then(|f| f.strip_prefix("s=")).ok_or(ScramError::Malformed("no s="))?;
        let iterations = fields.next().and_then(|f| f.strip_prefix("i=")).ok_or(ScramError::Malformed("no i="))?;
        // The server's nonce must extend ours by something of its own.
        if nonce.len() <= self.nonce.len() || !nonce.starts_with(&self.nonce) {
            return Err(ScramError::NonceMismatch);
        }
        let salt = BASE64.decode(salt).map_err(|_| ScramError::Malformed("the salt is not base64"))?;
        let iterations: u64 =
            iterations.parse().map_err(|_| ScramError::Malformed("the iterations are not a number"))?;
        // Kafka's bounds: fewer is a weak credential a broker should not
        // have; more is a broker making the client burn CPU.
        let iterations = u32::try_from(iterations)
            .ok()
            .filter(|i| (SCRAM_ITERATIONS_MIN..=SCRAM_ITERATIONS_MAX).contains(i))
            .ok_or(ScramError::Iterations { iterations })?;
        let hash = Hash(self.mechanism);
        let salted = salted_password(self.mechanism, self.password.as_bytes(), &salt, iterations);
        let client_key = hash.hmac(&salted, b"Client Key");
        let stored_key = hash.digest(&client_key);
        // "biws" is base64("n,,"): the GS2 header without channel binding.
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let client_signature = hash.hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&client_signature).map(|(k, s)| k ^ s).collect();
        let server_key = hash.hmac(&salted, b"Server Key");
        self.server_signature = Some(hash.hmac(&server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", BASE64.encode(proof)).into_bytes())
    }

    /// Checks the server's last message: it must carry the signature only
    /// a holder of the credential can compute.
    pub fn verify_server_final(&self, server_final: &[u8]) -> Result<(), ScramError> {
        let expected = self.server_signature.as_ref().ok_or(ScramError::OutOfOrder)?;
        let server_final = std::str::from_utf8(server_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        if let Some(message) = server_final.strip_prefix("e=") {
            return Err(ScramError::ServerError(message.to_string()));
        }
        let signature = server_final
            .split(',')
            .next()
            .and_then(|f| f.strip_prefix("v="))
            .ok_or(ScramError::Malformed("no v= in the final message"))?;
        let signature = BASE64.decode(signature).map_err(|_| ScramError::Malformed("the signature is not base64"))?;
        if bool::from(signature.ct_eq(expected)) { Ok(()) } else { Err(ScramError::ServerSignature) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7677's example (SCRAM-SHA-256, user "user", password "pencil").
    const NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const SERVER_FIRST: &str = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";

    fn rfc_client() -> ScramClient {
        ScramClient::with_nonce(ScramMechanism::Sha256, "user", "pencil", NONCE.to_string())
    }

    /// The messages are RFC 7677's, byte for byte, and its server's final
    /// message is accepted.
    #[test]
    fn the_exchange_matches_rfc_7677() {
        let mut client = rfc_client();
        assert_eq!(client.client_first(), b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let last = client.client_final(SERVER_FIRST.as_bytes()).expect("a valid challenge");
        assert_eq!(
            String::from_utf8(last).expect("text"),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        assert_eq!(client.verify_server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="), Ok(()));
    }

    /// A broker that accepts any proof but cannot sign (it does not hold
    /// the credential) is refused, as are challenges that would weaken
    /// the exchange.
    #[test]
    fn a_server_without_the_credential_or_with_a_bad_challenge_is_refused() {
        let mut client = rfc_client();
        assert_eq!(client.verify_server_final(b"v=AAAA"), Err(ScramError::OutOfOrder));
        client.client_final(SERVER_FIRST.as_bytes()).expect("a valid challenge");
        let forged = BASE64.encode([0u8; 32]);
        assert_eq!(client.verify_server_final(format!("v={forged}").as_bytes()), Err(ScramError::ServerSignature));
        assert_eq!(client.verify_server_final(b"ok"), Err(ScramError::Malformed("no v= in the final message")));
        assert_eq!(
            client.verify_server_final(b"e=invalid-proof"),
            Err(ScramError::ServerError("invalid-proof".into()))
        );

        let mut client = rfc_client();
        assert_eq!(client.client_final(b"r=someone-else,s=AAAA,i=4096"), Err(ScramError::NonceMismatch));
        assert_eq!(client.client_final(format!("r={NONCE},s=AAAA,i=4096").as_bytes()), Err(ScramError::NonceMismatch));
        let few = format!("r={NONCE}x,s=AAAA,i=1");
        assert_eq!(client.client_final(few.as_bytes()), Err(ScramError::Iterations { iterations: 1 }));
        let many = format!("r={NONCE}x,s=AAAA,i=99999999999");
        assert_eq!(client.client_final(many.as_bytes()), Err(ScramError::Iterations { iterations: 99_999_999_999 }));
        assert!(matches!(client.client_final(b"r=x"), Err(ScramError::Malformed(_))));
    }

    #[test]
    fn user_names_are_escaped_as_rfc_5802_says() {
        let client = ScramClient::with_nonce(ScramMechanism::Sha512, "a=b,c", "p", "n".into());
        assert_eq!(client.client_first(), b"n,,n=a=3Db=2Cc,r=n");
    }
}
