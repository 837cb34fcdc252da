//! PLAIN (RFC 4616): one message, `authzid NUL user NUL password`. The
//! password is checked against the user's SCRAM credential, as Redpanda
//! does: derive the salted password with the credential's salt and
//! iterations, then StoredKey, and compare in constant time. So one
//! credential serves both mechanisms, and no password is ever stored.
//! SCRAM-SHA-512's credential is used when the user has one (the stronger
//! hash), else SCRAM-SHA-256's.

use spate_replication::ScramMechanism;
use spate_replication::limits::SCRAM_ITERATIONS_MIN;
use subtle::ConstantTimeEq;

use super::scram::Hash;
use super::{Failure, ScramCredentials, Step};

pub(super) fn authenticate(token: &[u8], credentials: &ScramCredentials) -> Step {
    let mut parts = token.split(|b| *b == 0);
    let (Some(authzid), Some(user), Some(password), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Step::Failure(Failure::new(None, "PLAIN message is not authzid NUL user NUL password"));
    };
    let Ok(user) = std::str::from_utf8(user) else {
        return Step::Failure(Failure::new(None, "a user name that is not UTF-8"));
    };
    let fail = |reason: &str| Step::Failure(Failure::new(Some(user), reason));
    if user.is_empty() || password.is_empty() {
        return fail("an empty user name or password");
    }
    if !authzid.is_empty() && authzid != user.as_bytes() {
        return fail("an authorization id other than the user");
    }
    let stored = credentials.get(user).and_then(|by_mechanism| {
        [ScramMechanism::Sha512, ScramMechanism::Sha256]
            .into_iter()
            .find_map(|mechanism| Some((mechanism, by_mechanism.get(&mechanism)?)))
    });
    let Some((mechanism, credential)) = stored else {
        // The same work as for a known user at Kafka's minimum cost, so
        // the time taken does not tell who exists.
        let _ = Hash(ScramMechanism::Sha256).salted_password(password, user.as_bytes(), SCRAM_ITERATIONS_MIN);
        return fail("no such user, or no SCRAM credential");
    };
    let hash = Hash(mechanism);
    let salted = hash.salted_password(password, &credential.salt, credential.iterations);
    let stored_key = hash.digest(&hash.hmac(&salted, b"Client Key"));
    if !bool::from(stored_key.ct_eq(&credential.stored_key)) {
        return fail("a wrong password");
    }
    Step::Success { user: user.to_string(), token: Vec::new() }
}

#[cfg(test)]
mod tests {
    use spate_replication::ScramCredential;

    use super::*;
    use crate::security::sasl::scram_keys;

    fn store(entries: &[(ScramMechanism, &str)]) -> ScramCredentials {
        let mut store = ScramCredentials::new();
        for (mechanism, password) in entries {
            let salted = Hash(*mechanism).salted_password(password.as_bytes(), b"salt", 4096);
            let (stored_key, server_key) = scram_keys(*mechanism, &salted);
            let credential = ScramCredential { salt: b"salt".to_vec(), iterations: 4096, stored_key, server_key };
            store.entry("alice".into()).or_default().insert(*mechanism, credential);
        }
        store
    }

    #[test]
    fn plain_checks_the_password_against_the_scram_credential() {
        let creds = store(&[(ScramMechanism::Sha256, "pw256")]);
        assert_eq!(authenticate(b"\0alice\0pw256", &creds), Step::Success { user: "alice".into(), token: vec![] });
        assert!(matches!(authenticate(b"alice\0alice\0pw256", &creds), Step::Success { .. }), "authzid = user");
        assert!(matches!(authenticate(b"bob\0alice\0pw256", &creds), Step::Failure(_)), "another authzid");
        assert!(matches!(authenticate(b"\0alice\0wrong", &creds), Step::Failure(_)));
        assert!(matches!(authenticate(b"\0bob\0pw256", &creds), Step::Failure(_)));
        assert!(matches!(authenticate(b"\0alice\0", &creds), Step::Failure(_)), "an empty password");
        assert!(matches!(authenticate(b"\0alice\0pw256\0x", &creds), Step::Failure(_)), "four parts");
        assert!(matches!(authenticate(b"alice", &creds), Step::Failure(_)));
    }

    /// With both credentials (their passwords may differ after a change
    /// of one), PLAIN follows SCRAM-SHA-512's.
    #[test]
    fn plain_prefers_the_sha512_credential() {
        let creds = store(&[(ScramMechanism::Sha256, "old"), (ScramMechanism::Sha512, "new")]);
        assert!(matches!(authenticate(b"\0alice\0new", &creds), Step::Success { .. }));
        assert!(matches!(authenticate(b"\0alice\0old", &creds), Step::Failure(_)));
    }
}
