//! `spate bench`: workloads against a real broker process, with the
//! machine's limits measured in the same run and every figure reported
//! also as a ratio to them. A suite file (bench/suites/*.toml) lists the
//! workloads; `spate bench run` runs one from flags.

mod broker;
mod limits;
mod load;
mod output;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use spate_client::{Acks, Admin, Client, ClientConfig, Compression, TopicPartition};

use broker::BrokerProcess;
pub use broker::BrokerSettings;
use load::{ConsumeLoad, Counters, ProduceLoad};

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Run a suite file (default bench/suites/standard.toml).
    Suite {
        #[arg(default_value = "bench/suites/standard.toml")]
        file: PathBuf,
        /// Where reports go.
        #[arg(long, default_value = "perf-reports")]
        out: PathBuf,
        /// Only the workloads whose names contain this.
        #[arg(long)]
        only: Option<String>,
    },
    /// Run one workload described by flags.
    Run {
        #[command(flatten)]
        workload: Workload,
        #[arg(long, default_value = "perf-reports")]
        out: PathBuf,
        #[arg(long, default_value_t = 1)]
        shards: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Producers as fast as they go (or at a target rate).
    Produce,
    /// Consumers reading data written before a broker restart (from disk).
    ConsumeDisk,
    /// Consumers reading data just written (from the broker's tail cache).
    ConsumeTail,
    /// Producers at a target rate and consumers at the tail together;
    /// latency from a batch's send slot to its consumption.
    EndToEnd,
    /// One producer, one request in flight: round-trip latency.
    RoundTrip,
}

/// One workload; suite files use the same field names.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct Workload {
    #[arg(long, default_value = "run")]
    pub name: String,
    #[arg(long, value_enum, default_value = "produce")]
    pub kind: Kind,
    #[arg(long, default_value_t = 1024)]
    pub message_bytes: usize,
    #[arg(long, default_value_t = 1000)]
    pub batch_records: usize,
    #[arg(long, default_value_t = 2)]
    pub producers: usize,
    #[arg(long, default_value_t = 2)]
    pub consumers: usize,
    #[arg(long, default_value_t = 2)]
    pub partitions: usize,
    /// Requests each producer keeps in flight.
    #[arg(long, default_value_t = 4)]
    pub in_flight: usize,
    /// all, 1 or 0.
    #[arg(long, default_value = "all")]
    pub acks: String,
    /// always, never or interval:<ms> (the topic's flush.ms).
    #[arg(long, default_value = "always")]
    pub durability: String,
    /// Compression codec of the produced batches: none, gzip, snappy, lz4
    /// or zstd (values are then event-like text; the report gives the ratio).
    #[arg(long, default_value = "none")]
    pub compression: String,
    #[arg(long, default_value_t = 3.0)]
    pub warmup_s: f64,
    #[arg(long, default_value_t = 15.0)]
    pub duration_s: f64,
    /// Consume workloads: bytes written before consuming.
    #[arg(long, default_value_t = 2_000_000_000)]
    pub data_bytes: u64,
    /// Target rate in MB/s (producers); absent: as fast as possible.
    #[arg(long)]
    pub rate_mb_s: Option<f64>,
    /// Target rate as this fraction of an earlier workload's throughput.
    #[arg(long)]
    pub rate_fraction: Option<f64>,
    #[arg(long)]
    pub rate_of: Option<String>,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            name: "run".into(),
            kind: Kind::Produce,
            message_bytes: 1024,
            batch_records: 1000,
            producers: 2,
            consumers: 2,
            partitions: 2,
            in_flight: 4,
            acks: "all".into(),
            durability: "always".into(),
            compression: "none".into(),
            warmup_s: 3.0,
            duration_s: 15.0,
            data_bytes: 2_000_000_000,
            rate_mb_s: None,
            rate_fraction: None,
            rate_of: None,
        }
    }
}

impl Workload {
    fn acks(&self) -> anyhow::Result<Acks> {
        Ok(match self.acks.as_str() {
            "all" | "-1" => Acks::All,
            "1" => Acks::Leader,
            "0" => Acks::None,
            other => bail!("acks {other:?}: expected all, 1 or 0"),
        })
    }

    fn flush_ms(&self) -> anyhow::Result<String> {
        Ok(match self.durability.as_str() {
            "always" => "0".into(),
            "never" => "-1".into(),
            other => match other.strip_prefix("interval:").and_then(|ms| ms.parse::<u64>().ok()) {
                Some(ms) if ms > 0 => ms.to_string(),
                _ => bail!("durability {other:?}: expected always, never or interval:<ms>"),
            },
        })
    }

    fn codec(&self) -> anyhow::Result<Compression> {
        Compression::from_name(&self.compression)
            .with_context(|| format!("compression {:?}: expected none, gzip, snappy, lz4 or zstd", self.compression))
    }

    fn check(&self) -> anyhow::Result<()> {
        self.acks()?;
        self.flush_ms()?;
        self.codec()?;
        if self.partitions == 0 || self.producers == 0 || self.consumers == 0 || self.in_flight == 0 {
            bail!("{}: partitions, producers, consumers and in_flight must be positive", self.name);
        }
        if self.batch_records == 0 || self.message_bytes < 8 {
            bail!("{}: batch_records must be positive and message_bytes at least 8", self.name);
        }
        Ok(())
    }
}

/// Where each side runs; recorded in the report.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoadSettings {
    /// Cores the load generator's threads are pinned to (empty: not pinned).
    pub cpus: Vec<usize>,
}

impl Default for LoadSettings {
    fn default() -> Self {
        LoadSettings { cpus: vec![1] }
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Bytes written (disk) and sent (loopback) to measure the limits.
    pub bytes: u64,
    /// Core the raw-write executor is pinned to.
    pub cpu: Option<usize>,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings { bytes: 2 << 30, cpu: Some(0) }
    }
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Suite {
    pub name: String,
    pub broker: BrokerSettings,
    pub loadgen: LoadSettings,
    pub limits: LimitSettings,
    #[serde(rename = "workload")]
    pub workloads: Vec<Workload>,
}

/// What one workload measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WorkloadResult {
    pub workload: Workload,
    pub mb_per_s: f64,
    pub records_per_s: f64,
    pub seconds: f64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Latency percentiles in microseconds: p50, p90, p99, p99.9, p99.99, max.
    pub latency_us: Latency,
    pub latency_samples: u64,
    /// What the latency measures.
    pub latency_of: &'static str,
    /// End to end: the producers' request latency (send slot to ack) in
    /// the same run, to split the end-to-end figure.
    pub produce_latency_us: Option<Latency>,
    pub series_mb_s: Vec<f64>,
    /// Cores the broker and the load generator used while measuring.
    pub broker_cores: f64,
    pub loadgen_cores: f64,
    /// (quantile, µs) for the distribution plot.
    pub distribution_us: Vec<(f64, u64)>,
    pub target_rate_mb_s: Option<f64>,
    /// Bytes the producers wrote in the measured window (0 for consume
    /// workloads).
    pub written_bytes: u64,
    /// Produce, end to end and round trip: raw O_DIRECT write of
    /// `written_bytes` (clamped to 256 MiB..4 GiB) measured right after
    /// the workload, so the ratio compares the disk in the state the
    /// workload left it (it slows under sustained writes).
    pub paired_disk_bytes: Option<u64>,
    pub paired_disk_write_mb_s: Option<f64>,
    /// `durability = "always"`: the same bytes with an fdatasync every
    /// 4 MiB, right after the plain paired write.
    pub paired_disk_write_sync_mb_s: Option<f64>,
}

#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p99_9: u64,
    pub p99_99: u64,
    pub max: u64,
}

fn summarize(histogram: &hdrhistogram::Histogram<u64>) -> (Latency, Vec<(f64, u64)>) {
    let at = |q: f64| histogram.value_at_quantile(q);
    let latency = Latency {
        p50: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
        p99_9: at(0.999),
        p99_99: at(0.9999),
        max: histogram.max(),
    };
    let distribution = (0..=40).map(|i| 1.0 - 10f64.powf(-(i as f64) / 10.0)).map(|q| (q, at(q))).collect();
    (latency, distribution)
}

pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    let (suite, out) = match command {
        BenchCommand::Suite { file, out, only } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let mut suite: Suite = toml::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
            if suite.name.is_empty() {
                suite.name = file.file_stem().map_or("suite".into(), |s| s.to_string_lossy().into_owned());
            }
            if let Some(only) = only {
                // Keep the matching workloads and those they take a rate from.
                let mut keep: std::collections::HashSet<String> =
                    suite.workloads.iter().filter(|w| w.name.contains(&only)).map(|w| w.name.clone()).collect();
                let sources: Vec<String> = suite
                    .workloads
                    .iter()
                    .filter(|w| keep.contains(&w.name))
                    .filter_map(|w| w.rate_of.clone())
                    .collect();
                keep.extend(sources);
                suite.workloads.retain(|w| keep.contains(&w.name));
            }
            (suite, out)
        }
        BenchCommand::Run { workload, out, shards } => {
            let suite = Suite {
                name: workload.name.clone(),
                broker: BrokerSettings { shards, ..Default::default() },
                workloads: vec![workload],
                ..Default::default()
            };
            (suite, out)
        }
    };
    for workload in &suite.workloads {
        workload.check()?;
    }
    let machine =
        crate::report::Machine::detect(&suite.broker.data_dir.parent().map_or(PathBuf::from("."), PathBuf::from));
    eprintln!("measuring the machine's limits ({} MB to disk and over loopback)", suite.limits.bytes / 1_000_000);
    let limits_dir = suite.broker.data_dir.with_extension("limits");
    let limits = limits::measure(&limits_dir, suite.limits.bytes, suite.limits.cpu)?;
    eprintln!(
        "limits: disk write {:.0} MB/s (with fdatasync every 4 MiB {:.0} MB/s), loopback {:.0} MB/s",
        limits.disk_write_mb_s, limits.disk_write_sync_4mib_mb_s, limits.loopback_mb_s
    );
    let runtime = loadgen_runtime(&suite.loadgen)?;
    let mut results: Vec<WorkloadResult> = Vec::new();
    for workload in &suite.workloads {
        let target = target_rate(workload, &results)?;
        eprintln!("workload {} ({:?})", workload.name, workload.kind);
        let mut result = runtime.block_on(run_workload(&suite.broker, workload, target))?;
        if let Some(error) = &result.first_error {
            eprintln!("  {} request(s) failed; the first: {error}", result.errors);
        }
        eprintln!(
            "  {:.1} MB/s, {:.0} rec/s, latency p50 {} µs p99 {} µs p99.9 {} µs max {} µs ({})",
            result.mb_per_s,
            result.records_per_s,
            result.latency_us.p50,
            result.latency_us.p99,
            result.latency_us.p99_9,
            result.latency_us.max,
            result.latency_of
        );
        eprintln!("  cores used: broker {:.2}, load generator {:.2}", result.broker_cores, result.loadgen_cores);
        if let Some(produce) = &result.produce_latency_us {
            eprintln!("  of which producing: p50 {} µs p99 {} µs p99.9 {} µs", produce.p50, produce.p99, produce.p99_9);
        }
        if matches!(workload.kind, Kind::Produce | Kind::EndToEnd | Kind::RoundTrip) {
            // Right after the workload (its broker has stopped), as
            // `spate-bench engine` pairs its runs.
            let sync = workload.durability == "always";
            let paired = limits::measure_paired(&limits_dir, result.written_bytes, sync, suite.limits.cpu)?;
            eprintln!(
                "  paired raw write of {} MiB: {:.0} MB/s{}",
                paired.bytes >> 20,
                paired.disk_write_mb_s,
                paired
                    .disk_write_sync_4mib_mb_s
                    .map_or(String::new(), |mb| format!(" (with fdatasync every 4 MiB {mb:.0} MB/s)"))
            );
            result.paired_disk_bytes = Some(paired.bytes);
            result.paired_disk_write_mb_s = Some(paired.disk_write_mb_s);
            result.paired_disk_write_sync_mb_s = paired.disk_write_sync_4mib_mb_s;
        }
        results.push(result);
    }
    let report = output::Report::new(&suite, machine, limits, results);
    for path in report.write(&out)? {
        eprintln!("wrote {path}");
    }
    Ok(())
}

fn target_rate(workload: &Workload, results: &[WorkloadResult]) -> anyhow::Result<Option<f64>> {
    if let Some(rate) = workload.rate_mb_s {
        return Ok(Some(rate));
    }
    let (Some(fraction), Some(of)) = (workload.rate_fraction, workload.rate_of.as_ref()) else { return Ok(None) };
    let base = results
        .iter()
        .find(|r| &r.workload.name == of)
        .with_context(|| format!("{}: rate_of {of:?} must name an earlier workload", workload.name))?;
    Ok(Some(base.mb_per_s * fraction))
}

fn loadgen_runtime(settings: &LoadSettings) -> anyhow::Result<tokio::runtime::Runtime> {
    let cpus = settings.cpus.clone();
    let threads = cpus.len().max(1);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .on_thread_start(move || {
            if !cpus.is_empty() {
                let cpu = cpus[next.fetch_add(1, Ordering::Relaxed) % cpus.len()];
                let _ = core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
            }
        })
        .build()
        .context("starting the load generator's runtime")
}

async fn connect(broker: &BrokerProcess) -> anyhow::Result<Client> {
    let config = ClientConfig {
        bootstrap: vec![broker.addr()],
        client_id: "spate-bench".into(),
        frame_bytes_max: 128 << 20,
        ..Default::default()
    };
    Ok(Client::connect(config).await?)
}

async fn create_topic(client: &Client, workload: &Workload) -> anyhow::Result<String> {
    let topic = format!("bench-{}", workload.name);
    let configs = vec![("flush.ms".to_string(), workload.flush_ms()?), ("retention.ms".into(), "-1".into())];
    Admin::new(client.clone())
        .create_topic(&topic, workload.partitions as i32, 1, &configs)
        .await
        .with_context(|| format!("creating {topic}"))?;
    Ok(topic)
}

fn produce_load(workload: &Workload, topic: &str, rate_mb_s: Option<f64>, stamp: bool) -> anyhow::Result<ProduceLoad> {
    Ok(ProduceLoad {
        topic: topic.to_string(),
        partitions: workload.partitions,
        producers: workload.producers,
        in_flight: workload.in_flight,
        batch_records: workload.batch_records,
        message_bytes: workload.message_bytes,
        acks: workload.acks()?,
        rate_bytes_s: rate_mb_s.map(|mb| mb * 1e6),
        stamp,
        compression: workload.codec()?,
    })
}

/// Runs `produce` for warm-up plus duration; measures the duration only.
async fn timed_produce(
    broker_pid: u32,
    client: &Client,
    load: ProduceLoad,
    workload: &Workload,
    consume: Option<ConsumeLoad>,
) -> anyhow::Result<load::Measured> {
    let counters = Arc::new(Counters::default());
    let consumed = Arc::new(Counters::default());
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let shown = if consume.is_some() { consumed.clone() } else { counters.clone() };
    let sampler = tokio::spawn(load::sample(workload.name.clone(), shown, measuring.clone(), stop.clone()));
    let producing =
        tokio::spawn(load::produce(client.clone(), load, counters.clone(), measuring.clone(), stop.clone()));
    let consuming = consume.map(|consume| {
        tokio::spawn(load::consume(client.clone(), consume, consumed.clone(), measuring.clone(), stop.clone()))
    });
    tokio::time::sleep(Duration::from_secs_f64(workload.warmup_s)).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let cpu = load::CpuWindow::start(broker_pid);
    tokio::time::sleep(Duration::from_secs_f64(workload.duration_s)).await;
    measuring.store(false, Ordering::Relaxed);
    let (broker_cores, loadgen_cores) = cpu.cores();
    let seconds = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let produce_latency = producing.await.context("producers")??;
    let written_bytes = counters.bytes.load(Ordering::Relaxed);
    let (latency, produce_latency, counted) = match consuming {
        Some(consuming) => (consuming.await.context("consumers")??, Some(produce_latency), consumed),
        None => (produce_latency, None, counters),
    };
    let series_mb_s = sampler.await.context("sampler")?;
    Ok(load::Measured {
        bytes: counted.bytes.load(Ordering::Relaxed),
        written_bytes,
        records: counted.records.load(Ordering::Relaxed),
        errors: counted.errors.load(Ordering::Relaxed),
        first_error: counted.first_error.lock().ok().and_then(|e| e.clone()),
        seconds,
        latency,
        produce_latency,
        series_mb_s,
        broker_cores,
        loadgen_cores,
    })
}

/// Writes `bytes` into the topic as fast as the broker takes them.
async fn fill(client: &Client, workload: &Workload, topic: &str) -> anyhow::Result<Vec<i64>> {
    let codec = workload.codec()?;
    let plain = load::build_batch_for(workload.batch_records, workload.message_bytes, load::now_ns(), codec);
    let template = load::compress_batch(&plain, codec);
    let batches = (workload.data_bytes as usize).div_ceil(template.len()).max(workload.partitions);
    let mut tasks = Vec::new();
    let lanes = workload.partitions * workload.in_flight;
    for lane in 0..lanes {
        let (client, template) = (client.clone(), template.clone());
        let tp = TopicPartition::new(topic, (lane % workload.partitions) as i32);
        let count = batches / lanes + usize::from(lane < batches % lanes);
        tasks.push(tokio::spawn(async move {
            for _ in 0..count {
                client.produce_batches(&tp, &template, Acks::Leader, Duration::from_secs(60)).await?;
            }
            Ok::<(), spate_client::ClientError>(())
        }));
    }
    for task in tasks {
        task.await.context("fill task")??;
    }
    let mut ends = Vec::new();
    for partition in 0..workload.partitions {
        let tp = TopicPartition::new(topic, partition as i32);
        let fetched = client.fetch_batches(&tp, 0, 1, Duration::ZERO).await?;
        ends.push(fetched.high_watermark);
    }
    Ok(ends)
}

async fn timed_consume(
    broker_pid: u32,
    client: &Client,
    workload: &Workload,
    topic: &str,
    ends: Vec<i64>,
) -> anyhow::Result<load::Measured> {
    let counters = Arc::new(Counters::default());
    let measuring = Arc::new(AtomicBool::new(true));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(load::sample(workload.name.clone(), counters.clone(), measuring.clone(), stop.clone()));
    let consume = ConsumeLoad {
        topic: topic.to_string(),
        partitions: workload.partitions,
        consumers: workload.consumers,
        fetch_bytes_max: 4 << 20,
        start_offsets: vec![0; workload.partitions],
        end_offsets: Some(ends),
        end_to_end: false,
    };
    let started = Instant::now();
    let cpu = load::CpuWindow::start(broker_pid);
    let latency = load::consume(client.clone(), consume, counters.clone(), measuring.clone(), stop.clone()).await?;
    let (broker_cores, loadgen_cores) = cpu.cores();
    let seconds = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let series_mb_s = sampler.await.context("sampler")?;
    Ok(load::Measured {
        bytes: counters.bytes.load(Ordering::Relaxed),
        written_bytes: 0,
        records: counters.records.load(Ordering::Relaxed),
        errors: counters.errors.load(Ordering::Relaxed),
        first_error: counters.first_error.lock().ok().and_then(|e| e.clone()),
        seconds,
        latency,
        produce_latency: None,
        series_mb_s,
        broker_cores,
        loadgen_cores,
    })
}

async fn run_workload(
    settings: &BrokerSettings,
    workload: &Workload,
    target_mb_s: Option<f64>,
) -> anyhow::Result<WorkloadResult> {
    // A round trip is one producer with one request in flight, whatever
    // the suite says; the report shows what ran.
    let mut effective = workload.clone();
    if effective.kind == Kind::RoundTrip {
        (effective.producers, effective.in_flight) = (1, 1);
    }
    let workload = &effective;
    let mut broker = BrokerProcess::start_fresh(settings)?;
    let client = connect(&broker).await?;
    let topic = create_topic(&client, workload).await?;
    let (measured, latency_of) = match workload.kind {
        Kind::Produce => {
            let load = produce_load(workload, &topic, target_mb_s, false)?;
            (timed_produce(broker.pid(), &client, load, workload, None).await?, "produce request, send slot to ack")
        }
        Kind::RoundTrip => {
            let load = produce_load(workload, &topic, target_mb_s, false)?;
            (timed_produce(broker.pid(), &client, load, workload, None).await?, "produce request round trip")
        }
        Kind::EndToEnd => {
            let load = produce_load(workload, &topic, target_mb_s, true)?;
            let consume = ConsumeLoad {
                topic: topic.clone(),
                partitions: workload.partitions,
                consumers: workload.consumers,
                fetch_bytes_max: 4 << 20,
                start_offsets: vec![0; workload.partitions],
                end_offsets: None,
                end_to_end: true,
            };
            (
                timed_produce(broker.pid(), &client, load, workload, Some(consume)).await?,
                "send slot to consumption, per batch",
            )
        }
        Kind::ConsumeTail => {
            let ends = fill(&client, workload, &topic).await?;
            (timed_consume(broker.pid(), &client, workload, &topic, ends).await?, "fetch request round trip")
        }
        Kind::ConsumeDisk => {
            let ends = fill(&client, workload, &topic).await?;
            drop(client);
            broker = broker.restart()?;
            let client = connect(&broker).await?;
            (timed_consume(broker.pid(), &client, workload, &topic, ends).await?, "fetch request round trip")
        }
    };
    broker.stop()?;
    let (latency_us, distribution_us) = summarize(&measured.latency);
    Ok(WorkloadResult {
        workload: workload.clone(),
        mb_per_s: measured.mb_per_s(),
        records_per_s: measured.records_per_s(),
        seconds: measured.seconds,
        errors: measured.errors,
        first_error: measured.first_error,
        latency_us,
        latency_samples: measured.latency.len(),
        latency_of,
        produce_latency_us: measured.produce_latency.as_ref().map(|h| summarize(h).0),
        series_mb_s: measured.series_mb_s,
        broker_cores: measured.broker_cores,
        loadgen_cores: measured.loadgen_cores,
        distribution_us,
        target_rate_mb_s: target_mb_s,
        written_bytes: measured.written_bytes,
        paired_disk_bytes: None,
        paired_disk_write_mb_s: None,
        paired_disk_write_sync_mb_s: None,
    })
}
