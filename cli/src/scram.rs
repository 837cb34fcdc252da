//! The salted passwords `spate user create` sends, with the client
//! library's SCRAM (`spate_client::scram`), for the metadata's mechanism
//! type.

use spate_replication::ScramMechanism;

/// The client library's name for one of the metadata's mechanisms.
fn client_mechanism(mechanism: ScramMechanism) -> spate_client::scram::ScramMechanism {
    match mechanism {
        ScramMechanism::Sha256 => spate_client::scram::ScramMechanism::Sha256,
        ScramMechanism::Sha512 => spate_client::scram::ScramMechanism::Sha512,
    }
}

/// RFC 5802's Hi(), what `spate user create` sends the broker, as Kafka's
/// tools do.
pub(crate) fn salted_password(mechanism: ScramMechanism, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    spate_client::scram::salted_password(client_mechanism(mechanism), password, salt, iterations)
}

/// `n` random bytes from the OS.
pub(crate) fn random_bytes(n: usize) -> anyhow::Result<Vec<u8>> {
    Ok(spate_client::scram::random_bytes(n)?)
}
