//! The load generator: producer and consumer tasks on a tokio runtime,
//! sending whole pre-built batches (as Iggy's and Kafka's perf tools do),
//! recording per-request latency in hdrhistograms and throughput per second.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use spate_client::{Acks, Client, TopicPartition};
use spate_format::batch::{self, BatchBuilder, Compression};
use spate_format::limits::DECOMPRESSED_BYTES_MAX;

/// Latencies are recorded in microseconds, up to an hour.
pub const LATENCY_MAX_US: u64 = 3_600_000_000;

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("valid histogram bounds")
}

/// Counters every task adds to; the reporter samples them each second.
#[derive(Debug, Default)]
pub struct Counters {
    pub bytes: AtomicU64,
    pub records: AtomicU64,
    pub errors: AtomicU64,
    /// The first error seen, for the report.
    pub first_error: std::sync::Mutex<Option<String>>,
}

impl Counters {
    pub fn error(&self, error: &dyn std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if first.is_none() {
            *first = Some(error.to_string());
        }
    }

    pub fn add(&self, bytes: usize, records: usize) {
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.records.fetch_add(records as u64, Ordering::Relaxed);
    }
}

/// CPU seconds used so far by a process (utime + stime from /proc).
pub fn cpu_seconds(pid: Option<u32>) -> f64 {
    let path = pid.map_or("/proc/self/stat".to_string(), |pid| format!("/proc/{pid}/stat"));
    let Ok(stat) = std::fs::read_to_string(path) else { return 0.0 };
    // Fields after the command name (which may hold spaces) end with ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12
    // after the state field that follows ')'.
    (ticks(11) + ticks(12)) / clock_ticks_per_second()
}

fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Bytes received on the loopback interface so far (/proc/net/dev; every
/// byte sent over loopback is received once on `lo`).
pub fn loopback_bytes() -> u64 {
    let Ok(dev) = std::fs::read_to_string("/proc/net/dev") else { return 0 };
    dev.lines()
        .find_map(|line| line.trim_start().strip_prefix("lo:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|rx| rx.parse().ok())
        .unwrap_or(0)
}

/// The whole machine's CPU time so far, in seconds (the first line of
/// /proc/stat): (busy: user, nice, system, irq, softirq; steal: time the
/// hypervisor gave to others).
pub fn machine_cpu_seconds() -> (f64, f64) {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else { return (0.0, 0.0) };
    let Some(line) = stat.lines().find(|line| line.starts_with("cpu ")) else { return (0.0, 0.0) };
    let fields: Vec<f64> = line.split_whitespace().skip(1).map(|f| f.parse().unwrap_or(0.0)).collect();
    let field = |i: usize| fields.get(i).copied().unwrap_or(0.0);
    // user nice system idle iowait irq softirq steal
    let busy = field(0) + field(1) + field(2) + field(5) + field(6);
    (busy / clock_ticks_per_second(), field(7) / clock_ticks_per_second())
}

/// CPU used by each broker and by this load generator over a window, in
/// cores (CPU seconds per wall second), the whole machine's, and the
/// loopback traffic.
#[derive(Debug, Clone)]
pub struct CpuWindow {
    broker_pids: Vec<u32>,
    broker_s: Vec<f64>,
    loadgen_s: f64,
    machine_s: (f64, f64),
    loopback_bytes: u64,
    at: Instant,
}

/// What a `CpuWindow` saw.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    /// Per broker, in the order of the pids given.
    pub broker_cores: Vec<f64>,
    pub loadgen_cores: f64,
    /// The whole machine's busy cores (every process and the kernel's own
    /// threads and interrupts) and the cores stolen by the hypervisor.
    pub machine_cores: f64,
    pub steal_cores: f64,
    /// Bytes per second over loopback (all traffic on the machine's `lo`).
    pub loopback_mb_s: f64,
}

impl CpuWindow {
    pub fn start(broker_pids: &[u32]) -> Self {
        CpuWindow {
            broker_pids: broker_pids.to_vec(),
            broker_s: broker_pids.iter().map(|&pid| cpu_seconds(Some(pid))).collect(),
            loadgen_s: cpu_seconds(None),
            machine_s: machine_cpu_seconds(),
            loopback_bytes: loopback_bytes(),
            at: Instant::now(),
        }
    }

    /// What was used since `start`.
    pub fn usage(&self) -> Usage {
        let wall = self.at.elapsed().as_secs_f64().max(1e-9);
        let machine = machine_cpu_seconds();
        Usage {
            broker_cores: self
                .broker_pids
                .iter()
                .zip(&self.broker_s)
                .map(|(&pid, &before)| (cpu_seconds(Some(pid)) - before) / wall)
                .collect(),
            loadgen_cores: (cpu_seconds(None) - self.loadgen_s) / wall,
            machine_cores: (machine.0 - self.machine_s.0) / wall,
            steal_cores: (machine.1 - self.machine_s.1) / wall,
            loopback_mb_s: loopback_bytes().saturating_sub(self.loopback_bytes) as f64 / 1e6 / wall,
        }
    }
}

/// What one timed phase measured.
#[derive(Debug)]
pub struct Measured {
    pub bytes: u64,
    /// Bytes the producers had acknowledged in the measured window (0 when
    /// only consuming): what the paired raw write writes.
    pub written_bytes: u64,
    pub records: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub seconds: f64,
    pub latency: Histogram<u64>,
    /// End to end: the producers' own request latency in the same run.
    pub produce_latency: Option<Histogram<u64>>,
    /// (second since the start of the measured window, MB/s) per second.
    pub series_mb_s: Vec<f64>,
    /// Cores used over the measured window by each broker and the load
    /// generator, and loopback traffic.
    pub usage: Usage,
    /// Replicated topics: what the ISR did.
    pub isr: Option<super::IsrSeen>,
    /// Transactional producers: what their transactions did.
    pub transactions: Option<super::TxnSeen>,
}

impl Measured {
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds.max(1e-9)
    }
    pub fn records_per_s(&self) -> f64 {
        self.records as f64 / self.seconds.max(1e-9)
    }
}

pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// A batch of `records` records of `message_bytes` each; the first 8 bytes
/// of the first record's value carry `stamp_ns` (for end-to-end latency).
pub fn build_batch(records: usize, message_bytes: usize, stamp_ns: u64) -> Bytes {
    let timestamp_ms = (stamp_ns / 1_000_000) as i64;
    let mut value = vec![0x5au8; message_bytes.max(8)];
    value[..8].copy_from_slice(&stamp_ns.to_be_bytes());
    let mut builder = BatchBuilder::new(timestamp_ms);
    for _ in 0..records {
        builder.push(timestamp_ms, None, Some(&value[..message_bytes.max(8)]), &[]);
    }
    builder.build().freeze()
}

/// An uncompressed batch like `build_batch`'s whose values are text that
/// compresses as event data does (a few times, not a thousand), for
/// workloads with a codec; `None` gives `build_batch`'s batch.
pub fn build_batch_for(records: usize, message_bytes: usize, stamp_ns: u64, codec: Compression) -> Bytes {
    if codec == Compression::None {
        return build_batch(records, message_bytes, stamp_ns);
    }
    let timestamp_ms = (stamp_ns / 1_000_000) as i64;
    let mut builder = BatchBuilder::new(timestamp_ms);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..records {
        let mut value = stamp_ns.to_be_bytes().to_vec();
        while value.len() < message_bytes.max(8) {
            // xorshift: varied numbers inside a repeated shape.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let event = format!(
                "{{\"user\":\"user-{}\",\"action\":\"{}\",\"score\":{}}}",
                seed % 10_000,
                ["click", "view", "buy"][(seed >> 20) as usize % 3],
                (seed >> 32) % 1_000_000
            );
            value.extend_from_slice(event.as_bytes());
        }
        value.truncate(message_bytes.max(8));
        builder.push(timestamp_ms, None, Some(&value), &[]);
    }
    builder.build().freeze()
}

/// The batch `plain` (uncompressed) with its records compressed by
/// `codec`, as a producer would send it.
pub fn compress_batch(plain: &Bytes, codec: Compression) -> Bytes {
    if codec == Compression::None {
        return plain.clone();
    }
    let compressed = spate_format::compression::compress(codec, &plain[batch::BATCH_HEADER_BYTES..]);
    let mut bytes = BytesMut::with_capacity(batch::BATCH_HEADER_BYTES + compressed.len());
    bytes.extend_from_slice(&plain[..batch::BATCH_HEADER_BYTES]);
    bytes.extend_from_slice(&compressed);
    // batch_length (bytes 8..12) counts what follows it; the codec is
    // attribute bits 0-2 (bytes 21..23); both under or beside the CRC.
    let batch_length = i32::try_from(bytes.len() - batch::BATCH_OVERHEAD_BYTES).unwrap_or(i32::MAX);
    bytes[8..12].copy_from_slice(&batch_length.to_be_bytes());
    let attributes = batch::Attributes(i16::from_be_bytes([bytes[21], bytes[22]])).with_compression(codec);
    bytes[21..23].copy_from_slice(&attributes.0.to_be_bytes());
    let _ = batch::write_crc(&mut bytes);
    bytes.freeze()
}

/// How many times smaller a workload's batches are on the wire than
/// uncompressed (1 for none).
pub fn compression_ratio(records: usize, message_bytes: usize, codec: Compression) -> f64 {
    let plain = build_batch_for(records, message_bytes, 0, codec);
    plain.len() as f64 / compress_batch(&plain, codec).len() as f64
}

/// Rewrites the stamp of a batch built by `build_batch` (first record's
/// value) and its CRC, without rebuilding it.
pub fn restamp(template: &Bytes, stamp_ns: u64) -> Bytes {
    let mut bytes = BytesMut::from(&template[..]);
    if let Some(position) = first_value_position(&bytes) {
        bytes[position..position + 8].copy_from_slice(&stamp_ns.to_be_bytes());
        let _ = batch::write_crc(&mut bytes);
    }
    bytes.freeze()
}

fn first_value_position(bytes: &[u8]) -> Option<usize> {
    let record = batch::records(bytes).ok()?.next()?.ok()?;
    let value = record.value?;
    Some(value.as_ptr() as usize - bytes.as_ptr() as usize)
}

/// The stamp of a fetched batch built by `build_batch` (decompressed if
/// it was compressed).
pub fn stamp_of(batch_bytes: &[u8]) -> Option<u64> {
    let header = batch::peek_header(batch_bytes).ok()?;
    if header.attributes().compression().ok()? != Compression::None {
        let records = batch::decompressed_records(&Bytes::copy_from_slice(batch_bytes), DECOMPRESSED_BYTES_MAX).ok()?;
        let record = records.iter().next()?.ok()?;
        return Some(u64::from_be_bytes(record.value?.get(..8)?.try_into().ok()?));
    }
    let record = batch::records(batch_bytes).ok()?.next()?.ok()?;
    let value = record.value?;
    Some(u64::from_be_bytes(value.get(..8)?.try_into().ok()?))
}

#[derive(Debug, Clone)]
pub struct ProduceLoad {
    pub topic: String,
    pub partitions: usize,
    pub producers: usize,
    pub in_flight: usize,
    pub batch_records: usize,
    pub message_bytes: usize,
    pub acks: Acks,
    /// Total target rate in bytes per second; None: as fast as possible.
    pub rate_bytes_s: Option<f64>,
    /// Stamp each batch with its intended send time (end to end).
    pub stamp: bool,
    /// Codec of the records on the wire; a stamped batch is compressed
    /// per send, as a producer would.
    pub compression: Compression,
    /// Kafka's protocol only: plain, idempotent or transactional, and a
    /// transactional producer's commit interval.
    pub mode: super::ProducerMode,
    pub commit_interval: Duration,
    /// Idempotent and transactional producers: the wait before asking a
    /// control request again after a retriable answer.
    pub retry_backoff: Duration,
    /// Transactional producers: transactions v1 or v2 (KIP-890 part 2).
    pub transaction_version: u8,
}

/// Runs producers until `stop`; latency of each request from its intended
/// send time (its slot in the schedule under a target rate, so a stall
/// counts against every request it delays: no coordinated omission).
pub async fn produce(
    client: Client,
    load: ProduceLoad,
    counters: Arc<Counters>,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Histogram<u64>> {
    let plain = build_batch_for(load.batch_records, load.message_bytes, 0, load.compression);
    let template = compress_batch(&plain, load.compression);
    let senders = load.producers * load.in_flight;
    let interval = load.rate_bytes_s.map(|rate| Duration::from_secs_f64(template.len() as f64 * senders as f64 / rate));
    let mut tasks = Vec::new();
    for sender in 0..senders {
        let producer = sender % load.producers;
        let tp = TopicPartition::new(load.topic.clone(), (producer % load.partitions) as i32);
        let (client, template, counters, measuring, stop) =
            (client.clone(), template.clone(), counters.clone(), measuring.clone(), stop.clone());
        let (records, stamp, acks, codec, plain) =
            (load.batch_records, load.stamp, load.acks, load.compression, plain.clone());
        tasks.push(tokio::spawn(async move {
            let mut latency = histogram();
            // Spread the senders' slots over one interval.
            let start = Instant::now() + interval.map_or(Duration::ZERO, |i| i.mul_f64(sender as f64 / senders as f64));
            let mut slot = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let intended = match interval {
                    Some(interval) => {
                        let at = start + interval * slot;
                        slot += 1;
                        tokio::time::sleep_until(at.into()).await;
                        at
                    }
                    None => Instant::now(),
                };
                let batch = if stamp {
                    let lag = Instant::now().saturating_duration_since(intended).as_nanos() as u64;
                    compress_batch(&restamp(&plain, now_ns().saturating_sub(lag)), codec)
                } else {
                    template.clone()
                };
                let result = client.produce_batches(&tp, &batch, acks, Duration::from_secs(30)).await;
                match result {
                    Ok(_) => {
                        if measuring.load(Ordering::Relaxed) {
                            counters.add(batch.len(), records);
                            let us = intended.elapsed().as_micros() as u64;
                            let _ = latency.record(us.clamp(1, LATENCY_MAX_US));
                        }
                    }
                    Err(err) => {
                        counters.error(&err);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            latency
        }));
    }
    let mut merged = histogram();
    for task in tasks {
        merged.add(task.await.context("producer task")?).context("merging histograms")?;
    }
    Ok(merged)
}

#[derive(Debug, Clone)]
pub struct ConsumeLoad {
    pub topic: String,
    pub partitions: usize,
    pub consumers: usize,
    pub fetch_bytes_max: usize,
    /// Stop each partition at this offset (None: follow until stopped).
    pub end_offsets: Option<Vec<i64>>,
    /// Start each partition here.
    pub start_offsets: Vec<i64>,
    /// Record end-to-end latency (now - the batch's stamp) instead of the
    /// fetch's round trip.
    pub end_to_end: bool,
    /// Fetch's isolation_level (Kafka's protocol only): 0
    /// read_uncommitted, 1 read_committed.
    pub isolation_level: i8,
}

/// Consumers, each reading its share of the partitions with long-polling
/// fetches of whole batches until every partition reaches its end offset
/// (or `stop`).
pub async fn consume(
    client: Client,
    load: ConsumeLoad,
    counters: Arc<Counters>,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Histogram<u64>> {
    let mut tasks = Vec::new();
    for consumer in 0..load.consumers {
        let partitions: Vec<usize> = (0..load.partitions).filter(|p| p % load.consumers == consumer).collect();
        let (client, counters, measuring, stop, load) =
            (client.clone(), counters.clone(), measuring.clone(), stop.clone(), load.clone());
        tasks.push(tokio::spawn(async move {
            let mut latency = histogram();
            let mut offsets: Vec<i64> = partitions.iter().map(|&p| load.start_offsets[p]).collect();
            loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let mut all_done = true;
                for (i, &partition) in partitions.iter().enumerate() {
                    let end = load.end_offsets.as_ref().map(|ends| ends[partition]);
                    if end.is_some_and(|end| offsets[i] >= end) {
                        continue;
                    }
                    all_done = false;
                    let tp = TopicPartition::new(load.topic.clone(), partition as i32);
                    let sent = Instant::now();
                    let fetched = match client
                        .fetch_batches(&tp, offsets[i], load.fetch_bytes_max, Duration::from_millis(100))
                        .await
                    {
                        Ok(fetched) => fetched,
                        Err(err) => {
                            counters.error(&err);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let stamps = load.end_to_end && measuring.load(Ordering::Relaxed);
                    let (bytes, records) = take_batches(&fetched.records, &mut offsets[i], stamps, &mut latency);
                    if measuring.load(Ordering::Relaxed) {
                        counters.add(bytes, records);
                        if !load.end_to_end && bytes > 0 {
                            let _ = latency.record((sent.elapsed().as_micros() as u64).clamp(1, LATENCY_MAX_US));
                        }
                    }
                }
                if all_done {
                    break;
                }
            }
            latency
        }));
    }
    let mut merged = histogram();
    for task in tasks {
        merged.add(task.await.context("consumer task")?).context("merging histograms")?;
    }
    Ok(merged)
}

/// Takes the whole batches of a fetched `records` payload at or after
/// `offset` and moves `offset` past them; returns their bytes and records.
/// A batch cut short at the payload's end (Kafka may send a partial last
/// batch) ends the walk, as it ends a Kafka client's. With `stamps`, each
/// batch's end-to-end latency (now minus its stamp) goes into `latency`.
pub fn take_batches(records: &[u8], offset: &mut i64, stamps: bool, latency: &mut Histogram<u64>) -> (usize, usize) {
    let (mut bytes, mut count) = (0, 0);
    let received_ns = now_ns();
    for span in batch::split_batches(records) {
        let Ok(span) = span else { break };
        let header = span.header;
        let last = header.base_offset.get() + i64::from(header.last_offset_delta.get());
        if last < *offset {
            continue;
        }
        *offset = last + 1;
        bytes += span.bytes.len();
        count += header.records_count.get().max(0) as usize;
        if stamps && let Some(stamp) = stamp_of(span.bytes) {
            let us = received_ns.saturating_sub(stamp) / 1000;
            let _ = latency.record(us.clamp(1, LATENCY_MAX_US));
        }
    }
    (bytes, count)
}

/// Samples the counters once a second while measuring; prints a live
/// progress line to stderr. Returns MB/s per second.
pub async fn sample(
    name: String,
    counters: Arc<Counters>,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> Vec<f64> {
    use std::io::Write;
    let mut series = Vec::new();
    let mut last_bytes = 0u64;
    let mut last_records = 0u64;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    let started = Instant::now();
    // Only seconds measured from end to end go into the series: the first
    // tick after the warm-up covers part of a second (the counters count
    // only while measuring), which read as a drop to ~0 in the plots.
    let mut measured_before = measuring.load(Ordering::Relaxed);
    while !stop.load(Ordering::Relaxed) {
        ticker.tick().await;
        let bytes = counters.bytes.load(Ordering::Relaxed);
        let records = counters.records.load(Ordering::Relaxed);
        let mb_s = (bytes - last_bytes) as f64 / 1e6;
        let records_s = records - last_records;
        (last_bytes, last_records) = (bytes, records);
        let now_measuring = measuring.load(Ordering::Relaxed);
        let phase = if now_measuring { "measuring" } else { "warm-up" };
        if now_measuring && measured_before {
            series.push(mb_s);
        }
        measured_before = now_measuring;
        let mut err = std::io::stderr();
        let _ = write!(
            err,
            "\r[{name}] {:>4}s {phase:<9} {mb_s:>8.1} MB/s {records_s:>9} rec/s errors {}   ",
            started.elapsed().as_secs(),
            counters.errors.load(Ordering::Relaxed)
        );
        let _ = err.flush();
    }
    eprintln!();
    series
}

#[cfg(test)]
mod compression_tests {
    use super::*;

    #[test]
    fn compressed_workload_batches_are_valid_kafka_batches_whose_stamp_reads_back() {
        for codec in [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd] {
            let plain = build_batch_for(100, 1024, 0, codec);
            let stamped = compress_batch(&restamp(&plain, 123_456_789), codec);
            let info = batch::validate_produce(&stamped, usize::MAX).expect("a valid batch");
            assert_eq!((info.compression(), info.records_count), (codec, 100));
            assert_eq!(stamp_of(&stamped), Some(123_456_789), "{codec:?}");
            let ratio = compression_ratio(100, 1024, codec);
            if codec == Compression::None {
                assert!((ratio - 1.0).abs() < f64::EPSILON);
            } else {
                assert!((1.5..30.0).contains(&ratio), "{codec:?}: ratio {ratio}");
            }
        }
    }
}
