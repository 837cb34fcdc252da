//! The broker's configuration. Every field has an embedded default so that
//! `spate serve` runs with no configuration at all; the CLI layers a TOML
//! file, environment variables and flags on top (in that order).

use std::path::PathBuf;

use serde::Deserialize;
use spate_engine::Durability;
use spate_flatbuf::{FRAME_BYTES_MAX_DEFAULT, FRAME_BYTES_MAX_LIMIT};

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    pub node_id: i32,
    /// Topic catalog and partition logs live here.
    pub data_dir: PathBuf,
    /// The address every shard accepts on (SO_REUSEPORT spreads connections).
    pub listen_host: String,
    /// The main port; 0 picks a free one (printed at start).
    pub port: u16,
    /// Shard i also listens on `shard_port_base + i` for shard-aware
    /// clients. Absent: `port + 1` (or free ports when `port` is 0).
    pub shard_port_base: Option<u16>,
    /// The host clients are told to connect to. Absent: `listen_host`.
    pub advertised_host: Option<String>,
    /// How many shards (one pinned executor each); 0 means one per core.
    pub shards: usize,
    /// Pin shard i to core i (off when sharing a machine with a load
    /// generator, say).
    pub pin_cores: bool,
    /// Frames above this are refused before anything is allocated.
    pub frame_bytes_max: usize,
    /// Requests a connection may have in flight before the broker stops
    /// reading from it (backpressure).
    pub connection_requests_in_flight_max: usize,
    /// Bytes one connection may have in flight (requests being handled and
    /// responses not yet written) before the broker stops reading from it.
    pub connection_bytes_in_flight_max: usize,
    /// The same over all of one shard's connections (Kafka's
    /// queued.max.request.bytes, per shard here).
    pub shard_bytes_in_flight_max: usize,
    /// A connection whose client reads nothing of a response for this long
    /// is closed (its responses would otherwise be held without end).
    pub connection_write_timeout_ms: u64,
    /// Connections one shard serves at once; more are closed on accept.
    pub connections_per_shard_max: u64,
    /// A connection that sends nothing for this long is closed (Kafka's
    /// connections.max.idle.ms).
    pub connection_idle_timeout_ms: u64,
    /// Each shard's cache of recent batches, for consumers at the tail.
    pub tail_cache_bytes: usize,
    /// Memory each shard registers with io_uring for DMA buffers.
    pub io_memory_bytes: usize,
    /// Default durability for topics that do not set `flush.ms`:
    /// `always` (fdatasync before the ack), `never`, or `interval:<ms>`.
    pub durability: String,
    /// Where `/metrics` is served; empty to disable.
    pub metrics_listen: String,
    /// How often each shard applies retention to its partitions.
    pub retention_check_interval_ms: u64,
    /// How often each shard's cleaner looks at its compacted partitions
    /// (Kafka's log.cleaner.backoff.ms).
    pub cleaner_check_interval_ms: u64,
    /// An idle shard polls for this long before it sleeps in the kernel:
    /// on a core of its own, polling answers a request without the wake-up
    /// (eventfd, timer re-arm) that a sleep costs. 0 sleeps at once
    /// (sharing cores with other work).
    pub spin_before_park_us: u64,
    /// Partitions of `__consumer_offsets`, created at the first start
    /// (later changes are ignored: they would move every group).
    pub group_offsets_partitions: u32,
    /// Bounds on the session timeout a consumer asks for.
    pub group_session_timeout_ms_min: u64,
    pub group_session_timeout_ms_max: u64,
    /// How long the first rebalance of an empty classic (JoinGroup) group
    /// waits for more members before it completes, each new member pushing
    /// it back by as much again, up to the rebalance timeout (Kafka's
    /// group.initial.rebalance.delay.ms, default 3000: consumers started
    /// together then share one rebalance instead of one each). Tests set it
    /// lower.
    pub group_initial_rebalance_delay_ms: u64,
    /// The controller quorum's voters, `id@host:port,...` (Kafka's
    /// controller.quorum.voters); this node's own entry is where its
    /// controller listens. Empty: a cluster of one (this node), no network.
    pub controller_quorum: String,
    /// A follower that has not caught up with its leader for this long
    /// leaves the ISR (Kafka's replica.lag.time.max.ms).
    pub replica_lag_time_max_ms: u64,
    /// How often this broker tells the active controller it is alive, and
    /// how long the controller waits before fencing a silent broker (its
    /// partitions then get new leaders from their ISR).
    pub broker_heartbeat_interval_ms: u64,
    pub broker_session_timeout_ms: u64,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            node_id: 1,
            data_dir: PathBuf::from("spate-data"),
            listen_host: "127.0.0.1".into(),
            port: 9400,
            shard_port_base: None,
            advertised_host: None,
            shards: 0,
            pin_cores: true,
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
            connection_requests_in_flight_max: 64,
            connection_bytes_in_flight_max: crate::limits::CONNECTION_BYTES_IN_FLIGHT_MAX_DEFAULT,
            shard_bytes_in_flight_max: crate::limits::SHARD_BYTES_IN_FLIGHT_MAX_DEFAULT,
            connection_write_timeout_ms: crate::limits::CONNECTION_WRITE_TIMEOUT_MS_DEFAULT,
            connections_per_shard_max: 10_000,
            connection_idle_timeout_ms: 10 * 60 * 1000,
            tail_cache_bytes: 256 << 20,
            io_memory_bytes: 64 << 20,
            durability: "always".into(),
            metrics_listen: "127.0.0.1:9644".into(),
            retention_check_interval_ms: 5 * 60 * 1000,
            cleaner_check_interval_ms: 15 * 1000,
            spin_before_park_us: 0,
            group_offsets_partitions: 16,
            // Low enough for tests and fast failover; Kafka's is 6 s.
            group_session_timeout_ms_min: 500,
            group_session_timeout_ms_max: 300_000,
            group_initial_rebalance_delay_ms: 3_000,
            controller_quorum: String::new(),
            replica_lag_time_max_ms: 10_000,
            broker_heartbeat_interval_ms: 500,
            broker_session_timeout_ms: 6_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid broker config: {0}")]
pub struct ConfigError(pub String);

/// `always`, `never` or `interval:<ms>`.
pub fn parse_durability(text: &str) -> Result<Durability, ConfigError> {
    match text {
        "always" => Ok(Durability::Always),
        "never" => Ok(Durability::Never),
        _ => {
            let interval = text.strip_prefix("interval:").and_then(|ms| ms.parse::<u64>().ok()).filter(|&ms| ms > 0);
            interval.map(Durability::IntervalMs).ok_or_else(|| {
                ConfigError(format!("durability {text:?}: expected always, never or interval:<ms> with ms > 0"))
            })
        }
    }
}

impl BrokerConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        parse_durability(&self.durability)?;
        if self.frame_bytes_max < 1024 || self.frame_bytes_max > FRAME_BYTES_MAX_LIMIT {
            return Err(ConfigError(format!("frame_bytes_max must be in [1024, {FRAME_BYTES_MAX_LIMIT}]")));
        }
        if self.connections_per_shard_max == 0 || self.connection_idle_timeout_ms == 0 {
            return Err(ConfigError(
                "connections_per_shard_max and connection_idle_timeout_ms must be positive".into(),
            ));
        }
        if self.connection_bytes_in_flight_max < (1 << 20) || self.shard_bytes_in_flight_max < (1 << 20) {
            return Err(ConfigError(
                "connection_bytes_in_flight_max and shard_bytes_in_flight_max must be at least 1 MiB".into(),
            ));
        }
        if self.connection_write_timeout_ms == 0 {
            return Err(ConfigError("connection_write_timeout_ms must be positive".into()));
        }
        if self.connection_requests_in_flight_max == 0 {
            return Err(ConfigError("connection_requests_in_flight_max must be positive".into()));
        }
        if self.node_id < 1 {
            return Err(ConfigError("node_id must be at least 1".into()));
        }
        let voters = self.controller_voters()?;
        if !voters.is_empty() && !voters.iter().any(|(id, _)| *id == self.node_id) {
            return Err(ConfigError(format!("controller_quorum does not list this node ({})", self.node_id)));
        }
        if self.replica_lag_time_max_ms == 0 || self.broker_heartbeat_interval_ms == 0 {
            return Err(ConfigError(
                "replica_lag_time_max_ms and broker_heartbeat_interval_ms must be positive".into(),
            ));
        }
        if self.broker_session_timeout_ms <= self.broker_heartbeat_interval_ms {
            return Err(ConfigError("broker_session_timeout_ms must exceed broker_heartbeat_interval_ms".into()));
        }
        if self.shards > crate::limits::SHARDS_MAX {
            return Err(ConfigError(format!("shards must be at most {}", crate::limits::SHARDS_MAX)));
        }
        if self.io_memory_bytes < (1 << 20) {
            return Err(ConfigError("io_memory_bytes must be at least 1 MiB".into()));
        }
        if self.group_offsets_partitions == 0
            || self.group_offsets_partitions > crate::limits::PARTITIONS_PER_TOPIC_MAX as u32
        {
            return Err(ConfigError("group_offsets_partitions must be in [1, 10000]".into()));
        }
        if self.group_session_timeout_ms_min == 0
            || self.group_session_timeout_ms_min > self.group_session_timeout_ms_max
        {
            return Err(ConfigError("group session timeouts need 0 < min <= max".into()));
        }
        if self.retention_check_interval_ms == 0 {
            return Err(ConfigError("retention_check_interval_ms must be positive".into()));
        }
        if self.cleaner_check_interval_ms == 0 {
            return Err(ConfigError("cleaner_check_interval_ms must be positive".into()));
        }
        Ok(())
    }

    /// The shard count after resolving 0 to the number of cores.
    pub fn shard_count(&self) -> usize {
        if self.shards > 0 {
            return self.shards;
        }
        std::thread::available_parallelism().map_or(1, |n| n.get()).min(crate::limits::SHARDS_MAX)
    }

    /// `controller_quorum` parsed: (node id, address) per voter.
    pub fn controller_voters(&self) -> Result<Vec<(i32, std::net::SocketAddr)>, ConfigError> {
        use std::net::ToSocketAddrs;
        let mut voters = Vec::new();
        for entry in self.controller_quorum.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let bad = || ConfigError(format!("controller_quorum entry {entry:?}: expected id@host:port"));
            let (id, addr) = entry.split_once('@').ok_or_else(bad)?;
            let id: i32 = id.parse().map_err(|_| bad())?;
            if id < 1 || voters.iter().any(|(other, _)| *other == id) {
                return Err(ConfigError(format!("controller_quorum: node id {id} is not >= 1 or is listed twice")));
            }
            let addr = addr.to_socket_addrs().map_err(|_| bad())?.next().ok_or_else(bad)?;
            voters.push((id, addr));
        }
        Ok(voters)
    }

    pub fn advertised_host(&self) -> &str {
        self.advertised_host.as_deref().unwrap_or(&self.listen_host)
    }
}
