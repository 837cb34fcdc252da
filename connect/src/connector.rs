//! The connector and task traits, in the shape of Kafka Connect's
//! `SourceConnector`/`SinkConnector`, `SourceTask` and `SinkTask`, and
//! their configuration definitions (what `config/validate` reports).

use std::collections::BTreeMap;

use spate_client::TopicPartition;

use crate::error::Result;
use crate::props::Props;
use crate::record::{SinkRecord, SourceOffset, SourcePartition, SourceRecord};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigType {
    String,
    Int,
    Long,
    Boolean,
    List,
    Class,
}

impl ConfigType {
    /// Kafka's `ConfigDef.Type` name, as the REST API shows it.
    pub fn name(self) -> &'static str {
        match self {
            ConfigType::String => "STRING",
            ConfigType::Int => "INT",
            ConfigType::Long => "LONG",
            ConfigType::Boolean => "BOOLEAN",
            ConfigType::List => "LIST",
            ConfigType::Class => "CLASS",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Importance {
    High,
    Medium,
    Low,
}

impl Importance {
    pub fn name(self) -> &'static str {
        match self {
            Importance::High => "HIGH",
            Importance::Medium => "MEDIUM",
            Importance::Low => "LOW",
        }
    }
}

/// One key a connector takes (Kafka's `ConfigDef.ConfigKey`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigKey {
    pub name: &'static str,
    pub config_type: ConfigType,
    /// None: required (no default).
    pub default: Option<&'static str>,
    pub importance: Importance,
    pub documentation: &'static str,
    pub group: &'static str,
}

impl ConfigKey {
    pub fn required(&self) -> bool {
        self.default.is_none()
    }
}

/// A key's value and what is wrong with it, as `config/validate` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigReport {
    pub key: ConfigKey,
    pub value: Option<String>,
    pub errors: Vec<String>,
}

/// `validate_against`, then, once every key checks out on its own, the
/// connector's own parse: its first error goes to the key it names.
pub fn validate_parsed<T>(
    keys: &[ConfigKey],
    props: &Props,
    parse: impl Fn(&Props) -> std::result::Result<T, (&'static str, String)>,
) -> Vec<ConfigReport> {
    let mut reports = validate_against(keys, props);
    if reports.iter().all(|r| r.errors.is_empty())
        && let Err((key, message)) = parse(props)
        && let Some(report) = reports.iter_mut().find(|r| r.key.name == key)
    {
        report.errors.push(message);
    }
    reports
}

/// Checks `props` against `keys`: required keys present, numbers and
/// booleans parse. Connectors add their own rules on top.
pub fn validate_against(keys: &[ConfigKey], props: &Props) -> Vec<ConfigReport> {
    keys.iter()
        .map(|key| {
            let value = props.get(key.name).cloned();
            let mut errors = Vec::new();
            match (&value, key.default) {
                (None, None) => {
                    errors.push(format!("Missing required configuration \"{}\" which has no default value.", key.name));
                }
                (Some(value), _) => {
                    let trimmed = value.trim();
                    let fits = match key.config_type {
                        ConfigType::Int => trimmed.parse::<i32>().is_ok(),
                        ConfigType::Long => trimmed.parse::<i64>().is_ok(),
                        ConfigType::Boolean => {
                            trimmed.eq_ignore_ascii_case("true") || trimmed.eq_ignore_ascii_case("false")
                        }
                        _ => true,
                    };
                    if !fits {
                        errors.push(format!(
                            "Invalid value {value} for configuration {}: Not a {}",
                            key.name,
                            key.config_type.name().to_ascii_lowercase()
                        ));
                    }
                }
                (None, Some(_)) => {}
            }
            ConfigReport { key: key.clone(), value, errors }
        })
        .collect()
}

/// What every connector has in common.
pub trait Connector: Send {
    /// The keys this connector takes, beyond the common ones.
    fn config_def(&self) -> Vec<ConfigKey>;
    /// Checks the connector's own keys (the worker checks the common ones).
    fn validate(&self, props: &Props) -> Vec<ConfigReport> {
        validate_against(&self.config_def(), props)
    }
    /// Takes the connector's configuration; an error fails the connector.
    fn start(&mut self, props: &Props) -> Result<()>;
    /// One configuration per task to run, at most `tasks_max` of them.
    fn task_configs(&self, tasks_max: usize) -> Vec<Props>;
    fn stop(&mut self) {}
    fn version(&self) -> String {
        crate::VERSION.to_string()
    }
}

pub trait SourceConnector: Connector {
    fn create_task(&self) -> Box<dyn SourceTask>;
}

pub trait SinkConnector: Connector {
    fn create_task(&self) -> Box<dyn SinkTask>;
}

/// What a source task can ask the worker: where it stopped last time.
pub trait OffsetStorageReader {
    fn offset(&self, partition: &SourcePartition) -> Option<SourceOffset>;
}

/// Reads records from a system. Each task runs on a thread of its own, so
/// `poll` may block briefly (it should return within a second or so, so
/// that pause and stop are seen).
pub trait SourceTask: Send {
    fn start(&mut self, props: &Props, offsets: &dyn OffsetStorageReader) -> Result<()>;
    /// Records read since the last call; empty when there is nothing yet.
    /// The worker stores a record's source offset once the cluster has
    /// acknowledged it (and the records before it).
    fn poll(&mut self) -> Result<Vec<SourceRecord>>;
    /// Called after the worker has stored the offsets of acknowledged
    /// records: a hint that the source may let go of what they cover.
    fn commit(&mut self) -> Result<()> {
        Ok(())
    }
    /// Called once per non-empty `poll`, in poll order, after the cluster
    /// acknowledged every record that poll returned (Kafka's per-record
    /// `commitRecord`, per poll): a source whose sender waits for
    /// durability (HttpSource's 200) answers here.
    fn poll_acknowledged(&mut self) {}
    fn stop(&mut self) {}
}

/// Writes records to a system. The worker commits a partition's consumer
/// offset only after `flush` returned for it, so a record is never marked
/// done before the sink has it (at-least-once).
pub trait SinkTask: Send {
    fn start(&mut self, props: &Props) -> Result<()>;
    /// Records to write; the sink may buffer them until `flush`.
    fn put(&mut self, records: Vec<SinkRecord>) -> Result<()>;
    /// Make everything `put` so far durable in the sink, up to `offsets`
    /// (the next offset to read per partition).
    fn flush(&mut self, offsets: &BTreeMap<TopicPartition, i64>) -> Result<()>;
    /// Records the sink could not write and skipped under
    /// `errors.tolerance=all` (Kafka's ErrantRecordReporter, KIP-610),
    /// each with a `ConnectError::Data` saying why. The worker takes them
    /// after every `put` and `flush` and sends them to the dead-letter
    /// topic (if any) before it commits their offsets.
    fn take_errant(&mut self) -> Vec<ErrantRecord> {
        Vec::new()
    }
    fn stop(&mut self) {}
}

/// A record a sink task skipped, and why.
#[derive(Debug)]
pub struct ErrantRecord {
    pub record: SinkRecord,
    pub error: crate::error::ConnectError,
}
