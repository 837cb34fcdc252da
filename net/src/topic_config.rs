//! Topic configs under Kafka's names, checked and turned into the engine's
//! LogConfig.
//!
//! The catalog stores what the user set, as strings; everything else takes
//! its default. Keys the engine acts on map onto `LogConfig` (and change a
//! running log through `PartitionLog::update_config`); cleanup.policy and
//! delete.retention.ms are the cleaner's; min.insync.replicas and
//! unclean.leader.election.enable are checked and stored for replication,
//! which does not exist yet, and change nothing today.

use std::collections::BTreeMap;

use spate_engine::batch::TimestampType;
use spate_engine::{CleanupPolicy, Durability, LogConfig};

use crate::limits::{CONFIG_VALUE_BYTES_MAX, TOPIC_CONFIGS_MAX};

/// The keys a topic may set, each with what it means.
pub const KNOWN_KEYS: &[(&str, &str)] = &[
    ("retention.ms", "delete segments whose newest record is older (ms); -1: keep forever"),
    ("retention.bytes", "delete oldest segments while the partition is larger; -1: no limit"),
    ("segment.bytes", "roll a segment at this size"),
    ("segment.ms", "roll a segment this old"),
    ("cleanup.policy", "delete, compact, or compact,delete"),
    ("delete.retention.ms", "how long compaction keeps a tombstone (ms)"),
    ("min.insync.replicas", "the fewest in-sync replicas acks=all needs (kept for replication)"),
    ("max.message.bytes", "the largest batch accepted (compressed size)"),
    ("message.timestamp.type", "CreateTime (the producer's) or LogAppendTime (the broker's, at append)"),
    ("unclean.leader.election.enable", "true or false (kept for replication)"),
    ("flush.ms", "0: fdatasync before ack (durability always); N: within N ms; -1: never"),
];

/// Defaults of the keys that `LogConfig` does not hold.
const CLEANUP_POLICY_DEFAULT: &str = "delete";
const DELETE_RETENTION_MS_DEFAULT: i64 = 24 * 60 * 60 * 1000;
pub(crate) const MIN_INSYNC_REPLICAS_DEFAULT: i64 = 1;
const UNCLEAN_LEADER_ELECTION_DEFAULT: bool = false;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TopicConfigError(pub String);

fn parse_i64(key: &str, value: &str, min: i64) -> Result<i64, TopicConfigError> {
    match value.parse::<i64>() {
        Ok(n) if n >= min => Ok(n),
        _ => Err(TopicConfigError(format!("{key}={value:?}: expected an integer >= {min}"))),
    }
}

fn parse_bool(key: &str, value: &str) -> Result<bool, TopicConfigError> {
    // Kafka parses booleans case-insensitively.
    match value.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(TopicConfigError(format!("{key}={value:?}: expected true or false"))),
    }
}

/// cleanup.policy is a list of `delete` and `compact`, in any order, each
/// at most once (Kafka's rule).
fn check_cleanup_policy(key: &str, value: &str) -> Result<(), TopicConfigError> {
    let mut seen = Vec::new();
    for part in value.split(',').map(str::trim) {
        if !matches!(part, "delete" | "compact") || seen.contains(&part) {
            return Err(TopicConfigError(format!("{key}={value:?}: expected delete, compact or compact,delete")));
        }
        seen.push(part);
    }
    Ok(())
}

fn parse_timestamp_type(key: &str, value: &str) -> Result<TimestampType, TopicConfigError> {
    match value {
        "CreateTime" => Ok(TimestampType::CreateTime),
        "LogAppendTime" => Ok(TimestampType::LogAppendTime),
        _ => Err(TopicConfigError(format!("{key}={value:?}: expected CreateTime or LogAppendTime"))),
    }
}

/// Checks every key and value; the map is what the catalog stores.
pub fn validate(configs: &BTreeMap<String, String>) -> Result<(), TopicConfigError> {
    if configs.len() > TOPIC_CONFIGS_MAX {
        return Err(TopicConfigError(format!("at most {TOPIC_CONFIGS_MAX} configs")));
    }
    let defaults = LogConfig::default();
    apply(configs, &mut defaults.clone()).map(|_| ())
}

/// The engine config of a partition: the broker's defaults with the topic's
/// settings on top.
pub fn apply(configs: &BTreeMap<String, String>, config: &mut LogConfig) -> Result<(), TopicConfigError> {
    for (key, value) in configs {
        if value.len() > CONFIG_VALUE_BYTES_MAX {
            return Err(TopicConfigError(format!("{key}: value over {CONFIG_VALUE_BYTES_MAX} bytes")));
        }
        apply_one(key, value, config)?;
    }
    config.validate().map_err(|err| TopicConfigError(err.to_string()))
}

fn apply_one(key: &str, value: &str, config: &mut LogConfig) -> Result<(), TopicConfigError> {
    match key {
        "retention.ms" => {
            let ms = parse_i64(key, value, -1)?;
            config.retention_ms = (ms >= 0).then_some(ms);
        }
        "retention.bytes" => {
            let bytes = parse_i64(key, value, -1)?;
            config.retention_bytes = (bytes >= 0).then_some(bytes as u64);
        }
        "segment.bytes" => config.segment_bytes_max = parse_i64(key, value, 4096)? as u64,
        "segment.ms" => config.segment_ms = parse_i64(key, value, 1)?,
        "cleanup.policy" => {
            check_cleanup_policy(key, value)?;
            let has = |policy: &str| value.split(',').any(|part| part.trim() == policy);
            config.cleanup_policy = match (has("compact"), has("delete")) {
                (true, true) => CleanupPolicy::CompactDelete,
                (true, false) => CleanupPolicy::Compact,
                _ => CleanupPolicy::Delete,
            };
        }
        "delete.retention.ms" => config.delete_retention_ms = parse_i64(key, value, 0)?,
        "min.insync.replicas" => {
            parse_i64(key, value, 1)?;
        }
        "max.message.bytes" => {
            let bytes = parse_i64(key, value, 1)?;
            config.batch_bytes_max = usize::try_from(bytes).unwrap_or(usize::MAX);
            config.pending_bytes_max = config.pending_bytes_max.max(config.batch_bytes_max);
        }
        "message.timestamp.type" => config.timestamp_type = parse_timestamp_type(key, value)?,
        "unclean.leader.election.enable" => {
            parse_bool(key, value)?;
        }
        "flush.ms" => {
            config.durability = match parse_i64(key, value, -1)? {
                -1 => Durability::Never,
                0 => Durability::Always,
                ms => Durability::IntervalMs(ms as u64),
            }
        }
        _ => {
            let known: Vec<&str> = KNOWN_KEYS.iter().map(|(k, _)| *k).collect();
            return Err(TopicConfigError(format!("unknown config {key:?}; known: {}", known.join(", "))));
        }
    }
    Ok(())
}

/// A topic's configs after an incremental change: `set` entries replace or
/// add keys, `delete` removes them (a key named in both is refused). The
/// result is checked whole, so a change that makes the set inconsistent is
/// refused.
pub fn altered(
    current: &BTreeMap<String, String>,
    set: &[(String, String)],
    delete: &[String],
) -> Result<BTreeMap<String, String>, TopicConfigError> {
    let mut next = current.clone();
    for (index, (key, _)) in set.iter().enumerate() {
        if set[..index].iter().any(|(earlier, _)| earlier == key) {
            return Err(TopicConfigError(format!("config {key:?} given twice")));
        }
    }
    for key in delete {
        if set.iter().any(|(k, _)| k == key) {
            return Err(TopicConfigError(format!("config {key:?} is both set and deleted")));
        }
        if !KNOWN_KEYS.iter().any(|(known, _)| known == key) {
            return Err(TopicConfigError(format!("unknown config {key:?}")));
        }
        next.remove(key);
    }
    for (key, value) in set {
        next.insert(key.clone(), value.clone());
    }
    validate(&next)?;
    Ok(next)
}

/// Every known key with its effective value, for DescribeTopics: the
/// engine's for the keys it holds, else the topic's own or the default.
pub fn effective(config: &LogConfig, configs: &BTreeMap<String, String>) -> Vec<(&'static str, String)> {
    let flush_ms = match config.durability {
        Durability::Always => 0,
        Durability::IntervalMs(ms) => ms as i64,
        Durability::Never => -1,
    };
    let timestamp_type = match config.timestamp_type {
        TimestampType::CreateTime => "CreateTime",
        TimestampType::LogAppendTime => "LogAppendTime",
    };
    let stored = |key: &str, default: String| configs.get(key).cloned().unwrap_or(default);
    vec![
        ("retention.ms", config.retention_ms.unwrap_or(-1).to_string()),
        ("retention.bytes", config.retention_bytes.map_or(-1, |b| b as i64).to_string()),
        ("segment.bytes", config.segment_bytes_max.to_string()),
        ("segment.ms", config.segment_ms.to_string()),
        ("cleanup.policy", stored("cleanup.policy", CLEANUP_POLICY_DEFAULT.to_string())),
        ("delete.retention.ms", stored("delete.retention.ms", DELETE_RETENTION_MS_DEFAULT.to_string())),
        ("min.insync.replicas", stored("min.insync.replicas", MIN_INSYNC_REPLICAS_DEFAULT.to_string())),
        ("max.message.bytes", config.batch_bytes_max.to_string()),
        ("message.timestamp.type", timestamp_type.to_string()),
        (
            "unclean.leader.election.enable",
            stored("unclean.leader.election.enable", UNCLEAN_LEADER_ELECTION_DEFAULT.to_string()),
        ),
        ("flush.ms", flush_ms.to_string()),
    ]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
        entries.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn every_known_key_is_accepted_with_a_good_value_and_described() {
        let configs = map(&[
            ("retention.ms", "60000"),
            ("retention.bytes", "-1"),
            ("segment.bytes", "1048576"),
            ("segment.ms", "3600000"),
            ("cleanup.policy", "compact,delete"),
            ("delete.retention.ms", "0"),
            ("min.insync.replicas", "2"),
            ("max.message.bytes", "2097152"),
            ("message.timestamp.type", "LogAppendTime"),
            ("unclean.leader.election.enable", "TRUE"),
            ("flush.ms", "100"),
        ]);
        assert_eq!(configs.len(), KNOWN_KEYS.len());
        let mut config = LogConfig::default();
        apply(&configs, &mut config).unwrap();
        assert_eq!(config.retention_ms, Some(60_000));
        assert_eq!(config.timestamp_type, TimestampType::LogAppendTime);
        assert_eq!(config.batch_bytes_max, 2 << 20);
        assert_eq!(config.durability, Durability::IntervalMs(100));
        let described: BTreeMap<&str, String> = effective(&config, &configs).into_iter().collect();
        assert_eq!(described.len(), KNOWN_KEYS.len());
        for (key, value) in &configs {
            if key != "unclean.leader.election.enable" {
                assert_eq!(&described[key.as_str()], value, "{key}");
            }
        }
    }

    #[test]
    fn defaults_are_described_for_unset_keys() {
        let described: BTreeMap<&str, String> =
            effective(&LogConfig::default(), &BTreeMap::new()).into_iter().collect();
        assert_eq!(described["cleanup.policy"], "delete");
        assert_eq!(described["message.timestamp.type"], "CreateTime");
        assert_eq!(described["min.insync.replicas"], "1");
        assert_eq!(described["unclean.leader.election.enable"], "false");
    }

    #[test]
    fn bad_values_and_unknown_keys_are_refused() {
        for (key, value) in [
            ("cleanup.policy", "purge"),
            ("cleanup.policy", "delete,delete"),
            ("cleanup.policy", ""),
            ("delete.retention.ms", "-1"),
            ("min.insync.replicas", "0"),
            ("message.timestamp.type", "createtime"),
            ("unclean.leader.election.enable", "yes"),
            ("max.message.bytes", "0"),
            ("max.message.bytes", "100000000"),
            ("segment.bytes", "12"),
            ("retention.ms", "soon"),
            ("compression.type", "zstd"),
        ] {
            assert!(validate(&map(&[(key, value)])).is_err(), "{key}={value} accepted");
        }
        assert!(validate(&map(&[("cleanup.policy", "delete, compact")])).is_ok());
    }

    #[test]
    fn an_alteration_sets_and_deletes_and_is_checked_whole() {
        let current = map(&[("retention.ms", "1000"), ("segment.ms", "5000")]);
        let set = vec![("retention.bytes".to_string(), "4096".to_string())];
        let next = altered(&current, &set, &["segment.ms".to_string()]).unwrap();
        assert_eq!(next, map(&[("retention.ms", "1000"), ("retention.bytes", "4096")]));
        let both = altered(&current, &set, &["retention.bytes".to_string()]);
        assert!(both.is_err());
        assert!(altered(&current, &[], &["nonsense".to_string()]).is_err());
        let bad = vec![("retention.ms".to_string(), "x".to_string())];
        assert!(altered(&current, &bad, &[]).is_err());
    }
}
