//! Brokers prove to each other that they belong to the cluster (issue 14):
//! a follower's fetch moves its leader's high watermark and ISR, so only a
//! broker may fetch as a replica, never a client claiming a replica id.
//!
//! Every broker knows the cluster secret (32 random bytes the first active
//! controller committed to the metadata log). A follower's connection opens
//! with a handshake carrying a proof: its node id, the time, a fresh nonce,
//! and an HMAC-SHA256 under the secret over those and the receiving broker
//! and shard. The secret itself never crosses the network; a proof is good
//! for one connection to one shard within `BROKER_AUTH_SKEW_MS` (a replay is
//! refused by its nonce). This is the interim scheme issue 14 asks for until
//! TLS and SASL (issue 16) authenticate brokers; it does not protect a
//! connection from someone who can alter it in flight.
//!
//! Wire layout of the proof (`HandshakeRequest.broker_auth`), big-endian:
//!
//! ```text
//! | node_id i32 | time_ms i64 | nonce [16] | hmac [32] |  (60 bytes)
//! ```

use std::collections::HashMap;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::limits::{BROKER_AUTH_NONCES_MAX, BROKER_AUTH_SKEW_MS};

const NONCE_BYTES: usize = 16;
const MAC_BYTES: usize = 32;
pub(crate) const PROOF_BYTES: usize = 4 + 8 + NONCE_BYTES + MAC_BYTES;
/// Domain separation: a MAC for this purpose and version only.
const CONTEXT: &[u8] = b"spate broker auth v1";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AuthError {
    #[error("this broker has no cluster secret yet")]
    NoSecret,
    #[error("a broker proof is {expected} bytes, not {got}")]
    Length { expected: usize, got: usize },
    #[error("the proof's time is {skew_ms} ms from this broker's clock")]
    Stale { skew_ms: i64 },
    #[error("the proof does not verify under the cluster secret")]
    BadMac,
    #[error("the proof was used before")]
    Replayed,
    #[error("too many fresh proofs at once; retry later")]
    Busy,
}

fn mac(secret: &[u8], node_id: i32, to_node: i32, to_shard: u16, time_ms: i64, nonce: &[u8]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(CONTEXT);
    mac.update(&node_id.to_be_bytes());
    mac.update(&to_node.to_be_bytes());
    mac.update(&to_shard.to_be_bytes());
    mac.update(&time_ms.to_be_bytes());
    mac.update(nonce);
    mac
}

/// The proof that broker `node_id` sends to shard `to_shard` of broker
/// `to_node` at `time_ms`. None if the OS has no randomness for a nonce.
pub(crate) fn prove(secret: &[u8], node_id: i32, to_node: i32, to_shard: u16, time_ms: i64) -> Option<Vec<u8>> {
    let mut nonce = [0u8; NONCE_BYTES];
    getrandom::fill(&mut nonce).ok()?;
    let tag = mac(secret, node_id, to_node, to_shard, time_ms, &nonce).finalize().into_bytes();
    let mut proof = Vec::with_capacity(PROOF_BYTES);
    proof.extend_from_slice(&node_id.to_be_bytes());
    proof.extend_from_slice(&time_ms.to_be_bytes());
    proof.extend_from_slice(&nonce);
    proof.extend_from_slice(&tag);
    debug_assert_eq!(proof.len(), PROOF_BYTES);
    Some(proof)
}

/// The nonces of the proofs a shard accepted, kept while a replay of them
/// could still pass the time check.
#[derive(Debug, Default)]
pub(crate) struct ReplayGuard {
    seen: HashMap<[u8; NONCE_BYTES], i64>,
}

impl ReplayGuard {
    /// Checks `proof` as shard `to_shard` of broker `to_node` at `now_ms`;
    /// answers the broker it proves.
    pub(crate) fn verify(
        &mut self,
        secret: Option<&[u8]>,
        proof: &[u8],
        to_node: i32,
        to_shard: u16,
        now_ms: i64,
    ) -> Result<i32, AuthError> {
        let secret = secret.ok_or(AuthError::NoSecret)?;
        if proof.len() != PROOF_BYTES {
            return Err(AuthError::Length { expected: PROOF_BYTES, got: proof.len() });
        }
        let (node_id, rest) = proof.split_at(4);
        let (time_ms, rest) = rest.split_at(8);
        let (nonce, tag) = rest.split_at(NONCE_BYTES);
        let node_id = i32::from_be_bytes(node_id.try_into().expect("4 bytes"));
        let time_ms = i64::from_be_bytes(time_ms.try_into().expect("8 bytes"));
        let skew_ms = now_ms.saturating_sub(time_ms);
        if skew_ms.abs() > BROKER_AUTH_SKEW_MS {
            return Err(AuthError::Stale { skew_ms });
        }
        // verify_slice compares in constant time.
        mac(secret, node_id, to_node, to_shard, time_ms, nonce).verify_slice(tag).map_err(|_| AuthError::BadMac)?;
        let nonce: [u8; NONCE_BYTES] = nonce.try_into().expect("16 bytes");
        if self.seen.len() >= BROKER_AUTH_NONCES_MAX {
            self.seen.retain(|_, seen_ms| now_ms.saturating_sub(*seen_ms) <= 2 * BROKER_AUTH_SKEW_MS);
            if self.seen.len() >= BROKER_AUTH_NONCES_MAX {
                return Err(AuthError::Busy);
            }
        }
        if self.seen.insert(nonce, time_ms).is_some() {
            return Err(AuthError::Replayed);
        }
        Ok(node_id)
    }
}

/// The wall clock in ms since the Unix epoch: proofs carry it, and both
/// sides must read it the same way.
pub(crate) fn unix_now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as i64)
}

/// The cluster secret from its hex form in the metadata.
pub(crate) fn secret_from_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn a_proof_verifies_once_for_its_broker_and_shard_only() {
        let now_ms = 1_700_000_000_000;
        let proof = prove(SECRET, 2, 1, 3, now_ms).expect("proof");
        let mut guard = ReplayGuard::default();
        assert_eq!(guard.verify(Some(SECRET), &proof, 1, 3, now_ms + 10), Ok(2));
        assert_eq!(guard.verify(Some(SECRET), &proof, 1, 3, now_ms + 20), Err(AuthError::Replayed));
        let mut other = ReplayGuard::default();
        assert_eq!(other.verify(Some(SECRET), &proof, 1, 4, now_ms), Err(AuthError::BadMac), "another shard");
        assert_eq!(other.verify(Some(SECRET), &proof, 5, 3, now_ms), Err(AuthError::BadMac), "another broker");
        assert_eq!(other.verify(Some(b"another secret"), &proof, 1, 3, now_ms), Err(AuthError::BadMac));
        assert!(matches!(other.verify(Some(SECRET), &proof, 1, 3, now_ms + 61_000), Err(AuthError::Stale { .. })));
        assert_eq!(other.verify(None, &proof, 1, 3, now_ms), Err(AuthError::NoSecret));
    }

    #[test]
    fn a_forged_or_truncated_proof_is_refused() {
        let now_ms = 1_700_000_000_000;
        let mut guard = ReplayGuard::default();
        let mut proof = prove(SECRET, 2, 1, 0, now_ms).expect("proof");
        // Claiming another node id breaks the MAC.
        proof[3] = 3;
        assert_eq!(guard.verify(Some(SECRET), &proof, 1, 0, now_ms), Err(AuthError::BadMac));
        assert!(matches!(guard.verify(Some(SECRET), &proof[..10], 1, 0, now_ms), Err(AuthError::Length { .. })));
        assert!(matches!(guard.verify(Some(SECRET), &[], 1, 0, now_ms), Err(AuthError::Length { .. })));
    }

    #[test]
    fn secrets_decode_from_hex() {
        assert_eq!(secret_from_hex("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(secret_from_hex("0"), None);
        assert_eq!(secret_from_hex("zz"), None);
    }
}
