//! Kafka clients we did not write, against a real `spate serve`: each
//! scenario of `compat/` (kcat, confluent-kafka, kafka-python, the Java
//! client, franz-go; see compat/README.md) runs against its own broker's
//! Kafka listener and must pass as it passes against Apache Kafka.
//! `./test` installs the clients first (`compat/install.sh`).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{Broker, SPATE, data_dir, free_port_below_ephemeral};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace").to_path_buf()
}

/// Runs one scenario and fails the test with its output if it fails.
fn scenario(name: &str) {
    let dir = data_dir(&format!("kafka-compat-{name}"));
    let config = write_config(&dir);
    // Kafka's rebalance delay is for production groups; tests join at once.
    let mut flags = vec!["--config".to_string(), config.to_str().expect("utf-8").to_string()];
    // SASL scenarios make their users on a plaintext listener, as an
    // operator makes the first ones, and authenticate on a SASL one.
    let sasl_port = name.starts_with("sasl_").then(free_port_below_ephemeral);
    if let Some(sasl_port) = sasl_port {
        let plain_port = free_port_below_ephemeral();
        flags.push("--listeners".into());
        flags.push(format!("PLAINTEXT://127.0.0.1:{plain_port},SASL_PLAINTEXT://127.0.0.1:{sasl_port}"));
    }
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let broker = Broker::start_with(&dir.join("broker"), 2, 0, &flags);
    let out = dir.join("observed");
    let mut command = Command::new("bash");
    command
        .arg(repo().join("compat/run-all.sh"))
        .args(["--bootstrap", &broker.kafka_addr(), "--only", name])
        .arg("--out")
        .arg(&out)
        .args(["--spate-bin", SPATE, "--spate-brokers", &broker.addr()]);
    if let Some(sasl_port) = sasl_port {
        command.args(["--sasl-bootstrap", &format!("127.0.0.1:{sasl_port}")]);
    }
    let output = command.output().expect("run compat/run-all.sh");
    let log = std::fs::read_to_string(out.join(format!("{name}.log"))).unwrap_or_default();
    assert!(
        output.status.success(),
        "{name} failed against spate:\n{}\n{}\n--- its log ---\n{log}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    broker.stop();
}

/// A broker config with tests' timings. The SASL scenarios test
/// authentication alone: resources stay open to every principal as on the
/// reference Kafka without an authorizer (a SASL listener would otherwise
/// close them to all but super users).
fn write_config(dir: &std::path::Path) -> PathBuf {
    let path = dir.join("broker.toml");
    let text = "group_initial_rebalance_delay_ms = 0\ngroup_consumer_session_timeout_ms = 10000\n\
                allow_everyone_if_no_acl_found = true\n";
    std::fs::write(&path, text).expect("write the broker config");
    path
}

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                scenario(stringify!($name));
            }
        )*
    };
}

scenarios!(
    kcat_metadata,
    kcat_produce_consume,
    kcat_group,
    ck_metadata,
    ck_keyed,
    ck_compression,
    ck_idempotent,
    ck_transactions,
    ck_headers_timestamps,
    ck_admin,
    ck_group_range,
    ck_group_cooperative,
    kp_produce_consume,
    kp_group,
    java_produce_consume,
    java_group_classic,
    java_group_consumer,
    java_admin,
    java_transactions,
    franzgo,
    cross_protocol,
    tools_console,
    tools_perf,
    tools_quotas,
    streams_wordcount,
    streams_wordcount_eos,
    connect_distributed,
    sasl_scram,
    tools_acls,
    tools_transactions,
);

/// Runs Kafka's kafka-acls (kafka-tools 4.4.0, fetched by
/// compat/install.sh) against `bootstrap`; its stdout.
fn kafka_acls(bootstrap: &str, args: &[&str]) -> String {
    let libs = repo().join("target/compat/frameworks-libs/*");
    let output = Command::new("java")
        .args(["-Xmx256m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-cp"])
        .arg(libs)
        .arg("org.apache.kafka.tools.AclCommand")
        .args(["--bootstrap-server", bootstrap])
        .args(args)
        .output()
        .expect("run java (compat/install.sh fetches the tools)");
    assert!(
        output.status.success(),
        "kafka-acls {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// An ACL made with kafka-acls is in the metadata log: a broker killed
/// with SIGKILL and started again still lists and enforces it (issue 16).
#[test]
fn acls_made_with_kafka_acls_survive_a_broker_restart() {
    let dir = data_dir("kafka-compat-acls-restart");
    let mut broker = Broker::start_with(&dir.join("broker"), 2, 0, &[]);
    kafka_acls(
        &broker.kafka_addr(),
        &["--add", "--deny-principal", "User:ANONYMOUS", "--operation", "Write", "--topic", "kept"],
    );
    broker.kill9_and_restart_on(0, &[]);
    let listed = kafka_acls(&broker.kafka_addr(), &["--list", "--topic", "kept"]);
    assert!(
        listed.contains("name=kept, patternType=LITERAL")
            && listed.contains("principal=User:ANONYMOUS, host=*, operation=WRITE, permissionType=DENY"),
        "after the restart kafka-acls --list printed:\n{listed}"
    );
    broker.stop();
}
