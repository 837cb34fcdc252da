//! Transactions as a Kafka user relies on them (issue 17), on three real
//! `spate serve` processes: a consume-transform-produce application
//! (confluent-kafka, `compat/python/txn_chaos.py`) commits its output and
//! its consumer group's offsets in one transaction per poll while brokers
//! are killed (kill -9) and paused (SIGSTOP) and the application itself is
//! killed and started again. A read_committed reader must then find every
//! input record's output exactly once: nothing lost, nothing doubled, no
//! output of an aborted transaction. Needs compat/install.sh's virtualenv
//! (./test runs it).

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::cluster::Cluster;

/// Input records: enough for a few dozen transactions across the faults.
const RECORDS: usize = 3000;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../compat/python/txn_chaos.py")
}

fn command(bootstrap: &str, prefix: &str, mode: &str) -> Command {
    let mut command = Command::new("python3");
    command.arg(script()).args(["--bootstrap", bootstrap, "--topic-prefix", prefix, mode]);
    command.args(["--records", &RECORDS.to_string()]);
    command
}

fn run(bootstrap: &str, prefix: &str, mode: &str) -> Output {
    let output = command(bootstrap, prefix, mode).output().expect("run txn_chaos.py");
    assert!(
        output.status.success(),
        "txn_chaos.py {mode} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn spawn_app(bootstrap: &str, prefix: &str) -> Child {
    command(bootstrap, prefix, "app").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start the app")
}

#[test]
fn consume_transform_produce_is_exactly_once_through_broker_kills_pauses_and_an_app_restart() {
    let mut cluster = Cluster::start_with_kafka_listeners("txn-chaos");
    let bootstrap = cluster.kafka_bootstrap();
    let prefix = format!("chaos-{}", std::process::id());
    run(&bootstrap, &prefix, "seed");

    let mut app = spawn_app(&bootstrap, &prefix);
    std::thread::sleep(Duration::from_secs(3));
    // A broker dies: a coordinator, a partition leader or both move.
    cluster.kill9_and_restart(1);
    std::thread::sleep(Duration::from_secs(2));
    // Another stops answering for longer than its session: fenced, then back.
    cluster.pause(2, true);
    std::thread::sleep(Duration::from_secs(4));
    cluster.pause(2, false);
    // The application dies mid-transaction; its successor fences it and
    // aborts what it left open.
    app.kill().expect("kill -9 the app");
    let _ = app.wait();
    let app = spawn_app(&bootstrap, &prefix);
    std::thread::sleep(Duration::from_secs(2));
    cluster.kill9_and_restart(3);
    let finished = app.wait_with_output().expect("the app");
    assert!(
        finished.status.success(),
        "the application failed:\n{}\n{}",
        String::from_utf8_lossy(&finished.stdout),
        String::from_utf8_lossy(&finished.stderr)
    );
    let checked = run(&bootstrap, &prefix, "check");
    eprintln!("app: {}check: {}", String::from_utf8_lossy(&finished.stdout), String::from_utf8_lossy(&checked.stdout));
}
