//! The report of a run: JSON (everything), Markdown (for people) and SVG
//! plots (throughput per second, latency distribution) in perf-reports/.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use super::limits::Limits;
use super::{Kind, Suite, WorkloadResult};
use crate::report::Machine;

/// Peer figures on this machine class (../shared/perf/limits.md: Apache Iggy
/// 0.9, 1000-byte messages, 1000 per batch, loopback), for the comparison.
struct Peer {
    what: &'static str,
    mb_s: Option<f64>,
    p50_ms: f64,
    p99_ms: f64,
}

const IGGY_PRODUCE: Peer = Peer { what: "Iggy 2 producers, no fsync", mb_s: Some(1005.0), p50_ms: 1.78, p99_ms: 5.18 };
const IGGY_PRODUCE_FSYNC: Peer =
    Peer { what: "Iggy 2 producers, fsync every batch", mb_s: Some(675.0), p50_ms: 3.06, p99_ms: 6.53 };
const IGGY_CONSUME: Peer = Peer { what: "Iggy 2 consumers", mb_s: Some(1677.0), p50_ms: 0.95, p99_ms: 2.80 };
const IGGY_E2E: Peer = Peer { what: "Iggy produce + consume", mb_s: Some(1382.0), p50_ms: 2.58, p99_ms: 5.91 };
const IGGY_ROUND_TRIP: Peer = Peer { what: "Iggy 1 x 100 B per request", mb_s: None, p50_ms: 0.15, p99_ms: 0.26 };

fn peer_for(result: &WorkloadResult) -> &'static Peer {
    match result.workload.kind {
        Kind::Produce if result.workload.durability == "always" => &IGGY_PRODUCE_FSYNC,
        Kind::Produce => &IGGY_PRODUCE,
        Kind::ConsumeDisk | Kind::ConsumeTail => &IGGY_CONSUME,
        Kind::EndToEnd => &IGGY_E2E,
        Kind::RoundTrip => &IGGY_ROUND_TRIP,
    }
}

#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub suite: String,
    pub git_commit: String,
    pub started_utc: String,
    pub machine: Machine,
    pub broker: super::BrokerSettings,
    /// Cores: the broker's shards are pinned to 0..shards when `pin`;
    /// each broker's process confined to its `cpus` when given.
    pub broker_cores: String,
    pub loadgen_cores: String,
    pub limits: Limits,
    pub results: Vec<WorkloadResult>,
    pub command: String,
    /// What Apache Kafka ran as, when a workload targeted it.
    pub apache_kafka: Option<String>,
}

fn output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .unwrap_or_default()
}

impl Report {
    pub fn new(suite: &Suite, machine: Machine, limits: Limits, results: Vec<WorkloadResult>) -> Self {
        let broker_cores = suite.broker.placement();
        Report {
            suite: suite.name.clone(),
            git_commit: output("git", &["rev-parse", "--short=12", "HEAD"]),
            started_utc: output("date", &["-u", "+%Y-%m-%dT%H%M%SZ"]),
            machine,
            broker: suite.broker.clone(),
            broker_cores,
            loadgen_cores: if suite.loadgen.cpus.is_empty() {
                "not pinned".into()
            } else {
                format!("pinned to {:?}", suite.loadgen.cpus)
            },
            limits,
            results,
            command: std::env::args().collect::<Vec<_>>().join(" "),
            apache_kafka: suite.has_apache_kafka().then(|| suite.apache_kafka.describe()),
        }
    }

    fn ratios(&self, result: &WorkloadResult) -> String {
        let limits = &self.limits;
        let mut parts = Vec::new();
        if let Some(paired) = result.paired_disk_write_mb_s {
            parts.push(format!("{:.2}x paired disk", result.mb_per_s / paired));
        }
        if let Some(paired) = result.paired_disk_write_sync_mb_s {
            parts.push(format!("{:.2}x paired disk+fdatasync/4MiB", result.mb_per_s / paired));
        }
        parts.extend([
            format!("{:.2}x disk", result.mb_per_s / limits.disk_write_mb_s),
            format!("{:.2}x loopback", result.mb_per_s / limits.loopback_mb_s),
            format!("{:.2}x min(disk, loopback)", result.mb_per_s / limits.min_disk_loopback()),
        ]);
        if result.workload.durability == "always" && matches!(result.workload.kind, Kind::Produce) {
            parts.push(format!("{:.2}x disk+fdatasync/4MiB", result.mb_per_s / limits.disk_write_sync_4mib_mb_s));
        }
        parts.join(", ")
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# spate bench: {} ({})\n", self.suite, self.started_utc);
        let _ = writeln!(md, "- commit `{}`; command `{}`", self.git_commit, self.command);
        let m = &self.machine;
        let _ = writeln!(
            md,
            "- machine: {} cores, {}, kernel {}, disk {} ({})",
            m.cores, m.cpu, m.kernel, m.disk, m.filesystem
        );
        if self.broker.brokers == 1 {
            let _ = writeln!(
                md,
                "- broker: {} shard(s) {}, tail cache {} MiB/shard; load generator {}",
                self.broker.shards,
                self.broker_cores,
                self.broker.tail_cache_bytes >> 20,
                self.loadgen_cores
            );
        } else {
            let _ = writeln!(
                md,
                "- brokers: {} (each a controller voter, one machine, one disk, loopback), {} shard(s) each, {}, tail cache {} MiB/shard; load generator {}",
                self.broker.brokers,
                self.broker.shards,
                self.broker_cores,
                self.broker.tail_cache_bytes >> 20,
                self.loadgen_cores
            );
        }
        if let Some(kafka) = &self.apache_kafka {
            let _ = writeln!(md, "- {kafka}");
        }
        let l = &self.limits;
        let _ = writeln!(
            md,
            "- limits measured at the start of this run: disk write {:.0} MB/s, disk write + fdatasync every 4 MiB {:.0} MB/s, loopback {:.0} MB/s",
            l.disk_write_mb_s, l.disk_write_sync_4mib_mb_s, l.loopback_mb_s
        );
        let _ = writeln!(
            md,
            "- \"paired disk\": a raw O_DIRECT write of the bytes the workload wrote in its measured window ({}..{} MiB), measured right after it (and for durability always the same with an fdatasync every 4 MiB); the disk slows under sustained writes, so these are the fair ratios. \"disk\" and \"loopback\" are the start-of-run limits\n",
            super::limits::PAIRED_BYTES_MIN >> 20,
            super::limits::PAIRED_BYTES_MAX >> 20
        );
        let _ = writeln!(
            md,
            "| workload | MB/s | records/s | p50 | p90 | p99 | p99.9 | p99.99 | max (ms) | ratios | cores broker / load | errors |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|");
        for r in &self.results {
            let ms = |us: u64| format!("{:.3}", us as f64 / 1000.0);
            let l = &r.latency_us;
            let _ = writeln!(
                md,
                "| {} | {:.1} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} / {:.2} | {} |",
                r.workload.name,
                r.mb_per_s,
                r.records_per_s,
                ms(l.p50),
                ms(l.p90),
                ms(l.p99),
                ms(l.p99_9),
                ms(l.p99_99),
                ms(l.max),
                self.ratios(r),
                super::cores_text(&r.broker_cores_each),
                r.loadgen_cores,
                r.errors
            );
        }
        self.comparison(&mut md);
        self.tls_table(&mut md);
        self.transactions_table(&mut md);
        let _ = writeln!(md, "\n## Against the peer (Iggy 0.9 on this machine class)\n");
        let _ = writeln!(md, "| workload | peer | Spate MB/s / peer | Spate p50 / p99 (ms) | peer p50 / p99 (ms) |");
        let _ = writeln!(md, "|---|---|---|---|---|");
        for r in &self.results {
            let peer = peer_for(r);
            let ratio = peer.mb_s.map_or("-".into(), |mb| format!("{:.2}x", r.mb_per_s / mb));
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.3} / {:.3} | {:.2} / {:.2} |",
                r.workload.name,
                peer.what,
                ratio,
                r.latency_us.p50 as f64 / 1000.0,
                r.latency_us.p99 as f64 / 1000.0,
                peer.p50_ms,
                peer.p99_ms
            );
        }
        let _ = writeln!(md, "\n## Parameters\n");
        for r in &self.results {
            let w = &r.workload;
            let _ = writeln!(
                md,
                "- **{}** ({:?}, {}): {} B x {} per batch, {} producer(s) x {} in flight, {} consumer(s), {} partition(s){}, acks {}, durability {}, compression {}, warm-up {} s, duration {} s{}; latency is {}; {} samples",
                w.name,
                w.kind,
                w.target_label(),
                w.message_bytes,
                w.batch_records,
                w.producers,
                w.in_flight,
                w.consumers,
                w.partitions,
                replication_text(w),
                w.acks,
                w.durability,
                compression_text(w),
                w.warmup_s,
                w.duration_s,
                r.target_rate_mb_s.map_or(String::new(), |rate| format!(", target {rate:.0} MB/s")),
                r.latency_of,
                r.latency_samples
            );
            if let Some(session) = &r.tls_session {
                let _ = writeln!(md, "  - over TLS to the SSL listener: {session} (rustls, ring provider, both sides)");
            }
            if let Some(text) = transactions_text(r) {
                let _ = writeln!(md, "  - {text}");
            }
            if let (Some(bytes), Some(mb_s)) = (r.paired_disk_bytes, r.paired_disk_write_mb_s) {
                let _ = writeln!(
                    md,
                    "  - paired raw write right after ({} MB written in the window, {} MiB raw): {:.0} MB/s{}",
                    r.written_bytes / 1_000_000,
                    bytes >> 20,
                    mb_s,
                    r.paired_disk_write_sync_mb_s
                        .map_or(String::new(), |sync| format!(", with fdatasync every 4 MiB {sync:.0} MB/s"))
                );
            }
            if self.broker.brokers > 1 {
                let _ = writeln!(
                    md,
                    "  - cores per broker (node 1 first): {}; whole machine {:.2} cores busy of {} ({:.2} stolen); loopback {:.0} MB/s ({:.2}x the workload's MB/s)",
                    super::cores_text(&r.broker_cores_each),
                    r.machine_cores,
                    self.machine.cores,
                    r.steal_cores,
                    r.loopback_mb_s,
                    r.loopback_mb_s / r.mb_per_s.max(1e-9)
                );
            }
            if let Some(isr) = &r.isr {
                let _ = writeln!(md, "  - {}", isr.summary());
            }
            if let Some(p) = &r.produce_latency_us {
                let ms = |us: u64| us as f64 / 1000.0;
                let _ = writeln!(
                    md,
                    "  - of which producing (send slot to ack): p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} ms",
                    ms(p.p50),
                    ms(p.p90),
                    ms(p.p99),
                    ms(p.p99_9)
                );
            }
        }
        md
    }

    /// The protocol and target table: per `compare` group, each workload's
    /// throughput and latency, the Kafka path against the native one (same
    /// durability), and Spate against Apache Kafka.
    fn comparison(&self, md: &mut String) {
        let rows = comparison_rows(&self.results);
        if rows.is_empty() {
            return;
        }
        let _ = writeln!(md, "\n## Spate native, Spate over Kafka's protocol, Apache Kafka\n");
        let _ = writeln!(
            md,
            "Kafka path / native: the Kafka-protocol workload's MB/s and p99 over the native one's with the same durability. Issue 15 asks the Kafka path to stay within 10% of native: at least 0.90x the MB/s, or, for a workload at a target rate (where both send the same MB/s), at most 1.10x the p99. Spate / Apache Kafka: the same ratios to Apache Kafka's workload in the group. Apache Kafka acknowledges from the page cache (its log.flush defaults: no fsync); Spate `never` is the like-for-like row, Spate `always` fdatasyncs before every ack.\n"
        );
        let _ = writeln!(
            md,
            "| group | target | durability | MB/s | p50 / p99 (ms) | Kafka path / native | Spate / Apache Kafka |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|");
        for row in rows {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.1} | {:.3} / {:.3} | {} | {} |",
                row.group,
                row.target,
                row.durability,
                row.mb_s,
                row.p50_ms,
                row.p99_ms,
                row.kafka_over_native.map_or("-".into(), |r| r.text(true)),
                row.spate_over_kafka.map_or("-".into(), |r| r.text(false)),
            );
        }
    }

    /// The TLS table: each TLS workload against the plaintext workload
    /// with the same parameters in the run (issue 16 asks for at least
    /// 0.80x the plaintext MB/s).
    fn tls_table(&self, md: &mut String) {
        let pairs = tls_pairs(&self.results);
        if pairs.is_empty() {
            return;
        }
        let _ = writeln!(md, "\n## TLS against plaintext\n");
        let _ = writeln!(
            md,
            "Each TLS workload over the plaintext workload with the same parameters, on brokers serving both listeners (PLAINTEXT and SSL) in this run. Issue 16 asks TLS for at least {TLS_RATIO_MIN:.2}x the plaintext MB/s. Cores per GB/s: the broker's (and the load generator's) CPU over the throughput, what TLS costs per byte.\n"
        );
        let _ = writeln!(
            md,
            "| TLS workload | plaintext MB/s | TLS MB/s | TLS / plaintext | p99 plaintext / TLS (ms) | broker cores plaintext / TLS | broker cores per GB/s plaintext / TLS | load cores plaintext / TLS |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
        for (tls, plain) in pairs {
            let per_gb = |r: &WorkloadResult| r.broker_cores / (r.mb_per_s / 1000.0).max(1e-9);
            let _ = writeln!(
                md,
                "| {} | {:.1} | {:.1} | {} | {:.3} / {:.3} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} / {:.2} |",
                tls.workload.name,
                plain.mb_per_s,
                tls.mb_per_s,
                tls_verdict(tls, plain),
                plain.latency_us.p99 as f64 / 1000.0,
                tls.latency_us.p99 as f64 / 1000.0,
                plain.broker_cores,
                tls.broker_cores,
                per_gb(plain),
                per_gb(tls),
                plain.loadgen_cores,
                tls.loadgen_cores,
            );
        }
    }

    /// Issue 17's table: transactional produce over idempotent produce, and
    /// read_committed consumers over read_uncommitted ones, each pair with
    /// the same parameters otherwise (at least 0.90x the MB/s asked).
    fn transactions_table(&self, md: &mut String) {
        let pairs = transaction_pairs(&self.results);
        if pairs.is_empty() {
            return;
        }
        let _ = writeln!(md, "\n## Transactions against idempotent produce, read_committed against read_uncommitted\n");
        let _ = writeln!(
            md,
            "Each workload over the one with the same parameters but idempotent producers (for transactional ones) or read_uncommitted consumers (for read_committed ones), in this run. Issue 17 asks for at least {TXN_RATIO_MIN:.2}x the MB/s in both. Produce latency is per produce request, from its send to its acknowledgment (a transaction's records become visible to read_committed consumers at its commit, later).\n"
        );
        let _ = writeln!(
            md,
            "| workload | over | MB/s | base MB/s | ratio | p50 / p99 (ms) | base p50 / p99 (ms) | EndTxn p50 / p99 (ms) | commits/s | broker cores / base |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
        for (r, base) in pairs {
            let ms = |us: u64| us as f64 / 1000.0;
            let (end_txn, commits) = r.transactions.map_or(("-".into(), "-".into()), |t| {
                let l = t.end_txn_latency_us;
                (format!("{:.3} / {:.3}", ms(l.p50), ms(l.p99)), format!("{:.1}", t.committed_per_s))
            });
            let _ = writeln!(
                md,
                "| {} | {} | {:.1} | {:.1} | {} | {:.3} / {:.3} | {:.3} / {:.3} | {} | {} | {:.2} / {:.2} |",
                r.workload.name,
                base.workload.name,
                r.mb_per_s,
                base.mb_per_s,
                txn_verdict(r, base),
                ms(r.latency_us.p50),
                ms(r.latency_us.p99),
                ms(base.latency_us.p50),
                ms(base.latency_us.p99),
                end_txn,
                commits,
                r.broker_cores,
                base.broker_cores,
            );
        }
    }

    /// Writes `<stamp>-<suite>.{json,md}` and two SVGs per workload.
    pub fn write(&self, dir: &Path) -> anyhow::Result<Vec<String>> {
        std::fs::create_dir_all(dir)?;
        let base = format!("{}-{}", self.started_utc, self.suite);
        let mut written = Vec::new();
        let json = dir.join(format!("{base}.json"));
        std::fs::write(&json, serde_json::to_string_pretty(self)?).with_context(|| json.display().to_string())?;
        written.push(json.display().to_string());
        let mut md = self.markdown();
        let _ = writeln!(md, "\n## Plots\n");
        for r in &self.results {
            let throughput = dir.join(format!("{base}-{}-throughput.svg", r.workload.name));
            plot_series(&throughput, &r.workload.name, &r.series_mb_s)?;
            let latency = dir.join(format!("{base}-{}-latency.svg", r.workload.name));
            plot_distribution(&latency, &r.workload.name, &r.distribution_us)?;
            for path in [&throughput, &latency] {
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let _ = writeln!(md, "![{name}]({name})");
                written.push(path.display().to_string());
            }
        }
        let md_path = dir.join(format!("{base}.md"));
        std::fs::write(&md_path, md).with_context(|| md_path.display().to_string())?;
        written.push(md_path.display().to_string());
        Ok(written)
    }
}

fn plot_series(path: &Path, name: &str, series: &[f64]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (720, 360)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let y_max = series.iter().copied().fold(1.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{name}: throughput per second"), ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..(series.len().max(1) as f64), 0f64..y_max)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart.configure_mesh().x_desc("second").y_desc("MB/s").draw().map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .draw_series(LineSeries::new(series.iter().enumerate().map(|(i, v)| (i as f64 + 1.0, *v)), &BLUE))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// Latency against quantile on a log scale of 1/(1-q): 0 = p0, 1 = p90,
/// 2 = p99, 3 = p99.9, 4 = p99.99.
fn plot_distribution(path: &Path, name: &str, distribution: &[(f64, u64)]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (720, 360)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let points: Vec<(f64, f64)> =
        distribution.iter().map(|(q, us)| (-(1.0 - q).max(1e-6).log10(), *us as f64 / 1000.0)).collect();
    let y_max = points.iter().map(|p| p.1).fold(0.001, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{name}: latency distribution"), ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..4.0, 0f64..y_max)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .x_label_formatter(&|x| match x.round() as i32 {
            0 => "p0".into(),
            1 => "p90".into(),
            2 => "p99".into(),
            3 => "p99.9".into(),
            4 => "p99.99".into(),
            _ => String::new(),
        })
        .y_desc("ms")
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart.draw_series(LineSeries::new(points, &RED)).map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// ", replication factor 3, min.insync.replicas 2" (nothing for one
/// replica with the default minimum, as before replication).
fn replication_text(w: &super::Workload) -> String {
    let mut text = String::new();
    if w.replication_factor > 1 || w.min_insync_replicas.is_some() {
        let _ = write!(text, ", replication factor {}", w.replication_factor);
    }
    if let Some(min) = w.min_insync_replicas {
        let _ = write!(text, ", min.insync.replicas {min}");
    }
    text
}

/// A workload's codec, with how many times smaller it makes its batches.
fn compression_text(w: &super::Workload) -> String {
    match spate_format::batch::Compression::from_name(&w.compression) {
        Some(codec) if codec != spate_format::batch::Compression::None => {
            let ratio = super::load::compression_ratio(w.batch_records, w.message_bytes, codec);
            format!("{} (ratio {ratio:.2}x)", w.compression)
        }
        _ => w.compression.clone(),
    }
}

/// One row of the protocol and target table.
#[derive(Debug, PartialEq)]
pub(crate) struct ComparisonRow {
    pub group: String,
    pub target: &'static str,
    pub durability: String,
    pub mb_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Spate over Kafka's protocol against the native workload with the
    /// same durability in the group.
    pub kafka_over_native: Option<Ratio>,
    /// Spate (either protocol) against Apache Kafka's workload in the group.
    pub spate_over_kafka: Option<Ratio>,
}

/// One workload's figures over another's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Ratio {
    pub mb_s: f64,
    pub p99: f64,
    /// At a target rate both send the same MB/s: latency tells them apart.
    pub at_target_rate: bool,
}

impl Ratio {
    fn of(r: &WorkloadResult, base: &WorkloadResult) -> Self {
        Ratio {
            mb_s: r.mb_per_s / base.mb_per_s.max(1e-9),
            p99: r.latency_us.p99 as f64 / (base.latency_us.p99 as f64).max(1.0),
            at_target_rate: r.target_rate_mb_s.is_some(),
        }
    }

    /// Within issue 15's 10% of the base: at least 0.90x its MB/s, or at a
    /// target rate at most 1.10x its p99.
    pub fn within_10_percent(&self) -> bool {
        if self.at_target_rate { self.p99 <= 1.1 } else { self.mb_s >= 0.9 }
    }

    /// "0.95x MB/s, 1.02x p99", with the verdict when `verdict`.
    fn text(&self, verdict: bool) -> String {
        let ratios = format!("{:.2}x MB/s, {:.2}x p99", self.mb_s, self.p99);
        match (verdict, self.within_10_percent()) {
            (false, _) => ratios,
            (true, true) => format!("{ratios}: within 10%"),
            (true, false) => format!("{ratios}: more than 10% worse"),
        }
    }
}

/// Issue 16's target: TLS at least this fraction of plaintext's MB/s.
pub(crate) const TLS_RATIO_MIN: f64 = 0.8;

/// Each TLS result with the plaintext result of the same workload
/// otherwise (kind, sizes, counts, durability, rate), in the TLS results'
/// order; a TLS result without one is left out.
pub(crate) fn tls_pairs(results: &[WorkloadResult]) -> Vec<(&WorkloadResult, &WorkloadResult)> {
    let same = |a: &super::Workload, b: &super::Workload| {
        (a.kind, a.protocol, a.target, a.message_bytes, a.batch_records, a.producers, a.consumers, a.partitions)
            == (b.kind, b.protocol, b.target, b.message_bytes, b.batch_records, b.producers, b.consumers, b.partitions)
            && (a.in_flight, &a.acks, &a.durability, &a.compression, a.data_bytes)
                == (b.in_flight, &b.acks, &b.durability, &b.compression, b.data_bytes)
            && (a.rate_mb_s, a.rate_fraction, &a.rate_of) == (b.rate_mb_s, b.rate_fraction, &b.rate_of)
    };
    results
        .iter()
        .filter(|r| r.workload.tls)
        .filter_map(|tls| {
            let plain = results.iter().find(|p| !p.workload.tls && same(&p.workload, &tls.workload))?;
            Some((tls, plain))
        })
        .collect()
}

/// "0.85x MB/s: at least 0.80x", or at a target rate (both send the same
/// MB/s) the p99 ratio, which tells them apart.
fn tls_verdict(tls: &WorkloadResult, plain: &WorkloadResult) -> String {
    let ratio = Ratio::of(tls, plain);
    if ratio.at_target_rate {
        return format!("{:.2}x MB/s, {:.2}x p99 (at a target rate)", ratio.mb_s, ratio.p99);
    }
    let verdict = if ratio.mb_s >= TLS_RATIO_MIN { "at least" } else { "below" };
    format!("{:.2}x MB/s: {verdict} {TLS_RATIO_MIN:.2}x", ratio.mb_s)
}

/// Issue 17's target: transactional produce and read_committed consumers
/// at least this fraction of idempotent produce's and read_uncommitted
/// consumers' MB/s.
pub(crate) const TXN_RATIO_MIN: f64 = 0.9;

/// Each transactional produce result with the idempotent one, and each
/// read_committed consume result with the read_uncommitted one, whose
/// parameters are the same otherwise (name and `compare` aside), in the
/// results' order; a result without one is left out.
pub(crate) fn transaction_pairs(results: &[WorkloadResult]) -> Vec<(&WorkloadResult, &WorkloadResult)> {
    use super::{Isolation, ProducerMode};
    let consume = |w: &super::Workload| matches!(w.kind, Kind::ConsumeTail | Kind::ConsumeDisk);
    // The base a result is measured against: the same workload with
    // idempotent producers, or read_uncommitted consumers.
    let base_of = |w: &super::Workload| -> Option<super::Workload> {
        let mut base = w.clone();
        if w.kind == Kind::Produce && w.producer_mode == ProducerMode::Transactional {
            base.producer_mode = ProducerMode::Idempotent;
        } else if consume(w) && w.isolation == Isolation::ReadCommitted {
            base.isolation = Isolation::ReadUncommitted;
        } else {
            return None;
        }
        Some(base)
    };
    // Parameters that do not change what runs: the name, the report group,
    // and the commit interval of producers that commit nothing.
    let shape = |w: &super::Workload| {
        let mut w = w.clone();
        (w.name, w.compare) = (String::new(), String::new());
        if w.producer_mode != ProducerMode::Transactional {
            (w.commit_interval_ms, w.txn_retry_backoff_ms, w.transaction_version) = (0, 0, 0);
        }
        serde_json::to_string(&w).unwrap_or_default()
    };
    results
        .iter()
        .filter_map(|r| {
            let base = shape(&base_of(&r.workload)?);
            let found = results.iter().find(|b| !std::ptr::eq(*b, r) && shape(&b.workload) == base)?;
            Some((r, found))
        })
        .collect()
}

/// "0.95x MB/s: at least 0.90x".
fn txn_verdict(r: &WorkloadResult, base: &WorkloadResult) -> String {
    let ratio = r.mb_per_s / base.mb_per_s.max(1e-9);
    let verdict = if ratio >= TXN_RATIO_MIN { "at least" } else { "below" };
    format!("{ratio:.2}x MB/s: {verdict} {TXN_RATIO_MIN:.2}x")
}

/// The producer mode, isolation and transactions of a workload that uses
/// them, for its parameters line.
fn transactions_text(r: &WorkloadResult) -> Option<String> {
    use super::{Isolation, ProducerMode};
    let w = &r.workload;
    let mut parts = Vec::new();
    match w.producer_mode {
        ProducerMode::Plain => {}
        ProducerMode::Idempotent => parts.push("idempotent producers".to_string()),
        ProducerMode::Transactional => parts.push(format!(
            "transactional producers (a transactional.id per connection, transactions v{}), commit every {} ms, \
             retry after {} ms",
            w.transaction_version, w.commit_interval_ms, w.txn_retry_backoff_ms
        )),
    }
    if w.isolation == Isolation::ReadCommitted {
        parts.push("read_committed consumers".into());
    } else if matches!(w.kind, Kind::ConsumeTail | Kind::ConsumeDisk) && w.producer_mode != ProducerMode::Plain {
        parts.push("read_uncommitted consumers".into());
    }
    if let Some(t) = &r.transactions {
        let ms = |us: u64| us as f64 / 1000.0;
        let l = &t.end_txn_latency_us;
        parts.push(format!(
            "{} commits ({:.1}/s), EndTxn p50 {:.3} p90 {:.3} p99 {:.3} max {:.3} ms (waiting for EndTxn: {:.1}% of the producers' time), {} control request(s) asked again after CONCURRENT_TRANSACTIONS or a loading coordinator (waiting {:.1}% of the producers' time before asking again)",
            t.committed,
            t.committed_per_s,
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.max),
            t.end_txn_wait_fraction * 100.0,
            t.retries,
            t.retry_wait_fraction * 100.0
        ));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// The rows of the workloads that name a `compare` group, the groups in
/// the order they first appear.
pub(crate) fn comparison_rows(results: &[WorkloadResult]) -> Vec<ComparisonRow> {
    use super::{Protocol, Target};
    let mut groups: Vec<&str> = Vec::new();
    for r in results.iter().filter(|r| !r.workload.compare.is_empty()) {
        if !groups.contains(&r.workload.compare.as_str()) {
            groups.push(&r.workload.compare);
        }
    }
    let mut rows = Vec::new();
    for group in groups {
        let members: Vec<&WorkloadResult> = results.iter().filter(|r| r.workload.compare == group).collect();
        let kafka = members.iter().find(|r| r.workload.target == Target::ApacheKafka);
        for r in &members {
            let w = &r.workload;
            let native = members.iter().find(|n| {
                n.workload.target == Target::Spate
                    && n.workload.protocol == Protocol::Native
                    && n.workload.durability == w.durability
            });
            let kafka_over_native = match (w.target, w.protocol, native) {
                (Target::Spate, Protocol::Kafka, Some(native)) => Some(Ratio::of(r, native)),
                _ => None,
            };
            let spate_over_kafka = match (w.target, kafka) {
                (Target::Spate, Some(kafka)) => Some(Ratio::of(r, kafka)),
                _ => None,
            };
            rows.push(ComparisonRow {
                group: group.to_string(),
                target: w.target_label(),
                durability: if w.target == Target::ApacheKafka {
                    "Kafka default (page cache)".into()
                } else {
                    w.durability.clone()
                },
                mb_s: r.mb_per_s,
                p50_ms: r.latency_us.p50 as f64 / 1000.0,
                p99_ms: r.latency_us.p99 as f64 / 1000.0,
                kafka_over_native,
                spate_over_kafka,
            });
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::{Latency, Protocol, Target, Workload};

    fn result(name: &str, protocol: Protocol, target: Target, durability: &str, mb_per_s: f64) -> WorkloadResult {
        WorkloadResult {
            workload: Workload {
                name: name.into(),
                compare: "produce".into(),
                protocol,
                target,
                durability: durability.into(),
                ..Default::default()
            },
            mb_per_s,
            records_per_s: 0.0,
            seconds: 1.0,
            errors: 0,
            first_error: None,
            latency_us: Latency { p50: 1500, p99: 4000, ..Default::default() },
            latency_samples: 1,
            latency_of: "",
            produce_latency_us: None,
            series_mb_s: Vec::new(),
            broker_cores: 0.0,
            loadgen_cores: 0.0,
            broker_cores_each: Vec::new(),
            loopback_mb_s: 0.0,
            machine_cores: 0.0,
            steal_cores: 0.0,
            isr: None,
            distribution_us: Vec::new(),
            target_rate_mb_s: None,
            written_bytes: 0,
            tls_session: None,
            transactions: None,
            paired_disk_bytes: None,
            paired_disk_write_mb_s: None,
            paired_disk_write_sync_mb_s: None,
        }
    }

    /// Transactional produce is set against idempotent produce, and
    /// read_committed against read_uncommitted consumers, each with the
    /// same parameters otherwise (a different durability is another pair).
    #[test]
    fn transaction_rows_pair_with_idempotent_producers_and_read_uncommitted_consumers() {
        use crate::harness::{Isolation, ProducerMode};
        let with = |name: &str, kind: Kind, mode: ProducerMode, isolation: Isolation, durability: &str, mb: f64| {
            let mut r = result(name, Protocol::Kafka, Target::Spate, durability, mb);
            (r.workload.kind, r.workload.producer_mode, r.workload.isolation) = (kind, mode, isolation);
            r.workload.compare = String::new();
            r
        };
        let (p, c) = (Kind::Produce, Kind::ConsumeTail);
        let (idem, txn) = (ProducerMode::Idempotent, ProducerMode::Transactional);
        let (ru, rc) = (Isolation::ReadUncommitted, Isolation::ReadCommitted);
        let results = vec![
            with("never-idem", p, idem, ru, "never", 1000.0),
            with("never-txn", p, txn, ru, "never", 950.0),
            with("always-idem", p, idem, ru, "always", 600.0),
            with("always-txn", p, txn, ru, "always", 500.0),
            with("lonely-txn", p, txn, ru, "interval:5", 1.0),
            with("tail-ru", c, txn, ru, "never", 2000.0),
            with("tail-rc", c, txn, rc, "never", 1900.0),
        ];
        let pairs = transaction_pairs(&results);
        let names: Vec<(&str, &str)> =
            pairs.iter().map(|(r, base)| (r.workload.name.as_str(), base.workload.name.as_str())).collect();
        assert_eq!(names, vec![("never-txn", "never-idem"), ("always-txn", "always-idem"), ("tail-rc", "tail-ru")]);
        assert_eq!(txn_verdict(pairs[0].0, pairs[0].1), "0.95x MB/s: at least 0.90x");
        assert_eq!(txn_verdict(pairs[1].0, pairs[1].1), "0.83x MB/s: below 0.90x");
        let text = transactions_text(&results[5]).expect("a consume over transactional data");
        assert!(text.contains("transactional producers") && text.contains("read_uncommitted"), "{text}");
        assert!(transactions_text(&result("plain", Protocol::Native, Target::Spate, "never", 1.0)).is_none());
    }

    /// The Kafka path is compared with the native workload of the same
    /// durability, and every Spate row with Apache Kafka's.
    #[test]
    fn the_comparison_pairs_kafka_with_native_of_the_same_durability_and_spate_with_apache_kafka() {
        let results = vec![
            result("never-native", Protocol::Native, Target::Spate, "never", 1000.0),
            result("never-kafka", Protocol::Kafka, Target::Spate, "never", 950.0),
            result("always-native", Protocol::Native, Target::Spate, "always", 600.0),
            result("always-kafka", Protocol::Kafka, Target::Spate, "always", 480.0),
            result("apache", Protocol::Kafka, Target::ApacheKafka, "never", 500.0),
            WorkloadResult {
                workload: Workload { compare: String::new(), ..Default::default() },
                ..result("not-compared", Protocol::Native, Target::Spate, "never", 1.0)
            },
        ];
        let rows = comparison_rows(&results);
        assert_eq!(rows.len(), 5, "the workload without a group is not in the table");
        let mb_s = |ratio: Option<Ratio>| ratio.map(|r| r.mb_s);
        let ratio = |i: usize| (mb_s(rows[i].kafka_over_native), mb_s(rows[i].spate_over_kafka));
        assert_eq!(ratio(0), (None, Some(2.0)));
        assert_eq!(ratio(1), (Some(0.95), Some(1.9)));
        assert_eq!(ratio(3), (Some(0.8), Some(0.96)));
        assert_eq!(ratio(4), (None, None));
        assert_eq!((rows[4].target, rows[4].durability.as_str()), ("Apache Kafka", "Kafka default (page cache)"));
        assert_eq!((rows[1].p50_ms, rows[1].p99_ms), (1.5, 4.0));
        let kafka_path = |i: usize| rows[i].kafka_over_native.expect("a Kafka-path row").text(true);
        assert_eq!(kafka_path(1), "0.95x MB/s, 1.00x p99: within 10%");
        assert_eq!(kafka_path(3), "0.80x MB/s, 1.00x p99: more than 10% worse");
    }

    /// Each TLS workload is paired with the plaintext one of the same
    /// parameters, never with another durability, and judged against
    /// issue 16's 0.80x.
    #[test]
    fn tls_rows_pair_with_the_plaintext_workload_of_the_same_parameters() {
        let with_tls = |mut r: WorkloadResult| {
            r.workload.tls = true;
            r
        };
        let results = vec![
            result("never-plain", Protocol::Kafka, Target::Spate, "never", 1000.0),
            result("always-plain", Protocol::Kafka, Target::Spate, "always", 800.0),
            with_tls(result("always-tls", Protocol::Kafka, Target::Spate, "always", 600.0)),
            with_tls(result("never-tls", Protocol::Kafka, Target::Spate, "never", 850.0)),
            with_tls(result("alone-tls", Protocol::Kafka, Target::Spate, "interval:5", 1.0)),
        ];
        let pairs = tls_pairs(&results);
        let names: Vec<(&str, &str)> =
            pairs.iter().map(|(tls, plain)| (tls.workload.name.as_str(), plain.workload.name.as_str())).collect();
        assert_eq!(names, vec![("always-tls", "always-plain"), ("never-tls", "never-plain")]);
        assert_eq!(tls_verdict(pairs[0].0, pairs[0].1), "0.75x MB/s: below 0.80x");
        assert_eq!(tls_verdict(pairs[1].0, pairs[1].1), "0.85x MB/s: at least 0.80x");
    }

    /// At a target rate both paths send the same MB/s, so the p99 decides.
    #[test]
    fn at_a_target_rate_the_kafka_path_is_judged_by_its_p99() {
        let same_rate = |p99: f64| Ratio { mb_s: 1.0, p99, at_target_rate: true };
        assert!(same_rate(1.05).within_10_percent());
        assert!(!same_rate(1.2).within_10_percent());
        assert!(!Ratio { mb_s: 0.85, p99: 0.5, at_target_rate: false }.within_10_percent());
    }
}
