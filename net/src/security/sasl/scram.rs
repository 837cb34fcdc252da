//! SCRAM's server side (RFC 5802 with RFC 7677's SHA-256, and SHA-512 as
//! Kafka names it): two client messages, two answers.
//!
//! ```text
//! client-first  n,[a=authzid],n=user,r=cnonce[,ext]
//! server-first  r=cnonce+snonce,s=base64(salt),i=iterations
//! client-final  c=base64(gs2 header),r=cnonce+snonce[,ext],p=base64(proof)
//! server-final  v=base64(ServerSignature)
//! ```
//!
//! The server keeps StoredKey = H(HMAC(SaltedPassword, "Client Key")) and
//! ServerKey = HMAC(SaltedPassword, "Server Key"), never the password:
//! the proof is ClientKey XOR HMAC(StoredKey, AuthMessage), so H(proof XOR
//! signature) must be StoredKey (compared in constant time).
//!
//! As Kafka's server: no channel binding (`n`, or `y` from a client that
//! could bind but saw no -PLUS mechanism), no mandatory extension (`m=`),
//! no delegation tokens (`tokenauth=true`), and an authzid only when it is
//! the user itself. An unknown user gets a challenge like a known one's
//! (a salt derived from its name), so the answers do not tell who exists.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};
use spate_replication::limits::{SCRAM_ITERATIONS_MIN, SCRAM_USER_NAME_BYTES_MAX};
use spate_replication::{ScramCredential, ScramMechanism};
use subtle::ConstantTimeEq;

use super::{Failure, ScramCredentials, Step};

/// Random bytes in the server's nonce (RFC 5802 asks for enough to be
/// unpredictable; 18 bytes are 24 base64 characters).
const SERVER_NONCE_BYTES: usize = 18;

/// The hash functions of one SCRAM mechanism.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hash(pub ScramMechanism);

impl Hash {
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        match self.0 {
            ScramMechanism::Sha256 => Sha256::digest(data).to_vec(),
            ScramMechanism::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    pub fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        // HMAC takes keys of any length: new_from_slice cannot fail.
        match self.0 {
            ScramMechanism::Sha256 => {
                let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
            ScramMechanism::Sha512 => {
                let mut mac = <Hmac<Sha512> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
        }
    }

    /// RFC 5802's Hi(): PBKDF2 with this HMAC, one block.
    pub fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let mut out = vec![0; self.0.hash_bytes()];
        match self.0 {
            ScramMechanism::Sha256 => pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out),
            ScramMechanism::Sha512 => pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out),
        }
        out
    }
}

/// (StoredKey, ServerKey) of a salted password: what the metadata keeps.
pub(crate) fn scram_keys(mechanism: ScramMechanism, salted_password: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let hash = Hash(mechanism);
    let client_key = hash.hmac(salted_password, b"Client Key");
    (hash.digest(&client_key), hash.hmac(salted_password, b"Server Key"))
}

/// A fresh server nonce from the OS's CSPRNG.
pub(super) fn random_nonce() -> String {
    let mut bytes = [0u8; SERVER_NONCE_BYTES];
    // Without the OS's random bits the nonce is still unique per
    // connection (time), though predictable; getrandom does not fail on
    // Linux once the pool is seeded.
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        bytes[..16].copy_from_slice(&nanos.to_le_bytes());
    }
    BASE64.encode(bytes)
}

/// A per-process secret, so that an unknown user's made-up salt is
/// stable (the same at every try, as a real one is) but not computable by
/// clients.
fn fake_salt_key() -> &'static [u8; 32] {
    static KEY: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        let mut key = [0u8; 32];
        // getrandom does not fail on Linux once the pool is seeded; if it
        // did, the made-up salts would be computable (telling which users
        // exist), so say so.
        if let Err(err) = getrandom::fill(&mut key) {
            tracing::error!("no random bits for the SCRAM made-up salt key ({err}): unknown users may be told apart");
        }
        key
    })
}

#[derive(Debug)]
pub(super) struct ScramServer {
    mechanism: ScramMechanism,
    server_nonce: String,
    first: Option<First>,
}

/// What the first client message fixed, for the final one.
#[derive(Debug)]
struct First {
    user: String,
    /// None: no such user (the exchange goes on, to fail at the proof).
    credential: Option<ScramCredential>,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
    /// Bytes of `nonce` that are the client's.
    client_nonce_bytes: usize,
}

impl ScramServer {
    pub fn new(mechanism: ScramMechanism, server_nonce: String) -> ScramServer {
        ScramServer { mechanism, server_nonce, first: None }
    }

    pub fn step(&mut self, token: &[u8], credentials: &ScramCredentials) -> Step {
        let result = match self.first.take() {
            None => self.client_first(token, credentials).map(Step::Challenge),
            Some(first) => self.client_final(&first, token),
        };
        result.unwrap_or_else(Step::Failure)
    }

    fn client_first(&mut self, token: &[u8], credentials: &ScramCredentials) -> Result<Vec<u8>, Failure> {
        let fail = |reason: &str| Failure::new(None, reason);
        let text = std::str::from_utf8(token).map_err(|_| fail("client-first-message is not UTF-8"))?;
        let (cbind, rest) = text.split_once(',').ok_or_else(|| fail("client-first-message has no GS2 header"))?;
        if cbind != "n" && cbind != "y" {
            // `p=`: the client requires channel binding, which no
            // mechanism offered here has (no -PLUS).
            return Err(fail("channel binding requested"));
        }
        let (authzid, bare) = rest.split_once(',').ok_or_else(|| fail("client-first-message has no GS2 header"))?;
        let gs2_header = &text[..text.len() - bare.len()];
        let mut fields = bare.split(',');
        let user = match fields.next() {
            Some(field) if field.starts_with("m=") => return Err(fail("a mandatory extension")),
            Some(field) => field.strip_prefix("n=").ok_or_else(|| fail("no user name"))?,
            None => return Err(fail("no user name")),
        };
        let user = unescape_name(user).ok_or_else(|| fail("a user name with a bad escape"))?;
        if user.is_empty() || user.len() > SCRAM_USER_NAME_BYTES_MAX {
            return Err(fail("an empty or oversized user name"));
        }
        let user_fail = |reason: &str| Failure::new(Some(&user), reason);
        if !authzid.is_empty() {
            let authzid = authzid.strip_prefix("a=").ok_or_else(|| user_fail("a malformed authzid"))?;
            if unescape_name(authzid).as_deref() != Some(user.as_str()) {
                return Err(user_fail("an authorization id other than the user"));
            }
        }
        let client_nonce = fields.next().and_then(|f| f.strip_prefix("r=")).ok_or_else(|| user_fail("no nonce"))?;
        if client_nonce.is_empty() || !client_nonce.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',') {
            return Err(user_fail("a nonce that is not printable"));
        }
        if fields.any(|extension| extension == "tokenauth=true") {
            return Err(user_fail("delegation tokens are not supported"));
        }
        let credential = credentials.get(&user).and_then(|by_mechanism| by_mechanism.get(&self.mechanism)).cloned();
        let hash = Hash(self.mechanism);
        let (salt, iterations) = match &credential {
            Some(c) => (c.salt.clone(), c.iterations),
            None => (hash.hmac(fake_salt_key(), user.as_bytes())[..20].to_vec(), SCRAM_ITERATIONS_MIN),
        };
        let nonce = format!("{client_nonce}{}", self.server_nonce);
        let server_first = format!("r={nonce},s={},i={iterations}", BASE64.encode(&salt));
        self.first = Some(First {
            user,
            credential,
            gs2_header: gs2_header.to_string(),
            client_first_bare: bare.to_string(),
            server_first: server_first.clone(),
            nonce,
            client_nonce_bytes: client_nonce.len(),
        });
        Ok(server_first.into_bytes())
    }

    fn client_final(&self, first: &First, token: &[u8]) -> Result<Step, Failure> {
        let fail = |reason: &str| Failure::new(Some(&first.user), reason);
        let text = std::str::from_utf8(token).map_err(|_| fail("client-final-message is not UTF-8"))?;
        let proof_at = text.rfind(",p=").ok_or_else(|| fail("client-final-message has no proof"))?;
        let without_proof = &text[..proof_at];
        let proof = BASE64.decode(&text[proof_at + 3..]).map_err(|_| fail("a proof that is not base64"))?;
        let mut fields = without_proof.split(',');
        let binding = fields.next().and_then(|f| f.strip_prefix("c=")).ok_or_else(|| fail("no channel binding"))?;
        if BASE64.decode(binding).ok().as_deref() != Some(first.gs2_header.as_bytes()) {
            return Err(fail("channel binding differs from the GS2 header"));
        }
        let nonce = fields.next().and_then(|f| f.strip_prefix("r=")).ok_or_else(|| fail("no nonce"))?;
        if nonce != first.nonce && !doubled_client_nonce(nonce, first) {
            return Err(fail("the nonce differs from the server's"));
        }
        let hash = Hash(self.mechanism);
        let auth_message = format!("{},{},{without_proof}", first.client_first_bare, first.server_first);
        let Some(credential) = &first.credential else {
            // The same work as for a known user before the same answer.
            let _ = hash.hmac(&[0; 64][..self.mechanism.hash_bytes()], auth_message.as_bytes());
            return Err(fail("no such user, or no credential for this mechanism"));
        };
        if proof.len() != self.mechanism.hash_bytes() {
            return Err(fail("a proof of the wrong length"));
        }
        let client_signature = hash.hmac(&credential.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof.iter().zip(&client_signature).map(|(p, s)| p ^ s).collect();
        if !bool::from(hash.digest(&client_key).ct_eq(&credential.stored_key)) {
            return Err(fail("a wrong proof (wrong password)"));
        }
        let server_signature = hash.hmac(&credential.server_key, auth_message.as_bytes());
        let token = format!("v={}", BASE64.encode(server_signature)).into_bytes();
        Ok(Step::Success { user: first.user.clone(), token })
    }
}

/// librdkafka before 2.6.1 (kcat 1.7 and Debian's and Ubuntu's
/// librdkafka among them) sends its own nonce again in front of the
/// server's `r=` (confluentinc/librdkafka#4895). Kafka 3.8.1 to 3.9 took
/// any nonce ending in the server's, Kafka 4 takes none (those clients
/// cannot use SCRAM with it); Spate takes exactly this one other form.
/// The server's fresh nonce is still echoed, so a recorded exchange
/// still cannot be replayed, and the proof covers what the client sent.
fn doubled_client_nonce(nonce: &str, first: &First) -> bool {
    let client_nonce = &first.nonce[..first.client_nonce_bytes];
    nonce.len() == client_nonce.len() + first.nonce.len()
        && nonce.starts_with(client_nonce)
        && nonce.ends_with(first.nonce.as_str())
}

/// RFC 5802's saslname: `=2C` is a comma, `=3D` an equals sign, and any
/// other `=` is invalid.
fn unescape_name(name: &str) -> Option<String> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find('=') {
        out.push_str(&rest[..at]);
        match rest.get(at..at + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return None,
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential(mechanism: ScramMechanism, password: &str, salt: &[u8], iterations: u32) -> ScramCredential {
        let salted = Hash(mechanism).salted_password(password.as_bytes(), salt, iterations);
        let (stored_key, server_key) = scram_keys(mechanism, &salted);
        ScramCredential { salt: salt.to_vec(), iterations, stored_key, server_key }
    }

    fn store(user: &str, mechanism: ScramMechanism, c: ScramCredential) -> ScramCredentials {
        let mut store = ScramCredentials::new();
        store.entry(user.into()).or_default().insert(mechanism, c);
        store
    }

    /// A client's side, as RFC 5802 computes it: the final message for a
    /// server-first message.
    fn client_final(mechanism: ScramMechanism, password: &str, client_first: &str, server_first: &str) -> String {
        let hash = Hash(mechanism);
        let fields: Vec<&str> = server_first.split(',').collect();
        let nonce = &fields[0][2..];
        let salt = BASE64.decode(&fields[1][2..]).expect("salt");
        let iterations: u32 = fields[2][2..].parse().expect("iterations");
        let salted = hash.salted_password(password.as_bytes(), &salt, iterations);
        let client_key = hash.hmac(&salted, b"Client Key");
        let stored_key = hash.digest(&client_key);
        let (gs2, bare) = client_first.split_at(client_first.find("n=").expect("bare"));
        let without_proof = format!("c={},r={nonce}", BASE64.encode(gs2));
        let auth_message = format!("{bare},{server_first},{without_proof}");
        let signature = hash.hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&signature).map(|(k, s)| k ^ s).collect();
        format!("{without_proof},p={}", BASE64.encode(proof))
    }

    /// RFC 7677 section 3's exchange, byte for byte: user "user",
    /// password "pencil", its salt and nonces.
    #[test]
    fn rfc7677_sha256_exchange_matches_the_rfc() {
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("salt");
        let creds = store("user", ScramMechanism::Sha256, credential(ScramMechanism::Sha256, "pencil", &salt, 4096));
        let mut server = ScramServer::new(ScramMechanism::Sha256, "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into());
        let first = server.step(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO", &creds);
        let expected_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        assert_eq!(first, Step::Challenge(expected_first.as_bytes().to_vec()));
        let last = server.step(
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            &creds,
        );
        assert_eq!(
            last,
            Step::Success { user: "user".into(), token: b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=".to_vec() }
        );
    }

    /// RFC 5802 section 2.2's Hi() is PBKDF2; RFC 7677's salted password
    /// for "pencil" gives the RFC's ClientProof above. Here the SHA-512
    /// side: a client computing as the RFC says is accepted, with the
    /// escaped name and an authzid equal to the user.
    #[test]
    fn sha512_exchange_accepts_a_correct_client_with_escaped_names() {
        let m = ScramMechanism::Sha512;
        let creds = store("a,b=c", m, credential(m, "secret", b"0123456789", 4096));
        let mut server = ScramServer::new(m, "servernonce".into());
        let client_first = "n,a=a=2Cb=3Dc,n=a=2Cb=3Dc,r=clientnonce";
        let Step::Challenge(server_first) = server.step(client_first.as_bytes(), &creds) else {
            panic!("a challenge");
        };
        let server_first = String::from_utf8(server_first).expect("utf-8");
        let last = client_final(m, "secret", client_first, &server_first);
        assert!(matches!(server.step(last.as_bytes(), &creds), Step::Success { user, .. } if user == "a,b=c"));
    }

    fn exchange(
        creds: &ScramCredentials,
        client_first: &str,
        password: &str,
        edit: impl FnOnce(String) -> String,
    ) -> Step {
        let m = ScramMechanism::Sha256;
        let mut server = ScramServer::new(m, "srv".into());
        let server_first = match server.step(client_first.as_bytes(), creds) {
            Step::Challenge(bytes) => String::from_utf8(bytes).expect("utf-8"),
            other => return other,
        };
        let last = edit(client_final(m, password, client_first, &server_first));
        server.step(last.as_bytes(), creds)
    }

    /// Each way a client can be wrong fails, and names no password.
    #[test]
    fn wrong_passwords_users_nonces_bindings_and_authzids_fail() {
        let m = ScramMechanism::Sha256;
        let creds = store("alice", m, credential(m, "right", b"salt", 4096));
        let ok = exchange(&creds, "n,,n=alice,r=abc", "right", |s| s);
        assert!(matches!(ok, Step::Success { .. }), "{ok:?}");
        let failed = |step: Step| matches!(step, Step::Failure(_));
        assert!(failed(exchange(&creds, "n,,n=alice,r=abc", "wrong", |s| s)));
        assert!(failed(exchange(&creds, "n,,n=bob,r=abc", "right", |s| s)), "an unknown user");
        assert!(failed(exchange(&creds, "n,a=bob,n=alice,r=abc", "right", |s| s)), "another authzid");
        assert!(failed(exchange(&creds, "p=tls-unique,,n=alice,r=abc", "right", |s| s)), "channel binding");
        assert!(failed(exchange(&creds, "n,,m=x,n=alice,r=abc", "right", |s| s)), "a mandatory extension");
        assert!(failed(exchange(&creds, "n,,n=alice,r=abc,tokenauth=true", "right", |s| s)), "a token");
        assert!(failed(exchange(&creds, "n,,n=al=ice,r=abc", "right", |s| s)), "a bad escape");
        assert!(failed(exchange(&creds, "n,,n=alice,r=a c", "right", |s| s)), "an unprintable nonce");
        assert!(failed(exchange(&creds, "n,,n=alice,r=abc", "right", |s| s.replace("r=abcsrv", "r=abcxyz"))));
        assert!(failed(exchange(&creds, "n,,n=alice,r=abc", "right", |s| s.replace("r=abcsrv", "r=xyzabcsrv"))));
        assert!(failed(exchange(&creds, "n,,n=alice,r=abc", "right", |s| s.replace("r=abcsrv", "r=abc"))));
        assert!(failed(exchange(&creds, "n,,n=alice,r=abc", "right", |s| s.replace("c=biws", "c=eSws"))));
        assert!(failed(exchange(&creds, "n,,n=alice,r=abc", "right", |s| s + "AAAA")), "a longer proof");
        assert!(failed(exchange(&creds, "n,,n=alice,r=abc", "right", |s| s.replace(",p=", ",x="))));
        let Step::Failure(failure) = exchange(&creds, "n,,n=alice,r=abc", "wrong", |s| s) else {
            panic!("failure");
        };
        assert_eq!(failure.user.as_deref(), Some("alice"));
        assert!(!failure.reason.contains("wrong,") && !failure.reason.contains("right"));
    }

    /// kcat 1.7.1 (librdkafka 2.0.2) answered "the nonce differs" until
    /// its doubled client nonce was taken: the proof it computes over
    /// what it sent is checked as any other.
    #[test]
    fn librdkafkas_doubled_client_nonce_is_accepted() {
        let m = ScramMechanism::Sha256;
        let creds = store("alice", m, credential(m, "right", b"salt", 4096));
        let doubled = |s: String| s.replace("r=abcsrv", "r=abcabcsrv");
        let client_first = "n,,n=alice,r=abc";
        let mut server = ScramServer::new(m, "srv".into());
        let Step::Challenge(server_first) = server.step(client_first.as_bytes(), &creds) else {
            panic!("a challenge");
        };
        let server_first = String::from_utf8(server_first).expect("utf-8");
        // The client computes its proof over its own (doubled) message.
        let hash = Hash(m);
        let salted = hash.salted_password(b"right", b"salt", 4096);
        let client_key = hash.hmac(&salted, b"Client Key");
        let without_proof = "c=biws,r=abcabcsrv";
        let auth_message = format!("n=alice,r=abc,{server_first},{without_proof}");
        let signature = hash.hmac(&hash.digest(&client_key), auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&signature).map(|(k, s)| k ^ s).collect();
        let last = format!("{without_proof},p={}", BASE64.encode(proof));
        assert!(matches!(server.step(last.as_bytes(), &creds), Step::Success { .. }));
        assert!(matches!(exchange(&creds, client_first, "wrong", doubled), Step::Failure(_)));
    }

    /// An unknown user's challenge looks like a known one's: a salt, the
    /// same at each try, and Kafka's minimum iterations.
    #[test]
    fn unknown_users_get_a_stable_made_up_challenge() {
        let creds = ScramCredentials::new();
        let first = |nonce: &str| {
            let mut server = ScramServer::new(ScramMechanism::Sha256, nonce.into());
            match server.step(b"n,,n=nobody,r=abc", &creds) {
                Step::Challenge(bytes) => String::from_utf8(bytes).expect("utf-8"),
                other => panic!("{other:?}"),
            }
        };
        let (one, two) = (first("x"), first("y"));
        assert_eq!(one.split_once(",s=").map(|(_, s)| s), two.split_once(",s=").map(|(_, s)| s));
        assert!(one.ends_with(",i=4096"), "{one}");
    }
}
