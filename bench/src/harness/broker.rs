//! The broker under test: a `spate serve` child process on free ports,
//! pinned by its own shard placement, with its data on the real disk.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};

#[derive(Debug)]
pub struct BrokerProcess {
    child: Child,
    pub port: u16,
    settings: BrokerSettings,
}

/// How the broker is started; recorded in the report.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerSettings {
    /// The `spate` binary; empty: this process's own executable (when run
    /// as `spate bench`) or `spate` beside it.
    pub spate_bin: String,
    pub shards: usize,
    /// Shards are pinned to cores 0..shards.
    pub pin: bool,
    pub tail_cache_bytes: usize,
    pub data_dir: PathBuf,
    /// Where the broker serves /metrics; empty: off.
    pub metrics_listen: String,
    /// Passed to `spate serve --spin-before-park-us`.
    pub spin_before_park_us: u64,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            spate_bin: String::new(),
            shards: 1,
            pin: true,
            tail_cache_bytes: 256 << 20,
            data_dir: PathBuf::from("target/bench-broker"),
            metrics_listen: String::new(),
            spin_before_park_us: 0,
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
}

impl BrokerProcess {
    /// Starts a broker on an empty data directory.
    pub fn start_fresh(settings: &BrokerSettings) -> anyhow::Result<Self> {
        let _ = std::fs::remove_dir_all(&settings.data_dir);
        Self::start(settings)
    }

    pub fn start(settings: &BrokerSettings) -> anyhow::Result<Self> {
        let binary = settings.binary()?;
        let mut command = Command::new(&binary);
        command
            .args(["serve", "--port", "0", "--log-level", "warn"])
            .arg("--metrics-listen")
            .arg(&settings.metrics_listen)
            .arg("--shards")
            .arg(settings.shards.to_string())
            .arg("--tail-cache-bytes")
            .arg(settings.tail_cache_bytes.to_string())
            .arg("--data-dir")
            .arg(&settings.data_dir)
            .arg("--spin-before-park-us")
            .arg(settings.spin_before_park_us.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if !settings.pin {
            command.arg("--no-pin");
        }
        let mut child = command.spawn().with_context(|| format!("starting {}", binary.display()))?;
        let stdout = child.stdout.take().context("broker stdout")?;
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
            bail!("the broker did not start: {line:?}");
        };
        Ok(BrokerProcess { child, port, settings: settings.clone() })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGTERM and wait: a clean stop (every log flushed and closed).
    pub fn stop(mut self) -> anyhow::Result<()> {
        let status = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        let exit = self.child.wait()?;
        if !exit.success() {
            bail!("broker exited with {exit}");
        }
        Ok(())
    }

    /// A clean stop and start on the same data: empties the tail cache, so
    /// the next reads come from disk.
    pub fn restart(self) -> anyhow::Result<Self> {
        let settings = self.settings.clone();
        self.stop()?;
        Self::start(&settings)
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
