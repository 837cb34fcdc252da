//! Apache Kafka beside Spate: one Kafka 4.4 node (KRaft, broker and
//! controller in one process) started from the jars `compat/install.sh`
//! puts in `target/compat/kafka-libs/`, as `compat/kafka/start.sh` starts
//! it, but pinned (taskset) to the broker's core, with Kafka's own start
//! script's heap and JVM options, and its data under `target/`. Its
//! log.flush settings stay at Kafka's defaults: it acknowledges once a
//! batch is in the page cache and never fsyncs on the way.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long a clean stop may take before Kafka is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the start waits look at the log.
const POLL: Duration = Duration::from_millis(200);

/// Where and how Apache Kafka runs; recorded in the report.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApacheKafkaSettings {
    /// The directory of Kafka's jars (`compat/install.sh` fills it).
    pub libs: PathBuf,
    /// The cores Kafka's JVM may run on (`taskset -c`): the broker's core,
    /// as Spate's broker is pinned.
    pub cpus: Vec<usize>,
    /// The JVM heap (-Xms and -Xmx), as Kafka's start script sets it.
    pub heap_mib: u64,
    /// Its data and logs; removed after each workload.
    pub data_dir: PathBuf,
    pub java: String,
    /// A cold JVM on a busy 2-core machine needs tens of seconds.
    pub start_timeout_s: u64,
}

impl Default for ApacheKafkaSettings {
    fn default() -> Self {
        ApacheKafkaSettings {
            libs: PathBuf::from("target/compat/kafka-libs"),
            cpus: vec![0],
            heap_mib: 1024,
            data_dir: PathBuf::from("target/bench-kafka"),
            java: "java".into(),
            start_timeout_s: 120,
        }
    }
}

impl ApacheKafkaSettings {
    /// The Kafka jar there, or an error saying how to get it.
    pub fn check(&self) -> anyhow::Result<String> {
        let jar = std::fs::read_dir(&self.libs).ok().and_then(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .find(|name| name.starts_with("kafka_2.13-") && name.ends_with(".jar"))
        });
        let Some(jar) = jar else {
            bail!(
                "apache_kafka: no kafka_2.13-*.jar in {}; run compat/install.sh first (it fetches Apache Kafka's jars \
                 into target/compat/kafka-libs), or point [apache_kafka] libs at such a directory",
                self.libs.display()
            );
        };
        if self.cpus.is_empty() || self.heap_mib == 0 {
            bail!("apache_kafka: cpus needs a core and heap_mib must be positive");
        }
        Ok(jar.trim_start_matches("kafka_").trim_end_matches(".jar").to_string())
    }

    /// What runs, for the report.
    pub fn describe(&self) -> String {
        format!(
            "Apache Kafka {} (KRaft, one combined broker+controller node), JVM on cores {:?} (taskset), heap {} MiB, G1 as Kafka's start script, data in {}; log.flush.* at Kafka's defaults (no fsync before an ack: acknowledged from the page cache); consume_disk restarts it, but its reads go through the page cache, which a restart keeps",
            self.check().unwrap_or_else(|_| "?".into()),
            self.cpus,
            self.heap_mib,
            self.data_dir.display()
        )
    }

    fn properties(&self, dir: &Path, port: u16, controller_port: u16) -> String {
        // As compat/kafka/start.sh writes it, minus the group settings the
        // bench does not use; nothing about flushing, so Kafka's defaults
        // hold (log.flush.interval.messages and .ms unset).
        format!(
            "process.roles=broker,controller\n\
             node.id=1\n\
             controller.quorum.voters=1@127.0.0.1:{controller_port}\n\
             listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}\n\
             advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n\
             controller.listener.names=CONTROLLER\n\
             inter.broker.listener.name=PLAINTEXT\n\
             listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT\n\
             log.dirs={}\n\
             num.partitions=1\n\
             default.replication.factor=1\n\
             offsets.topic.replication.factor=1\n\
             transaction.state.log.replication.factor=1\n\
             transaction.state.log.min.isr=1\n\
             share.coordinator.state.topic.replication.factor=1\n\
             share.coordinator.state.topic.min.isr=1\n\
             group.initial.rebalance.delay.ms=0\n",
            dir.join("data").display()
        )
    }

    fn java_command(&self, dir: &Path) -> Command {
        let cpus: Vec<String> = self.cpus.iter().map(usize::to_string).collect();
        let mut command = Command::new("taskset");
        command.arg("-c").arg(cpus.join(",")).arg(&self.java);
        command
            .arg(format!("-Xms{}m", self.heap_mib))
            .arg(format!("-Xmx{}m", self.heap_mib))
            // KAFKA_JVM_PERFORMANCE_OPTS of kafka-run-class.sh.
            .args([
                "-server",
                "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20",
                "-XX:InitiatingHeapOccupancyPercent=35",
                "-XX:+ExplicitGCInvokesConcurrent",
                "-Djava.awt.headless=true",
            ])
            .arg(format!("-Dlog4j2.configurationFile={}", dir.join("log4j2.properties").display()))
            .arg(format!("-Dkafka.logs.dir={}", dir.display()))
            .arg("-cp")
            .arg(format!("{}/*", self.libs.display()));
        command
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A running Kafka node.
#[derive(Debug)]
pub struct KafkaProcess {
    child: Child,
    settings: ApacheKafkaSettings,
    dir: PathBuf,
    pub port: u16,
    controller_port: u16,
}

impl KafkaProcess {
    /// Formats an empty data directory and starts Kafka on free ports.
    pub fn start_fresh(settings: &ApacheKafkaSettings) -> anyhow::Result<Self> {
        settings.check()?;
        let _ = std::fs::remove_dir_all(&settings.data_dir);
        std::fs::create_dir_all(&settings.data_dir)
            .with_context(|| format!("creating {}", settings.data_dir.display()))?;
        let dir = std::fs::canonicalize(&settings.data_dir)?;
        let (port, controller_port) = (free_port()?, free_port()?);
        std::fs::write(dir.join("server.properties"), settings.properties(&dir, port, controller_port))?;
        std::fs::write(
            dir.join("log4j2.properties"),
            format!(
                "status = warn\nappender.file.type = File\nappender.file.name = file\nappender.file.fileName = {}\n\
                 appender.file.layout.type = PatternLayout\nappender.file.layout.pattern = [%d] %p %m (%c)%n\n\
                 rootLogger.level = info\nrootLogger.appenderRef.file.ref = file\n",
                dir.join("server.log").display()
            ),
        )?;
        let output = settings
            .java_command(&dir)
            .args(["kafka.tools.StorageTool", "format"])
            // In one argument: an id may start with '-', which would read
            // as an option (the smoke run's first format failed on one).
            .arg(format!("--cluster-id={}", random_cluster_id()))
            .arg("-c")
            .arg(dir.join("server.properties"))
            .output()
            .context("running Kafka's StorageTool format")?;
        if !output.status.success() {
            bail!(
                "Kafka's storage format failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Self::start(settings.clone(), dir, port, controller_port)
    }

    fn start(settings: ApacheKafkaSettings, dir: PathBuf, port: u16, controller_port: u16) -> anyhow::Result<Self> {
        std::fs::write(dir.join("server.log"), "")?;
        let stdout = std::fs::File::create(dir.join("stdout.log"))?;
        let child = settings
            .java_command(&dir)
            .arg("kafka.Kafka")
            .arg(dir.join("server.properties"))
            .stdin(Stdio::null())
            .stdout(stdout.try_clone()?)
            .stderr(stdout)
            .spawn()
            .context("starting Apache Kafka (java)")?;
        // taskset execs java: the child's pid is the JVM's.
        let mut kafka = KafkaProcess { child, settings, dir, port, controller_port };
        kafka.wait_started()?;
        Ok(kafka)
    }

    /// Waits for "Kafka Server started" in its log (it then listens).
    fn wait_started(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(self.settings.start_timeout_s);
        let log = self.dir.join("server.log");
        loop {
            let mut text = String::new();
            if let Ok(mut file) = std::fs::File::open(&log) {
                let _ = file.read_to_string(&mut text);
            }
            if text.contains("Kafka Server started") {
                return Ok(());
            }
            if let Some(exit) = self.child.try_wait()? {
                bail!("Apache Kafka exited during its start ({exit}); see {} and stdout.log", log.display());
            }
            if Instant::now() >= deadline {
                bail!("Apache Kafka not started within {} s; see {}", self.settings.start_timeout_s, log.display());
            }
            std::thread::sleep(POLL);
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGTERM (a controlled shutdown), then wait; killed after
    /// `STOP_TIMEOUT`.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let status = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status()?;
        if !status.success() {
            bail!("kill -TERM {} (Apache Kafka) failed", self.child.id());
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            // A JVM stopped by SIGTERM exits with 143: a clean stop.
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("Apache Kafka did not stop within {STOP_TIMEOUT:?} of SIGTERM; killed");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A clean stop and a start on the same data and ports. Kafka reads
    /// through the page cache, which a restart does not empty: unlike
    /// Spate's O_DIRECT reads, what it reads next may come from memory.
    pub fn restart(self) -> anyhow::Result<Self> {
        let (settings, dir, port, controller_port) =
            (self.settings.clone(), self.dir.clone(), self.port, self.controller_port);
        self.stop()?;
        Self::start(settings, dir, port, controller_port)
    }
}

impl Drop for KafkaProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Kafka cluster id: 16 random bytes in URL-safe base64 without padding
/// (what `kafka-storage random-uuid` prints), without a JVM start for it.
fn random_cluster_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut seed = super::load::now_ns() ^ u64::from(std::process::id()).rotate_left(32);
    let bytes: Vec<u8> = (0..16)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 24) as u8
        })
        .collect();
    let mut id = String::new();
    for group in bytes.chunks(3) {
        let n = group.iter().enumerate().fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        // 3 bytes give 4 characters, the last single byte 2.
        let chars = if group.len() == 3 { 4 } else { 2 };
        id.extend((0..chars).map(|i| ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char));
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_id_is_sixteen_bytes_of_url_safe_base64() {
        let id = random_cluster_id();
        assert_eq!(id.len(), 22);
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{id}");
        // The last character holds the last byte's two low bits, zero-padded.
        assert!(matches!(id.as_bytes()[21], b'A' | b'Q' | b'g' | b'w'), "{id}");
    }

    #[test]
    fn without_kafkas_jars_the_error_names_compat_install() {
        let settings = ApacheKafkaSettings { libs: PathBuf::from("target/no-such-kafka-libs"), ..Default::default() };
        let err = settings.check().expect_err("no jars").to_string();
        assert!(err.contains("compat/install.sh"), "{err}");
    }
}
