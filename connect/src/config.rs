//! The worker's configuration, from Kafka's standalone worker keys.

use std::path::PathBuf;

use spate_client::SaslConfig;

use crate::converter::{converter_for, with_prefix};
use crate::error::{ConnectError, Result};
use crate::props::Props;

/// Kafka's default `offset.flush.interval.ms`.
pub const OFFSET_FLUSH_INTERVAL_MS_DEFAULT: u64 = 60_000;
/// Kafka Connect's REST port.
pub const REST_PORT_DEFAULT: u16 = 8083;
/// Kafka's consumer default `session.timeout.ms`.
pub const CONSUMER_SESSION_TIMEOUT_MS_DEFAULT: u64 = 45_000;
/// Kafka's default `offset.storage.topic`.
pub const OFFSET_STORAGE_TOPIC_DEFAULT: &str = "connect-offsets";
/// One replica unless asked: a standalone worker runs against one broker
/// as often as against a cluster (Kafka's distributed default is 3).
pub const OFFSET_STORAGE_REPLICATION_FACTOR_DEFAULT: i16 = 1;

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Spate brokers' native addresses (host:port).
    pub bootstrap_servers: Vec<String>,
    pub key_converter: String,
    pub value_converter: String,
    /// The worker's `key.converter.*` and `value.converter.*` keys, for
    /// the converters' settings (only those: the config holds no secret).
    pub converter_props: Props,
    /// Kafka's client security keys (`security.protocol`, `sasl.*`,
    /// `ssl.ca.location`, ...), as `spate_client::security` reads them: the
    /// login (its Debug never shows the password) and TLS to native ports
    /// that take it.
    pub sasl: Option<SaslConfig>,
    pub tls: Option<spate_client::ClientTls>,
    pub offset_storage_file: PathBuf,
    pub offset_flush_interval_ms: u64,
    /// Where the REST API listens: host (empty: every interface) and port.
    pub rest_host: String,
    pub rest_port: u16,
    /// `consumer.session.timeout.ms`: how long a sink's group keeps a
    /// member that stopped heartbeating (a killed worker) before its
    /// partitions move.
    pub consumer_session_timeout_ms: u64,
    /// `exactly.once.source.support=enabled` (KIP-618): source tasks write
    /// their records and offsets in one transaction, the offsets to
    /// `offset_storage_topic`.
    pub exactly_once_source_support: bool,
    /// `offset.storage.topic`: the compacted topic of source offsets under
    /// exactly-once (created if missing).
    pub offset_storage_topic: String,
    /// `offset.storage.replication.factor`, for creating that topic.
    pub offset_storage_replication_factor: i16,
    /// `consumer.isolation.level`: whether sinks read read_committed
    /// (records of aborted transactions skipped, reads up to the last
    /// stable offset) or read_uncommitted, Kafka's default. A connector
    /// sets its own with `consumer.override.isolation.level` (KIP-458).
    pub consumer_read_committed: bool,
    /// Keys the worker does not use, for one warning.
    pub unknown_keys: Vec<String>,
}

const KNOWN_KEYS: &[&str] = &[
    "bootstrap.servers",
    "key.converter",
    "value.converter",
    "offset.storage.file.filename",
    "offset.flush.interval.ms",
    "listeners",
    "rest.port",
    "rest.host.name",
    // The file connectors are built in; Kafka's quickstart sets plugin.path
    // to find their jar, which Spate does not need.
    "plugin.path",
    "consumer.session.timeout.ms",
    "exactly.once.source.support",
    "offset.storage.topic",
    "offset.storage.replication.factor",
    "consumer.isolation.level",
];

/// An `isolation.level` value (under `key`): true for read_committed.
pub fn read_committed(key: &str, value: &str) -> Result<bool> {
    match value.trim() {
        "read_committed" => Ok(true),
        "read_uncommitted" => Ok(false),
        other => Err(ConnectError::Config(format!(
            "Invalid value {other} for configuration {key}: String must be one of: read_committed, read_uncommitted"
        ))),
    }
}

fn number<T: std::str::FromStr>(props: &Props, key: &str) -> Result<Option<T>> {
    props
        .get(key)
        .map(|value| {
            value
                .trim()
                .parse::<T>()
                .map_err(|_| ConnectError::Config(format!("{key} must be a number, not {value:?}")))
        })
        .transpose()
}

fn required<'a>(props: &'a Props, key: &str) -> Result<&'a str> {
    props.get(key).map(|v| v.trim()).filter(|v| !v.is_empty()).ok_or_else(|| {
        ConnectError::Config(format!("Missing required configuration \"{key}\" which has no default value."))
    })
}

/// `http://host:port` (scheme any case, host may be empty) from `listeners`.
fn parse_listener(listeners: &str) -> Result<(String, u16)> {
    let first = listeners.split(',').map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    let bad = || ConnectError::Config(format!("listeners must be http://host:port, not {listeners:?}"));
    let (scheme, rest) = first.split_once("://").ok_or_else(bad)?;
    if !scheme.eq_ignore_ascii_case("http") {
        return Err(ConnectError::Config(format!("listeners: only http is supported yet, not {scheme}")));
    }
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse::<u16>().map_err(|_| bad())?;
    Ok((host.trim_start_matches('[').trim_end_matches(']').to_string(), port))
}

impl WorkerConfig {
    pub fn from_props(props: &Props) -> Result<WorkerConfig> {
        let bootstrap_servers: Vec<String> = props
            .get("bootstrap.servers")
            .map_or("localhost:9400", String::as_str)
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            // Kafka accepts PLAINTEXT://host:port too.
            .map(|s| s.split_once("://").map_or(s, |(_, addr)| addr).to_string())
            .collect();
        if bootstrap_servers.is_empty() {
            return Err(ConnectError::Config("bootstrap.servers names no broker".into()));
        }
        let security = spate_client::security::from_kafka_properties(&|key| props.get(key).cloned())
            .map_err(|err| ConnectError::Config(err.to_string()))?;
        let key_converter = required(props, "key.converter")?.to_string();
        let value_converter = required(props, "value.converter")?.to_string();
        converter_for(&key_converter, &with_prefix(props, "key.converter"))?;
        converter_for(&value_converter, &with_prefix(props, "value.converter"))?;
        let offset_storage_file = PathBuf::from(required(props, "offset.storage.file.filename")?);
        let offset_flush_interval_ms =
            number::<u64>(props, "offset.flush.interval.ms")?.unwrap_or(OFFSET_FLUSH_INTERVAL_MS_DEFAULT);
        if offset_flush_interval_ms == 0 {
            return Err(ConnectError::Config("offset.flush.interval.ms must be positive".into()));
        }
        let (rest_host, rest_port) = match props.get("listeners").filter(|l| !l.trim().is_empty()) {
            Some(listeners) => parse_listener(listeners)?,
            None => (
                props.get("rest.host.name").cloned().unwrap_or_default(),
                number::<u16>(props, "rest.port")?.unwrap_or(REST_PORT_DEFAULT),
            ),
        };
        let consumer_session_timeout_ms =
            number::<u64>(props, "consumer.session.timeout.ms")?.unwrap_or(CONSUMER_SESSION_TIMEOUT_MS_DEFAULT);
        let exactly_once_source_support =
            match props.get("exactly.once.source.support").map(|v| v.trim().to_ascii_lowercase()).as_deref() {
                None | Some("") | Some("disabled") => false,
                Some("enabled") => true,
                // Kafka's "preparing" readies a distributed cluster for a
                // rolling upgrade; a standalone worker has no such step.
                Some(other) => {
                    return Err(ConnectError::Config(format!(
                        "Invalid value {other} for configuration exactly.once.source.support: \
                         String must be one of: disabled, enabled"
                    )));
                }
            };
        let offset_storage_topic = props
            .get("offset.storage.topic")
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| OFFSET_STORAGE_TOPIC_DEFAULT.to_string());
        let offset_storage_replication_factor = number::<i16>(props, "offset.storage.replication.factor")?
            .unwrap_or(OFFSET_STORAGE_REPLICATION_FACTOR_DEFAULT);
        if offset_storage_replication_factor < 1 {
            return Err(ConnectError::Config("offset.storage.replication.factor must be at least 1".into()));
        }
        let consumer_read_committed = match props.get("consumer.isolation.level") {
            Some(value) => read_committed("consumer.isolation.level", value)?,
            None => false,
        };
        let unknown_keys = props
            .keys()
            .filter(|key| {
                !KNOWN_KEYS.contains(&key.as_str())
                    && !spate_client::security::KAFKA_SECURITY_KEYS.contains(&key.as_str())
                    && !key.starts_with("key.converter.")
                    && !key.starts_with("value.converter.")
            })
            .cloned()
            .collect();
        Ok(WorkerConfig {
            bootstrap_servers,
            key_converter,
            value_converter,
            converter_props: props
                .iter()
                .filter(|(key, _)| key.starts_with("key.converter.") || key.starts_with("value.converter."))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
            sasl: security.sasl,
            tls: security.tls,
            offset_storage_file,
            offset_flush_interval_ms,
            rest_host,
            rest_port,
            consumer_session_timeout_ms,
            exactly_once_source_support,
            offset_storage_topic,
            offset_storage_replication_factor,
            consumer_read_committed,
            unknown_keys,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::props::parse;

    #[test]
    fn kafkas_sample_worker_config_is_read_with_defaults_and_unknown_keys_listed() {
        let props = parse(
            "bootstrap.servers=localhost:9400\nkey.converter=org.apache.kafka.connect.json.JsonConverter\n\
             value.converter=org.apache.kafka.connect.json.JsonConverter\nkey.converter.schemas.enable=true\n\
             value.converter.schemas.enable=true\noffset.storage.file.filename=/tmp/connect.offsets\n\
             offset.flush.interval.ms=10000\nplugin.path=libs/connect-file-3.9.0.jar\ngroup.id=x\nproducer.acks=1\n",
        )
        .expect("parse");
        let config = WorkerConfig::from_props(&props).expect("valid");
        assert_eq!(config.bootstrap_servers, ["localhost:9400"]);
        assert_eq!(config.offset_flush_interval_ms, 10_000);
        assert_eq!((config.rest_host.as_str(), config.rest_port), ("", 8083));
        assert_eq!(config.unknown_keys, ["group.id", "producer.acks"]);
        assert!(!config.exactly_once_source_support, "at-least-once unless asked");
    }

    #[test]
    fn exactly_once_source_support_and_the_offsets_topic_are_read() {
        let base = "key.converter=StringConverter\nvalue.converter=StringConverter\noffset.storage.file.filename=o\n";
        let with = |extra: &str| WorkerConfig::from_props(&parse(&format!("{base}{extra}")).expect("parse"));
        let defaults = with("exactly.once.source.support=Enabled").expect("valid");
        assert!(defaults.exactly_once_source_support);
        assert_eq!(
            (defaults.offset_storage_topic.as_str(), defaults.offset_storage_replication_factor),
            ("connect-offsets", 1)
        );
        let set =
            with("exactly.once.source.support=enabled\noffset.storage.topic=offs\noffset.storage.replication.factor=3")
                .expect("valid");
        assert_eq!((set.offset_storage_topic.as_str(), set.offset_storage_replication_factor), ("offs", 3));
        assert!(set.unknown_keys.is_empty(), "{:?}", set.unknown_keys);
        assert!(!with("exactly.once.source.support=disabled").expect("valid").exactly_once_source_support);
    }

    #[test]
    fn kafkas_security_keys_become_the_native_login_and_tls() {
        let base = "key.converter=StringConverter\nvalue.converter=StringConverter\noffset.storage.file.filename=o\n";
        let with = |extra: &str| WorkerConfig::from_props(&parse(&format!("{base}{extra}")).expect("parse"));
        assert_eq!(with("").expect("plain").sasl, None);
        let jaas = with(
            "security.protocol=SASL_PLAINTEXT\nsasl.mechanism=SCRAM-SHA-512\nsasl.jaas.config=org.apache.kafka.common.\
             security.scram.ScramLoginModule required username=\"alice\" password=\"s3cret\";\n",
        )
        .expect("jaas");
        let sasl = jaas.sasl.clone().expect("a login");
        assert_eq!(
            (sasl.username.as_str(), sasl.password.as_str(), sasl.mechanism.name()),
            ("alice", "s3cret", "SCRAM-SHA-512")
        );
        assert!(!format!("{jaas:?}").contains("s3cret"), "the password stays out of Debug");
        let plain = with("security.protocol=sasl_plaintext\nsasl.username=bob\nsasl.password=pw\n").expect("plain");
        assert_eq!(plain.sasl.expect("login").mechanism.name(), "PLAIN");
        for bad in [
            "security.protocol=SASL_SSL\nsasl.username=a\nsasl.password=b",
            "security.protocol=SASL_PLAINTEXT",
            "security.protocol=SASL_PLAINTEXT\nsasl.mechanism=GSSAPI\nsasl.username=a\nsasl.password=b",
            "security.protocol=CARRIER_PIGEON",
        ] {
            assert!(matches!(with(bad), Err(ConnectError::Config(_))), "{bad}");
        }
    }

    #[test]
    fn listeners_and_bad_values_are_parsed_or_refused_clearly() {
        let base = "key.converter=StringConverter\nvalue.converter=StringConverter\noffset.storage.file.filename=o\n";
        let with = |extra: &str| WorkerConfig::from_props(&parse(&format!("{base}{extra}")).expect("parse"));
        let config = with("listeners=HTTP://127.0.0.1:18083\nbootstrap.servers=PLAINTEXT://a:1, b:2").expect("valid");
        assert_eq!((config.rest_host.as_str(), config.rest_port), ("127.0.0.1", 18083));
        assert_eq!(config.bootstrap_servers, ["a:1", "b:2"]);
        assert_eq!(with("listeners=http://:9999").expect("valid").rest_port, 9999);
        assert_eq!(with("rest.port=8084").expect("valid").rest_port, 8084);
        for bad in ["listeners=https://:8443", "listeners=8083", "offset.flush.interval.ms=soon", "key.converter=Avro"]
        {
            assert!(matches!(with(bad), Err(ConnectError::Config(_))), "{bad}");
        }
        for bad in ["exactly.once.source.support=preparing", "offset.storage.replication.factor=0"] {
            assert!(
                matches!(with(bad), Err(ConnectError::Config(why)) if why.contains(bad.split('=').next().unwrap_or(bad))),
                "{bad}"
            );
        }
        let missing = WorkerConfig::from_props(&parse("key.converter=StringConverter").expect("parse"));
        assert!(matches!(missing, Err(ConnectError::Config(why)) if why.contains("value.converter")));
    }
}
