//! Topic configs under Kafka's names, turned into the engine's LogConfig.

use std::collections::BTreeMap;

use spate_engine::{Durability, LogConfig};

use crate::limits::{CONFIG_VALUE_BYTES_MAX, TOPIC_CONFIGS_MAX};

/// The keys a topic may set, each with what it means.
pub const KNOWN_KEYS: &[(&str, &str)] = &[
    ("retention.ms", "delete segments whose newest record is older (ms); -1: keep forever"),
    ("retention.bytes", "delete oldest segments while the partition is larger; -1: no limit"),
    ("segment.bytes", "roll a segment at this size"),
    ("segment.ms", "roll a segment this old"),
    ("max.message.bytes", "the largest batch accepted"),
    ("flush.ms", "0: fdatasync before ack (durability always); N: within N ms; -1: never"),
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TopicConfigError(pub String);

fn parse_i64(key: &str, value: &str, min: i64) -> Result<i64, TopicConfigError> {
    match value.parse::<i64>() {
        Ok(n) if n >= min => Ok(n),
        _ => Err(TopicConfigError(format!("{key}={value:?}: expected an integer >= {min}"))),
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
        match key.as_str() {
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
            "max.message.bytes" => {
                let bytes = parse_i64(key, value, 1)?;
                config.batch_bytes_max = usize::try_from(bytes).unwrap_or(usize::MAX);
                config.pending_bytes_max = config.pending_bytes_max.max(config.batch_bytes_max);
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
    }
    config.validate().map_err(|err| TopicConfigError(err.to_string()))
}

/// Every known key with its effective value, for DescribeTopics.
pub fn effective(config: &LogConfig) -> Vec<(&'static str, String)> {
    let flush_ms = match config.durability {
        Durability::Always => 0,
        Durability::IntervalMs(ms) => ms as i64,
        Durability::Never => -1,
    };
    vec![
        ("retention.ms", config.retention_ms.unwrap_or(-1).to_string()),
        ("retention.bytes", config.retention_bytes.map_or(-1, |b| b as i64).to_string()),
        ("segment.bytes", config.segment_bytes_max.to_string()),
        ("segment.ms", config.segment_ms.to_string()),
        ("max.message.bytes", config.batch_bytes_max.to_string()),
        ("flush.ms", flush_ms.to_string()),
    ]
}
