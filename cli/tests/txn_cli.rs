//! `spate txn` (issue 17) against a real `spate serve`: a transaction a
//! confluent-kafka producer holds open (compat/install.sh's virtualenv,
//! which ./test sets up) is listed, described and aborted on its partition
//! as Kafka's kafka-transactions would; errors name Kafka's codes.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use common::{Broker, cli, data_dir};

fn venv_python() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/compat/venv/bin/python")
}

/// A transactional producer that writes one record to `topic` in a
/// transaction and holds it open; it prints "open" once the record is
/// written, then waits for a line on stdin before it exits (its
/// transaction still open: the test ends it).
const HOLD_OPEN: &str = r#"
import sys
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
bootstrap, topic = sys.argv[1], sys.argv[2]
admin = AdminClient({"bootstrap.servers": bootstrap})
admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": "cli-app"})
producer.init_transactions(30)
producer.begin_transaction()
producer.produce(topic, value=b"held open")
assert producer.flush(30) == 0
print("open", flush=True)
sys.stdin.readline()
"#;

fn hold_open(bootstrap: &str, topic: &str) -> Child {
    let mut child = Command::new(venv_python())
        .args(["-c", HOLD_OPEN, bootstrap, topic])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the transactional producer (run compat/install.sh)");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("its first line");
    assert_eq!(line.trim(), "open", "the producer did not open its transaction");
    child
}

fn spate_txn(broker: &Broker, args: &[&str]) -> (bool, String, String) {
    let bootstrap = broker.kafka_addr();
    let mut all = vec!["txn"];
    all.extend_from_slice(&args[..1]);
    all.extend_from_slice(&["--bootstrap-server", &bootstrap]);
    all.extend_from_slice(&args[1..]);
    cli(&all, None)
}

/// Rows of a table `spate` printed, split on runs of spaces, without the
/// header.
fn rows(out: &str) -> Vec<Vec<String>> {
    out.lines().skip(1).map(|line| line.split_whitespace().map(str::to_string).collect()).collect()
}

#[test]
fn txn_lists_describes_and_aborts_an_open_transaction() {
    let dir = data_dir("txn_cli");
    let broker = Broker::start(&dir, 1);
    let mut producer = hold_open(&broker.kafka_addr(), "held");

    let (ok, out, err) = spate_txn(&broker, &["list"]);
    assert!(ok, "{err}");
    assert_eq!(rows(&out).first().map(|r| (r[0].as_str(), r[3].as_str())), Some(("cli-app", "Ongoing")), "{out}");

    let (ok, out, err) = spate_txn(&broker, &["describe", "--transactional-id", "cli-app"]);
    assert!(ok, "{err}");
    let described = &rows(&out)[0];
    assert_eq!((described[4].as_str(), described[8].as_str()), ("Ongoing", "held-0"), "{out}");

    let (ok, out, err) = spate_txn(&broker, &["describe-producers", "--topic", "held", "--partition", "0"]);
    assert!(ok, "{err}");
    assert_eq!(rows(&out)[0][4], "0", "the open transaction starts at offset 0: {out}");

    let (ok, out, err) = spate_txn(&broker, &["abort", "--topic", "held", "--partition", "0", "--start-offset", "0"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("aborted producer "), "{out}");
    let (ok, out, err) = spate_txn(&broker, &["describe-producers", "--topic", "held", "--partition", "0"]);
    assert!(ok, "{err}");
    assert_eq!(rows(&out)[0][4], "none", "no transaction open on the partition after the abort: {out}");
    // A second abort finds nothing open there.
    let (ok, _, err) = spate_txn(&broker, &["abort", "--topic", "held", "--partition", "0", "--start-offset", "0"]);
    assert!(!ok && err.contains("no producer has a transaction open at offset 0"), "{err}");

    let (ok, _, err) = spate_txn(&broker, &["describe", "--transactional-id", "nobody"]);
    assert!(!ok && err.contains("TransactionalIdNotFound"), "{err}");
    let (ok, _, err) = spate_txn(&broker, &["describe-producers", "--topic", "missing", "--partition", "0"]);
    assert!(!ok && err.contains("UnknownTopicOrPartition"), "{err}");

    writeln!(producer.stdin.as_mut().expect("stdin")).expect("release the producer");
    let _ = producer.wait();
    broker.stop();
}
