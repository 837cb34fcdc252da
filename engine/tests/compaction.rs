//! Compacted logs: the cleaner against a map model (random keys, values and
//! tombstones, restarts, time passing, an offset map too small for every
//! key), a crash at every step of a clean, reads across the gaps it leaves,
//! retention with `compact,delete`, and batches it must not touch.
#![allow(clippy::unwrap_used)]

mod common;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use common::*;
use proptest::prelude::*;
use spate_engine::batch::{self, BatchBuilder};
use spate_engine::io::{CrashMode, SimStorage, Storage, TornSector, TraceOp};
use spate_engine::{CleanupPolicy, Clock, LogConfig, PartitionLog, ReadBound, TailCache};

const DELETE_RETENTION_MS: i64 = 2000;

/// (offset, key, value) of one record read back.
type Rec = (i64, Option<Vec<u8>>, Option<Vec<u8>>);

fn compact_config(clock: &Rc<Cell<i64>>) -> LogConfig {
    let clock = clock.clone();
    LogConfig {
        segment_bytes_max: 4096,
        index_interval_bytes: 512,
        preallocate_bytes: 16 * 1024,
        retention_ms: None,
        cleanup_policy: CleanupPolicy::Compact,
        delete_retention_ms: DELETE_RETENTION_MS,
        min_cleanable_dirty_ratio: 0.0,
        clean_bytes_per_sec: u64::MAX,
        clock: Clock::new(move || clock.get()),
        ..LogConfig::default()
    }
}

fn value_of(key: u8, serial: u32) -> Vec<u8> {
    format!("k{key}-v{serial}-").into_bytes().into_iter().cycle().take(120).collect()
}

/// A batch of keyed records; `None` values are tombstones.
fn keyed_batch(records: &[(Vec<u8>, Option<Vec<u8>>)], timestamp_ms: i64) -> BytesMut {
    let mut builder = BatchBuilder::new(timestamp_ms);
    for (key, value) in records {
        builder.push(timestamp_ms, Some(key), value.as_deref(), &[]);
    }
    builder.build()
}

fn records_of(batches: &[Bytes]) -> Vec<Rec> {
    let mut out = Vec::new();
    for bytes in batches {
        let info = batch::validate_stored(bytes, usize::MAX).unwrap();
        for record in batch::records(bytes).unwrap() {
            let record = record.unwrap();
            out.push((
                record.offset(info.base_offset),
                record.key.map(<[u8]>::to_vec),
                record.value.map(<[u8]>::to_vec),
            ));
        }
    }
    out
}

/// Every committed record from the log start, following batches (and the
/// gaps between them) by their headers' last offsets.
async fn read_records<S: Storage>(log: &PartitionLog<S>) -> Vec<Rec> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    loop {
        let output = log.read(offset, 16 * 1024, ReadBound::HighWatermark).await.unwrap();
        let Some(last) = output.batches.last() else { return out };
        let header = batch::peek_header(last).unwrap();
        offset = header.base_offset.get() + i64::from(header.last_offset_delta.get()) + 1;
        out.extend(records_of(&output.batches));
    }
}

async fn open_compacted(storage: &SimStorage, config: &LogConfig) -> PartitionLog<SimStorage> {
    PartitionLog::open(storage.clone(), log_dir(), config.clone(), TailCache::new(1 << 20)).await.unwrap()
}

#[derive(Debug, Clone)]
enum Op {
    /// One batch of (key, tombstone?) records.
    Append(Vec<(u8, bool)>),
    Clean,
    Advance(i64),
    Read(u16),
    Restart,
    CrashRestart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => prop::collection::vec((0u8..6, prop::bool::weighted(0.2)), 1..5).prop_map(Op::Append),
        3 => Just(Op::Clean),
        2 => (0i64..1500).prop_map(Op::Advance),
        2 => (0u16..1000).prop_map(Op::Read),
        1 => Just(Op::Restart),
        1 => Just(Op::CrashRestart),
    ]
}

/// What the log must hold: the records still present, with the batch each
/// came in, and each batch's delete horizon once the cleaner set one.
#[derive(Debug, Default)]
struct Model {
    records: Vec<(i64, u8, Option<Vec<u8>>, usize)>,
    horizons: Vec<Option<i64>>,
    log_end_offset: i64,
    serial: u32,
}

impl Model {
    fn expected(&self) -> Vec<Rec> {
        self.records.iter().map(|(offset, key, value, _)| (*offset, Some(vec![*key]), value.clone())).collect()
    }

    /// Kafka's rules with the pass's clean end: below it a key keeps only
    /// its latest record, a tombstone whose batch's horizon has passed goes,
    /// and a batch keeping a tombstone there gets a horizon.
    fn clean(&mut self, clean_end: i64, now_ms: i64) {
        let mut latest: BTreeMap<u8, i64> = BTreeMap::new();
        for (offset, key, _, _) in self.records.iter().filter(|r| r.0 < clean_end) {
            latest.insert(*key, *offset);
        }
        let horizons = &self.horizons;
        self.records.retain(|(offset, key, value, batch)| {
            if *offset >= clean_end {
                return true;
            }
            let superseded = latest[key] > *offset;
            let expired = value.is_none() && horizons[*batch].is_some_and(|h| h <= now_ms);
            !(superseded || expired)
        });
        for (offset, _, value, batch) in &self.records {
            if *offset < clean_end && value.is_none() && self.horizons[*batch].is_none() {
                self.horizons[*batch] = Some(now_ms + DELETE_RETENTION_MS);
            }
        }
    }
}

async fn apply(
    op: &Op,
    log: &mut PartitionLog<SimStorage>,
    storage: &mut SimStorage,
    clock: &Rc<Cell<i64>>,
    model: &mut Model,
) {
    let config = log.config().clone();
    match op {
        Op::Append(records) => {
            let batch_index = model.horizons.len();
            model.horizons.push(None);
            let mut encoded = Vec::new();
            for &(key, tombstone) in records {
                model.serial += 1;
                let value = (!tombstone).then(|| value_of(key, model.serial));
                model.records.push((model.log_end_offset, key, value.clone(), batch_index));
                model.log_end_offset += 1;
                encoded.push((vec![key], value));
            }
            log.append_durable(keyed_batch(&encoded, clock.get()), 0).await.unwrap();
        }
        Op::Clean => {
            let outcome = log.clean(clock.get()).await.unwrap();
            assert!(outcome.clean_end_offset <= model.log_end_offset);
            model.clean(outcome.clean_end_offset, clock.get());
        }
        Op::Advance(ms) => clock.set(clock.get() + ms),
        Op::Read(permille) => {
            let offset = model.log_end_offset * i64::from(*permille) / 1000;
            // As a consumer fetches: whole batches from the one whose offsets
            // reach `offset` (its records before `offset` are the consumer's
            // to skip), then on from the last batch's last offset + 1. A read
            // comes from one segment, as Kafka's does, so a batch the cleaner
            // left holding only earlier records can end an answer; the next
            // fetch must then move on, never stall.
            let mut fetch_offset = offset;
            let mut first = None;
            for _ in 0..1000 {
                let output = log.read(fetch_offset, 64 * 1024, ReadBound::HighWatermark).await.unwrap();
                let Some(head) = output.batches.first() else { break };
                let header = batch::peek_header(head).unwrap();
                assert!(header.base_offset.get() + i64::from(header.last_offset_delta.get()) >= fetch_offset);
                first = records_of(&output.batches).into_iter().find(|r| r.0 >= offset).map(|r| r.0);
                if first.is_some() {
                    break;
                }
                let last = batch::peek_header(output.batches.last().unwrap()).unwrap();
                let next = last.base_offset.get() + i64::from(last.last_offset_delta.get()) + 1;
                assert!(next > fetch_offset, "a fetch at {fetch_offset} made no progress");
                fetch_offset = next;
            }
            let expected = model.records.iter().find(|r| r.0 >= offset).map(|r| r.0);
            assert_eq!(first, expected, "fetch at {offset}");
        }
        Op::Restart => {
            log.close().await.unwrap();
            *log = open_compacted(storage, &config).await;
        }
        Op::CrashRestart => {
            *storage = storage.power_loss(CrashMode::DropUnsynced, TornSector::Zeros);
            *log = open_compacted(storage, &config).await;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn compaction_keeps_exactly_what_the_map_model_keeps(
        ops in prop::collection::vec(op(), 1..70),
        small_map in any::<bool>(),
    ) {
        run(async {
            let clock = Rc::new(Cell::new(1_000_000));
            let mut config = compact_config(&clock);
            if small_map {
                config.clean_offset_map_entries_max = 2;
            }
            let mut storage = SimStorage::new();
            let mut log = open_compacted(&storage, &config).await;
            let mut model = Model::default();
            for op in &ops {
                apply(op, &mut log, &mut storage, &clock, &mut model).await;
                let got = read_records(&log).await;
                assert_eq!(got, model.expected(), "after {op:?}");
                assert_eq!(log.log_end_offset(), model.log_end_offset);
            }
            // Cleaned until nothing changes, with every horizon passed, each
            // key has only its latest record below the active segment, and
            // no tombstone is left there.
            let mut outcome = Default::default();
            for _ in 0..2 {
                clock.set(clock.get() + DELETE_RETENTION_MS + 1);
                outcome = clean_until_nothing_changes(&log, &clock, &mut model).await;
            }
            let got = read_records(&log).await;
            assert_eq!(got, model.expected());
            let below: Vec<&Rec> = got.iter().filter(|r| r.0 < outcome.clean_end_offset).collect();
            let mut keys: Vec<&Option<Vec<u8>>> = below.iter().map(|r| &r.1).collect();
            let count = keys.len();
            keys.sort();
            keys.dedup();
            assert_eq!(keys.len(), count, "one record per key below the clean end");
            assert!(below.iter().all(|r| r.2.is_some()), "no expired tombstone below the clean end");
        });
    }
}

/// Cleans until a pass moves nothing, as the background cleaner would.
async fn clean_until_nothing_changes(
    log: &PartitionLog<SimStorage>,
    clock: &Rc<Cell<i64>>,
    model: &mut Model,
) -> spate_engine::CleanOutcome {
    let mut previous_end = i64::MIN;
    for _ in 0..1000 {
        let outcome = log.clean(clock.get()).await.unwrap();
        model.clean(outcome.clean_end_offset, clock.get());
        let moved = outcome.segments_rewritten + outcome.segments_deleted > 0;
        if !moved && outcome.clean_end_offset == previous_end {
            return outcome;
        }
        previous_end = outcome.clean_end_offset;
    }
    panic!("cleaning never settles");
}

/// Appends `rounds` batches cycling through 5 keys, every 7th record a
/// tombstone, so that several segments roll.
async fn append_keyed(log: &PartitionLog<SimStorage>, rounds: u32, timestamp_ms: i64) {
    for round in 0..rounds {
        let records: Vec<(Vec<u8>, Option<Vec<u8>>)> = (0..3)
            .map(|i| {
                let serial = round * 3 + i;
                let key = (serial % 5) as u8;
                (vec![key], (serial % 7 != 6).then(|| value_of(key, serial)))
            })
            .collect();
        log.append_durable(keyed_batch(&records, timestamp_ms), 0).await.unwrap();
    }
}

fn segment_bases(storage: &SimStorage) -> Vec<i64> {
    let mut bases: Vec<i64> = storage
        .paths()
        .iter()
        .filter_map(|path| path.file_name()?.to_str()?.strip_suffix(".log")?.parse().ok())
        .collect();
    bases.sort_unstable();
    bases
}

#[test]
fn a_crash_at_every_step_of_a_clean_leaves_each_segment_old_or_new() {
    let clock = Rc::new(Cell::new(1_000_000));
    let config = compact_config(&clock);
    let (trace, start, end, before, after, bases) = run(async {
        let storage = SimStorage::new();
        let log = open_compacted(&storage, &config).await;
        append_keyed(&log, 40, clock.get()).await;
        let before = read_records(&log).await;
        let bases = segment_bases(&storage);
        let start = storage.trace_len();
        let outcome = log.clean(clock.get()).await.unwrap();
        let end = storage.trace_len();
        assert!(outcome.segments_rewritten >= 2, "{outcome:?}");
        let after = read_records(&log).await;
        assert!(after.len() < before.len());
        (storage.trace(), start, end, before, after, bases)
    });
    assert!(bases.len() >= 4, "segments {bases:?}");
    let range_of = |records: &[Rec], at: usize| -> Vec<Rec> {
        let low = bases[at];
        let high = bases.get(at + 1).copied().unwrap_or(i64::MAX);
        records.iter().filter(|r| (low..high).contains(&r.0)).cloned().collect()
    };
    let mut crash_points = 0;
    for cut in start..=end {
        let disk = SimStorage::replay(&trace[..cut]);
        let modes = [
            CrashMode::DropUnsynced,
            CrashMode::KeepUnsynced,
            CrashMode::DropOldestUnsynced,
            CrashMode::TearNewestWrite { keep_bytes: 100 },
        ];
        // Each mode as a crash that keeps metadata, and as a power loss
        // (unsynced directory entries and size changes revert).
        for (mode, power_loss) in modes.into_iter().flat_map(|mode| [(mode, false), (mode, true)]) {
            crash_points += 1;
            run(async {
                let crashed = if power_loss { disk.power_loss(mode, TornSector::Garbage) } else { disk.crash(mode) };
                let mode = (mode, power_loss);
                let log = PartitionLog::open(crashed, log_dir(), config.clone(), TailCache::new(1 << 20))
                    .await
                    .unwrap_or_else(|err| panic!("recovery failed after op {cut} with {mode:?}: {err}"));
                let recovered = read_records(&log).await;
                for (at, base) in bases.iter().enumerate() {
                    let got = range_of(&recovered, at);
                    let (old, new) = (range_of(&before, at), range_of(&after, at));
                    assert!(got == old || got == new, "op {cut} {mode:?}: segment {base} is a mix");
                }
                // Cleaning again reaches the same log.
                log.clean(clock.get()).await.unwrap();
                assert_eq!(read_records(&log).await, after, "op {cut} {mode:?}: a second clean differs");
            });
        }
    }
    let renames = trace[start..end].iter().filter(|op| matches!(op, TraceOp::Rename { .. })).count();
    assert!(renames >= 4 && crash_points > 100, "{renames} renames, {crash_points} crash points");
}

#[test]
fn reads_by_offset_across_gaps_return_the_next_batch_with_offsets_unchanged() {
    run(async {
        let clock = Rc::new(Cell::new(1_000_000));
        let storage = SimStorage::new();
        let log = open_compacted(&storage, &compact_config(&clock)).await;
        // Key "a" is rewritten over and over; "b" once, at offset 1.
        let mut expected_b = None;
        for round in 0..60u32 {
            let key = if round == 1 { b"b".to_vec() } else { b"a".to_vec() };
            let value = value_of(key[0], round);
            if round == 1 {
                expected_b = Some((1i64, Some(key.clone()), Some(value.clone())));
            }
            log.append_durable(keyed_batch(&[(key, Some(value))], clock.get()), 0).await.unwrap();
        }
        let outcome = log.clean(clock.get()).await.unwrap();
        assert!(outcome.records_removed >= 30, "{outcome:?}");
        let got = read_records(&log).await;
        assert_eq!(got[0], expected_b.unwrap(), "b keeps offset 1");
        assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "offsets increase");
        // Offset 2 was removed: a fetch there gets the next batch left.
        let next = got.iter().find(|r| r.0 >= 2).unwrap().0;
        assert!(next > 2);
        let output = log.read(2, 1, ReadBound::HighWatermark).await.unwrap();
        assert_eq!(records_of(&output.batches)[0].0, next, "one record a batch here, so none before it");
        // Offset 0 (the first segment's first record) is gone too; the log
        // start stays.
        assert_eq!(log.log_start_offset(), 0);
        let output = log.read(0, 1, ReadBound::HighWatermark).await.unwrap();
        assert_eq!(records_of(&output.batches)[0].0, 1);
        // After a restart the gaps are accepted and the log still appends.
        log.close().await.unwrap();
        let log = open_compacted(&storage, &compact_config(&clock)).await;
        assert_eq!(read_records(&log).await, got);
        let info = log.append_durable(keyed_batch(&[(b"c".to_vec(), Some(b"x".to_vec()))], 0), 0).await.unwrap();
        assert_eq!(info.base_offset, 60);
    });
}

#[test]
fn tombstones_stay_for_delete_retention_and_then_go() {
    run(async {
        let clock = Rc::new(Cell::new(1_000_000));
        let storage = SimStorage::new();
        let log = open_compacted(&storage, &compact_config(&clock)).await;
        let value = Some(value_of(b'k', 0));
        log.append_durable(keyed_batch(&[(b"k".to_vec(), value)], clock.get()), 0).await.unwrap();
        log.append_durable(keyed_batch(&[(b"k".to_vec(), None)], clock.get()), 0).await.unwrap();
        append_keyed(&log, 40, clock.get()).await;
        log.clean(clock.get()).await.unwrap();
        let got = read_records(&log).await;
        assert_eq!(got[0], (1, Some(b"k".to_vec()), None), "the tombstone stays, the value is gone");
        clock.set(clock.get() + DELETE_RETENTION_MS - 1);
        assert!(!log.needs_clean(clock.get()));
        log.clean(clock.get()).await.unwrap();
        assert_eq!(read_records(&log).await[0].0, 1, "still within delete.retention.ms");
        clock.set(clock.get() + 1);
        assert!(log.needs_clean(clock.get()), "a passed horizon calls for a pass");
        log.clean(clock.get()).await.unwrap();
        let got = read_records(&log).await;
        assert!(got.iter().all(|r| r.1.as_deref() != Some(b"k")), "the tombstone went");
    });
}

#[test]
fn a_small_offset_map_cleans_as_far_as_it_reaches_and_later_passes_finish() {
    run(async {
        let clock = Rc::new(Cell::new(1_000_000));
        let config = LogConfig { clean_offset_map_entries_max: 2, ..compact_config(&clock) };
        let storage = SimStorage::new();
        let log = open_compacted(&storage, &config).await;
        append_keyed(&log, 40, clock.get()).await;
        let mut ends = Vec::new();
        for _ in 0..10 {
            ends.push(log.clean(clock.get()).await.unwrap().clean_end_offset);
        }
        assert!(ends[0] < ends[9], "passes move on: {ends:?}");
        assert!(ends.windows(2).all(|w| w[0] <= w[1]), "{ends:?}");
        let got = read_records(&log).await;
        let end = ends[9];
        let mut keys: Vec<_> = got.iter().filter(|r| r.0 < end).map(|r| r.1.clone()).collect();
        let count = keys.len();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), count);
    });
}

#[test]
fn compact_delete_applies_retention_and_compact_alone_does_not() {
    for policy in [CleanupPolicy::Compact, CleanupPolicy::CompactDelete] {
        run(async {
            let clock = Rc::new(Cell::new(1_000_000));
            let config = LogConfig { cleanup_policy: policy, retention_ms: Some(1000), ..compact_config(&clock) };
            let storage = SimStorage::new();
            let log = open_compacted(&storage, &config).await;
            append_keyed(&log, 40, 0).await;
            log.clean(clock.get()).await.unwrap();
            let segments = log.segment_count();
            let outcome = log.enforce_retention(clock.get()).await.unwrap();
            match policy {
                CleanupPolicy::Compact => {
                    assert_eq!(outcome.segments_deleted, 0);
                    assert_eq!(log.log_start_offset(), 0);
                }
                _ => {
                    assert_eq!(outcome.segments_deleted, segments - 1, "every sealed segment is old");
                    assert!(log.log_start_offset() > 0);
                    // What is left still cleans and reads.
                    log.clean(clock.get()).await.unwrap();
                    assert!(!read_records(&log).await.is_empty());
                }
            }
        });
    }
}

#[test]
fn a_delete_policy_is_left_alone() {
    run(async {
        let clock = Rc::new(Cell::new(1_000_000));
        let storage = SimStorage::new();
        let config = LogConfig { cleanup_policy: CleanupPolicy::Delete, ..compact_config(&clock) };
        let log = open_compacted(&storage, &config).await;
        append_keyed(&log, 40, clock.get()).await;
        let before = read_records(&log).await;
        assert!(!log.needs_clean(clock.get()));
        assert_eq!(log.clean(clock.get()).await.unwrap().segments_rewritten, 0);
        assert_eq!(read_records(&log).await, before);
    });
}
