//! What happens to a record between a task and the cluster: transforms
//! and converters (Kafka's order: a source's records are transformed, then
//! converted; a sink's converted, then transformed), and what a failure
//! there does, by Kafka's `errors.*` keys:
//!
//! - `errors.tolerance`: `none` (default) fails the task at the first
//!   record a converter or transform cannot handle; `all` skips it.
//! - `errors.log.enable`: log each skipped record.
//! - `errors.deadletterqueue.topic.name` (sinks): send each skipped
//!   record, its key, value and headers as they were consumed, to this
//!   topic; with `errors.deadletterqueue.context.headers.enable=true` the
//!   error goes along in Kafka's `__connect.errors.*` headers.

use bytes::Bytes;
use spate_client::{ConsumerRecord, ProducerRecord};

use crate::converter::{Converter, converter_for, with_prefix};
use crate::error::{ConnectError, Result};
use crate::props::Props;
use crate::record::{ConnectRecord, Header, SinkRecord};
use crate::transforms::TransformChain;

/// Where in the pipeline a record failed, as Kafka's `__connect.errors.stage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    KeyConverter,
    ValueConverter,
    Transformation,
    /// The sink task's `put` or `flush` (a record it could not write).
    TaskPut,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::KeyConverter => "KEY_CONVERTER",
            Stage::ValueConverter => "VALUE_CONVERTER",
            Stage::Transformation => "TRANSFORMATION",
            Stage::TaskPut => "TASK_PUT",
        }
    }
}

/// A record the pipeline could not handle.
#[derive(Debug)]
pub struct Failure {
    pub stage: Stage,
    pub error: ConnectError,
}

/// The connector's `errors.*` settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorPolicy {
    pub tolerate_all: bool,
    pub log: bool,
    pub dead_letter_topic: Option<String>,
    pub context_headers: bool,
}

fn flag(config: &Props, key: &str) -> Result<bool> {
    match config.get(key).map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(false),
        Some(v) if v == "true" => Ok(true),
        Some(v) if v == "false" => Ok(false),
        Some(v) => Err(ConnectError::Config(format!("{key} must be true or false, not {v:?}"))),
    }
}

impl ErrorPolicy {
    pub fn from_config(config: &Props) -> Result<ErrorPolicy> {
        let tolerate_all = match config.get("errors.tolerance").map(|v| v.trim().to_ascii_lowercase()) {
            None => false,
            Some(v) if v == "none" => false,
            Some(v) if v == "all" => true,
            Some(v) => return Err(ConnectError::Config(format!("errors.tolerance must be none or all, not {v:?}"))),
        };
        let dead_letter_topic =
            config.get("errors.deadletterqueue.topic.name").map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
        Ok(ErrorPolicy {
            tolerate_all,
            log: flag(config, "errors.log.enable")?,
            dead_letter_topic,
            context_headers: flag(config, "errors.deadletterqueue.context.headers.enable")?,
        })
    }
}

/// A task's converters, transforms and error policy.
#[derive(Debug)]
pub struct Pipeline {
    pub key: Box<dyn Converter>,
    pub value: Box<dyn Converter>,
    key_class: String,
    value_class: String,
    pub transforms: TransformChain,
    pub errors: ErrorPolicy,
}

impl Pipeline {
    /// The connector's own converters (with their settings) win over the
    /// worker's.
    pub fn new(connector: &Props, worker: &Props, key_default: &str, value_default: &str) -> Result<Pipeline> {
        let pick = |which: &str, default: &str| -> Result<(Box<dyn Converter>, String)> {
            match connector.get(which).filter(|c| !c.trim().is_empty()) {
                Some(class) => Ok((converter_for(class, &with_prefix(connector, which))?, class.clone())),
                None => Ok((converter_for(default, &with_prefix(worker, which))?, default.to_string())),
            }
        };
        let (key, key_class) = pick("key.converter", key_default)?;
        let (value, value_class) = pick("value.converter", value_default)?;
        Ok(Pipeline {
            key,
            value,
            key_class,
            value_class,
            transforms: TransformChain::from_config(connector)?,
            errors: ErrorPolicy::from_config(connector)?,
        })
    }

    /// A source record, transformed and converted; None if a transform
    /// dropped it.
    pub fn source_record(&self, record: ConnectRecord) -> std::result::Result<Option<ProducerRecord>, Failure> {
        let transformed =
            self.transforms.apply(record, None).map_err(|error| Failure { stage: Stage::Transformation, error })?;
        let Some(record) = transformed else { return Ok(None) };
        let key = self
            .key
            .from_connect_data(&record.topic, &record.key)
            .map_err(|error| Failure { stage: Stage::KeyConverter, error })?;
        let value = self
            .value
            .from_connect_data(&record.topic, &record.value)
            .map_err(|error| Failure { stage: Stage::ValueConverter, error })?;
        Ok(Some(ProducerRecord {
            topic: record.topic,
            partition: record.kafka_partition,
            key,
            value,
            headers: record.headers.into_iter().map(|h| (h.key, h.value.unwrap_or_default())).collect(),
            timestamp_ms: record.timestamp_ms,
        }))
    }

    /// A consumed record, converted and transformed; None if a transform
    /// dropped it.
    pub fn sink_record(&self, consumed: &ConsumerRecord) -> std::result::Result<Option<SinkRecord>, Failure> {
        let key = self
            .key
            .to_connect_data(&consumed.topic, consumed.key.as_deref())
            .map_err(|error| Failure { stage: Stage::KeyConverter, error })?;
        let value = self
            .value
            .to_connect_data(&consumed.topic, consumed.value.as_deref())
            .map_err(|error| Failure { stage: Stage::ValueConverter, error })?;
        let record = ConnectRecord {
            topic: consumed.topic.clone(),
            kafka_partition: Some(consumed.partition),
            key,
            value,
            timestamp_ms: Some(consumed.timestamp_ms),
            headers: consumed
                .headers
                .iter()
                .map(|(key, value)| Header { key: key.clone(), value: value.clone() })
                .collect(),
        };
        let transformed = self
            .transforms
            .apply(record, Some(consumed.offset))
            .map_err(|error| Failure { stage: Stage::Transformation, error })?;
        Ok(transformed.map(|record| SinkRecord { record, kafka_offset: consumed.offset }))
    }

    /// Whether `failure` skips the record rather than failing the task:
    /// only data a converter or transform refused, and only under
    /// `errors.tolerance=all`.
    pub fn tolerates(&self, failure: &Failure) -> bool {
        self.errors.tolerate_all && matches!(failure.error, ConnectError::Data(_))
    }

    /// The dead-letter record for a consumed record that failed, as
    /// Kafka's DeadLetterQueueReporter builds it.
    pub fn dead_letter(
        &self,
        topic: &str,
        consumed: &ConsumerRecord,
        failure: &Failure,
        connector: &str,
        task_id: usize,
    ) -> ProducerRecord {
        let mut headers: Vec<(String, Bytes)> =
            consumed.headers.iter().map(|(k, v)| (k.clone(), v.clone().unwrap_or_default())).collect();
        if self.errors.context_headers {
            let class = match failure.stage {
                Stage::KeyConverter => self.key_class.as_str(),
                Stage::ValueConverter => self.value_class.as_str(),
                Stage::Transformation => "org.apache.kafka.connect.transforms.Transformation",
                Stage::TaskPut => "org.apache.kafka.connect.sink.SinkTask",
            };
            let message = failure.error.to_string();
            for (name, value) in [
                ("__connect.errors.topic", consumed.topic.clone()),
                ("__connect.errors.partition", consumed.partition.to_string()),
                ("__connect.errors.offset", consumed.offset.to_string()),
                ("__connect.errors.connector.name", connector.to_string()),
                ("__connect.errors.task.id", task_id.to_string()),
                ("__connect.errors.stage", failure.stage.name().to_string()),
                ("__connect.errors.class.name", class.to_string()),
                ("__connect.errors.exception.class.name", "org.apache.kafka.connect.errors.DataException".to_string()),
                ("__connect.errors.exception.message", message.clone()),
                ("__connect.errors.exception.stacktrace", message),
            ] {
                headers.push((name.to_string(), Bytes::from(value)));
            }
        }
        ProducerRecord {
            topic: topic.to_string(),
            partition: None,
            key: consumed.key.clone(),
            value: consumed.value.clone(),
            headers,
            timestamp_ms: Some(consumed.timestamp_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::props::parse;

    fn consumed(value: &'static [u8]) -> ConsumerRecord {
        ConsumerRecord {
            topic: "in".into(),
            partition: 0,
            offset: 7,
            timestamp_ms: 1,
            key: None,
            value: Some(Bytes::from_static(value)),
            headers: vec![("trace".into(), Some(Bytes::from_static(b"t1")))],
        }
    }

    #[test]
    fn a_record_the_converter_refuses_is_tolerated_only_under_errors_tolerance_all() {
        let worker = parse("value.converter.schemas.enable=true").expect("props");
        let strict = Pipeline::new(&Props::new(), &worker, "StringConverter", "JsonConverter").expect("pipeline");
        let failure = strict.sink_record(&consumed(b"not json")).expect_err("not json");
        assert_eq!(failure.stage, Stage::ValueConverter);
        assert!(!strict.tolerates(&failure));
        let config = parse(
            "errors.tolerance=all\nerrors.deadletterqueue.topic.name=dlq\nerrors.deadletterqueue.context.headers.enable=true\n",
        )
        .expect("props");
        let tolerant = Pipeline::new(&config, &worker, "StringConverter", "JsonConverter").expect("pipeline");
        let failure = tolerant.sink_record(&consumed(b"not json")).expect_err("not json");
        assert!(tolerant.tolerates(&failure));
        let dead = tolerant.dead_letter("dlq", &consumed(b"not json"), &failure, "sink", 0);
        assert_eq!(dead.value.as_deref(), Some(&b"not json"[..]), "the record as it was consumed");
        let header = |name: &str| {
            dead.headers.iter().find(|(k, _)| k == name).map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(header("trace").as_deref(), Some("t1"));
        assert_eq!(header("__connect.errors.offset").as_deref(), Some("7"));
        assert_eq!(header("__connect.errors.stage").as_deref(), Some("VALUE_CONVERTER"));
        assert!(header("__connect.errors.exception.message").is_some_and(|m| m.contains("serialization error")));
        let good = tolerant.sink_record(&consumed(br#"{"schema":{"type":"string","optional":false},"payload":"ok"}"#));
        assert_eq!(good.expect("converts").expect("kept").record.value.value, crate::data::Value::String("ok".into()));
    }

    #[test]
    fn connector_converters_override_the_workers_and_bad_errors_keys_are_refused() {
        let connector = parse("value.converter=StringConverter\n").expect("props");
        let pipeline = Pipeline::new(&connector, &Props::new(), "JsonConverter", "JsonConverter").expect("pipeline");
        let record = pipeline.sink_record(&consumed(b"plain")).expect("string converter").expect("kept");
        assert_eq!(record.record.value.value, crate::data::Value::String("plain".into()));
        for bad in ["errors.tolerance=some", "errors.log.enable=yes"] {
            let config = parse(bad).expect("props");
            assert!(matches!(
                Pipeline::new(&config, &Props::new(), "JsonConverter", "JsonConverter"),
                Err(ConnectError::Config(_))
            ));
        }
    }
}
