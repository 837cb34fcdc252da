//! Real broker processes (`spate serve`) on free loopback ports, for
//! end-to-end tests.
#![allow(dead_code)]

pub mod cluster;
pub mod postgres;
pub mod tls;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const SPATE: &str = env!("CARGO_BIN_EXE_spate");

#[path = "../../../net/tests/common/ports.rs"]
mod ports;
pub use ports::free_port_below_ephemeral;
mod test_dir;
pub use test_dir::TestDir;

/// The test's data directory, created empty and removed when the test
/// passes (`test_dir.rs`).
pub fn data_dir(name: &str) -> TestDir {
    let dir = TestDir::fresh(&PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e"), name);
    std::fs::create_dir_all(&dir).expect("test dir");
    dir
}

/// A `spate serve` child process.
pub struct Broker {
    pub child: Child,
    pub port: u16,
    /// Where it serves the Kafka protocol.
    pub kafka_port: u16,
    pub data_dir: PathBuf,
    pub shards: usize,
}

impl Broker {
    /// Starts a broker on a free port and waits until it listens.
    pub fn start(data_dir: &Path, shards: usize) -> Broker {
        Broker::start_with(data_dir, shards, 0, &[])
    }

    /// Starts a broker on `port` (0: a free one) with more `serve` flags.
    /// A port is picked below the ephemeral range, so that a client
    /// connection's local port (other tests run alongside) cannot take it
    /// while the broker is down for a restart; a start that still finds its
    /// port taken is tried again (on another port if any will do).
    pub fn start_with(data_dir: &Path, shards: usize, port: u16, extra: &[&str]) -> Broker {
        for _ in 0..5 {
            let chosen = if port == 0 { free_port_below_ephemeral() } else { port };
            if let Some(broker) = Broker::try_start(data_dir, shards, chosen, extra) {
                return broker;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        panic!("spate serve did not start on {} (port {port}, 5 attempts)", data_dir.display());
    }

    fn try_start(data_dir: &Path, shards: usize, port: u16, extra: &[&str]) -> Option<Broker> {
        // A Kafka listener of its own, unless the test names one.
        let listeners = if extra.contains(&"--listeners") {
            Vec::new()
        } else {
            vec!["--listeners".to_string(), format!("PLAINTEXT://127.0.0.1:{}", free_port_below_ephemeral())]
        };
        let mut child = Command::new(SPATE)
            .args(["serve", "--metrics-listen", "", "--no-pin", "--log-level", "warn"])
            .arg("--port")
            .arg(port.to_string())
            .args(&listeners)
            .args(extra)
            .arg("--shards")
            .arg(shards.to_string())
            .arg("--data-dir")
            .arg(data_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn spate serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read the listening line");
        // "spate broker 0 listening on 127.0.0.1:PORT (shards ...".
        let Some(port) = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|addr| addr.rsplit(':').next())
            .and_then(|port| port.parse().ok())
        else {
            // It exited without listening (its port taken, most likely).
            let _ = child.kill();
            let _ = child.wait();
            return None;
        };
        // "..., Kafka protocol on 127.0.0.1:PORT, data in ...".
        let kafka_port = line
            .split("Kafka protocol on ")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .and_then(|addr| addr.rsplit(':').next())
            .and_then(|port| port.parse().ok())
            .unwrap_or(0);
        Some(Broker { child, port, kafka_port, data_dir: data_dir.to_path_buf(), shards })
    }

    /// The Kafka listener's bootstrap address.
    pub fn kafka_addr(&self) -> String {
        format!("127.0.0.1:{}", self.kafka_port)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) {
        let status = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status().expect("kill");
        assert!(status.success());
        let exit = self.child.wait().expect("wait");
        assert!(exit.success(), "broker exited with {exit}");
    }

    /// kill -9: no chance to flush or close anything.
    pub fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }

    /// kill -9, then start again on the same directory.
    pub fn kill9_and_restart(&mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
        *self = Broker::start(&self.data_dir.clone(), self.shards);
    }

    /// kill -9, then start again on the same directory and `port` with
    /// `extra` flags.
    pub fn kill9_and_restart_on(&mut self, port: u16, extra: &[&str]) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
        *self = Broker::start_with(&self.data_dir.clone(), self.shards, port, extra);
    }

    pub fn restart(self) -> Broker {
        let (dir, shards) = (self.data_dir.clone(), self.shards);
        self.stop();
        Broker::start(&dir, shards)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // A failed test must not leave a broker running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the CLI with `args`, feeding `stdin`; returns (status ok, stdout,
/// stderr).
pub fn cli(args: &[&str], stdin: Option<&[u8]>) -> (bool, String, String) {
    use std::io::Write;
    let mut child = Command::new(SPATE)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn spate");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let output = child.wait_with_output().expect("wait");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

pub const SETTLE: Duration = Duration::from_millis(100);

/// A disk made slow for some processes, as a noisy neighbour would: a
/// cgroup (v1 blkio, or v2 io) that throttles writes to the block device
/// holding a directory. Processes added to it write at most
/// `write_bytes_per_s`; their children and restarted processes are not in
/// it. Needs root and a cgroup hierarchy with the controller; `new`
/// answers None (and says why) where the machine has neither.
pub struct SlowDisk {
    dir: PathBuf,
    procs: PathBuf,
}

impl SlowDisk {
    pub fn new(data: &Path, write_bytes_per_s: u64) -> Option<SlowDisk> {
        use std::os::unix::fs::MetadataExt;
        let dev = std::fs::metadata(data).ok()?.dev();
        let (major, minor) = (((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff), (dev & 0xff) | ((dev >> 12) & !0xff));
        // Throttling applies to whole disks: a partition's parent is its disk.
        let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
        let device = if sys.join("partition").exists() {
            std::fs::read_to_string(sys.join("../dev")).ok()?.trim().to_string()
        } else {
            format!("{major}:{minor}")
        };
        let name = format!("spate-e2e-{}", std::process::id());
        let v1 = PathBuf::from("/sys/fs/cgroup/blkio");
        let v2 = PathBuf::from("/sys/fs/cgroup");
        let attempt = if v1.join("blkio.throttle.write_bps_device").exists() {
            let dir = v1.join(&name);
            std::fs::create_dir_all(&dir)
                .and_then(|()| {
                    std::fs::write(dir.join("blkio.throttle.write_bps_device"), format!("{device} {write_bytes_per_s}"))
                })
                .map(|()| dir)
        } else {
            let dir = v2.join(&name);
            std::fs::write(v2.join("cgroup.subtree_control"), "+io")
                .and_then(|()| std::fs::create_dir_all(&dir))
                .and_then(|()| std::fs::write(dir.join("io.max"), format!("{device} wbps={write_bytes_per_s}")))
                .map(|()| dir)
        };
        match attempt {
            Ok(dir) => Some(SlowDisk { procs: dir.join("cgroup.procs"), dir }),
            Err(err) => {
                eprintln!("no write throttling on this machine (cgroup blkio/io for {device}): {err}");
                None
            }
        }
    }

    /// Throttles `pid`'s writes from now on.
    pub fn add(&self, pid: u32) {
        std::fs::write(&self.procs, pid.to_string()).expect("move a process into the throttled cgroup");
    }
}

impl Drop for SlowDisk {
    fn drop(&mut self) {
        // Only an empty cgroup can go; its members are dead by now.
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The segment files of `topic`'s `partition` under a broker's data
/// directory, oldest first.
pub fn segments(data: &Path, topic: &str, partition: u32) -> Vec<PathBuf> {
    let topics = data.join("topics");
    let topic_dir = std::fs::read_dir(&topics)
        .expect("topics dir")
        .map(|entry| entry.expect("entry").path())
        .find(|path| path.file_name().is_some_and(|name| name.to_string_lossy().starts_with(&format!("{topic}."))))
        .expect("the topic's directory");
    let mut logs: Vec<PathBuf> = std::fs::read_dir(topic_dir.join(partition.to_string()))
        .expect("partition dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .collect();
    logs.sort();
    logs
}

pub fn flip_byte(path: &Path, position: u64) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().read(true).write(true).open(path).expect("open segment");
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, position).expect("read byte");
    byte[0] ^= 0x40;
    file.write_all_at(&byte, position).expect("write byte");
    file.sync_all().expect("sync");
}
