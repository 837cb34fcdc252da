//! The broker's configuration. Every field has an embedded default so that
//! `spate serve` runs with no configuration at all; the CLI layers a TOML
//! file, environment variables and flags on top (in that order).

use std::collections::HashMap;
use std::net::{IpAddr, ToSocketAddrs};
use std::path::PathBuf;

use serde::Deserialize;
use spate_engine::Durability;
use spate_flatbuf::{FRAME_BYTES_MAX_DEFAULT, FRAME_BYTES_MAX_LIMIT};

use crate::limits::NATIVE_TLS_FRAME_BYTES_MAX;

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
    /// Client connections one address may hold open on this broker, all
    /// listeners and shards together; more are closed on accept (Kafka's
    /// max.connections.per.ip; its default, no practical limit).
    pub max_connections_per_ip: u64,
    /// Kafka's max.connections.per.ip.overrides: `host:count,...`, a
    /// limit of its own for each host (a name counts for every address it
    /// resolves to at start).
    pub max_connections_per_ip_overrides: String,
    /// New client connections the broker takes a second, all listeners
    /// together (Kafka's max.connection.creation.rate; its default, no
    /// practical limit): past it, accepting waits.
    pub max_connection_creation_rate: u64,
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
    /// Serve `/metrics` over TLS with the broker's keystore (and its
    /// `ssl.client.auth`: with `required`, scrapers present a certificate
    /// the truststore trusts).
    pub metrics_tls: bool,
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
    /// Partitions of `__transaction_state`, created at the first start
    /// (later changes are ignored: they would move every transactional
    /// id). Kafka's transaction.state.log.num.partitions is 50; 16 here
    /// as for `__consumer_offsets`: each partition is a log on up to three
    /// brokers and a replay at every change of its leader, and a small
    /// cluster gains nothing from more coordinators than cores.
    pub transaction_state_partitions: u32,
    /// The longest transaction timeout a producer may ask for (Kafka's
    /// transaction.max.timeout.ms); InitProducerId refuses longer ones.
    pub transaction_max_timeout_ms: u64,
    /// KIP-890 part 1 (Kafka's transaction.partition.verification.enable):
    /// a partition leader asks the transaction coordinator before it takes
    /// a producer's first transactional batch of a transaction. Off only
    /// while a cluster still has brokers that do not answer the question
    /// (they would add the partition instead of checking it).
    pub transaction_partition_verification_enable: bool,
    /// How often each coordinator aborts its transactions past their
    /// timeout (Kafka's
    /// transaction.abort.timed.out.transaction.cleanup.interval.ms).
    pub transaction_abort_check_interval_ms: u64,
    /// A transactional id with no transaction in progress and no state
    /// change for this long is forgotten (Kafka's
    /// transactional.id.expiration.ms): a tombstone in
    /// `__transaction_state`, its memory freed; checked with the timeouts,
    /// every `transaction_abort_check_interval_ms`.
    pub transactional_id_expiration_ms: u64,
    /// Bounds on the session timeout a consumer asks for.
    pub group_session_timeout_ms_min: u64,
    pub group_session_timeout_ms_max: u64,
    /// Kafka's group.consumer.session.timeout.ms: the session of a member
    /// of a Kafka consumer group (KIP-848), which the client does not
    /// choose (clamped to the bounds above).
    pub group_consumer_session_timeout_ms: u64,
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
    /// Kafka's `listeners`: where the Kafka protocol is served,
    /// `NAME://host:port,...` (port 0 picks a free one). A listener's name
    /// is its security protocol (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL)
    /// or a name `listener_security_protocol_map` maps to one. Empty: no
    /// Kafka listener.
    pub listeners: String,
    /// Kafka's `advertised.listeners`: `NAME://host:port,...`, the address
    /// Metadata gives a client of each listener. A listener not in it is
    /// advertised at its own address, an unspecified host (0.0.0.0)
    /// replaced by `advertised_host` or 127.0.0.1.
    pub advertised_listeners: Option<String>,
    /// Kafka's `listener.security.protocol.map`: `NAME:PROTOCOL,...`.
    /// Empty: every listener is named by its protocol.
    pub listener_security_protocol_map: String,
    /// Kafka's `controller.listener.names`: listeners so named are Kafka's
    /// controller listeners, which Spate does not serve (its controller has
    /// a port of its own): they are skipped, so a KRaft combined-mode
    /// `server.properties` works as is.
    pub controller_listener_names: String,
    /// TLS for SSL and SASL_SSL listeners (Kafka's `ssl.*` keys, PEM only,
    /// KIP-651): the broker's certificate chain and private key, each
    /// inline PEM text or a file (`ssl_keystore_location`, holding both).
    pub ssl_keystore_type: String,
    pub ssl_keystore_location: Option<PathBuf>,
    pub ssl_keystore_certificate_chain: Option<String>,
    pub ssl_keystore_key: Option<String>,
    /// The CA certificates client certificates are verified against
    /// (mutual TLS), inline PEM or a file.
    pub ssl_truststore_type: String,
    pub ssl_truststore_location: Option<PathBuf>,
    pub ssl_truststore_certificates: Option<String>,
    /// Kafka's `ssl.client.auth`: `none`, `requested` (a certificate, if
    /// sent, must verify and names the principal) or `required`.
    pub ssl_client_auth: String,
    /// Kafka's `ssl.cipher.suites`: the cipher suites TLS listeners offer,
    /// comma-separated IANA names (`TLS_AES_128_GCM_SHA256`,
    /// `TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`, ...), in the operator's
    /// order of preference, which then wins over the client's. Empty:
    /// rustls's safe defaults, in the client's order.
    pub ssl_cipher_suites: String,
    /// Kafka's `ssl.enabled.protocols`: `TLSv1.2` and/or `TLSv1.3`
    /// (comma-separated; empty: both).
    pub ssl_enabled_protocols: String,
    /// The native ports' security (`native.security.protocol`; Spate's
    /// own key, the native port not being a Kafka listener): `PLAINTEXT`,
    /// or `SSL`: clients connect with TLS (the broker's keystore and
    /// `ssl.client.auth`, a client certificate naming the principal), and
    /// a connection without TLS is served only once its handshake proves
    /// it is a broker of the cluster (replication and transaction markers,
    /// authenticated by the cluster secret, not encrypted yet).
    pub native_security_protocol: String,
    /// Kafka's `auto.create.topics.enable`: a Kafka Metadata request for
    /// an unknown topic creates it, with `num_partitions` partitions and
    /// `default_replication_factor` replicas.
    pub auto_create_topics_enable: bool,
    /// Kafka's `num.partitions` and `default.replication.factor`: for
    /// topics created without those (auto-created, or CreateTopics with
    /// -1).
    pub num_partitions: u32,
    pub default_replication_factor: i16,
    /// Topic config defaults for every topic, under its own configs
    /// (Kafka's broker-level `log.retention.ms`, `log.segment.bytes`, ...
    /// by their topic names: `retention.ms`, `segment.bytes`, ...).
    pub log_defaults: std::collections::BTreeMap<String, String>,
    /// Kafka's `sasl.enabled.mechanisms`: what a SASL listener offers, in
    /// order (SCRAM-SHA-256, SCRAM-SHA-512, PLAIN; comma-separated).
    pub sasl_enabled_mechanisms: String,
    /// Kafka's `connections.max.reauth.ms` (KIP-368): above 0, a SASL
    /// login on a Kafka listener lasts this long; the client is told so
    /// and must authenticate again on the same connection before then, or
    /// the connection closes at its next other request. 0: logins last
    /// as long as the connection.
    pub connections_max_reauth_ms: u64,
    /// Kafka's `sasl.oauthbearer.jwks.endpoint.url` (KIP-768): the JWKS
    /// whose keys sign OAUTHBEARER tokens, a `file:` URL (Spate fetches
    /// nothing over HTTP; reread on SIGHUP). Empty: no OAUTHBEARER.
    pub sasl_oauthbearer_jwks_endpoint_url: String,
    /// Kafka's `sasl.oauthbearer.expected.audience`: a token's `aud` must
    /// name one of these (comma-separated; empty: not checked).
    pub sasl_oauthbearer_expected_audience: String,
    /// Kafka's `sasl.oauthbearer.expected.issuer`: a token's `iss` must be
    /// this (empty: not checked).
    pub sasl_oauthbearer_expected_issuer: String,
    /// Kafka's `sasl.oauthbearer.sub.claim.name`: the claim naming the
    /// principal (`User:<it>`).
    pub sasl_oauthbearer_sub_claim_name: String,
    /// Kafka's `sasl.oauthbearer.clock.skew.seconds`: leeway on `exp` and
    /// `nbf`.
    pub sasl_oauthbearer_clock_skew_seconds: u64,
    /// Kafka's `super.users`: principals no ACL restricts,
    /// `User:a;User:b`.
    pub super_users: String,
    /// Kafka's `allow.everyone.if.no.acl.found`: a resource no ACL names
    /// is open to every principal. Absent: true while no listener
    /// authenticates (zero-config brokers serve everyone), false once one
    /// does (`security::AclPolicy`).
    pub allow_everyone_if_no_acl_found: Option<bool>,
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
            max_connections_per_ip: i32::MAX as u64,
            max_connections_per_ip_overrides: String::new(),
            max_connection_creation_rate: i32::MAX as u64,
            connection_idle_timeout_ms: 10 * 60 * 1000,
            tail_cache_bytes: 256 << 20,
            io_memory_bytes: 64 << 20,
            durability: "always".into(),
            metrics_listen: "127.0.0.1:9644".into(),
            metrics_tls: false,
            retention_check_interval_ms: 5 * 60 * 1000,
            cleaner_check_interval_ms: 15 * 1000,
            spin_before_park_us: 0,
            group_offsets_partitions: 16,
            transaction_state_partitions: 16,
            transaction_max_timeout_ms: 900_000,
            transaction_partition_verification_enable: true,
            transaction_abort_check_interval_ms: 10_000,
            transactional_id_expiration_ms: 604_800_000,
            // Low enough for tests and fast failover; Kafka's is 6 s.
            group_session_timeout_ms_min: 500,
            group_session_timeout_ms_max: 300_000,
            group_consumer_session_timeout_ms: 45_000,
            group_initial_rebalance_delay_ms: 3_000,
            controller_quorum: String::new(),
            replica_lag_time_max_ms: 10_000,
            broker_heartbeat_interval_ms: 500,
            broker_session_timeout_ms: 6_000,
            listeners: "PLAINTEXT://127.0.0.1:9092".into(),
            advertised_listeners: None,
            listener_security_protocol_map: String::new(),
            controller_listener_names: "CONTROLLER".into(),
            ssl_keystore_type: "PEM".into(),
            ssl_keystore_location: None,
            ssl_keystore_certificate_chain: None,
            ssl_keystore_key: None,
            ssl_truststore_type: "PEM".into(),
            ssl_truststore_location: None,
            ssl_truststore_certificates: None,
            ssl_client_auth: "none".into(),
            ssl_cipher_suites: String::new(),
            ssl_enabled_protocols: String::new(),
            native_security_protocol: "PLAINTEXT".into(),
            auto_create_topics_enable: true,
            num_partitions: 1,
            default_replication_factor: 1,
            log_defaults: Default::default(),
            sasl_enabled_mechanisms: "SCRAM-SHA-256,SCRAM-SHA-512,PLAIN".into(),
            connections_max_reauth_ms: 0,
            sasl_oauthbearer_jwks_endpoint_url: String::new(),
            sasl_oauthbearer_expected_audience: String::new(),
            sasl_oauthbearer_expected_issuer: String::new(),
            sasl_oauthbearer_sub_claim_name: "sub".into(),
            sasl_oauthbearer_clock_skew_seconds: 30,
            super_users: String::new(),
            allow_everyone_if_no_acl_found: None,
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
    /// `max_connections_per_ip_overrides` (Kafka's `host:count,...`) read:
    /// a host name stands for every address it resolves to now (at start).
    pub(crate) fn connection_overrides(&self) -> Result<HashMap<IpAddr, u64>, ConfigError> {
        let mut out = HashMap::new();
        for entry in self.max_connections_per_ip_overrides.split(',').map(str::trim).filter(|entry| !entry.is_empty()) {
            let bad = |why: &str| ConfigError(format!("max.connections.per.ip.overrides entry {entry:?}: {why}"));
            let (host, count) = entry.rsplit_once(':').ok_or_else(|| bad("host:count expected"))?;
            let count: u64 = count.trim().parse().map_err(|_| bad("the count is not a whole number"))?;
            let host = host.trim().trim_start_matches('[').trim_end_matches(']');
            let addresses: Vec<IpAddr> = match host.parse::<IpAddr>() {
                Ok(ip) => vec![ip],
                Err(_) => (host, 0)
                    .to_socket_addrs()
                    .map_err(|err| bad(&format!("{host} does not resolve: {err}")))?
                    .map(|addr| addr.ip())
                    .collect(),
            };
            for ip in addresses {
                out.insert(ip, count);
            }
        }
        Ok(out)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        parse_durability(&self.durability)?;
        self.native_tls()?;
        if self.frame_bytes_max < 1024 || self.frame_bytes_max > FRAME_BYTES_MAX_LIMIT {
            return Err(ConfigError(format!("frame_bytes_max must be in [1024, {FRAME_BYTES_MAX_LIMIT}]")));
        }
        if self.connections_per_shard_max == 0 || self.connection_idle_timeout_ms == 0 {
            return Err(ConfigError(
                "connections_per_shard_max and connection_idle_timeout_ms must be positive".into(),
            ));
        }
        if self.max_connections_per_ip == 0 && self.max_connections_per_ip_overrides.trim().is_empty() {
            // Kafka's rule: 0 for everyone is only meaningful with overrides.
            return Err(ConfigError(
                "max_connections_per_ip is 0 and no max_connections_per_ip_overrides let anyone connect".into(),
            ));
        }
        self.connection_overrides()?;
        if self.max_connection_creation_rate == 0 {
            return Err(ConfigError("max_connection_creation_rate must be positive".into()));
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
        if self.transaction_state_partitions == 0
            || self.transaction_state_partitions > crate::limits::PARTITIONS_PER_TOPIC_MAX as u32
        {
            return Err(ConfigError("transaction_state_partitions must be in [1, 10000]".into()));
        }
        if self.transaction_max_timeout_ms == 0 || self.transaction_max_timeout_ms > i32::MAX as u64 {
            return Err(ConfigError("transaction_max_timeout_ms must be in [1, 2147483647]".into()));
        }
        if self.transactional_id_expiration_ms == 0 || self.transactional_id_expiration_ms > i32::MAX as u64 {
            return Err(ConfigError("transactional_id_expiration_ms must be in [1, 2147483647]".into()));
        }
        if self.transaction_abort_check_interval_ms == 0 {
            return Err(ConfigError("transaction_abort_check_interval_ms must be positive".into()));
        }
        if self.group_session_timeout_ms_min == 0
            || self.group_session_timeout_ms_min > self.group_session_timeout_ms_max
        {
            return Err(ConfigError("group session timeouts need 0 < min <= max".into()));
        }
        if self.retention_check_interval_ms == 0 {
            return Err(ConfigError("retention_check_interval_ms must be positive".into()));
        }
        let listeners = self.kafka_listeners()?;
        for index in 0..listeners.len() {
            self.kafka_advertised(&listeners, index, 0)?;
        }
        self.client_auth()?;
        for (key, kind) in
            [("ssl_keystore_type", &self.ssl_keystore_type), ("ssl_truststore_type", &self.ssl_truststore_type)]
        {
            if !kind.eq_ignore_ascii_case("PEM") {
                return Err(ConfigError(format!(
                    "{key} {kind:?}: only PEM stores are supported (KIP-651; convert a JKS or PKCS12 store with keytool/openssl)"
                )));
            }
        }
        if self.num_partitions == 0 || self.num_partitions > crate::limits::PARTITIONS_PER_TOPIC_MAX as u32 {
            return Err(ConfigError("num_partitions must be in [1, 10000]".into()));
        }
        if self.default_replication_factor < 1 {
            return Err(ConfigError("default_replication_factor must be at least 1".into()));
        }
        crate::topic_config::validate(&self.log_defaults)
            .map_err(|err| ConfigError(format!("topic defaults (log.*): {err}")))?;
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

    /// The host each voter of `controller_quorum` is written with (a name
    /// or an address): under TLS its certificate must name it.
    pub fn controller_voter_hosts(&self) -> Vec<(i32, String)> {
        let mut hosts = Vec::new();
        for entry in self.controller_quorum.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let Some((id, addr)) = entry.split_once('@') else { continue };
            let (Ok(id), Some((host, _))) = (id.parse::<i32>(), addr.rsplit_once(':')) else { continue };
            hosts.push((id, host.trim_start_matches('[').trim_end_matches(']').to_string()));
        }
        hosts
    }

    /// The security protocol of the controller's (Raft) port: Kafka's
    /// controller listener (the first of `controller_listener_names`) as
    /// `listener_security_protocol_map` maps it, or its own name when that
    /// is a protocol; PLAINTEXT otherwise. SSL (and SASL_SSL, whose SASL
    /// part the voters do not speak) is mutual TLS between the voters.
    pub fn controller_security_protocol(&self) -> Result<SecurityProtocol, ConfigError> {
        let Some(name) = self.controller_listener_names.split(',').map(str::trim).find(|n| !n.is_empty()) else {
            return Ok(SecurityProtocol::Plaintext);
        };
        let mapped = self.protocol_map()?.into_iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, p)| p);
        Ok(mapped.or_else(|| SecurityProtocol::parse(name)).unwrap_or(SecurityProtocol::Plaintext))
    }

    pub fn advertised_host(&self) -> &str {
        self.advertised_host.as_deref().unwrap_or(&self.listen_host)
    }

    /// The Kafka listeners, in the order configured (controller listeners
    /// skipped). Names are unique, as are ports other than 0.
    pub fn kafka_listeners(&self) -> Result<Vec<KafkaListener>, ConfigError> {
        let map = self.protocol_map()?;
        let controller_names: Vec<&str> =
            self.controller_listener_names.split(',').map(str::trim).filter(|n| !n.is_empty()).collect();
        let mut listeners: Vec<KafkaListener> = Vec::new();
        for (name, host, port) in parse_endpoints("listeners", &self.listeners)? {
            if controller_names.iter().any(|c| c.eq_ignore_ascii_case(&name)) {
                continue;
            }
            let protocol = match map.iter().find(|(n, _)| n.eq_ignore_ascii_case(&name)) {
                Some((_, protocol)) => *protocol,
                None => SecurityProtocol::parse(&name).ok_or_else(|| {
                    ConfigError(format!(
                        "listeners: {name:?} is neither a security protocol (PLAINTEXT, SSL, SASL_PLAINTEXT, \
                         SASL_SSL) nor named in listener_security_protocol_map"
                    ))
                })?,
            };
            if listeners.iter().any(|l| l.name.eq_ignore_ascii_case(&name)) {
                return Err(ConfigError(format!("listeners: the name {name} is used twice")));
            }
            if port != 0 && listeners.iter().any(|l| l.port == port) {
                return Err(ConfigError(format!("listeners: port {port} is used twice")));
            }
            listeners.push(KafkaListener { name, protocol, host, port });
        }
        Ok(listeners)
    }

    fn protocol_map(&self) -> Result<Vec<(String, SecurityProtocol)>, ConfigError> {
        let mut map = Vec::new();
        for entry in self.listener_security_protocol_map.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let bad = || {
                ConfigError(format!(
                    "listener_security_protocol_map entry {entry:?}: expected NAME:PROTOCOL (PLAINTEXT, SSL, \
                     SASL_PLAINTEXT or SASL_SSL)"
                ))
            };
            let (name, protocol) = entry.split_once(':').ok_or_else(bad)?;
            let protocol = SecurityProtocol::parse(protocol.trim()).ok_or_else(bad)?;
            map.push((name.trim().to_string(), protocol));
        }
        Ok(map)
    }

    /// Where clients of `listeners[index]` are told to connect (with the
    /// port the listener got, unless `advertised_listeners` names it).
    /// Kafka clients resolve names themselves, and `localhost` may resolve
    /// to ::1 while the listener is IPv4: an unspecified listen address is
    /// advertised as an address, never a name.
    pub fn kafka_advertised(
        &self,
        listeners: &[KafkaListener],
        index: usize,
        bound_port: u16,
    ) -> Result<(String, u16), ConfigError> {
        let listener = &listeners[index];
        if let Some(advertised) = &self.advertised_listeners {
            let endpoints = parse_endpoints("advertised_listeners", advertised)?;
            // A single unnamed entry (host:port) is the first listener's.
            let named = endpoints.iter().find(|(name, ..)| name.eq_ignore_ascii_case(&listener.name));
            let unnamed = (index == 0 && endpoints.len() == 1 && !advertised.contains("://")).then(|| &endpoints[0]);
            if let Some((_, host, port)) = named.or(unnamed) {
                return Ok((host.clone(), *port));
            }
        }
        let host = match listener.host.parse::<std::net::IpAddr>() {
            Ok(ip) if ip.is_unspecified() => self.advertised_host.clone().unwrap_or_else(|| "127.0.0.1".to_string()),
            Ok(_) => listener.host.clone(),
            // A name: advertise what it resolves to, IPv4 first.
            Err(_) => {
                use std::net::ToSocketAddrs;
                let resolved: Vec<std::net::SocketAddr> =
                    (listener.host.as_str(), bound_port).to_socket_addrs().map(Iterator::collect).unwrap_or_default();
                let first = resolved.iter().find(|a| a.is_ipv4()).or(resolved.first());
                first.map_or(listener.host.clone(), |a| a.ip().to_string())
            }
        };
        Ok((host, bound_port))
    }

    /// Whether clients of `listener` must authenticate: SASL, or TLS with
    /// client certificates required.
    pub fn authenticates(&self, listener: &KafkaListener) -> bool {
        listener.protocol.uses_sasl()
            || (listener.protocol.uses_tls() && self.client_auth().ok() == Some(ClientAuth::Required))
    }

    /// Whether the native ports take clients over TLS
    /// (`native_security_protocol`). A native frame's first byte is that of
    /// its length, which the frame cap keeps below a TLS record's first
    /// byte (0x16: a handshake), so one port tells the two apart.
    pub fn native_tls(&self) -> Result<bool, ConfigError> {
        match self.native_security_protocol.trim().to_ascii_uppercase().as_str() {
            "PLAINTEXT" => Ok(false),
            "SSL" if self.frame_bytes_max >= NATIVE_TLS_FRAME_BYTES_MAX => Err(ConfigError(format!(
                "native_security_protocol SSL needs frame_bytes_max below {NATIVE_TLS_FRAME_BYTES_MAX} (a frame's \
                 length would start like a TLS record)"
            ))),
            "SSL" => Ok(true),
            other => Err(ConfigError(format!(
                "native_security_protocol {other:?}: expected PLAINTEXT or SSL (SASL is optional on the native \
                 port either way)"
            ))),
        }
    }

    /// `ssl_client_auth` parsed.
    pub fn client_auth(&self) -> Result<ClientAuth, ConfigError> {
        match self.ssl_client_auth.trim().to_ascii_lowercase().as_str() {
            "none" | "" => Ok(ClientAuth::None),
            "requested" => Ok(ClientAuth::Requested),
            "required" => Ok(ClientAuth::Required),
            other => Err(ConfigError(format!("ssl_client_auth {other:?}: expected none, requested or required"))),
        }
    }
}

/// Kafka's security protocols, as a listener names them (directly, or
/// through `listener.security.protocol.map`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    /// Kafka's name for it (`PLAINTEXT`, `SSL`, `SASL_PLAINTEXT`, `SASL_SSL`).
    pub fn name(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "PLAINTEXT",
            SecurityProtocol::Ssl => "SSL",
            SecurityProtocol::SaslPlaintext => "SASL_PLAINTEXT",
            SecurityProtocol::SaslSsl => "SASL_SSL",
        }
    }

    /// The protocol Kafka calls `name` (any case), if there is one.
    pub fn parse(name: &str) -> Option<SecurityProtocol> {
        [SecurityProtocol::Plaintext, SecurityProtocol::Ssl, SecurityProtocol::SaslPlaintext, SecurityProtocol::SaslSsl]
            .into_iter()
            .find(|protocol| protocol.name().eq_ignore_ascii_case(name))
    }

    /// Bytes on this listener are encrypted (TLS).
    pub fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    /// A client must authenticate with SASL before anything but
    /// ApiVersions and the SASL handshake.
    pub fn uses_sasl(self) -> bool {
        matches!(self, SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl)
    }
}

impl std::fmt::Display for SecurityProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One Kafka listener: its name, its security protocol, where it binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaListener {
    pub name: String,
    pub protocol: SecurityProtocol,
    pub host: String,
    pub port: u16,
}

/// Kafka's `ssl.client.auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    None,
    Requested,
    Required,
}

/// `NAME://host:port,...` as (name, host, port); a bare `host:port` is
/// named PLAINTEXT. An empty host binds every interface (Kafka's rule).
fn parse_endpoints(key: &str, text: &str) -> Result<Vec<(String, String, u16)>, ConfigError> {
    let mut out = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let bad = |why: &str| ConfigError(format!("{key} entry {entry:?}: {why}"));
        let (name, address) = entry.split_once("://").unwrap_or(("PLAINTEXT", entry));
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(bad("expected NAME://host:port"));
        }
        let (host, port) = address.rsplit_once(':').ok_or_else(|| bad("expected host:port"))?;
        let port: u16 = port.parse().map_err(|_| bad("the port is not a number in [0, 65535]"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host = if host.is_empty() { "0.0.0.0" } else { host };
        out.push((name.to_ascii_uppercase(), host.to_string(), port));
    }
    Ok(out)
}

/// What `spate serve --config server.properties` made of a Kafka broker's
/// file: the config, and the keys Spate does not support (warned about
/// once at start, in one line).
#[derive(Debug)]
pub struct KafkaProperties {
    pub config: BrokerConfig,
    pub unsupported: Vec<String>,
}

/// Kafka's broker keys that mean the same to Spate, with where each goes.
/// Topic-level defaults (`log.*`) become `log_defaults`, applied under
/// every topic's own configs.
fn apply_kafka_key(config: &mut BrokerConfig, key: &str, value: &str) -> Result<bool, ConfigError> {
    let number = |what: &str| -> Result<u64, ConfigError> {
        value.parse::<u64>().map_err(|_| ConfigError(format!("{key}={value:?}: {what} expected")))
    };
    let flag = || -> Result<bool, ConfigError> {
        value.parse::<bool>().map_err(|_| ConfigError(format!("{key}={value:?}: true or false expected")))
    };
    match key {
        "listeners" => config.listeners = value.to_string(),
        "advertised.listeners" => config.advertised_listeners = Some(value.to_string()),
        "listener.security.protocol.map" => config.listener_security_protocol_map = value.to_string(),
        "controller.listener.names" => config.controller_listener_names = value.to_string(),
        "ssl.keystore.type" => config.ssl_keystore_type = value.to_string(),
        "ssl.keystore.location" => config.ssl_keystore_location = Some(PathBuf::from(value)),
        "ssl.keystore.certificate.chain" => config.ssl_keystore_certificate_chain = Some(value.to_string()),
        "ssl.keystore.key" => config.ssl_keystore_key = Some(value.to_string()),
        "ssl.truststore.type" => config.ssl_truststore_type = value.to_string(),
        "ssl.truststore.location" => config.ssl_truststore_location = Some(PathBuf::from(value)),
        "ssl.truststore.certificates" => config.ssl_truststore_certificates = Some(value.to_string()),
        "ssl.client.auth" => config.ssl_client_auth = value.to_string(),
        "ssl.cipher.suites" => config.ssl_cipher_suites = value.to_string(),
        "ssl.enabled.protocols" => config.ssl_enabled_protocols = value.to_string(),
        "native.security.protocol" => config.native_security_protocol = value.to_string(),
        "sasl.enabled.mechanisms" => config.sasl_enabled_mechanisms = value.to_string(),
        "connections.max.reauth.ms" => config.connections_max_reauth_ms = number("milliseconds")?,
        "sasl.oauthbearer.jwks.endpoint.url" => config.sasl_oauthbearer_jwks_endpoint_url = value.to_string(),
        "sasl.oauthbearer.expected.audience" => config.sasl_oauthbearer_expected_audience = value.to_string(),
        "sasl.oauthbearer.expected.issuer" => config.sasl_oauthbearer_expected_issuer = value.to_string(),
        "sasl.oauthbearer.sub.claim.name" => config.sasl_oauthbearer_sub_claim_name = value.to_string(),
        "sasl.oauthbearer.clock.skew.seconds" => config.sasl_oauthbearer_clock_skew_seconds = number("seconds")?,
        // Kafka names its JWT validator and login module per listener
        // (`listener.name.<l>.oauthbearer.sasl.server.callback.handler.class`,
        // `...sasl.jaas.config`); Spate's validator is built in.
        key if key.starts_with("listener.name.")
            && (key.ends_with(".oauthbearer.sasl.server.callback.handler.class")
                || key.ends_with(".oauthbearer.sasl.jaas.config")) => {}
        key if key.starts_with("listener.name.") && key.contains(".oauthbearer.sasl.oauthbearer.") => {
            let plain = &key[key.find(".oauthbearer.sasl.oauthbearer.").map_or(0, |at| at + ".oauthbearer.".len())..];
            return apply_kafka_key(config, plain, value);
        }
        // An encrypted private key needs its password; Spate reads only
        // unencrypted PEM keys, so one given is refused rather than ignored.
        "ssl.key.password" | "ssl.keystore.password" if !value.is_empty() => {
            return Err(ConfigError(format!(
                "{key}: encrypted private keys are not supported; give ssl.keystore.key unencrypted (PKCS#8 PEM)"
            )));
        }
        "ssl.key.password" | "ssl.keystore.password" | "ssl.truststore.password" => {}
        "log.dirs" | "log.dir" => {
            let first = value.split(',').map(str::trim).find(|d| !d.is_empty());
            let Some(first) = first else { return Err(ConfigError(format!("{key} is empty"))) };
            if value.split(',').filter(|d| !d.trim().is_empty()).count() > 1 {
                return Err(ConfigError(format!("{key}: one log directory only (Spate has no JBOD yet)")));
            }
            config.data_dir = PathBuf::from(first);
        }
        "node.id" | "broker.id" => {
            config.node_id = value.parse().map_err(|_| ConfigError(format!("{key}={value:?}: a node id expected")))?
        }
        "controller.quorum.voters" => config.controller_quorum = value.to_string(),
        "num.partitions" => config.num_partitions = number("a partition count")? as u32,
        "default.replication.factor" => config.default_replication_factor = number("a replica count")? as i16,
        "auto.create.topics.enable" => config.auto_create_topics_enable = flag()?,
        "offsets.topic.num.partitions" => config.group_offsets_partitions = number("a partition count")? as u32,
        "transaction.state.log.num.partitions" => {
            config.transaction_state_partitions = number("a partition count")? as u32
        }
        "transaction.max.timeout.ms" => config.transaction_max_timeout_ms = number("milliseconds")?,
        "transaction.partition.verification.enable" => config.transaction_partition_verification_enable = flag()?,
        "transaction.abort.timed.out.transaction.cleanup.interval.ms" => {
            config.transaction_abort_check_interval_ms = number("milliseconds")?
        }
        "transactional.id.expiration.ms" => config.transactional_id_expiration_ms = number("milliseconds")?,
        "replica.lag.time.max.ms" => config.replica_lag_time_max_ms = number("milliseconds")?,
        "broker.heartbeat.interval.ms" => config.broker_heartbeat_interval_ms = number("milliseconds")?,
        "broker.session.timeout.ms" => config.broker_session_timeout_ms = number("milliseconds")?,
        "group.min.session.timeout.ms" => config.group_session_timeout_ms_min = number("milliseconds")?,
        "group.max.session.timeout.ms" => config.group_session_timeout_ms_max = number("milliseconds")?,
        "group.consumer.session.timeout.ms" => config.group_consumer_session_timeout_ms = number("milliseconds")?,
        "group.initial.rebalance.delay.ms" => config.group_initial_rebalance_delay_ms = number("milliseconds")?,
        "socket.request.max.bytes" => config.frame_bytes_max = number("bytes")? as usize,
        "connections.max.idle.ms" => config.connection_idle_timeout_ms = number("milliseconds")?,
        "max.connections.per.ip" => config.max_connections_per_ip = number("a connection count")?,
        "max.connections.per.ip.overrides" => config.max_connections_per_ip_overrides = value.to_string(),
        "max.connection.creation.rate" => config.max_connection_creation_rate = number("connections a second")?,
        "queued.max.request.bytes" => config.shard_bytes_in_flight_max = number("bytes")? as usize,
        "log.retention.check.interval.ms" => config.retention_check_interval_ms = number("milliseconds")?,
        "log.cleaner.backoff.ms" => config.cleaner_check_interval_ms = number("milliseconds")?,
        "super.users" => config.super_users = value.to_string(),
        "allow.everyone.if.no.acl.found" => config.allow_everyone_if_no_acl_found = Some(flag()?),
        // Kafka's KRaft authorizer is the only one: its name says ACLs are on,
        // which Spate's always are.
        "authorizer.class.name" => {}
        "log.retention.ms"
        | "log.retention.bytes"
        | "log.segment.bytes"
        | "log.roll.ms"
        | "log.cleanup.policy"
        | "log.cleaner.delete.retention.ms"
        | "log.message.timestamp.type"
        | "message.max.bytes"
        | "log.flush.interval.ms" => {
            let topic_key = match key {
                "log.retention.ms" => "retention.ms",
                "log.retention.bytes" => "retention.bytes",
                "log.segment.bytes" => "segment.bytes",
                "log.roll.ms" => "segment.ms",
                "log.cleanup.policy" => "cleanup.policy",
                "log.cleaner.delete.retention.ms" => "delete.retention.ms",
                "log.message.timestamp.type" => "message.timestamp.type",
                "message.max.bytes" => "max.message.bytes",
                _ => "flush.ms",
            };
            config.log_defaults.insert(topic_key.into(), value.to_string());
        }
        // Kafka's coarser units: the finest given wins, as in Kafka.
        "log.retention.minutes" | "log.retention.hours" | "log.roll.hours" => {
            let scale = if key == "log.retention.minutes" { 60_000 } else { 3_600_000 };
            let topic_key = if key == "log.roll.hours" { "segment.ms" } else { "retention.ms" };
            let ms = number("a whole number")?.saturating_mul(scale);
            config.log_defaults.entry(topic_key.into()).or_insert_with(|| ms.to_string());
        }
        // Settings that only describe what Spate does anyway: combined mode,
        // plaintext, no inter-broker listener choice.
        "process.roles"
        | "inter.broker.listener.name"
        | "num.network.threads"
        | "num.io.threads"
        | "socket.send.buffer.bytes"
        | "socket.receive.buffer.bytes"
        | "num.recovery.threads.per.data.dir"
        | "offsets.topic.replication.factor"
        | "transaction.state.log.replication.factor"
        | "transaction.state.log.min.isr"
        | "share.coordinator.state.topic.replication.factor"
        | "share.coordinator.state.topic.min.isr" => {}
        _ => return Ok(false),
    }
    Ok(true)
}

/// The entries of a Java properties file: `key=value`, `key: value` or
/// `key value`, `#` and `!` comments, a trailing backslash continues a
/// line. Public for the CLI's `--command-config` (a Kafka client's
/// properties file), so both sides read the format one way.
pub fn properties(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut logical = String::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if logical.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('!')) {
            continue;
        }
        if let Some(continued) = trimmed.strip_suffix('\\') {
            logical.push_str(continued);
            continue;
        }
        logical.push_str(trimmed);
        let entry = std::mem::take(&mut logical);
        let split = entry.find(['=', ':']).or_else(|| entry.find(char::is_whitespace));
        let (key, value) = match split {
            Some(at) => (&entry[..at], &entry[at + 1..]),
            None => (entry.as_str(), ""),
        };
        out.push((key.trim().to_string(), value.trim().to_string()));
    }
    out
}

impl BrokerConfig {
    /// A Kafka broker's `server.properties`, over Spate's defaults.
    pub fn from_kafka_properties(text: &str) -> Result<KafkaProperties, ConfigError> {
        let mut config = BrokerConfig::default();
        let mut unsupported = Vec::new();
        for (key, value) in properties(text) {
            if !apply_kafka_key(&mut config, &key, &value)? {
                unsupported.push(key);
            }
        }
        Ok(KafkaProperties { config, unsupported })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The keys of Kafka's own KRaft example file mean what they mean in
    /// Kafka; the ones Spate cannot honour are named, not ignored.
    #[test]
    fn a_kafka_server_properties_file_configures_the_broker() {
        let text = "\
# KRaft example
process.roles=broker,controller
node.id=3
controller.quorum.voters=3@127.0.0.1:9093
listeners=PLAINTEXT://0.0.0.0:19092
advertised.listeners=PLAINTEXT://10.1.2.3:19092
log.dirs=/var/lib/spate
num.partitions=6
default.replication.factor : 1
auto.create.topics.enable=false
log.retention.hours=168
log.segment.bytes=1073741824
group.initial.rebalance.delay.ms=0
compression.type=producer
max.connections.per.ip=100
max.connections.per.ip.overrides=127.0.0.1:1000,10.0.0.1:0
max.connection.creation.rate=50
transactional.id.expiration.ms=3600000
sasl.enabled.mechanisms=\\
  PLAIN
listener.name.external.oauthbearer.sasl.server.callback.handler.class=org.apache.kafka.common.security.oauthbearer.OAuthBearerValidatorCallbackHandler
listener.name.external.oauthbearer.sasl.jaas.config=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required ;
listener.name.external.oauthbearer.sasl.oauthbearer.jwks.endpoint.url=file:///etc/jwks.json
sasl.oauthbearer.expected.audience=spate
sasl.oauthbearer.clock.skew.seconds=5
";
        let parsed = BrokerConfig::from_kafka_properties(text).unwrap();
        let config = parsed.config;
        assert_eq!(config.node_id, 3);
        let listeners = config.kafka_listeners().unwrap();
        assert_eq!(listeners, vec![listener("PLAINTEXT", SecurityProtocol::Plaintext, "0.0.0.0", 19092)]);
        assert_eq!(config.kafka_advertised(&listeners, 0, 19092).unwrap(), ("10.1.2.3".to_string(), 19092));
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/spate"));
        assert_eq!(config.num_partitions, 6);
        assert_eq!(config.default_replication_factor, 1);
        assert!(!config.auto_create_topics_enable);
        assert_eq!(config.log_defaults.get("retention.ms").map(String::as_str), Some("604800000"));
        assert_eq!(config.log_defaults.get("segment.bytes").map(String::as_str), Some("1073741824"));
        assert_eq!(config.group_initial_rebalance_delay_ms, 0);
        assert_eq!(parsed.unsupported, vec!["compression.type".to_string()]);
        assert_eq!(config.sasl_enabled_mechanisms, "PLAIN");
        // OAUTHBEARER's keys, plain or per listener; Kafka's validator and
        // login module lines are accepted as such (not unsupported).
        assert_eq!(config.sasl_oauthbearer_jwks_endpoint_url, "file:///etc/jwks.json");
        assert_eq!(config.sasl_oauthbearer_expected_audience, "spate");
        assert_eq!(config.sasl_oauthbearer_clock_skew_seconds, 5);
        assert_eq!(config.sasl_oauthbearer_sub_claim_name, "sub");
        assert_eq!(config.max_connections_per_ip, 100);
        assert_eq!(config.max_connections_per_ip_overrides, "127.0.0.1:1000,10.0.0.1:0");
        assert_eq!(config.transactional_id_expiration_ms, 3_600_000);
        assert_eq!(config.max_connection_creation_rate, 50);
        config.validate().unwrap();
        let nobody = BrokerConfig {
            max_connections_per_ip: 0,
            max_connections_per_ip_overrides: String::new(),
            ..config.clone()
        };
        let refused = nobody.validate().unwrap_err().to_string();
        assert!(refused.contains("max_connections_per_ip"), "{refused}");
        let bad = BrokerConfig { max_connections_per_ip_overrides: "10.0.0.1".into(), ..config.clone() };
        assert!(bad.validate().unwrap_err().to_string().contains("host:count"));
        for bad in ["127.0.0.1:x", "no-such-host.invalid:3"] {
            let bad = BrokerConfig { max_connections_per_ip_overrides: bad.into(), ..config.clone() };
            assert!(bad.validate().is_err(), "{}", bad.max_connections_per_ip_overrides);
        }
        let named = BrokerConfig { max_connections_per_ip_overrides: "localhost:5,[::1]:7".into(), ..config };
        let overrides = named.connection_overrides().unwrap();
        assert_eq!(overrides.get(&"127.0.0.1".parse().unwrap()), Some(&5), "a name: each address it resolves to");
        assert_eq!(overrides.get(&"::1".parse().unwrap()), Some(&7));
    }

    fn listener(name: &str, protocol: SecurityProtocol, host: &str, port: u16) -> KafkaListener {
        KafkaListener { name: name.into(), protocol, host: host.into(), port }
    }

    #[test]
    fn listeners_are_kafka_shaped() {
        let config = BrokerConfig { listeners: "PLAINTEXT://:9092".into(), ..BrokerConfig::default() };
        let listeners = config.kafka_listeners().unwrap();
        assert_eq!(listeners, vec![listener("PLAINTEXT", SecurityProtocol::Plaintext, "0.0.0.0", 9092)]);
        // An unspecified address is advertised as an address clients can
        // reach, never a name.
        assert_eq!(config.kafka_advertised(&listeners, 0, 9092).unwrap(), ("127.0.0.1".into(), 9092));
        let config = BrokerConfig { listeners: String::new(), ..BrokerConfig::default() };
        assert_eq!(config.kafka_listeners().unwrap(), vec![]);
    }

    /// An operator's mix: a plaintext loopback listener and a SASL_SSL
    /// external one by a name of their own, with the controller listener
    /// of a KRaft combined-mode file skipped.
    #[test]
    fn several_listeners_take_their_protocols_by_name_or_by_the_map() {
        let text = "\
listeners=PLAINTEXT://127.0.0.1:9092,EXTERNAL://0.0.0.0:9094,CONTROLLER://:9093,SSL://:9095
advertised.listeners=PLAINTEXT://127.0.0.1:9092,EXTERNAL://broker1.example.com:9094
listener.security.protocol.map=EXTERNAL:SASL_SSL,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
ssl.keystore.type=PEM
ssl.keystore.location=/etc/spate/broker.pem
ssl.truststore.location=/etc/spate/ca.pem
ssl.client.auth=requested
";
        let parsed = BrokerConfig::from_kafka_properties(text).unwrap();
        assert!(parsed.unsupported.is_empty(), "{:?}", parsed.unsupported);
        let config = parsed.config;
        let listeners = config.kafka_listeners().unwrap();
        assert_eq!(
            listeners,
            vec![
                listener("PLAINTEXT", SecurityProtocol::Plaintext, "127.0.0.1", 9092),
                listener("EXTERNAL", SecurityProtocol::SaslSsl, "0.0.0.0", 9094),
                listener("SSL", SecurityProtocol::Ssl, "0.0.0.0", 9095),
            ]
        );
        assert_eq!(config.kafka_advertised(&listeners, 1, 9094).unwrap(), ("broker1.example.com".into(), 9094));
        assert_eq!(config.kafka_advertised(&listeners, 2, 9095).unwrap(), ("127.0.0.1".into(), 9095));
        assert_eq!(config.client_auth().unwrap(), ClientAuth::Requested);
        assert_eq!(config.ssl_keystore_location, Some(PathBuf::from("/etc/spate/broker.pem")));
    }

    #[test]
    fn bad_listeners_are_refused_by_name() {
        let with = |listeners: &str, map: &str| BrokerConfig {
            listeners: listeners.into(),
            listener_security_protocol_map: map.into(),
            ..BrokerConfig::default()
        };
        let err = with("INTERNAL://:9092", "").kafka_listeners().unwrap_err();
        assert!(err.0.contains("INTERNAL") && err.0.contains("listener_security_protocol_map"), "{err}");
        let err = with("PLAINTEXT://:9092,SSL://:9092", "").kafka_listeners().unwrap_err();
        assert!(err.0.contains("port 9092"), "{err}");
        let err = with("PLAINTEXT://:9092,plaintext://:9093", "").kafka_listeners().unwrap_err();
        assert!(err.0.contains("twice"), "{err}");
        let err = with("A://:9092", "A:TLS").kafka_listeners().unwrap_err();
        assert!(err.0.contains("A:TLS"), "{err}");
        let config = BrokerConfig { ssl_keystore_type: "JKS".into(), ..BrokerConfig::default() };
        assert!(config.validate().unwrap_err().0.contains("PEM"));
        assert!(BrokerConfig::from_kafka_properties("ssl.key.password=secret\n").is_err());
    }
}
