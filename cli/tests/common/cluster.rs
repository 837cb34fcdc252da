//! Three `spate serve` processes on loopback, each a controller voter,
//! for the replication tests.

use super::{Broker, TestDir, data_dir};

/// Short enough for quick failovers, long enough that a busy CI machine
/// does not fence live brokers.
pub const FLAGS_TIMING: [&str; 6] = [
    "--broker-session-timeout-ms",
    "2500",
    "--broker-heartbeat-interval-ms",
    "250",
    "--replica-lag-time-max-ms",
    "2500",
];

/// Controller ports are bound again at every restart too: the same range
/// as brokers' (see `free_port_below_ephemeral`).
pub fn free_port() -> u16 {
    super::free_port_below_ephemeral()
}

pub struct Cluster {
    pub brokers: Vec<Broker>,
    pub flags: Vec<Vec<String>>,
    /// Dropped after the brokers (fields drop in order): removed when the
    /// test passes.
    dirs: Vec<TestDir>,
}

impl Cluster {
    /// Three brokers, each a controller voter, started at once (each waits
    /// for a quorum to register).
    pub fn start(name: &str) -> Cluster {
        Cluster::start_with_quorums(name, || {
            let controller_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
            let quorum: Vec<String> =
                controller_ports.iter().enumerate().map(|(i, port)| format!("{}@127.0.0.1:{port}", i + 1)).collect();
            vec![quorum.join(","); 3]
        })
    }

    /// `quorums()[i]` is node i+1's --controller-quorum: the voters must
    /// agree on ids, and each node binds its own entry, but a node may reach
    /// the others through other addresses (a fault proxy). A free port
    /// picked for a controller can be taken by another test's broker before
    /// ours binds it: then the start is tried again with new ports.
    pub fn start_with_quorums(name: &str, quorums: impl Fn() -> Vec<String>) -> Cluster {
        Cluster::start_with(name, quorums, |_| Vec::new())
    }

    /// Three brokers whose Kafka listeners keep their ports across
    /// restarts (Kafka clients bootstrap from them).
    pub fn start_with_kafka_listeners(name: &str) -> Cluster {
        let quorums = || {
            let controller_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
            let quorum: Vec<String> =
                controller_ports.iter().enumerate().map(|(i, port)| format!("{}@127.0.0.1:{port}", i + 1)).collect();
            vec![quorum.join(","); 3]
        };
        Cluster::start_with(name, quorums, |_| {
            vec!["--listeners".to_string(), format!("PLAINTEXT://127.0.0.1:{}", free_port())]
        })
    }

    /// `start_with_quorums`, with `extra(i)` appended to node i+1's flags.
    pub fn start_with(name: &str, quorums: impl Fn() -> Vec<String>, extra: impl Fn(usize) -> Vec<String>) -> Cluster {
        for attempt in 1..=3 {
            let flags: Vec<Vec<String>> = quorums()
                .into_iter()
                .enumerate()
                .map(|(i, quorum)| {
                    let mut flags =
                        vec!["--node-id".to_string(), (i + 1).to_string(), "--controller-quorum".into(), quorum];
                    flags.extend(FLAGS_TIMING.iter().map(|s| s.to_string()));
                    flags.extend(extra(i));
                    flags
                })
                .collect();
            let dirs: Vec<TestDir> = (0..flags.len()).map(|i| data_dir(&format!("{name}-{}", i + 1))).collect();
            let starting: Vec<_> = (0..flags.len())
                .map(|i| {
                    let dir = dirs[i].to_path_buf();
                    let flags = flags[i].clone();
                    std::thread::spawn(move || {
                        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
                        Broker::start_with(&dir, 1, 0, &flags)
                    })
                })
                .collect();
            let started: Vec<_> = starting.into_iter().map(|t| t.join()).collect();
            if started.iter().all(Result::is_ok) {
                let brokers = started.into_iter().map(|b| b.expect("checked")).collect();
                return Cluster { brokers, flags, dirs };
            }
            // Dropping the started brokers kills them.
            eprintln!("cluster start attempt {attempt} failed (a port was taken?); retrying");
        }
        panic!("the cluster did not start in 3 attempts");
    }

    pub fn bootstrap(&self) -> Vec<String> {
        self.brokers.iter().map(Broker::addr).collect()
    }

    /// The Kafka listeners, as a Kafka client's bootstrap.servers.
    pub fn kafka_bootstrap(&self) -> String {
        self.brokers.iter().map(Broker::kafka_addr).collect::<Vec<_>>().join(",")
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`) to a broker: a process that
    /// stops answering without closing anything (a long GC pause, a VM
    /// migration), then resumes where it was.
    pub fn pause(&self, node: i32, paused: bool) {
        let signal = if paused { "-STOP" } else { "-CONT" };
        let pid = self.brokers[(node - 1) as usize].child.id().to_string();
        let status = std::process::Command::new("kill").args([signal, &pid]).status().expect("kill");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// kill -9, then start again on the same directory and port (as an
    /// operator's restart would: clients keep their bootstrap addresses).
    pub fn kill9_and_restart(&mut self, node: i32) {
        let index = (node - 1) as usize;
        let flags: Vec<&str> = self.flags[index].iter().map(String::as_str).collect();
        let port = self.brokers[index].port;
        self.brokers[index].kill9_and_restart_on(port, &flags);
    }

    /// kill -9, leaving the slot to `restart`.
    pub fn kill9(&mut self, node: i32) {
        let broker = &mut self.brokers[(node - 1) as usize];
        broker.child.kill().expect("SIGKILL");
        let _ = broker.child.wait();
    }

    /// Starts a killed broker again on its data directory and port.
    pub fn restart(&mut self, node: i32) {
        let index = (node - 1) as usize;
        let flags: Vec<&str> = self.flags[index].iter().map(String::as_str).collect();
        let (dir, port) = (self.brokers[index].data_dir.clone(), self.brokers[index].port);
        self.brokers[index] = Broker::start_with(&dir, 1, port, &flags);
    }

    /// kill -9 of every broker at once: the signals go out back to back,
    /// before any is waited for (an OOM killer, a bad deploy, a power cut).
    pub fn kill9_all(&mut self) {
        for broker in &mut self.brokers {
            broker.child.kill().expect("SIGKILL");
        }
        for broker in &mut self.brokers {
            let _ = broker.child.wait();
        }
    }

    /// Starts killed brokers again, `nodes[0]` first and each next one
    /// `gap` later. They start on threads: a broker's start waits (bounded)
    /// for a controller quorum, which the first alone cannot form.
    pub fn restart_in_order(&mut self, nodes: &[i32], gap: std::time::Duration) {
        let starting: Vec<_> = nodes
            .iter()
            .enumerate()
            .map(|(i, node)| {
                let index = (node - 1) as usize;
                let flags = self.flags[index].clone();
                let (dir, port) = (self.brokers[index].data_dir.clone(), self.brokers[index].port);
                let delay = gap * i as u32;
                let thread = std::thread::spawn(move || {
                    std::thread::sleep(delay);
                    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
                    Broker::start_with(&dir, 1, port, &flags)
                });
                (index, thread)
            })
            .collect();
        for (index, thread) in starting {
            self.brokers[index] = thread.join().expect("broker restarted");
        }
    }
}
