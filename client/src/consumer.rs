//! `Consumer`: reads assigned partitions from the positions it was told.
//!
//! `poll` sends one fetch per destination (the leader's port for the core
//! that owns each partition) for every assigned partition that has a
//! position and no fetch out, and returns the records of the first answer
//! that has any. Fetches still out when `poll` returns stay out and are
//! read by the next `poll`, so a long poll on one core never holds up
//! records from another. An answer for a partition whose position changed
//! meanwhile (a `seek`) is dropped.
//!
//! Each fetch carries the leader epoch of the metadata that routed it, so
//! a deposed leader answers `FencedLeaderEpoch` rather than serving what
//! it holds. That, a moved leader, no leader, or a broken connection
//! refreshes the metadata and fetches the same position again after
//! `retry_backoff_ms`, from the leader the metadata names then.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use spate_flatbuf::proto::ErrorCode;
use spate_flatbuf::{OFFSET_EARLIEST, OFFSET_LATEST};
use tokio::time::Instant;

use crate::client::Client;
use crate::error::{ClientError, code_invalidates_metadata, code_is_retriable};
use crate::fetch;
use crate::metadata::TopicPartition;
use crate::protocol::{self, FetchEntry, FetchLimits, FetchResponse};

/// What to do when a partition has no position, or its position is out of
/// the log's range.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AutoOffsetReset {
    /// Fail `poll` with `NoPosition` or `OffsetOutOfRange`; the caller seeks.
    #[default]
    None,
    Earliest,
    Latest,
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// How long the broker may hold a fetch waiting for `fetch_min_bytes`.
    pub fetch_max_wait_ms: u64,
    pub fetch_min_bytes: usize,
    /// Record bytes per partition per fetch (at least one batch comes back
    /// even if it is larger).
    pub partition_fetch_bytes_max: usize,
    /// Record bytes per fetch response; must stay below the client's
    /// `frame_bytes_max`.
    pub fetch_bytes_max: usize,
    pub auto_offset_reset: AutoOffsetReset,
    /// Wait before fetching again from a partition after a retriable error.
    pub retry_backoff_ms: u64,
    /// Kafka's isolation.level: `ReadCommitted` reads only up to the last
    /// stable offset and skips the records of aborted transactions (what
    /// an exactly-once pipeline reads); `ReadUncommitted` (the default, as
    /// in Kafka) reads everything up to the high watermark.
    pub isolation_level: IsolationLevel,
}

/// Kafka's isolation.level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IsolationLevel {
    #[default]
    ReadUncommitted,
    ReadCommitted,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            fetch_max_wait_ms: 500,
            fetch_min_bytes: 1,
            partition_fetch_bytes_max: 1024 * 1024,
            fetch_bytes_max: 50 * 1024 * 1024,
            auto_offset_reset: AutoOffsetReset::None,
            retry_backoff_ms: 100,
            isolation_level: IsolationLevel::ReadUncommitted,
        }
    }
}

/// Where `seek` moves a partition's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeekTo {
    /// The log start offset.
    Earliest,
    /// The high watermark: only records produced from now on.
    Latest,
    Offset(i64),
    /// The first record with a timestamp at or after this (ms since the
    /// epoch); the high watermark if there is none.
    Timestamp(i64),
}

/// A record as the consumer returns it; key, value and header values are
/// slices of the fetch response, not copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
}

#[derive(Debug, Default, Clone)]
struct PartitionState {
    position: Option<i64>,
    high_watermark: Option<i64>,
    in_flight: bool,
    retry_at: Option<Instant>,
}

struct FetchOutcome {
    entries: Vec<FetchEntry>,
    result: Result<FetchResponse, ClientError>,
}

pub struct Consumer {
    client: Client,
    config: ConsumerConfig,
    partitions: BTreeMap<TopicPartition, PartitionState>,
    /// Behind a mutex only so that `Consumer` is `Sync` (the boxed futures
    /// are `Send`, not `Sync`), which makes the futures of its `&self`
    /// methods `Send`; it is only ever reached through `&mut self`
    /// (`get_mut`, no locking) or `Debug`.
    fetches: std::sync::Mutex<FuturesUnordered<BoxFuture<'static, FetchOutcome>>>,
    /// An error found while other partitions had records: those records
    /// are returned first (their positions already moved past them) and
    /// the error by the next `poll`.
    deferred_error: Option<ClientError>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("config", &self.config)
            .field("partitions", &self.partitions)
            .field("fetches_in_flight", &crate::lock(&self.fetches).len())
            .finish_non_exhaustive()
    }
}

fn to_i32(value: usize, name: &str) -> Result<i32, ClientError> {
    i32::try_from(value).map_err(|_| ClientError::InvalidConfig(format!("{name} {value} is over {}", i32::MAX)))
}

impl Consumer {
    pub fn new(client: Client, config: ConsumerConfig) -> Result<Consumer, ClientError> {
        to_i32(config.fetch_min_bytes, "fetch_min_bytes")?;
        to_i32(config.partition_fetch_bytes_max, "partition_fetch_bytes_max")?;
        to_i32(config.fetch_bytes_max, "fetch_bytes_max")?;
        i32::try_from(config.fetch_max_wait_ms)
            .map_err(|_| ClientError::InvalidConfig("fetch_max_wait_ms is over i32::MAX".into()))?;
        let frame_bytes_max = client.config().frame_bytes_max;
        if config.fetch_bytes_max >= frame_bytes_max || config.partition_fetch_bytes_max >= frame_bytes_max {
            return Err(ClientError::InvalidConfig(format!(
                "fetch_bytes_max and partition_fetch_bytes_max must be below the client's frame_bytes_max {frame_bytes_max}"
            )));
        }
        Ok(Consumer {
            client,
            config,
            partitions: BTreeMap::new(),
            fetches: std::sync::Mutex::new(FuturesUnordered::new()),
            deferred_error: None,
        })
    }

    /// Replaces the assignment. Partitions kept keep their positions; new
    /// ones have none until `seek` (or `auto_offset_reset`) gives one.
    pub fn assign(&mut self, partitions: Vec<TopicPartition>) {
        let mut kept = BTreeMap::new();
        for tp in partitions {
            let state = self.partitions.remove(&tp).unwrap_or_default();
            kept.insert(tp, state);
        }
        self.partitions = kept;
    }

    pub fn assignment(&self) -> Vec<TopicPartition> {
        self.partitions.keys().cloned().collect()
    }

    /// The offset of the next record `poll` returns for `tp`.
    pub fn position(&self, tp: &TopicPartition) -> Option<i64> {
        self.partitions.get(tp).and_then(|state| state.position)
    }

    /// The high watermark the last fetch of `tp` reported.
    pub fn high_watermark(&self, tp: &TopicPartition) -> Option<i64> {
        self.partitions.get(tp).and_then(|state| state.high_watermark)
    }

    /// Moves the position of `tp`; returns the new position.
    pub async fn seek(&mut self, tp: &TopicPartition, to: SeekTo) -> Result<i64, ClientError> {
        let positions = self.seek_many(std::slice::from_ref(tp), to).await?;
        positions
            .first()
            .map(|(_, offset)| *offset)
            .ok_or_else(|| ClientError::NotAssigned { topic: tp.topic.clone(), partition: tp.partition })
    }

    /// Moves the positions of several partitions with one lookup per broker.
    pub async fn seek_many(
        &mut self,
        partitions: &[TopicPartition],
        to: SeekTo,
    ) -> Result<Vec<(TopicPartition, i64)>, ClientError> {
        if let Some(tp) = partitions.iter().find(|tp| !self.partitions.contains_key(tp)) {
            return Err(ClientError::NotAssigned { topic: tp.topic.clone(), partition: tp.partition });
        }
        let positions = match to {
            SeekTo::Offset(offset) if offset < 0 => {
                return Err(ClientError::InvalidConfig(format!("cannot seek to negative offset {offset}")));
            }
            SeekTo::Offset(offset) => partitions.iter().map(|tp| (tp.clone(), offset)).collect(),
            SeekTo::Earliest => self.list_offsets(partitions, OFFSET_EARLIEST).await?,
            SeekTo::Latest => self.list_offsets(partitions, OFFSET_LATEST).await?,
            SeekTo::Timestamp(timestamp_ms) => self.offsets_for_time(partitions, timestamp_ms).await?,
        };
        for (tp, offset) in &positions {
            if let Some(state) = self.partitions.get_mut(tp) {
                state.position = Some(*offset);
                state.retry_at = None;
            }
        }
        Ok(positions)
    }

    /// Each partition's log start offset.
    pub async fn beginning_offsets(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<Vec<(TopicPartition, i64)>, ClientError> {
        self.list_offsets(partitions, OFFSET_EARLIEST).await
    }

    /// Each partition's high watermark: the offset the next acknowledged
    /// record will get.
    pub async fn end_offsets(&self, partitions: &[TopicPartition]) -> Result<Vec<(TopicPartition, i64)>, ClientError> {
        self.list_offsets(partitions, OFFSET_LATEST).await
    }

    async fn list_offsets(
        &self,
        partitions: &[TopicPartition],
        timestamp: i64,
    ) -> Result<Vec<(TopicPartition, i64)>, ClientError> {
        let entries: Vec<(TopicPartition, i64)> = partitions.iter().map(|tp| (tp.clone(), timestamp)).collect();
        let listed =
            self.client.list_offsets(&entries, self.config.isolation_level == IsolationLevel::ReadCommitted).await?;
        partitions
            .iter()
            .map(|tp| {
                let offset = listed.get(tp).map(|listed| listed.offset).unwrap_or(-1);
                if offset < 0 {
                    return Err(ClientError::Protocol(format!("the broker listed no offset for {tp}")));
                }
                Ok((tp.clone(), offset))
            })
            .collect()
    }

    /// The first offset at or after `timestamp_ms`, or the high watermark
    /// for partitions with no such record.
    async fn offsets_for_time(
        &self,
        partitions: &[TopicPartition],
        timestamp_ms: i64,
    ) -> Result<Vec<(TopicPartition, i64)>, ClientError> {
        let entries: Vec<(TopicPartition, i64)> = partitions.iter().map(|tp| (tp.clone(), timestamp_ms)).collect();
        let listed =
            self.client.list_offsets(&entries, self.config.isolation_level == IsolationLevel::ReadCommitted).await?;
        let past_the_end: Vec<TopicPartition> =
            partitions.iter().filter(|tp| listed.get(tp).is_none_or(|listed| listed.offset < 0)).cloned().collect();
        let ends = if past_the_end.is_empty() { Vec::new() } else { self.end_offsets(&past_the_end).await? };
        Ok(partitions
            .iter()
            .map(|tp| {
                let found = listed.get(tp).map(|listed| listed.offset).filter(|&offset| offset >= 0);
                let end = ends.iter().find(|(end_tp, _)| end_tp == tp).map(|(_, offset)| *offset);
                (tp.clone(), found.or(end).unwrap_or(0))
            })
            .collect())
    }

    /// Waits up to `timeout` for records from the assigned partitions;
    /// returns an empty list if none came.
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>, ClientError> {
        if let Some(error) = self.deferred_error.take() {
            return Err(error);
        }
        let deadline = Instant::now() + timeout;
        loop {
            self.resolve_positions().await?;
            self.start_fetches().await?;
            let wake_at = self.earliest_retry().map_or(deadline, |retry_at| retry_at.min(deadline));
            let fetches = self.fetches.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
            let fetched = if fetches.is_empty() {
                tokio::time::sleep_until(wake_at).await;
                None
            } else {
                tokio::select! {
                    biased;
                    Some(outcome) = fetches.next() => Some(outcome),
                    () = tokio::time::sleep_until(wake_at) => None,
                }
            };
            if let Some(outcome) = fetched {
                let records = self.handle(outcome);
                if !records.is_empty() {
                    return Ok(records);
                }
                if let Some(error) = self.deferred_error.take() {
                    return Err(error);
                }
            }
            if Instant::now() >= deadline {
                return Ok(Vec::new());
            }
        }
    }

    fn earliest_retry(&self) -> Option<Instant> {
        self.partitions.values().filter(|state| !state.in_flight).filter_map(|state| state.retry_at).min()
    }

    /// Gives every assigned partition without a position one, by the
    /// `auto_offset_reset` policy, or fails with `NoPosition`.
    async fn resolve_positions(&mut self) -> Result<(), ClientError> {
        let missing: Vec<TopicPartition> =
            self.partitions.iter().filter(|(_, state)| state.position.is_none()).map(|(tp, _)| tp.clone()).collect();
        let Some(first) = missing.first() else { return Ok(()) };
        let to = match self.config.auto_offset_reset {
            AutoOffsetReset::None => {
                return Err(ClientError::NoPosition { topic: first.topic.clone(), partition: first.partition });
            }
            AutoOffsetReset::Earliest => SeekTo::Earliest,
            AutoOffsetReset::Latest => SeekTo::Latest,
        };
        self.seek_many(&missing, to).await?;
        Ok(())
    }

    /// Sends a fetch to each destination for its partitions that have a
    /// position, no fetch out and no backoff running.
    async fn start_fetches(&mut self) -> Result<(), ClientError> {
        let now = Instant::now();
        let candidates: Vec<(TopicPartition, i64)> = self
            .partitions
            .iter()
            .filter(|(_, state)| !state.in_flight && state.retry_at.is_none_or(|at| at <= now))
            .filter_map(|(tp, state)| state.position.map(|position| (tp.clone(), position)))
            .collect();
        let partition_bytes_max = to_i32(self.config.partition_fetch_bytes_max, "partition_fetch_bytes_max")?;
        let mut by_address: BTreeMap<String, Vec<FetchEntry>> = BTreeMap::new();
        for (tp, offset) in candidates {
            match self.client.partition_route(&tp).await {
                Ok(route) => by_address.entry(route.address).or_default().push(FetchEntry {
                    tp,
                    offset,
                    max_bytes: partition_bytes_max,
                    current_leader_epoch: route.leader_epoch,
                }),
                Err(error) if error.is_retriable() => {
                    // No leader yet (or the topic is not in the metadata
                    // yet): the metadata is marked stale; look again soon.
                    tracing::debug!(%tp, %error, "no leader to fetch from; backing off");
                    self.back_off(&tp);
                }
                Err(error) => return Err(error),
            }
        }
        let limits = FetchLimits {
            max_wait_ms: i32::try_from(self.config.fetch_max_wait_ms).unwrap_or(i32::MAX),
            min_bytes: to_i32(self.config.fetch_min_bytes, "fetch_min_bytes")?,
            max_bytes: to_i32(self.config.fetch_bytes_max, "fetch_bytes_max")?,
            read_committed: self.config.isolation_level == IsolationLevel::ReadCommitted,
        };
        // The broker may hold the fetch for max_wait_ms before it answers.
        let timeout = self.client.request_timeout() + Duration::from_millis(self.config.fetch_max_wait_ms);
        for (address, entries) in by_address {
            for entry in &entries {
                if let Some(state) = self.partitions.get_mut(&entry.tp) {
                    state.in_flight = true;
                }
            }
            let client = self.client.clone();
            let fetches = self.fetches.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
            fetches.push(Box::pin(async move {
                let result = client
                    .request(&address, timeout, |stamp| protocol::fetch(stamp, limits, &entries))
                    .await
                    .and_then(protocol::decode_fetch);
                FetchOutcome { entries, result }
            }));
        }
        Ok(())
    }

    fn back_off(&mut self, tp: &TopicPartition) {
        if let Some(state) = self.partitions.get_mut(tp) {
            state.retry_at = Some(Instant::now() + Duration::from_millis(self.config.retry_backoff_ms));
        }
    }

    /// Takes the records out of a fetch answer and moves positions past
    /// them. A failure that `poll` must report goes to `deferred_error`.
    fn handle(&mut self, outcome: FetchOutcome) -> Vec<ConsumerRecord> {
        for entry in &outcome.entries {
            if let Some(state) = self.partitions.get_mut(&entry.tp) {
                state.in_flight = false;
            }
        }
        let response = match outcome.result {
            Ok(response) => response,
            Err(error) => {
                if error.is_retriable() {
                    tracing::debug!(%error, "fetch failed; backing off");
                    for entry in &outcome.entries {
                        self.back_off(&entry.tp);
                    }
                } else {
                    self.deferred_error = Some(error);
                }
                return Vec::new();
            }
        };
        let mut records = Vec::new();
        for entry in &outcome.entries {
            if let Err(error) = self.take_partition(entry, &response, &mut records) {
                self.deferred_error.get_or_insert(error);
            }
        }
        records
    }

    fn take_partition(
        &mut self,
        entry: &FetchEntry,
        response: &FetchResponse,
        records: &mut Vec<ConsumerRecord>,
    ) -> Result<(), ClientError> {
        let Some(fetched) = response.partitions.iter().find(|fetched| fetched.tp == entry.tp) else {
            // The broker left it out (max_bytes reached): fetch it again.
            return Ok(());
        };
        let Some(state) = self.partitions.get_mut(&entry.tp) else { return Ok(()) };
        if state.position != Some(entry.offset) {
            // Sought elsewhere while the fetch was out.
            return Ok(());
        }
        match fetched.error {
            None => {
                if fetched.high_watermark >= 0 {
                    state.high_watermark = Some(fetched.high_watermark);
                }
                let parsed = fetch::partition_records(
                    &entry.tp,
                    &response.payload,
                    fetched.records_offset,
                    fetched.records_bytes,
                    entry.offset,
                    &fetched.aborted,
                )?;
                state.position = Some(parsed.next_offset);
                records.extend(parsed.records);
                Ok(())
            }
            Some(ErrorCode::OffsetOutOfRange) => match self.config.auto_offset_reset {
                AutoOffsetReset::None => Err(ClientError::OffsetOutOfRange {
                    topic: entry.tp.topic.clone(),
                    partition: entry.tp.partition,
                    offset: entry.offset,
                }),
                AutoOffsetReset::Earliest | AutoOffsetReset::Latest => {
                    tracing::info!(tp = %entry.tp, offset = entry.offset, "offset out of range; resetting");
                    state.position = None;
                    Ok(())
                }
            },
            Some(code) if code_is_retriable(code) => {
                // The leader moved (NotLeaderOrFollower), our leader epoch
                // is older or newer than the broker's (FencedLeaderEpoch,
                // UnknownLeaderEpoch), or there is no leader: refresh the
                // metadata and fetch the same position again, from
                // whichever broker leads then.
                tracing::debug!(tp = %entry.tp, offset = entry.offset, ?code, "fetch refused; retrying");
                if code_invalidates_metadata(code) {
                    self.client.invalidate_metadata();
                }
                self.back_off(&entry.tp);
                Ok(())
            }
            Some(code) => Err(ClientError::Server { code, message: Some(format!("fetch of {}", entry.tp)) }),
        }
    }
}
