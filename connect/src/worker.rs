//! The standalone worker (Kafka's `ConnectStandalone` with its
//! `StandaloneHerder`): it runs connectors and their tasks in this
//! process, each task on a thread of its own, stores source offsets in a
//! local file, and is driven by connector configs given at start and by the
//! REST API.
//!
//! Delivery is at-least-once. A source record's offset is stored only
//! after the cluster acknowledged it and every record before it; a sink
//! partition's consumer offset is committed only after the sink task
//! flushed every record below it. A worker killed in between sends (or
//! writes) those records again when it restarts. With
//! `exactly.once.source.support=enabled`, a source task's records and
//! offsets go in one transaction instead (`run_source_exactly_once`,
//! `exactly_once.rs`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use spate_client::{
    Admin, AutoOffsetReset, Client, ClientConfig, ClientError, ConsumerConfig, DeliveryFuture, ErrorCode, GroupConfig,
    GroupConsumer, IsolationLevel, Producer, ProducerConfig, TopicPartition,
};
use tokio::runtime::Handle;

use crate::config::WorkerConfig;
use crate::connector::{
    ConfigKey, ConfigReport, ConfigType, ErrantRecord, Importance, OffsetStorageReader, SinkTask, SourceTask,
    validate_against,
};
use crate::converter::{converter_for, with_prefix};
use crate::error::{ConnectError, Result};
use crate::exactly_once::{self, Boundary, ConnectorSettings, Support};
use crate::limits::{
    CONNECTORS_PER_WORKER_MAX, SINK_POLL_MS, SOURCE_POLLS_IN_FLIGHT_MAX, TASK_IDLE_WAIT_MS, TASKS_PER_CONNECTOR_MAX,
    TOPIC_CREATE_ATTEMPTS_MAX, TOPIC_CREATE_BACKOFF_MS,
};
use crate::offsets::OffsetStore;
use crate::pipeline::{Failure, Pipeline, Stage};
use crate::plugins::{self, AnyConnector, ConnectorType, Plugin};
use crate::props::Props;
use crate::record::{SourceOffset, SourcePartition, SourceRecord};
use crate::transforms::TransformChain;

/// How long stopping a task waits for its thread (Kafka's
/// task.shutdown.graceful.timeout.ms): a source blocked reading stdin
/// cannot be interrupted, and must not hold up the worker's shutdown.
const TASK_SHUTDOWN_GRACEFUL_TIMEOUT_MS: u64 = 5_000;

/// A connector's own isolation level for its sink's consumer (KIP-458).
const CONSUMER_OVERRIDE_ISOLATION_LEVEL: &str = "consumer.override.isolation.level";

/// A connector's or task's state, as Kafka's REST API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum State {
    Unassigned,
    Running,
    Paused,
    Failed,
    Restarting,
    /// KIP-875: stopped by `PUT .../stop`, no tasks, config kept.
    Stopped,
}

#[derive(Debug)]
struct TaskControl {
    stop: AtomicBool,
    paused: AtomicBool,
    status: Mutex<(State, Option<String>)>,
    done: Mutex<bool>,
    done_signal: Condvar,
}

impl TaskControl {
    fn new(paused: bool) -> Arc<TaskControl> {
        Arc::new(TaskControl {
            stop: AtomicBool::new(false),
            paused: AtomicBool::new(paused),
            status: Mutex::new((State::Unassigned, None)),
            done: Mutex::new(false),
            done_signal: Condvar::new(),
        })
    }

    fn set(&self, state: State, trace: Option<String>) {
        *self.status.lock().unwrap_or_else(PoisonError::into_inner) = (state, trace);
    }

    fn status(&self) -> (State, Option<String>) {
        self.status.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Waits, while paused, showing PAUSED; returns false once stopping.
    fn wait_while_paused(&self) -> bool {
        if !self.paused.load(Ordering::Acquire) {
            return !self.stopping();
        }
        self.set(State::Paused, None);
        while self.paused.load(Ordering::Acquire) && !self.stopping() {
            std::thread::sleep(Duration::from_millis(TASK_IDLE_WAIT_MS));
        }
        if !self.stopping() {
            self.set(State::Running, None);
        }
        !self.stopping()
    }

    fn finish(&self) {
        *self.done.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.done_signal.notify_all();
    }

    /// Asks the task to stop and waits for it (bounded).
    fn stop_and_wait(&self, connector: &str, id: usize) {
        self.stop.store(true, Ordering::Release);
        let done = self.done.lock().unwrap_or_else(PoisonError::into_inner);
        let timeout = Duration::from_millis(TASK_SHUTDOWN_GRACEFUL_TIMEOUT_MS);
        let (done, _) =
            self.done_signal.wait_timeout_while(done, timeout, |done| !*done).unwrap_or_else(PoisonError::into_inner);
        if !*done {
            tracing::warn!(
                connector,
                task = id,
                "task did not stop within {TASK_SHUTDOWN_GRACEFUL_TIMEOUT_MS} ms; left behind"
            );
        }
    }
}

#[derive(Debug)]
struct ConnectorEntry {
    config: Props,
    plugin: &'static Plugin,
    connector: AnyConnector,
    paused: bool,
    /// Stopped (KIP-875): no tasks run until it is resumed.
    stopped: bool,
    /// Why the connector itself failed to start, if it did.
    failure: Option<String>,
    task_configs: Vec<Props>,
    tasks: Vec<Arc<TaskControl>>,
}

/// Kafka's ConnectorInfo: `GET /connectors/{name}`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ConnectorInfo {
    pub name: String,
    pub config: Props,
    pub tasks: Vec<TaskId>,
    #[serde(rename = "type")]
    pub connector_type: &'static str,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TaskId {
    pub connector: String,
    pub task: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StateInfo {
    pub state: State,
    pub worker_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TaskState {
    pub id: usize,
    #[serde(flatten)]
    pub state: StateInfo,
}

/// Kafka's ConnectorStateInfo: `GET /connectors/{name}/status`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ConnectorStatus {
    pub name: String,
    pub connector: StateInfo,
    pub tasks: Vec<TaskState>,
    #[serde(rename = "type")]
    pub connector_type: &'static str,
}

/// One entry of `GET /connectors/{name}/tasks`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TaskInfo {
    pub id: TaskId,
    pub config: Props,
}

/// Kafka's ConfigInfos: the answer of `config/validate`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ConfigInfos {
    pub name: String,
    pub error_count: usize,
    pub groups: Vec<String>,
    pub configs: Vec<ConfigInfo>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ConfigInfo {
    pub definition: ConfigDefinition,
    pub value: ConfigValueInfo,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ConfigDefinition {
    pub name: String,
    #[serde(rename = "type")]
    pub config_type: &'static str,
    pub required: bool,
    pub default_value: Option<String>,
    pub importance: &'static str,
    pub documentation: String,
    pub group: String,
    pub order_in_group: usize,
    pub width: &'static str,
    pub display_name: String,
    pub dependents: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ConfigValueInfo {
    pub name: String,
    pub value: Option<String>,
    pub recommended_values: Vec<String>,
    pub errors: Vec<String>,
    pub visible: bool,
}

/// KIP-875's `GET /connectors/{name}/offsets`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ConnectorOffsets {
    pub offsets: Vec<PartitionOffset>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PartitionOffset {
    pub partition: serde_json::Value,
    pub offset: serde_json::Value,
}

/// A connector plugin as `GET /connector-plugins` lists it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PluginInfo {
    pub class: &'static str,
    #[serde(rename = "type")]
    pub connector_type: &'static str,
    pub version: String,
}

struct Shared {
    config: WorkerConfig,
    handle: Handle,
    client: Client,
    producer: Producer,
    offsets: OffsetStore,
    worker_id: String,
    connectors: Mutex<BTreeMap<String, ConnectorEntry>>,
    /// Held through every change of the set of connectors or their tasks
    /// (create, replace, delete, restart, shutdown), so that two REST
    /// calls for one name cannot both start it and leave one's tasks
    /// running unowned. Reads (status, lists) take only `connectors`.
    changes: Mutex<()>,
    /// Topics known to exist (created if they were not).
    topics: Mutex<BTreeSet<String>>,
    /// Per connector, the topics it has produced to or consumed from
    /// (KIP-558's active topics), until it is deleted or they are reset.
    active_topics: Mutex<BTreeMap<String, BTreeSet<String>>>,
    shutting_down: AtomicBool,
}

/// The standalone worker. Its methods block (they start and stop task
/// threads): call them off the async runtime (`spawn_blocking`).
#[derive(Clone)]
pub struct Worker {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("worker_id", &self.shared.worker_id).finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn common_keys(connector_type: Option<ConnectorType>) -> Vec<ConfigKey> {
    let key = |name, config_type, default, documentation| ConfigKey {
        name,
        config_type,
        default,
        importance: Importance::High,
        documentation,
        group: "Common",
    };
    let mut keys = vec![
        key("name", ConfigType::String, None, "Globally unique name to use for this connector."),
        key("connector.class", ConfigType::String, None, "Name or alias of the class for this connector."),
        key("tasks.max", ConfigType::Int, Some("1"), "Maximum number of tasks to use for this connector."),
        key(
            "key.converter",
            ConfigType::Class,
            Some(""),
            "Converter class used to convert between Kafka Connect format and the serialized form that is written to Kafka.",
        ),
        key(
            "value.converter",
            ConfigType::Class,
            Some(""),
            "Converter class used to convert between Kafka Connect format and the serialized form that is written to Kafka.",
        ),
        key("transforms", ConfigType::List, Some(""), "Aliases for the transformations to be applied to records."),
        key("predicates", ConfigType::List, Some(""), "Aliases for the predicates used by transformations."),
        key("errors.tolerance", ConfigType::String, Some("none"), "Behavior for tolerating errors: none or all."),
        key(
            "errors.log.enable",
            ConfigType::Boolean,
            Some("false"),
            "Log each record skipped under errors.tolerance=all.",
        ),
    ];
    if connector_type == Some(ConnectorType::Source) {
        keys.push(key(
            exactly_once::SUPPORT_KEY,
            ConfigType::String,
            Some("requested"),
            "requested or required: whether the connector must be able to deliver exactly once (with exactly.once.source.support=enabled on the worker).",
        ));
        keys.push(key(
            exactly_once::BOUNDARY_KEY,
            ConfigType::String,
            Some("poll"),
            "When a task's transaction commits under exactly-once: poll (each poll's batch) or interval.",
        ));
        keys.push(key(
            exactly_once::BOUNDARY_INTERVAL_KEY,
            ConfigType::Long,
            Some(""),
            "With transaction.boundary=interval: milliseconds between commits (default offset.flush.interval.ms).",
        ));
    }
    if connector_type == Some(ConnectorType::Sink) {
        keys.push(key("topics", ConfigType::List, Some(""), "List of topics to consume, separated by commas"));
        keys.push(key(
            CONSUMER_OVERRIDE_ISOLATION_LEVEL,
            ConfigType::String,
            Some(""),
            "read_committed or read_uncommitted: this sink's consumer, over the worker's consumer.isolation.level.",
        ));
        keys.push(key(
            "topics.regex",
            ConfigType::String,
            Some(""),
            "Regular expression giving topics to consume (not supported yet).",
        ));
        keys.push(key(
            "errors.deadletterqueue.topic.name",
            ConfigType::String,
            Some(""),
            "The dead letter queue topic for records skipped under errors.tolerance=all.",
        ));
        keys.push(key(
            "errors.deadletterqueue.context.headers.enable",
            ConfigType::Boolean,
            Some("false"),
            "Add the error's context to dead-lettered records' headers.",
        ));
    }
    keys
}

fn topics_of(props: &Props) -> Vec<String> {
    props
        .get("topics")
        .map(|t| t.split(',').map(str::trim).filter(|t| !t.is_empty()).map(String::from).collect())
        .unwrap_or_default()
}

fn tasks_max(props: &Props) -> Result<usize> {
    let value = props.get("tasks.max").map_or("", String::as_str);
    match props.get("tasks.max").map(|v| v.trim().parse::<usize>()) {
        None => Ok(1),
        Some(Ok(n)) if (1..=TASKS_PER_CONNECTOR_MAX).contains(&n) => Ok(n),
        Some(Ok(n)) if n > TASKS_PER_CONNECTOR_MAX => Err(ConnectError::Config(format!(
            "Invalid value {value} for configuration tasks.max: Value must be no more than {TASKS_PER_CONNECTOR_MAX}"
        ))),
        Some(_) => Err(ConnectError::Config(format!(
            "Invalid value {value} for configuration tasks.max: Value must be at least 1"
        ))),
    }
}

/// The common keys' own rules, beyond presence and type.
fn check_common(report: &mut ConfigReport, props: &Props, connector_type: Option<ConnectorType>) {
    let value = report.value.as_deref().unwrap_or("").trim();
    match report.key.name {
        "name" if report.value.is_some() && value.is_empty() => {
            report.errors.push("Connector name must not be empty".into());
        }
        "connector.class" if report.value.is_some() && connector_type.is_none() => report.errors.push(format!(
            "Failed to find any class that implements Connector and which name matches {value}, available connectors are: {}",
            plugins::plugins().iter().map(|p| p.class).collect::<Vec<_>>().join(", ")
        )),
        "tasks.max" => {
            if let Err(error) = tasks_max(props) {
                report.errors.push(error.to_string());
            }
        }
        "key.converter" | "value.converter" if !value.is_empty() => {
            let settings = with_prefix(props, report.key.name);
            if let Err(error) = converter_for(value, &settings) {
                report.errors.push(error.to_string());
            }
        }
        CONSUMER_OVERRIDE_ISOLATION_LEVEL if !value.is_empty() => {
            if let Err(error) = crate::config::read_committed(CONSUMER_OVERRIDE_ISOLATION_LEVEL, value) {
                report.errors.push(error.to_string());
            }
        }
        "transforms" if !value.is_empty() => {
            if let Err(error) = TransformChain::from_config(props) {
                report.errors.push(error.to_string());
            }
        }
        exactly_once::SUPPORT_KEY | exactly_once::BOUNDARY_KEY | exactly_once::BOUNDARY_INTERVAL_KEY => {
            // The interval's default does not matter for validity.
            if let Err(error) = ConnectorSettings::from_config(props, 1) {
                report.errors.push(error.to_string());
            }
        }
        "errors.tolerance" => {
            if let Err(error) = crate::pipeline::ErrorPolicy::from_config(props) {
                report.errors.push(error.to_string());
            }
        }
        "topics" if topics_of(props).is_empty() && props.get("topics.regex").is_none_or(|r| r.trim().is_empty()) => {
            report.errors.push("Must configure one of topics or topics.regex".into());
        }
        "topics.regex" if !value.is_empty() => {
            report.errors.push("topics.regex is not supported by Spate Connect yet; list the topics in topics".into());
        }
        _ => {}
    }
}

/// Validates a connector config as `config/validate` does.
pub fn validate(props: &Props) -> ConfigInfos {
    let plugin = props.get("connector.class").and_then(|c| plugins::find(c));
    let connector_type = plugin.map(|p| p.connector_type);
    let mut reports = validate_against(&common_keys(connector_type), props);
    for report in &mut reports {
        if report.errors.is_empty() {
            check_common(report, props, connector_type);
        }
    }
    if let Some(plugin) = plugin {
        reports.extend(plugin.instantiate().as_connector().validate(props));
    }
    let mut groups: Vec<String> = Vec::new();
    let configs = reports
        .into_iter()
        .map(|report| {
            if !groups.iter().any(|g| g == report.key.group) {
                groups.push(report.key.group.to_string());
            }
            let order_in_group = groups.iter().position(|g| g == report.key.group).unwrap_or(0) + 1;
            ConfigInfo {
                definition: ConfigDefinition {
                    name: report.key.name.to_string(),
                    config_type: report.key.config_type.name(),
                    required: report.key.required(),
                    default_value: report.key.default.filter(|d| !d.is_empty()).map(str::to_string),
                    importance: report.key.importance.name(),
                    documentation: report.key.documentation.to_string(),
                    group: report.key.group.to_string(),
                    order_in_group,
                    width: "NONE",
                    display_name: report.key.name.to_string(),
                    dependents: Vec::new(),
                },
                value: ConfigValueInfo {
                    name: report.key.name.to_string(),
                    value: report.value,
                    recommended_values: Vec::new(),
                    errors: report.errors,
                    visible: true,
                },
            }
        })
        .collect::<Vec<_>>();
    let name = plugin
        .map(|p| p.class.rsplit('.').next().unwrap_or(p.class).to_string())
        .or_else(|| props.get("connector.class").cloned())
        .unwrap_or_default();
    ConfigInfos { name, error_count: configs.iter().map(|c| c.value.errors.len()).sum(), groups, configs }
}

/// The connector's errors as one message, as Kafka words it.
fn invalid_config_message(infos: &ConfigInfos) -> String {
    let errors: Vec<String> = infos
        .configs
        .iter()
        .flat_map(|c| c.value.errors.iter().map(move |e| format!("{}: {e}", c.definition.name)))
        .collect();
    format!(
        "Connector configuration is invalid and contains the following {} error(s):\n{}\nYou can also find the above list of errors at the endpoint `/connector-plugins/{{connectorType}}/config/validate`",
        errors.len(),
        errors.join("\n")
    )
}

struct StoreReader<'a> {
    store: &'a OffsetStore,
    connector: &'a str,
}

impl OffsetStorageReader for StoreReader<'_> {
    fn offset(&self, partition: &SourcePartition) -> Option<SourceOffset> {
        self.store.get(self.connector, partition)
    }
}

impl Worker {
    /// Connects to the cluster and opens the offsets file. Call inside the
    /// tokio runtime whose `handle` the task threads will use.
    pub async fn new(config: WorkerConfig, handle: Handle) -> Result<Worker> {
        let offsets = OffsetStore::open(&config.offset_storage_file)?;
        let client = Client::connect(ClientConfig {
            bootstrap: config.bootstrap_servers.clone(),
            client_id: "spate-connect".into(),
            sasl: config.sasl.clone(),
            tls: config.tls.clone(),
            ..ClientConfig::default()
        })
        .await?;
        let producer = Producer::new(client.clone(), ProducerConfig::default())?;
        if config.exactly_once_source_support {
            create_offsets_topic(&client, &config).await?;
        }
        let host = if config.rest_host.is_empty() { "0.0.0.0" } else { config.rest_host.as_str() };
        let worker_id = format!("{host}:{}", config.rest_port);
        Ok(Worker {
            shared: Arc::new(Shared {
                config,
                handle,
                client,
                producer,
                offsets,
                worker_id,
                connectors: Mutex::new(BTreeMap::new()),
                changes: Mutex::new(()),
                topics: Mutex::new(BTreeSet::new()),
                active_topics: Mutex::new(BTreeMap::new()),
                shutting_down: AtomicBool::new(false),
            }),
        })
    }

    pub fn config(&self) -> &WorkerConfig {
        &self.shared.config
    }

    /// Sets the id status reports name the worker by (its REST address).
    pub fn worker_id(&self) -> &str {
        &self.shared.worker_id
    }

    /// Creates a connector, or with `replace` replaces an existing one's
    /// config (restarting it). Returns its info and whether it was new.
    pub fn put_connector(&self, name: &str, mut config: Props, replace: bool) -> Result<(ConnectorInfo, bool)> {
        let _changes = lock(&self.shared.changes);
        if self.shared.shutting_down.load(Ordering::Acquire) {
            return Err(ConnectError::Task("the worker is shutting down".into()));
        }
        if name.trim().is_empty() {
            return Err(ConnectError::Config("Connector name must not be empty".into()));
        }
        match config.get("name") {
            Some(inner) if inner != name => {
                return Err(ConnectError::Config(format!(
                    "Connector name configuration ({inner}) doesn't match connector name in the URL ({name})"
                )));
            }
            Some(_) => {}
            None => {
                config.insert("name".into(), name.to_string());
            }
        }
        let infos = validate(&config);
        if infos.error_count > 0 {
            return Err(ConnectError::Config(invalid_config_message(&infos)));
        }
        self.check_exactly_once_support(&config)?;
        let (existed, count) = {
            let connectors = lock(&self.shared.connectors);
            (connectors.contains_key(name), connectors.len())
        };
        if existed && !replace {
            return Err(ConnectError::AlreadyExists(format!("Connector {name} already exists")));
        }
        if !existed && count >= CONNECTORS_PER_WORKER_MAX {
            return Err(ConnectError::Config(format!(
                "this worker runs {CONNECTORS_PER_WORKER_MAX} connectors already, its limit"
            )));
        }
        let paused = if existed { self.remove(name)?.paused } else { false };
        self.start_connector(name, config, paused)?;
        Ok((self.info(name)?, !existed))
    }

    /// `exactly.once.support=required` needs a worker with exactly-once
    /// sources enabled and a connector that can replay from its offsets
    /// (Kafka refuses such a connector the same way).
    fn check_exactly_once_support(&self, config: &Props) -> Result<()> {
        let class = config.get("connector.class").map_or("", String::as_str);
        if plugins::find(class).map(|p| p.connector_type) != Some(ConnectorType::Source) {
            return Ok(());
        }
        let settings = ConnectorSettings::from_config(config, self.shared.config.offset_flush_interval_ms)?;
        if settings.support != Support::Required {
            return Ok(());
        }
        if !self.shared.config.exactly_once_source_support {
            return Err(ConnectError::Config(format!(
                "{}=required: this worker does not have exactly-once source support enabled \
                 (exactly.once.source.support=enabled in the worker config)",
                exactly_once::SUPPORT_KEY
            )));
        }
        if !exactly_once::connector_supports(class, config) {
            return Err(ConnectError::Config(format!(
                "{}=required: {class} cannot provide exactly-once delivery with this configuration \
                 (it cannot replay what it read before a crash)",
                exactly_once::SUPPORT_KEY
            )));
        }
        Ok(())
    }

    fn start_connector(&self, name: &str, config: Props, paused: bool) -> Result<()> {
        let plugin = config
            .get("connector.class")
            .and_then(|c| plugins::find(c))
            .ok_or_else(|| ConnectError::Config("unknown connector.class".into()))?;
        let mut connector = plugin.instantiate();
        let tasks_max = tasks_max(&config)?;
        let (failure, task_configs) = match connector.as_connector_mut().start(&config) {
            Ok(()) => (None, connector.as_connector().task_configs(tasks_max)),
            Err(error) => (Some(error.to_string()), Vec::new()),
        };
        let mut entry = ConnectorEntry {
            config,
            plugin,
            connector,
            paused,
            stopped: false,
            failure,
            task_configs,
            tasks: Vec::new(),
        };
        for (id, task_config) in entry.task_configs.clone().into_iter().enumerate() {
            match self.spawn_task(name, id, &entry, task_config) {
                Ok(control) => entry.tasks.push(control),
                Err(error) => {
                    // No task may outlive its connector's entry.
                    for (started, task) in entry.tasks.iter().enumerate() {
                        task.stop_and_wait(name, started);
                    }
                    entry.connector.as_connector_mut().stop();
                    return Err(error);
                }
            }
        }
        tracing::info!(connector = name, tasks = entry.tasks.len(), "connector started");
        lock(&self.shared.connectors).insert(name.to_string(), entry);
        Ok(())
    }

    fn spawn_task(
        &self,
        name: &str,
        id: usize,
        entry: &ConnectorEntry,
        task_config: Props,
    ) -> Result<Arc<TaskControl>> {
        let control = TaskControl::new(entry.paused);
        let worker_config = &self.shared.config;
        let pipeline = Pipeline::new(
            &entry.config,
            &worker_config.converter_props,
            &worker_config.key_converter,
            &worker_config.value_converter,
        )?;
        let worker = self.clone();
        let connector = name.to_string();
        let thread_control = control.clone();
        let thread_name = format!("{name}-{id}");
        let spawned = match &entry.connector {
            AnyConnector::Source(source) => {
                let task = source.create_task();
                let exactly_once = if worker_config.exactly_once_source_support {
                    Some(ConnectorSettings::from_config(&entry.config, worker_config.offset_flush_interval_ms)?)
                } else {
                    None
                };
                std::thread::Builder::new().name(thread_name).spawn(move || {
                    let source_task =
                        SourceTaskRun { connector: &connector, id, props: &task_config, pipeline: &pipeline };
                    let result = match exactly_once {
                        Some(settings) => worker.run_source_exactly_once(&source_task, task, settings, &thread_control),
                        None => worker.run_source(&source_task, task, &thread_control),
                    };
                    finish_task(&connector, id, result, &thread_control);
                })
            }
            AnyConnector::Sink(sink) => {
                let task = sink.create_task();
                let topics = topics_of(&entry.config);
                std::thread::Builder::new().name(thread_name).spawn(move || {
                    let result =
                        worker.run_sink(&connector, id, task, &task_config, &topics, &pipeline, &thread_control);
                    finish_task(&connector, id, result, &thread_control);
                })
            }
        };
        spawned.map_err(|e| ConnectError::io("starting a task thread", e))?;
        Ok(control)
    }

    /// Stops a connector's tasks and removes it; returns its entry.
    fn remove(&self, name: &str) -> Result<ConnectorEntry> {
        let mut entry = lock(&self.shared.connectors)
            .remove(name)
            .ok_or_else(|| ConnectError::NotFound(format!("Connector {name} not found")))?;
        for (id, task) in entry.tasks.iter().enumerate() {
            task.stop_and_wait(name, id);
        }
        entry.connector.as_connector_mut().stop();
        Ok(entry)
    }

    pub fn delete(&self, name: &str) -> Result<()> {
        let _changes = lock(&self.shared.changes);
        self.remove(name)?;
        lock(&self.shared.active_topics).remove(name);
        tracing::info!(connector = name, "connector deleted");
        Ok(())
    }

    fn with_entry<T>(&self, name: &str, f: impl FnOnce(&mut ConnectorEntry) -> T) -> Result<T> {
        let mut connectors = lock(&self.shared.connectors);
        let entry =
            connectors.get_mut(name).ok_or_else(|| ConnectError::NotFound(format!("Connector {name} not found")))?;
        Ok(f(entry))
    }

    /// Pauses a connector's tasks; a stopped connector starts, paused.
    pub fn pause(&self, name: &str) -> Result<()> {
        self.set_paused(name, true)
    }

    /// Resumes a paused connector's tasks; a stopped connector starts.
    pub fn resume(&self, name: &str) -> Result<()> {
        self.set_paused(name, false)
    }

    /// KIP-875: stops a connector's tasks (sinks flush and commit) and
    /// keeps its config; its offsets may then be altered or reset.
    pub fn stop(&self, name: &str) -> Result<()> {
        let _changes = lock(&self.shared.changes);
        let mut entry = self.remove(name)?;
        entry.tasks.clear();
        entry.task_configs.clear();
        entry.stopped = true;
        entry.paused = false;
        lock(&self.shared.connectors).insert(name.to_string(), entry);
        tracing::info!(connector = name, "connector stopped");
        Ok(())
    }

    /// Fails unless the connector is stopped (KIP-875's rule for
    /// changing offsets).
    fn require_stopped(&self, name: &str) -> Result<ConnectorType> {
        let (stopped, connector_type) = self.with_entry(name, |entry| (entry.stopped, entry.plugin.connector_type))?;
        if !stopped {
            return Err(ConnectError::Config(
                "Connectors must be in the STOPPED state before their offsets can be modified. This can be done \
                 for the specified connector by issuing a 'PUT' request to the '/connectors/{name}/stop' endpoint"
                    .into(),
            ));
        }
        Ok(connector_type)
    }

    /// KIP-875: sets (or with a null offset removes) offsets of a stopped
    /// connector: a source's stored ones, a sink's committed ones.
    pub async fn alter_offsets(&self, name: &str, offsets: &[PartitionOffset]) -> Result<()> {
        let connector_type = self.require_stopped(name)?;
        let bad = |why: &str| ConnectError::Config(format!("invalid offsets: {why}"));
        match connector_type {
            ConnectorType::Source => {
                let mut changes = Vec::with_capacity(offsets.len());
                for entry in offsets {
                    let partition = entry.partition.as_object().ok_or_else(|| bad("a partition must be an object"))?;
                    match &entry.offset {
                        serde_json::Value::Null => changes.push((partition.clone(), None)),
                        serde_json::Value::Object(offset) => changes.push((partition.clone(), Some(offset.clone()))),
                        _ => return Err(bad("an offset must be an object or null")),
                    }
                }
                self.write_topic_offsets(name, &changes).await?;
                for (partition, offset) in changes {
                    match offset {
                        Some(offset) => self.shared.offsets.put(name, partition, offset),
                        None => self.shared.offsets.remove(name, &partition),
                    }
                }
                self.flush_offsets()
            }
            ConnectorType::Sink => {
                let mut committed = BTreeMap::new();
                for entry in offsets {
                    let topic = entry.partition.get("kafka_topic").and_then(serde_json::Value::as_str);
                    let partition = entry.partition.get("kafka_partition").and_then(serde_json::Value::as_i64);
                    let offset = entry.offset.get("kafka_offset").and_then(serde_json::Value::as_i64);
                    let (Some(topic), Some(partition), Some(offset)) = (topic, partition, offset) else {
                        return Err(bad(
                            "a sink's partition is {\"kafka_topic\",\"kafka_partition\"} and its offset {\"kafka_offset\"}",
                        ));
                    };
                    let partition = i32::try_from(partition).map_err(|_| bad("kafka_partition is out of range"))?;
                    if offset < 0 {
                        return Err(bad("kafka_offset must not be negative"));
                    }
                    committed.insert(TopicPartition::new(topic, partition), offset);
                }
                let admin = spate_client::GroupAdmin::new(self.shared.client.clone());
                admin.reset_offsets(&format!("connect-{name}"), &committed).await.map_err(ConnectError::from)
            }
        }
    }

    /// KIP-875: forgets every offset of a stopped connector, so it starts
    /// over (a source from the beginning of its data, a sink from its
    /// topics' earliest offsets).
    pub async fn reset_offsets(&self, name: &str) -> Result<()> {
        match self.require_stopped(name)? {
            ConnectorType::Source => {
                if self.shared.config.exactly_once_source_support {
                    let topic = &self.shared.config.offset_storage_topic;
                    let stored = exactly_once::read_offsets(&self.shared.client, topic, name).await?;
                    let tombstones: Vec<_> =
                        stored.offsets.into_values().map(|(partition, _)| (partition, None)).collect();
                    self.write_topic_offsets(name, &tombstones).await?;
                }
                self.shared.offsets.remove_connector(name);
                self.flush_offsets()
            }
            ConnectorType::Sink => {
                let admin = spate_client::GroupAdmin::new(self.shared.client.clone());
                match admin.delete_group(&format!("connect-{name}")).await {
                    Ok(()) | Err(ClientError::Server { code: ErrorCode::GroupIdNotFound, .. }) => Ok(()),
                    Err(error) => Err(error.into()),
                }
            }
        }
    }

    /// Under exactly-once, a source's offsets set through the REST API go
    /// to the offsets topic too (where its tasks read them), acknowledged
    /// before the call returns; a None offset is a tombstone.
    async fn write_topic_offsets(&self, name: &str, changes: &[(SourcePartition, Option<SourceOffset>)]) -> Result<()> {
        if !self.shared.config.exactly_once_source_support {
            return Ok(());
        }
        let topic = &self.shared.config.offset_storage_topic;
        let mut deliveries = Vec::with_capacity(changes.len());
        for (partition, offset) in changes {
            let record = match offset {
                Some(offset) => exactly_once::offset_record(topic, name, partition, offset),
                None => exactly_once::tombstone_record(topic, name, partition),
            };
            deliveries.push(self.shared.producer.send(record).await?);
        }
        for delivery in deliveries {
            delivery.await?;
        }
        Ok(())
    }

    fn set_paused(&self, name: &str, paused: bool) -> Result<()> {
        let _changes = lock(&self.shared.changes);
        let (stopped, config) = self.with_entry(name, |entry| (entry.stopped, entry.config.clone()))?;
        if stopped {
            self.remove(name)?;
            return self.start_connector(name, config, paused);
        }
        self.with_entry(name, |entry| {
            entry.paused = paused;
            for task in &entry.tasks {
                task.paused.store(paused, Ordering::Release);
            }
        })
    }

    /// Kafka's restart: the connector instance (with `only_failed`, only
    /// if it failed) and, with `include_tasks`, its tasks (with
    /// `only_failed`, the failed ones). A connector whose restart changes
    /// its task configs (one that had failed, say) restarts its tasks too,
    /// as Kafka reconfigures them.
    pub fn restart(&self, name: &str, include_tasks: bool, only_failed: bool) -> Result<()> {
        let _changes = lock(&self.shared.changes);
        let (config, paused, failed, states) = self.with_entry(name, |entry| {
            let states: Vec<State> = entry.tasks.iter().map(|t| t.status().0).collect();
            (entry.config.clone(), entry.paused, entry.failure.is_some(), states)
        })?;
        if !only_failed || failed {
            let tasks_max = tasks_max(&config)?;
            let reconfigured = self.with_entry(name, |entry| {
                let connector = entry.connector.as_connector_mut();
                connector.stop();
                match connector.start(&entry.config) {
                    Ok(()) => {
                        entry.failure = None;
                        connector.task_configs(tasks_max) != entry.task_configs
                    }
                    Err(error) => {
                        entry.failure = Some(error.to_string());
                        false
                    }
                }
            })?;
            if reconfigured {
                self.remove(name)?;
                return self.start_connector(name, config, paused);
            }
        }
        if include_tasks {
            for (id, state) in states.iter().enumerate() {
                if !only_failed || *state == State::Failed {
                    self.restart_task_locked(name, id)?;
                }
            }
        }
        Ok(())
    }

    /// Restarts one task.
    pub fn restart_task(&self, name: &str, id: usize) -> Result<()> {
        let _changes = lock(&self.shared.changes);
        self.restart_task_locked(name, id)
    }

    /// `restart_task`, under the `changes` lock its caller holds.
    fn restart_task_locked(&self, name: &str, id: usize) -> Result<()> {
        let (old, task_config, entry_config, paused) = self.with_entry(name, |entry| {
            (entry.tasks.get(id).cloned(), entry.task_configs.get(id).cloned(), entry.config.clone(), entry.paused)
        })?;
        let (Some(old), Some(task_config)) = (old, task_config) else {
            return Err(ConnectError::NotFound(format!("Task {name}-{id} not found")));
        };
        old.stop_and_wait(name, id);
        let mut connectors = lock(&self.shared.connectors);
        let entry =
            connectors.get_mut(name).ok_or_else(|| ConnectError::NotFound(format!("Connector {name} not found")))?;
        debug_assert_eq!(entry.config, entry_config);
        entry.paused = paused;
        let control = self.spawn_task(name, id, entry, task_config)?;
        if let Some(slot) = entry.tasks.get_mut(id) {
            *slot = control;
        }
        Ok(())
    }

    pub fn list(&self) -> Vec<String> {
        lock(&self.shared.connectors).keys().cloned().collect()
    }

    pub fn info(&self, name: &str) -> Result<ConnectorInfo> {
        self.with_entry(name, |entry| ConnectorInfo {
            name: name.to_string(),
            config: entry.config.clone(),
            tasks: (0..entry.task_configs.len()).map(|task| TaskId { connector: name.to_string(), task }).collect(),
            connector_type: entry.plugin.connector_type.name(),
        })
    }

    pub fn connector_config(&self, name: &str) -> Result<Props> {
        self.with_entry(name, |entry| entry.config.clone())
    }

    pub fn status(&self, name: &str) -> Result<ConnectorStatus> {
        let worker_id = self.shared.worker_id.clone();
        self.with_entry(name, |entry| {
            let connector_state = match (&entry.failure, entry.paused) {
                _ if entry.stopped => State::Stopped,
                (Some(_), _) => State::Failed,
                (None, true) => State::Paused,
                (None, false) => State::Running,
            };
            ConnectorStatus {
                name: name.to_string(),
                connector: StateInfo {
                    state: connector_state,
                    worker_id: worker_id.clone(),
                    trace: entry.failure.clone(),
                },
                tasks: entry
                    .tasks
                    .iter()
                    .enumerate()
                    .map(|(id, task)| {
                        let (state, trace) = task.status();
                        TaskState { id, state: StateInfo { state, worker_id: worker_id.clone(), trace } }
                    })
                    .collect(),
                connector_type: entry.plugin.connector_type.name(),
            }
        })
    }

    pub fn tasks(&self, name: &str) -> Result<Vec<TaskInfo>> {
        self.with_entry(name, |entry| {
            entry
                .task_configs
                .iter()
                .enumerate()
                .map(|(task, config)| TaskInfo {
                    id: TaskId { connector: name.to_string(), task },
                    config: config.clone(),
                })
                .collect()
        })
    }

    pub fn task_status(&self, name: &str, id: usize) -> Result<TaskState> {
        self.status(name)?
            .tasks
            .into_iter()
            .find(|t| t.id == id)
            .ok_or_else(|| ConnectError::NotFound(format!("Task {name}-{id} not found")))
    }

    fn note_active_topics<'a>(&self, connector: &str, topics: impl Iterator<Item = &'a str>) {
        let mut active = lock(&self.shared.active_topics);
        let set = active.entry(connector.to_string()).or_default();
        for topic in topics {
            if !set.contains(topic) {
                set.insert(topic.to_string());
            }
        }
    }

    /// KIP-558: the topics a connector has used.
    pub fn active_topics(&self, name: &str) -> Result<Vec<String>> {
        self.with_entry(name, |_| ())?;
        Ok(lock(&self.shared.active_topics).get(name).map(|t| t.iter().cloned().collect()).unwrap_or_default())
    }

    /// KIP-558: forgets a connector's active topics.
    pub fn reset_active_topics(&self, name: &str) -> Result<()> {
        self.with_entry(name, |_| ())?;
        lock(&self.shared.active_topics).remove(name);
        Ok(())
    }

    /// KIP-875: a connector's offsets. A source's come from the offsets
    /// file's store; a sink's are its group's committed offsets.
    pub async fn offsets(&self, name: &str) -> Result<ConnectorOffsets> {
        let connector_type = self.with_entry(name, |entry| entry.plugin.connector_type)?;
        let offsets = match connector_type {
            ConnectorType::Source => self
                .shared
                .offsets
                .connector_offsets(name)
                .into_iter()
                .map(|(partition, offset)| PartitionOffset {
                    partition: serde_json::Value::Object(partition),
                    offset: serde_json::Value::Object(offset),
                })
                .collect(),
            ConnectorType::Sink => {
                let admin = spate_client::GroupAdmin::new(self.shared.client.clone());
                let committed = admin.committed_offsets(&format!("connect-{name}"), None).await?;
                committed
                    .into_iter()
                    .map(|(tp, offset)| PartitionOffset {
                        partition: serde_json::json!({"kafka_topic": tp.topic, "kafka_partition": tp.partition}),
                        offset: serde_json::json!({"kafka_offset": offset}),
                    })
                    .collect()
            }
        };
        Ok(ConnectorOffsets { offsets })
    }

    pub fn plugins(&self) -> Vec<PluginInfo> {
        plugins::plugins()
            .iter()
            .map(|p| PluginInfo {
                class: p.class,
                connector_type: p.connector_type.name(),
                version: crate::VERSION.to_string(),
            })
            .collect()
    }

    /// Writes the offsets file if anything changed.
    pub fn flush_offsets(&self) -> Result<()> {
        self.shared.offsets.flush().map(|_| ())
    }

    /// Flushes offsets every `offset.flush.interval.ms` until shutdown.
    pub fn spawn_offset_flusher(&self) -> Result<std::thread::JoinHandle<()>> {
        let worker = self.clone();
        let interval = Duration::from_millis(self.shared.config.offset_flush_interval_ms);
        std::thread::Builder::new()
            .name("offset-flusher".into())
            .spawn(move || {
                let mut next = Instant::now() + interval;
                while !worker.shared.shutting_down.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(TASK_IDLE_WAIT_MS));
                    if Instant::now() >= next {
                        next = Instant::now() + interval;
                        if let Err(error) = worker.flush_offsets() {
                            tracing::error!(%error, "offset flush failed; trying again next interval");
                        }
                    }
                }
            })
            .map_err(|e| ConnectError::io("starting the offset flusher", e))
    }

    /// Stops every connector (sinks flush and commit), then writes the
    /// offsets file a last time.
    pub fn shutdown(&self) -> Result<()> {
        let _changes = lock(&self.shared.changes);
        self.shared.shutting_down.store(true, Ordering::Release);
        for name in self.list() {
            if let Err(error) = self.remove(&name) {
                tracing::warn!(connector = %name, %error, "stopping the connector");
            }
        }
        let flushed = self.flush_offsets();
        let closed = self.shared.handle.block_on(self.shared.producer.close());
        flushed?;
        closed.map_err(ConnectError::from)
    }

    /// Creates a topic the worker writes to or reads from if it does not
    /// exist, with Kafka's broker defaults (one partition, one replica), as
    /// a Kafka broker's auto.create.topics.enable does for Kafka Connect.
    fn ensure_topic(&self, topic: &str) -> Result<()> {
        if lock(&self.shared.topics).contains(topic) {
            return Ok(());
        }
        let admin = Admin::new(self.shared.client.clone());
        let mut attempt = 1;
        loop {
            match self.shared.handle.block_on(admin.create_topic(topic, 1, 1, &[])) {
                Ok(()) => tracing::info!(topic, "created topic"),
                Err(ClientError::Server { code: ErrorCode::TopicAlreadyExists, .. }) => {}
                // A broker restarting or a controller moving: the task
                // waits for it rather than failing.
                Err(error) if error.is_retriable() && attempt < TOPIC_CREATE_ATTEMPTS_MAX => {
                    tracing::warn!(topic, %error, attempt, "creating the topic failed; trying again");
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(TOPIC_CREATE_BACKOFF_MS));
                    continue;
                }
                Err(error) => return Err(error.into()),
            }
            break;
        }
        lock(&self.shared.topics).insert(topic.to_string());
        Ok(())
    }

    /// A record skipped under errors.tolerance=all: logged if asked, and
    /// sent to the dead-letter topic if there is one, acknowledged before
    /// the sink goes on (its offset may be committed after this).
    fn skip_sink_record(
        &self,
        connector: &str,
        task_id: usize,
        pipeline: &Pipeline,
        record: &spate_client::ConsumerRecord,
        failure: &Failure,
    ) -> Result<()> {
        if pipeline.errors.log {
            tracing::warn!(
                connector, topic = %record.topic, partition = record.partition, offset = record.offset,
                stage = failure.stage.name(), error = %failure.error, "skipped a record"
            );
        }
        if let Some(topic) = &pipeline.errors.dead_letter_topic {
            self.ensure_topic(topic)?;
            let dead = pipeline.dead_letter(topic, record, failure, connector, task_id);
            let handle = &self.shared.handle;
            let delivery = handle.block_on(self.shared.producer.send(dead))?;
            handle.block_on(delivery)?;
        }
        Ok(())
    }

    fn run_source(&self, run: &SourceTaskRun<'_>, mut task: Box<dyn SourceTask>, control: &TaskControl) -> Result<()> {
        task.start(run.props, &StoreReader { store: &self.shared.offsets, connector: run.connector })?;
        control.set(State::Running, None);
        let result = self.source_loop(run.connector, task.as_mut(), run.pipeline, control);
        task.stop();
        result
    }

    /// A source task under exactly-once (KIP-618): its own transactional
    /// producer, whose transactions carry the task's records and the
    /// offsets past them to the offsets topic.
    fn run_source_exactly_once(
        &self,
        run: &SourceTaskRun<'_>,
        mut task: Box<dyn SourceTask>,
        settings: ConnectorSettings,
        control: &TaskControl,
    ) -> Result<()> {
        let handle = &self.shared.handle;
        // The producer spawns its sender task on the worker's runtime.
        let producer = {
            let _runtime = handle.enter();
            Producer::new(
                self.shared.client.clone(),
                ProducerConfig {
                    transactional_id: Some(exactly_once::transactional_id(run.connector, run.id)),
                    transaction_timeout_ms: exactly_once::transaction_timeout_ms(settings.boundary),
                    ..ProducerConfig::default()
                },
            )?
        };
        let result = (|| {
            // Fencing first: the transaction a killed predecessor left open
            // is aborted before this returns, so the offsets read next are
            // the last it committed.
            handle.block_on(producer.init_transactions())?;
            self.load_topic_offsets(run.connector)?;
            task.start(run.props, &StoreReader { store: &self.shared.offsets, connector: run.connector })?;
            control.set(State::Running, None);
            let mut transaction = OpenTransaction::default();
            let result =
                self.transactional_loop(run, task.as_mut(), &producer, settings.boundary, control, &mut transaction);
            if result.is_err() && transaction.open {
                // Nothing of it may count: its records are never read
                // committed and the offsets stay where the last commit
                // left them, where a restarted task resumes.
                if let Err(error) = handle.block_on(producer.abort_transaction()) {
                    tracing::warn!(connector = run.connector, task = run.id, %error, "aborting the transaction");
                }
            }
            task.stop();
            result
        })();
        if let Err(error) = handle.block_on(producer.close()) {
            tracing::warn!(connector = run.connector, task = run.id, %error, "closing the transactional producer");
        }
        result
    }

    /// The offsets topic's committed offsets of `connector` replace the
    /// file's; a partition the topic does not have keeps the file's (a
    /// connector that ran at-least-once before resumes where it was).
    fn load_topic_offsets(&self, connector: &str) -> Result<()> {
        let topic = &self.shared.config.offset_storage_topic;
        let replay = self.shared.handle.block_on(exactly_once::read_offsets(&self.shared.client, topic, connector))?;
        for (partition, offset) in replay.offsets.into_values() {
            match offset {
                Some(offset) => self.shared.offsets.put(connector, partition, offset),
                None => self.shared.offsets.remove(connector, &partition),
            }
        }
        Ok(())
    }

    fn transactional_loop(
        &self,
        run: &SourceTaskRun<'_>,
        task: &mut dyn SourceTask,
        producer: &Producer,
        boundary: Boundary,
        control: &TaskControl,
        transaction: &mut OpenTransaction,
    ) -> Result<()> {
        let handle = &self.shared.handle;
        loop {
            // A pause or a stop ends the open transaction first.
            if transaction.open && (control.paused.load(Ordering::Acquire) || control.stopping()) {
                self.commit_transaction(run.connector, task, producer, transaction)?;
            }
            if !control.wait_while_paused() {
                return Ok(());
            }
            let records = task.poll()?;
            if !records.is_empty() {
                if !transaction.open {
                    handle.block_on(producer.begin_transaction())?;
                    transaction.open = true;
                    transaction.began = Instant::now();
                }
                // Their outcomes are the commit's: it refuses if any failed.
                for pending in self.send_batch(run.connector, records, run.pipeline, producer)? {
                    if let (Some(partition), Some(offset)) = (pending.partition, pending.offset) {
                        transaction
                            .offsets
                            .insert(serde_json::Value::Object(partition.clone()).to_string(), (partition, offset));
                    }
                }
            }
            let due = match boundary {
                Boundary::Poll => transaction.open,
                Boundary::Interval { interval_ms } => {
                    transaction.open && transaction.began.elapsed() >= Duration::from_millis(interval_ms)
                }
            };
            if due {
                self.commit_transaction(run.connector, task, producer, transaction)?;
            }
        }
    }

    /// Adds the offsets past the transaction's records to it and commits
    /// both; only then are they the task's stored offsets.
    fn commit_transaction(
        &self,
        connector: &str,
        task: &mut dyn SourceTask,
        producer: &Producer,
        transaction: &mut OpenTransaction,
    ) -> Result<()> {
        let topic = &self.shared.config.offset_storage_topic;
        self.shared.handle.block_on(async {
            for (partition, offset) in transaction.offsets.values() {
                let _delivery = producer.send(exactly_once::offset_record(topic, connector, partition, offset)).await?;
            }
            producer.commit_transaction().await
        })?;
        transaction.open = false;
        for (_, (partition, offset)) in std::mem::take(&mut transaction.offsets) {
            self.shared.offsets.put(connector, partition, offset);
        }
        task.poll_acknowledged();
        task.commit()
    }

    /// Polls, converts and sends; one batch's acknowledgements are awaited
    /// while the next is polled and sent, so the file is read while the
    /// cluster acknowledges (one round trip per batch would bound the
    /// throughput otherwise).
    fn source_loop(
        &self,
        connector: &str,
        task: &mut dyn SourceTask,
        pipeline: &Pipeline,
        control: &TaskControl,
    ) -> Result<()> {
        // Polls sent and not yet acknowledged, oldest first (at most
        // SOURCE_POLLS_IN_FLIGHT_MAX): each is completed, in order, when
        // the window is full, when a poll brings nothing, on pause and at
        // the end.
        let mut in_flight: VecDeque<Vec<Pending>> = VecDeque::new();
        let complete_oldest = |in_flight: &mut VecDeque<Vec<Pending>>, task: &mut dyn SourceTask| -> Result<bool> {
            let Some(batch) = in_flight.pop_front() else { return Ok(false) };
            self.complete(connector, batch)?;
            task.poll_acknowledged();
            task.commit()?;
            Ok(true)
        };
        loop {
            if control.paused.load(Ordering::Acquire) {
                while complete_oldest(&mut in_flight, task)? {}
            }
            if !control.wait_while_paused() {
                break;
            }
            let records = task.poll()?;
            if records.is_empty() {
                // Nothing new: what is in flight is completed now, not later.
                while complete_oldest(&mut in_flight, task)? {}
                continue;
            }
            in_flight.push_back(self.send_batch(connector, records, pipeline, &self.shared.producer)?);
            while in_flight.len() > SOURCE_POLLS_IN_FLIGHT_MAX {
                complete_oldest(&mut in_flight, task)?;
            }
        }
        while complete_oldest(&mut in_flight, task)? {}
        Ok(())
    }

    /// Transforms, converts and sends a poll's records (one trip into the
    /// runtime for the whole batch).
    fn send_batch(
        &self,
        connector: &str,
        records: Vec<SourceRecord>,
        pipeline: &Pipeline,
        producer: &Producer,
    ) -> Result<Vec<Pending>> {
        let mut prepared = Vec::with_capacity(records.len());
        for source in records {
            // A record dropped by a transform or skipped under
            // errors.tolerance=all still moves its partition's offset.
            let produced = match pipeline.source_record(source.record) {
                Ok(produced) => produced,
                Err(failure) if pipeline.tolerates(&failure) => {
                    if pipeline.errors.log {
                        tracing::warn!(connector, stage = failure.stage.name(), error = %failure.error, "skipped a record");
                    }
                    None
                }
                Err(failure) => return Err(failure.error),
            };
            if let Some(produced) = &produced {
                self.ensure_topic(&produced.topic)?;
            }
            prepared.push((produced, source.source_partition, source.source_offset));
        }
        self.note_active_topics(
            connector,
            prepared.iter().filter_map(|(p, _, _)| p.as_ref().map(|p| p.topic.as_str())),
        );
        self.shared.handle.block_on(async {
            let mut batch = Vec::with_capacity(prepared.len());
            for (produced, partition, offset) in prepared {
                let delivery = match produced {
                    Some(produced) => Some(producer.send(produced).await?),
                    None => None,
                };
                batch.push(Pending { delivery, partition, offset });
            }
            Ok(batch)
        })
    }

    /// Waits for a batch's acknowledgements, then stores its offsets: they
    /// move only over acknowledged records, in poll order.
    fn complete(&self, connector: &str, batch: Vec<Pending>) -> Result<()> {
        let mut offsets = Vec::with_capacity(batch.len());
        self.shared.handle.block_on(async {
            for pending in batch {
                if let Some(delivery) = pending.delivery {
                    delivery.await?;
                }
                offsets.push((pending.partition, pending.offset));
            }
            Ok::<(), ConnectError>(())
        })?;
        for (partition, offset) in last_offsets(offsets) {
            self.shared.offsets.put(connector, partition, offset);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)] // the task's identity, its parts and its control
    fn run_sink(
        &self,
        connector: &str,
        task_id: usize,
        mut task: Box<dyn SinkTask>,
        props: &Props,
        topics: &[String],
        pipeline: &Pipeline,
        control: &TaskControl,
    ) -> Result<()> {
        let handle = &self.shared.handle;
        task.start(props)?;
        for topic in topics {
            self.ensure_topic(topic)?;
        }
        // The worker's consumer.isolation.level, or the connector's own
        // (KIP-458's consumer.override.*): a sink behind an exactly-once
        // source reads read_committed to skip aborted transactions.
        let read_committed = match props.get(CONSUMER_OVERRIDE_ISOLATION_LEVEL) {
            Some(value) => crate::config::read_committed(CONSUMER_OVERRIDE_ISOLATION_LEVEL, value)?,
            None => self.shared.config.consumer_read_committed,
        };
        let isolation_level =
            if read_committed { IsolationLevel::ReadCommitted } else { IsolationLevel::ReadUncommitted };
        // Kafka's naming: the group of connector X is connect-X.
        let group = GroupConfig {
            group_id: format!("connect-{connector}"),
            auto_commit: false,
            auto_offset_reset: AutoOffsetReset::Earliest,
            session_timeout_ms: self.shared.config.consumer_session_timeout_ms,
            consumer: ConsumerConfig { isolation_level, ..ConsumerConfig::default() },
            ..GroupConfig::default()
        };
        let mut consumer = GroupConsumer::new(self.shared.client.clone(), group)?;
        let revoked = Arc::new(Mutex::new(Vec::new()));
        let revoked_by_group = revoked.clone();
        consumer.set_on_revoke(Box::new(move |partitions| lock(&revoked_by_group).extend_from_slice(partitions)));
        handle.block_on(consumer.subscribe(topics))?;
        self.note_active_topics(connector, topics.iter().map(String::as_str));
        control.set(State::Running, None);
        let mut pending = BTreeMap::new();
        let result = self.sink_loop(
            (connector, task_id),
            task.as_mut(),
            &mut consumer,
            pipeline,
            control,
            &revoked,
            &mut pending,
        );
        let finished = match result {
            Ok(()) => {
                // A clean stop: flush what was put, commit it, leave.
                let report = |errant| self.report_errant(connector, task_id, pipeline, errant);
                let committed = commit(task.as_mut(), &mut consumer, &mut pending, handle, &report);
                if let Err(error) = handle.block_on(consumer.close()) {
                    tracing::warn!(connector, %error, "leaving the group");
                }
                committed
            }
            Err(error) => {
                // Nothing since the last commit is vouched for: leave
                // without committing, so it is delivered again.
                if let Err(leave_error) = handle.block_on(consumer.leave()) {
                    tracing::warn!(connector, error = %leave_error, "leaving the group");
                }
                Err(error)
            }
        };
        task.stop();
        finished
    }

    #[allow(clippy::too_many_arguments)] // the task's identity, its parts, its control and its state
    fn sink_loop(
        &self,
        (connector, task_id): (&str, usize),
        task: &mut dyn SinkTask,
        consumer: &mut GroupConsumer,
        pipeline: &Pipeline,
        control: &TaskControl,
        revoked: &Mutex<Vec<TopicPartition>>,
        pending: &mut BTreeMap<TopicPartition, i64>,
    ) -> Result<()> {
        let handle = &self.shared.handle;
        let commit_interval = Duration::from_millis(self.shared.config.offset_flush_interval_ms);
        let mut last_commit = Instant::now();
        while control.wait_while_paused() {
            let polled = handle.block_on(consumer.poll(Duration::from_millis(SINK_POLL_MS)));
            for partition in lock(revoked).drain(..) {
                // No longer ours: its next owner starts from the last commit.
                pending.remove(&partition);
            }
            let records = match polled {
                Ok(records) => records,
                Err(error) if error.is_retriable() => {
                    tracing::warn!(%error, "sink poll failed; trying again");
                    std::thread::sleep(Duration::from_millis(TASK_IDLE_WAIT_MS));
                    continue;
                }
                Err(error) => return Err(error.into()),
            };
            if !records.is_empty() {
                let mut sink_records = Vec::with_capacity(records.len());
                for record in &records {
                    match pipeline.sink_record(record) {
                        Ok(Some(sink_record)) => sink_records.push(sink_record),
                        Ok(None) => {}
                        Err(failure) if pipeline.tolerates(&failure) => {
                            self.skip_sink_record(connector, task_id, pipeline, record, &failure)?;
                        }
                        Err(failure) => return Err(failure.error),
                    }
                }
                task.put(sink_records)?;
                self.report_errant(connector, task_id, pipeline, task.take_errant())?;
                // Per partition the offset past its last record (a poll's
                // records come in runs of one partition, in order).
                let mut records = records.iter().peekable();
                while let Some(record) = records.next() {
                    let same = |next: &&spate_client::ConsumerRecord| {
                        next.partition == record.partition && next.topic == record.topic
                    };
                    if records.peek().is_some_and(same) {
                        continue;
                    }
                    pending.insert(TopicPartition::new(record.topic.clone(), record.partition), record.offset + 1);
                }
            }
            if !pending.is_empty() && last_commit.elapsed() >= commit_interval {
                last_commit = Instant::now();
                let report = |errant| self.report_errant(connector, task_id, pipeline, errant);
                commit(task, consumer, pending, handle, &report)?;
            }
        }
        Ok(())
    }

    /// Records a sink task skipped (`SinkTask::take_errant`), handled as
    /// the pipeline's own failures: logged and sent to the dead-letter
    /// topic, acknowledged before their offsets can be committed. Their
    /// key and value are converted back with the connector's converters
    /// (the task holds them as Connect data). Only a task under
    /// errors.tolerance=all may skip; from any other, the first fails it.
    fn report_errant(
        &self,
        connector: &str,
        task_id: usize,
        pipeline: &Pipeline,
        errant: Vec<ErrantRecord>,
    ) -> Result<()> {
        for ErrantRecord { record, error } in errant {
            let failure = Failure { stage: Stage::TaskPut, error };
            if !pipeline.tolerates(&failure) {
                return Err(failure.error);
            }
            let topic = record.record.topic.clone();
            let consumed = spate_client::ConsumerRecord {
                key: pipeline.key.from_connect_data(&topic, &record.record.key).unwrap_or(None),
                value: pipeline.value.from_connect_data(&topic, &record.record.value).unwrap_or(None),
                partition: record.record.kafka_partition.unwrap_or(0),
                offset: record.kafka_offset,
                timestamp_ms: record.record.timestamp_ms.unwrap_or(0),
                headers: record.record.headers.into_iter().map(|h| (h.key, h.value)).collect(),
                topic,
            };
            self.skip_sink_record(connector, task_id, pipeline, &consumed, &failure)?;
        }
        Ok(())
    }
}

/// Flushes the sink up to `pending`, hands on the records it skipped,
/// then commits those offsets. A failed
/// commit is not fatal: the offsets stay pending for the next one, and at
/// worst records are written again (at-least-once).
fn commit(
    task: &mut dyn SinkTask,
    consumer: &mut GroupConsumer,
    pending: &mut BTreeMap<TopicPartition, i64>,
    handle: &Handle,
    report_errant: &dyn Fn(Vec<ErrantRecord>) -> Result<()>,
) -> Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    task.flush(pending)?;
    report_errant(task.take_errant())?;
    match handle.block_on(consumer.commit(pending.clone())) {
        Ok(()) => pending.clear(),
        Err(error) => tracing::warn!(%error, "committing sink offsets failed; they stay pending"),
    }
    Ok(())
}

/// A source task's identity and parts, as its thread runs it.
struct SourceTaskRun<'a> {
    connector: &'a str,
    id: usize,
    props: &'a Props,
    pipeline: &'a Pipeline,
}

/// An exactly-once source task's transaction: whether one is open, since
/// when, and the offsets (by the partition's canonical JSON) its records
/// reached so far.
struct OpenTransaction {
    open: bool,
    began: Instant,
    offsets: BTreeMap<String, (SourcePartition, SourceOffset)>,
}

impl Default for OpenTransaction {
    fn default() -> Self {
        OpenTransaction { open: false, began: Instant::now(), offsets: BTreeMap::new() }
    }
}

/// Creates the offsets topic if it is missing: compacted, as Kafka's
/// `connect-offsets` (only the last offset of each key matters), one
/// partition (a standalone worker's tasks all write it).
async fn create_offsets_topic(client: &Client, config: &WorkerConfig) -> Result<()> {
    let admin = Admin::new(client.clone());
    let configs = [("cleanup.policy".to_string(), "compact".to_string())];
    let topic = &config.offset_storage_topic;
    match admin.create_topic(topic, 1, config.offset_storage_replication_factor, &configs).await {
        Ok(()) => {
            tracing::info!(topic = %topic, "created the offsets topic");
            Ok(())
        }
        Err(ClientError::Server { code: ErrorCode::TopicAlreadyExists, .. }) => Ok(()),
        Err(error) => Err(ConnectError::Config(format!("creating the offsets topic {topic}: {error}"))),
    }
}

/// A sent source record waiting for its acknowledgement (None: dropped
/// or skipped, nothing to wait for), with the offset it completes.
struct Pending {
    delivery: Option<DeliveryFuture>,
    partition: Option<SourcePartition>,
    offset: Option<SourceOffset>,
}

/// The offsets of an acknowledged batch to store: per source partition
/// the last one, which covers the ones before it (a poll's records come
/// in their partition's order). Storing each record's offset cost a key
/// built and a map entry replaced per record, a tenth of the file
/// pipeline's CPU; a run of one partition now costs one comparison each.
fn last_offsets(
    offsets: impl IntoIterator<Item = (Option<SourcePartition>, Option<SourceOffset>)>,
) -> Vec<(SourcePartition, SourceOffset)> {
    let mut last: Vec<(SourcePartition, SourceOffset)> = Vec::new();
    for (partition, offset) in offsets {
        let (Some(partition), Some(offset)) = (partition, offset) else { continue };
        match last.iter_mut().rev().find(|(seen, _)| *seen == partition) {
            Some((_, stored)) => *stored = offset,
            None => last.push((partition, offset)),
        }
    }
    last
}

fn finish_task(connector: &str, id: usize, result: Result<()>, control: &TaskControl) {
    match result {
        Ok(()) => control.set(State::Unassigned, None),
        Err(error) => {
            tracing::error!(connector, task = id, %error, "task failed");
            control.set(State::Failed, Some(error.to_string()));
        }
    }
    control.finish();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::props::parse;

    /// Offsets move per source partition to the last acknowledged
    /// record's; records without a partition or offset move nothing.
    #[test]
    fn an_acknowledged_batch_stores_each_partitions_last_offset() {
        let map = |key: &str, value: serde_json::Value| serde_json::Map::from_iter([(key.to_string(), value)]);
        let partition = |file: &str| map("filename", serde_json::json!(file));
        let offset = |position: u64| map("position", serde_json::json!(position));
        let batch = vec![
            (Some(partition("a")), Some(offset(1))),
            (Some(partition("a")), Some(offset(2))),
            (Some(partition("b")), Some(offset(5))),
            (None, None),
            (Some(partition("a")), Some(offset(3))),
            (Some(partition("b")), None),
        ];
        let stored = last_offsets(batch);
        let expected = vec![(partition("a"), offset(3)), (partition("b"), offset(5))];
        assert_eq!(stored, expected);
    }

    fn errors_of(infos: &ConfigInfos, key: &str) -> Vec<String> {
        infos.configs.iter().find(|c| c.definition.name == key).map(|c| c.value.errors.clone()).unwrap_or_default()
    }

    #[test]
    fn validation_reports_each_bad_key_as_kafka_does() {
        let good = validate(
            &parse("name=s\nconnector.class=FileStreamSink\ntopics=a\ntransforms=r\ntransforms.r.type=RegexRouter\ntransforms.r.regex=a\ntransforms.r.replacement=b\n")
                .expect("props"),
        );
        assert_eq!(good.error_count, 0, "{good:?}");
        assert_eq!(good.name, "FileStreamSinkConnector");
        let bad = validate(
            &parse("name=s\nconnector.class=FileStreamSink\ntasks.max=0\ntransforms=x\nerrors.tolerance=some\nvalue.converter=Avro\n")
                .expect("props"),
        );
        for key in ["tasks.max", "topics", "transforms", "errors.tolerance", "value.converter"] {
            assert_eq!(errors_of(&bad, key).len(), 1, "{key}: {bad:?}");
        }
        assert_eq!(bad.error_count, 5);
        let huge =
            validate(&parse("name=s\nconnector.class=FileStreamSink\ntopics=a\ntasks.max=100000\n").expect("props"));
        assert!(errors_of(&huge, "tasks.max")[0].contains("no more than"), "{huge:?}");
        let unknown = validate(&parse("name=s\nconnector.class=com.example.Jdbc\n").expect("props"));
        assert!(errors_of(&unknown, "connector.class")[0].contains("com.example.Jdbc"));
        let message = invalid_config_message(&bad);
        assert!(message.starts_with("Connector configuration is invalid and contains the following 5 error(s):"));
    }
}
