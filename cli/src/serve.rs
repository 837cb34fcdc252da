//! `spate serve`: a broker with embedded defaults. A TOML file
//! (`--config`), then environment variables (`SPATE_*`), then flags
//! override them, in that order.

use std::path::PathBuf;

use anyhow::Context as _;
use spate_net::BrokerConfig;

#[derive(clap::Args, Debug, Default)]
pub struct ServeArgs {
    /// A TOML file with any of the broker's settings (field names as the
    /// long flags, with underscores), or a Kafka broker's
    /// `server.properties` (a file ending in .properties: Kafka's keys).
    #[arg(long = "config", env = "SPATE_CONFIG", value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// Where topics live [default: ./spate-data].
    #[arg(long, env = "SPATE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1].
    #[arg(long, env = "SPATE_LISTEN_HOST")]
    pub listen_host: Option<String>,
    /// Main port; 0 picks a free one [default: 9400].
    #[arg(long, env = "SPATE_PORT")]
    pub port: Option<u16>,
    /// Shard i also listens on this + i [default: port + 1].
    #[arg(long, env = "SPATE_SHARD_PORT_BASE")]
    pub shard_port_base: Option<u16>,
    /// Host clients are told to use [default: the listen host].
    #[arg(long, env = "SPATE_ADVERTISED_HOST")]
    pub advertised_host: Option<String>,
    /// Shards (pinned executors); 0 means one per core [default: 0].
    #[arg(long, env = "SPATE_SHARDS")]
    pub shards: Option<usize>,
    /// Do not pin shards to cores (when sharing the machine).
    #[arg(long, env = "SPATE_NO_PIN")]
    pub no_pin: bool,
    /// Default durability: always, never or interval:<ms> [default: always].
    #[arg(long, env = "SPATE_DURABILITY")]
    pub durability: Option<String>,
    /// Largest frame accepted, in bytes.
    #[arg(long, env = "SPATE_FRAME_BYTES_MAX")]
    pub frame_bytes_max: Option<usize>,
    /// Each shard's tail cache, in bytes.
    #[arg(long, env = "SPATE_TAIL_CACHE_BYTES")]
    pub tail_cache_bytes: Option<usize>,
    /// Where /metrics is served; "" disables [default: 127.0.0.1:9644].
    #[arg(long, env = "SPATE_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// This broker's id in the cluster (>= 1) [default: 1].
    #[arg(long, env = "SPATE_NODE_ID")]
    pub node_id: Option<i32>,
    /// The controller quorum's voters, id@host:port,... (this node's entry
    /// is where its controller listens); empty: a cluster of one.
    #[arg(long, env = "SPATE_CONTROLLER_QUORUM")]
    pub controller_quorum: Option<String>,
    /// A follower not caught up for this long leaves the ISR [default: 10000].
    #[arg(long, env = "SPATE_REPLICA_LAG_TIME_MAX_MS")]
    pub replica_lag_time_max_ms: Option<u64>,
    /// How often this broker heartbeats to the controller [default: 500].
    #[arg(long, env = "SPATE_BROKER_HEARTBEAT_INTERVAL_MS")]
    pub broker_heartbeat_interval_ms: Option<u64>,
    /// A broker silent this long is fenced and loses its leaderships
    /// [default: 6000].
    #[arg(long, env = "SPATE_BROKER_SESSION_TIMEOUT_MS")]
    pub broker_session_timeout_ms: Option<u64>,
    /// An idle shard polls this long before sleeping (µs; 0: sleep at once).
    #[arg(long, env = "SPATE_SPIN_BEFORE_PARK_US")]
    pub spin_before_park_us: Option<u64>,
    /// Kafka's `listeners`: where Kafka clients connect,
    /// PLAINTEXT://host:port; "" disables [default: PLAINTEXT://127.0.0.1:9092].
    #[arg(long, env = "SPATE_LISTENERS")]
    pub listeners: Option<String>,
    /// Kafka's `advertised.listeners`: the address Kafka clients are given
    /// in Metadata [default: the listener's, 0.0.0.0 as 127.0.0.1].
    #[arg(long, env = "SPATE_ADVERTISED_LISTENERS")]
    pub advertised_listeners: Option<String>,
    /// Log level (error, warn, info, debug, trace) or a RUST_LOG-style
    /// filter; RUST_LOG applies when this is absent [default: info].
    #[arg(long)]
    pub log_level: Option<String>,
}

impl ServeArgs {
    fn broker_config(self) -> anyhow::Result<BrokerConfig> {
        let mut config = match &self.config_file {
            None => BrokerConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                if path.extension().is_some_and(|e| e == "properties") {
                    // A Kafka broker's server.properties: Kafka's keys mean
                    // what they mean in Kafka; the rest are named once.
                    let parsed = BrokerConfig::from_kafka_properties(&text)
                        .with_context(|| format!("parsing {}", path.display()))?;
                    if !parsed.unsupported.is_empty() {
                        tracing::warn!(
                            "{}: keys Spate does not support (ignored): {}",
                            path.display(),
                            parsed.unsupported.join(", ")
                        );
                    }
                    parsed.config
                } else {
                    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
                }
            }
        };
        set(&mut config.data_dir, self.data_dir);
        set(&mut config.listen_host, self.listen_host);
        set(&mut config.port, self.port);
        set(&mut config.durability, self.durability);
        set(&mut config.shards, self.shards);
        set(&mut config.frame_bytes_max, self.frame_bytes_max);
        set(&mut config.tail_cache_bytes, self.tail_cache_bytes);
        set(&mut config.metrics_listen, self.metrics_listen);
        set(&mut config.node_id, self.node_id);
        set(&mut config.controller_quorum, self.controller_quorum);
        set(&mut config.replica_lag_time_max_ms, self.replica_lag_time_max_ms);
        set(&mut config.broker_heartbeat_interval_ms, self.broker_heartbeat_interval_ms);
        set(&mut config.broker_session_timeout_ms, self.broker_session_timeout_ms);
        set(&mut config.spin_before_park_us, self.spin_before_park_us);
        set(&mut config.listeners, self.listeners);
        if self.advertised_listeners.is_some() {
            config.advertised_listeners = self.advertised_listeners;
        }
        if self.shard_port_base.is_some() {
            config.shard_port_base = self.shard_port_base;
        }
        if self.advertised_host.is_some() {
            config.advertised_host = self.advertised_host;
        }
        if self.no_pin {
            config.pin_cores = false;
        }
        config.validate()?;
        Ok(config)
    }
}

fn init_logging(level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(level) => EnvFilter::new(level),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// Runs the broker until SIGTERM or SIGINT. Synchronous: the broker starts
/// its own pinned threads.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    init_logging(args.log_level.as_deref());
    // A panic on any of the broker's threads ends the process rather than
    // leave a zombie that heartbeats (see `fatal`).
    crate::fatal::abort_on_panic();
    let config = args.broker_config()?;
    spate_net::run(config)?;
    Ok(())
}

/// Overrides `slot` when a value was given.
fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *slot = value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = std::env::temp_dir().join(format!("spate-serve-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("spate.toml");
        std::fs::write(&file, "port = 9500\ndurability = \"never\"\nshards = 3\n").expect("write");
        let args = ServeArgs { config_file: Some(file), port: Some(9600), ..Default::default() };
        let config = args.broker_config().expect("valid");
        assert_eq!(config.port, 9600);
        assert_eq!(config.durability, "never");
        assert_eq!(config.shards, 3);
        assert_eq!(config.data_dir, PathBuf::from("spate-data"));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn bad_settings_are_one_clear_error() {
        let args = ServeArgs { durability: Some("sometimes".into()), ..Default::default() };
        let err = args.broker_config().expect_err("invalid");
        assert!(err.to_string().contains("durability"), "{err}");
        let dir = std::env::temp_dir().join(format!("spate-serve-test-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("spate.toml");
        std::fs::write(&file, "prot = 1\n").expect("write");
        let args = ServeArgs { config_file: Some(file), ..Default::default() };
        let err = format!("{:#}", args.broker_config().expect_err("unknown key"));
        assert!(err.contains("prot"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
