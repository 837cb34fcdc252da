//! The differential test (issue 15): every compat/ scenario runs against
//! Apache Kafka 4.4 (started from Maven Central's jars by
//! `compat/differential.sh`) and against `spate serve`, and what the
//! clients observed is compared field by field. A difference fails unless
//! `compat/known-differences.json` lists it (each also a line in
//! docs/kafka-compat.md).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{Broker, data_dir, free_port_below_ephemeral};

#[test]
fn kafka_clients_observe_what_they_observe_against_apache_kafka() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace").to_path_buf();
    let dir = data_dir("kafka-differential");
    let config = dir.join("broker.toml");
    // Kafka's rebalance delay is for production groups; the reference
    // broker runs with 0 too (compat/kafka/start.sh).
    std::fs::write(&config, "group_initial_rebalance_delay_ms = 0\ngroup_consumer_session_timeout_ms = 10000\n")
        .expect("write the broker config");
    let broker = Broker::start_with(&dir.join("broker"), 2, 0, &["--config", config.to_str().expect("utf-8")]);
    // Apache Kafka's ports, reserved to this test process while it runs.
    let kafka_ports = format!("{},{}", free_port_below_ephemeral(), free_port_below_ephemeral());
    let output = Command::new("bash")
        .arg(repo.join("compat/differential.sh"))
        .args(["--spate", &broker.kafka_addr()])
        .args(["--kafka-ports", &kafka_ports])
        .arg("--out")
        .arg(dir.join("runs"))
        .output()
        .expect("run compat/differential.sh");
    assert!(
        output.status.success(),
        "Spate differs from Apache Kafka:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    broker.stop();
}
