//! `TopologyTestDriver`: runs a topology in the calling thread without a
//! broker, as Kafka Streams' test driver does. Each sub-topology runs as
//! one task (partition 0); records written to a topic a source reads
//! (repartition topics) are processed at once; wall-clock time moves only
//! when the test advances it.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::marker::PhantomData;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::config::{DeserializationExceptionHandler, StreamsConfig};
use crate::error::StreamsError;
use crate::processor::{GlobalStores, OutRecord};
use crate::serde::{SerdeError, SerdeRef};
use crate::store::{KeyValueStore, SessionStore, WindowStore};
use crate::task::{Task, dead_letter_record, task_dir};
use crate::topology::Topology;

struct Inner {
    topology: Arc<Topology>,
    global: GlobalStores,
    config: StreamsConfig,
    tasks: Vec<Task>,
    /// Resolved source topic -> index into `tasks`.
    source_of: BTreeMap<String, usize>,
    /// Every record written, by topic, for output topics to read.
    written: BTreeMap<String, VecDeque<OutRecord>>,
    next_offset: BTreeMap<String, i64>,
    wall_clock_ms: i64,
    /// This driver's own directory under `state.dir`, for its persistent
    /// stores: unique per driver, so that tests running at once never
    /// share a store file; removed when the driver is dropped.
    state_root: PathBuf,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.state_root)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(%error, dir = %self.state_root.display(), "test driver state not removed");
        }
    }
}

/// Tells apart the drivers of one process (each gets its own state).
static DRIVERS_MADE: AtomicU64 = AtomicU64::new(0);

/// Runs a topology deterministically, without a broker.
#[derive(Clone)]
pub struct TopologyTestDriver {
    inner: Rc<RefCell<Inner>>,
}

impl std::fmt::Debug for TopologyTestDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TopologyTestDriver")
    }
}

impl TopologyTestDriver {
    /// Wall-clock time starts at 0.
    pub fn new(topology: Topology, config: StreamsConfig) -> Result<Self, StreamsError> {
        TopologyTestDriver::with_wall_clock(topology, config, 0)
    }

    pub fn with_wall_clock(
        topology: Topology,
        config: StreamsConfig,
        wall_clock_ms: i64,
    ) -> Result<Self, StreamsError> {
        config.validate()?;
        let topology = Arc::new(topology);
        let global = topology.make_global_stores();
        let mut tasks = Vec::new();
        let mut source_of = BTreeMap::new();
        let driver_id = DRIVERS_MADE.fetch_add(1, Ordering::Relaxed);
        let state_root = config.state_dir.join(format!("test-driver-{}-{driver_id}", std::process::id()));
        for sub in 0..topology.sub_topologies().len() {
            let dir = task_dir(&state_root, &config.application_id, sub, 0);
            let task = topology.make_task(sub, 0, &config.application_id, wall_clock_ms, Arc::clone(&global), &dir)?;
            for (topic, _) in &task.sources {
                source_of.insert(topic.clone(), tasks.len());
            }
            tasks.push(task);
        }
        let inner = Inner {
            topology: Arc::clone(&topology),
            global,
            config,
            tasks,
            source_of,
            written: BTreeMap::new(),
            next_offset: BTreeMap::new(),
            wall_clock_ms,
            state_root,
        };
        Ok(TopologyTestDriver { inner: Rc::new(RefCell::new(inner)) })
    }

    pub fn create_input_topic<K, V>(
        &self,
        topic: &str,
        key_serde: SerdeRef<K>,
        value_serde: SerdeRef<V>,
    ) -> TestInputTopic<K, V> {
        TestInputTopic { driver: self.clone(), topic: topic.to_string(), key_serde, value_serde }
    }

    pub fn create_output_topic<K, V>(
        &self,
        topic: &str,
        key_serde: SerdeRef<K>,
        value_serde: SerdeRef<V>,
    ) -> TestOutputTopic<K, V> {
        TestOutputTopic { driver: self.clone(), topic: topic.to_string(), key_serde, value_serde, _types: PhantomData }
    }

    /// Pipes raw bytes, as a producer would write them.
    pub fn pipe_raw(
        &self,
        topic: &str,
        key: Option<Bytes>,
        value: Option<Bytes>,
        timestamp_ms: i64,
    ) -> Result<(), StreamsError> {
        let mut inner = self.inner.borrow_mut();
        let mut queue = VecDeque::from([OutRecord {
            topic: topic.to_string(),
            partition: Some(0),
            key,
            value,
            timestamp_ms,
            headers: Vec::new(),
        }]);
        while let Some(record) = queue.pop_front() {
            let offset = inner.next_offset.entry(record.topic.clone()).or_insert(0);
            let record_offset = *offset;
            *offset += 1;
            // A global table's topic updates its store, in every task's view.
            if let Some(store) = inner.topology.global_store_of(&record.topic) {
                let mut global = inner.global.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if let (Some(key), Some(target)) = (&record.key, global.get_mut(store)) {
                    target.restore(key, record.value.as_deref())?;
                }
            }
            let Some(&task_index) = inner.source_of.get(&record.topic) else {
                continue;
            };
            let handler = inner.config.deserialization_exception_handler;
            let task = &mut inner.tasks[task_index];
            match task.process(
                &record.topic,
                record_offset,
                record.timestamp_ms,
                record.key.as_deref(),
                record.value.as_deref(),
            ) {
                Ok(_) => {}
                Err(error @ StreamsError::Deserialization { .. }) => {
                    if let Some(dead_letter_topic) = inner.config.dead_letter_queue_topic.clone() {
                        let source = (record.topic.as_str(), 0, record_offset);
                        let (key, value) = (record.key.as_deref(), record.value.as_deref());
                        let dead =
                            dead_letter_record(&dead_letter_topic, &error, source, key, value, record.timestamp_ms);
                        inner.route(vec![dead], &mut queue);
                    }
                    match handler {
                        DeserializationExceptionHandler::LogAndContinue => {
                            tracing::warn!(%error, "skipping a record that cannot be deserialized (LogAndContinue)");
                        }
                        DeserializationExceptionHandler::LogAndFail => return Err(error),
                    }
                }
                Err(error) => return Err(error),
            }
            let output = inner.tasks[task_index].take_output();
            inner.route(output, &mut queue);
        }
        // Kafka's driver commits after every record: persistent stores
        // reach their files, so tests read them back through the file.
        inner.tasks.iter_mut().try_for_each(Task::flush_stores)
    }

    /// Moves wall-clock time forward and runs the punctuations due.
    pub fn advance_wall_clock_time(&self, advance_ms: i64) -> Result<(), StreamsError> {
        let mut queue = VecDeque::new();
        {
            let mut inner = self.inner.borrow_mut();
            inner.wall_clock_ms = inner.wall_clock_ms.saturating_add(advance_ms);
            let now_ms = inner.wall_clock_ms;
            for index in 0..inner.tasks.len() {
                inner.tasks[index].advance_wall_clock(now_ms)?;
                let output = inner.tasks[index].take_output();
                inner.route(output, &mut queue);
            }
        }
        // What punctuations wrote to repartition topics goes on through.
        for record in queue {
            self.pipe_raw(&record.topic, record.key, record.value, record.timestamp_ms)?;
        }
        Ok(())
    }

    /// Every record written to `topic` so far (changelogs included), read
    /// or not.
    pub fn written(&self, topic: &str) -> Vec<OutRecord> {
        self.inner.borrow().written.get(topic).map(|records| records.iter().cloned().collect()).unwrap_or_default()
    }

    /// The entries of a key-value store, in key-byte order.
    pub fn key_value_store_all<K: 'static, V: 'static>(&self, store: &str) -> Result<Vec<(K, V)>, StreamsError> {
        self.with_store(store, |found: &KeyValueStore<K, V>| found.all())
    }

    pub fn key_value_store_get<K: 'static, V: 'static>(&self, store: &str, key: &K) -> Result<Option<V>, StreamsError> {
        self.with_store(store, |found: &KeyValueStore<K, V>| found.get(key))
    }

    /// The entries of a session store: (key, start, end, value).
    pub fn session_store_all<K: 'static, V: 'static>(
        &self,
        store: &str,
    ) -> Result<Vec<(K, i64, i64, V)>, StreamsError> {
        self.with_store(store, |found: &SessionStore<K, V>| found.all())
    }

    /// The entries of a window store: (key, window start, value).
    pub fn window_store_all<K: 'static, V: 'static>(&self, store: &str) -> Result<Vec<(K, i64, V)>, StreamsError> {
        self.with_store(store, |found: &WindowStore<K, V>| found.all())
    }

    fn with_store<S: 'static, R>(
        &self,
        store: &str,
        read: impl FnOnce(&S) -> Result<R, StreamsError>,
    ) -> Result<R, StreamsError> {
        let inner = self.inner.borrow();
        let global = inner.global.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(found) = global.get(store) {
            let typed = found.as_any().downcast_ref::<S>().ok_or_else(|| StreamsError::Store {
                name: store.to_string(),
                reason: format!("is not a {}", std::any::type_name::<S>()),
            })?;
            return read(typed);
        }
        drop(global);
        for task in &inner.tasks {
            if let Some(found) = task.store(store) {
                let typed = found.as_any().downcast_ref::<S>().ok_or_else(|| StreamsError::Store {
                    name: store.to_string(),
                    reason: format!("is not a {}", std::any::type_name::<S>()),
                })?;
                return read(typed);
            }
        }
        Err(StreamsError::Store { name: store.to_string(), reason: "not in the topology".into() })
    }
}

impl Inner {
    /// Keeps written records for output topics; those for a topic a
    /// source reads go back into the queue.
    fn route(&mut self, output: Vec<OutRecord>, queue: &mut VecDeque<OutRecord>) {
        for record in output {
            if self.source_of.contains_key(&record.topic) || self.topology.global_store_of(&record.topic).is_some() {
                queue.push_back(record.clone());
            }
            self.written.entry(record.topic.clone()).or_default().push_back(record);
        }
    }
}

/// Pipes typed records into a topic of the driver.
pub struct TestInputTopic<K, V> {
    driver: TopologyTestDriver,
    topic: String,
    key_serde: SerdeRef<K>,
    value_serde: SerdeRef<V>,
}

impl<K, V> std::fmt::Debug for TestInputTopic<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestInputTopic").field("topic", &self.topic).finish()
    }
}

impl<K, V> TestInputTopic<K, V> {
    pub fn pipe_input(&self, key: &K, value: &V, timestamp_ms: i64) -> Result<(), StreamsError> {
        let error = |source| StreamsError::Serialization { target: format!("topic {}", self.topic), source };
        let key = self.key_serde.serialize(&self.topic, key).map_err(error)?;
        let value = self.value_serde.serialize(&self.topic, value).map_err(error)?;
        self.driver.pipe_raw(&self.topic, key, value, timestamp_ms)
    }

    /// A record with a null value: a tombstone for a table.
    pub fn pipe_tombstone(&self, key: &K, timestamp_ms: i64) -> Result<(), StreamsError> {
        let key = self
            .key_serde
            .serialize(&self.topic, key)
            .map_err(|source| StreamsError::Serialization { target: format!("topic {}", self.topic), source })?;
        self.driver.pipe_raw(&self.topic, key, None, timestamp_ms)
    }
}

/// Reads typed records from a topic of the driver, oldest first.
pub struct TestOutputTopic<K, V> {
    driver: TopologyTestDriver,
    topic: String,
    key_serde: SerdeRef<K>,
    value_serde: SerdeRef<V>,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> std::fmt::Debug for TestOutputTopic<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestOutputTopic").field("topic", &self.topic).finish()
    }
}

/// A record read from an output topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRecord<K, V> {
    pub key: K,
    pub value: V,
    pub timestamp_ms: i64,
}

impl<K, V> TestOutputTopic<K, V> {
    /// The next unread record, if any.
    pub fn read_record(&self) -> Option<Result<TestRecord<K, V>, SerdeError>> {
        let record = self.driver.inner.borrow_mut().written.get_mut(&self.topic)?.pop_front()?;
        let read = || {
            let key = self.key_serde.deserialize(&self.topic, record.key.as_deref())?;
            let value = self.value_serde.deserialize(&self.topic, record.value.as_deref())?;
            Ok(TestRecord { key, value, timestamp_ms: record.timestamp_ms })
        };
        Some(read())
    }

    /// Every unread record as (key, value).
    pub fn read_key_values_to_list(&self) -> Result<Vec<(K, V)>, SerdeError> {
        std::iter::from_fn(|| self.read_record()).map(|record| record.map(|r| (r.key, r.value))).collect()
    }

    /// Every unread record, the last value per key winning (a table's view).
    pub fn read_key_values_to_map(&self) -> Result<BTreeMap<K, V>, SerdeError>
    where
        K: Ord,
    {
        Ok(self.read_key_values_to_list()?.into_iter().collect())
    }

    pub fn is_empty(&self) -> bool {
        self.driver.inner.borrow().written.get(&self.topic).is_none_or(VecDeque::is_empty)
    }
}
