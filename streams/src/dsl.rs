//! The DSL, with Kafka Streams' names and semantics: `StreamsBuilder`,
//! `KStream`, `KGroupedStream`, `TimeWindowedKStream`, `KTable`. Every
//! operation adds a processor (built on the Processor API) to a
//! `Topology`, named as Kafka names them (`KSTREAM-FILTER-0000000001`).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::Arc;

use crate::error::StreamsError;
use crate::processor::{Data, Processor, ProcessorContext, Record, StoreMap};
use crate::serde::{SerdeRef, Serdes};
use crate::store::{
    KeyValueStore, KeyValueStoreSupplier, SessionStore, SessionStoreSupplier, Stores, WindowStore, WindowStoreSupplier,
};
use crate::topology::{TimestampExtractor, TopicName, Topology};
use crate::window::{JoinWindows, SessionWindows, SlidingWindows, TimeWindowedSerde, TimeWindows, Window, Windowed};

/// How a source topic is read: serdes and, optionally, event time from
/// the record's bytes rather than its timestamp.
pub struct Consumed<K, V> {
    key_serde: SerdeRef<K>,
    value_serde: SerdeRef<V>,
    extractor: Option<TimestampExtractor>,
}

impl<K, V> Consumed<K, V> {
    pub fn with(key_serde: SerdeRef<K>, value_serde: SerdeRef<V>) -> Self {
        Consumed { key_serde, value_serde, extractor: None }
    }
    #[must_use]
    pub fn with_timestamp_extractor(mut self, extractor: TimestampExtractor) -> Self {
        self.extractor = Some(extractor);
        self
    }
}

/// How records are written to a topic.
pub struct Produced<K, V> {
    key_serde: SerdeRef<K>,
    value_serde: SerdeRef<V>,
}

impl<K, V> Produced<K, V> {
    pub fn with(key_serde: SerdeRef<K>, value_serde: SerdeRef<V>) -> Self {
        Produced { key_serde, value_serde }
    }
}

/// Serdes for a grouping (needed when the key changed and records go
/// through a repartition topic, and for the store), and an optional name
/// for the repartition topic (`<application.id>-<name>-repartition`).
pub struct Grouped<K, V> {
    key_serde: SerdeRef<K>,
    value_serde: SerdeRef<V>,
    name: Option<String>,
}

impl<K, V> Grouped<K, V> {
    pub fn with(key_serde: SerdeRef<K>, value_serde: SerdeRef<V>) -> Self {
        Grouped { key_serde, value_serde, name: None }
    }
    #[must_use]
    pub fn with_name(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }
}

/// Serdes and an optional name for `KStream::repartition`.
pub struct Repartitioned<K, V> {
    key_serde: SerdeRef<K>,
    value_serde: SerdeRef<V>,
    name: Option<String>,
}

impl<K, V> Repartitioned<K, V> {
    pub fn with(key_serde: SerdeRef<K>, value_serde: SerdeRef<V>) -> Self {
        Repartitioned { key_serde, value_serde, name: None }
    }
    #[must_use]
    pub fn with_name(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }
}

/// The store behind a table: its name (else one is generated), the value
/// serde (`aggregate` needs one; `count` and `reduce` know theirs) and
/// whether it has a changelog.
pub struct Materialized<V> {
    name: Option<String>,
    value_serde: Option<SerdeRef<V>>,
    logging: bool,
    store_type: StoreType,
    /// A window or session store's retention (None: the window's size, or
    /// the session gap, plus the grace period, as Kafka's default).
    retention_ms: Option<i64>,
}

/// Where a DSL key-value store keeps its entries, as Kafka's
/// `Materialized.StoreType` (`ROCKS_DB` is `Persistent` here: redb).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoreType {
    /// On disk under `state.dir`, restored from its checkpoint (the
    /// default, as Kafka Streams' RocksDB stores).
    #[default]
    Persistent,
    /// In memory, restored from its changelog's start.
    InMemory,
}

impl<V> Default for Materialized<V> {
    fn default() -> Self {
        Materialized {
            name: None,
            value_serde: None,
            logging: true,
            store_type: StoreType::default(),
            retention_ms: None,
        }
    }
}

impl<V> Materialized<V> {
    /// A store named `name` (its changelog: `<application.id>-<name>-changelog`).
    pub fn as_(name: &str) -> Self {
        Materialized { name: Some(name.to_string()), ..Materialized::default() }
    }
    #[must_use]
    pub fn with_value_serde(mut self, serde: SerdeRef<V>) -> Self {
        self.value_serde = Some(serde);
        self
    }
    #[must_use]
    pub fn with_logging_disabled(mut self) -> Self {
        self.logging = false;
        self
    }
    /// Persistent (the default) or in memory, as Kafka's `withStoreType`.
    #[must_use]
    pub fn with_store_type(mut self, store_type: StoreType) -> Self {
        self.store_type = store_type;
        self
    }
    /// How long a window or session store keeps windows, as Kafka's
    /// `withRetention`: at least the window's size (or the session gap)
    /// plus the grace period, else `build` fails.
    #[must_use]
    pub fn with_retention(mut self, retention_ms: i64) -> Self {
        self.retention_ms = Some(retention_ms);
        self
    }
    /// A windowed store's retention: the one set, or `least_ms` (size or
    /// gap plus grace); one shorter than `least_ms` is an error, as
    /// Kafka's.
    fn window_retention_ms(&self, store: &str, least_ms: i64) -> Result<i64, StreamsError> {
        match self.retention_ms {
            None => Ok(least_ms),
            Some(retention_ms) if retention_ms >= least_ms => Ok(retention_ms),
            Some(retention_ms) => Err(StreamsError::Config(format!(
                "the retention of store {store} ({retention_ms} ms) is shorter than its window plus the grace period ({least_ms} ms)"
            ))),
        }
    }
    fn supplier(&self, store: &str) -> KeyValueStoreSupplier {
        match self.store_type {
            StoreType::Persistent => Stores::persistent_key_value_store(store),
            StoreType::InMemory => Stores::in_memory_key_value_store(store),
        }
    }
    fn window_supplier(&self, store: &str) -> WindowStoreSupplier {
        match self.store_type {
            StoreType::Persistent => Stores::persistent_window_store(store),
            StoreType::InMemory => Stores::in_memory_window_store(store),
        }
    }
    fn session_supplier(&self, store: &str) -> SessionStoreSupplier {
        match self.store_type {
            StoreType::Persistent => Stores::persistent_session_store(store),
            StoreType::InMemory => Stores::in_memory_session_store(store),
        }
    }
}

/// A table update: the new value (None: deleted) and the one it replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change<V> {
    pub new: Option<V>,
    pub old: Option<V>,
}

struct BuildState {
    topology: Topology,
    next_index: usize,
    /// The first error; `build` returns it (the DSL's methods chain, so
    /// they do not return results).
    error: Option<StreamsError>,
}

type Builder = Rc<RefCell<BuildState>>;

fn next_name(builder: &Builder, prefix: &str) -> String {
    let mut state = builder.borrow_mut();
    let name = format!("{prefix}{:010}", state.next_index);
    state.next_index += 1;
    name
}

fn connect_stores(builder: &Builder, processor: &str, stores: &[String]) {
    let names: Vec<&str> = stores.iter().map(String::as_str).collect();
    let result = builder.borrow_mut().topology.connect_processor_and_state_stores(processor, &names).map(|_| ());
    record_error(builder, result);
}

fn record_error(builder: &Builder, result: Result<(), StreamsError>) {
    if let Err(error) = result {
        builder.borrow_mut().error.get_or_insert(error);
    }
}

/// Adds the store `store` that `processor` writes, its changelog left off
/// when `materialized` says so.
fn add_materialized_store<V>(
    builder: &Builder,
    store: crate::store::StoreBuilder,
    materialized: &Materialized<V>,
    processor: &str,
) {
    let store = if materialized.logging { store } else { store.with_logging_disabled() };
    let result = builder.borrow_mut().topology.add_state_store(store, &[processor]).map(|_| ());
    record_error(builder, result);
}

fn add_processor<KIn, VIn, KOut, VOut, P, F>(builder: &Builder, name: &str, supplier: F, parents: &[&str])
where
    KIn: Data,
    VIn: Data,
    KOut: Data,
    VOut: Data,
    P: Processor<KIn, VIn, KOut, VOut> + 'static,
    F: Fn() -> P + Send + Sync + 'static,
{
    let result = builder.borrow_mut().topology.add_processor(name, supplier, parents).map(|_| ());
    record_error(builder, result);
}

/// A stateless processor from a function of the record and an output.
type StatelessFn<KIn, VIn, KOut, VOut> =
    Arc<dyn Fn(Record<KIn, VIn>, &mut dyn FnMut(Record<KOut, VOut>)) + Send + Sync>;

struct Stateless<KIn, VIn, KOut, VOut> {
    function: StatelessFn<KIn, VIn, KOut, VOut>,
}

impl<KIn: Data, VIn: Data, KOut: Data, VOut: Data> Processor<KIn, VIn, KOut, VOut> for Stateless<KIn, VIn, KOut, VOut> {
    fn process(
        &mut self,
        ctx: &mut ProcessorContext<'_, KOut, VOut>,
        record: Record<KIn, VIn>,
    ) -> Result<(), StreamsError> {
        (self.function)(record, &mut |out| ctx.forward(out));
        Ok(())
    }
}

/// Builds a topology with the DSL.
#[derive(Clone)]
pub struct StreamsBuilder {
    builder: Builder,
}

impl std::fmt::Debug for StreamsBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamsBuilder")
    }
}

impl Default for StreamsBuilder {
    fn default() -> Self {
        StreamsBuilder::new()
    }
}

impl StreamsBuilder {
    pub fn new() -> Self {
        StreamsBuilder {
            builder: Rc::new(RefCell::new(BuildState { topology: Topology::new(), next_index: 0, error: None })),
        }
    }

    /// A stream of the records of `topic`.
    pub fn stream<K: Data, V: Data>(&self, topic: &str, consumed: Consumed<K, V>) -> KStream<K, V> {
        let name = next_name(&self.builder, "KSTREAM-SOURCE-");
        let result = self
            .builder
            .borrow_mut()
            .topology
            .add_source_inner(
                &name,
                vec![TopicName::user(topic)],
                consumed.key_serde,
                consumed.value_serde,
                consumed.extractor,
            )
            .map(|_| ());
        record_error(&self.builder, result);
        KStream::at(&self.builder, name, false)
    }

    /// A table of the latest value per key of `topic`: a null value (a
    /// tombstone) deletes the key. Materialized in a store (by default
    /// `<topic>-STATE-STORE-<n>`) with a changelog.
    pub fn table<K: Data, V: Data>(
        &self,
        topic: &str,
        consumed: Consumed<K, V>,
        materialized: Materialized<V>,
    ) -> KTable<K, V> {
        let source = next_name(&self.builder, "KSTREAM-SOURCE-");
        let store =
            materialized.name.clone().unwrap_or_else(|| next_name(&self.builder, &format!("{topic}-STATE-STORE-")));
        let processor = next_name(&self.builder, "KTABLE-SOURCE-");
        let value_serde = consumed.value_serde.clone();
        let result = self
            .builder
            .borrow_mut()
            .topology
            .add_source_inner(
                &source,
                vec![TopicName::user(topic)],
                consumed.key_serde.clone(),
                Serdes::nullable(consumed.value_serde),
                consumed.extractor,
            )
            .map(|_| ());
        record_error(&self.builder, result);
        let store_name = store.clone();
        add_processor(
            &self.builder,
            &processor,
            move || TableSource::<K, V> { store: store_name.clone(), _types: PhantomData },
            &[&source],
        );
        let store_builder =
            Stores::key_value_store_builder(materialized.supplier(&store), consumed.key_serde, value_serde);
        add_materialized_store(&self.builder, store_builder, &materialized, &processor);
        KTable::materialized(&self.builder, processor, store)
    }

    /// A table of every partition of `topic`, in every instance of the
    /// application (Kafka's `GlobalKTable`): no co-partitioning needed to
    /// join with it. Its store is filled from the topic itself (its
    /// changelog) before processing starts and kept current while it runs.
    /// Values are checked by the serde when a join reads them.
    pub fn global_table<K: Data, V: Data>(
        &self,
        topic: &str,
        consumed: Consumed<K, V>,
        materialized: Materialized<V>,
    ) -> GlobalKTable<K, V> {
        let source_name = next_name(&self.builder, "KSTREAM-SOURCE-");
        let store =
            materialized.name.clone().unwrap_or_else(|| next_name(&self.builder, &format!("{topic}-STATE-STORE-")));
        let processor_name = next_name(&self.builder, "KTABLE-SOURCE-");
        let builder =
            Stores::key_value_store_builder(&store, consumed.key_serde, consumed.value_serde).with_logging_disabled();
        {
            let mut state = self.builder.borrow_mut();
            let taken =
                state.topology.global_stores.iter().any(|global| global.topic == topic || global.builder.name == store)
                    || state.topology.stores.contains_key(&store);
            if taken {
                let error = StreamsError::Topology(format!(
                    "global table {topic:?} (store {store:?}) is already in the topology"
                ));
                state.error.get_or_insert(error);
            }
            state.topology.global_stores.push(crate::topology::GlobalStore {
                topic: topic.to_string(),
                builder,
                source_name,
                processor_name,
            });
        }
        let store_name = store.clone();
        let getter: GetterFn<K, V> = Arc::new(move |stores, key| {
            let store = stores
                .get(&store_name)
                .and_then(|store| store.as_any().downcast_ref::<KeyValueStore<K, V>>())
                .ok_or_else(|| StreamsError::Store {
                    name: store_name.clone(),
                    reason: "not the global table's store".into(),
                })?;
            store.get(key)
        });
        GlobalKTable { getter }
    }

    /// The topology, or the first mistake made building it.
    pub fn build(self) -> Result<Topology, StreamsError> {
        let mut state = self.builder.borrow_mut();
        if let Some(error) = state.error.take() {
            return Err(error);
        }
        Ok(std::mem::take(&mut state.topology))
    }
}

/// A table of a whole topic, in every instance (see
/// `StreamsBuilder::global_table`).
pub struct GlobalKTable<K, V> {
    getter: GetterFn<K, V>,
}

impl<K, V> std::fmt::Debug for GlobalKTable<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GlobalKTable")
    }
}

/// A record stream.
pub struct KStream<K, V> {
    builder: Builder,
    node: String,
    /// The key may have changed since the source: a grouping must go
    /// through a repartition topic first.
    key_changed: bool,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Clone for KStream<K, V> {
    fn clone(&self) -> Self {
        KStream {
            builder: Rc::clone(&self.builder),
            node: self.node.clone(),
            key_changed: self.key_changed,
            _types: PhantomData,
        }
    }
}

impl<K, V> std::fmt::Debug for KStream<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KStream").field("node", &self.node).finish()
    }
}

impl<K: Data, V: Data> KStream<K, V> {
    fn at(builder: &Builder, node: String, key_changed: bool) -> Self {
        KStream { builder: Rc::clone(builder), node, key_changed, _types: PhantomData }
    }

    fn stateless<K2: Data, V2: Data>(
        &self,
        prefix: &str,
        key_changed: bool,
        function: impl Fn(Record<K, V>, &mut dyn FnMut(Record<K2, V2>)) + Send + Sync + 'static,
    ) -> KStream<K2, V2> {
        let name = next_name(&self.builder, prefix);
        let function: StatelessFn<K, V, K2, V2> = Arc::new(function);
        add_processor(&self.builder, &name, move || Stateless { function: Arc::clone(&function) }, &[&self.node]);
        KStream::at(&self.builder, name, self.key_changed || key_changed)
    }

    /// The name of this stream's last node (as `describe` shows it).
    pub fn node_name(&self) -> &str {
        &self.node
    }

    pub fn filter(&self, predicate: impl Fn(&K, &V) -> bool + Send + Sync + 'static) -> KStream<K, V> {
        self.stateless("KSTREAM-FILTER-", false, move |record, out| {
            if predicate(&record.key, &record.value) {
                out(record);
            }
        })
    }

    pub fn filter_not(&self, predicate: impl Fn(&K, &V) -> bool + Send + Sync + 'static) -> KStream<K, V> {
        self.stateless("KSTREAM-FILTER-", false, move |record, out| {
            if !predicate(&record.key, &record.value) {
                out(record);
            }
        })
    }

    /// A new key and value per record (the key changes: a later grouping
    /// repartitions).
    pub fn map<K2: Data, V2: Data>(
        &self,
        mapper: impl Fn(&K, &V) -> (K2, V2) + Send + Sync + 'static,
    ) -> KStream<K2, V2> {
        self.stateless("KSTREAM-MAP-", true, move |record, out| {
            let (key, value) = mapper(&record.key, &record.value);
            out(Record::new(key, value, record.timestamp_ms));
        })
    }

    pub fn map_values<V2: Data>(&self, mapper: impl Fn(&V) -> V2 + Send + Sync + 'static) -> KStream<K, V2> {
        self.stateless("KSTREAM-MAPVALUES-", false, move |record, out| {
            let value = mapper(&record.value);
            out(record.with_value(value));
        })
    }

    pub fn flat_map<K2: Data, V2: Data, I>(
        &self,
        mapper: impl Fn(&K, &V) -> I + Send + Sync + 'static,
    ) -> KStream<K2, V2>
    where
        I: IntoIterator<Item = (K2, V2)>,
    {
        self.stateless("KSTREAM-FLATMAP-", true, move |record, out| {
            for (key, value) in mapper(&record.key, &record.value) {
                out(Record::new(key, value, record.timestamp_ms));
            }
        })
    }

    pub fn flat_map_values<V2: Data, I>(&self, mapper: impl Fn(&V) -> I + Send + Sync + 'static) -> KStream<K, V2>
    where
        I: IntoIterator<Item = V2>,
    {
        self.stateless("KSTREAM-FLATMAPVALUES-", false, move |record, out| {
            for value in mapper(&record.value) {
                out(Record::new(record.key.clone(), value, record.timestamp_ms));
            }
        })
    }

    pub fn select_key<K2: Data>(&self, mapper: impl Fn(&K, &V) -> K2 + Send + Sync + 'static) -> KStream<K2, V> {
        self.stateless("KSTREAM-KEY-SELECT-", true, move |record, out| {
            let key = mapper(&record.key, &record.value);
            out(record.with_key(key));
        })
    }

    /// Calls `action` on each record and passes it on unchanged.
    pub fn peek(&self, action: impl Fn(&K, &V) + Send + Sync + 'static) -> KStream<K, V> {
        self.stateless("KSTREAM-PEEK-", false, move |record, out| {
            action(&record.key, &record.value);
            out(record);
        })
    }

    /// Calls `action` on each record; a terminal operation.
    pub fn foreach(&self, action: impl Fn(&K, &V) + Send + Sync + 'static) {
        let _: KStream<K, V> = self.stateless("KSTREAM-FOREACH-", false, move |record, _out| {
            action(&record.key, &record.value);
        });
    }

    /// Writes the stream to `topic`.
    pub fn to(&self, topic: &str, produced: Produced<K, V>) {
        let name = next_name(&self.builder, "KSTREAM-SINK-");
        let result = self
            .builder
            .borrow_mut()
            .topology
            .add_sink_inner(&name, TopicName::user(topic), produced.key_serde, produced.value_serde, &[&self.node])
            .map(|_| ());
        record_error(&self.builder, result);
    }

    /// One stream of both streams' records.
    pub fn merge(&self, other: &KStream<K, V>) -> KStream<K, V> {
        let name = next_name(&self.builder, "KSTREAM-MERGE-");
        let function: StatelessFn<K, V, K, V> = Arc::new(|record, out| out(record));
        add_processor(
            &self.builder,
            &name,
            move || Stateless { function: Arc::clone(&function) },
            &[&self.node, &other.node],
        );
        KStream::at(&self.builder, name, self.key_changed || other.key_changed)
    }

    /// Splits the stream by predicates (`branch`), each record going to the
    /// first branch it matches, as Kafka's `split()`.
    pub fn split(&self) -> BranchedKStream<K, V> {
        let name = next_name(&self.builder, "KSTREAM-BRANCH-");
        BranchedKStream { stream: self.clone(), prefix: name, branches: Vec::new() }
    }

    /// Sends the stream through a repartition topic
    /// (`<application.id>-<name>-repartition`), so that records are
    /// partitioned by their current key.
    pub fn repartition(&self, repartitioned: Repartitioned<K, V>) -> KStream<K, V> {
        let base = repartitioned.name.unwrap_or_else(|| next_name(&self.builder, "KSTREAM-REPARTITION-"));
        let source = through_repartition_topic(
            &self.builder,
            &self.node,
            &base,
            repartitioned.key_serde,
            repartitioned.value_serde,
        );
        KStream::at(&self.builder, source, false)
    }

    pub fn group_by_key(&self, grouped: Grouped<K, V>) -> KGroupedStream<K, V> {
        KGroupedStream { stream: self.clone(), grouped }
    }

    /// Groups by a new key: the records go through a repartition topic.
    pub fn group_by<K2: Data>(
        &self,
        selector: impl Fn(&K, &V) -> K2 + Send + Sync + 'static,
        grouped: Grouped<K2, V>,
    ) -> KGroupedStream<K2, V> {
        KGroupedStream { stream: self.select_key(selector), grouped }
    }

    /// Each record joined with the table's value for its key; records
    /// whose key is not in the table are dropped.
    pub fn join<VT: Data, VR: Data>(
        &self,
        table: &KTable<K, VT>,
        joiner: impl Fn(&V, &VT) -> VR + Send + Sync + 'static,
    ) -> KStream<K, VR> {
        self.join_inner(
            table,
            "KSTREAM-JOIN-",
            Arc::new(move |value, table_value| table_value.map(|tv| joiner(value, tv))),
        )
    }

    /// Each record joined with the table's value for its key, or `None`.
    pub fn left_join<VT: Data, VR: Data>(
        &self,
        table: &KTable<K, VT>,
        joiner: impl Fn(&V, Option<&VT>) -> VR + Send + Sync + 'static,
    ) -> KStream<K, VR> {
        self.join_inner(
            table,
            "KSTREAM-LEFTJOIN-",
            Arc::new(move |value, table_value| Some(joiner(value, table_value))),
        )
    }

    /// Each record joined with the global table's value for the key
    /// `key_mapper` picks from it; records with no match are dropped.
    pub fn join_global<KG: Data, VG: Data, VR: Data>(
        &self,
        table: &GlobalKTable<KG, VG>,
        key_mapper: impl Fn(&K, &V) -> KG + Send + Sync + 'static,
        joiner: impl Fn(&V, &VG) -> VR + Send + Sync + 'static,
    ) -> KStream<K, VR> {
        let joiner: GlobalJoiner<V, VG, VR> = Arc::new(move |value, found| found.map(|found| joiner(value, found)));
        self.join_global_inner(table, "KSTREAM-JOIN-", Arc::new(key_mapper), joiner)
    }

    /// As `join_global`, but records with no match are joined with `None`.
    pub fn left_join_global<KG: Data, VG: Data, VR: Data>(
        &self,
        table: &GlobalKTable<KG, VG>,
        key_mapper: impl Fn(&K, &V) -> KG + Send + Sync + 'static,
        joiner: impl Fn(&V, Option<&VG>) -> VR + Send + Sync + 'static,
    ) -> KStream<K, VR> {
        let joiner: GlobalJoiner<V, VG, VR> = Arc::new(move |value, found| Some(joiner(value, found)));
        self.join_global_inner(table, "KSTREAM-LEFTJOIN-", Arc::new(key_mapper), joiner)
    }

    fn join_global_inner<KG: Data, VG: Data, VR: Data>(
        &self,
        table: &GlobalKTable<KG, VG>,
        prefix: &str,
        key_mapper: KeyMapper<K, V, KG>,
        joiner: GlobalJoiner<V, VG, VR>,
    ) -> KStream<K, VR> {
        let name = next_name(&self.builder, prefix);
        let getter = Arc::clone(&table.getter);
        add_processor(
            &self.builder,
            &name,
            move || GlobalJoin {
                getter: Arc::clone(&getter),
                key_mapper: Arc::clone(&key_mapper),
                joiner: Arc::clone(&joiner),
            },
            &[&self.node],
        );
        KStream::at(&self.builder, name, self.key_changed)
    }

    /// The inner windowed join of two streams on their key, as Kafka's
    /// `KStream.join(KStream, ValueJoiner, JoinWindows, StreamJoined)`:
    /// each pair of records with the same key whose timestamps are within
    /// `windows` is joined once, when the later of the two arrives, stamped
    /// with the later timestamp. Both streams are kept in window stores
    /// (with changelogs) for the window plus grace. The streams must be
    /// co-partitioned: a changed key needs `repartition()` first.
    pub fn join_stream<V2: Data, VR: Data>(
        &self,
        other: &KStream<K, V2>,
        joiner: impl Fn(&V, &V2) -> VR + Send + Sync + 'static,
        windows: JoinWindows,
        joined: StreamJoined<K, V, V2>,
    ) -> KStream<K, VR> {
        let this_name = next_name(&self.builder, "KSTREAM-JOINTHIS-");
        let other_name = next_name(&self.builder, "KSTREAM-JOINOTHER-");
        let merge_name = next_name(&self.builder, "KSTREAM-MERGE-");
        if self.key_changed || other.key_changed {
            let error = format!("{this_name}: a stream's key changed before a join; repartition() it first");
            record_error(&self.builder, Err(StreamsError::Topology(error)));
        }
        let base = joined.name.clone().unwrap_or_else(|| this_name.clone());
        let (this_store, other_store) = (format!("{base}-this-join-store"), format!("{base}-other-join-store"));
        let retention_ms = windows.before_ms.saturating_add(windows.after_ms).saturating_add(windows.grace_ms);
        let joiner: JoinSide<V, V2, VR> = Arc::new(joiner);
        let this_joiner = Arc::clone(&joiner);
        let this_side: JoinSide<V, V2, VR> = Arc::new(move |mine, theirs| this_joiner(mine, theirs));
        let other_side: JoinSide<V2, V, VR> = Arc::new(move |mine, theirs| joiner(theirs, mine));
        let (mine, theirs) = (this_store.clone(), other_store.clone());
        add_processor(
            &self.builder,
            &this_name,
            move || StreamJoin::<K, V, V2, VR> {
                own: mine.clone(),
                other: theirs.clone(),
                windows,
                join: Arc::clone(&this_side),
                _types: PhantomData,
            },
            &[&self.node],
        );
        let (mine, theirs) = (other_store.clone(), this_store.clone());
        let reversed = windows.reversed();
        add_processor(
            &self.builder,
            &other_name,
            move || StreamJoin::<K, V2, V, VR> {
                own: mine.clone(),
                other: theirs.clone(),
                windows: reversed,
                join: Arc::clone(&other_side),
                _types: PhantomData,
            },
            &[&other.node],
        );
        let stores = (this_store.as_str(), other_store.as_str());
        add_join_stores(&self.builder, stores, retention_ms, joined, [&this_name, &other_name]);
        let pass: StatelessFn<K, VR, K, VR> = Arc::new(|record, out| out(record));
        add_processor(
            &self.builder,
            &merge_name,
            move || Stateless { function: Arc::clone(&pass) },
            &[&this_name, &other_name],
        );
        KStream::at(&self.builder, merge_name, false)
    }

    fn join_inner<VT: Data, VR: Data>(
        &self,
        table: &KTable<K, VT>,
        prefix: &str,
        joiner: Joiner<V, VT, VR>,
    ) -> KStream<K, VR> {
        let name = next_name(&self.builder, prefix);
        if self.key_changed {
            record_error(
                &self.builder,
                Err(StreamsError::Topology(format!(
                    "{name}: the stream's key changed before a join; repartition() it first so that it is co-partitioned with the table"
                ))),
            );
        }
        let Some((stores, getter)) = table.getter.clone() else {
            record_error(
                &self.builder,
                Err(StreamsError::Topology(format!("{name}: the table has no store to join with"))),
            );
            return KStream::at(&self.builder, name, false);
        };
        add_processor(
            &self.builder,
            &name,
            move || StreamTableJoin { getter: Arc::clone(&getter), joiner: Arc::clone(&joiner) },
            &[&self.node],
        );
        connect_stores(&self.builder, &name, &stores);
        KStream::at(&self.builder, name, false)
    }
}

/// Adds a sink to `<base>-repartition` after `parent` and a source reading
/// it; returns the source's name.
fn through_repartition_topic<K: Data, V: Data>(
    builder: &Builder,
    parent: &str,
    base: &str,
    key_serde: SerdeRef<K>,
    value_serde: SerdeRef<V>,
) -> String {
    let topic = TopicName { name: format!("{base}-repartition"), internal: true };
    let sink = next_name(builder, "KSTREAM-SINK-");
    let source = next_name(builder, "KSTREAM-SOURCE-");
    let mut state = builder.borrow_mut();
    let result = state
        .topology
        .add_sink_inner(&sink, topic.clone(), key_serde.clone(), value_serde.clone(), &[parent])
        .and_then(|_| state.topology.add_source_inner(&source, vec![topic], key_serde, value_serde, None))
        .map(|_| ());
    drop(state);
    record_error(builder, result);
    source
}

/// `split()` in progress: add branches, then end with a default branch or none.
pub struct BranchedKStream<K, V> {
    stream: KStream<K, V>,
    prefix: String,
    branches: Vec<(String, BranchPredicate<K, V>)>,
}

type BranchPredicate<K, V> = Arc<dyn Fn(&K, &V) -> bool + Send + Sync>;

impl<K, V> std::fmt::Debug for BranchedKStream<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BranchedKStream").field("prefix", &self.prefix).finish()
    }
}

impl<K: Data, V: Data> BranchedKStream<K, V> {
    /// Records matching `predicate` (and no earlier branch) go to the
    /// stream named `<prefix><name>` in the result.
    #[must_use]
    pub fn branch(mut self, name: &str, predicate: impl Fn(&K, &V) -> bool + Send + Sync + 'static) -> Self {
        self.branches.push((format!("{}{name}", self.prefix), Arc::new(predicate)));
        self
    }

    /// Records matching no branch go to `<prefix><name>`.
    pub fn default_branch(self, name: &str) -> BTreeMap<String, KStream<K, V>> {
        let default = format!("{}{name}", self.prefix);
        self.finish(Some(default))
    }

    /// Records matching no branch are dropped.
    pub fn no_default_branch(self) -> BTreeMap<String, KStream<K, V>> {
        self.finish(None)
    }

    fn finish(self, default: Option<String>) -> BTreeMap<String, KStream<K, V>> {
        let builder = &self.stream.builder;
        let branches = self.branches.clone();
        let default_child = default.clone();
        add_processor(
            builder,
            &self.prefix,
            move || Branch { branches: branches.clone(), default: default_child.clone() },
            &[&self.stream.node],
        );
        let mut streams = BTreeMap::new();
        for name in self.branches.iter().map(|(name, _)| name.clone()).chain(default) {
            let function: StatelessFn<K, V, K, V> = Arc::new(|record, out| out(record));
            add_processor(builder, &name, move || Stateless { function: Arc::clone(&function) }, &[&self.prefix]);
            streams.insert(name.clone(), KStream::at(builder, name, self.stream.key_changed));
        }
        streams
    }
}

struct Branch<K, V> {
    branches: Vec<(String, BranchPredicate<K, V>)>,
    default: Option<String>,
}

impl<K: Data, V: Data> Processor<K, V, K, V> for Branch<K, V> {
    fn process(&mut self, ctx: &mut ProcessorContext<'_, K, V>, record: Record<K, V>) -> Result<(), StreamsError> {
        let chosen = self
            .branches
            .iter()
            .find(|(_, predicate)| predicate(&record.key, &record.value))
            .map(|(name, _)| name)
            .or(self.default.as_ref());
        match chosen {
            Some(child) => ctx.forward_to(child, record),
            None => Ok(()),
        }
    }
}

type Joiner<V, VT, VR> = Arc<dyn Fn(&V, Option<&VT>) -> Option<VR> + Send + Sync>;

struct StreamTableJoin<K, V, VT, VR> {
    getter: GetterFn<K, VT>,
    joiner: Joiner<V, VT, VR>,
}

impl<K: Data, V: Data, VT: Data, VR: Data> Processor<K, V, K, VR> for StreamTableJoin<K, V, VT, VR> {
    fn process(&mut self, ctx: &mut ProcessorContext<'_, K, VR>, record: Record<K, V>) -> Result<(), StreamsError> {
        let table_value = (self.getter)(&ctx.state.stores, &record.key)?;
        if let Some(joined) = (self.joiner)(&record.value, table_value.as_ref()) {
            ctx.forward(Record::new(record.key, joined, record.timestamp_ms));
        }
        Ok(())
    }
}

/// A grouped stream, ready to aggregate.
pub struct KGroupedStream<K, V> {
    stream: KStream<K, V>,
    grouped: Grouped<K, V>,
}

impl<K, V> std::fmt::Debug for KGroupedStream<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KGroupedStream").field("node", &self.stream.node).finish()
    }
}

type AggregateFn<K, V, VA> = Arc<dyn Fn(&K, &V, Option<VA>) -> VA + Send + Sync>;

impl<K: Data, V: Data> KGroupedStream<K, V> {
    /// Where the aggregation attaches: after a repartition topic if the key changed.
    fn input_node(&self, store: &str) -> String {
        if !self.stream.key_changed {
            return self.stream.node.clone();
        }
        let base = self.grouped.name.clone().unwrap_or_else(|| store.to_string());
        through_repartition_topic(
            &self.stream.builder,
            &self.stream.node,
            &base,
            self.grouped.key_serde.clone(),
            self.grouped.value_serde.clone(),
        )
    }

    fn aggregate_inner<VA: Data>(
        &self,
        prefix: &str,
        materialized: Materialized<VA>,
        value_serde: SerdeRef<VA>,
        function: AggregateFn<K, V, VA>,
    ) -> KTable<K, VA> {
        let builder = &self.stream.builder;
        let store = materialized.name.clone().unwrap_or_else(|| next_name(builder, &format!("{prefix}STATE-STORE-")));
        let input = self.input_node(&store);
        let name = next_name(builder, prefix);
        let store_name = store.clone();
        add_processor(
            builder,
            &name,
            move || Aggregate { store: store_name.clone(), function: Arc::clone(&function) },
            &[&input],
        );
        let store_builder =
            Stores::key_value_store_builder(materialized.supplier(&store), self.grouped.key_serde.clone(), value_serde);
        add_materialized_store(builder, store_builder, &materialized, &name);
        KTable::materialized(builder, name, store)
    }

    /// The number of records per key.
    pub fn count(&self, materialized: Materialized<i64>) -> KTable<K, i64> {
        let serde = materialized.value_serde.clone().unwrap_or_else(Serdes::i64);
        self.aggregate_inner("KSTREAM-AGGREGATE-", materialized, serde, Arc::new(|_, _, old| old.unwrap_or(0) + 1))
    }

    /// Combines the values per key; the first value is the start.
    pub fn reduce(
        &self,
        reducer: impl Fn(&V, &V) -> V + Send + Sync + 'static,
        materialized: Materialized<V>,
    ) -> KTable<K, V> {
        let serde = materialized.value_serde.clone().unwrap_or_else(|| self.grouped.value_serde.clone());
        self.aggregate_inner(
            "KSTREAM-REDUCE-",
            materialized,
            serde,
            Arc::new(move |_, value, old| match old {
                Some(aggregate) => reducer(&aggregate, value),
                None => value.clone(),
            }),
        )
    }

    /// Folds the values per key into an aggregate that starts at
    /// `initializer()`. `materialized` must carry the aggregate's serde.
    pub fn aggregate<VA: Data>(
        &self,
        initializer: impl Fn() -> VA + Send + Sync + 'static,
        aggregator: impl Fn(&K, &V, VA) -> VA + Send + Sync + 'static,
        materialized: Materialized<VA>,
    ) -> KTable<K, VA> {
        let Some(serde) = materialized.value_serde.clone() else {
            record_error(
                &self.stream.builder,
                Err(StreamsError::Topology("aggregate needs Materialized::with_value_serde".into())),
            );
            return KTable::materialized(&self.stream.builder, String::new(), String::new());
        };
        self.aggregate_inner(
            "KSTREAM-AGGREGATE-",
            materialized,
            serde,
            Arc::new(move |key, value, old| aggregator(key, value, old.unwrap_or_else(&initializer))),
        )
    }

    /// Groups further by time window.
    /// Groups further into sessions of activity (`SessionWindows`).
    pub fn windowed_by_session(&self, windows: SessionWindows) -> SessionWindowedKStream<K, V> {
        let grouped = Grouped {
            key_serde: self.grouped.key_serde.clone(),
            value_serde: self.grouped.value_serde.clone(),
            name: self.grouped.name.clone(),
        };
        SessionWindowedKStream { grouped: KGroupedStream { stream: self.stream.clone(), grouped }, windows }
    }

    /// Windows of time (`TimeWindows`: tumbling, hopping) or sliding
    /// windows (`SlidingWindows`), as Kafka's `windowedBy`.
    pub fn windowed_by(&self, windows: impl Into<WindowedBy>) -> TimeWindowedKStream<K, V> {
        let (windows, sliding) = match windows.into() {
            WindowedBy::Time(windows) => (windows, None),
            // A sliding window's table is a time window's of size d (its
            // end d after its start) for suppression and windowed serdes.
            WindowedBy::Sliding(sliding) => {
                (TimeWindows::of_size_and_grace(sliding.time_difference_ms, sliding.grace_ms), Some(sliding))
            }
        };
        TimeWindowedKStream {
            grouped: KGroupedStream {
                stream: self.stream.clone(),
                grouped: Grouped {
                    key_serde: self.grouped.key_serde.clone(),
                    value_serde: self.grouped.value_serde.clone(),
                    name: self.grouped.name.clone(),
                },
            },
            windows,
            sliding,
        }
    }
}

struct Aggregate<K, V, VA> {
    store: String,
    function: AggregateFn<K, V, VA>,
}

impl<K: Data, V: Data, VA: Data> Processor<K, V, K, Change<VA>> for Aggregate<K, V, VA> {
    fn process(
        &mut self,
        ctx: &mut ProcessorContext<'_, K, Change<VA>>,
        record: Record<K, V>,
    ) -> Result<(), StreamsError> {
        let store = ctx.get_state_store::<KeyValueStore<K, VA>>(&self.store)?;
        let old = store.get(&record.key)?;
        let new = (self.function)(&record.key, &record.value, old.clone());
        store.put(&record.key, &new)?;
        ctx.forward(Record::new(record.key, Change { new: Some(new), old }, record.timestamp_ms));
        Ok(())
    }
}

/// A grouped stream cut into time windows.
pub struct TimeWindowedKStream<K, V> {
    grouped: KGroupedStream<K, V>,
    windows: TimeWindows,
    /// Sliding windows, when `windowed_by` was given them (`windows` is
    /// then their time-window view).
    sliding: Option<SlidingWindows>,
}

/// What `KGroupedStream::windowed_by` takes: time windows or sliding
/// windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowedBy {
    Time(TimeWindows),
    Sliding(SlidingWindows),
}

impl From<TimeWindows> for WindowedBy {
    fn from(windows: TimeWindows) -> Self {
        WindowedBy::Time(windows)
    }
}

impl From<SlidingWindows> for WindowedBy {
    fn from(windows: SlidingWindows) -> Self {
        WindowedBy::Sliding(windows)
    }
}

impl<K, V> std::fmt::Debug for TimeWindowedKStream<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimeWindowedKStream").field("windows", &self.windows).finish()
    }
}

impl<K: Data, V: Data> TimeWindowedKStream<K, V> {
    fn aggregate_inner<VA: Data>(
        &self,
        materialized: Materialized<VA>,
        value_serde: SerdeRef<VA>,
        function: AggregateFn<K, V, VA>,
    ) -> KTable<Windowed<K>, VA> {
        let builder = &self.grouped.stream.builder;
        let store = materialized.name.clone().unwrap_or_else(|| next_name(builder, "KSTREAM-AGGREGATE-STATE-STORE-"));
        let input = self.grouped.input_node(&store);
        if let Some(sliding) = self.sliding {
            return self.sliding_aggregate(sliding, (store, input), materialized, value_serde, function);
        }
        let name = next_name(builder, "KSTREAM-AGGREGATE-");
        let (store_name, windows) = (store.clone(), self.windows);
        add_processor(
            builder,
            &name,
            move || WindowAggregate { store: store_name.clone(), windows, function: Arc::clone(&function) },
            &[&input],
        );
        let least_ms = self.windows.size_ms.saturating_add(self.windows.grace_ms);
        let retention_ms = materialized.window_retention_ms(&store, least_ms).unwrap_or_else(|error| {
            record_error(builder, Err(error));
            least_ms
        });
        let store_builder = Stores::window_store_builder(
            materialized.window_supplier(&store),
            retention_ms,
            self.grouped.grouped.key_serde.clone(),
            value_serde,
        );
        add_materialized_store(builder, store_builder, &materialized, &name);
        KTable {
            builder: Rc::clone(builder),
            node: name,
            getter: None,
            windows: Some(self.windows),
            _types: PhantomData,
        }
    }

    /// A sliding-window aggregation: the aggregates in `store` (a window
    /// store by window start) and each window's latest record time in
    /// `<store>-times` (Kafka keeps them together, as a timestamped
    /// store), both kept for 2 d + grace, as Kafka keeps sliding windows.
    fn sliding_aggregate<VA: Data>(
        &self,
        sliding: SlidingWindows,
        (store, input): (String, String),
        materialized: Materialized<VA>,
        value_serde: SerdeRef<VA>,
        function: AggregateFn<K, V, VA>,
    ) -> KTable<Windowed<K>, VA> {
        let builder = &self.grouped.stream.builder;
        let name = next_name(builder, "KSTREAM-SLIDINGWINDOWAGGREGATE-");
        let times_store = format!("{store}-times");
        let (store_name, times_name) = (store.clone(), times_store.clone());
        add_processor(
            builder,
            &name,
            move || SlidingWindowAggregate {
                store: store_name.clone(),
                times_store: times_name.clone(),
                windows: sliding,
                function: Arc::clone(&function),
            },
            &[&input],
        );
        let least_ms = sliding.time_difference_ms.saturating_mul(2).saturating_add(sliding.grace_ms);
        let retention_ms = materialized.window_retention_ms(&store, least_ms).unwrap_or_else(|error| {
            record_error(builder, Err(error));
            least_ms
        });
        let key_serde = self.grouped.grouped.key_serde.clone();
        let aggregates = Stores::window_store_builder(
            materialized.window_supplier(&store),
            retention_ms,
            key_serde.clone(),
            value_serde,
        );
        add_materialized_store(builder, aggregates, &materialized, &name);
        let times = Stores::window_store_builder(
            materialized.window_supplier(&times_store),
            retention_ms,
            key_serde,
            Serdes::i64(),
        );
        add_materialized_store(builder, times, &materialized, &name);
        KTable {
            builder: Rc::clone(builder),
            node: name,
            getter: None,
            windows: Some(self.windows),
            _types: PhantomData,
        }
    }

    pub fn count(&self, materialized: Materialized<i64>) -> KTable<Windowed<K>, i64> {
        let serde = materialized.value_serde.clone().unwrap_or_else(Serdes::i64);
        self.aggregate_inner(materialized, serde, Arc::new(|_, _, old| old.unwrap_or(0) + 1))
    }

    pub fn reduce(
        &self,
        reducer: impl Fn(&V, &V) -> V + Send + Sync + 'static,
        materialized: Materialized<V>,
    ) -> KTable<Windowed<K>, V> {
        let serde = materialized.value_serde.clone().unwrap_or_else(|| self.grouped.grouped.value_serde.clone());
        self.aggregate_inner(
            materialized,
            serde,
            Arc::new(move |_, value, old| match old {
                Some(aggregate) => reducer(&aggregate, value),
                None => value.clone(),
            }),
        )
    }

    pub fn aggregate<VA: Data>(
        &self,
        initializer: impl Fn() -> VA + Send + Sync + 'static,
        aggregator: impl Fn(&K, &V, VA) -> VA + Send + Sync + 'static,
        materialized: Materialized<VA>,
    ) -> KTable<Windowed<K>, VA> {
        let builder = &self.grouped.stream.builder;
        let Some(serde) = materialized.value_serde.clone() else {
            record_error(builder, Err(StreamsError::Topology("aggregate needs Materialized::with_value_serde".into())));
            return KTable {
                builder: Rc::clone(builder),
                node: String::new(),
                getter: None,
                windows: None,
                _types: PhantomData,
            };
        };
        self.aggregate_inner(
            materialized,
            serde,
            Arc::new(move |key, value, old| aggregator(key, value, old.unwrap_or_else(&initializer))),
        )
    }
}

struct WindowAggregate<K, V, VA> {
    store: String,
    windows: TimeWindows,
    function: AggregateFn<K, V, VA>,
}

impl<K: Data, V: Data, VA: Data> Processor<K, V, Windowed<K>, Change<VA>> for WindowAggregate<K, V, VA> {
    fn process(
        &mut self,
        ctx: &mut ProcessorContext<'_, Windowed<K>, Change<VA>>,
        record: Record<K, V>,
    ) -> Result<(), StreamsError> {
        // As Kafka's KStreamWindowAggregate: a window whose end is at or
        // before stream time minus the grace period is closed, and a
        // record for it is dropped.
        let close_ms = ctx.stream_time_ms().saturating_sub(self.windows.grace_ms);
        for window in self.windows.windows_for(record.timestamp_ms) {
            if window.end_ms <= close_ms {
                tracing::debug!(store = %self.store, window_start_ms = window.start_ms, timestamp_ms = record.timestamp_ms, "skipping record for expired window");
                continue;
            }
            let store = ctx.get_state_store::<WindowStore<K, VA>>(&self.store)?;
            let old = store.fetch(&record.key, window.start_ms)?;
            let new = (self.function)(&record.key, &record.value, old.clone());
            store.put(&record.key, window.start_ms, &new)?;
            let key = Windowed { key: record.key.clone(), window };
            ctx.forward(Record::new(key, Change { new: Some(new), old }, record.timestamp_ms));
        }
        Ok(())
    }
}

/// Kafka's `KStreamSlidingWindowAggregate` (the backward-iterating path
/// its stores take): a record updates every open window that contains
/// it, makes the previous record's right window when it falls in it, its
/// own left window (starting from the aggregate of the window that ends
/// just before it, when the previous record is within d), and its own
/// right window (a copy of the latest window that also holds later
/// records). Windows carry the latest time of the records they hold, in
/// `<store>-times`, which is how a window tells whether a previous record
/// exists and whether a right window would be empty. As Kafka's, a late
/// record that only closed windows could hold is counted nowhere, even in
/// a window made later that spans its time.
struct SlidingWindowAggregate<K, V, VA> {
    store: String,
    times_store: String,
    windows: SlidingWindows,
    function: AggregateFn<K, V, VA>,
}

/// A window's aggregate and the latest time of its records.
type Timed<VA> = (VA, i64);

impl<K: Data, V: Data, VA: Data> SlidingWindowAggregate<K, V, VA> {
    /// The key's windows starting from `from_ms` to `to_ms`, latest start
    /// first, with their aggregates and latest record times.
    fn windows_back(
        &self,
        ctx: &mut ProcessorContext<'_, Windowed<K>, Change<VA>>,
        key: &K,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(i64, Timed<VA>)>, StreamsError> {
        let aggregates = ctx.get_state_store::<WindowStore<K, VA>>(&self.store)?.fetch_range(key, from_ms, to_ms)?;
        let times: BTreeMap<i64, i64> = ctx
            .get_state_store::<WindowStore<K, i64>>(&self.times_store)?
            .fetch_range(key, from_ms, to_ms)?
            .into_iter()
            .collect();
        let mut windows = Vec::with_capacity(aggregates.len());
        for (start_ms, aggregate) in aggregates.into_iter().rev() {
            let latest_ms = times.get(&start_ms).copied().ok_or_else(|| StreamsError::Store {
                name: self.times_store.clone(),
                reason: format!("no record time for the window starting at {start_ms}"),
            })?;
            windows.push((start_ms, (aggregate, latest_ms)));
        }
        Ok(windows)
    }

    /// Adds the record to the window at `start_ms` whose aggregate was
    /// `base` (None: a new window, from the initializer) and forwards it;
    /// a closed window (its end before `close_ms`) is left alone.
    fn update(
        &self,
        ctx: &mut ProcessorContext<'_, Windowed<K>, Change<VA>>,
        record: &Record<K, V>,
        start_ms: i64,
        base: Option<Timed<VA>>,
        close_ms: i64,
    ) -> Result<(), StreamsError> {
        let end_ms = start_ms.saturating_add(self.windows.time_difference_ms);
        if end_ms < close_ms {
            tracing::debug!(store = %self.store, window_start_ms = start_ms, timestamp_ms = record.timestamp_ms, "skipping record for expired window");
            return Ok(());
        }
        let latest_ms = base.as_ref().map_or(record.timestamp_ms, |(_, latest_ms)| record.timestamp_ms.max(*latest_ms));
        let new = (self.function)(&record.key, &record.value, base.map(|(aggregate, _)| aggregate));
        self.put_and_forward(ctx, &record.key, start_ms, (new, latest_ms))
    }

    fn put_and_forward(
        &self,
        ctx: &mut ProcessorContext<'_, Windowed<K>, Change<VA>>,
        key: &K,
        start_ms: i64,
        (new, latest_ms): Timed<VA>,
    ) -> Result<(), StreamsError> {
        ctx.get_state_store::<WindowStore<K, i64>>(&self.times_store)?.put(key, start_ms, &latest_ms)?;
        let store = ctx.get_state_store::<WindowStore<K, VA>>(&self.store)?;
        let old = store.fetch(key, start_ms)?;
        store.put(key, start_ms, &new)?;
        let end_ms = start_ms.saturating_add(self.windows.time_difference_ms);
        let windowed = Windowed { key: key.clone(), window: Window { start_ms, end_ms } };
        ctx.forward(Record::new(windowed, Change { new: Some(new), old }, latest_ms));
        Ok(())
    }

    /// A record at or after d: its windows are [t - d, t] and [t + 1, t + 1 + d].
    fn process_in_time(
        &self,
        ctx: &mut ProcessorContext<'_, Windowed<K>, Change<VA>>,
        record: &Record<K, V>,
        close_ms: i64,
    ) -> Result<(), StreamsError> {
        let (t, d) = (record.timestamp_ms, self.windows.time_difference_ms);
        let windows = self.windows_back(ctx, &record.key, t.saturating_sub(d.saturating_mul(2)).max(0), t + 1)?;
        let starts: BTreeSet<i64> = windows.iter().map(|(start_ms, _)| *start_ms).collect();
        let (mut left, mut right): (Option<Timed<VA>>, Option<Timed<VA>>) = (None, None);
        let (mut left_exists, mut right_exists) = (false, false);
        let mut previous_ms: Option<i64> = None;
        for (start_ms, window) in windows {
            let end_ms = start_ms.saturating_add(d);
            if start_ms == t + 1 {
                right_exists = true;
            } else if end_ms > t {
                // Holds t: the latest such window is what t's right window copies.
                if right.is_none() {
                    right = Some(window.clone());
                }
                self.update(ctx, record, start_ms, Some(window), close_ms)?;
            } else if end_ms == t {
                left_exists = true;
                let latest_ms = window.1;
                self.update(ctx, record, start_ms, Some(window), close_ms)?;
                if latest_ms >= t {
                    // Another record at t made every window of t already.
                    return Ok(());
                }
                previous_ms = Some(latest_ms);
            } else {
                previous_ms = Some(window.1);
                left = Some(window);
                break;
            }
        }
        if let Some(previous_ms) = previous_ms {
            // The previous record's right window, if it did not exist and
            // now holds t.
            let start_ms = previous_ms + 1;
            if !starts.contains(&start_ms) && start_ms.saturating_add(d) >= t {
                self.update(ctx, record, start_ms, None, close_ms)?;
            }
        }
        if !left_exists {
            // The window ending before t holds the previous record's
            // window; if that record is within d, t's left window starts
            // from its aggregate.
            let base = left.filter(|_| previous_ms.is_some_and(|previous_ms| t - d <= previous_ms));
            self.update(ctx, record, t - d, base.map(|(aggregate, _)| (aggregate, t)), close_ms)?;
        }
        if let Some(right) = right.filter(|(_, latest_ms)| !right_exists && *latest_ms > t) {
            // t's right window holds what its right neighbour holds after t.
            self.put_and_forward(ctx, &record.key, t + 1, right)?;
        }
        Ok(())
    }

    /// A record before d: it goes into the shared window [0, d].
    fn process_early(
        &self,
        ctx: &mut ProcessorContext<'_, Windowed<K>, Change<VA>>,
        record: &Record<K, V>,
        close_ms: i64,
    ) -> Result<(), StreamsError> {
        let t = record.timestamp_ms;
        let mut windows = self.windows_back(ctx, &record.key, 0, t + 1)?;
        windows.reverse();
        let starts: BTreeSet<i64> = windows.iter().map(|(start_ms, _)| *start_ms).collect();
        let (mut combined, mut right): (Option<Timed<VA>>, Option<Timed<VA>>) = (None, None);
        let mut right_exists = false;
        let mut previous_ms = None;
        for (start_ms, window) in windows {
            if start_ms == 0 {
                if window.1 < t {
                    previous_ms = Some(window.1);
                }
                combined = Some(window);
            } else if start_ms <= t {
                right = Some(window.clone());
                self.update(ctx, record, start_ms, Some(window), close_ms)?;
            } else if start_ms == t + 1 {
                right_exists = true;
            }
        }
        // With nothing after t but the shared window's records, those are
        // what t's right window holds.
        if right.is_none() {
            right = combined.clone().filter(|(_, latest_ms)| *latest_ms > t);
        }
        if let Some(right) = right.filter(|(_, latest_ms)| !right_exists && *latest_ms > t) {
            self.put_and_forward(ctx, &record.key, t + 1, right)?;
        }
        if let Some(previous_ms) = previous_ms.filter(|previous_ms| !starts.contains(&(previous_ms + 1))) {
            self.update(ctx, record, previous_ms + 1, None, close_ms)?;
        }
        self.update(ctx, record, 0, combined, close_ms)
    }
}

impl<K: Data, V: Data, VA: Data> Processor<K, V, Windowed<K>, Change<VA>> for SlidingWindowAggregate<K, V, VA> {
    fn process(
        &mut self,
        ctx: &mut ProcessorContext<'_, Windowed<K>, Change<VA>>,
        record: Record<K, V>,
    ) -> Result<(), StreamsError> {
        let (t, d) = (record.timestamp_ms, self.windows.time_difference_ms);
        let close_ms = ctx.stream_time_ms().saturating_sub(self.windows.grace_ms);
        // As Kafka's: a record whose right window is closed too is dropped
        // (and one before the epoch has no window).
        if t < 0 || t.saturating_add(1).saturating_add(d) <= close_ms {
            tracing::debug!(store = %self.store, timestamp_ms = t, "skipping record for expired window");
            return Ok(());
        }
        if t < d { self.process_early(ctx, &record, close_ms) } else { self.process_in_time(ctx, &record, close_ms) }
    }
}

type GetterFn<K, V> = Arc<dyn Fn(&StoreMap, &K) -> Result<Option<V>, StreamsError> + Send + Sync>;
/// The stores a table's values are read from, and how.
type Getter<K, V> = (Vec<String>, GetterFn<K, V>);
/// A derived table's function of a value (None: not in the derived table).
type ValueFn<K, V, V2> = Arc<dyn Fn(&K, V) -> Option<V2> + Send + Sync>;

/// A changelog stream read as a table: the latest value per key.
pub struct KTable<K, V> {
    builder: Builder,
    node: String,
    /// The store a join reads, and how to read this table's value from it
    /// (a filtered or mapped table applies its function on the way).
    getter: Option<Getter<K, V>>,
    /// The windows of a windowed aggregation's table (suppress needs
    /// their size and grace).
    windows: Option<TimeWindows>,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> std::fmt::Debug for KTable<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KTable").field("node", &self.node).finish()
    }
}

impl<K: Data, V: Data> KTable<K, V> {
    fn materialized(builder: &Builder, node: String, store: String) -> Self {
        let store_name = store.clone();
        let read: GetterFn<K, V> = Arc::new(move |stores, key| {
            let store = stores
                .get(&store_name)
                .and_then(|store| store.as_any().downcast_ref::<KeyValueStore<K, V>>())
                .ok_or_else(|| StreamsError::Store {
                    name: store_name.clone(),
                    reason: "not a key-value store of this table".into(),
                })?;
            store.get(key)
        });
        KTable {
            builder: Rc::clone(builder),
            node,
            getter: Some((vec![store], read)),
            windows: None,
            _types: PhantomData,
        }
    }

    fn derive<V2: Data>(&self, prefix: &str, on_value: ValueFn<K, V, V2>) -> KTable<K, V2> {
        let name = next_name(&self.builder, prefix);
        let function = Arc::clone(&on_value);
        let stateless: StatelessFn<K, Change<V>, K, Change<V2>> = Arc::new(move |record, out| {
            let key = record.key;
            let new = record.value.new.and_then(|value| function(&key, value));
            let old = record.value.old.and_then(|value| function(&key, value));
            // Nothing was in the table and nothing is: no update to send.
            if new.is_some() || old.is_some() {
                out(Record::new(key, Change { new, old }, record.timestamp_ms));
            }
        });
        add_processor(&self.builder, &name, move || Stateless { function: Arc::clone(&stateless) }, &[&self.node]);
        let getter = self.getter.clone().map(|(store, read)| {
            let derived: GetterFn<K, V2> =
                Arc::new(move |stores, key| Ok(read(stores, key)?.and_then(|value| on_value(key, value))));
            (store, derived)
        });
        KTable { builder: Rc::clone(&self.builder), node: name, getter, windows: self.windows, _types: PhantomData }
    }

    /// Keeps the entries matching `predicate`; an update that stops
    /// matching deletes the key downstream.
    pub fn filter(&self, predicate: impl Fn(&K, &V) -> bool + Send + Sync + 'static) -> KTable<K, V> {
        self.derive("KTABLE-FILTER-", Arc::new(move |key, value| predicate(key, &value).then_some(value)))
    }

    pub fn filter_not(&self, predicate: impl Fn(&K, &V) -> bool + Send + Sync + 'static) -> KTable<K, V> {
        self.derive("KTABLE-FILTER-", Arc::new(move |key, value| (!predicate(key, &value)).then_some(value)))
    }

    pub fn map_values<V2: Data>(&self, mapper: impl Fn(&V) -> V2 + Send + Sync + 'static) -> KTable<K, V2> {
        self.derive("KTABLE-MAPVALUES-", Arc::new(move |_, value| Some(mapper(&value))))
    }

    /// The inner join of two tables on their key: an entry wherever both
    /// have one, updated when either side changes and deleted when either
    /// side deletes its entry (Kafka's `KTable.join(KTable)`). Both tables
    /// must have stores (a table from a topic or an aggregation, or one
    /// derived from it).
    pub fn join<V2: Data, VR: Data>(
        &self,
        other: &KTable<K, V2>,
        joiner: impl Fn(&V, &V2) -> VR + Send + Sync + 'static,
    ) -> KTable<K, VR> {
        let this_name = next_name(&self.builder, "KTABLE-JOINTHIS-");
        let other_name = next_name(&self.builder, "KTABLE-JOINOTHER-");
        let merge_name = next_name(&self.builder, "KTABLE-MERGE-");
        let (Some((this_stores, this_get)), Some((other_stores, other_get))) =
            (self.getter.clone(), other.getter.clone())
        else {
            let error = StreamsError::Topology(format!("{this_name}: both tables of a join need stores"));
            record_error(&self.builder, Err(error));
            return KTable {
                builder: Rc::clone(&self.builder),
                node: merge_name,
                getter: None,
                windows: None,
                _types: PhantomData,
            };
        };
        let joiner: JoinSide<V, V2, VR> = Arc::new(joiner);
        let (this_joiner, other_joiner) = (Arc::clone(&joiner), Arc::clone(&joiner));
        let this_lookup = Arc::clone(&other_get);
        let this_side: JoinSide<V, V2, VR> = Arc::new(move |mine, theirs| this_joiner(mine, theirs));
        add_processor(
            &self.builder,
            &this_name,
            move || TableJoin { other: Arc::clone(&this_lookup), join: Arc::clone(&this_side) },
            &[&self.node],
        );
        connect_stores(&self.builder, &this_name, &other_stores);
        let other_lookup = Arc::clone(&this_get);
        let other_side: JoinSide<V2, V, VR> = Arc::new(move |mine, theirs| other_joiner(theirs, mine));
        add_processor(
            &self.builder,
            &other_name,
            move || TableJoin { other: Arc::clone(&other_lookup), join: Arc::clone(&other_side) },
            &[&other.node],
        );
        connect_stores(&self.builder, &other_name, &this_stores);
        let pass: StatelessFn<K, Change<VR>, K, Change<VR>> = Arc::new(|record, out| out(record));
        add_processor(
            &self.builder,
            &merge_name,
            move || Stateless { function: Arc::clone(&pass) },
            &[&this_name, &other_name],
        );
        let getter: GetterFn<K, VR> = Arc::new(move |stores, key| {
            Ok(match (this_get(stores, key)?, other_get(stores, key)?) {
                (Some(mine), Some(theirs)) => Some(joiner(&mine, &theirs)),
                _ => None,
            })
        });
        let stores = this_stores.into_iter().chain(other_stores).collect();
        KTable {
            builder: Rc::clone(&self.builder),
            node: merge_name,
            getter: Some((stores, getter)),
            windows: None,
            _types: PhantomData,
        }
    }

    /// The table's updates as a stream; a deletion is a `None` value (a
    /// tombstone once written with a nullable serde).
    pub fn to_stream(&self) -> KStream<K, Option<V>> {
        let name = next_name(&self.builder, "KTABLE-TOSTREAM-");
        let function: StatelessFn<K, Change<V>, K, Option<V>> =
            Arc::new(|record, out| out(Record::new(record.key, record.value.new, record.timestamp_ms)));
        add_processor(&self.builder, &name, move || Stateless { function: Arc::clone(&function) }, &[&self.node]);
        KStream::at(&self.builder, name, false)
    }
}

struct TableSource<K, V> {
    store: String,
    _types: PhantomData<fn(K, V)>,
}

impl<K: Data, V: Data> Processor<K, Option<V>, K, Change<V>> for TableSource<K, V> {
    fn process(
        &mut self,
        ctx: &mut ProcessorContext<'_, K, Change<V>>,
        record: Record<K, Option<V>>,
    ) -> Result<(), StreamsError> {
        let store = ctx.get_state_store::<KeyValueStore<K, V>>(&self.store)?;
        let old = match &record.value {
            Some(value) => {
                let old = store.get(&record.key)?;
                store.put(&record.key, value)?;
                old
            }
            None => store.delete(&record.key)?,
        };
        if record.value.is_some() || old.is_some() {
            ctx.forward(Record::new(record.key, Change { new: record.value, old }, record.timestamp_ms));
        }
        Ok(())
    }
}

/// Debug for the option holders: their serdes have no useful Debug.
macro_rules! opaque_debug {
    ($($name:ident<$($param:ident),+>),+) => {$(
        impl<$($param),+> std::fmt::Debug for $name<$($param),+> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(stringify!($name))
            }
        }
    )+};
}

opaque_debug!(Consumed<K, V>, Produced<K, V>, Grouped<K, V>, Repartitioned<K, V>, Materialized<V>);

/// How `KTable::suppress` holds back updates: until the window closes
/// (its end plus the grace period passed in stream time), then only the
/// final result, as Kafka's `Suppressed.untilWindowCloses`. The buffer is
/// a store with a changelog, so results not yet emitted survive a crash.
pub struct Suppressed<K, V> {
    key_serde: SerdeRef<K>,
    value_serde: SerdeRef<V>,
    name: Option<String>,
}

impl<K, V> Suppressed<K, V> {
    pub fn until_window_closes(key_serde: SerdeRef<K>, value_serde: SerdeRef<V>) -> Self {
        Suppressed { key_serde, value_serde, name: None }
    }
    /// Names the processor `name` and its buffer store `<name>-store`.
    #[must_use]
    pub fn with_name(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }
}

opaque_debug!(Suppressed<K, V>);

impl<K: Data, V: Data> KTable<Windowed<K>, V> {
    /// Emits each window's final result once, when it closes.
    pub fn suppress(&self, suppressed: Suppressed<K, V>) -> KTable<Windowed<K>, V> {
        let Some(windows) = self.windows else {
            let error =
                StreamsError::Topology("suppress(until_window_closes) needs a windowed aggregation's table".into());
            record_error(&self.builder, Err(error));
            return KTable {
                builder: Rc::clone(&self.builder),
                node: String::new(),
                getter: None,
                windows: None,
                _types: PhantomData,
            };
        };
        let name = suppressed.name.clone().unwrap_or_else(|| next_name(&self.builder, "KTABLE-SUPPRESS-"));
        let store = match &suppressed.name {
            Some(name) => format!("{name}-store"),
            None => next_name(&self.builder, "KTABLE-SUPPRESS-STATE-STORE-"),
        };
        let store_name = store.clone();
        add_processor(
            &self.builder,
            &name,
            move || Suppress::<K, V> {
                store: store_name.clone(),
                grace_ms: windows.grace_ms,
                next_close_ms: i64::MIN,
                _types: PhantomData,
            },
            &[&self.node],
        );
        let key_serde = TimeWindowedSerde::of(suppressed.key_serde, windows.size_ms);
        let builder = Stores::key_value_store_builder(&store, key_serde, suppressed.value_serde);
        let result = self.builder.borrow_mut().topology.add_state_store(builder, &[&name]).map(|_| ());
        record_error(&self.builder, result);
        KTable {
            builder: Rc::clone(&self.builder),
            node: name,
            getter: None,
            windows: Some(windows),
            _types: PhantomData,
        }
    }
}

struct Suppress<K, V> {
    store: String,
    grace_ms: i64,
    /// The earliest window end in the buffer (i64::MIN: unknown, as after
    /// a restore: look).
    next_close_ms: i64,
    _types: PhantomData<fn(K, V)>,
}

impl<K: Data, V: Data> Processor<Windowed<K>, Change<V>, Windowed<K>, Change<V>> for Suppress<K, V> {
    fn process(
        &mut self,
        ctx: &mut ProcessorContext<'_, Windowed<K>, Change<V>>,
        record: Record<Windowed<K>, Change<V>>,
    ) -> Result<(), StreamsError> {
        let buffer = ctx.get_state_store::<KeyValueStore<Windowed<K>, V>>(&self.store)?;
        match &record.value.new {
            Some(value) => {
                buffer.put(&record.key, value)?;
                self.next_close_ms = self.next_close_ms.min(record.key.window.end_ms);
            }
            None => {
                buffer.delete(&record.key)?;
            }
        }
        // A window is closed once its end is at or before stream time minus
        // the grace period: the same point at which the aggregation stops
        // taking records for it, so its result is final.
        let close_ms = ctx.stream_time_ms().saturating_sub(self.grace_ms);
        if self.next_close_ms > close_ms {
            return Ok(());
        }
        let buffer = ctx.get_state_store::<KeyValueStore<Windowed<K>, V>>(&self.store)?;
        let mut closed = Vec::new();
        let mut next_close_ms = i64::MAX;
        for (key, value) in buffer.all()? {
            if key.window.end_ms <= close_ms {
                closed.push((key, value));
            } else {
                next_close_ms = next_close_ms.min(key.window.end_ms);
            }
        }
        self.next_close_ms = next_close_ms;
        closed.sort_by_key(|(key, _)| key.window.end_ms);
        for (key, _) in &closed {
            buffer.delete(key)?;
        }
        for (key, value) in closed {
            // The window's last instant: the result covers the whole window.
            let timestamp_ms = key.window.end_ms.saturating_sub(1);
            let forwarded = Record::new(key, Change { new: Some(value), old: None }, timestamp_ms);
            ctx.forward(forwarded);
        }
        Ok(())
    }
}

/// One side of a table-table join: this side's value with the other's.
type JoinSide<V, VO, VR> = Arc<dyn Fn(&V, &VO) -> VR + Send + Sync>;

struct TableJoin<K, V, VO, VR> {
    other: GetterFn<K, VO>,
    join: JoinSide<V, VO, VR>,
}

impl<K: Data, V: Data, VO: Data, VR: Data> Processor<K, Change<V>, K, Change<VR>> for TableJoin<K, V, VO, VR> {
    fn process(
        &mut self,
        ctx: &mut ProcessorContext<'_, K, Change<VR>>,
        record: Record<K, Change<V>>,
    ) -> Result<(), StreamsError> {
        let Some(theirs) = (self.other)(&ctx.state.stores, &record.key)? else {
            // Nothing on the other side: no joined entry before or after.
            return Ok(());
        };
        let new = record.value.new.as_ref().map(|mine| (self.join)(mine, &theirs));
        let old = record.value.old.as_ref().map(|mine| (self.join)(mine, &theirs));
        if new.is_some() || old.is_some() {
            ctx.forward(Record::new(record.key, Change { new, old }, record.timestamp_ms));
        }
        Ok(())
    }
}

type KeyMapper<K, V, KG> = Arc<dyn Fn(&K, &V) -> KG + Send + Sync>;
type GlobalJoiner<V, VG, VR> = Arc<dyn Fn(&V, Option<&VG>) -> Option<VR> + Send + Sync>;

struct GlobalJoin<K, V, KG, VG, VR> {
    getter: GetterFn<KG, VG>,
    key_mapper: KeyMapper<K, V, KG>,
    joiner: GlobalJoiner<V, VG, VR>,
}

impl<K: Data, V: Data, KG: Data, VG: Data, VR: Data> Processor<K, V, K, VR> for GlobalJoin<K, V, KG, VG, VR> {
    fn process(&mut self, ctx: &mut ProcessorContext<'_, K, VR>, record: Record<K, V>) -> Result<(), StreamsError> {
        let table_key = (self.key_mapper)(&record.key, &record.value);
        let found = {
            let global = ctx.state.global.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            (self.getter)(&global, &table_key)?
        };
        if let Some(joined) = (self.joiner)(&record.value, found.as_ref()) {
            ctx.forward(Record::new(record.key, joined, record.timestamp_ms));
        }
        Ok(())
    }
}

/// Serdes of a stream-stream join's stores (the key, and each stream's
/// values), and an optional name for them (`<name>-this-join-store`,
/// `<name>-other-join-store`), as Kafka's `StreamJoined`.
pub struct StreamJoined<K, V, V2> {
    key_serde: SerdeRef<K>,
    value_serde: SerdeRef<V>,
    other_value_serde: SerdeRef<V2>,
    name: Option<String>,
}

impl<K, V, V2> StreamJoined<K, V, V2> {
    pub fn with(key_serde: SerdeRef<K>, value_serde: SerdeRef<V>, other_value_serde: SerdeRef<V2>) -> Self {
        StreamJoined { key_serde, value_serde, other_value_serde, name: None }
    }
    #[must_use]
    pub fn with_store_name(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }
}

impl<K, V, V2> std::fmt::Debug for StreamJoined<K, V, V2> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamJoined")
    }
}

/// One side of a stream-stream join: keeps its records by (key,
/// timestamp) and joins each with the other side's within the window.
struct StreamJoin<K, V, VO, VR> {
    own: String,
    other: String,
    windows: JoinWindows,
    join: JoinSide<V, VO, VR>,
    _types: PhantomData<fn(K)>,
}

impl<K: Data, V: Data, VO: Data, VR: Data> Processor<K, V, K, VR> for StreamJoin<K, V, VO, VR> {
    fn process(&mut self, ctx: &mut ProcessorContext<'_, K, VR>, record: Record<K, V>) -> Result<(), StreamsError> {
        let timestamp_ms = record.timestamp_ms;
        // As Kafka's KStreamKStreamJoin: a record whose window (and grace)
        // ended before stream time finds nothing to join it anymore.
        let late = timestamp_ms.saturating_add(self.windows.after_ms).saturating_add(self.windows.grace_ms)
            < ctx.stream_time_ms();
        if late {
            tracing::debug!(store = %self.own, timestamp_ms, "skipping a record for an expired join window");
            return Ok(());
        }
        let own = ctx.get_state_store::<WindowStore<K, Vec<V>>>(&self.own)?;
        let mut kept = own.fetch(&record.key, timestamp_ms)?.unwrap_or_default();
        kept.push(record.value.clone());
        own.put(&record.key, timestamp_ms, &kept)?;
        let from_ms = timestamp_ms.saturating_sub(self.windows.before_ms);
        let to_ms = timestamp_ms.saturating_add(self.windows.after_ms);
        let matches =
            ctx.get_state_store::<WindowStore<K, Vec<VO>>>(&self.other)?.fetch_range(&record.key, from_ms, to_ms)?;
        for (other_timestamp_ms, values) in matches {
            for value in values {
                let joined = (self.join)(&record.value, &value);
                ctx.forward(Record::new(record.key.clone(), joined, timestamp_ms.max(other_timestamp_ms)));
            }
        }
        Ok(())
    }
}

/// The two window stores of a stream-stream join, each connected to both
/// sides' processors.
fn add_join_stores<K: Data, V: Data, V2: Data>(
    builder: &Builder,
    (this_store, other_store): (&str, &str),
    retention_ms: i64,
    joined: StreamJoined<K, V, V2>,
    processors: [&str; 2],
) {
    let builders = [
        Stores::window_store_builder(
            this_store,
            retention_ms,
            joined.key_serde.clone(),
            Serdes::list(joined.value_serde),
        ),
        Stores::window_store_builder(
            other_store,
            retention_ms,
            joined.key_serde,
            Serdes::list(joined.other_value_serde),
        ),
    ];
    for store in builders {
        let result = builder.borrow_mut().topology.add_state_store(store, &processors).map(|_| ());
        record_error(builder, result);
    }
}

/// A grouped stream cut into sessions (Kafka's `SessionWindowedKStream`).
/// Its table's keys are `Windowed<K>` with the session's [first, last]
/// record times; a merge deletes the merged sessions downstream (a `None`
/// update) before the merged one comes.
pub struct SessionWindowedKStream<K, V> {
    grouped: KGroupedStream<K, V>,
    windows: SessionWindows,
}

impl<K, V> std::fmt::Debug for SessionWindowedKStream<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionWindowedKStream").field("windows", &self.windows).finish()
    }
}

type MergeFn<K, VA> = Arc<dyn Fn(&K, VA, VA) -> VA + Send + Sync>;

impl<K: Data, V: Data> SessionWindowedKStream<K, V> {
    fn aggregate_inner<VA: Data>(
        &self,
        materialized: Materialized<VA>,
        value_serde: SerdeRef<VA>,
        function: AggregateFn<K, V, VA>,
        merger: MergeFn<K, VA>,
    ) -> KTable<Windowed<K>, VA> {
        let builder = &self.grouped.stream.builder;
        let store = materialized.name.clone().unwrap_or_else(|| next_name(builder, "KSTREAM-AGGREGATE-STATE-STORE-"));
        let input = self.grouped.input_node(&store);
        let name = next_name(builder, "KSTREAM-AGGREGATE-");
        let (store_name, windows) = (store.clone(), self.windows);
        add_processor(
            builder,
            &name,
            move || SessionAggregate {
                store: store_name.clone(),
                windows,
                function: Arc::clone(&function),
                merger: Arc::clone(&merger),
            },
            &[&input],
        );
        let least_ms = self.windows.gap_ms.saturating_add(self.windows.grace_ms);
        let retention_ms = materialized.window_retention_ms(&store, least_ms).unwrap_or_else(|error| {
            record_error(builder, Err(error));
            least_ms
        });
        let store_builder = Stores::session_store_builder(
            materialized.session_supplier(&store),
            retention_ms,
            self.grouped.grouped.key_serde.clone(),
            value_serde,
        );
        add_materialized_store(builder, store_builder, &materialized, &name);
        KTable { builder: Rc::clone(builder), node: name, getter: None, windows: None, _types: PhantomData }
    }

    /// Records per session.
    pub fn count(&self, materialized: Materialized<i64>) -> KTable<Windowed<K>, i64> {
        let serde = materialized.value_serde.clone().unwrap_or_else(Serdes::i64);
        let merger: MergeFn<K, i64> = Arc::new(|_, a, b| a + b);
        self.aggregate_inner(materialized, serde, Arc::new(|_, _, old| old.unwrap_or(0) + 1), merger)
    }

    /// Combines each session's values; merged sessions combine with the
    /// same reducer.
    pub fn reduce(
        &self,
        reducer: impl Fn(&V, &V) -> V + Send + Sync + 'static,
        materialized: Materialized<V>,
    ) -> KTable<Windowed<K>, V> {
        let serde = materialized.value_serde.clone().unwrap_or_else(|| self.grouped.grouped.value_serde.clone());
        let reducer = Arc::new(reducer);
        let merge_with = Arc::clone(&reducer);
        let merger: MergeFn<K, V> = Arc::new(move |_, a, b| merge_with(&a, &b));
        let function: AggregateFn<K, V, V> = Arc::new(move |_, value, old| match old {
            Some(aggregate) => reducer(&aggregate, value),
            None => value.clone(),
        });
        self.aggregate_inner(materialized, serde, function, merger)
    }

    /// Folds each session's values; `merger` combines two sessions'
    /// aggregates when a record joins them.
    pub fn aggregate<VA: Data>(
        &self,
        initializer: impl Fn() -> VA + Send + Sync + 'static,
        aggregator: impl Fn(&K, &V, VA) -> VA + Send + Sync + 'static,
        merger: impl Fn(&K, VA, VA) -> VA + Send + Sync + 'static,
        materialized: Materialized<VA>,
    ) -> KTable<Windowed<K>, VA> {
        let builder = &self.grouped.stream.builder;
        let Some(serde) = materialized.value_serde.clone() else {
            record_error(builder, Err(StreamsError::Topology("aggregate needs Materialized::with_value_serde".into())));
            return KTable {
                builder: Rc::clone(builder),
                node: String::new(),
                getter: None,
                windows: None,
                _types: PhantomData,
            };
        };
        let function: AggregateFn<K, V, VA> =
            Arc::new(move |key, value, old| aggregator(key, value, old.unwrap_or_else(&initializer)));
        self.aggregate_inner(materialized, serde, function, Arc::new(merger))
    }
}

struct SessionAggregate<K, V, VA> {
    store: String,
    windows: SessionWindows,
    function: AggregateFn<K, V, VA>,
    merger: MergeFn<K, VA>,
}

impl<K: Data, V: Data, VA: Data> Processor<K, V, Windowed<K>, Change<VA>> for SessionAggregate<K, V, VA> {
    fn process(
        &mut self,
        ctx: &mut ProcessorContext<'_, Windowed<K>, Change<VA>>,
        record: Record<K, V>,
    ) -> Result<(), StreamsError> {
        let timestamp_ms = record.timestamp_ms;
        let close_ms = ctx.stream_time_ms().saturating_sub(self.windows.grace_ms);
        let store = ctx.get_state_store::<SessionStore<K, VA>>(&self.store)?;
        let gap_ms = self.windows.gap_ms;
        let overlapping = store.find_sessions(
            &record.key,
            timestamp_ms.saturating_sub(gap_ms),
            timestamp_ms.saturating_add(gap_ms),
        )?;
        let start_ms = overlapping.iter().map(|(start, _, _)| *start).fold(timestamp_ms, i64::min);
        let end_ms = overlapping.iter().map(|(_, end, _)| *end).fold(timestamp_ms, i64::max);
        // As Kafka's KStreamSessionWindowAggregate: a session ending before
        // stream time minus the grace is closed; the record is dropped.
        if end_ms < close_ms {
            tracing::debug!(store = %self.store, timestamp_ms, "skipping record for an expired session");
            return Ok(());
        }
        let mut merged: Option<VA> = None;
        let mut replaced = Vec::new();
        for (start, end, aggregate) in overlapping {
            merged = Some(match merged {
                Some(so_far) => (self.merger)(&record.key, so_far, aggregate.clone()),
                None => aggregate.clone(),
            });
            replaced.push((start, end, aggregate));
        }
        let new = (self.function)(&record.key, &record.value, merged);
        let mut unchanged_old = None;
        for (start, end, aggregate) in &replaced {
            if (*start, *end) == (start_ms, end_ms) {
                unchanged_old = Some(aggregate.clone());
            } else {
                store.remove(&record.key, *start, *end)?;
            }
        }
        store.put(&record.key, start_ms, end_ms, &new)?;
        for (start, end, aggregate) in replaced {
            if (start, end) != (start_ms, end_ms) {
                let key = Windowed { key: record.key.clone(), window: Window { start_ms: start, end_ms: end } };
                ctx.forward(Record::new(key, Change { new: None, old: Some(aggregate) }, timestamp_ms));
            }
        }
        let key = Windowed { key: record.key, window: Window { start_ms, end_ms } };
        ctx.forward(Record::new(key, Change { new: Some(new), old: unchanged_old }, timestamp_ms));
        Ok(())
    }
}
