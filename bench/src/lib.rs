//! Spate benchmarks: `spate bench` (the harness against a broker process,
//! `harness`) and `spate-bench engine` (the storage engine alone).

pub mod engine;
pub mod harness;
pub mod report;
