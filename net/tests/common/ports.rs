//! Ports for brokers of tests, shared by the test processes of every
//! crate of the workspace (`net/tests` and, through `#[path]`,
//! `cli/tests`): one lock directory under the workspace's target tmp.

use std::path::PathBuf;

/// A port free now, from 20000..32000: below Linux's ephemeral range
/// (32768..61000), where the kernel picks clients' local ports, so that a
/// broker restarted on its port does not find a test client's connection
/// on it. Each broker port of the test processes here comes from this.
///
/// The port stays reserved to this test process until it exits: nextest
/// runs each test in a process of its own, and a port that is free only
/// because its broker is down for a restart must not be handed to another
/// test (CI saw a restarted broker find its port taken by another test's
/// broker, and two tests pick the same Kafka port). The reservation is an
/// exclusive lock on `<target tmp>/ports/<port>`, which the kernel drops
/// when the process dies, however it dies. It covers the two ports after
/// it as well: a broker's shard ports are its native port + 1, + 2 (CI saw
/// a restarted broker find its port taken as another test's shard port).
pub fn free_port_below_ephemeral() -> u16 {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};
    /// The port and the shard ports after it (tests run at most 2 shards).
    const SPAN: u16 = 3;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static HELD: Mutex<Vec<std::fs::File>> = Mutex::new(Vec::new());
    let locks = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ports");
    std::fs::create_dir_all(&locks).expect("the port lock directory");
    let seed = std::process::id()
        ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let reserve = |port: u16| -> Option<std::fs::File> {
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(locks.join(port.to_string()))
            .expect("a port lock file");
        // Held by another test process (or by this one: a second open of
        // a file this process has locked does not get the lock either).
        lock.try_lock().ok()?;
        // A listener that binds and goes at once: free for now (a process
        // outside the tests may still take it; the start is then retried).
        std::net::TcpListener::bind(("127.0.0.1", port)).ok().map(|_| lock)
    };
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + (seed.wrapping_add(n.wrapping_mul(7_919)) % 12_000) as u16;
        let held: Vec<std::fs::File> = (port..port + SPAN).map_while(reserve).collect();
        if held.len() == usize::from(SPAN) {
            HELD.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).extend(held);
            return port;
        }
        // Dropping a partial reservation's files releases their locks.
    }
}
