//! `KafkaStreams`: runs a topology against a Spate cluster through
//! spate-client, at least once.
//!
//! One tokio task polls a `GroupConsumer` (group id = application.id)
//! subscribed to every source topic, repartition topics included. A record
//! of partition p of a topic goes to the task (sub-topology, p); tasks are
//! made when their partitions are assigned, and their logged stores are
//! restored from their changelogs first. The commit cycle keeps the
//! at-least-once promise: process a poll's records, send what they wrote
//! (outputs, repartition records, changelog changes), and every
//! `commit.interval.ms` flush the producer, wait for every delivery, and
//! only then commit the offsets after the records processed. A crash
//! loses no output: what was not committed is read and processed again.
//!
//! Under `processing.guarantee=exactly_once_v2` (KIP-447) the producer is
//! transactional: everything sent between two commits (outputs,
//! repartition records, changelog writes) and the input offsets commit in
//! one transaction, with the member's id and epoch, so an instance fenced
//! from the group cannot commit. Inputs and changelogs are read
//! read_committed. If a commit fails or partitions are taken away, the
//! transaction is aborted, every task is dropped, and the inputs are read
//! again from the committed offsets into stores rebuilt from their
//! changelogs (checkpoints are written only at a clean close, so a crash
//! always rebuilds).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use spate_client::{
    Admin, AutoOffsetReset, Client, ClientConfig, ClientError, Consumer, ConsumerConfig, DeliveryFuture, ErrorCode,
    GroupAdmin, GroupAssignor, GroupConfig, GroupConsumer, IsolationLevel, Producer, ProducerConfig, ProducerRecord,
    SeekTo, TopicPartition,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::cache::ChangelogCache;
use crate::checkpoint::{CheckpointOffsets, delete_checkpoint, read_checkpoint};
use crate::config::{
    DeserializationExceptionHandler, ProcessingGuarantee, StreamsConfig, TRANSACTION_TIMEOUT_MS_DEFAULT,
};
use crate::error::StreamsError;
use crate::limits::{DELIVERIES_PENDING_MAX, RESTORE_EMPTY_POLLS_MAX, RESTORE_FLUSH_BYTES, RESTORE_POLL_MS};
use crate::processor::{GlobalStores, OutRecord};
use crate::store::{KeyValueStore, changelog_topic};
use crate::task::{Task, dead_letter_record, task_dir};
use crate::topology::Topology;

/// Where an application is in its life, as Kafka's `KafkaStreams.State`
/// (fewer states: there is no rebalancing state of its own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Created,
    Running,
    /// Closed, or stopped by an error (`close` returns it).
    NotRunning,
}

/// A running streams application.
#[derive(Debug)]
pub struct KafkaStreams {
    topology: Arc<Topology>,
    config: StreamsConfig,
    shutdown: Option<watch::Sender<bool>>,
    worker: Option<JoinHandle<Result<(), StreamsError>>>,
    queries: Option<mpsc::Sender<Query>>,
}

/// A question for the worker about its stores, answered between polls
/// (never by cancelling a poll: records it fetched would be skipped).
type Query = Box<dyn FnOnce(&Runner) + Send>;

/// How many queries may wait for the worker; more wait to be sent.
const QUERIES_PENDING_MAX: usize = 64;

impl KafkaStreams {
    pub fn new(topology: Topology, config: StreamsConfig) -> Result<Self, StreamsError> {
        config.validate()?;
        Ok(KafkaStreams { topology: Arc::new(topology), config, shutdown: None, worker: None, queries: None })
    }

    /// Connects, creates the internal topics, joins the group and starts
    /// processing in a tokio task. Returns once the topics exist.
    pub async fn start(&mut self) -> Result<(), StreamsError> {
        if self.worker.is_some() {
            return Err(StreamsError::NotRunning("start was already called".into()));
        }
        let client = Client::connect(ClientConfig {
            bootstrap: self.config.bootstrap_servers.clone(),
            client_id: self.config.application_id.clone(),
            sasl: self.config.security.sasl.clone(),
            tls: self.config.security.tls.clone(),
            ..ClientConfig::default()
        })
        .await?;
        create_internal_topics(&client, &self.topology, &self.config).await?;
        let (sender, receiver) = watch::channel(false);
        let (queries, query_receiver) = mpsc::channel(QUERIES_PENDING_MAX);
        let runner = Runner::new(client, Arc::clone(&self.topology), self.config.clone())?;
        self.shutdown = Some(sender);
        self.queries = Some(queries);
        self.worker = Some(tokio::spawn(runner.run(receiver, query_receiver)));
        Ok(())
    }

    /// Interactive query: the value of `key` in a key-value store of this
    /// instance (a task's store of a partition it owns, or a global
    /// table's). `None` if no local task holds the key. Answered between
    /// two polls, so within about `poll.ms` of a busy instance.
    pub async fn query_key_value<K, V>(&self, store: &str, key: K) -> Result<Option<V>, StreamsError>
    where
        K: Send + 'static,
        V: Send + 'static,
    {
        let store = store.to_string();
        self.ask(move |runner: &Runner| runner.local_get::<K, V>(&store, &key)).await
    }

    /// Interactive query: every entry of a key-value store across this
    /// instance's tasks (or of a global table), in key-byte order per task.
    pub async fn query_key_value_all<K, V>(&self, store: &str) -> Result<Vec<(K, V)>, StreamsError>
    where
        K: Send + 'static,
        V: Send + 'static,
    {
        let store = store.to_string();
        self.ask(move |runner: &Runner| runner.local_all::<K, V>(&store)).await
    }

    async fn ask<R: Send + 'static>(
        &self,
        question: impl FnOnce(&Runner) -> Result<R, StreamsError> + Send + 'static,
    ) -> Result<R, StreamsError> {
        let queries = self.queries.as_ref().ok_or_else(|| StreamsError::NotRunning("not started".into()))?;
        let (answer, answered) = oneshot::channel();
        let query: Query = Box::new(move |runner| {
            let _ = answer.send(question(runner));
        });
        queries.send(query).await.map_err(|_| StreamsError::NotRunning("the application stopped".into()))?;
        answered.await.map_err(|_| StreamsError::NotRunning("the application stopped".into()))?
    }

    pub fn state(&self) -> State {
        match &self.worker {
            None => State::Created,
            Some(worker) if worker.is_finished() => State::NotRunning,
            Some(_) => State::Running,
        }
    }

    /// Stops processing: a last flush and commit, then the member leaves
    /// the group. Returns the error that stopped the application, if one did.
    pub async fn close(mut self) -> Result<(), StreamsError> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(true);
        }
        match self.worker.take() {
            Some(worker) => worker.await.map_err(|error| StreamsError::NotRunning(format!("worker task: {error}")))?,
            None => Ok(()),
        }
    }

    /// Waits until the application stops by itself (an error).
    ///
    /// Cancel-safe: dropped before the application stops (in a `select!`
    /// with a Ctrl-C, say), it leaves the worker for `close` to stop.
    pub async fn wait(&mut self) -> Result<(), StreamsError> {
        let Some(worker) = self.worker.as_mut() else {
            return Ok(());
        };
        let result = worker.await;
        self.worker = None;
        result.map_err(|error| StreamsError::NotRunning(format!("worker task: {error}")))?
    }
}

impl Drop for KafkaStreams {
    /// Dropped without `close`, the application stops at once, as a
    /// crashed process would: nothing more is committed, and the member
    /// leaves when its session times out.
    fn drop(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.abort();
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
}

async fn create_topic_if_absent(
    admin: &Admin,
    name: &str,
    partitions: i32,
    replication: i16,
    configs: &[(String, String)],
) -> Result<(), StreamsError> {
    match admin.create_topic(name, partitions, replication, configs).await {
        Ok(()) => Ok(()),
        Err(ClientError::Server { code: ErrorCode::TopicAlreadyExists, .. }) => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// Repartition topics get as many partitions as the largest user source
/// topic; a changelog as many as its sub-topology's sources, so that task
/// p logs to partition p.
async fn create_internal_topics(
    client: &Client,
    topology: &Topology,
    config: &StreamsConfig,
) -> Result<(), StreamsError> {
    let admin = Admin::new(client.clone());
    let sources = topology.source_topics();
    let user_topics: Vec<String> =
        sources.iter().filter(|(topic, _)| !topic.internal).map(|(topic, _)| topic.name.clone()).collect();
    let described = admin.describe_topics(Some(&user_topics)).await?;
    let mut partitions_of: BTreeMap<String, i32> = BTreeMap::new();
    for topic in &described {
        if topic.error.is_some() || topic.partitions.is_empty() {
            return Err(StreamsError::Config(format!(
                "source topic {:?} does not exist (create it first)",
                topic.name
            )));
        }
        partitions_of.insert(topic.name.clone(), i32::try_from(topic.partitions.len()).unwrap_or(i32::MAX));
    }
    for topic in &user_topics {
        if !partitions_of.contains_key(topic) {
            return Err(StreamsError::Config(format!("source topic {topic:?} does not exist (create it first)")));
        }
    }
    for topic in internal_topic_plan(topology, &config.application_id, &partitions_of)? {
        let configs = topic.configs();
        create_topic_if_absent(&admin, &topic.name, topic.partitions, config.replication_factor, &configs).await?;
    }
    Ok(())
}

fn is_rebalance(error: &ClientError) -> bool {
    matches!(error, ClientError::Server { code: ErrorCode::UnknownMemberId | ErrorCode::FencedMemberEpoch, .. })
}

/// An internal topic the application needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InternalTopic {
    pub name: String,
    pub partitions: i32,
    /// Changelogs are compacted; repartition topics are not.
    pub compacted: bool,
    /// A window or session store's changelog also deletes records older
    /// than this (`compact,delete`), as Kafka Streams makes it: each
    /// window is a key of its own, so compaction alone would keep every
    /// window ever counted.
    pub retention_ms: Option<i64>,
}

impl InternalTopic {
    /// The topic's configs at creation.
    pub fn configs(&self) -> Vec<(String, String)> {
        match (self.compacted, self.retention_ms) {
            (false, _) => Vec::new(),
            (true, None) => vec![("cleanup.policy".into(), "compact".into())],
            (true, Some(retention_ms)) => vec![
                ("cleanup.policy".into(), "compact,delete".into()),
                ("retention.ms".into(), retention_ms.to_string()),
            ],
        }
    }
}

/// The internal topics and their partition counts. A sub-topology runs as
/// many tasks as its user source topics have partitions (the largest
/// user topic's count if it reads only repartition topics); its
/// repartition inputs and its changelogs get that many partitions, so that
/// task p reads and logs partition p. A sub-topology with stores that
/// reads several user topics needs them co-partitioned (equal counts), as
/// Kafka Streams checks: otherwise a stream's key and the table entry it
/// joins could be in different tasks.
pub(crate) fn internal_topic_plan(
    topology: &Topology,
    application_id: &str,
    user_partitions: &BTreeMap<String, i32>,
) -> Result<Vec<InternalTopic>, StreamsError> {
    let sources = topology.source_topics();
    let max_user = user_partitions.values().copied().max().unwrap_or(1);
    let stateful = topology.subs_with_stores();
    let partitions_of_sub = |sub: usize| -> Result<i32, StreamsError> {
        let counts: Vec<(String, i32)> = sources
            .iter()
            .filter(|(topic, source_sub)| *source_sub == sub && !topic.internal)
            .map(|(topic, _)| (topic.name.clone(), user_partitions.get(&topic.name).copied().unwrap_or(1)))
            .collect();
        let (Some(min), Some(max)) = (counts.iter().map(|(_, n)| *n).min(), counts.iter().map(|(_, n)| *n).max())
        else {
            return Ok(max_user);
        };
        if min != max && stateful.contains(&sub) {
            return Err(StreamsError::Config(format!(
                "topics {counts:?} are read by one stateful sub-topology (a join) but are not co-partitioned: give them the same number of partitions"
            )));
        }
        Ok(max)
    };
    let mut plan = Vec::new();
    for topic in topology.repartition_topics() {
        let sub = sources.iter().find(|(source, _)| *source == topic).map(|(_, sub)| *sub);
        let partitions = match sub {
            Some(sub) => partitions_of_sub(sub)?,
            None => max_user,
        };
        let name = topic.resolve(application_id);
        plan.push(InternalTopic { name, partitions, compacted: false, retention_ms: None });
    }
    for (store, sub, window_retention_ms) in topology.logged_stores() {
        let partitions = partitions_of_sub(sub)?;
        let retention_ms =
            window_retention_ms.map(|ms| ms.saturating_add(crate::limits::WINDOW_CHANGELOG_ADDITIONAL_RETENTION_MS));
        let name = changelog_topic(application_id, &store);
        plan.push(InternalTopic { name, partitions, compacted: true, retention_ms });
    }
    Ok(plan)
}

struct Runner {
    client: Client,
    topology: Arc<Topology>,
    config: StreamsConfig,
    producer: Producer,
    /// Resolved source topic -> sub-topology.
    sub_of: BTreeMap<String, usize>,
    tasks: BTreeMap<(usize, i32), Task>,
    /// The offset after the last record processed, per input partition,
    /// not committed yet.
    processed: BTreeMap<TopicPartition, i64>,
    deliveries: Vec<DeliveryFuture>,
    global: GlobalStores,
    /// Reads every partition of the global tables' topics.
    global_consumer: Option<Consumer>,
    /// Exactly-once: a transaction is open (begun at the first send or
    /// commit after the last one ended).
    in_transaction: bool,
}

/// A transactional id that stays the same when an instance restarts with
/// the same state directory, so that its new producer fences the old one
/// and aborts the transaction a crash left open at once (instead of after
/// the transaction timeout). FNV-1a: stable across builds.
fn transactional_id(config: &StreamsConfig) -> String {
    let dir = config.state_dir.join(&config.application_id);
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    let hash = dir
        .to_string_lossy()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3));
    format!("{}-{hash:016x}", config.application_id)
}

impl Runner {
    fn new(client: Client, topology: Arc<Topology>, config: StreamsConfig) -> Result<Self, StreamsError> {
        let producer_config = match config.processing_guarantee {
            ProcessingGuarantee::AtLeastOnce => ProducerConfig::default(),
            ProcessingGuarantee::ExactlyOnceV2 => ProducerConfig {
                transactional_id: Some(transactional_id(&config)),
                transaction_timeout_ms: TRANSACTION_TIMEOUT_MS_DEFAULT,
                ..ProducerConfig::default()
            },
        };
        let producer = Producer::new(client.clone(), producer_config)?;
        let global = topology.make_global_stores();
        let sub_of = topology
            .source_topics()
            .into_iter()
            .map(|(topic, sub)| (topic.resolve(&config.application_id), sub))
            .collect();
        Ok(Runner {
            client,
            topology,
            config,
            producer,
            sub_of,
            tasks: BTreeMap::new(),
            processed: BTreeMap::new(),
            deliveries: Vec::new(),
            global,
            global_consumer: None,
            in_transaction: false,
        })
    }

    fn exactly_once(&self) -> bool {
        self.config.processing_guarantee == ProcessingGuarantee::ExactlyOnceV2
    }

    fn isolation_level(&self) -> IsolationLevel {
        if self.exactly_once() { IsolationLevel::ReadCommitted } else { IsolationLevel::ReadUncommitted }
    }

    /// Exactly-once: opens a transaction if none is.
    async fn ensure_transaction(&mut self) -> Result<(), StreamsError> {
        if self.exactly_once() && !self.in_transaction {
            self.producer.begin_transaction().await?;
            self.in_transaction = true;
        }
        Ok(())
    }

    /// Exactly-once, after a failed commit or a partition taken away:
    /// aborts the open transaction (nothing of it is ever visible), drops
    /// every task (their stores hold uncommitted changes; without a
    /// checkpoint they are rebuilt from their changelogs when made again)
    /// and moves the inputs back to the committed offsets.
    async fn abort_and_rewind(&mut self, consumer: &mut GroupConsumer, why: &str) -> Result<(), StreamsError> {
        tracing::warn!(
            why,
            "exactly-once: aborting the transaction; tasks are rebuilt from their changelogs and inputs read again from the committed offsets"
        );
        self.deliveries.clear();
        if self.in_transaction {
            self.producer.abort_transaction().await?;
            self.in_transaction = false;
        }
        self.tasks.clear();
        self.processed.clear();
        let assigned: BTreeSet<TopicPartition> = consumer.assignment().into_iter().collect();
        if assigned.is_empty() {
            return Ok(());
        }
        let committed = GroupAdmin::new(self.client.clone())
            .committed_offsets(&self.config.application_id, Some(&assigned))
            .await?;
        for tp in &assigned {
            // No commit yet: from the start, as auto.offset.reset=earliest.
            let offset = committed.get(tp).copied().filter(|&offset| offset >= 0).unwrap_or(0);
            consumer.seek(tp, offset).await?;
        }
        Ok(())
    }

    /// Fills the global stores from their topics up to the end offsets
    /// (before any task runs, as Kafka's global thread bootstraps), then
    /// keeps the consumer to follow them.
    async fn bootstrap_global(&mut self) -> Result<(), StreamsError> {
        if self.topology.global_stores.is_empty() {
            return Ok(());
        }
        let topics: Vec<String> = self.topology.global_stores.iter().map(|global| global.topic.clone()).collect();
        let described = Admin::new(self.client.clone()).describe_topics(Some(&topics)).await?;
        let mut partitions = Vec::new();
        for topic in &described {
            if topic.error.is_some() || topic.partitions.is_empty() {
                return Err(StreamsError::Config(format!("global table topic {:?} does not exist", topic.name)));
            }
            let count = i32::try_from(topic.partitions.len()).unwrap_or(i32::MAX);
            partitions.extend((0..count).map(|partition| TopicPartition::new(topic.name.clone(), partition)));
        }
        // Under exactly-once the global tables read read_committed, as
        // every other input (Kafka Streams' global consumer too): a record
        // of an aborted transaction never reaches a table. The end offsets
        // are then the last stable offsets, so the bootstrap does not wait
        // on a transaction still open.
        let mut consumer = Consumer::new(
            self.client.clone(),
            ConsumerConfig {
                auto_offset_reset: AutoOffsetReset::Earliest,
                fetch_max_wait_ms: 50,
                isolation_level: self.isolation_level(),
                ..ConsumerConfig::default()
            },
        )?;
        consumer.assign(partitions.clone());
        let ends = consumer.end_offsets(&partitions).await?;
        for tp in &partitions {
            consumer.seek(tp, SeekTo::Earliest).await?;
        }
        let mut empty_polls = 0u32;
        loop {
            let behind = ends.iter().any(|(tp, end)| consumer.position(tp).unwrap_or(0) < *end);
            if !behind {
                break;
            }
            let records = consumer.poll(Duration::from_millis(RESTORE_POLL_MS)).await?;
            empty_polls = if records.is_empty() { empty_polls + 1 } else { 0 };
            if empty_polls >= RESTORE_EMPTY_POLLS_MAX {
                return Err(StreamsError::Store {
                    name: "global".into(),
                    reason: "global table bootstrap stalled".into(),
                });
            }
            self.apply_global(records)?;
        }
        self.global_consumer = Some(consumer);
        Ok(())
    }

    fn apply_global(&self, records: Vec<spate_client::ConsumerRecord>) -> Result<(), StreamsError> {
        let mut global = self.global.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for record in records {
            let (Some(store), Some(key)) = (self.topology.global_store_of(&record.topic), record.key.as_deref()) else {
                continue;
            };
            if let Some(target) = global.get_mut(store) {
                target.restore(key, record.value.as_deref())?;
            }
        }
        Ok(())
    }

    /// Applies what the global topics received since the last look.
    async fn follow_global(&mut self) -> Result<(), StreamsError> {
        let Some(consumer) = self.global_consumer.as_mut() else {
            return Ok(());
        };
        let records = consumer.poll(Duration::from_millis(1)).await?;
        self.apply_global(records)
    }

    /// A store of this instance by name: a global table's, or every task's.
    fn with_local_stores<T>(
        &self,
        store: &str,
        mut visit: impl FnMut(&dyn crate::store::StateStore) -> Result<Option<T>, StreamsError>,
    ) -> Result<Option<T>, StreamsError> {
        {
            let global = self.global.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(found) = global.get(store) {
                return visit(found.as_ref());
            }
        }
        let mut known = false;
        for task in self.tasks.values() {
            if let Some(found) = task.store(store) {
                known = true;
                if let Some(answer) = visit(found)? {
                    return Ok(Some(answer));
                }
            }
        }
        let in_topology = self.topology.stores.contains_key(store);
        if !known && !in_topology {
            return Err(StreamsError::Store { name: store.to_string(), reason: "not in the topology".into() });
        }
        Ok(None)
    }

    fn local_get<K: 'static, V: 'static>(&self, store: &str, key: &K) -> Result<Option<V>, StreamsError> {
        self.with_local_stores(store, |found| match found.as_any().downcast_ref::<KeyValueStore<K, V>>() {
            Some(typed) => typed.get(key),
            None => Err(StreamsError::Store {
                name: store.to_string(),
                reason: "not a key-value store of these types".into(),
            }),
        })
    }

    fn local_all<K: 'static, V: 'static>(&self, store: &str) -> Result<Vec<(K, V)>, StreamsError> {
        let mut entries = Vec::new();
        self.with_local_stores(store, |found| match found.as_any().downcast_ref::<KeyValueStore<K, V>>() {
            Some(typed) => {
                entries.extend(typed.all()?);
                Ok(None::<()>)
            }
            None => Err(StreamsError::Store {
                name: store.to_string(),
                reason: "not a key-value store of these types".into(),
            }),
        })?;
        Ok(entries)
    }

    async fn run(
        mut self,
        mut shutdown: watch::Receiver<bool>,
        mut queries: mpsc::Receiver<Query>,
    ) -> Result<(), StreamsError> {
        let mut consumer = GroupConsumer::new(
            self.client.clone(),
            GroupConfig {
                group_id: self.config.application_id.clone(),
                // Range gives a member the same partition numbers of every
                // topic (equal counts), which co-partitioned inputs (a
                // stream and the table it joins) need.
                assignor: GroupAssignor::Range,
                session_timeout_ms: self.config.session_timeout_ms,
                auto_commit: false,
                auto_offset_reset: AutoOffsetReset::Earliest,
                consumer: ConsumerConfig { isolation_level: self.isolation_level(), ..ConsumerConfig::default() },
                ..GroupConfig::default()
            },
        )?;
        if self.exactly_once() {
            // Fences this instance's predecessor and ends what it left open.
            self.producer.init_transactions().await?;
        }
        self.bootstrap_global().await?;
        let topics: Vec<String> = self.sub_of.keys().cloned().collect();
        consumer.subscribe(&topics).await?;
        let commit_interval = Duration::from_millis(self.config.commit_interval_ms);
        let mut last_commit = Instant::now();
        let result = loop {
            if *shutdown.borrow() {
                break Ok(());
            }
            let poll = tokio::select! {
                records = consumer.poll(Duration::from_millis(self.config.poll_ms)) => records,
                _ = shutdown.changed() => continue,
            };
            let step = match poll {
                Ok(records) => self.process_poll(&mut consumer, records).await,
                Err(error) if error.is_retriable() => {
                    tracing::warn!(%error, "poll failed; polling again");
                    Ok(())
                }
                Err(error) => Err(error.into()),
            };
            if let Err(error) = step {
                break Err(error);
            }
            while let Ok(query) = queries.try_recv() {
                query(&self);
            }
            // Commit on time, or early when the deliveries to wait for pile up.
            if last_commit.elapsed() >= commit_interval || self.deliveries.len() >= DELIVERIES_PENDING_MAX {
                if let Err(error) = self.commit(&mut consumer).await {
                    break Err(error);
                }
                last_commit = Instant::now();
            }
        };
        self.finish(result, consumer).await
    }

    /// The end of `run`: a last commit, then leave the group.
    async fn finish(
        &mut self,
        result: Result<(), StreamsError>,
        mut consumer: GroupConsumer,
    ) -> Result<(), StreamsError> {
        match result {
            Ok(()) => {
                self.commit(&mut consumer).await?;
                if self.exactly_once() {
                    // A clean close: the stores hold exactly what committed,
                    // so the next start may trust them (checkpoints).
                    for task in self.tasks.values() {
                        task.write_checkpoint()?;
                    }
                }
                self.producer.close().await?;
                // Leave without the consumer's own commit: its positions may
                // be past records a cancelled poll fetched but never handed
                // over. Only the offsets of processed records are committed.
                consumer.leave().await?;
                Ok(())
            }
            Err(error) => {
                tracing::error!(%error, "streams application stopped");
                // What was processed before the failure is still committed,
                // if its outputs are delivered; never anything after it.
                if let Err(commit_error) = self.commit(&mut consumer).await {
                    tracing::warn!(%commit_error, "last commit before stopping failed");
                }
                let _ = consumer.leave().await;
                Err(error)
            }
        }
    }

    async fn process_poll(
        &mut self,
        consumer: &mut GroupConsumer,
        records: Vec<spate_client::ConsumerRecord>,
    ) -> Result<(), StreamsError> {
        self.follow_global().await?;
        let assigned = consumer.assignment();
        let revoked = self.tasks.iter().any(|((_, partition), task)| {
            !task.sources.iter().any(|(topic, _)| assigned.contains(&TopicPartition::new(topic.clone(), *partition)))
        });
        if revoked && self.exactly_once() {
            // The open transaction holds work of partitions that are
            // another member's now: none of it may commit. The records of
            // this poll are read again after the rewind.
            return self.abort_and_rewind(consumer, "partitions were taken away").await;
        }
        // Tasks whose partitions moved away are dropped; their uncommitted
        // records are processed again by the new owner (at least once).
        self.tasks.retain(|(_, partition), task| {
            task.sources.iter().any(|(topic, _)| assigned.contains(&TopicPartition::new(topic.clone(), *partition)))
        });
        self.processed.retain(|tp, _| assigned.contains(tp));
        // Tasks of newly assigned partitions are made (and their stores
        // restored) at once, not at their first record: their stores answer
        // queries and their punctuations run even while no input comes.
        for tp in &assigned {
            let Some(&sub) = self.sub_of.get(&tp.topic) else {
                continue;
            };
            if !self.tasks.contains_key(&(sub, tp.partition)) {
                let task = self.make_task(sub, tp.partition).await?;
                self.tasks.insert((sub, tp.partition), task);
            }
        }
        for record in records {
            self.process_record(record).await?;
        }
        let now_ms = now_ms();
        let mut punctuated = Vec::new();
        for task in self.tasks.values_mut() {
            task.advance_wall_clock(now_ms)?;
            punctuated.extend(task.take_output());
        }
        self.send(punctuated).await
    }

    /// Runs one record through its task and sends what it wrote; its
    /// offset counts as processed only after that.
    async fn process_record(&mut self, record: spate_client::ConsumerRecord) -> Result<(), StreamsError> {
        let Some(&sub) = self.sub_of.get(&record.topic) else {
            return Ok(());
        };
        let key = (sub, record.partition);
        if !self.tasks.contains_key(&key) {
            let task = self.make_task(sub, record.partition).await?;
            self.tasks.insert(key, task);
        }
        let Some(task) = self.tasks.get_mut(&key) else {
            return Ok(());
        };
        let outcome = task.process(
            &record.topic,
            record.offset,
            record.timestamp_ms,
            record.key.as_deref(),
            record.value.as_deref(),
        );
        let mut output = task.take_output();
        match outcome {
            Ok(_) => {}
            Err(error @ StreamsError::Deserialization { .. }) => {
                if let Some(dead_letter_topic) = &self.config.dead_letter_queue_topic {
                    let source = (record.topic.as_str(), record.partition, record.offset);
                    let (key, value) = (record.key.as_deref(), record.value.as_deref());
                    output.push(dead_letter_record(dead_letter_topic, &error, source, key, value, record.timestamp_ms));
                }
                match self.config.deserialization_exception_handler {
                    DeserializationExceptionHandler::LogAndContinue => {
                        tracing::warn!(%error, "skipping a record that cannot be deserialized (LogAndContinue)");
                    }
                    DeserializationExceptionHandler::LogAndFail => {
                        tracing::error!(%error, "a record cannot be deserialized (LogAndFail)");
                        // The dead letter goes out with the last commit's
                        // flush; the record's offset is not committed.
                        self.send(output).await?;
                        return Err(error);
                    }
                }
            }
            Err(error) => return Err(error),
        }
        // The caches over their bound are written out (Kafka evicts the
        // least recently used entries; writing all keeps this simple).
        let cached_bytes: usize = self.tasks.values().map(Task::cached_changelog_bytes).sum();
        if cached_bytes as u64 > self.config.statestore_cache_max_bytes {
            output.extend(self.tasks.values_mut().flat_map(Task::take_cached_changelog));
        }
        self.send(output).await?;
        self.processed
            .insert(TopicPartition::new(record.topic.clone(), record.partition), record.offset.saturating_add(1));
        Ok(())
    }

    async fn send(&mut self, output: Vec<OutRecord>) -> Result<(), StreamsError> {
        if output.is_empty() {
            return Ok(());
        }
        self.ensure_transaction().await?;
        for record in output {
            let delivery = self
                .producer
                .send(ProducerRecord {
                    topic: record.topic,
                    partition: record.partition,
                    key: record.key,
                    value: record.value,
                    headers: record.headers,
                    timestamp_ms: Some(record.timestamp_ms),
                })
                .await?;
            self.deliveries.push(delivery);
        }
        Ok(())
    }

    /// Flushes, waits for every delivery, then commits the processed
    /// offsets; a failed delivery commits nothing.
    ///
    /// Persistent stores, in Kafka Streams' order: once every changelog
    /// write is acknowledged the stores are flushed, the offsets
    /// committed, and each task's checkpoint written with the changelog
    /// offsets its stores now hold.
    async fn commit(&mut self, consumer: &mut GroupConsumer) -> Result<(), StreamsError> {
        if !self.exactly_once() {
            return self.commit_at_least_once(consumer).await;
        }
        match self.commit_transaction(consumer).await {
            Ok(()) => Ok(()),
            // Fenced by a newer instance of this one: only stopping is left.
            Err(StreamsError::Client(error)) if error.code() == Some(ErrorCode::ProducerFenced) => {
                Err(StreamsError::Client(error))
            }
            Err(error) => self.abort_and_rewind(consumer, &error.to_string()).await,
        }
    }

    /// Exactly-once: the cached changelog writes go out, every send of the
    /// transaction is acknowledged, the stores are flushed, and the input
    /// offsets join the transaction, which then commits.
    async fn commit_transaction(&mut self, consumer: &mut GroupConsumer) -> Result<(), StreamsError> {
        let cached: Vec<OutRecord> = self.tasks.values_mut().flat_map(Task::take_cached_changelog).collect();
        self.send(cached).await?;
        if self.processed.is_empty() && !self.in_transaction {
            return Ok(());
        }
        self.ensure_transaction().await?;
        self.producer.flush().await?;
        for delivery in self.deliveries.drain(..) {
            delivery.await?;
        }
        for task in self.tasks.values_mut() {
            task.flush_stores()?;
        }
        if !self.processed.is_empty() {
            let group = consumer.group_metadata().await;
            self.producer.send_offsets_to_transaction(&self.processed, &group).await?;
        }
        self.producer.commit_transaction().await?;
        self.in_transaction = false;
        self.processed.clear();
        Ok(())
    }

    async fn commit_at_least_once(&mut self, consumer: &mut GroupConsumer) -> Result<(), StreamsError> {
        let cached: Vec<OutRecord> = self.tasks.values_mut().flat_map(Task::take_cached_changelog).collect();
        self.send(cached).await?;
        self.producer.flush().await?;
        let mut acked = BTreeMap::<(String, i32), i64>::new();
        for delivery in self.deliveries.drain(..) {
            let metadata = delivery.await?;
            let next = acked.entry((metadata.topic, metadata.partition)).or_insert(0);
            *next = (*next).max(metadata.offset.saturating_add(1));
        }
        for task in self.tasks.values_mut() {
            for (tp, next_offset) in &mut task.changelog_offsets {
                if let Some(&acked_next) = acked.get(tp) {
                    *next_offset = (*next_offset).max(acked_next);
                }
            }
            task.flush_stores()?;
        }
        let committed = self.commit_offsets(consumer).await;
        for task in self.tasks.values() {
            task.write_checkpoint()?;
        }
        committed
    }

    /// Commits the offsets after the processed records.
    async fn commit_offsets(&mut self, consumer: &mut GroupConsumer) -> Result<(), StreamsError> {
        if self.processed.is_empty() {
            return Ok(());
        }
        match consumer.commit(self.processed.clone()).await {
            Ok(()) => Ok(()),
            // The member was dropped or its epoch moved on (a rebalance met
            // the commit): the partitions may be another member's now, which
            // starts from the last commit. Not committing is safe (at least
            // once); the next poll rejoins or applies the new assignment.
            Err(error) if is_rebalance(&error) || error.is_retriable() => {
                tracing::warn!(%error, "commit not done; the records will be committed later or processed again");
                Ok(())
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Makes a task and restores its logged stores from their changelogs:
    /// a persistent store from its checkpointed offset, an in-memory one
    /// (or a persistent one without a usable checkpoint, wiped first) from
    /// the start, up to the end offset read before restoring.
    async fn make_task(&mut self, sub: usize, partition: i32) -> Result<Task, StreamsError> {
        let app = &self.config.application_id;
        let dir = task_dir(&self.config.state_dir, app, sub, partition);
        let mut task = self.topology.make_task(sub, partition, app, now_ms(), Arc::clone(&self.global), &dir)?;
        task.changelog_cache = Some(ChangelogCache::default());
        let checkpoint = take_checkpoint(&dir);
        for (store, topic) in task.logged_stores() {
            let tp = TopicPartition::new(topic, partition);
            let persistent = task.is_persistent(&store);
            let checkpointed = (persistent && !task.wiped.contains(&store))
                .then(|| checkpoint.get(&(tp.topic.clone(), tp.partition)).copied())
                .flatten();
            let started = Instant::now();
            let isolation_level = self.isolation_level();
            let restored = restore(&self.client, &mut task, &store, tp.clone(), checkpointed, isolation_level).await?;
            tracing::info!(
                %store,
                partition,
                persistent,
                from_offset = restored.from_offset,
                end_offset = restored.end_offset,
                restored = restored.records,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "store restored from its changelog"
            );
            if persistent {
                task.changelog_offsets.insert((tp.topic, tp.partition), restored.end_offset);
            }
        }
        Ok(task)
    }
}

/// Reads a task's checkpoint and deletes it (Kafka Streams' order): until
/// the next commit writes a new one, a crash leaves none, and the stores
/// are wiped and restored from the start rather than trusted past it. A
/// damaged checkpoint is logged and counts as none.
fn take_checkpoint(dir: &Path) -> CheckpointOffsets {
    let offsets = match read_checkpoint(dir) {
        Ok(offsets) => offsets.unwrap_or_default(),
        Err(error) => {
            tracing::warn!(%error, "checkpoint unusable; its stores are restored from the changelog's start");
            CheckpointOffsets::new()
        }
    };
    if let Err(error) = delete_checkpoint(dir) {
        // A checkpoint that stays could be trusted after a crash with the
        // store past it; for a key-value store replaying from an older
        // offset still converges (each changelog record is a whole value).
        tracing::warn!(%error, "checkpoint could not be deleted");
    }
    offsets
}

/// Where a store's restore starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RestoreStart {
    /// At the checkpointed offset: the store on disk holds what came before.
    Checkpoint(i64),
    /// Empty the store, and read the changelog from its start.
    WipeAndStart,
}

/// A checkpoint is trusted only inside the changelog's offsets: one ahead
/// of its end (the topic was deleted and made again, or the checkpoint is
/// another cluster's) or before its start (the records it would skip to
/// were deleted) says the store on disk is not this changelog's prefix.
fn restore_start(checkpointed: Option<i64>, start_offset: i64, end_offset: i64) -> RestoreStart {
    match checkpointed {
        Some(offset) if (start_offset..=end_offset).contains(&offset) => RestoreStart::Checkpoint(offset),
        _ => RestoreStart::WipeAndStart,
    }
}

/// What a restore read: from which offset, to which end, how many records.
#[derive(Debug, Clone, Copy)]
struct Restored {
    from_offset: i64,
    end_offset: i64,
    records: u64,
}

/// Applies a changelog partition to a task's store, from `checkpointed`
/// (else from the start, the store wiped first) to the end offset read
/// before restoring. A checkpoint outside the changelog (ahead of its end,
/// or before its start after compaction or deletion) is not trusted: the
/// store is wiped and restored from the start.
async fn restore(
    client: &Client,
    task: &mut Task,
    store: &str,
    tp: TopicPartition,
    checkpointed: Option<i64>,
    isolation_level: IsolationLevel,
) -> Result<Restored, StreamsError> {
    let mut consumer = Consumer::new(
        client.clone(),
        ConsumerConfig {
            auto_offset_reset: AutoOffsetReset::Earliest,
            fetch_max_wait_ms: 100,
            // Exactly-once: an aborted transaction's changes never enter a
            // store; an open one is waited for (its end, or its timeout).
            isolation_level,
            ..ConsumerConfig::default()
        },
    )?;
    consumer.assign(vec![tp.clone()]);
    let end_offset = consumer.end_offsets(std::slice::from_ref(&tp)).await?.first().map_or(0, |(_, offset)| *offset);
    let start_offset = consumer.seek(&tp, SeekTo::Earliest).await?;
    let from_offset = match restore_start(checkpointed, start_offset, end_offset) {
        RestoreStart::Checkpoint(offset) => consumer.seek(&tp, SeekTo::Offset(offset)).await?,
        RestoreStart::WipeAndStart => {
            if let Some(offset) = checkpointed {
                tracing::warn!(%store, partition = tp.partition, offset, start_offset, end_offset, "checkpoint outside the changelog; wiping the store and restoring from the start");
            }
            task.wipe(store)?;
            start_offset
        }
    };
    let mut position = from_offset;
    let mut records = 0u64;
    let mut empty_polls = 0u32;
    let mut unflushed_bytes = 0usize;
    while position < end_offset {
        let batch = consumer.poll(Duration::from_millis(RESTORE_POLL_MS)).await?;
        empty_polls = if batch.is_empty() { empty_polls + 1 } else { 0 };
        if empty_polls >= RESTORE_EMPTY_POLLS_MAX {
            return Err(StreamsError::Store {
                name: store.to_string(),
                reason: format!(
                    "restore of {}-{} stalled at offset {position} of {end_offset}",
                    tp.topic, tp.partition
                ),
            });
        }
        for record in batch {
            if record.offset >= end_offset {
                break;
            }
            let key = record.key.as_deref().unwrap_or_default();
            unflushed_bytes =
                unflushed_bytes.saturating_add(key.len() + record.value.as_ref().map_or(0, |value| value.len()));
            task.restore(store, key, record.value.as_deref())?;
            records += 1;
        }
        position = consumer.position(&tp).unwrap_or(end_offset);
        // A persistent store's overlay holds what was restored until a
        // flush: flushing every RESTORE_FLUSH_BYTES keeps a large restore's
        // memory bounded, without a durable transaction per fetch.
        if unflushed_bytes >= RESTORE_FLUSH_BYTES || position >= end_offset {
            task.flush_stores()?;
            unflushed_bytes = 0;
        }
    }
    Ok(Restored { from_offset, end_offset, records })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::dsl::{Consumed, Grouped, Materialized, Produced, Repartitioned, StreamsBuilder};
    use crate::serde::Serdes;

    #[test]
    fn window_and_session_changelogs_also_delete_past_the_stores_retention_plus_a_day() {
        use crate::window::{SessionWindows, TimeWindows};
        let builder = StreamsBuilder::new();
        let grouped = builder
            .stream("clicks", Consumed::with(Serdes::string(), Serdes::string()))
            .group_by_key(Grouped::with(Serdes::string(), Serdes::string()));
        grouped.windowed_by(TimeWindows::of_size_and_grace(60_000, 10_000)).count(Materialized::as_("windows"));
        grouped
            .windowed_by(TimeWindows::of_size_and_grace(60_000, 10_000))
            .count(Materialized::as_("kept-longer").with_retention(3_600_000));
        grouped
            .windowed_by_session(SessionWindows::of_inactivity_gap_and_grace(30_000, 5_000))
            .count(Materialized::as_("sessions"));
        grouped.count(Materialized::as_("totals"));
        let topology = builder.build().unwrap();
        let plan = internal_topic_plan(&topology, "app", &partitions(&[("clicks", 2)])).unwrap();
        let configs = |store: &str| {
            let topic = plan.iter().find(|topic| topic.name == format!("app-{store}-changelog")).unwrap();
            topic.configs().into_iter().map(|(key, value)| format!("{key}={value}")).collect::<Vec<_>>()
        };
        let day_ms = 86_400_000;
        let window = |ms: i64| vec!["cleanup.policy=compact,delete".to_string(), format!("retention.ms={ms}")];
        assert_eq!(configs("windows"), window(70_000 + day_ms));
        assert_eq!(configs("kept-longer"), window(3_600_000 + day_ms));
        assert_eq!(configs("sessions"), window(35_000 + day_ms));
        assert_eq!(configs("totals"), vec!["cleanup.policy=compact".to_string()]);
    }

    fn partitions(list: &[(&str, i32)]) -> BTreeMap<String, i32> {
        list.iter().map(|(topic, count)| (topic.to_string(), *count)).collect()
    }

    #[test]
    fn internal_topics_follow_the_partitions_of_the_tasks_that_use_them() {
        // A re-keyed stream joined with a table of 3 partitions: the
        // repartition topic gets 3 (co-partitioned with the table), the
        // table's changelog 3; the count after a group_by on an 8-partition
        // stream gets the largest user count.
        let builder = StreamsBuilder::new();
        let table = builder.table(
            "customers",
            Consumed::with(Serdes::string(), Serdes::string()),
            Materialized::as_("customers"),
        );
        let orders = builder.stream("orders", Consumed::with(Serdes::string(), Serdes::string()));
        orders
            .select_key(|_, value| value.clone())
            .repartition(Repartitioned::with(Serdes::string(), Serdes::string()).with_name("by-customer"))
            .join(&table, |order, customer| format!("{order}{customer}"))
            .to("enriched", Produced::with(Serdes::string(), Serdes::string()));
        orders
            .group_by(|_, value| value.clone(), Grouped::with(Serdes::string(), Serdes::string()))
            .count(Materialized::as_("counts"));
        let topology = builder.build().unwrap();
        let plan = internal_topic_plan(&topology, "app", &partitions(&[("customers", 3), ("orders", 8)])).unwrap();
        let find = |name: &str| plan.iter().find(|topic| topic.name == name).cloned().unwrap();
        assert_eq!(
            find("app-by-customer-repartition"),
            InternalTopic {
                name: "app-by-customer-repartition".into(),
                partitions: 3,
                compacted: false,
                retention_ms: None
            }
        );
        assert_eq!(find("app-customers-changelog").partitions, 3);
        assert!(find("app-customers-changelog").compacted);
        assert_eq!(find("app-counts-repartition").partitions, 8);
        assert_eq!(find("app-counts-changelog").partitions, 8);
    }

    #[test]
    fn a_checkpoint_is_trusted_only_inside_the_changelog() {
        // Changelog offsets 10..50 (start 10 after deletion, end 50).
        assert_eq!(restore_start(Some(30), 10, 50), RestoreStart::Checkpoint(30));
        assert_eq!(restore_start(Some(50), 10, 50), RestoreStart::Checkpoint(50), "at the end: nothing to read");
        assert_eq!(restore_start(Some(10), 10, 50), RestoreStart::Checkpoint(10));
        assert_eq!(restore_start(Some(51), 10, 50), RestoreStart::WipeAndStart, "ahead of the changelog's end");
        assert_eq!(restore_start(Some(0), 10, 50), RestoreStart::WipeAndStart, "before its start: records gone");
        assert_eq!(restore_start(None, 10, 50), RestoreStart::WipeAndStart, "no checkpoint");
        // A changelog made anew (empty) after a checkpoint of an older one.
        assert_eq!(restore_start(Some(124), 0, 0), RestoreStart::WipeAndStart);
    }

    #[test]
    fn a_join_of_topics_with_different_partition_counts_is_refused() {
        let builder = StreamsBuilder::new();
        let table =
            builder.table("customers", Consumed::with(Serdes::string(), Serdes::string()), Materialized::default());
        builder
            .stream("orders", Consumed::with(Serdes::string(), Serdes::string()))
            .join(&table, |order, customer| format!("{order}{customer}"))
            .to("enriched", Produced::with(Serdes::string(), Serdes::string()));
        let topology = builder.build().unwrap();
        let refused = internal_topic_plan(&topology, "app", &partitions(&[("customers", 3), ("orders", 4)]));
        assert!(matches!(refused, Err(StreamsError::Config(_))));
        assert!(internal_topic_plan(&topology, "app", &partitions(&[("customers", 4), ("orders", 4)])).is_ok());
    }
}
