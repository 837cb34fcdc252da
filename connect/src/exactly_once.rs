//! Exactly-once sources (Kafka's KIP-618): a source task's records and its
//! source offsets are written by one transactional producer and committed
//! in one transaction, so a read_committed consumer sees a record exactly
//! when the offset past it is stored.
//!
//! The offsets are records of the offsets topic (`offset.storage.topic`,
//! compacted) in Kafka Connect's own format: the key is the JSON array
//! `[connector name, partition map]`, the value the offset map as JSON
//! (null: the partition's offset was removed). A task reads them back
//! read_committed, the last value per key winning, before it starts.
//!
//! This module holds the keys and the record format, which are pure, and
//! the read of the offsets topic; the worker's transactional loop lives in
//! `worker.rs`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value as Json;
use spate_client::{Client, Consumer, ConsumerConfig, IsolationLevel, ProducerRecord, SeekTo, TopicPartition};

use crate::error::{ConnectError, Result};
use crate::props::Props;
use crate::record::{SourceOffset, SourcePartition};

/// Kafka's `exactly.once.support` connector key.
pub const SUPPORT_KEY: &str = "exactly.once.support";
/// Kafka's `transaction.boundary` connector key.
pub const BOUNDARY_KEY: &str = "transaction.boundary";
/// Kafka's `transaction.boundary.interval.ms` connector key.
pub const BOUNDARY_INTERVAL_KEY: &str = "transaction.boundary.interval.ms";

/// How long a task waits, at its start, for transactions other tasks have
/// open in the offsets topic to end: a committed offset of ours written
/// after another task's open transaction is past the last stable offset
/// until that transaction ends. The transaction timeout bounds how long
/// one can stay open; this is that plus a margin.
pub const OFFSETS_READ_TIMEOUT_MS: u64 = 90_000;

/// `exactly.once.support`: whether the connector must be able to give
/// exactly-once delivery or only should when the worker can.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    Requested,
    Required,
}

/// `transaction.boundary`: when a task's transaction is committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boundary {
    /// After every batch the task's poll returns (Kafka's default).
    Poll,
    /// Every so many milliseconds (checked after each poll).
    Interval { interval_ms: u64 },
}

/// A source connector's exactly-once keys, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectorSettings {
    pub support: Support,
    pub boundary: Boundary,
}

impl ConnectorSettings {
    /// Reads the keys; `flush_interval_ms` (the worker's
    /// offset.flush.interval.ms) is the interval's default, as in Kafka.
    pub fn from_config(props: &Props, flush_interval_ms: u64) -> Result<ConnectorSettings> {
        let value = |key: &str| props.get(key).map(|v| v.trim().to_ascii_lowercase()).filter(|v| !v.is_empty());
        let support = match value(SUPPORT_KEY).as_deref() {
            None | Some("requested") => Support::Requested,
            Some("required") => Support::Required,
            Some(other) => {
                return Err(ConnectError::Config(format!(
                    "Invalid value {other} for configuration {SUPPORT_KEY}: String must be one of: requested, required"
                )));
            }
        };
        let interval_ms = match props.get(BOUNDARY_INTERVAL_KEY).map(|v| v.trim()).filter(|v| !v.is_empty()) {
            None => None,
            Some(text) => match text.parse::<u64>() {
                Ok(ms) if ms > 0 => Some(ms),
                _ => {
                    return Err(ConnectError::Config(format!(
                        "Invalid value {text} for configuration {BOUNDARY_INTERVAL_KEY}: a positive number of milliseconds"
                    )));
                }
            },
        };
        let boundary = match value(BOUNDARY_KEY).as_deref() {
            None | Some("poll") => Boundary::Poll,
            Some("interval") => Boundary::Interval { interval_ms: interval_ms.unwrap_or(flush_interval_ms) },
            Some("connector") => {
                return Err(ConnectError::Config(format!(
                    "{BOUNDARY_KEY}=connector is not supported by Spate Connect: no built-in connector defines \
                     its own transaction boundaries; use poll or interval"
                )));
            }
            Some(other) => {
                return Err(ConnectError::Config(format!(
                    "Invalid value {other} for configuration {BOUNDARY_KEY}: String must be one of: poll, interval, connector"
                )));
            }
        };
        if interval_ms.is_some() && boundary == Boundary::Poll {
            return Err(ConnectError::Config(format!(
                "{BOUNDARY_INTERVAL_KEY} is set but {BOUNDARY_KEY} is poll; set {BOUNDARY_KEY}=interval"
            )));
        }
        Ok(ConnectorSettings { support, boundary })
    }
}

/// Whether a built-in source connector can resume from its offsets
/// exactly where the last committed transaction left it (Kafka's
/// `SourceConnector::exactlyOnceSupport`): the file source reading a file
/// and the PostgreSQL source can; stdin and the HTTP webhook receiver
/// cannot replay what they were given before a crash.
pub fn connector_supports(class: &str, props: &Props) -> bool {
    let plugin = crate::plugins::find(class);
    let Some(plugin) = plugin else { return false };
    let class = plugin.class;
    if class.ends_with("FileStreamSourceConnector") {
        return props.get("file").is_some_and(|f| !f.trim().is_empty());
    }
    class.ends_with("PostgresSourceConnector")
}

/// The transactional id of a source task: stable across restarts, so that
/// a restarted worker's producer fences the one it replaces and aborts the
/// transaction that one left open.
pub fn transactional_id(connector: &str, task: usize) -> String {
    format!("{connector}-{task}")
}

/// Kafka's producer default transaction.timeout.ms.
pub const TRANSACTION_TIMEOUT_MS_DEFAULT: i32 = 60_000;

/// The transaction timeout of a task's producer: Kafka's default, or twice
/// the interval between commits if that is longer, so that the
/// coordinator does not abort a transaction the task is about to commit
/// (the broker refuses one above its transaction.max.timeout.ms, 15
/// minutes by default, with a clear error at the task's start).
pub fn transaction_timeout_ms(boundary: Boundary) -> i32 {
    match boundary {
        Boundary::Poll => TRANSACTION_TIMEOUT_MS_DEFAULT,
        Boundary::Interval { interval_ms } => {
            let doubled = i32::try_from(interval_ms.saturating_mul(2)).unwrap_or(i32::MAX);
            doubled.max(TRANSACTION_TIMEOUT_MS_DEFAULT)
        }
    }
}

/// The offsets topic's key of a connector's partition, Kafka Connect's
/// `["name",{partition}]`.
pub fn offset_key(connector: &str, partition: &SourcePartition) -> Vec<u8> {
    Json::Array(vec![Json::String(connector.to_string()), Json::Object(partition.clone())]).to_string().into_bytes()
}

/// The record that stores `offset` for `partition` in the offsets topic.
pub fn offset_record(
    topic: &str,
    connector: &str,
    partition: &SourcePartition,
    offset: &SourceOffset,
) -> ProducerRecord {
    let value = Json::Object(offset.clone()).to_string();
    ProducerRecord::new(topic, Bytes::from(value)).with_key(Bytes::from(offset_key(connector, partition)))
}

/// The record that removes `partition`'s offset (a tombstone, which
/// compaction eventually drops with the older values).
pub fn tombstone_record(topic: &str, connector: &str, partition: &SourcePartition) -> ProducerRecord {
    ProducerRecord {
        topic: topic.to_string(),
        key: Some(Bytes::from(offset_key(connector, partition))),
        ..ProducerRecord::default()
    }
}

/// One record of the offsets topic, read back: connector, partition and
/// offset (None: a tombstone, the offset was removed). None if the record
/// is not Kafka Connect's format (another writer's record is skipped, not
/// fatal).
pub fn parse_offset_record(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> Option<(String, SourcePartition, Option<SourceOffset>)> {
    let key: Json = serde_json::from_slice(key?).ok()?;
    let [Json::String(connector), Json::Object(partition)] = key.as_array()?.as_slice() else { return None };
    let offset = match value {
        None => None,
        Some(value) => match serde_json::from_slice::<Json>(value).ok()? {
            Json::Object(offset) => Some(offset),
            Json::Null => None,
            _ => return None,
        },
    };
    Some((connector.clone(), partition.clone(), offset))
}

/// A connector's offsets from the offsets topic's records in log order:
/// the last value per partition wins, a tombstone removes it. The map is
/// keyed by the partition's canonical JSON.
#[derive(Debug, Default)]
pub struct OffsetsReplay {
    pub offsets: BTreeMap<String, (SourcePartition, Option<SourceOffset>)>,
}

impl OffsetsReplay {
    pub fn apply(&mut self, connector: &str, key: Option<&[u8]>, value: Option<&[u8]>) {
        if let Some((name, partition, offset)) = parse_offset_record(key, value)
            && name == connector
        {
            let canonical = Json::Object(partition.clone()).to_string();
            self.offsets.insert(canonical, (partition, offset));
        }
    }
}

/// Reads `connector`'s committed offsets from the offsets topic,
/// read_committed, to its end: every transaction that was open when the
/// read began (another task's) must have ended first, so that a commit of
/// ours behind it is seen.
pub async fn read_offsets(client: &Client, topic: &str, connector: &str) -> Result<OffsetsReplay> {
    let metadata = client.metadata(Some(&[topic.to_string()])).await?;
    let partitions: Vec<TopicPartition> =
        (0..metadata.partition_count(topic)?).map(|p| TopicPartition::new(topic, p)).collect();
    let uncommitted = Consumer::new(client.clone(), ConsumerConfig::default())?;
    let end = uncommitted.end_offsets(&partitions).await?;
    let config = ConsumerConfig { isolation_level: IsolationLevel::ReadCommitted, ..ConsumerConfig::default() };
    let mut consumer = Consumer::new(client.clone(), config)?;
    consumer.assign(partitions.clone());
    consumer.seek_many(&partitions, SeekTo::Earliest).await?;
    let mut replay = OffsetsReplay::default();
    let deadline = Instant::now() + Duration::from_millis(OFFSETS_READ_TIMEOUT_MS);
    let behind =
        |consumer: &Consumer| end.iter().any(|(tp, end)| consumer.position(tp).is_none_or(|position| position < *end));
    while behind(&consumer) {
        if Instant::now() >= deadline {
            return Err(ConnectError::Task(format!(
                "reading the offsets topic {topic}: a transaction stayed open for {OFFSETS_READ_TIMEOUT_MS} ms"
            )));
        }
        for record in consumer.poll(Duration::from_millis(200)).await? {
            replay.apply(connector, record.key.as_deref(), record.value.as_deref());
        }
    }
    Ok(replay)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::props::parse;
    use serde_json::json;

    fn settings(text: &str) -> Result<ConnectorSettings> {
        ConnectorSettings::from_config(&parse(text).expect("parse"), 60_000)
    }

    #[test]
    fn boundaries_and_support_are_read_as_kafka_names_them() {
        let poll = ConnectorSettings { support: Support::Requested, boundary: Boundary::Poll };
        assert_eq!(settings("").expect("defaults"), poll);
        assert_eq!(settings("transaction.boundary=POLL\nexactly.once.support=requested").expect("poll"), poll);
        let interval = settings("transaction.boundary=interval\nexactly.once.support=required").expect("interval");
        assert_eq!(interval.support, Support::Required);
        assert_eq!(interval.boundary, Boundary::Interval { interval_ms: 60_000 }, "the flush interval by default");
        let set = settings("transaction.boundary=interval\ntransaction.boundary.interval.ms=250").expect("set");
        assert_eq!(set.boundary, Boundary::Interval { interval_ms: 250 });
        assert_eq!(transaction_timeout_ms(Boundary::Poll), 60_000);
        assert_eq!(transaction_timeout_ms(set.boundary), 60_000, "never below Kafka's default");
        assert_eq!(transaction_timeout_ms(Boundary::Interval { interval_ms: 100_000 }), 200_000);
        assert_eq!(transaction_timeout_ms(Boundary::Interval { interval_ms: u64::MAX }), i32::MAX);
    }

    #[test]
    fn unsupported_or_bad_values_are_refused_naming_the_key() {
        for (text, key) in [
            ("transaction.boundary=connector", "transaction.boundary=connector is not supported"),
            ("transaction.boundary=sometimes", "transaction.boundary"),
            ("exactly.once.support=maybe", "exactly.once.support"),
            ("transaction.boundary=interval\ntransaction.boundary.interval.ms=0", "transaction.boundary.interval.ms"),
            (
                "transaction.boundary=interval\ntransaction.boundary.interval.ms=soon",
                "transaction.boundary.interval.ms",
            ),
            ("transaction.boundary.interval.ms=100", "set transaction.boundary=interval"),
        ] {
            match settings(text) {
                Err(ConnectError::Config(why)) => assert!(why.contains(key), "{text}: {why}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn offset_records_are_kafka_connects_json_and_read_back() {
        let partition = json!({"filename": "test.txt"}).as_object().cloned().expect("map");
        let offset = json!({"position": 8}).as_object().cloned().expect("map");
        let record = offset_record("connect-offsets", "local-file-source", &partition, &offset);
        assert_eq!(record.key.as_deref(), Some(&br#"["local-file-source",{"filename":"test.txt"}]"#[..]));
        assert_eq!(record.value.as_deref(), Some(&br#"{"position":8}"#[..]));
        let parsed = parse_offset_record(record.key.as_deref(), record.value.as_deref()).expect("parsed");
        assert_eq!(parsed, ("local-file-source".to_string(), partition.clone(), Some(offset)));
        assert_eq!(parse_offset_record(record.key.as_deref(), None).expect("tombstone").2, None);
        assert_eq!(parse_offset_record(record.key.as_deref(), Some(b"null")).expect("null").2, None);
        for (key, value) in [
            (None, Some(&b"{}"[..])),
            (Some(&b"not json"[..]), Some(&b"{}"[..])),
            (Some(&br#"["a"]"#[..]), Some(&b"{}"[..])),
            (Some(&br#"[1,{}]"#[..]), Some(&b"{}"[..])),
            (Some(&br#"["a",{}]"#[..]), Some(&b"[1]"[..])),
            (Some(&br#"["a",{}]"#[..]), Some(&b"{"[..])),
        ] {
            assert_eq!(parse_offset_record(key, value), None, "{key:?} {value:?}");
        }
    }

    #[test]
    fn the_last_committed_value_per_partition_wins_and_a_tombstone_removes_it() {
        let key =
            |connector: &str, file: &str| offset_key(connector, json!({"filename": file}).as_object().expect("map"));
        let mut replay = OffsetsReplay::default();
        replay.apply("src", Some(&key("src", "a")), Some(br#"{"position":1}"#));
        replay.apply("src", Some(&key("src", "b")), Some(br#"{"position":5}"#));
        replay.apply("other", Some(&key("other", "a")), Some(br#"{"position":99}"#));
        replay.apply("src", Some(&key("src", "a")), Some(br#"{"position":7}"#));
        replay.apply("src", Some(b"garbage"), Some(br#"{"position":0}"#));
        replay.apply("src", Some(&key("src", "b")), None);
        let offsets: Vec<(String, Option<SourceOffset>)> =
            replay.offsets.into_iter().map(|(canonical, (_, offset))| (canonical, offset)).collect();
        assert_eq!(
            offsets,
            vec![
                (r#"{"filename":"a"}"#.to_string(), json!({"position": 7}).as_object().cloned()),
                (r#"{"filename":"b"}"#.to_string(), None),
            ]
        );
    }

    #[test]
    fn only_connectors_that_can_replay_support_exactly_once() {
        let props = |text: &str| parse(text).expect("parse");
        assert!(connector_supports("FileStreamSource", &props("file=/tmp/a")));
        assert!(!connector_supports("FileStreamSource", &props("")), "stdin cannot be replayed");
        assert!(connector_supports("PostgresSource", &props("")));
        assert!(!connector_supports("HttpSource", &props("")));
        assert!(!connector_supports("NoSuchConnector", &props("")));
        assert_eq!(transactional_id("local-file-source", 0), "local-file-source-0");
    }
}
