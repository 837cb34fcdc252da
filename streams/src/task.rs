//! A task: one partition of one sub-topology, with its nodes and stores.
//! The test driver and the runtime both feed records through tasks.

use std::collections::BTreeSet;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::cache::ChangelogCache;
use crate::checkpoint::{CheckpointError, CheckpointOffsets, write_checkpoint};

use crate::error::StreamsError;
use crate::processor::{DynRecord, Node, OutRecord, ProcessorContext, PunctuationType, TaskState};
use crate::store::{StateStore, changelog_topic};
use crate::topology::{NodeKind, SourceRecord, Topology};

pub(crate) struct Task {
    pub topology: Arc<Topology>,
    pub sub: usize,
    pub nodes: Vec<Option<Box<dyn Node>>>,
    pub state: TaskState,
    /// Resolved source topic and the source node that reads it.
    pub sources: Vec<(String, usize)>,
    /// `<state.dir>/<application.id>/<sub>_<partition>`: its persistent
    /// stores and its `.checkpoint`.
    pub dir: PathBuf,
    /// Persistent stores whose files were damaged and wiped at open: they
    /// restore from the changelog's start whatever the checkpoint says.
    pub wiped: BTreeSet<String>,
    /// Per changelog partition of a persistent store, the next offset
    /// after what the store holds once flushed: the restore's end, then
    /// each acknowledged changelog write. What the checkpoint records.
    pub changelog_offsets: CheckpointOffsets,
    /// With a cache (the runtime's tasks), changelog writes wait in it
    /// until the runtime drains it; without (the test driver, which
    /// commits after every record anyway), they go out with the output.
    pub changelog_cache: Option<ChangelogCache>,
}

/// A task's directory, by Kafka's task id (`<sub-topology>_<partition>`).
pub(crate) fn task_dir(state_dir: &Path, application_id: &str, sub: usize, partition: i32) -> PathBuf {
    state_dir.join(application_id).join(format!("{sub}_{partition}"))
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task").field("sub", &self.sub).field("partition", &self.state.partition).finish()
    }
}

/// Whether a record went through or was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Processed {
    Done,
    /// Its timestamp was negative (logged).
    SkippedTimestamp,
}

impl Task {
    pub fn init(&mut self) -> Result<(), StreamsError> {
        for index in 0..self.nodes.len() {
            self.with_node(index, |node, ctx| node.init(ctx))?;
        }
        Ok(())
    }

    /// Runs `call` on node `index` with its context, then runs what it
    /// forwarded, depth first.
    fn with_node(
        &mut self,
        index: usize,
        call: impl FnOnce(&mut Box<dyn Node>, &mut ProcessorContext<'_, (), ()>) -> Result<(), StreamsError>,
    ) -> Result<(), StreamsError> {
        let Some(mut node) = self.nodes.get_mut(index).and_then(Option::take) else {
            return Ok(());
        };
        let topology = Arc::clone(&self.topology);
        let def = &topology.nodes[index];
        let mut forwarded = Vec::new();
        let result = {
            let mut ctx = ProcessorContext {
                node: index,
                node_name: &def.name,
                children: &def.children,
                forwarded: &mut forwarded,
                state: &mut self.state,
                _types: PhantomData,
            };
            call(&mut node, &mut ctx)
        };
        self.nodes[index] = Some(node);
        result?;
        for (child, record) in forwarded {
            self.dispatch(child, record)?;
        }
        Ok(())
    }

    fn dispatch(&mut self, index: usize, record: DynRecord) -> Result<(), StreamsError> {
        self.with_node(index, |node, ctx| node.process(ctx, record))
    }

    /// Runs one input record through the sub-topology. A record that cannot
    /// be deserialized is an error the caller's handler decides on; the
    /// task is unchanged by it.
    pub fn process(
        &mut self,
        topic: &str,
        offset: i64,
        timestamp_ms: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<Processed, StreamsError> {
        let source = self
            .sources
            .iter()
            .find(|(name, _)| name == topic)
            .map(|(_, index)| *index)
            .ok_or_else(|| StreamsError::Topology(format!("task {} does not read topic {topic:?}", self.sub)))?;
        let NodeKind::Source { decode, extractor, .. } = &self.topology.nodes[source].kind else {
            return Err(StreamsError::Topology(format!("node {source} is not a source")));
        };
        let partition = self.state.partition;
        let timestamp_ms = match extractor {
            Some(extract) => extract(&SourceRecord { topic, partition, offset, timestamp_ms, key, value }),
            None => timestamp_ms,
        };
        if timestamp_ms < 0 {
            tracing::warn!(topic, partition, offset, timestamp_ms, "skipping record with a negative timestamp");
            return Ok(Processed::SkippedTimestamp);
        }
        let (key, value) = decode(topic, key, value).map_err(|source| StreamsError::Deserialization {
            topic: topic.to_string(),
            partition,
            offset,
            source,
        })?;
        self.state.stream_time_ms = self.state.stream_time_ms.max(timestamp_ms);
        self.state.current = Some((topic.to_string(), offset));
        let result = self.dispatch(source, DynRecord { key, value, timestamp_ms });
        self.state.current = None;
        self.log_changes(timestamp_ms);
        result?;
        self.punctuate(PunctuationType::StreamTime, self.state.stream_time_ms)?;
        Ok(Processed::Done)
    }

    /// Moves the task's wall clock and runs the wall-clock punctuations due.
    pub fn advance_wall_clock(&mut self, wall_clock_ms: i64) -> Result<(), StreamsError> {
        self.state.wall_clock_ms = self.state.wall_clock_ms.max(wall_clock_ms);
        self.punctuate(PunctuationType::WallClockTime, self.state.wall_clock_ms)
    }

    fn punctuate(&mut self, kind: PunctuationType, now_ms: i64) -> Result<(), StreamsError> {
        for position in 0..self.state.schedules.len() {
            let schedule = self.state.schedules[position].clone();
            if schedule.kind != kind {
                continue;
            }
            let due_ms = schedule.next_ms.unwrap_or(now_ms);
            if now_ms < due_ms {
                continue;
            }
            // Missed intervals are not replayed: the next is the first one
            // after now, as Kafka's punctuation schedule.
            let missed = (now_ms - due_ms) / schedule.interval_ms;
            self.state.schedules[position].next_ms =
                Some(due_ms.saturating_add((missed + 1).saturating_mul(schedule.interval_ms)));
            self.with_node(schedule.node, |node, ctx| node.punctuate(ctx, schedule.id, now_ms))?;
            self.log_changes(now_ms);
        }
        Ok(())
    }

    fn log_changes(&mut self, timestamp_ms: i64) {
        let (application_id, partition) = (&self.state.application_id, self.state.partition);
        for (name, store) in &mut self.state.stores {
            let changes = store.take_changes();
            let logged = self.topology.stores.get(name).is_some_and(|builder| builder.logging);
            if !logged {
                continue;
            }
            let topic = changelog_topic(application_id, name);
            if let Some(cache) = &mut self.changelog_cache {
                for (key, value) in changes {
                    cache.put(&topic, key, value, timestamp_ms);
                }
                continue;
            }
            self.state.out.extend(changes.into_iter().map(|(key, value)| OutRecord {
                topic: topic.clone(),
                partition: Some(partition),
                key: Some(key),
                value,
                timestamp_ms,
                headers: Vec::new(),
            }));
        }
    }

    /// The changelog writes waiting in the cache, newest per key; empties it.
    pub fn take_cached_changelog(&mut self) -> Vec<OutRecord> {
        let partition = self.state.partition;
        self.changelog_cache.as_mut().map(|cache| cache.drain(partition)).unwrap_or_default()
    }

    pub fn cached_changelog_bytes(&self) -> usize {
        self.changelog_cache.as_ref().map_or(0, ChangelogCache::size_bytes)
    }

    /// What the task wrote since the last call, in order.
    pub fn take_output(&mut self) -> Vec<OutRecord> {
        std::mem::take(&mut self.state.out)
    }

    /// The task's stores with a changelog, and the changelog's topic.
    pub fn logged_stores(&self) -> Vec<(String, String)> {
        self.state
            .stores
            .keys()
            .filter(|name| self.topology.stores.get(*name).is_some_and(|builder| builder.logging))
            .map(|name| (name.clone(), changelog_topic(&self.state.application_id, name)))
            .collect()
    }

    pub fn restore(&mut self, store: &str, key: &[u8], value: Option<&[u8]>) -> Result<(), StreamsError> {
        let target = self
            .state
            .stores
            .get_mut(store)
            .ok_or_else(|| StreamsError::Store { name: store.to_string(), reason: "not in this task".into() })?;
        target.restore(key, value)?;
        // A restored change is already in the changelog.
        target.take_changes();
        Ok(())
    }

    /// Whether the named store keeps its state on disk.
    pub fn is_persistent(&self, store: &str) -> bool {
        self.state.stores.get(store).is_some_and(|store| store.persistent())
    }

    /// Empties a store before it is restored from the changelog's start.
    pub fn wipe(&mut self, store: &str) -> Result<(), StreamsError> {
        match self.state.stores.get_mut(store) {
            Some(target) => target.wipe(),
            None => Ok(()),
        }
    }

    /// Makes every store's changes durable (before the checkpoint names
    /// the changelog offsets they reach).
    pub fn flush_stores(&mut self) -> Result<(), StreamsError> {
        self.state.stores.values_mut().try_for_each(|store| store.flush())
    }

    /// Writes the task's checkpoint: the changelog offsets its persistent
    /// stores hold, once flushed. Call after `flush_stores`, and only when
    /// every changelog write up to those offsets is acknowledged.
    pub fn write_checkpoint(&self) -> Result<(), CheckpointError> {
        if self.changelog_offsets.is_empty() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir).map_err(|source| CheckpointError::Io { path: self.dir.clone(), source })?;
        write_checkpoint(&self.dir, &self.changelog_offsets)
    }

    pub fn store(&self, name: &str) -> Option<&dyn StateStore> {
        self.state.stores.get(name).map(|store| store.as_ref())
    }
}

/// A record that could not be deserialized, as it goes to the dead letter
/// queue (KIP-1034's headers): its key and value bytes unchanged, and
/// where it came from and why it failed.
pub(crate) fn dead_letter_record(
    dead_letter_topic: &str,
    error: &StreamsError,
    source: (&str, i32, i64),
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    timestamp_ms: i64,
) -> OutRecord {
    let (topic, partition, offset) = source;
    let header = |name: &str, value: String| (name.to_string(), bytes::Bytes::from(value));
    OutRecord {
        topic: dead_letter_topic.to_string(),
        partition: None,
        key: key.map(bytes::Bytes::copy_from_slice),
        value: value.map(bytes::Bytes::copy_from_slice),
        timestamp_ms,
        headers: vec![
            header("__streams.errors.exception", "spate_streams::StreamsError::Deserialization".into()),
            header("__streams.errors.message", error.to_string()),
            header("__streams.errors.topic", topic.to_string()),
            header("__streams.errors.partition", partition.to_string()),
            header("__streams.errors.offset", offset.to_string()),
        ],
    }
}
