//! Benchmark reports: the machine, the parameters, every figure with its
//! ratio to the raw limit measured in the same run, as JSON and Markdown.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use hdrhistogram::Histogram;
use spate_engine::Durability;

use crate::engine::EngineArgs;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub kernel: String,
    pub filesystem: String,
    pub disk: String,
}

fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .unwrap_or_default()
}

impl Machine {
    pub fn detect(dir: &Path) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|line| line.starts_with("model name"))
            .and_then(|line| line.split(':').nth(1))
            .map(|name| name.trim().to_string())
            .unwrap_or_default();
        let dir_text = dir.to_string_lossy().to_string();
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu,
            kernel: command_output("uname", &["-r"]),
            filesystem: command_output("stat", &["-f", "-c", "%T", &dir_text]),
            disk: command_output("df", &["--output=source", &dir_text]).lines().last().unwrap_or_default().to_string(),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RawResult {
    pub bytes: u64,
    pub seconds: f64,
    pub mb_per_s: f64,
}

impl RawResult {
    pub fn new(bytes: u64, elapsed: Duration) -> Self {
        let seconds = elapsed.as_secs_f64();
        RawResult { bytes, seconds, mb_per_s: bytes as f64 / seconds / 1e6 }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PolicyResult {
    pub policy: String,
    pub bytes: u64,
    pub seconds: f64,
    pub mb_per_s: f64,
    pub records_per_s: f64,
    pub ratio_to_raw: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub appends: u64,
    /// CPU time of the engine's executor thread over wall time.
    pub executor_busy: f64,
}

pub fn policy_name(policy: Durability) -> String {
    match policy {
        Durability::Always => "always".into(),
        Durability::Never => "never".into(),
        Durability::IntervalMs(ms) => format!("interval:{ms}"),
    }
}

impl PolicyResult {
    pub fn new(
        policy: Durability,
        bytes: u64,
        elapsed: Duration,
        latency_us: &Histogram<u64>,
        raw_mb_per_s: f64,
    ) -> Self {
        let seconds = elapsed.as_secs_f64();
        let mb_per_s = bytes as f64 / seconds / 1e6;
        PolicyResult {
            policy: policy_name(policy),
            bytes,
            seconds,
            mb_per_s,
            records_per_s: 0.0,
            ratio_to_raw: mb_per_s / raw_mb_per_s,
            p50_us: latency_us.value_at_quantile(0.5),
            p90_us: latency_us.value_at_quantile(0.9),
            p99_us: latency_us.value_at_quantile(0.99),
            p999_us: latency_us.value_at_quantile(0.999),
            max_us: latency_us.max(),
            appends: latency_us.len(),
            executor_busy: 0.0,
        }
    }
}

/// One engine measurement and the raw write measured just before it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Pair {
    pub round: usize,
    pub raw: RawResult,
    pub engine: PolicyResult,
    /// For `always`: raw writes with an fdatasync after every cycle's worth
    /// of bytes, one group after another.
    pub raw_synced: Option<RawResult>,
}

/// Medians over the rounds of one policy.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub policy: String,
    pub engine_mb_per_s: f64,
    pub raw_mb_per_s: f64,
    pub ratio_to_raw: f64,
    pub ratio_to_raw_min: f64,
    pub ratio_to_raw_max: f64,
    pub records_per_s: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub executor_busy: f64,
    /// Median raw write + fdatasync-per-cycle figure, for `always`.
    pub raw_synced_mb_per_s: Option<f64>,
}

fn median<T: Copy + PartialOrd>(mut values: Vec<T>) -> T {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    values[values.len() / 2]
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub args: EngineArgs,
    pub machine: Machine,
    pub commit: String,
    pub date: String,
    pub summary: Vec<Summary>,
    pub pairs: Vec<Pair>,
}

impl Report {
    pub fn new(args: &EngineArgs, machine: Machine, mut pairs: Vec<Pair>) -> Self {
        let records_per_batch = args.records_per_batch as f64;
        for pair in &mut pairs {
            pair.engine.records_per_s = pair.engine.appends as f64 * records_per_batch / pair.engine.seconds;
        }
        let mut policies: Vec<String> = Vec::new();
        for pair in &pairs {
            if !policies.contains(&pair.engine.policy) {
                policies.push(pair.engine.policy.clone());
            }
        }
        let summary = policies
            .into_iter()
            .map(|policy| {
                let runs: Vec<&Pair> = pairs.iter().filter(|pair| pair.engine.policy == policy).collect();
                let ratios: Vec<f64> = runs.iter().map(|pair| pair.engine.ratio_to_raw).collect();
                Summary {
                    engine_mb_per_s: median(runs.iter().map(|pair| pair.engine.mb_per_s).collect()),
                    raw_mb_per_s: median(runs.iter().map(|pair| pair.raw.mb_per_s).collect()),
                    ratio_to_raw: median(ratios.clone()),
                    ratio_to_raw_min: ratios.iter().copied().fold(f64::INFINITY, f64::min),
                    ratio_to_raw_max: ratios.iter().copied().fold(0.0, f64::max),
                    records_per_s: median(runs.iter().map(|pair| pair.engine.records_per_s).collect()),
                    p50_us: median(runs.iter().map(|pair| pair.engine.p50_us).collect()),
                    p99_us: median(runs.iter().map(|pair| pair.engine.p99_us).collect()),
                    p999_us: median(runs.iter().map(|pair| pair.engine.p999_us).collect()),
                    max_us: runs.iter().map(|pair| pair.engine.max_us).max().unwrap_or(0),
                    executor_busy: median(runs.iter().map(|pair| pair.engine.executor_busy).collect()),
                    raw_synced_mb_per_s: {
                        let synced: Vec<f64> =
                            runs.iter().filter_map(|pair| Some(pair.raw_synced.as_ref()?.mb_per_s)).collect();
                        (!synced.is_empty()).then(|| median(synced))
                    },
                    policy,
                }
            })
            .collect();
        Report {
            args: args.clone(),
            machine,
            commit: command_output("git", &["rev-parse", "--short", "HEAD"]),
            date: command_output("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
            summary,
            pairs,
        }
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let a = &self.args;
        let m = &self.machine;
        let _ = writeln!(out, "# Engine append benchmark ({}, commit {})\n", self.date, self.commit);
        let _ = writeln!(
            out,
            "Machine: {} cores, {}, kernel {}, {} on {}.",
            m.cores, m.cpu, m.kernel, m.filesystem, m.disk
        );
        let _ = writeln!(
            out,
            "Parameters: {} records x {} B per batch, {} MB per measurement, {} appends in flight (raw: {} writes in flight), {} rounds, executor pinned to cpu {}.\n",
            a.records_per_batch,
            a.record_bytes,
            a.total_bytes / 1_000_000,
            a.in_flight,
            a.raw_depth,
            a.rounds,
            a.cpu
        );
        let _ = writeln!(
            out,
            "Medians over the rounds; each ratio is to the raw O_DIRECT write (same bytes, same glommio DmaFile API, one fdatasync at the end) measured just before it.\n"
        );
        let _ = writeln!(
            out,
            "| durability | engine MB/s | raw MB/s | ratio (min-max) | records/s | p50 us | p99 us | p99.9 us | max us | executor CPU |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &self.summary {
            let _ = writeln!(
                out,
                "| {} | {:.0} | {:.0} | {:.2} ({:.2}-{:.2}) | {:.0} | {} | {} | {} | {} | {:.0}% |",
                r.policy,
                r.engine_mb_per_s,
                r.raw_mb_per_s,
                r.ratio_to_raw,
                r.ratio_to_raw_min,
                r.ratio_to_raw_max,
                r.records_per_s,
                r.p50_us,
                r.p99_us,
                r.p999_us,
                r.max_us,
                r.executor_busy * 100.0
            );
        }
        for r in &self.summary {
            if let Some(synced) = r.raw_synced_mb_per_s {
                let _ = writeln!(
                    out,
                    "\nDurable baseline for `{}`: raw writes with an fdatasync after every {} MiB, one group after another, reach {:.0} MB/s (median); the engine's {:.0} MB/s is {:.2}x that.",
                    r.policy,
                    spate_engine::limits::FLUSH_CYCLE_BYTES_MAX >> 20,
                    synced,
                    r.engine_mb_per_s,
                    r.engine_mb_per_s / synced
                );
            }
        }
        let _ = writeln!(
            out,
            "\nReproduce: `cargo run --release -p spate-bench -- engine --record-bytes {} --records-per-batch {} --total-bytes {} --in-flight {} --raw-depth {} --rounds {}`",
            a.record_bytes, a.records_per_batch, a.total_bytes, a.in_flight, a.raw_depth, a.rounds
        );
        out
    }

    pub fn json(&self) -> Result<String, String> {
        serde_json::to_string_pretty(self).map_err(|err| format!("cannot encode the report: {err}"))
    }

    /// Writes `<dir>/<date>-engine.{json,md}`; returns the paths.
    pub fn write(&self, dir: &str) -> Result<Vec<String>, String> {
        std::fs::create_dir_all(dir).map_err(|err| format!("cannot create {dir}: {err}"))?;
        let stamp = self.date.replace(':', "");
        let mut paths = Vec::new();
        for (ext, body) in [("json", self.json()?), ("md", self.markdown())] {
            let path = format!("{dir}/{stamp}-engine.{ext}");
            std::fs::write(&path, body).map_err(|err| format!("cannot write {path}: {err}"))?;
            paths.push(path);
        }
        Ok(paths)
    }
}
