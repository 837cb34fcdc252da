//! Prometheus metrics. Each shard counts in plain cells (no atomics, no
//! locks: only its own core touches them); `/metrics` on shard 0 asks every
//! shard for a snapshot through its mailbox and renders one series per
//! shard (label `shard`; Prometheus sums across them).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// Request latency buckets, in seconds (Prometheus convention).
const LATENCY_BUCKETS_S: [f64; 14] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

#[derive(Debug, Clone, Default)]
pub(crate) struct TopicCounters {
    pub bytes_in: u64,
    pub records_in: u64,
    pub bytes_out: u64,
    pub produce_requests: u64,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Histogram {
    pub buckets: [u64; LATENCY_BUCKETS_S.len()],
    pub count: u64,
    pub sum_s: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (bucket, bound) in self.buckets.iter_mut().zip(LATENCY_BUCKETS_S) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
        self.count += 1;
        self.sum_s += seconds;
    }
}

#[derive(Debug, Default)]
pub(crate) struct ShardMetrics {
    topics: RefCell<BTreeMap<String, TopicCounters>>,
    latency: RefCell<BTreeMap<&'static str, Histogram>>,
    connections_open: Cell<u64>,
    connections_accepted: Cell<u64>,
    bad_frames: Cell<u64>,
    tls_handshakes_failed: Cell<u64>,
    produce_throttle_ms: Cell<u64>,
    fetch_throttle_ms: Cell<u64>,
    request_throttle_ms: Cell<u64>,
    write_timeouts: Cell<u64>,
    connections_refused_per_ip: Cell<u64>,
    connections_refused_ip_rate: Cell<u64>,
    accept_throttle_ms: Cell<u64>,
}

/// One shard's numbers, sent to shard 0 for rendering.
#[derive(Debug, Clone)]
pub(crate) struct ShardSnapshot {
    pub shard: usize,
    pub topics: BTreeMap<String, TopicCounters>,
    pub latency: BTreeMap<&'static str, Histogram>,
    pub connections_open: u64,
    pub connections_accepted: u64,
    pub bad_frames: u64,
    pub tls_handshakes_failed: u64,
    pub produce_throttle_ms: u64,
    pub fetch_throttle_ms: u64,
    pub request_throttle_ms: u64,
    /// (topic, partition, bytes on disk)
    pub log_sizes: Vec<(String, u32, u64)>,
    /// Partitions hosted here whose log failed to open.
    pub partitions_offline: usize,
    /// The shard's byte budget: held now, and the most ever held.
    pub bytes_in_flight: usize,
    pub bytes_in_flight_peak: usize,
    pub write_timeouts: u64,
    pub connections_refused_per_ip: u64,
    pub connections_refused_ip_rate: u64,
    pub accept_throttle_ms: u64,
}

impl ShardMetrics {
    fn topic<R>(&self, topic: &str, update: impl FnOnce(&mut TopicCounters) -> R) -> R {
        let mut topics = self.topics.borrow_mut();
        if !topics.contains_key(topic) {
            topics.insert(topic.to_string(), TopicCounters::default());
        }
        update(topics.get_mut(topic).expect("inserted above"))
    }

    pub fn bytes_in(&self, topic: &str, bytes: usize, records: i64) {
        self.topic(topic, |c| {
            c.bytes_in += bytes as u64;
            c.records_in += records.max(0) as u64;
        });
    }

    pub fn produced(&self, topic: &str) {
        self.topic(topic, |c| c.produce_requests += 1);
    }

    pub fn fetched(&self, topic: &str, bytes: usize) {
        if bytes > 0 {
            self.topic(topic, |c| c.bytes_out += bytes as u64);
        }
    }

    pub fn request_done(&self, api: &'static str, elapsed: Duration) {
        self.latency.borrow_mut().entry(api).or_default().observe(elapsed.as_secs_f64());
    }

    pub fn connection_opened(&self) {
        self.connections_open.set(self.connections_open.get() + 1);
        self.connections_accepted.set(self.connections_accepted.get() + 1);
    }

    pub fn connections_open(&self) -> u64 {
        self.connections_open.get()
    }

    pub fn connection_closed(&self) {
        self.connections_open.set(self.connections_open.get().saturating_sub(1));
    }

    pub fn bad_frame(&self) {
        self.bad_frames.set(self.bad_frames.get() + 1);
    }

    pub fn tls_handshake_failed(&self) {
        self.tls_handshakes_failed.set(self.tls_handshakes_failed.get() + 1);
    }

    /// A client over its quota was kept quiet for `ms`.
    pub fn throttled(&self, kind: crate::security::quota::QuotaKind, ms: u64) {
        let counter = match kind {
            crate::security::quota::QuotaKind::Produce => &self.produce_throttle_ms,
            crate::security::quota::QuotaKind::Fetch => &self.fetch_throttle_ms,
            crate::security::quota::QuotaKind::Request => &self.request_throttle_ms,
        };
        counter.set(counter.get() + ms);
    }

    /// A connection closed on accept: its address had
    /// max.connections.per.ip open.
    pub fn connection_refused_per_ip(&self) {
        self.connections_refused_per_ip.set(self.connections_refused_per_ip.get() + 1);
    }

    /// A connection closed on accept: its address was over its
    /// connection_creation_rate quota.
    pub fn connection_refused_ip_rate(&self) {
        self.connections_refused_ip_rate.set(self.connections_refused_ip_rate.get() + 1);
    }

    /// The accept loop waited `wait` (max.connection.creation.rate).
    pub fn accept_throttled(&self, wait: Duration) {
        self.accept_throttle_ms.set(self.accept_throttle_ms.get() + wait.as_millis() as u64);
    }

    pub fn write_timed_out(&self) {
        self.write_timeouts.set(self.write_timeouts.get() + 1);
    }

    pub fn snapshot(&self, shard: usize, log_sizes: &[(String, u32, u64)], partitions_offline: usize) -> ShardSnapshot {
        ShardSnapshot {
            shard,
            topics: self.topics.borrow().clone(),
            latency: self.latency.borrow().clone(),
            connections_open: self.connections_open.get(),
            connections_accepted: self.connections_accepted.get(),
            bad_frames: self.bad_frames.get(),
            tls_handshakes_failed: self.tls_handshakes_failed.get(),
            produce_throttle_ms: self.produce_throttle_ms.get(),
            fetch_throttle_ms: self.fetch_throttle_ms.get(),
            request_throttle_ms: self.request_throttle_ms.get(),
            log_sizes: log_sizes.to_vec(),
            partitions_offline,
            bytes_in_flight: 0,
            bytes_in_flight_peak: 0,
            write_timeouts: self.write_timeouts.get(),
            connections_refused_per_ip: self.connections_refused_per_ip.get(),
            connections_refused_ip_rate: self.connections_refused_ip_rate.get(),
            accept_throttle_ms: self.accept_throttle_ms.get(),
        }
    }
}

/// The Prometheus text exposition of every shard's snapshot.
pub(crate) fn render(snapshots: &[ShardSnapshot]) -> String {
    let mut out = String::new();
    let counter = |out: &mut String, name: &str, help: &str, kind: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    counter(&mut out, "spate_bytes_in_total", "Record batch bytes appended.", "counter");
    for s in snapshots {
        for (topic, c) in &s.topics {
            let _ = writeln!(out, "spate_bytes_in_total{{shard=\"{}\",topic=\"{topic}\"}} {}", s.shard, c.bytes_in);
        }
    }
    counter(&mut out, "spate_records_in_total", "Records appended.", "counter");
    for s in snapshots {
        for (topic, c) in &s.topics {
            let _ = writeln!(out, "spate_records_in_total{{shard=\"{}\",topic=\"{topic}\"}} {}", s.shard, c.records_in);
        }
    }
    counter(&mut out, "spate_produce_requests_total", "Partition appends acknowledged.", "counter");
    for s in snapshots {
        for (topic, c) in &s.topics {
            let _ = writeln!(
                out,
                "spate_produce_requests_total{{shard=\"{}\",topic=\"{topic}\"}} {}",
                s.shard, c.produce_requests
            );
        }
    }
    counter(
        &mut out,
        "spate_bytes_out_total",
        "Record batch bytes sent to consumers (by the answering shard).",
        "counter",
    );
    for s in snapshots {
        for (topic, c) in &s.topics {
            let _ = writeln!(out, "spate_bytes_out_total{{shard=\"{}\",topic=\"{topic}\"}} {}", s.shard, c.bytes_out);
        }
    }
    counter(&mut out, "spate_request_latency_seconds", "Time from a request's arrival to its response.", "histogram");
    for s in snapshots {
        for (api, h) in &s.latency {
            for (count, bound) in h.buckets.iter().zip(LATENCY_BUCKETS_S) {
                let _ = writeln!(
                    out,
                    "spate_request_latency_seconds_bucket{{shard=\"{}\",api=\"{api}\",le=\"{bound}\"}} {count}",
                    s.shard
                );
            }
            let labels = format!("shard=\"{}\",api=\"{api}\"", s.shard);
            let _ = writeln!(out, "spate_request_latency_seconds_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "spate_request_latency_seconds_sum{{{labels}}} {}", h.sum_s);
            let _ = writeln!(out, "spate_request_latency_seconds_count{{{labels}}} {}", h.count);
        }
    }
    // One value per shard, labelled by shard.
    let per_shard = |out: &mut String, name: &str, help: &str, kind: &str, value: &dyn Fn(&ShardSnapshot) -> u64| {
        counter(out, name, help, kind);
        for s in snapshots {
            let _ = writeln!(out, "{name}{{shard=\"{}\"}} {}", s.shard, value(s));
        }
    };
    per_shard(&mut out, "spate_connections", "Open client connections.", "gauge", &|s| s.connections_open);
    per_shard(&mut out, "spate_connections_accepted_total", "Connections accepted.", "counter", &|s| {
        s.connections_accepted
    });
    per_shard(
        &mut out,
        "spate_bad_frames_total",
        "Frames refused (oversized, truncated, unverifiable).",
        "counter",
        &|s| s.bad_frames,
    );
    per_shard(
        &mut out,
        "spate_tls_handshakes_failed_total",
        "TLS connections that failed or timed out in their handshake (unknown or expired certificates, plaintext clients).",
        "counter",
        &|s| s.tls_handshakes_failed,
    );
    per_shard(
        &mut out,
        "spate_produce_throttle_ms_total",
        "Milliseconds clients over their producer_byte_rate quota were kept quiet.",
        "counter",
        &|s| s.produce_throttle_ms,
    );
    per_shard(
        &mut out,
        "spate_fetch_throttle_ms_total",
        "Milliseconds clients over their consumer_byte_rate quota were kept quiet.",
        "counter",
        &|s| s.fetch_throttle_ms,
    );
    per_shard(
        &mut out,
        "spate_request_throttle_ms_total",
        "Milliseconds clients over their request_percentage quota were kept quiet.",
        "counter",
        &|s| s.request_throttle_ms,
    );
    per_shard(
        &mut out,
        "spate_bytes_in_flight",
        "Bytes of requests in flight and responses not yet written (the shard's budget).",
        "gauge",
        &|s| s.bytes_in_flight as u64,
    );
    per_shard(&mut out, "spate_bytes_in_flight_peak", "The most bytes ever in flight at once.", "gauge", &|s| {
        s.bytes_in_flight_peak as u64
    });
    per_shard(
        &mut out,
        "spate_connection_write_timeouts_total",
        "Connections closed because the client read nothing for connection_write_timeout_ms.",
        "counter",
        &|s| s.write_timeouts,
    );
    per_shard(
        &mut out,
        "spate_connections_refused_per_ip_total",
        "Connections closed on accept: their address had max.connections.per.ip open.",
        "counter",
        &|s| s.connections_refused_per_ip,
    );
    per_shard(
        &mut out,
        "spate_connections_refused_ip_rate_total",
        "Connections closed on accept: their address was over its connection_creation_rate quota.",
        "counter",
        &|s| s.connections_refused_ip_rate,
    );
    per_shard(
        &mut out,
        "spate_connection_accept_throttle_ms_total",
        "Time accepting waited to hold new connections to max.connection.creation.rate.",
        "counter",
        &|s| s.accept_throttle_ms,
    );
    per_shard(
        &mut out,
        "spate_partitions_offline",
        "Partitions hosted here whose log failed to open, met damaged data or failed a write: not served here.",
        "gauge",
        &|s| s.partitions_offline as u64,
    );
    counter(&mut out, "spate_log_size_bytes", "Bytes of a partition's log on disk.", "gauge");
    for s in snapshots {
        for (topic, partition, bytes) in &s.log_sizes {
            let _ = writeln!(
                out,
                "spate_log_size_bytes{{shard=\"{}\",topic=\"{topic}\",partition=\"{partition}\"}} {bytes}",
                s.shard
            );
        }
    }
    out
}
