//! `spate bench`: workloads against a real broker process, with the
//! machine's limits measured in the same run and every figure reported
//! also as a ratio to them. A suite file (bench/suites/*.toml) lists the
//! workloads; `spate bench run` runs one from flags.

mod apache_kafka;
mod broker;
mod kafka_load;
mod kafka_txn;
mod limits;
mod load;
mod output;
mod tls;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use spate_client::{Acks, Admin, Client, ClientConfig, Compression, TopicPartition};

pub use apache_kafka::ApacheKafkaSettings;
use apache_kafka::KafkaProcess;
pub use broker::BrokerSettings;
use broker::Cluster;
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
        workload: Box<Workload>,
        #[arg(long, default_value = "perf-reports")]
        out: PathBuf,
        /// Shards per broker.
        #[arg(long, default_value_t = 1)]
        shards: usize,
        /// Brokers in the cluster (more than one: each a controller voter).
        /// Not `--brokers`: that is the CLI's global bootstrap list.
        #[arg(long, default_value_t = 1)]
        broker_count: usize,
        /// Cores of one broker's process (taskset -c), e.g. 0 or 0,1; once
        /// per broker, node 1 first. Absent: one broker pins its shards to
        /// cores 0..shards, several are not pinned.
        #[arg(long = "broker-cpus", value_delimiter = ';')]
        broker_cpus: Vec<String>,
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

/// The protocol the load generator speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// Spate's own protocol, through `spate_client`.
    #[default]
    Native,
    /// Kafka's protocol (Produce v9, sessionless Fetch v12) to the
    /// broker's Kafka listener, with the `kafka-protocol` codecs.
    Kafka,
}

/// How the Kafka-protocol producers identify themselves (issue 17's
/// benchmark compares the last two).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ProducerMode {
    /// No producer id: the pre-built batches as they are.
    #[default]
    Plain,
    /// InitProducerId, then each batch with the producer id and epoch and
    /// its partition's next sequence number (`enable.idempotence`).
    Idempotent,
    /// As idempotent, with a transactional.id per producer connection and
    /// a transaction committed every `commit_interval_ms`
    /// (`harness/kafka_txn.rs`).
    Transactional,
}

/// What a Kafka-protocol consumer asks to read (Fetch's isolation_level).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// Everything up to the high watermark (isolation_level 0).
    #[default]
    ReadUncommitted,
    /// Up to the last stable offset, with the aborted transactions listed
    /// (isolation_level 1).
    ReadCommitted,
}

impl Isolation {
    /// Fetch's isolation_level.
    pub fn level(self) -> i8 {
        match self {
            Isolation::ReadUncommitted => 0,
            Isolation::ReadCommitted => 1,
        }
    }
}

/// What the workload runs against.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// `spate serve`, as the `[broker]` section says.
    #[default]
    Spate,
    /// Apache Kafka, as the `[apache_kafka]` section says; Kafka protocol
    /// only, its flush settings at Kafka's defaults.
    ApacheKafka,
}

impl Workload {
    /// "Spate native", "Spate Kafka protocol", "Spate Kafka protocol over
    /// TLS" or "Apache Kafka".
    pub fn target_label(&self) -> &'static str {
        match (self.target, self.protocol, self.tls) {
            (Target::ApacheKafka, _, _) => "Apache Kafka",
            (Target::Spate, Protocol::Native, _) => "Spate native",
            (Target::Spate, Protocol::Kafka, false) => "Spate Kafka protocol",
            (Target::Spate, Protocol::Kafka, true) => "Spate Kafka protocol over TLS",
        }
    }
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
    /// Replicas of each partition (at most the suite's brokers).
    #[arg(long, default_value_t = 1)]
    pub replication_factor: usize,
    /// The topic's min.insync.replicas; absent: the broker's default.
    #[arg(long)]
    pub min_insync_replicas: Option<usize>,
    /// native (spate_client) or kafka (Kafka's protocol to the Kafka
    /// listener).
    #[arg(long, value_enum, default_value = "native")]
    pub protocol: Protocol,
    /// spate or apache-kafka (the suite's `[apache_kafka]`).
    #[arg(long, value_enum, default_value = "spate")]
    pub target: Target,
    /// Connect to the broker's SSL listener (TLS, rustls) rather than its
    /// PLAINTEXT one; protocol kafka only. When any workload of a run
    /// asks for it, every broker of the run serves both listeners, with
    /// a certificate the harness makes.
    #[arg(long)]
    pub tls: bool,
    /// plain, idempotent or transactional producers (protocol kafka; the
    /// producers of a consume workload's fill too).
    #[arg(long, value_enum, default_value = "plain")]
    pub producer_mode: ProducerMode,
    /// Transactional producers commit a transaction this often.
    #[arg(long, default_value_t = 100)]
    pub commit_interval_ms: u64,
    /// Transactional producers wait this long before asking again after
    /// a retriable answer (CONCURRENT_TRANSACTIONS while the last commit's
    /// markers are written); 20 is Java's client.
    #[arg(long, default_value_t = kafka_txn::RETRY_BACKOFF_MS_DEFAULT)]
    pub txn_retry_backoff_ms: u64,
    /// Transactional producers speak transactions v2 (KIP-890 part 2: no
    /// AddPartitionsToTxn, Produce v12, EndTxn v5 bumps the epoch), as
    /// Java's client 4.0+ does, or v1 (AddPartitionsToTxn per
    /// transaction, EndTxn v3), as librdkafka does.
    #[arg(long, default_value_t = kafka_txn::TRANSACTION_VERSION_DEFAULT)]
    pub transaction_version: u8,
    /// read_uncommitted or read_committed consumers (protocol kafka).
    #[arg(long, value_enum, default_value = "read-uncommitted")]
    pub isolation: Isolation,
    /// Workloads with the same `compare` name form one group of the
    /// report's protocol and target table (empty: not in it).
    #[arg(long, default_value = "")]
    pub compare: String,
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
            replication_factor: 1,
            min_insync_replicas: None,
            protocol: Protocol::Native,
            target: Target::Spate,
            tls: false,
            producer_mode: ProducerMode::Plain,
            commit_interval_ms: 100,
            txn_retry_backoff_ms: kafka_txn::RETRY_BACKOFF_MS_DEFAULT,
            transaction_version: kafka_txn::TRANSACTION_VERSION_DEFAULT,
            isolation: Isolation::ReadUncommitted,
            compare: String::new(),
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

    fn check(&self, brokers: usize) -> anyhow::Result<()> {
        self.acks()?;
        if self.replication_factor == 0 || self.replication_factor > brokers {
            bail!("{}: replication_factor {} needs 1..={brokers} (the brokers)", self.name, self.replication_factor);
        }
        if self.min_insync_replicas.is_some_and(|min| min == 0 || min > self.replication_factor) {
            bail!("{}: min_insync_replicas must be in 1..=replication_factor", self.name);
        }
        self.flush_ms()?;
        self.codec()?;
        if self.partitions == 0 || self.producers == 0 || self.consumers == 0 || self.in_flight == 0 {
            bail!("{}: partitions, producers, consumers and in_flight must be positive", self.name);
        }
        if self.batch_records == 0 || self.message_bytes < 8 {
            bail!("{}: batch_records must be positive and message_bytes at least 8", self.name);
        }
        self.check_kafka(brokers)
    }

    /// What the Kafka path does not do (yet): a cluster (it would need
    /// Metadata routing to each partition's leader), acks=0 (no response
    /// to pipeline against), round trips, and Apache Kafka with anything
    /// but its own flush defaults or natively.
    fn check_kafka(&self, brokers: usize) -> anyhow::Result<()> {
        if self.protocol == Protocol::Kafka {
            if brokers > 1 && self.target == Target::Spate {
                bail!("{}: protocol kafka runs against one broker (brokers = 1)", self.name);
            }
            if self.acks == "0" {
                bail!("{}: protocol kafka needs acks all or 1 (acks 0 has no response to wait for)", self.name);
            }
            if self.kind == Kind::RoundTrip {
                bail!("{}: protocol kafka has no round_trip workload yet", self.name);
            }
        }
        self.check_transactions()?;
        if self.tls && (self.protocol != Protocol::Kafka || self.target != Target::Spate) {
            bail!("{}: tls needs protocol = \"kafka\" against Spate (its SSL listener)", self.name);
        }
        if self.target == Target::ApacheKafka {
            if self.protocol != Protocol::Kafka {
                bail!("{}: target apache_kafka needs protocol = \"kafka\"", self.name);
            }
            if self.replication_factor != 1 || self.min_insync_replicas.is_some() {
                bail!("{}: Apache Kafka runs as one node: replication_factor 1", self.name);
            }
            if self.durability != "never" {
                bail!(
                    "{}: Apache Kafka keeps its default flush settings (no fsync before an ack): durability = \"never\"",
                    self.name
                );
            }
            if self.compression != "none" {
                bail!("{}: Apache Kafka workloads send uncompressed batches (compression none)", self.name);
            }
        }
        Ok(())
    }
}

impl Workload {
    /// What the idempotent and transactional producers and the
    /// read_committed consumers run in: Kafka's protocol only, and
    /// producers as fast as acknowledged (their lanes keep no schedule)
    /// with batches that carry no send stamp.
    fn check_transactions(&self) -> anyhow::Result<()> {
        let sequenced = self.producer_mode != ProducerMode::Plain;
        if (sequenced || self.isolation != Isolation::ReadUncommitted) && self.protocol != Protocol::Kafka {
            bail!("{}: producer_mode and isolation need protocol = \"kafka\"", self.name);
        }
        if sequenced {
            if !matches!(self.kind, Kind::Produce | Kind::ConsumeTail | Kind::ConsumeDisk) {
                bail!("{}: {:?} producers run produce, consume_tail and consume_disk", self.name, self.producer_mode);
            }
            if self.rate_mb_s.is_some() || self.rate_fraction.is_some() {
                bail!("{}: {:?} producers go as fast as acknowledged (no target rate)", self.name, self.producer_mode);
            }
        }
        if self.producer_mode == ProducerMode::Transactional
            && !(1..=kafka_txn::COMMIT_INTERVAL_MS_MAX).contains(&self.commit_interval_ms)
        {
            bail!(
                "{}: commit_interval_ms {} must be in 1..={} (inside the transaction timeout)",
                self.name,
                self.commit_interval_ms,
                kafka_txn::COMMIT_INTERVAL_MS_MAX
            );
        }
        if !(1..=2).contains(&self.transaction_version) {
            bail!("{}: transaction_version {} must be 1 or 2", self.name, self.transaction_version);
        }
        if !(1..=kafka_txn::RETRY_BACKOFF_MS_MAX).contains(&self.txn_retry_backoff_ms) {
            bail!(
                "{}: txn_retry_backoff_ms {} must be in 1..={}",
                self.name,
                self.txn_retry_backoff_ms,
                kafka_txn::RETRY_BACKOFF_MS_MAX
            );
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
    /// Where Apache Kafka runs for `target = "apache_kafka"` workloads.
    pub apache_kafka: ApacheKafkaSettings,
    #[serde(rename = "workload")]
    pub workloads: Vec<Workload>,
}

impl Suite {
    pub fn has_apache_kafka(&self) -> bool {
        self.workloads.iter().any(|w| w.target == Target::ApacheKafka)
    }

    /// Whether the run's brokers serve an SSL listener beside PLAINTEXT.
    pub fn has_tls(&self) -> bool {
        self.workloads.iter().any(|w| w.tls)
    }
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
    /// Cores the brokers (all together) and the load generator used while
    /// measuring.
    pub broker_cores: f64,
    pub loadgen_cores: f64,
    /// Cores each broker process used (node 1 first).
    pub broker_cores_each: Vec<f64>,
    /// Traffic over loopback while measuring (the whole machine's `lo`).
    pub loopback_mb_s: f64,
    /// The whole machine's busy cores while measuring (brokers, load
    /// generator, kernel threads, interrupts, anything else running), and
    /// the cores the hypervisor stole.
    pub machine_cores: f64,
    pub steal_cores: f64,
    /// Replicated topics: what the ISR did during the workload.
    pub isr: Option<IsrSeen>,
    /// (quantile, µs) for the distribution plot.
    pub distribution_us: Vec<(f64, u64)>,
    pub target_rate_mb_s: Option<f64>,
    /// Bytes the producers wrote in the measured window (0 for consume
    /// workloads).
    pub written_bytes: u64,
    /// TLS workloads: the protocol version and cipher suite negotiated.
    pub tls_session: Option<String>,
    /// Transactional producers: what their transactions did.
    pub transactions: Option<TxnSeen>,
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

/// What transactional producers' transactions did while measuring.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct TxnSeen {
    /// Transactions committed (EndTxn answered), all producers together.
    pub committed: u64,
    pub committed_per_s: f64,
    /// EndTxn from its send to its answer, in microseconds.
    pub end_txn_latency_us: Latency,
    /// AddPartitionsToTxn and EndTxn asked again after a retriable answer
    /// (CONCURRENT_TRANSACTIONS while the last commit's markers are being
    /// written), and the time the producers waited before asking again,
    /// summed over producers, as a fraction of their time.
    pub retries: u64,
    pub retry_wait_fraction: f64,
    /// The producers' time spent waiting for EndTxn answers, as a fraction
    /// of their time (no produce is in flight meanwhile).
    pub end_txn_wait_fraction: f64,
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
        BenchCommand::Run { workload, out, shards, broker_count: brokers, broker_cpus } => {
            let cpus = broker_cpus.iter().map(|list| parse_cpus(list)).collect::<anyhow::Result<Vec<_>>>()?;
            let pin = brokers == 1 && cpus.is_empty();
            // One broker: it on core 0, the load on core 1 (as the standard
            // suite). A cluster shares the cores with the load, as the
            // replication suite does: the load generator is not pinned.
            let loadgen = if brokers == 1 { LoadSettings::default() } else { LoadSettings { cpus: Vec::new() } };
            let suite = Suite {
                name: workload.name.clone(),
                broker: BrokerSettings { shards, brokers, pin, cpus, ..Default::default() },
                loadgen,
                workloads: vec![*workload],
                ..Default::default()
            };
            (suite, out)
        }
    };
    suite.broker.check()?;
    for workload in &suite.workloads {
        workload.check(suite.broker.brokers)?;
    }
    if suite.has_apache_kafka() {
        // Before the limits are measured: a missing jar fails at once.
        suite.apache_kafka.check()?;
    }
    let mut suite = suite;
    if suite.has_tls() {
        // Beside the data directory, which each workload empties: one CA
        // and certificate for the whole run.
        let dir = suite.broker.data_dir.with_extension("tls");
        suite.broker.tls = Some(tls::TlsFiles::make(&dir, &suite.broker.ssl_cipher_suites)?);
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
        let mut result = runtime.block_on(run_workload(&suite, workload, target))?;
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
        eprintln!(
            "  cores used: broker {}, load generator {:.2}, whole machine {:.2} (stolen {:.2}); loopback {:.0} MB/s",
            cores_text(&result.broker_cores_each),
            result.loadgen_cores,
            result.machine_cores,
            result.steal_cores,
            result.loopback_mb_s
        );
        if let Some(isr) = &result.isr {
            eprintln!("  {}", isr.summary());
        }
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

/// Bytes available on the file system that holds `dir` (df), if known.
fn free_bytes(dir: &Path) -> Option<u64> {
    let out = std::process::Command::new("df").args(["-B1", "--output=avail"]).arg(dir).output().ok()?;
    String::from_utf8_lossy(&out.stdout).lines().last()?.trim().parse().ok()
}

/// How long a workload's deleted data may take to come back as free space.
const SPACE_WAIT: Duration = Duration::from_secs(120);

/// Waits until the file system has (nearly) the space it had before the
/// workload: with online discard (this machine mounts with `discard`)
/// blocks of deleted files may come back only once their discard
/// completes, and the next workload would run out of space.
fn wait_for_space(dir: &Path, before: Option<u64>) {
    const SLACK: u64 = 1 << 30;
    let Some(before) = before else { return };
    let started = Instant::now();
    loop {
        let free = free_bytes(dir).unwrap_or(u64::MAX);
        if free.saturating_add(SLACK) >= before {
            if started.elapsed() > Duration::from_secs(1) {
                eprintln!(
                    "  waited {:.1} s for the deleted data's space to come back",
                    started.elapsed().as_secs_f64()
                );
            }
            return;
        }
        if started.elapsed() > SPACE_WAIT {
            eprintln!(
                "  after {SPACE_WAIT:?}, {} MB free of the {} MB free before the workload; going on",
                free / 1_000_000,
                before / 1_000_000
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A core list: "0", "0,1", "0-3" or a mix.
fn parse_cpus(list: &str) -> anyhow::Result<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.split(',').map(str::trim).filter(|part| !part.is_empty()) {
        let parse = |n: &str| n.trim().parse::<usize>().with_context(|| format!("core list {list:?}"));
        match part.split_once('-') {
            Some((first, last)) => cpus.extend(parse(first)?..=parse(last)?),
            None => cpus.push(parse(part)?),
        }
    }
    if cpus.is_empty() {
        bail!("core list {list:?} is empty");
    }
    Ok(cpus)
}

/// Cores per broker, as "0.61" for one and "0.61+0.55+0.40 = 1.56" for
/// several.
pub(crate) fn cores_text(each: &[f64]) -> String {
    let parts: Vec<String> = each.iter().map(|cores| format!("{cores:.2}")).collect();
    if each.len() <= 1 {
        return parts.join("");
    }
    format!("{} = {:.2}", parts.join("+"), each.iter().sum::<f64>())
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

async fn connect(cluster: &Cluster) -> anyhow::Result<Client> {
    let config = ClientConfig {
        bootstrap: cluster.bootstrap(),
        client_id: "spate-bench".into(),
        frame_bytes_max: 128 << 20,
        ..Default::default()
    };
    Ok(Client::connect(config).await?)
}

async fn create_topic(client: &Client, workload: &Workload) -> anyhow::Result<String> {
    let topic = format!("bench-{}", workload.name);
    let mut configs = vec![("flush.ms".to_string(), workload.flush_ms()?), ("retention.ms".into(), "-1".into())];
    if let Some(min) = workload.min_insync_replicas {
        configs.push(("min.insync.replicas".into(), min.to_string()));
    }
    let replication_factor = i16::try_from(workload.replication_factor).context("replication_factor")?;
    Admin::new(client.clone())
        .create_topic(&topic, workload.partitions as i32, replication_factor, &configs)
        .await
        .with_context(|| format!("creating {topic}"))?;
    Ok(topic)
}

/// How long a new topic may take to have a leader and a full ISR for
/// every partition.
const TOPIC_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits until every partition of `topic` has a leader and all its
/// replicas in sync, so a workload starts from a healthy cluster.
async fn wait_until_in_sync(client: &Client, workload: &Workload, topic: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + TOPIC_READY_TIMEOUT;
    loop {
        let metadata = client.metadata(Some(&[topic.to_string()])).await;
        let ready = metadata.as_ref().ok().and_then(|m| m.topics.iter().find(|t| t.name == topic)).is_some_and(|t| {
            t.partitions.len() == workload.partitions
                && t.partitions.iter().all(|p| p.leader > 0 && p.isr.len() == workload.replication_factor)
        });
        if ready {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{topic}: no leader or full ISR for every partition within {TOPIC_READY_TIMEOUT:?}: {metadata:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How often the ISR watcher describes a replicated topic.
const ISR_SAMPLE: Duration = Duration::from_millis(500);

/// What the ISR of a replicated topic did during a workload (warm-up
/// included), from DescribeTopics every `ISR_SAMPLE`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct IsrSeen {
    pub replication_factor: usize,
    pub samples: u64,
    /// The smallest ISR any partition had at a sample.
    pub isr_min: usize,
    /// Times a partition's ISR was smaller than at its previous sample.
    pub shrinks_seen: u64,
    /// Leader and ISR changes: the growth of the partitions' epochs (the
    /// controller bumps one at every change), so changes between samples
    /// count too.
    pub partition_epoch_changes: i64,
    /// Leader changes: the growth of the leader epochs.
    pub leader_changes: i64,
    /// Each partition at the last sample (right after the measured window).
    pub end: Vec<PartitionEnd>,
    pub describe_errors: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PartitionEnd {
    pub partition: i32,
    pub leader: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    /// Log end minus high watermark: records not yet on every in-sync
    /// replica when sampled.
    pub unreplicated: i64,
}

impl IsrSeen {
    pub fn summary(&self) -> String {
        let end: Vec<String> = self
            .end
            .iter()
            .map(|p| format!("p{} leader {} isr {:?} of {:?}", p.partition, p.leader, p.isr, p.replicas))
            .collect();
        format!(
            "ISR (replication factor {}): smallest {} over {} samples, {} shrink(s) seen, {} leader/ISR change(s), {} leader change(s), {} describe error(s); at the end: {}",
            self.replication_factor,
            self.isr_min,
            self.samples,
            self.shrinks_seen,
            self.partition_epoch_changes,
            self.leader_changes,
            self.describe_errors,
            end.join("; ")
        )
    }
}

async fn watch_isr(client: Client, topic: String, replication_factor: usize, stop: Arc<AtomicBool>) -> IsrSeen {
    use std::collections::BTreeMap;
    let admin = Admin::new(client);
    let names = [topic];
    let mut seen = IsrSeen { replication_factor, isr_min: replication_factor, ..Default::default() };
    // Per partition: (partition epoch, leader epoch) at the first sample,
    // and the ISR size at the previous one.
    let mut first: BTreeMap<i32, (i32, i32)> = BTreeMap::new();
    let mut last_isr: BTreeMap<i32, usize> = BTreeMap::new();
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        match admin.describe_topics(Some(&names)).await {
            Ok(topics) => {
                let partitions = topics.into_iter().flat_map(|t| t.partitions).collect::<Vec<_>>();
                seen.samples += 1;
                (seen.partition_epoch_changes, seen.leader_changes) = (0, 0);
                seen.end.clear();
                for p in partitions {
                    seen.isr_min = seen.isr_min.min(p.isr.len());
                    if last_isr.insert(p.partition, p.isr.len()).is_some_and(|before| p.isr.len() < before) {
                        seen.shrinks_seen += 1;
                    }
                    let (partition_epoch, leader_epoch) =
                        *first.entry(p.partition).or_insert((p.partition_epoch, p.leader_epoch));
                    seen.partition_epoch_changes += i64::from(p.partition_epoch - partition_epoch);
                    seen.leader_changes += i64::from(p.leader_epoch - leader_epoch);
                    seen.end.push(PartitionEnd {
                        partition: p.partition,
                        leader: p.leader,
                        replicas: p.replicas,
                        isr: p.isr,
                        unreplicated: p.log_end_offset - p.high_watermark,
                    });
                }
            }
            Err(_) => seen.describe_errors += 1,
        }
        if stopping {
            return seen;
        }
        tokio::time::sleep(ISR_SAMPLE).await;
    }
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
        mode: workload.producer_mode,
        commit_interval: Duration::from_millis(workload.commit_interval_ms),
        retry_backoff: Duration::from_millis(workload.txn_retry_backoff_ms),
        transaction_version: workload.transaction_version,
    })
}

/// Runs `produce` for warm-up plus duration; measures the duration only.
/// With more than one replica, the ISR is watched all along.
async fn timed_produce(
    broker_pids: &[u32],
    driver: &Driver,
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
    let watching = match driver {
        Driver::Native(client) if workload.replication_factor > 1 => {
            Some(tokio::spawn(watch_isr(client.clone(), load.topic.clone(), workload.replication_factor, stop.clone())))
        }
        _ => None,
    };
    let producing = match driver {
        Driver::Native(client) => {
            let producing = load::produce(client.clone(), load, counters.clone(), measuring.clone(), stop.clone());
            tokio::spawn(async move { producing.await.map(|latency| (latency, None)) })
        }
        Driver::Kafka(endpoint) if load.mode != ProducerMode::Plain => {
            let lanes = sequenced_lanes(endpoint, &load, load.producers, None)?;
            let producing = kafka_txn::run_lanes(lanes, counters.clone(), measuring.clone(), stop.clone());
            let transactional = load.mode == ProducerMode::Transactional;
            tokio::spawn(async move {
                let outcome = producing.await?;
                Ok((outcome.latency.clone(), transactional.then_some(outcome)))
            })
        }
        Driver::Kafka(endpoint) => {
            let producing =
                kafka_load::produce(endpoint.clone(), load, counters.clone(), measuring.clone(), stop.clone());
            tokio::spawn(async move { producing.await.map(|latency| (latency, None)) })
        }
    };
    let consuming = consume.map(|consume| driver.consume(consume, consumed.clone(), measuring.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_secs_f64(workload.warmup_s)).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let cpu = load::CpuWindow::start(broker_pids);
    tokio::time::sleep(Duration::from_secs_f64(workload.duration_s)).await;
    measuring.store(false, Ordering::Relaxed);
    let usage = cpu.usage();
    let seconds = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let (produce_latency, transactions) = producing.await.context("producers")??;
    let transactions = transactions.map(|outcome| txn_seen(&outcome, seconds, workload.producers));
    let written_bytes = counters.bytes.load(Ordering::Relaxed);
    let (latency, produce_latency, counted) = match consuming {
        Some(consuming) => (consuming.await?, Some(produce_latency), consumed),
        None => (produce_latency, None, counters),
    };
    let series_mb_s = sampler.await.context("sampler")?;
    let isr = match watching {
        Some(watching) => Some(watching.await.context("ISR watcher")?),
        None => None,
    };
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
        usage,
        isr,
        transactions,
    })
}

/// What the transactional producers' outcome says per second of the
/// measured window.
fn txn_seen(outcome: &kafka_txn::SequencedOutcome, seconds: f64, producers: usize) -> TxnSeen {
    TxnSeen {
        committed: outcome.transactions,
        committed_per_s: outcome.transactions as f64 / seconds.max(1e-9),
        end_txn_latency_us: summarize(&outcome.end_txn_latency).0,
        retries: outcome.retries,
        retry_wait_fraction: outcome.retry_wait.as_secs_f64() / (seconds * producers as f64).max(1e-9),
        end_txn_wait_fraction: outcome.end_txn_latency.mean() * outcome.end_txn_latency.len() as f64
            / 1e6
            / (seconds * producers as f64).max(1e-9),
    }
}

/// One idempotent or transactional producer lane per producer (producer
/// `p` on partition `p % partitions`), or, to fill a topic, per partition
/// with `batches` spread over them.
fn sequenced_lanes(
    endpoint: &kafka_load::Endpoint,
    load: &ProduceLoad,
    lanes: usize,
    batches: Option<usize>,
) -> anyhow::Result<Vec<kafka_txn::SequencedLane>> {
    let plain = load::build_batch_for(load.batch_records, load.message_bytes, load::now_ns(), load.compression);
    let template = load::compress_batch(&plain, load.compression);
    Ok((0..lanes)
        .map(|lane| kafka_txn::SequencedLane {
            endpoint: endpoint.clone(),
            topic: load.topic.clone(),
            partition: (lane % load.partitions) as i32,
            acks: kafka_load::acks(load.acks),
            in_flight: load.in_flight,
            records: load.batch_records,
            template: template.clone(),
            transactional_id: (load.mode == ProducerMode::Transactional)
                .then(|| kafka_txn::transactional_id(&load.topic, lane)),
            commit_interval: load.commit_interval,
            batches_max: batches.map(|b| (b / lanes + usize::from(lane < b % lanes)) as u64),
            retry_backoff: load.retry_backoff,
            transaction_version: load.transaction_version,
        })
        .collect())
}

/// Writes `bytes` into the topic as fast as the broker takes them.
async fn fill(driver: &Driver, workload: &Workload, topic: &str) -> anyhow::Result<Vec<i64>> {
    let codec = workload.codec()?;
    let plain = load::build_batch_for(workload.batch_records, workload.message_bytes, load::now_ns(), codec);
    let template = load::compress_batch(&plain, codec);
    let batches = (workload.data_bytes as usize).div_ceil(template.len()).max(workload.partitions);
    let client = match driver {
        Driver::Native(client) => client,
        Driver::Kafka(endpoint) if workload.producer_mode != ProducerMode::Plain => {
            // Written as the workload's producers write: a transactional
            // fill commits every commit_interval_ms, so a read_committed
            // consumer meets markers as often as it would behind them.
            // With the workload's acks (all by default): clients with
            // idempotence or transactions must ask for all.
            let load = produce_load(workload, topic, None, false)?;
            let lanes = sequenced_lanes(endpoint, &load, workload.partitions, Some(batches))?;
            let (counters, measuring, stop) =
                (Arc::new(Counters::default()), Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
            return Ok(kafka_txn::run_lanes(lanes, counters, measuring, stop).await?.end_offsets);
        }
        Driver::Kafka(endpoint) => {
            let (partitions, in_flight, records) = (workload.partitions, workload.in_flight, workload.batch_records);
            return kafka_load::fill(endpoint, topic, partitions, in_flight, template, records, batches).await;
        }
    };
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
    broker_pids: &[u32],
    driver: &Driver,
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
        isolation_level: workload.isolation.level(),
    };
    let started = Instant::now();
    let cpu = load::CpuWindow::start(broker_pids);
    let latency = driver.consume(consume, counters.clone(), measuring.clone(), stop.clone()).await?;
    let usage = cpu.usage();
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
        usage,
        isr: None,
        transactions: None,
    })
}

/// How the load generator reaches the target.
#[derive(Clone)]
enum Driver {
    Native(Client),
    /// A Kafka listener (Spate's or Apache Kafka's, plaintext or TLS).
    Kafka(kafka_load::Endpoint),
}

impl Driver {
    /// Consumers over this driver's protocol, as a task.
    fn consume(
        &self,
        consume: ConsumeLoad,
        counters: Arc<Counters>,
        measuring: Arc<AtomicBool>,
        stop: Arc<AtomicBool>,
    ) -> impl std::future::Future<Output = anyhow::Result<hdrhistogram::Histogram<u64>>> + use<> {
        let task = match self {
            Driver::Native(client) => tokio::spawn(load::consume(client.clone(), consume, counters, measuring, stop)),
            Driver::Kafka(endpoint) => {
                tokio::spawn(kafka_load::consume(endpoint.clone(), consume, counters, measuring, stop))
            }
        };
        async move { task.await.context("consumers")? }
    }
}

/// What a workload runs against.
enum Brokers {
    Spate(Cluster),
    ApacheKafka(KafkaProcess),
}

impl Brokers {
    fn pids(&self) -> Vec<u32> {
        match self {
            Brokers::Spate(cluster) => cluster.pids(),
            Brokers::ApacheKafka(kafka) => vec![kafka.pid()],
        }
    }

    fn stop(self) -> anyhow::Result<()> {
        match self {
            Brokers::Spate(cluster) => cluster.stop(),
            Brokers::ApacheKafka(kafka) => kafka.stop(),
        }
    }

    fn restart(self) -> anyhow::Result<Self> {
        Ok(match self {
            Brokers::Spate(cluster) => Brokers::Spate(cluster.restart()?),
            Brokers::ApacheKafka(kafka) => Brokers::ApacheKafka(kafka.restart()?),
        })
    }

    /// The driver for `workload`, once `topic` has a leader for every
    /// partition (and, in a cluster, a full ISR) where it connects.
    async fn driver(&self, workload: &Workload, topic: &str) -> anyhow::Result<Driver> {
        let partitions = workload.partitions as i32;
        match (self, workload.protocol) {
            (Brokers::Spate(cluster), Protocol::Native) => {
                let client = connect(cluster).await?;
                if cluster.brokers.len() > 1 {
                    wait_until_in_sync(&client, workload, topic).await?;
                }
                Ok(Driver::Native(client))
            }
            (Brokers::Spate(cluster), Protocol::Kafka) => {
                let endpoint = if workload.tls {
                    let files = cluster.tls().context("a TLS workload on brokers without an SSL listener")?;
                    kafka_load::Endpoint { addr: cluster.brokers[0].ssl_addr()?, tls: Some(files.connector()?) }
                } else {
                    kafka_load::Endpoint::plain(cluster.brokers[0].kafka_addr()?)
                };
                kafka_load::wait_for_leaders(&endpoint, topic, partitions).await?;
                Ok(Driver::Kafka(endpoint))
            }
            (Brokers::ApacheKafka(kafka), _) => {
                let endpoint = kafka_load::Endpoint::plain(kafka.addr());
                kafka_load::wait_for_leaders(&endpoint, topic, partitions).await?;
                Ok(Driver::Kafka(endpoint))
            }
        }
    }

    /// Creates the workload's topic: on Spate with its admin API (the
    /// durability is a topic config there), on Apache Kafka with
    /// CreateTopics, taking batches of up to `BATCH_BYTES_MAX`.
    async fn create_topic(&self, workload: &Workload) -> anyhow::Result<String> {
        match self {
            Brokers::Spate(cluster) => create_topic(&connect(cluster).await?, workload).await,
            Brokers::ApacheKafka(kafka) => {
                let topic = format!("bench-{}", workload.name);
                let configs = [
                    ("retention.ms".to_string(), "-1".to_string()),
                    ("max.message.bytes".into(), kafka_load::BATCH_BYTES_MAX.to_string()),
                ];
                let endpoint = kafka_load::Endpoint::plain(kafka.addr());
                kafka_load::create_topic(&endpoint, &topic, workload.partitions as i32, &configs)
                    .await
                    .with_context(|| format!("creating {topic} on Apache Kafka"))?;
                Ok(topic)
            }
        }
    }
}

async fn run_workload(suite: &Suite, workload: &Workload, target_mb_s: Option<f64>) -> anyhow::Result<WorkloadResult> {
    // A round trip is one producer with one request in flight, whatever
    // the suite says; the report shows what ran.
    let mut effective = workload.clone();
    if effective.kind == Kind::RoundTrip {
        (effective.producers, effective.in_flight) = (1, 1);
    }
    let workload = &effective;
    let data_dir = match workload.target {
        Target::Spate => &suite.broker.data_dir,
        Target::ApacheKafka => &suite.apache_kafka.data_dir,
    };
    let file_system = data_dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let free_before = free_bytes(file_system);
    if let Some(free) = free_before {
        eprintln!("  {} GB free on {}", free / 1_000_000_000, file_system.display());
    }
    let mut brokers = match workload.target {
        Target::Spate => Brokers::Spate(Cluster::start_fresh(&suite.broker)?),
        Target::ApacheKafka => Brokers::ApacheKafka(KafkaProcess::start_fresh(&suite.apache_kafka)?),
    };
    let topic = brokers.create_topic(workload).await?;
    let driver = brokers.driver(workload, &topic).await?;
    let tls_session = match &driver {
        Driver::Kafka(endpoint) => endpoint.tls_session().await?,
        Driver::Native(_) => None,
    };
    if let Some(session) = &tls_session {
        eprintln!("  over TLS: {session}");
    }
    let pids = brokers.pids();
    let (measured, latency_of) = match workload.kind {
        Kind::Produce => {
            let load = produce_load(workload, &topic, target_mb_s, false)?;
            (timed_produce(&pids, &driver, load, workload, None).await?, "produce request, send slot to ack")
        }
        Kind::RoundTrip => {
            let load = produce_load(workload, &topic, target_mb_s, false)?;
            (timed_produce(&pids, &driver, load, workload, None).await?, "produce request round trip")
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
                isolation_level: workload.isolation.level(),
            };
            (timed_produce(&pids, &driver, load, workload, Some(consume)).await?, "send slot to consumption, per batch")
        }
        Kind::ConsumeTail => {
            let ends = fill(&driver, workload, &topic).await?;
            (timed_consume(&pids, &driver, workload, &topic, ends).await?, "fetch request round trip")
        }
        Kind::ConsumeDisk => {
            let ends = fill(&driver, workload, &topic).await?;
            drop(driver);
            brokers = brokers.restart()?;
            let driver = brokers.driver(workload, &topic).await?;
            (timed_consume(&brokers.pids(), &driver, workload, &topic, ends).await?, "fetch request round trip")
        }
    };
    brokers.stop()?;
    // The data goes now, not at the next workload's start: a workload at
    // 2 GB/s writes ~36 GB (three times its bytes with three replicas),
    // and the paired raw write that follows needs room too.
    std::fs::remove_dir_all(data_dir).with_context(|| format!("removing {}", data_dir.display()))?;
    wait_for_space(file_system, free_before);
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
        broker_cores: measured.usage.broker_cores.iter().sum(),
        loadgen_cores: measured.usage.loadgen_cores,
        broker_cores_each: measured.usage.broker_cores,
        loopback_mb_s: measured.usage.loopback_mb_s,
        machine_cores: measured.usage.machine_cores,
        steal_cores: measured.usage.steal_cores,
        isr: measured.isr,
        distribution_us,
        target_rate_mb_s: target_mb_s,
        written_bytes: measured.written_bytes,
        tls_session,
        transactions: measured.transactions,
        paired_disk_bytes: None,
        paired_disk_write_mb_s: None,
        paired_disk_write_sync_mb_s: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn suite(path: &str) -> Suite {
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
        toml::from_str(&std::fs::read_to_string(&file).expect("suite file")).expect("a valid suite")
    }

    #[test]
    fn every_suite_file_parses_and_passes_its_checks() {
        let paths = [
            "suites/standard.toml",
            "suites/replication.toml",
            "suites/kafka.toml",
            "suites/tls.toml",
            "suites/tls-aes128.toml",
            "suites/transactions.toml",
        ];
        for path in paths {
            let suite = suite(path);
            suite.broker.check().expect(path);
            for workload in &suite.workloads {
                workload.check(suite.broker.brokers).expect(path);
            }
        }
        let replication = suite("suites/replication.toml");
        assert_eq!(replication.broker.brokers, 3);
        let factors: Vec<usize> = replication.workloads.iter().map(|w| w.replication_factor).collect();
        assert!(factors.contains(&1) && factors.contains(&3), "{factors:?}");
    }

    #[test]
    fn one_broker_is_the_default_and_replication_defaults_to_one_replica() {
        let standard = suite("suites/standard.toml");
        assert_eq!((standard.broker.brokers, standard.broker.cpus.len()), (1, 0));
        assert_eq!(standard.broker.placement(), "pinned to [0]");
        assert!(standard.workloads.iter().all(|w| w.replication_factor == 1 && w.min_insync_replicas.is_none()));
    }

    #[test]
    fn a_cluster_needs_a_placement_and_a_replica_per_broker_at_most() {
        let pinned = BrokerSettings { brokers: 3, ..Default::default() };
        assert!(pinned.check().is_err(), "three brokers all pinned to core 0");
        let unpinned = BrokerSettings { brokers: 3, pin: false, ..Default::default() };
        unpinned.check().expect("not pinned");
        assert_eq!(unpinned.placement(), "not pinned");
        let placed = BrokerSettings { brokers: 3, cpus: vec![vec![0], vec![1], vec![0, 1]], ..Default::default() };
        placed.check().expect("placed");
        assert!(
            placed.placement().starts_with("broker 1 on cores [0], broker 2 on cores [1], broker 3 on cores [0, 1]")
        );
        let short = BrokerSettings { brokers: 3, cpus: vec![vec![0]], ..Default::default() };
        assert!(short.check().is_err(), "one core set for three brokers");
        let workload = Workload { replication_factor: 3, ..Default::default() };
        assert!(workload.check(1).is_err());
        workload.check(3).expect("three replicas on three brokers");
        let too_many = Workload { replication_factor: 3, min_insync_replicas: Some(4), ..Default::default() };
        assert!(too_many.check(3).is_err());
    }

    /// Each group of the Kafka suite runs the same workload three ways:
    /// Spate native, Spate over Kafka's protocol and Apache Kafka, and
    /// every Kafka-path workload has a native one with its durability.
    #[test]
    fn the_kafka_suite_runs_each_group_three_ways() {
        let kafka = suite("suites/kafka.toml");
        assert!(kafka.has_apache_kafka());
        assert_eq!((kafka.apache_kafka.cpus.as_slice(), kafka.apache_kafka.heap_mib), (&[0][..], 1024));
        let groups: std::collections::BTreeSet<&str> = kafka.workloads.iter().map(|w| w.compare.as_str()).collect();
        assert_eq!(groups.len(), 4, "{groups:?}");
        for group in groups {
            let members: Vec<&Workload> = kafka.workloads.iter().filter(|w| w.compare == group).collect();
            let labels: std::collections::BTreeSet<&str> = members.iter().map(|w| w.target_label()).collect();
            assert_eq!(labels.len(), 3, "{group}: {labels:?}");
            for w in members.iter().filter(|w| w.protocol == Protocol::Kafka && w.target == Target::Spate) {
                let native = members.iter().find(|n| n.protocol == Protocol::Native && n.durability == w.durability);
                let native = native.unwrap_or_else(|| panic!("{}: no native workload beside it", w.name));
                let (a, b) = (native, w);
                assert_eq!(
                    (a.kind, a.message_bytes, a.batch_records, a.producers, a.consumers, a.partitions, a.in_flight),
                    (b.kind, b.message_bytes, b.batch_records, b.producers, b.consumers, b.partitions, b.in_flight),
                    "{}: the same workload as {}",
                    b.name,
                    a.name
                );
            }
        }
    }

    /// The TLS suite runs each workload over both listeners with the same
    /// parameters (the report pairs them by those), produce under both
    /// durabilities and both consumes; no other suite asks for TLS.
    #[test]
    fn the_tls_suite_runs_every_workload_over_plaintext_and_tls() {
        let tls = suite("suites/tls.toml");
        assert!(tls.has_tls());
        let (secure, plain): (Vec<&Workload>, Vec<&Workload>) = tls.workloads.iter().partition(|w| w.tls);
        assert_eq!(secure.len(), plain.len());
        for w in &secure {
            let twin = Workload { tls: false, name: w.name.replace("-tls", "-plaintext"), ..(*w).clone() };
            let found = plain.iter().find(|p| p.name == twin.name).unwrap_or_else(|| panic!("{}: no twin", w.name));
            assert_eq!(toml::to_string(found).expect("toml"), toml::to_string(&twin).expect("toml"), "{}", w.name);
        }
        let kinds: Vec<(Kind, &str)> = secure.iter().map(|w| (w.kind, w.durability.as_str())).collect();
        for expected in [(Kind::Produce, "never"), (Kind::Produce, "always"), (Kind::ConsumeTail, "never")] {
            assert!(kinds.contains(&expected), "{expected:?} in {kinds:?}");
        }
        assert!(kinds.iter().any(|(kind, _)| *kind == Kind::ConsumeDisk));
        for path in ["suites/standard.toml", "suites/replication.toml", "suites/kafka.toml"] {
            assert!(!suite(path).has_tls(), "{path}");
        }
    }

    /// Issue 17's suite: one broker, Kafka's protocol; transactional
    /// produce beside idempotent produce (commit every 100 ms) under both
    /// durabilities, read_committed beside read_uncommitted consumers over
    /// transactionally written data, from the tail and from disk.
    #[test]
    fn the_transactions_suite_pairs_each_workload_with_its_base() {
        let txn = suite("suites/transactions.toml");
        assert_eq!(txn.broker.brokers, 1);
        assert!(txn.workloads.iter().all(|w| w.protocol == Protocol::Kafka && w.target == Target::Spate));
        let transactional: Vec<&Workload> = txn
            .workloads
            .iter()
            .filter(|w| w.kind == Kind::Produce && w.producer_mode == ProducerMode::Transactional)
            .filter(|w| w.txn_retry_backoff_ms == kafka_txn::RETRY_BACKOFF_MS_DEFAULT)
            .collect();
        let v2 = transactional.iter().filter(|w| w.transaction_version == kafka_txn::TRANSACTION_VERSION_DEFAULT);
        let durabilities: Vec<&str> = v2.map(|w| w.durability.as_str()).collect();
        assert_eq!(durabilities, ["never", "always"]);
        let v1 = txn.workloads.iter().filter(|w| w.producer_mode == ProducerMode::Transactional);
        let v1: Vec<&str> = v1.filter(|w| w.transaction_version == 1).map(|w| w.name.as_str()).collect();
        assert_eq!(v1, ["produce-never-transactional-v1", "produce-never-transactional-v1-retry-2ms"]);
        let sooner = txn.workloads.iter().filter(|w| w.txn_retry_backoff_ms < kafka_txn::RETRY_BACKOFF_MS_DEFAULT);
        assert_eq!(sooner.count(), 1, "one row retries sooner than Java's client, to show what the backoff costs");
        for w in &transactional {
            assert_eq!(w.commit_interval_ms, 100, "{}", w.name);
            let base = Workload {
                name: w.name.replace("-transactional", "-idempotent").replace("-v1", ""),
                txn_retry_backoff_ms: kafka_txn::RETRY_BACKOFF_MS_DEFAULT,
                transaction_version: kafka_txn::TRANSACTION_VERSION_DEFAULT,
                producer_mode: ProducerMode::Idempotent,
                ..(*w).clone()
            };
            let found = txn.workloads.iter().find(|b| b.name == base.name).expect("an idempotent twin");
            assert_eq!(toml::to_string(found).expect("toml"), toml::to_string(&base).expect("toml"), "{}", w.name);
        }
        let committed: Vec<&Workload> =
            txn.workloads.iter().filter(|w| w.isolation == Isolation::ReadCommitted).collect();
        let kinds: Vec<Kind> = committed.iter().map(|w| w.kind).collect();
        assert_eq!(kinds, [Kind::ConsumeTail, Kind::ConsumeDisk]);
        for w in &committed {
            assert_eq!(w.producer_mode, ProducerMode::Transactional, "{}: over transactional data", w.name);
            let base = Workload {
                name: w.name.replace("-read-committed", "-read-uncommitted"),
                isolation: Isolation::ReadUncommitted,
                ..(*w).clone()
            };
            let found = txn.workloads.iter().find(|b| b.name == base.name).expect("a read_uncommitted twin");
            assert_eq!(toml::to_string(found).expect("toml"), toml::to_string(&base).expect("toml"), "{}", w.name);
        }
    }

    /// Idempotent and transactional producers and read_committed consumers
    /// exist on the Kafka path only; the producers go as fast as
    /// acknowledged and commit within the transaction timeout.
    #[test]
    fn transactions_are_refused_where_the_load_generator_cannot_run_them() {
        let kafka = |w: Workload| Workload { protocol: Protocol::Kafka, ..w };
        let txn = |w: Workload| Workload { producer_mode: ProducerMode::Transactional, ..w };
        kafka(txn(Workload::default())).check(1).expect("transactional produce over Kafka's protocol");
        assert!(txn(Workload::default()).check(1).is_err(), "not natively");
        let committed = Workload { isolation: Isolation::ReadCommitted, kind: Kind::ConsumeTail, ..Default::default() };
        assert!(committed.clone().check(1).is_err(), "read_committed natively");
        kafka(committed).check(1).expect("read_committed over Kafka's protocol");
        let rated = kafka(txn(Workload { rate_mb_s: Some(100.0), ..Default::default() }));
        assert!(rated.check(1).is_err(), "no target rate");
        assert!(kafka(txn(Workload { kind: Kind::EndToEnd, ..Default::default() })).check(1).is_err());
        for interval in [0, kafka_txn::COMMIT_INTERVAL_MS_MAX + 1] {
            let w = kafka(txn(Workload { commit_interval_ms: interval, ..Default::default() }));
            assert!(w.check(1).is_err(), "commit_interval_ms {interval}");
        }
        let no_backoff = kafka(txn(Workload { txn_retry_backoff_ms: 0, ..Default::default() }));
        assert!(no_backoff.check(1).is_err(), "a retry without a wait would spin");
        let idempotent = kafka(Workload { producer_mode: ProducerMode::Idempotent, ..Default::default() });
        idempotent.check(1).expect("idempotent produce");
        assert_eq!((Isolation::ReadUncommitted.level(), Isolation::ReadCommitted.level()), (0, 1));
    }

    #[test]
    fn tls_is_for_spates_kafka_listener() {
        let tls = |w: Workload| Workload { tls: true, ..w };
        tls(Workload { protocol: Protocol::Kafka, ..Default::default() }).check(1).expect("Kafka over TLS");
        assert!(tls(Workload::default()).check(1).is_err(), "the native protocol has no TLS here");
        let apache = Workload {
            target: Target::ApacheKafka,
            protocol: Protocol::Kafka,
            durability: "never".into(),
            ..Default::default()
        };
        assert!(tls(apache).check(1).is_err(), "Apache Kafka runs without an SSL listener");
        let label = tls(Workload { protocol: Protocol::Kafka, ..Default::default() }).target_label();
        assert_eq!(label, "Spate Kafka protocol over TLS");
    }

    #[test]
    fn the_kafka_path_refuses_what_it_cannot_run() {
        let kafka = |w: Workload| Workload { protocol: Protocol::Kafka, ..w };
        kafka(Workload::default()).check(1).expect("produce over Kafka's protocol");
        assert!(kafka(Workload { acks: "0".into(), ..Default::default() }).check(1).is_err());
        assert!(kafka(Workload { kind: Kind::RoundTrip, ..Default::default() }).check(1).is_err());
        assert!(kafka(Workload::default()).check(3).is_err(), "a cluster needs leader routing");
        let apache = |w: Workload| Workload { target: Target::ApacheKafka, protocol: Protocol::Kafka, ..w };
        apache(Workload { durability: "never".into(), ..Default::default() }).check(1).expect("Kafka's defaults");
        assert!(apache(Workload { durability: "always".into(), ..Default::default() }).check(1).is_err());
        let native = Workload { target: Target::ApacheKafka, durability: "never".into(), ..Default::default() };
        assert!(native.check(1).is_err(), "Apache Kafka speaks only Kafka");
    }

    #[test]
    fn core_lists_and_per_broker_cores_read_as_written() {
        assert_eq!(parse_cpus("0").expect("one"), vec![0]);
        assert_eq!(parse_cpus("0,1").expect("two"), vec![0, 1]);
        assert_eq!(parse_cpus("0-2,5").expect("range"), vec![0, 1, 2, 5]);
        assert!(parse_cpus("").is_err() && parse_cpus("a").is_err());
        assert_eq!(cores_text(&[0.5]), "0.50");
        assert_eq!(cores_text(&[0.5, 0.25, 0.25]), "0.50+0.25+0.25 = 1.00");
    }
}
