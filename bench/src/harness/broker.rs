//! The brokers under test: `spate serve` child processes on free ports,
//! with their data on the real disk. One broker (the default) runs alone,
//! without a controller quorum, pinned by its own shard placement; a
//! cluster of N runs N processes, each a Raft controller voter, started at
//! once (each waits for the quorum to register), placed on the cores the
//! suite gives each process.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long a clean stop may take before the broker is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// How the brokers are started; recorded in the report.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerSettings {
    /// The `spate` binary; empty: this process's own executable (when run
    /// as `spate bench`) or `spate` beside it.
    pub spate_bin: String,
    /// Brokers in the cluster. 1: one broker with no controller quorum,
    /// data in `data_dir`. More: node ids 1..=brokers, every one a
    /// controller voter on a free port, data in `data_dir/<node id>`.
    pub brokers: usize,
    /// Shards per broker.
    pub shards: usize,
    /// Each broker pins its shards to cores 0..shards itself (`spate
    /// serve` without `--no-pin`). Ignored when `cpus` is given; several
    /// brokers would all share cores 0..shards, so a cluster needs `cpus`
    /// or `pin = false`.
    pub pin: bool,
    /// Per broker (node 1 first), the cores its process may run on
    /// (`taskset -c`); the broker's own pinning is then off (`--no-pin`),
    /// so its shards, controller and other threads share those cores.
    /// Empty: `pin` decides.
    pub cpus: Vec<Vec<usize>>,
    pub tail_cache_bytes: usize,
    pub data_dir: PathBuf,
    /// Where the broker serves /metrics; empty: off. Only with one broker
    /// (each broker would need a port of its own).
    pub metrics_listen: String,
    /// Passed to `spate serve --spin-before-park-us`.
    pub spin_before_park_us: u64,
    /// Cluster timing, passed to `spate serve` when set (else its defaults).
    pub broker_session_timeout_ms: Option<u64>,
    pub broker_heartbeat_interval_ms: Option<u64>,
    pub replica_lag_time_max_ms: Option<u64>,
    /// Kafka's `ssl.cipher.suites` for the TLS listener (IANA names, in
    /// the broker's order of preference); empty: rustls's defaults in the
    /// client's order.
    pub ssl_cipher_suites: String,
    /// Set by the harness when a workload of the run asks for TLS: every
    /// broker then serves an SSL listener beside the PLAINTEXT one, with
    /// this certificate. Not a suite setting: the workloads' `tls` decides.
    #[serde(skip)]
    pub tls: Option<super::tls::TlsFiles>,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            spate_bin: String::new(),
            brokers: 1,
            shards: 1,
            pin: true,
            cpus: Vec::new(),
            tail_cache_bytes: 256 << 20,
            data_dir: PathBuf::from("target/bench-broker"),
            metrics_listen: String::new(),
            spin_before_park_us: 0,
            broker_session_timeout_ms: None,
            broker_heartbeat_interval_ms: None,
            replica_lag_time_max_ms: None,
            ssl_cipher_suites: String::new(),
            tls: None,
        }
    }
}

impl BrokerSettings {
    fn binary(&self) -> anyhow::Result<PathBuf> {
        if !self.spate_bin.is_empty() {
            return Ok(PathBuf::from(&self.spate_bin));
        }
        let me = std::env::current_exe().context("locating this executable")?;
        if me.file_name().is_some_and(|name| name == "spate") {
            return Ok(me);
        }
        let beside = me.with_file_name("spate");
        if beside.exists() {
            return Ok(beside);
        }
        bail!("cannot find the spate binary; build it (cargo build --release --bin spate) or set spate_bin")
    }

    pub fn check(&self) -> anyhow::Result<()> {
        if self.brokers == 0 || self.shards == 0 {
            bail!("broker: brokers and shards must be positive");
        }
        if !self.cpus.is_empty() && self.cpus.len() != self.brokers {
            bail!(
                "broker: cpus lists {} core sets for {} broker(s); give one per broker",
                self.cpus.len(),
                self.brokers
            );
        }
        if self.cpus.iter().any(Vec::is_empty) {
            bail!("broker: every core set in cpus needs at least one core");
        }
        if self.brokers > 1 && self.pin && self.cpus.is_empty() {
            bail!(
                "broker: {} brokers pinned by their own shard placement would all sit on cores 0..{}; \
                 give cpus (one core list per broker) or pin = false",
                self.brokers,
                self.shards
            );
        }
        if self.brokers > 1 && !self.metrics_listen.is_empty() {
            bail!("broker: metrics_listen works with one broker only");
        }
        Ok(())
    }

    /// Where broker `index` (0-based) keeps its data.
    fn node_dir(&self, index: usize) -> PathBuf {
        if self.brokers == 1 { self.data_dir.clone() } else { self.data_dir.join((index + 1).to_string()) }
    }

    /// Where each broker runs, for the report.
    pub fn placement(&self) -> String {
        if !self.cpus.is_empty() {
            let each: Vec<String> =
                self.cpus.iter().enumerate().map(|(i, cpus)| format!("broker {} on cores {cpus:?}", i + 1)).collect();
            return format!("{} (taskset; shards not pinned inside)", each.join(", "));
        }
        if self.pin { format!("pinned to {:?}", (0..self.shards).collect::<Vec<_>>()) } else { "not pinned".into() }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[derive(Debug)]
pub struct BrokerProcess {
    child: Child,
    pub node_id: i32,
    pub port: u16,
    /// The PLAINTEXT Kafka listener's port, from "Kafka protocol on
    /// PLAINTEXT://HOST:PORT" in the start line (None if the line has none).
    pub kafka_port: Option<u16>,
    /// The SSL listener's port, from the same list.
    pub ssl_port: Option<u16>,
}

impl BrokerProcess {
    /// Starts broker `index` (0-based); `quorum` is the controller quorum
    /// of a cluster (None: a broker alone). Returns before it listens.
    fn spawn(settings: &BrokerSettings, index: usize, quorum: Option<&str>) -> anyhow::Result<(Child, ChildStdout)> {
        let binary = settings.binary()?;
        let mut command = match settings.cpus.get(index) {
            Some(cpus) => {
                let list: Vec<String> = cpus.iter().map(usize::to_string).collect();
                let mut command = Command::new("taskset");
                command.arg("-c").arg(list.join(",")).arg(&binary);
                command
            }
            None => Command::new(&binary),
        };
        command
            .args(["serve", "--port", "0", "--log-level", "warn"])
            .arg("--metrics-listen")
            .arg(&settings.metrics_listen)
            .arg("--shards")
            .arg(settings.shards.to_string())
            .arg("--tail-cache-bytes")
            .arg(settings.tail_cache_bytes.to_string())
            .arg("--data-dir")
            .arg(settings.node_dir(index))
            .arg("--spin-before-park-us")
            .arg(settings.spin_before_park_us.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // Free Kafka ports: never share 9092 with a broker already there.
        match &settings.tls {
            None => {
                command.args(["--listeners", "PLAINTEXT://127.0.0.1:0"]);
            }
            Some(tls) => {
                command.arg("--config").arg(&tls.broker_config);
                command.args(["--listeners", "PLAINTEXT://127.0.0.1:0,SSL://127.0.0.1:0"]);
            }
        }
        if let Some(quorum) = quorum {
            command.arg("--node-id").arg((index + 1).to_string()).arg("--controller-quorum").arg(quorum);
        }
        for (flag, value) in [
            ("--broker-session-timeout-ms", settings.broker_session_timeout_ms),
            ("--broker-heartbeat-interval-ms", settings.broker_heartbeat_interval_ms),
            ("--replica-lag-time-max-ms", settings.replica_lag_time_max_ms),
        ] {
            if let Some(value) = value {
                command.arg(flag).arg(value.to_string());
            }
        }
        if !settings.pin || !settings.cpus.is_empty() {
            command.arg("--no-pin");
        }
        // taskset execs the broker: the child's pid is the broker's.
        let mut child = command.spawn().with_context(|| format!("starting {}", binary.display()))?;
        let stdout = child.stdout.take().context("broker stdout")?;
        Ok((child, stdout))
    }

    /// Waits for the broker's "listening on" line.
    fn ready(mut child: Child, stdout: ChildStdout, index: usize) -> anyhow::Result<Self> {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).context("reading the broker's first line")?;
        let port = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|addr| addr.rsplit(':').next())
            .and_then(|port| port.parse().ok());
        let Some(port) = port else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("broker {} did not start: {line:?}", index + 1);
        };
        Ok(BrokerProcess {
            child,
            node_id: index as i32 + 1,
            port,
            kafka_port: kafka_port(&line, "PLAINTEXT"),
            ssl_port: kafka_port(&line, "SSL"),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The Kafka listener's address.
    pub fn kafka_addr(&self) -> anyhow::Result<String> {
        let port = self.kafka_port.with_context(|| {
            format!("broker {} named no Kafka listener in its start line (\"Kafka protocol on ...\")", self.node_id)
        })?;
        Ok(format!("127.0.0.1:{port}"))
    }

    /// The SSL listener's address.
    pub fn ssl_addr(&self) -> anyhow::Result<String> {
        let port = self.ssl_port.with_context(|| {
            format!("broker {} named no SSL listener in its start line (\"SSL://...\")", self.node_id)
        })?;
        Ok(format!("127.0.0.1:{port}"))
    }

    fn terminate(&self) -> anyhow::Result<()> {
        let status = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status()?;
        if !status.success() {
            bail!("kill -TERM {} failed", self.child.id());
        }
        Ok(())
    }

    /// Waits for the exit a `terminate` asked for, until `deadline`; then
    /// kills it and says so.
    fn wait_until(&mut self, deadline: Instant) -> anyhow::Result<()> {
        loop {
            if let Some(exit) = self.child.try_wait()? {
                if !exit.success() {
                    bail!("broker {} exited with {exit}", self.node_id);
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("broker {} did not stop within {STOP_TIMEOUT:?} of SIGTERM; killed", self.node_id);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The port of listener `name` in "..., Kafka protocol on
/// PLAINTEXT://127.0.0.1:PORT, SSL://127.0.0.1:PORT, data in ..." in a
/// broker's start line.
fn kafka_port(line: &str, name: &str) -> Option<u16> {
    let listeners = line.split("Kafka protocol on ").nth(1)?;
    listeners
        .split(',')
        .map(str::trim)
        .take_while(|entry| entry.contains("://"))
        .find_map(|entry| entry.strip_prefix(name)?.strip_prefix("://"))
        .and_then(|addr| addr.rsplit(':').next())
        .and_then(|port| port.parse().ok())
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The brokers of one workload.
#[derive(Debug)]
pub struct Cluster {
    pub brokers: Vec<BrokerProcess>,
    settings: BrokerSettings,
    /// The controller quorum (id@127.0.0.1:port,...); None for one broker.
    quorum: Option<String>,
}

impl Cluster {
    /// Starts the brokers on empty data directories. A cluster's controller
    /// ports are found free and released before the brokers bind them, so
    /// another process may take one in between: a cluster that does not
    /// start is tried again on new ports (twice).
    pub fn start_fresh(settings: &BrokerSettings) -> anyhow::Result<Self> {
        settings.check()?;
        let mut attempt = 1;
        loop {
            let _ = std::fs::remove_dir_all(&settings.data_dir);
            let quorum = if settings.brokers == 1 {
                None
            } else {
                let entries: anyhow::Result<Vec<String>> =
                    (1..=settings.brokers).map(|node| Ok(format!("{node}@127.0.0.1:{}", free_port()?))).collect();
                Some(entries?.join(","))
            };
            match Self::start(settings, quorum) {
                Err(err) if settings.brokers > 1 && attempt < 3 => {
                    eprintln!("the cluster did not start ({err:#}); again on new ports");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Every broker spawned before any is waited for: a voter waits for
    /// the quorum to form before it listens.
    fn start(settings: &BrokerSettings, quorum: Option<String>) -> anyhow::Result<Self> {
        let mut spawned = Vec::new();
        for index in 0..settings.brokers {
            spawned.push(BrokerProcess::spawn(settings, index, quorum.as_deref())?);
        }
        let mut brokers = Vec::new();
        let mut failed = None;
        for (index, (child, stdout)) in spawned.into_iter().enumerate() {
            match BrokerProcess::ready(child, stdout, index) {
                Ok(broker) => brokers.push(broker),
                Err(err) => failed = failed.or(Some(err)),
            }
        }
        if let Some(err) = failed {
            return Err(err);
        }
        Ok(Cluster { brokers, settings: settings.clone(), quorum })
    }

    pub fn pids(&self) -> Vec<u32> {
        self.brokers.iter().map(BrokerProcess::pid).collect()
    }

    /// The certificate the brokers serve TLS with, if they do.
    pub fn tls(&self) -> Option<&super::tls::TlsFiles> {
        self.settings.tls.as_ref()
    }

    pub fn bootstrap(&self) -> Vec<String> {
        self.brokers.iter().map(BrokerProcess::addr).collect()
    }

    /// SIGTERM to every broker, then wait for all: a clean stop (every log
    /// flushed and closed).
    pub fn stop(mut self) -> anyhow::Result<()> {
        for broker in &self.brokers {
            broker.terminate()?;
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        let mut first_error = None;
        for broker in &mut self.brokers {
            if let Err(err) = broker.wait_until(deadline) {
                first_error = first_error.or(Some(err));
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// A clean stop and start on the same data (and controller ports):
    /// empties the tail caches, so the next reads come from disk.
    pub fn restart(self) -> anyhow::Result<Self> {
        let (settings, quorum) = (self.settings.clone(), self.quorum.clone());
        self.stop()?;
        Self::start(&settings, quorum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kafka_port_is_read_from_the_start_line() {
        let line = "spate broker 1 listening on 127.0.0.1:40001 (shards 1: ports [40002]), Kafka protocol on PLAINTEXT://127.0.0.1:40003, SSL://127.0.0.1:40004, data in target/bench-broker; without authentication on native, PLAINTEXT\n";
        assert_eq!(kafka_port(line, "PLAINTEXT"), Some(40003));
        assert_eq!(kafka_port(line, "SSL"), Some(40004));
        assert_eq!(kafka_port(line, "SASL_SSL"), None);
        let plain = "spate broker 1 listening on 127.0.0.1:40001 (shards 1: ports [40002]), Kafka protocol on PLAINTEXT://127.0.0.1:40003, data in target/bench-broker; without authentication on native, PLAINTEXT\n";
        assert_eq!((kafka_port(plain, "PLAINTEXT"), kafka_port(plain, "SSL")), (Some(40003), None));
        assert_eq!(
            kafka_port("spate broker 1 listening on 127.0.0.1:40001 (shards 1: ports [40002]), data in x", "PLAINTEXT"),
            None
        );
    }
}
