//! The CLI's limits, each with its reason.

/// Random bytes in the SCRAM client nonce (RFC 5802 asks for enough to be
/// unpredictable; 18 bytes are 24 base64 characters, as the broker's).
pub(crate) const SCRAM_CLIENT_NONCE_BYTES: usize = 18;
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
