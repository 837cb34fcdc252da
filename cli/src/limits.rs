//! The CLI's limits, each with its reason.

// The SCRAM client's bounds (nonce bytes, iterations) are the client
// library's (`spate_client::limits`); its iteration bounds must be the
// broker's.
const _: () = assert!(spate_client::limits::SCRAM_ITERATIONS_MIN == spate_replication::limits::SCRAM_ITERATIONS_MIN);
const _: () = assert!(spate_client::limits::SCRAM_ITERATIONS_MAX == spate_replication::limits::SCRAM_ITERATIONS_MAX);
/// Random bytes of the salt `spate user create` makes (Kafka's tools make
/// 20 to 30; 32 is a hash block's worth, within the broker's
/// `SCRAM_SALT_BYTES_MAX`).
pub(crate) const USER_SALT_BYTES: usize = 32;
const _: () = assert!(USER_SALT_BYTES <= spate_replication::limits::SCRAM_SALT_BYTES_MAX);
/// Largest `--command-config` file read: a Kafka client's properties are
/// a few hundred bytes; anything far larger is the wrong file.
pub(crate) const COMMAND_CONFIG_BYTES_MAX: u64 = 1 << 20;
/// Largest PEM file (CA bundle, certificate, key) read: a full public CA
/// bundle is about 200 KiB.
pub(crate) const PEM_FILE_BYTES_MAX: u64 = 4 << 20;
