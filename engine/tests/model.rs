//! Model-based property test: random sequences of append, read, truncate,
//! retention, log start moves (DeleteRecords), clean restart and crash
//! restart, against an in-memory model of what the log must hold.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use proptest::prelude::*;
use spate_engine::io::{CrashMode, SimStorage, TornSector};
use spate_engine::{LogConfig, PartitionLog, ReadBound};

#[derive(Debug, Clone)]
enum Op {
    /// Appends `sizes.len()` batches concurrently, one record each.
    Append {
        sizes: Vec<usize>,
    },
    /// Reads at a fraction of the way through the log.
    Read {
        at_permille: u16,
    },
    Truncate {
        at_permille: u16,
    },
    Retention,
    /// `advance_log_start` to a fraction of the way through the log.
    AdvanceStart {
        at_permille: u16,
    },
    Restart,
    CrashRestart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::collection::vec(0usize..3000, 1..5).prop_map(|sizes| Op::Append { sizes }),
        3 => (0u16..1000).prop_map(|at_permille| Op::Read { at_permille }),
        1 => (0u16..1000).prop_map(|at_permille| Op::Truncate { at_permille }),
        1 => Just(Op::Retention),
        1 => (0u16..=1000).prop_map(|at_permille| Op::AdvanceStart { at_permille }),
        1 => Just(Op::Restart),
        1 => Just(Op::CrashRestart),
    ]
}

/// The model: every record still in the log, by offset, and the batches.
#[derive(Debug, Default)]
struct Model {
    log_start_offset: i64,
    /// (base offset, values) per batch, in order.
    batches: Vec<(i64, Vec<Vec<u8>>)>,
    next_value: u32,
}

impl Model {
    fn log_end_offset(&self) -> i64 {
        self.batches.last().map_or(self.log_start_offset, |(base, values)| base + values.len() as i64)
    }

    fn records(&self) -> Vec<(i64, Vec<u8>)> {
        let mut out = Vec::new();
        for (base, values) in &self.batches {
            for (i, value) in values.iter().enumerate() {
                out.push((base + i as i64, value.clone()));
            }
        }
        out
    }

    fn offset_at(&self, permille: u16) -> i64 {
        let span = self.log_end_offset() - self.log_start_offset;
        self.log_start_offset + span * i64::from(permille) / 1000
    }

    fn batch_base_of(&self, offset: i64) -> Option<i64> {
        self.batches.iter().find(|(base, values)| offset < base + values.len() as i64).map(|(base, _)| *base)
    }
}

fn model_config() -> LogConfig {
    LogConfig { retention_bytes: Some(24 * 1024), ..pipelined_config() }
}

async fn check(log: &PartitionLog<SimStorage>, model: &Model) {
    assert_eq!(log.log_end_offset(), model.log_end_offset());
    assert_eq!(log.log_start_offset(), model.log_start_offset);
    assert_eq!(log.high_watermark(), model.log_end_offset());
    assert_eq!(read_all(log, model.log_start_offset).await, model.records());
}

async fn apply(op: &Op, log: &mut PartitionLog<SimStorage>, storage: &mut SimStorage, model: &mut Model) {
    let config = model_config();
    match op {
        Op::Append { sizes } => {
            let mut tickets = Vec::new();
            for &size in sizes {
                let value: Vec<u8> =
                    format!("v{}-", model.next_value).into_bytes().into_iter().cycle().take(size.max(4)).collect();
                model.next_value += 1;
                let mut builder = spate_engine::batch::BatchBuilder::new(0);
                builder.push(0, None, Some(&value), &[]);
                tickets.push(log.append(builder.build(), 0).unwrap());
                let base = model.log_end_offset();
                model.batches.push((base, vec![value]));
            }
            for ticket in tickets {
                ticket.durable().await.unwrap();
            }
        }
        Op::Read { at_permille } => {
            let offset = model.offset_at(*at_permille);
            let output = log.read(offset, 4096, ReadBound::HighWatermark).await.unwrap();
            match model.batch_base_of(offset) {
                None => assert!(output.batches.is_empty()),
                Some(base) => assert_eq!(records(&output.batches).first().map(|r| r.0), Some(base)),
            }
        }
        Op::Truncate { at_permille } => {
            let offset = model.offset_at(*at_permille);
            let new_end = log.truncate_to(offset).await.unwrap();
            let expected_end = model.batch_base_of(offset).unwrap_or(model.log_end_offset());
            assert_eq!(new_end, expected_end);
            model.batches.retain(|(base, _)| *base < expected_end);
        }
        Op::Retention => {
            log.enforce_retention(0).await.unwrap();
            let start = log.log_start_offset();
            assert!(start >= model.log_start_offset);
            if start > model.log_start_offset {
                assert!(model.batches.iter().any(|(base, _)| *base == start) || start == model.log_end_offset());
                model.batches.retain(|(base, _)| *base >= start);
                model.log_start_offset = start;
            }
        }
        Op::AdvanceStart { at_permille } => {
            // Every batch holds one record, so any offset is a batch's base.
            let offset = model.offset_at(*at_permille);
            assert_eq!(log.advance_log_start(offset).await.unwrap(), offset);
            model.batches.retain(|(base, _)| *base >= offset);
            model.log_start_offset = offset;
            let past = model.log_end_offset() + 1;
            assert!(log.advance_log_start(past).await.is_err(), "past the high watermark");
        }
        Op::Restart => {
            log.close().await.unwrap();
            *log = open(storage, &config).await;
        }
        Op::CrashRestart => {
            // A power loss: what a crash keeping metadata leaves, less the
            // directory entries and size changes not yet synced.
            *storage = storage.power_loss(CrashMode::DropUnsynced, TornSector::Zeros);
            *log = open(storage, &config).await;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn the_log_behaves_like_its_model(ops in prop::collection::vec(op(), 1..40)) {
        run(async {
            let mut storage = SimStorage::new();
            let mut log = open(&storage, &model_config()).await;
            let mut model = Model::default();
            for op in &ops {
                apply(op, &mut log, &mut storage, &mut model).await;
                check(&log, &model).await;
            }
        });
    }
}
