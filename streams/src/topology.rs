//! A topology: sources, processors, sinks and their stores, as Kafka
//! Streams' `Topology`. It is a plan; each task instantiates the part of
//! it (the sub-topology) that its input partitions feed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use crate::error::StreamsError;
use crate::processor::{Data, DynData, DynRecord, Node, OutRecord, Processor, ProcessorContext, ProcessorNode};
use crate::serde::{SerdeError, SerdeRef};
use crate::store::StoreBuilder;
use crate::task::Task;

/// A topic as the topology names it: internal ones (repartition topics)
/// get the application id in front at run time.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct TopicName {
    pub name: String,
    pub internal: bool,
}

impl TopicName {
    pub fn user(name: &str) -> Self {
        TopicName { name: name.to_string(), internal: false }
    }
    pub fn resolve(&self, application_id: &str) -> String {
        if self.internal { format!("{application_id}-{}", self.name) } else { self.name.clone() }
    }
}

/// The source record as a timestamp extractor sees it.
#[derive(Debug, Clone, Copy)]
pub struct SourceRecord<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
}

/// Event time for a source record (Kafka's `TimestampExtractor`). A
/// negative result drops the record with a warning, as Kafka's
/// `LogAndSkipOnInvalidTimestamp`.
pub type TimestampExtractor = Arc<dyn Fn(&SourceRecord<'_>) -> i64 + Send + Sync>;

type Decode = Arc<dyn Fn(&str, Option<&[u8]>, Option<&[u8]>) -> Result<(DynData, DynData), SerdeError> + Send + Sync>;
/// Makes a node for a task; takes the application id (sinks resolve
/// internal topic names with it).
type NodeFactory = Arc<dyn Fn(&str) -> Box<dyn Node> + Send + Sync>;

#[derive(Clone)]
pub(crate) enum NodeKind {
    Source { topics: Vec<TopicName>, decode: Decode, extractor: Option<TimestampExtractor> },
    Processor,
    Sink { topic: TopicName },
}

#[derive(Clone)]
pub(crate) struct NodeDef {
    pub name: String,
    pub kind: NodeKind,
    pub parents: Vec<usize>,
    /// (name, index), in the order they were connected.
    pub children: Vec<(String, usize)>,
    pub stores: Vec<String>,
    pub factory: NodeFactory,
}

/// A topology: build it with the DSL (`StreamsBuilder`) or node by node.
#[derive(Clone, Default)]
pub struct Topology {
    pub(crate) nodes: Vec<NodeDef>,
    pub(crate) stores: BTreeMap<String, StoreBuilder>,
    /// Global tables: the store, read by every task, is filled from its
    /// topic (all partitions), which is also its changelog.
    pub(crate) global_stores: Vec<GlobalStore>,
}

#[derive(Clone, Debug)]
pub(crate) struct GlobalStore {
    pub topic: String,
    pub builder: StoreBuilder,
    /// Node names, for `describe`.
    pub source_name: String,
    pub processor_name: String,
}

impl fmt::Debug for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.describe())
    }
}

/// A pass-through node: sources forward what they read.
struct Forward;

impl Node for Forward {
    fn init(&mut self, _ctx: &mut ProcessorContext<'_, (), ()>) -> Result<(), StreamsError> {
        Ok(())
    }
    fn process(&mut self, ctx: &mut ProcessorContext<'_, (), ()>, record: DynRecord) -> Result<(), StreamsError> {
        for (_, child) in ctx.children {
            ctx.forwarded.push((*child, record.clone()));
        }
        Ok(())
    }
    fn punctuate(
        &mut self,
        _ctx: &mut ProcessorContext<'_, (), ()>,
        _id: crate::processor::PunctuationId,
        _timestamp_ms: i64,
    ) -> Result<(), StreamsError> {
        Ok(())
    }
}

type Encode =
    Arc<dyn Fn(&str, &DynRecord) -> Result<(Option<bytes::Bytes>, Option<bytes::Bytes>), StreamsError> + Send + Sync>;

/// A sink: serializes and hands the record to the task's output.
struct Sink {
    topic: String,
    encode: Encode,
}

impl Node for Sink {
    fn init(&mut self, _ctx: &mut ProcessorContext<'_, (), ()>) -> Result<(), StreamsError> {
        Ok(())
    }
    fn process(&mut self, ctx: &mut ProcessorContext<'_, (), ()>, record: DynRecord) -> Result<(), StreamsError> {
        let (key, value) = (self.encode)(&self.topic, &record)?;
        ctx.state.out.push(OutRecord {
            topic: self.topic.clone(),
            partition: None,
            key,
            value,
            timestamp_ms: record.timestamp_ms,
            headers: Vec::new(),
        });
        Ok(())
    }
    fn punctuate(
        &mut self,
        _ctx: &mut ProcessorContext<'_, (), ()>,
        _id: crate::processor::PunctuationId,
        _timestamp_ms: i64,
    ) -> Result<(), StreamsError> {
        Ok(())
    }
}

impl Topology {
    pub fn new() -> Self {
        Topology::default()
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|node| node.name == name)
    }

    fn add_node(
        &mut self,
        name: &str,
        kind: NodeKind,
        parents: &[&str],
        factory: NodeFactory,
    ) -> Result<usize, StreamsError> {
        if self.index_of(name).is_some() {
            return Err(StreamsError::Topology(format!("node {name:?} is already in the topology")));
        }
        let index = self.nodes.len();
        let mut parent_indexes = Vec::new();
        for parent in parents {
            let parent_index = self.index_of(parent).ok_or_else(|| {
                StreamsError::Topology(format!("parent {parent:?} of {name:?} is not in the topology"))
            })?;
            if matches!(self.nodes[parent_index].kind, NodeKind::Sink { .. }) {
                return Err(StreamsError::Topology(format!("sink {parent:?} cannot have a child ({name:?})")));
            }
            parent_indexes.push(parent_index);
        }
        for &parent_index in &parent_indexes {
            self.nodes[parent_index].children.push((name.to_string(), index));
        }
        self.nodes.push(NodeDef {
            name: name.to_string(),
            kind,
            parents: parent_indexes,
            children: Vec::new(),
            stores: Vec::new(),
            factory,
        });
        Ok(index)
    }

    /// Reads `topics` with these serdes (a null key or value reaches the
    /// serde as `None`).
    pub fn add_source<K: Data, V: Data>(
        &mut self,
        name: &str,
        topics: &[&str],
        key_serde: SerdeRef<K>,
        value_serde: SerdeRef<V>,
    ) -> Result<&mut Self, StreamsError> {
        let topics = topics.iter().map(|topic| TopicName::user(topic)).collect();
        self.add_source_inner(name, topics, key_serde, value_serde, None)?;
        Ok(self)
    }

    pub(crate) fn add_source_inner<K: Data, V: Data>(
        &mut self,
        name: &str,
        topics: Vec<TopicName>,
        key_serde: SerdeRef<K>,
        value_serde: SerdeRef<V>,
        extractor: Option<TimestampExtractor>,
    ) -> Result<usize, StreamsError> {
        for topic in &topics {
            let taken = self
                .nodes
                .iter()
                .any(|node| matches!(&node.kind, NodeKind::Source { topics: other, .. } if other.contains(topic)));
            if taken {
                return Err(StreamsError::Topology(format!("topic {:?} is read by two sources", topic.name)));
            }
        }
        let decode: Decode = Arc::new(move |topic, key, value| {
            let key: DynData = Arc::new(key_serde.deserialize(topic, key)?);
            let value: DynData = Arc::new(value_serde.deserialize(topic, value)?);
            Ok((key, value))
        });
        self.add_node(name, NodeKind::Source { topics, decode, extractor }, &[], Arc::new(|_| Box::new(Forward)))
    }

    /// A processor made by `supplier` once per task.
    pub fn add_processor<KIn, VIn, KOut, VOut, P, F>(
        &mut self,
        name: &str,
        supplier: F,
        parents: &[&str],
    ) -> Result<&mut Self, StreamsError>
    where
        KIn: Data,
        VIn: Data,
        KOut: Data,
        VOut: Data,
        P: Processor<KIn, VIn, KOut, VOut> + 'static,
        F: Fn() -> P + Send + Sync + 'static,
    {
        let factory: NodeFactory = Arc::new(move |_| {
            Box::new(ProcessorNode::<KIn, VIn, KOut, VOut, P> { processor: supplier(), _types: PhantomData })
        });
        self.add_node(name, NodeKind::Processor, parents, factory)?;
        Ok(self)
    }

    /// Writes what reaches it to `topic`.
    pub fn add_sink<K: Data, V: Data>(
        &mut self,
        name: &str,
        topic: &str,
        key_serde: SerdeRef<K>,
        value_serde: SerdeRef<V>,
        parents: &[&str],
    ) -> Result<&mut Self, StreamsError> {
        self.add_sink_inner(name, TopicName::user(topic), key_serde, value_serde, parents)?;
        Ok(self)
    }

    pub(crate) fn add_sink_inner<K: Data, V: Data>(
        &mut self,
        name: &str,
        topic: TopicName,
        key_serde: SerdeRef<K>,
        value_serde: SerdeRef<V>,
        parents: &[&str],
    ) -> Result<usize, StreamsError> {
        let node_name = name.to_string();
        let encode: Encode = Arc::new(move |topic, record| {
            let error = |source| StreamsError::Serialization { target: format!("topic {topic}"), source };
            let mismatch = || StreamsError::Topology(format!("sink {node_name} got a record of another type"));
            let key = record.key.downcast_ref::<K>().ok_or_else(mismatch)?;
            let value = record.value.downcast_ref::<V>().ok_or_else(mismatch)?;
            Ok((key_serde.serialize(topic, key).map_err(error)?, value_serde.serialize(topic, value).map_err(error)?))
        });
        // The sink's topic is resolved when a task is made: the application
        // id is known then.
        let unresolved = topic.clone();
        let factory: NodeFactory = Arc::new(move |application_id| {
            Box::new(Sink { topic: unresolved.resolve(application_id), encode: encode.clone() })
        });
        self.add_node(name, NodeKind::Sink { topic }, parents, factory)
    }

    /// Connects a store to processors (each may then `get_state_store` it).
    pub fn add_state_store(&mut self, builder: StoreBuilder, processors: &[&str]) -> Result<&mut Self, StreamsError> {
        let name = builder.name.clone();
        if self.stores.insert(name.clone(), builder).is_some() {
            return Err(StreamsError::Topology(format!("state store {name:?} is already in the topology")));
        }
        self.connect_store(&name, processors)?;
        Ok(self)
    }

    pub fn connect_processor_and_state_stores(
        &mut self,
        processor: &str,
        stores: &[&str],
    ) -> Result<&mut Self, StreamsError> {
        for store in stores {
            if !self.stores.contains_key(*store) {
                return Err(StreamsError::Topology(format!("state store {store:?} is not in the topology")));
            }
            self.connect_store(store, &[processor])?;
        }
        Ok(self)
    }

    fn connect_store(&mut self, store: &str, processors: &[&str]) -> Result<(), StreamsError> {
        for processor in processors {
            let index = self
                .index_of(processor)
                .ok_or_else(|| StreamsError::Topology(format!("processor {processor:?} is not in the topology")))?;
            if !self.nodes[index].stores.iter().any(|name| name == store) {
                self.nodes[index].stores.push(store.to_string());
            }
        }
        Ok(())
    }

    /// Groups nodes into sub-topologies: nodes linked by an edge or by a
    /// shared store run in the same task. Numbered in node order.
    pub(crate) fn sub_topologies(&self) -> Vec<Vec<usize>> {
        let mut group: Vec<usize> = (0..self.nodes.len()).collect();
        fn root(group: &mut [usize], mut index: usize) -> usize {
            while group[index] != index {
                group[index] = group[group[index]];
                index = group[index];
            }
            index
        }
        let union = |group: &mut Vec<usize>, a: usize, b: usize| {
            let (ra, rb) = (root(group, a), root(group, b));
            group[ra.max(rb)] = ra.min(rb);
        };
        let mut store_owner: BTreeMap<&str, usize> = BTreeMap::new();
        for (index, node) in self.nodes.iter().enumerate() {
            for &parent in &node.parents {
                union(&mut group, index, parent);
            }
            for store in &node.stores {
                match store_owner.get(store.as_str()) {
                    Some(&other) => union(&mut group, index, other),
                    None => {
                        store_owner.insert(store, index);
                    }
                }
            }
        }
        let mut subs: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for index in 0..self.nodes.len() {
            subs.entry(root(&mut group, index)).or_default().push(index);
        }
        subs.into_values().collect()
    }

    /// Which sub-topology reads each topic (by its unresolved name).
    pub(crate) fn source_topics(&self) -> Vec<(TopicName, usize)> {
        let subs = self.sub_topologies();
        let mut topics = Vec::new();
        for (sub, nodes) in subs.iter().enumerate() {
            for &index in nodes {
                if let NodeKind::Source { topics: names, .. } = &self.nodes[index].kind {
                    topics.extend(names.iter().map(|topic| (topic.clone(), sub)));
                }
            }
        }
        topics
    }

    /// Internal topics (unresolved names) the runtime must create: every
    /// repartition topic.
    pub(crate) fn repartition_topics(&self) -> BTreeSet<TopicName> {
        self.nodes
            .iter()
            .filter_map(|node| match &node.kind {
                NodeKind::Sink { topic } if topic.internal => Some(topic.clone()),
                _ => None,
            })
            .collect()
    }

    /// The sub-topologies with at least one store.
    pub(crate) fn subs_with_stores(&self) -> BTreeSet<usize> {
        self.sub_topologies()
            .iter()
            .enumerate()
            .filter(|(_, nodes)| nodes.iter().any(|&index| !self.nodes[index].stores.is_empty()))
            .map(|(sub, _)| sub)
            .collect()
    }

    /// Logged stores, by the sub-topology they live in.
    pub(crate) fn logged_stores(&self) -> Vec<(String, usize, Option<i64>)> {
        let subs = self.sub_topologies();
        let mut stores = Vec::new();
        for (name, builder) in &self.stores {
            let sub = subs.iter().position(|nodes| nodes.iter().any(|&index| self.nodes[index].stores.contains(name)));
            if let (true, Some(sub)) = (builder.logging, sub) {
                stores.push((name.clone(), sub, builder.window_retention_ms));
            }
        }
        stores
    }

    /// The topology as Kafka's `Topology.describe()` prints it.
    pub fn describe(&self) -> TopologyDescription {
        let mut text = String::from("Topologies:\n");
        let names = |indexes: &mut dyn Iterator<Item = usize>| {
            let names: Vec<&str> = indexes.map(|index| self.nodes[index].name.as_str()).collect();
            if names.is_empty() { "none".to_string() } else { names.join(", ") }
        };
        for (sub, nodes) in self.sub_topologies().iter().enumerate() {
            text.push_str(&format!("   Sub-topology: {sub}\n"));
            for &index in nodes {
                let node = &self.nodes[index];
                match &node.kind {
                    NodeKind::Source { topics, .. } => {
                        let topics: Vec<&str> = topics.iter().map(|topic| topic.name.as_str()).collect();
                        text.push_str(&format!("    Source: {} (topics: [{}])\n", node.name, topics.join(", ")));
                    }
                    NodeKind::Processor => {
                        text.push_str(&format!(
                            "    Processor: {} (stores: [{}])\n",
                            node.name,
                            node.stores.join(", ")
                        ));
                    }
                    NodeKind::Sink { topic } => {
                        text.push_str(&format!("    Sink: {} (topic: {})\n", node.name, topic.name));
                    }
                }
                if !matches!(node.kind, NodeKind::Sink { .. }) {
                    text.push_str(&format!(
                        "      --> {}\n",
                        names(&mut node.children.iter().map(|(_, child)| *child))
                    ));
                }
                if !node.parents.is_empty() {
                    text.push_str(&format!("      <-- {}\n", names(&mut node.parents.iter().copied())));
                }
            }
            text.push('\n');
        }
        let first_global = self.sub_topologies().len();
        for (offset, global) in self.global_stores.iter().enumerate() {
            text.push_str(&format!(
                "   Sub-topology: {} for global store (will not generate tasks)\n",
                first_global + offset
            ));
            text.push_str(&format!("    Source: {} (topics: [{}])\n", global.source_name, global.topic));
            text.push_str(&format!("      --> {}\n", global.processor_name));
            text.push_str(&format!("    Processor: {} (stores: [{}])\n", global.processor_name, global.builder.name));
            text.push_str("      --> none\n");
            text.push_str(&format!("      <-- {}\n\n", global.source_name));
        }
        TopologyDescription { text }
    }

    /// Empty stores for the global tables, to fill from their topics.
    pub(crate) fn make_global_stores(&self) -> crate::processor::GlobalStores {
        let stores =
            self.global_stores.iter().map(|global| (global.builder.name.clone(), (global.builder.factory)())).collect();
        Arc::new(std::sync::Mutex::new(stores))
    }

    /// Which global store a topic fills.
    pub(crate) fn global_store_of(&self, topic: &str) -> Option<&str> {
        self.global_stores.iter().find(|global| global.topic == topic).map(|global| global.builder.name.as_str())
    }

    /// Makes the task for one partition of a sub-topology: its nodes,
    /// its stores (empty; the caller restores them), then `init` of each.
    pub(crate) fn make_task(
        self: &Arc<Self>,
        sub: usize,
        partition: i32,
        application_id: &str,
        wall_clock_ms: i64,
        global: crate::processor::GlobalStores,
        task_dir: &std::path::Path,
    ) -> Result<Task, StreamsError> {
        let subs = self.sub_topologies();
        let members = subs.get(sub).ok_or_else(|| StreamsError::Topology(format!("no sub-topology {sub}")))?;
        let mut nodes: Vec<Option<Box<dyn Node>>> = (0..self.nodes.len()).map(|_| None).collect();
        let mut stores = BTreeMap::new();
        for &index in members {
            let def = &self.nodes[index];
            let node = (def.factory)(application_id);
            nodes[index] = Some(node);
            for store in &def.stores {
                if !stores.contains_key(store) {
                    let builder =
                        self.stores.get(store).ok_or_else(|| StreamsError::Topology(format!("no store {store:?}")))?;
                    stores.insert(store.clone(), (builder.factory)());
                }
            }
        }
        // Persistent stores open their files before any processor's init
        // can read them; a damaged file is wiped and noted, so that the
        // caller restores it from the changelog's start.
        let mut wiped = std::collections::BTreeSet::new();
        for (name, store) in &mut stores {
            if store.open(&task_dir.join(name))? {
                wiped.insert(name.clone());
            }
        }
        let state = crate::processor::TaskState {
            application_id: application_id.to_string(),
            partition,
            stores,
            out: Vec::new(),
            stream_time_ms: -1,
            wall_clock_ms,
            schedules: Vec::new(),
            current: None,
            global,
        };
        let mut sources = Vec::new();
        for &index in members {
            if let NodeKind::Source { topics, .. } = &self.nodes[index].kind {
                sources.extend(topics.iter().map(|topic| (topic.resolve(application_id), index)));
            }
        }
        let mut task = Task {
            topology: Arc::clone(self),
            sub,
            nodes,
            state,
            sources,
            dir: task_dir.to_path_buf(),
            wiped,
            changelog_offsets: crate::checkpoint::CheckpointOffsets::new(),
            changelog_cache: None,
        };
        task.init()?;
        Ok(task)
    }
}

/// What `Topology::describe` returns; prints as Kafka's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyDescription {
    text: String,
}

impl fmt::Display for TopologyDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}
