//! The low-level Processor API, as Kafka Streams' `Processor<KIn, VIn,
//! KOut, VOut>`: a processor takes typed records, may read and write the
//! state stores it is connected to, forwards records to its children, and
//! may schedule punctuations by stream time or wall-clock time. The DSL is
//! built from processors of this kind.

use std::any::Any;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::StreamsError;
use crate::store::StateStore;

/// What a record's key or value must be: cloned when a node has several
/// children, and moved between threads with its task.
pub trait Data: Clone + Send + Sync + 'static {}
impl<T: Clone + Send + Sync + 'static> Data for T {}

/// A typed record, as Kafka Streams' `api.Record`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<K, V> {
    pub key: K,
    pub value: V,
    /// Event time: the source record's timestamp (or what the timestamp
    /// extractor made of it), carried through the topology.
    pub timestamp_ms: i64,
}

impl<K, V> Record<K, V> {
    pub fn new(key: K, value: V, timestamp_ms: i64) -> Self {
        Record { key, value, timestamp_ms }
    }
    pub fn with_key<K2>(self, key: K2) -> Record<K2, V> {
        Record { key, value: self.value, timestamp_ms: self.timestamp_ms }
    }
    pub fn with_value<V2>(self, value: V2) -> Record<K, V2> {
        Record { key: self.key, value, timestamp_ms: self.timestamp_ms }
    }
}

/// What drives a punctuation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PunctuationType {
    /// The task's stream time: the largest record timestamp seen. It moves
    /// only when records arrive.
    StreamTime,
    /// The clock: the runtime's, or the test driver's advanced one.
    WallClockTime,
}

/// Names one `schedule` call, handed back to `Processor::punctuate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PunctuationId(pub usize);

/// A custom processor. `init` runs once per task before any record;
/// `process` once per record; `punctuate` when a schedule is due. An
/// error stops the task (as an exception thrown from a Kafka Streams
/// processor does).
pub trait Processor<KIn, VIn, KOut, VOut>: Send {
    fn init(&mut self, _ctx: &mut ProcessorContext<'_, KOut, VOut>) -> Result<(), StreamsError> {
        Ok(())
    }
    fn process(
        &mut self,
        ctx: &mut ProcessorContext<'_, KOut, VOut>,
        record: Record<KIn, VIn>,
    ) -> Result<(), StreamsError>;
    fn punctuate(
        &mut self,
        _ctx: &mut ProcessorContext<'_, KOut, VOut>,
        _id: PunctuationId,
        _timestamp_ms: i64,
    ) -> Result<(), StreamsError> {
        Ok(())
    }
}

pub(crate) type DynData = Arc<dyn Any + Send + Sync>;

/// A record between nodes: its types are checked where a node takes it.
#[derive(Clone)]
pub(crate) struct DynRecord {
    pub key: DynData,
    pub value: DynData,
    pub timestamp_ms: i64,
}

/// A record a task writes out: to a sink topic, a repartition topic or a
/// changelog. `topic` is the full name (internal topics prefixed with the
/// application id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    pub topic: String,
    /// Set for changelogs (the task's partition); otherwise the producer
    /// partitions by key.
    pub partition: Option<i32>,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub timestamp_ms: i64,
    /// Only dead-letter records carry headers (the error's details);
    /// record headers are not carried through a topology yet.
    pub headers: Vec<(String, Bytes)>,
}

#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    pub node: usize,
    pub id: PunctuationId,
    pub interval_ms: i64,
    pub kind: PunctuationType,
    /// When it is next due; for stream time, unset until a record sets the
    /// task's stream time.
    pub next_ms: Option<i64>,
}

pub(crate) type StoreMap = BTreeMap<String, Box<dyn StateStore>>;

/// The global tables' stores: one set per application instance, read by
/// every task. Locked only for a lookup or an update, never across an await.
pub(crate) type GlobalStores = Arc<std::sync::Mutex<StoreMap>>;

/// A task's mutable state, shared by its nodes while they run.
pub(crate) struct TaskState {
    pub application_id: String,
    pub partition: i32,
    pub stores: StoreMap,
    pub out: Vec<OutRecord>,
    /// The largest record timestamp seen by the task; -1 before the first.
    pub stream_time_ms: i64,
    pub wall_clock_ms: i64,
    pub schedules: Vec<Schedule>,
    /// Where the record being processed came from (topic, offset).
    pub current: Option<(String, i64)>,
    pub global: GlobalStores,
}

/// What a processor sees of its task: forward to children, stores, time
/// and schedules. Typed by what the processor forwards.
pub struct ProcessorContext<'a, K, V> {
    pub(crate) node: usize,
    pub(crate) node_name: &'a str,
    pub(crate) children: &'a [(String, usize)],
    pub(crate) forwarded: &'a mut Vec<(usize, DynRecord)>,
    pub(crate) state: &'a mut TaskState,
    pub(crate) _types: PhantomData<fn(K, V)>,
}

impl<K, V> std::fmt::Debug for ProcessorContext<'_, K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessorContext").field("node", &self.node_name).finish()
    }
}

impl<'a, K: Data, V: Data> ProcessorContext<'a, K, V> {
    /// Sends a record to every child (each runs it before `forward` returns
    /// to the caller's caller: depth first, as Kafka Streams).
    pub fn forward(&mut self, record: Record<K, V>) {
        let dyn_record = to_dyn(record);
        for (_, child) in self.children {
            self.forwarded.push((*child, dyn_record.clone()));
        }
    }

    /// Sends a record to the named child only.
    pub fn forward_to(&mut self, child_name: &str, record: Record<K, V>) -> Result<(), StreamsError> {
        let child = self
            .children
            .iter()
            .find(|(name, _)| name == child_name)
            .map(|(_, index)| *index)
            .ok_or_else(|| StreamsError::Topology(format!("{} has no child {child_name:?}", self.node_name)))?;
        self.forwarded.push((child, to_dyn(record)));
        Ok(())
    }
}

impl<'a, K, V> ProcessorContext<'a, K, V> {
    /// A store this processor is connected to, as its concrete type
    /// (`KeyValueStore<K, V>`, `WindowStore<K, V>`).
    pub fn get_state_store<S: StateStore>(&mut self, name: &str) -> Result<&mut S, StreamsError> {
        let store = self.state.stores.get_mut(name).ok_or_else(|| StreamsError::Store {
            name: name.to_string(),
            reason: format!("not connected to processor {}", self.node_name),
        })?;
        store.as_any_mut().downcast_mut::<S>().ok_or_else(|| StreamsError::Store {
            name: name.to_string(),
            reason: format!("is not a {}", std::any::type_name::<S>()),
        })
    }

    /// The largest record timestamp the task has seen (this record's
    /// included); -1 before any.
    pub fn stream_time_ms(&self) -> i64 {
        self.state.stream_time_ms
    }

    pub fn wall_clock_ms(&self) -> i64 {
        self.state.wall_clock_ms
    }

    pub fn partition(&self) -> i32 {
        self.state.partition
    }

    pub fn application_id(&self) -> &str {
        &self.state.application_id
    }

    /// The topic and offset of the record being processed (None in a
    /// punctuation).
    pub fn record_source(&self) -> Option<(&str, i64)> {
        self.state.current.as_ref().map(|(topic, offset)| (topic.as_str(), *offset))
    }

    /// Calls this processor's `punctuate` every `interval_ms` of stream
    /// time or wall-clock time.
    pub fn schedule(&mut self, interval_ms: i64, kind: PunctuationType) -> Result<PunctuationId, StreamsError> {
        if interval_ms < 1 {
            return Err(StreamsError::Topology(format!("punctuation interval {interval_ms} ms must be at least 1")));
        }
        let id = PunctuationId(self.state.schedules.len());
        let next_ms = match kind {
            PunctuationType::WallClockTime => Some(self.state.wall_clock_ms.saturating_add(interval_ms)),
            PunctuationType::StreamTime if self.state.stream_time_ms >= 0 => Some(self.state.stream_time_ms),
            PunctuationType::StreamTime => None,
        };
        self.state.schedules.push(Schedule { node: self.node, id, interval_ms, kind, next_ms });
        Ok(id)
    }

    /// The same context, typed for what another processor forwards (the
    /// adapter of a typed processor makes its view with this).
    pub(crate) fn retype<K2, V2>(&mut self) -> ProcessorContext<'_, K2, V2> {
        ProcessorContext {
            node: self.node,
            node_name: self.node_name,
            children: self.children,
            forwarded: &mut *self.forwarded,
            state: &mut *self.state,
            _types: PhantomData,
        }
    }
}

pub(crate) fn to_dyn<K: Data, V: Data>(record: Record<K, V>) -> DynRecord {
    DynRecord { key: Arc::new(record.key), value: Arc::new(record.value), timestamp_ms: record.timestamp_ms }
}

/// A node of a task's graph, its record types erased.
pub(crate) trait Node: Send {
    fn init(&mut self, ctx: &mut ProcessorContext<'_, (), ()>) -> Result<(), StreamsError>;
    fn process(&mut self, ctx: &mut ProcessorContext<'_, (), ()>, record: DynRecord) -> Result<(), StreamsError>;
    fn punctuate(
        &mut self,
        ctx: &mut ProcessorContext<'_, (), ()>,
        id: PunctuationId,
        timestamp_ms: i64,
    ) -> Result<(), StreamsError>;
}

/// A typed processor as a node: checks each record's types on the way in.
pub(crate) struct ProcessorNode<KIn, VIn, KOut, VOut, P> {
    pub processor: P,
    pub _types: PhantomData<fn(KIn, VIn, KOut, VOut)>,
}

impl<KIn, VIn, KOut, VOut, P> Node for ProcessorNode<KIn, VIn, KOut, VOut, P>
where
    KIn: Data,
    VIn: Data,
    KOut: Data,
    VOut: Data,
    P: Processor<KIn, VIn, KOut, VOut>,
{
    fn init(&mut self, ctx: &mut ProcessorContext<'_, (), ()>) -> Result<(), StreamsError> {
        self.processor.init(&mut ctx.retype())
    }

    fn process(&mut self, ctx: &mut ProcessorContext<'_, (), ()>, record: DynRecord) -> Result<(), StreamsError> {
        let mismatch = |what: &str, expected: &str| {
            StreamsError::Topology(format!("{} takes {what} of type {expected}, got another type", ctx.node_name))
        };
        let key =
            record.key.downcast_ref::<KIn>().ok_or_else(|| mismatch("keys", std::any::type_name::<KIn>()))?.clone();
        let value =
            record.value.downcast_ref::<VIn>().ok_or_else(|| mismatch("values", std::any::type_name::<VIn>()))?.clone();
        self.processor.process(&mut ctx.retype(), Record { key, value, timestamp_ms: record.timestamp_ms })
    }

    fn punctuate(
        &mut self,
        ctx: &mut ProcessorContext<'_, (), ()>,
        id: PunctuationId,
        timestamp_ms: i64,
    ) -> Result<(), StreamsError> {
        self.processor.punctuate(&mut ctx.retype(), id, timestamp_ms)
    }
}
