//! Model-based property test of transactions: random producers begin,
//! append to, commit and abort transactions (with epoch bumps, markers
//! resent), among plain appends, truncations, retention, log start moves,
//! clean restarts, and power losses with appends in flight. After every
//! step the log's open transactions, aborted list, last stable offset and
//! read_committed view must equal what a full replay of the log gives:
//! the batches it holds now, after those retention took (remembered from
//! before). This is the invariant the `.txnindex` files, the producer
//! snapshots and the replays at open and truncation must keep together.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use bytes::Bytes;
use common::*;
use proptest::prelude::*;
use spate_engine::batch::{self, BatchBuilder};
use spate_engine::io::{CrashMode, SimStorage, TornSector};
use spate_engine::producer_state::ProducerStateTable;
use spate_engine::{AbortedTxn, LogConfig, PartitionLog, ReadBound, TxnMarker};

const PRODUCERS: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    /// A transactional batch from a producer (opening its transaction if
    /// none is open).
    Data {
        producer: usize,
        records: usize,
        value_bytes: usize,
    },
    /// A batch outside any transaction.
    Plain {
        value_bytes: usize,
    },
    /// A marker; `bump` ends the transaction with the epoch + 1 (KIP-890).
    End {
        producer: usize,
        commit: bool,
        bump: bool,
    },
    Truncate {
        at_permille: u16,
    },
    Retention,
    AdvanceStart {
        at_permille: u16,
    },
    Restart,
    /// Appends these producers' batches and a marker without waiting, then
    /// loses power.
    CrashWithAppendsInFlight {
        producers: Vec<usize>,
        commit: bool,
    },
    CrashRestart,
    /// Moves the high watermark part of the way to the written end (the
    /// replicated run only; with one replica it follows the acks).
    MoveHighWatermark {
        at_permille: u16,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..PRODUCERS, 1usize..4, 0usize..1500)
            .prop_map(|(producer, records, value_bytes)| Op::Data { producer, records, value_bytes }),
        2 => (0usize..1500).prop_map(|value_bytes| Op::Plain { value_bytes }),
        5 => (0..PRODUCERS, any::<bool>(), prop::bool::weighted(0.3))
            .prop_map(|(producer, commit, bump)| Op::End { producer, commit, bump }),
        1 => (0u16..1000).prop_map(|at_permille| Op::Truncate { at_permille }),
        1 => Just(Op::Retention),
        1 => (0u16..=1000).prop_map(|at_permille| Op::AdvanceStart { at_permille }),
        1 => Just(Op::Restart),
        1 => (prop::collection::vec(0..PRODUCERS, 1..4), any::<bool>())
            .prop_map(|(producers, commit)| Op::CrashWithAppendsInFlight { producers, commit }),
        1 => Just(Op::CrashRestart),
        3 => (0u16..=1000).prop_map(|at_permille| Op::MoveHighWatermark { at_permille }),
    ]
}

/// What the test knows besides the log: each producer's epoch and next
/// sequence, and the batches retention has taken (by base offset).
#[derive(Debug, Default)]
struct Model {
    /// Replication moves the high watermark (`MoveHighWatermark`), so
    /// markers stay above it for a while and hold the last stable offset.
    replicated: bool,
    epochs: [i16; PRODUCERS],
    next_seq: [i32; PRODUCERS],
    deleted: Vec<(i64, Bytes)>,
    next_value: u32,
}

impl Model {
    fn producer_id(producer: usize) -> i64 {
        100 + producer as i64
    }

    /// After a crash or a truncation the log may have lost a producer's
    /// last batches: every producer moves to a new epoch, at sequence 0.
    fn bump_all(&mut self) {
        for producer in 0..PRODUCERS {
            self.epochs[producer] += 1;
            self.next_seq[producer] = 0;
        }
    }

    fn data_batch(&mut self, producer: usize, records: usize, value_bytes: usize) -> bytes::BytesMut {
        let id = Self::producer_id(producer);
        let mut builder =
            BatchBuilder::new(0).producer(id, self.epochs[producer], self.next_seq[producer]).transactional();
        for _ in 0..records {
            builder.push(0, Some(b"k"), Some(&self.value(value_bytes)), &[]);
        }
        self.next_seq[producer] += records as i32;
        builder.build()
    }

    fn value(&mut self, value_bytes: usize) -> Vec<u8> {
        self.next_value += 1;
        format!("v{}-", self.next_value).into_bytes().into_iter().cycle().take(value_bytes.max(4)).collect()
    }

    fn marker(&mut self, producer: usize, commit: bool, bump: bool) -> TxnMarker {
        if bump {
            self.epochs[producer] += 1;
            self.next_seq[producer] = 0;
        }
        let producer_id = Self::producer_id(producer);
        TxnMarker { producer_id, producer_epoch: self.epochs[producer], commit, coordinator_epoch: 1 }
    }
}

impl Model {
    fn config(&self) -> LogConfig {
        LogConfig {
            retention_bytes: Some(24 * 1024),
            high_watermark_follows_acks: !self.replicated,
            ..pipelined_config()
        }
    }
}

/// Every batch of the log from its start (`LogEnd`: appended ones too).
async fn log_batches(log: &PartitionLog<SimStorage>) -> Vec<(i64, Bytes)> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    loop {
        let output = log.read(offset, 1 << 20, ReadBound::LogEnd).await.unwrap();
        if output.batches.is_empty() {
            return out;
        }
        for bytes in output.batches {
            let info = batch::validate_stored(&bytes, usize::MAX).unwrap();
            offset = info.last_offset() + 1;
            out.push((info.base_offset, bytes));
        }
    }
}

/// What a fresh table reaches by recording every batch in order.
struct Replayed {
    ongoing: Vec<(i64, i64)>,
    /// By marker offset.
    aborted: Vec<AbortedTxn>,
    /// (first offset, marker offset) of every committed transaction.
    committed: Vec<(i64, i64)>,
}

fn replay(batches: &[(i64, Bytes)]) -> Replayed {
    let mut table = ProducerStateTable::default();
    let (mut aborted, mut committed) = (Vec::new(), Vec::new());
    for (_, bytes) in batches {
        let info = batch::validate_stored(bytes, usize::MAX).unwrap();
        let marker = spate_engine::producer_state::marker_of(&info, bytes);
        let Some(done) = table.record(&info, marker) else { continue };
        if done.commit {
            committed.push((done.first_offset, done.last_offset));
        } else {
            aborted.push(AbortedTxn {
                producer_id: done.producer_id,
                first_offset: done.first_offset,
                last_offset: done.last_offset,
                last_stable_offset: done.last_stable_offset,
            });
        }
    }
    Replayed { ongoing: table.ongoing_transactions().collect(), aborted, committed }
}

/// What a read_committed consumer keeps of `batches` below `end`: the data
/// records, less control batches and the batches of `aborted`
/// transactions (by producer and offset range, as Kafka's consumer does).
fn committed_view(batches: &[(i64, Bytes)], aborted: &[AbortedTxn], start: i64, end: i64) -> Vec<(i64, Vec<u8>)> {
    let mut out = Vec::new();
    for (_, bytes) in batches {
        let info = batch::validate_stored(bytes, usize::MAX).unwrap();
        let in_aborted = aborted.iter().any(|txn| {
            txn.producer_id == info.producer_id && (txn.first_offset..=txn.last_offset).contains(&info.base_offset)
        });
        if info.attributes().is_control() || (info.attributes().is_transactional() && in_aborted) {
            continue;
        }
        for record in batch::records(bytes).unwrap() {
            let record = record.unwrap();
            let offset = record.offset(info.base_offset);
            if (start..end).contains(&offset) {
                out.push((offset, record.value.unwrap_or_default().to_vec()));
            }
        }
    }
    out
}

async fn check(log: &PartitionLog<SimStorage>, model: &mut Model) {
    let log_start_offset = log.log_start_offset();
    let current = log_batches(log).await;
    // Retention only ever takes the oldest batches; a power loss may bring
    // back ones it took before its directory sync.
    model.deleted.retain(|(base, _)| *base < log_start_offset);
    let mut all = model.deleted.clone();
    all.extend(current.iter().cloned());
    let Replayed { ongoing, aborted, committed } = replay(&all);
    let aborted: Vec<AbortedTxn> = aborted.into_iter().filter(|txn| txn.last_offset >= log_start_offset).collect();
    assert_eq!(log.ongoing_transactions(), ongoing, "open transactions");
    let mut by_first = aborted.clone();
    by_first.sort_by_key(|txn| (txn.first_offset, txn.last_offset));
    assert_eq!(log.aborted_transactions(i64::MIN, i64::MAX).await.unwrap(), by_first, "aborted transactions");
    let high_watermark = log.high_watermark();
    // Completed transactions hold it too while their marker is not below
    // the high watermark.
    let completed = committed.iter().copied().chain(aborted.iter().map(|txn| (txn.first_offset, txn.last_offset)));
    let unstable = completed.filter(|&(_, marker)| marker >= high_watermark).map(|(first, _)| first);
    let held = ongoing.iter().map(|&(_, first)| first).chain(unstable).chain([high_watermark]).min().unwrap();
    let expected_lso = held.max(log_start_offset);
    assert_eq!(log.last_stable_offset(), expected_lso, "last stable offset");
    // The read_committed view through the log's own answers.
    let lso = log.last_stable_offset();
    let mut seen = Vec::new();
    let mut offset = log_start_offset;
    loop {
        let output = log.read(offset, 4096, ReadBound::LastStable).await.unwrap();
        assert!(output.last_stable_offset == lso);
        let Some(last) = output.batches.last() else { break };
        let fetch_start = offset;
        offset = batch::validate_stored(last, usize::MAX).unwrap().last_offset() + 1;
        let fetched: Vec<(i64, Bytes)> = output.batches.iter().map(|b| (0, b.clone())).collect();
        // What the broker lists beside this fetch (shard.rs): the range it
        // read, so the search through sealed segments' indexes stops as
        // Kafka's does.
        let aborted_here = log.aborted_transactions(fetch_start, offset).await.unwrap();
        seen.extend(committed_view(&fetched, &aborted_here, log_start_offset, lso));
    }
    assert_eq!(seen, committed_view(&all, &aborted, log_start_offset, lso), "read_committed view");
    let offsets: BTreeSet<i64> = all.iter().map(|(base, _)| *base).collect();
    assert_eq!(offsets.len(), all.len(), "one batch per offset");
}

async fn apply(op: &Op, log: &mut PartitionLog<SimStorage>, storage: &mut SimStorage, model: &mut Model) {
    let config = model.config();
    match op {
        Op::Data { producer, records, value_bytes } => {
            let batch = model.data_batch(*producer, *records, *value_bytes);
            log.append_durable(batch, 0).await.unwrap();
        }
        Op::Plain { value_bytes } => {
            let mut builder = BatchBuilder::new(0);
            builder.push(0, Some(b"k"), Some(&model.value(*value_bytes)), &[]);
            log.append_durable(builder.build(), 0).await.unwrap();
        }
        Op::End { producer, commit, bump } => {
            let marker = model.marker(*producer, *commit, *bump);
            log.append_marker(marker, 0).unwrap().durable().await.unwrap();
        }
        Op::Truncate { at_permille } => {
            let (start, end) = (log.log_start_offset(), log.log_end_offset());
            let mut offset = start + (end - start) * i64::from(*at_permille) / 1000;
            // The one case the log does not restore (see
            // `producer_state::recover`): a cut that reopens a committed
            // transaction which began below the log start, its marker
            // already below the high watermark (here the high watermark
            // follows the acks, so every acknowledged marker is).
            let mut all = model.deleted.clone();
            all.extend(log_batches(log).await);
            let high_watermark = log.high_watermark();
            for (first, marker) in replay(&all).committed {
                if first < start && marker >= offset && marker < high_watermark {
                    offset = marker + 1;
                }
            }
            log.truncate_to(offset).await.unwrap();
            model.bump_all();
        }
        Op::Retention => {
            let before = log_batches(log).await;
            log.enforce_retention(0).await.unwrap();
            let start = log.log_start_offset();
            model.deleted.extend(before.into_iter().filter(|(base, _)| *base < start));
        }
        Op::AdvanceStart { at_permille } => {
            let before = log_batches(log).await;
            let (start, high_watermark) = (log.log_start_offset(), log.high_watermark());
            let target = start + (high_watermark - start) * i64::from(*at_permille) / 1000;
            // At a batch boundary: a start inside a batch is the plain
            // log model's business (`model.rs`), not this one's.
            let boundaries = before.iter().map(|(base, _)| *base).chain([log.log_end_offset()]);
            let Some(offset) = boundaries.filter(|&base| base >= target && base <= high_watermark).min() else {
                return;
            };
            log.advance_log_start(offset).await.unwrap();
            let start = log.log_start_offset();
            model.deleted.extend(before.into_iter().filter(|(base, _)| *base < start));
        }
        Op::Restart => {
            log.close().await.unwrap();
            *log = open(storage, &config).await;
        }
        Op::CrashWithAppendsInFlight { producers, commit } => {
            let mut tickets = Vec::new();
            for &producer in producers {
                tickets.push(log.append(model.data_batch(producer, 1, 100), 0).unwrap());
            }
            tickets.push(log.append_marker(model.marker(producers[0], *commit, false), 0).unwrap());
            // Let some of it reach the disk, not necessarily all.
            glommio::yield_if_needed().await;
            glommio::executor().yield_task_queue_now().await;
            *storage = storage.power_loss(CrashMode::DropUnsynced, TornSector::Zeros);
            drop(tickets);
            *log = open(storage, &config).await;
            model.bump_all();
        }
        Op::CrashRestart => {
            *storage = storage.power_loss(CrashMode::DropUnsynced, TornSector::Zeros);
            *log = open(storage, &config).await;
            model.bump_all();
        }
        Op::MoveHighWatermark { at_permille } => {
            let (high_watermark, end) = (log.high_watermark(), log.log_end_offset());
            log.set_high_watermark(high_watermark + (end - high_watermark) * i64::from(*at_permille) / 1000);
        }
    }
}

async fn run_model(ops: &[Op], replicated: bool) {
    let mut model = Model { replicated, ..Model::default() };
    let mut storage = SimStorage::new();
    let mut log = open(&storage, &model.config()).await;
    for op in ops {
        apply(op, &mut log, &mut storage, &mut model).await;
        check(&log, &mut model).await;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn transactions_survive_everything_the_log_does(ops in prop::collection::vec(op(), 1..40)) {
        run(run_model(&ops, false));
    }

    /// The same with the high watermark moved by replication: markers
    /// above it hold the last stable offset, and a truncation may cut them.
    #[test]
    fn transactions_survive_everything_the_log_does_under_replication(ops in prop::collection::vec(op(), 1..40)) {
        run(run_model(&ops, true));
    }
}
