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
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub args: EngineArgs,
    pub machine: Machine,
    pub commit: String,
    pub date: String,
    pub raw: RawResult,
    pub results: Vec<PolicyResult>,
}

impl Report {
    pub fn new(args: &EngineArgs, machine: Machine, raw: RawResult, mut results: Vec<PolicyResult>) -> Self {
        let records_per_batch = args.records_per_batch as f64;
        for result in &mut results {
            result.records_per_s = result.appends as f64 * records_per_batch / result.seconds;
        }
        Report {
            args: args.clone(),
            machine,
            commit: command_output("git", &["rev-parse", "--short", "HEAD"]),
            date: command_output("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
            raw,
            results,
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
            "Parameters: {} records x {} B per batch, {} MB per measurement, {} appends in flight, executor pinned to cpu {}.\n",
            a.records_per_batch,
            a.record_bytes,
            a.total_bytes / 1_000_000,
            a.in_flight,
            a.cpu
        );
        let _ = writeln!(
            out,
            "| measurement | MB/s | records/s | ratio to raw | p50 us | p90 us | p99 us | p99.9 us | max us |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        let _ = writeln!(out, "| raw O_DIRECT write + 1 fdatasync | {:.0} | | 1.00 | | | | | |", self.raw.mb_per_s);
        for r in &self.results {
            let _ = writeln!(
                out,
                "| engine, durability {} | {:.0} | {:.0} | {:.2} | {} | {} | {} | {} | {} |",
                r.policy,
                r.mb_per_s,
                r.records_per_s,
                r.ratio_to_raw,
                r.p50_us,
                r.p90_us,
                r.p99_us,
                r.p999_us,
                r.max_us
            );
        }
        let _ = writeln!(
            out,
            "\nReproduce: `cargo run --release -p spate-bench -- engine --record-bytes {} --records-per-batch {} --total-bytes {} --in-flight {}`",
            a.record_bytes, a.records_per_batch, a.total_bytes, a.in_flight
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
