//! The application's settings, under Kafka Streams' config keys.

use std::path::PathBuf;

use crate::error::StreamsError;

/// `processing.guarantee`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ProcessingGuarantee {
    /// Outputs and changelog writes are acknowledged before input offsets
    /// commit: after a crash, records since the last commit are processed
    /// again (their outputs may appear twice).
    #[default]
    AtLeastOnce,
    /// `exactly_once_v2` (KIP-447): one transactional producer per
    /// instance; each commit puts the outputs, the changelog writes and the
    /// input offsets in one transaction, and inputs and changelogs are read
    /// read_committed. After a crash nothing of an uncommitted interval is
    /// visible, and the stores are rebuilt from their changelogs.
    ExactlyOnceV2,
}

/// Kafka Streams' `commit.interval.ms` under exactly-once (when not set):
/// short, since outputs are visible only at commits.
pub const COMMIT_INTERVAL_MS_EXACTLY_ONCE_DEFAULT: u64 = 100;
/// Kafka Streams' transaction timeout under exactly-once: an instance that
/// died mid-transaction holds its partitions' readers back this long.
pub const TRANSACTION_TIMEOUT_MS_DEFAULT: i32 = 10_000;

/// `default.deserialization.exception.handler`: what a record that cannot
/// be deserialized does to the application.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeserializationExceptionHandler {
    /// Log it and stop the application (Kafka's default). Its offset is
    /// not committed: a restart meets it again.
    #[default]
    LogAndFail,
    /// Log it, skip it, and go on; it counts as processed.
    LogAndContinue,
}

#[derive(Debug, Clone)]
pub struct StreamsConfig {
    /// `application.id`: the consumer group, and the prefix of internal
    /// topics (`<id>-<store>-changelog`, `<id>-<name>-repartition`).
    pub application_id: String,
    /// `bootstrap.servers`, comma-separated in the key form.
    pub bootstrap_servers: Vec<String>,
    pub processing_guarantee: ProcessingGuarantee,
    /// `commit.interval.ms`: how often outputs are flushed and input
    /// offsets committed (Kafka's default for at-least-once: 30 s).
    pub commit_interval_ms: u64,
    pub deserialization_exception_handler: DeserializationExceptionHandler,
    /// `replication.factor` of the internal topics.
    pub replication_factor: i16,
    /// `poll.ms`: the longest a poll waits for records.
    pub poll_ms: u64,
    /// `session.timeout.ms` of the consumer group.
    pub session_timeout_ms: u64,
    /// `errors.dead.letter.queue.topic.name` (KIP-1034): a record that
    /// cannot be deserialized is also written there, bytes unchanged, with
    /// the error in its headers; then the handler decides (continue, or
    /// fail and meet it again at the next start).
    pub dead_letter_queue_topic: Option<String>,
    /// `state.dir`: persistent stores live in
    /// `<state.dir>/<application.id>/<task id>/<store>`, with the task's
    /// `.checkpoint` beside them. Default: `spate-streams` in the system's
    /// temporary directory (Kafka's is `kafka-streams` there).
    pub state_dir: PathBuf,
    /// `statestore.cache.max.bytes`: what the changelog caches of all
    /// tasks may hold between commits; past it they are written out.
    /// 0 writes every change at once.
    pub statestore_cache_max_bytes: u64,
    /// How the application connects and logs in: Kafka's client security
    /// keys (`security.protocol`, `sasl.*`, `ssl.*`), as
    /// `spate_client::security` reads them.
    pub security: spate_client::security::ClientSecurity,
}

/// Kafka Streams' default `statestore.cache.max.bytes`: 10 MiB.
pub const STATESTORE_CACHE_MAX_BYTES_DEFAULT: u64 = 10 * 1024 * 1024;

/// The default `state.dir`.
pub fn state_dir_default() -> PathBuf {
    std::env::temp_dir().join("spate-streams")
}

pub const COMMIT_INTERVAL_MS_DEFAULT: u64 = 30_000;
pub const POLL_MS_DEFAULT: u64 = 100;
pub const SESSION_TIMEOUT_MS_DEFAULT: u64 = 45_000;

impl StreamsConfig {
    pub fn new(application_id: &str, bootstrap_servers: &str) -> Self {
        StreamsConfig {
            application_id: application_id.to_string(),
            bootstrap_servers: split_servers(bootstrap_servers),
            processing_guarantee: ProcessingGuarantee::AtLeastOnce,
            commit_interval_ms: COMMIT_INTERVAL_MS_DEFAULT,
            deserialization_exception_handler: DeserializationExceptionHandler::LogAndFail,
            replication_factor: 1,
            poll_ms: POLL_MS_DEFAULT,
            session_timeout_ms: SESSION_TIMEOUT_MS_DEFAULT,
            dead_letter_queue_topic: None,
            state_dir: state_dir_default(),
            statestore_cache_max_bytes: STATESTORE_CACHE_MAX_BYTES_DEFAULT,
            security: Default::default(),
        }
    }

    /// From Kafka Streams' keys; `application.id` is required, unknown keys
    /// are refused (a typo must not pass silently).
    pub fn from_properties(properties: &[(&str, &str)]) -> Result<Self, StreamsError> {
        let mut config = StreamsConfig::new("", "");
        let lookup = |key: &str| properties.iter().rev().find(|(k, _)| *k == key).map(|(_, v)| v.to_string());
        config.security = spate_client::security::from_kafka_properties(&lookup)
            .map_err(|err| StreamsError::Config(err.to_string()))?;
        for (key, value) in properties {
            if spate_client::security::KAFKA_SECURITY_KEYS.contains(key) {
                continue;
            }
            let number = |value: &str| {
                value
                    .trim()
                    .parse::<u64>()
                    .map_err(|_| StreamsError::Config(format!("{key}={value:?} is not a number")))
            };
            match *key {
                "application.id" => config.application_id = value.to_string(),
                "bootstrap.servers" => config.bootstrap_servers = split_servers(value),
                "processing.guarantee" => {
                    config.processing_guarantee = match *value {
                        "at_least_once" => ProcessingGuarantee::AtLeastOnce,
                        "exactly_once_v2" => {
                            if lookup("commit.interval.ms").is_none() {
                                config.commit_interval_ms = COMMIT_INTERVAL_MS_EXACTLY_ONCE_DEFAULT;
                            }
                            ProcessingGuarantee::ExactlyOnceV2
                        }
                        other => {
                            return Err(StreamsError::Config(format!(
                                "processing.guarantee={other:?}: at_least_once or exactly_once_v2 (Kafka 4 removed exactly_once and exactly_once_beta)"
                            )));
                        }
                    }
                }
                "commit.interval.ms" => config.commit_interval_ms = number(value)?,
                "poll.ms" => config.poll_ms = number(value)?,
                "errors.dead.letter.queue.topic.name" => {
                    config.dead_letter_queue_topic = Some(value.to_string()).filter(|topic| !topic.is_empty())
                }
                "state.dir" => config.state_dir = PathBuf::from(value),
                "statestore.cache.max.bytes" => config.statestore_cache_max_bytes = number(value)?,
                "session.timeout.ms" => config.session_timeout_ms = number(value)?,
                "replication.factor" => {
                    config.replication_factor = i16::try_from(number(value)?)
                        .map_err(|_| StreamsError::Config(format!("replication.factor={value} is too large")))?
                }
                "default.deserialization.exception.handler" => {
                    config.deserialization_exception_handler = match value.rsplit('.').next().unwrap_or(value) {
                        "LogAndFailExceptionHandler" => DeserializationExceptionHandler::LogAndFail,
                        "LogAndContinueExceptionHandler" => DeserializationExceptionHandler::LogAndContinue,
                        other => {
                            return Err(StreamsError::Config(format!("unknown deserialization handler {other:?}")));
                        }
                    }
                }
                other => return Err(StreamsError::Config(format!("unknown config key {other:?}"))),
            }
        }
        config.validate()?;
        Ok(config)
    }

    pub(crate) fn validate(&self) -> Result<(), StreamsError> {
        let id_ok = !self.application_id.is_empty()
            && self.application_id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !id_ok {
            return Err(StreamsError::Config(format!(
                "application.id {:?} must be non-empty ASCII letters, digits, '.', '_' or '-' (it prefixes topic names)",
                self.application_id
            )));
        }
        if self.state_dir.as_os_str().is_empty() {
            return Err(StreamsError::Config("state.dir must not be empty".into()));
        }
        if self.commit_interval_ms == 0 {
            return Err(StreamsError::Config("commit.interval.ms must be at least 1".into()));
        }
        Ok(())
    }
}

fn split_servers(servers: &str) -> Vec<String> {
    servers.split(',').map(str::trim).filter(|server| !server.is_empty()).map(str::to_string).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn kafka_keys_are_read_and_mistakes_refused() {
        let config = StreamsConfig::from_properties(&[
            ("application.id", "wordcount"),
            ("bootstrap.servers", "a:9400, b:9400"),
            ("commit.interval.ms", "100"),
            ("state.dir", "/var/lib/wordcount"),
            ("statestore.cache.max.bytes", "0"),
            ("errors.dead.letter.queue.topic.name", "wordcount-dlq"),
            (
                "default.deserialization.exception.handler",
                "org.apache.kafka.streams.errors.LogAndContinueExceptionHandler",
            ),
        ])
        .unwrap();
        assert_eq!(config.bootstrap_servers, vec!["a:9400", "b:9400"]);
        assert_eq!(config.commit_interval_ms, 100);
        assert_eq!(config.state_dir, PathBuf::from("/var/lib/wordcount"));
        assert_eq!(config.statestore_cache_max_bytes, 0);
        assert_eq!(StreamsConfig::new("a", "b:1").statestore_cache_max_bytes, 10 * 1024 * 1024);
        assert_eq!(StreamsConfig::new("a", "b:1").state_dir, std::env::temp_dir().join("spate-streams"));
        assert_eq!(config.dead_letter_queue_topic.as_deref(), Some("wordcount-dlq"));
        assert_eq!(config.deserialization_exception_handler, DeserializationExceptionHandler::LogAndContinue);
        let exactly_once =
            StreamsConfig::from_properties(&[("application.id", "a"), ("processing.guarantee", "exactly_once_v2")])
                .unwrap();
        assert_eq!(exactly_once.processing_guarantee, ProcessingGuarantee::ExactlyOnceV2);
        assert_eq!(exactly_once.commit_interval_ms, COMMIT_INTERVAL_MS_EXACTLY_ONCE_DEFAULT, "Kafka's EOS default");
        let explicit = StreamsConfig::from_properties(&[
            ("application.id", "a"),
            ("processing.guarantee", "exactly_once_v2"),
            ("commit.interval.ms", "1000"),
        ])
        .unwrap();
        assert_eq!(explicit.commit_interval_ms, 1000);
        assert!(
            StreamsConfig::from_properties(&[("application.id", "a"), ("processing.guarantee", "exactly_once")])
                .is_err()
        );
        assert!(StreamsConfig::from_properties(&[("application.id", "a"), ("commit.interval.msx", "1")]).is_err());
        assert!(StreamsConfig::from_properties(&[("application.id", "bad id")]).is_err());
        assert!(StreamsConfig::from_properties(&[("bootstrap.servers", "a:1")]).is_err());
    }

    /// Kafka's client security keys log the application in (they were
    /// refused as unknown keys).
    #[test]
    fn kafkas_security_keys_log_the_application_in() {
        let config = StreamsConfig::from_properties(&[
            ("application.id", "wordcount"),
            ("security.protocol", "SASL_PLAINTEXT"),
            ("sasl.mechanism", "SCRAM-SHA-256"),
            ("sasl.username", "alice"),
            ("sasl.password", "alice-secret"),
        ])
        .unwrap();
        let sasl = config.security.sasl.clone().unwrap();
        assert_eq!((sasl.username.as_str(), sasl.mechanism.name()), ("alice", "SCRAM-SHA-256"));
        assert!(!format!("{config:?}").contains("alice-secret"), "no password in Debug");
        let no_ca = StreamsConfig::from_properties(&[("application.id", "a"), ("security.protocol", "SSL")]);
        assert!(no_ca.unwrap_err().to_string().contains("ssl.ca.location"));
    }
}
