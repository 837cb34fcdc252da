//! The engine benchmark: raw O_DIRECT write, then the partition log under
//! each durability policy, all on one pinned glommio executor, with the same
//! pre-built batches.

use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::StreamExt;
use glommio::io::OpenOptions;
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use spate_engine::batch::BatchBuilder;
use spate_engine::io::DmaStorage;
use spate_engine::{Durability, LogConfig, PartitionLog, TailCache};

use crate::report::{self, PolicyResult, RawResult, Report};

#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct EngineArgs {
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 1024)]
    pub record_bytes: usize,
    /// Records in each batch.
    #[arg(long, default_value_t = 1000)]
    pub records_per_batch: usize,
    /// Bytes written per measurement (each policy and the raw write).
    #[arg(long, default_value_t = 1 << 30)]
    pub total_bytes: u64,
    /// Appends outstanding at once (as producers pipelining requests).
    #[arg(long, default_value_t = 16)]
    pub in_flight: usize,
    /// Writes in flight in the raw O_DIRECT baseline (fio's iodepth in
    /// ../shared/perf/limits.md is 8).
    #[arg(long, default_value_t = 8)]
    pub raw_depth: usize,
    /// Policies to measure: always, never, interval:<ms>.
    #[arg(long, value_delimiter = ',', default_value = "always,interval:100,never")]
    pub policies: Vec<String>,
    /// Data directory; must be on a real disk (O_DIRECT), not tmpfs.
    #[arg(long, default_value = "target/bench-data")]
    pub dir: PathBuf,
    /// Rounds; each measures every policy right after a raw write, so each
    /// ratio compares two runs seconds apart on this noisy shared disk.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// CPU to pin the engine's executor to.
    #[arg(long, default_value_t = 0)]
    pub cpu: usize,
    /// Where the JSON and Markdown reports go; empty to skip writing them.
    #[arg(long, default_value = "perf-reports")]
    pub report_dir: String,
}

fn parse_policy(text: &str) -> Result<Durability, String> {
    match text {
        "always" => Ok(Durability::Always),
        "never" => Ok(Durability::Never),
        _ => match text.strip_prefix("interval:").map(str::parse::<u64>) {
            Some(Ok(interval_ms)) if interval_ms > 0 => Ok(Durability::IntervalMs(interval_ms)),
            _ => Err(format!("unknown durability policy {text:?} (always, never, interval:<ms>)")),
        },
    }
}

pub fn run(args: EngineArgs) -> Result<(), String> {
    let policies: Vec<Durability> = args.policies.iter().map(|p| parse_policy(p)).collect::<Result<_, _>>()?;
    if args.in_flight == 0 || args.raw_depth == 0 || args.records_per_batch == 0 || args.rounds == 0 {
        return Err("--in-flight, --raw-depth, --records-per-batch and --rounds must be positive".into());
    }
    let _ = std::fs::remove_dir_all(&args.dir);
    std::fs::create_dir_all(&args.dir).map_err(|err| format!("cannot create {}: {err}", args.dir.display()))?;
    let machine = report::Machine::detect(&args.dir);
    if machine.filesystem == "tmpfs" {
        return Err(format!("{} is on tmpfs, where O_DIRECT is not used; pick a real disk", args.dir.display()));
    }
    let template = build_batch(args.record_bytes, args.records_per_batch);
    let batch_count = (args.total_bytes / template.len() as u64).max(1) as usize;
    eprintln!(
        "engine bench: {batch_count} batches of {} records x {} B ({} B each), {} in flight, cpu {}",
        args.records_per_batch,
        args.record_bytes,
        template.len(),
        args.in_flight,
        args.cpu
    );
    let bench_args = args.clone();
    let handle = LocalExecutorBuilder::new(Placement::Fixed(args.cpu))
        .name("engine-bench")
        .io_memory(64 << 20)
        .spawn(move || async move {
            let mut pairs = Vec::new();
            for round in 0..bench_args.rounds {
                for &policy in &policies {
                    let raw = raw_write(&bench_args, &template, batch_count, None).await?;
                    let engine = engine_append(&bench_args, &template, batch_count, policy, raw.mb_per_s).await?;
                    let raw_synced = match policy {
                        Durability::Always => {
                            let every = spate_engine::limits::FLUSH_CYCLE_BYTES_MAX as u64;
                            Some(raw_write(&bench_args, &template, batch_count, Some(every)).await?)
                        }
                        _ => None,
                    };
                    eprintln!(
                        "round {round} {:<14} raw {:>5.0} MB/s, engine {:>5.0} MB/s ({:.0}% of raw), p50 {} us p99 {} us max {} us",
                        engine.policy,
                        raw.mb_per_s,
                        engine.mb_per_s,
                        engine.ratio_to_raw * 100.0,
                        engine.p50_us,
                        engine.p99_us,
                        engine.max_us
                    );
                    if let Some(synced) = &raw_synced {
                        let every_mib = spate_engine::limits::FLUSH_CYCLE_BYTES_MAX >> 20;
                        eprintln!("round {round} raw write + fdatasync every {every_mib} MiB: {:.0} MB/s", synced.mb_per_s);
                    }
                    pairs.push(report::Pair { round, raw, engine, raw_synced });
                }
            }
            Ok::<_, String>(pairs)
        })
        .map_err(|err| format!("cannot start executor: {err}"))?;
    let pairs = handle.join().map_err(|err| format!("executor failed: {err}"))??;
    let _ = std::fs::remove_dir_all(&args.dir);
    let report = Report::new(&args, machine, pairs);
    println!("{}", report.markdown());
    if !args.report_dir.is_empty() {
        let paths = report.write(&args.report_dir)?;
        eprintln!("reports: {}", paths.join(", "));
    }
    Ok(())
}

fn build_batch(record_bytes: usize, records_per_batch: usize) -> BytesMut {
    let value: Vec<u8> = (0..record_bytes).map(|i| (i * 31 % 251) as u8).collect();
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
    let mut builder = BatchBuilder::new(now_ms as i64);
    for i in 0..records_per_batch {
        let key = format!("key-{i}");
        builder.push(now_ms as i64, Some(key.as_bytes()), Some(&value), &[]);
    }
    builder.build()
}

/// The same bytes through glommio's DmaFile: `raw_depth` aligned writes of
/// one batch each in flight (copied into DMA buffers, as any writer must), then one
/// fdatasync.
///
/// With `sync_every_bytes`, the writes go in groups of that many bytes, each
/// followed by an fdatasync before the next group starts: the naive durable
/// writer, and the device's price for durability at that cadence.
async fn raw_write(
    args: &EngineArgs,
    template: &BytesMut,
    batch_count: usize,
    sync_every_bytes: Option<u64>,
) -> Result<RawResult, String> {
    let path = args.dir.join("raw.bin");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .dma_open(&path)
        .await
        .map_err(|err| format!("open {}: {err}", path.display()))?;
    let write_bytes = spate_engine::limits::align_up(template.len() as u64) as usize;
    let total = write_bytes as u64 * batch_count as u64;
    file.pre_allocate(total, true).await.map_err(|err| format!("fallocate: {err}"))?;
    let file = Rc::new(file);
    let group_batches = sync_every_bytes.map_or(batch_count, |bytes| (bytes as usize / write_bytes).max(1));
    let started = Instant::now();
    for group_start in (0..batch_count).step_by(group_batches) {
        let group = group_start..(group_start + group_batches).min(batch_count);
        let writes = futures::stream::iter(group).map(|i| {
            let file = file.clone();
            async move {
                let mut buf = file.alloc_dma_buffer(write_bytes);
                buf.as_bytes_mut()[..template.len()].copy_from_slice(template);
                file.write_at(buf, (i * write_bytes) as u64).await
            }
        });
        let results: Vec<_> = writes.buffer_unordered(args.raw_depth).collect().await;
        for result in results {
            result.map_err(|err| format!("raw write: {err}"))?;
        }
        file.fdatasync().await.map_err(|err| format!("raw fdatasync: {err}"))?;
    }
    let elapsed = started.elapsed();
    drop(file);
    let _ = std::fs::remove_file(&path);
    Ok(RawResult::new(template.len() as u64 * batch_count as u64, elapsed))
}

async fn engine_append(
    args: &EngineArgs,
    template: &BytesMut,
    batch_count: usize,
    policy: Durability,
    raw_mb_per_s: f64,
) -> Result<PolicyResult, String> {
    let dir = args.dir.join(format!("log-{}", report::policy_name(policy).replace(':', "-")));
    let config = LogConfig { durability: policy, retention_ms: None, ..LogConfig::default() };
    let log = PartitionLog::open(DmaStorage, &dir, config, TailCache::new(64 << 20))
        .await
        .map_err(|err| format!("open log: {err}"))?;
    // Batches are laid out before the clock starts, back to back in one
    // buffer, and split off it without copying: a broker receives them the
    // same way, so neither the copy nor page faults are the engine's work.
    let mut arena = BytesMut::with_capacity(template.len() * batch_count);
    for _ in 0..batch_count {
        arena.extend_from_slice(template);
    }
    let batches: Vec<BytesMut> = (0..batch_count).map(|_| arena.split_to(template.len())).collect();
    let mut latency_us = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|err| err.to_string())?;
    let cpu_started = thread_cpu_seconds();
    let started = Instant::now();
    let appends = futures::stream::iter(batches).map(|batch| {
        let log = log.clone();
        async move {
            let sent = Instant::now();
            log.append(batch, 0)?.durable().await?;
            Ok::<Duration, spate_engine::LogError>(sent.elapsed())
        }
    });
    let mut appends = appends.buffered(args.in_flight);
    while let Some(result) = appends.next().await {
        let elapsed = result.map_err(|err| format!("append: {err}"))?;
        latency_us.saturating_record(elapsed.as_micros().max(1) as u64);
    }
    let elapsed = started.elapsed();
    let cpu_seconds = thread_cpu_seconds() - cpu_started;
    log.close().await.map_err(|err| format!("close: {err}"))?;
    let _ = std::fs::remove_dir_all(&dir);
    let mut result =
        PolicyResult::new(policy, template.len() as u64 * batch_count as u64, elapsed, &latency_us, raw_mb_per_s);
    result.executor_busy = cpu_seconds / elapsed.as_secs_f64();
    Ok(result)
}

/// CPU time (user + system) of the calling thread, from /proc, in seconds;
/// 10 ms resolution, enough over a run of a second or more.
fn thread_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields.get(11..13).map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
    ticks as f64 / 100.0
}
