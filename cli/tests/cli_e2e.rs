//! The `spate` CLI against a real broker process: what an operator types.

mod common;

use std::collections::HashMap;

use common::*;
use spate_client::partition_for_key;

#[test]
fn keyed_lines_produced_through_the_cli_are_consumed_once_in_order_per_partition() {
    const COUNT: usize = 100_000;
    let dir = data_dir("cli_keyed");
    let broker = Broker::start(&dir, 2);
    let brokers = broker.addr();
    let (ok, _, err) = cli(&["--brokers", &brokers, "topic", "create", "lines", "--partitions", "8"], None);
    assert!(ok, "{err}");
    let input: String = (0..COUNT).map(|i| format!("key-{}:value-{i}\n", i % 1000)).collect();
    let (ok, _, err) =
        cli(&["--brokers", &brokers, "produce", "lines", "--key-separator", ":"], Some(input.as_bytes()));
    assert!(ok, "produce failed: {err}");
    let count = COUNT.to_string();
    let (ok, out, err) = cli(
        &["--brokers", &brokers, "consume", "lines", "--from-beginning", "--count", &count, "--format", "json"],
        None,
    );
    assert!(ok, "consume failed: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), COUNT, "every record exactly once");
    let mut next_offset: HashMap<i64, i64> = HashMap::new();
    let mut last_index_by_key: HashMap<String, usize> = HashMap::new();
    let mut seen = vec![false; COUNT];
    for line in lines {
        let record: serde_json::Value = serde_json::from_str(line).expect("one JSON object per line");
        assert_eq!(record["topic"], "lines");
        let partition = record["partition"].as_i64().expect("partition");
        let offset = record["offset"].as_i64().expect("offset");
        assert!(record["timestamp"].as_i64().expect("timestamp") > 0);
        let expected = next_offset.entry(partition).or_insert(0);
        assert_eq!(offset, *expected, "partition {partition} in order without gaps");
        *expected += 1;
        let key = record["key"].as_str().expect("key").to_string();
        assert_eq!(partition as i32, partition_for_key(key.as_bytes(), 8), "same key, Kafka's partition");
        let index: usize =
            record["value"].as_str().expect("value").trim_start_matches("value-").parse().expect("index");
        assert!(!std::mem::replace(&mut seen[index], true), "value {index} twice");
        if let Some(previous) = last_index_by_key.insert(key, index) {
            assert!(previous < index, "a key's records keep their order");
        }
    }
    broker.stop();
}

#[test]
fn a_value_equal_to_the_null_marker_is_produced_as_a_tombstone() {
    let dir = data_dir("cli_null_marker");
    let broker = Broker::start(&dir, 1);
    let brokers = broker.addr();
    let (ok, _, err) = cli(&["--brokers", &brokers, "topic", "create", "users", "--partitions", "1"], None);
    assert!(ok, "{err}");
    let input = "alice:admin\nbob:NULL\ncarol:\n";
    let args = ["--brokers", &brokers, "produce", "users", "--key-separator", ":", "--null-marker", "NULL"];
    let (ok, _, err) = cli(&args, Some(input.as_bytes()));
    assert!(ok, "produce failed: {err}");
    let args = ["--brokers", &brokers, "consume", "users", "--from-beginning", "--count", "3", "--format", "json"];
    let (ok, out, err) = cli(&args, None);
    assert!(ok, "consume failed: {err}");
    let values: Vec<serde_json::Value> = out
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("JSON")["value"].clone())
        .collect();
    // The marker is a null value; an empty value stays an empty string.
    assert_eq!(values, [serde_json::json!("admin"), serde_json::Value::Null, serde_json::json!("")]);
    broker.stop();
}

#[test]
fn topic_commands_create_describe_list_and_delete() {
    let dir = data_dir("cli_topics");
    let broker = Broker::start(&dir, 2);
    let brokers = broker.addr();
    let run_with = |args: &[&str], stdin: Option<&[u8]>| {
        let mut all = vec!["--brokers", brokers.as_str(), "--timeout-ms", "3000"];
        all.extend_from_slice(args);
        cli(&all, stdin)
    };
    let run = |args: &[&str]| run_with(args, None);
    let (ok, _, err) = run(&["topic", "create", "audit", "--partitions", "3", "--config", "retention.ms=60000"]);
    assert!(ok, "{err}");
    let (ok, out, _) = run(&["topic", "list"]);
    assert!(ok && out.contains("audit"), "{out}");
    let (ok, out, _) = run(&["topic", "describe", "audit"]);
    assert!(ok, "{out}");
    assert!(out.contains("retention.ms") && out.contains("60000"), "{out}");
    // Errors are one clear line and a non-zero exit.
    let (ok, _, err) = run(&["topic", "create", "audit"]);
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.starts_with("error:") && err.contains("exists"), "{err}");
    let (ok, _, err) = run(&["topic", "create", "bad/name"]);
    assert!(!ok && err.starts_with("error:"), "{err}");
    let (ok, _, err) = run(&["topic", "create", "x", "--config", "retention.ms=soon"]);
    assert!(!ok && err.starts_with("error:"), "{err}");
    let (ok, _, err) = run_with(&["produce", "missing"], Some(b"a record\n"));
    assert!(!ok && err.starts_with("error:"), "{err}");
    let (ok, _, err) = run(&["topic", "delete", "audit"]);
    assert!(ok, "{err}");
    let (ok, out, _) = run(&["topic", "list"]);
    assert!(ok && !out.contains("audit"), "{out}");
    let (ok, out, _) = run(&["cluster", "info"]);
    assert!(ok && out.contains(&broker.port.to_string()), "{out}");
    broker.stop();
}

#[test]
fn an_unreachable_broker_is_one_error_line() {
    let (ok, _, err) = cli(&["--brokers", "127.0.0.1:1", "--timeout-ms", "2000", "topic", "list"], None);
    assert!(!ok);
    assert!(err.starts_with("error:"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn serve_refuses_bad_configuration_with_one_line() {
    let dir = data_dir("cli_bad_serve");
    let dir = dir.to_str().expect("utf-8 path");
    let (ok, _, err) = cli(&["serve", "--port", "0", "--data-dir", dir, "--durability", "sometimes"], None);
    assert!(!ok);
    assert!(err.contains("durability"), "{err}");
    // A second broker on the same data directory is refused, not raced.
    let broker = Broker::start(std::path::Path::new(dir), 1);
    let (ok, _, err) =
        cli(&["serve", "--port", "0", "--metrics-listen", "", "--listeners", "", "--data-dir", dir], None);
    assert!(!ok);
    assert!(err.contains("in use"), "{err}");
    broker.stop();
}

/// `spate acl` speaks Kafka's ACL APIs to the Kafka listener with
/// kafka-acls' flags: each principal and operation on each resource is
/// one ACL; list filters by resource (a `match` on a name finds the
/// prefixed ACL over it) and principal; delete removes what it names and
/// prints it; bad input is one error line.
#[test]
fn acl_commands_create_list_and_delete_through_the_kafka_listener() {
    let dir = data_dir("cli_acl");
    let broker = Broker::start(&dir, 1);
    let kafka = broker.kafka_addr();
    let acl = |args: &[&str]| {
        let mut all = vec!["acl"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--bootstrap-server", &kafka]);
        cli(&all, None)
    };
    let (ok, out, err) = acl(&[
        "create",
        "--allow-principal",
        "User:alice",
        "--allow-principal",
        "User:bob",
        "--operation",
        "Read",
        "--operation",
        "Write",
        "--topic",
        "orders",
    ]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().filter(|line| line.ends_with("OK")).count(), 4, "{out}");
    let (ok, _, err) = acl(&[
        "create",
        "--deny-principal",
        "User:ANONYMOUS",
        "--operation",
        "All",
        "--resource-pattern-type",
        "prefixed",
        "--topic",
        "pay.",
    ]);
    assert!(ok, "{err}");

    let (ok, out, _) = acl(&["list"]);
    assert!(ok);
    assert_eq!(out.lines().count(), 1 + 5, "a header and five ACLs:\n{out}");
    let (_, out, _) = acl(&["list", "--topic", "pay.eu", "--resource-pattern-type", "match"]);
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{out}");
    assert!(rows[0].split_whitespace().eq(["Topic", "pay.", "Prefixed", "User:ANONYMOUS", "*", "All", "Deny"]));
    let (_, out, _) = acl(&["list", "--principal", "User:bob"]);
    assert_eq!(out.lines().count(), 1 + 2, "{out}");

    let (ok, out, err) = acl(&["delete", "--topic", "orders", "--allow-principal", "User:bob"]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 1 + 2, "the two ACLs of bob's it removed:\n{out}");
    let (_, out, _) = acl(&["list", "--topic", "orders"]);
    assert!(out.lines().skip(1).all(|line| line.contains("User:alice")), "{out}");

    let (ok, _, err) = acl(&["create", "--allow-principal", "alice", "--operation", "Read", "--topic", "t"]);
    assert!(!ok && err.lines().count() == 1 && err.contains("Type:name"), "{err}");
    let (ok, _, err) = acl(&["create", "--allow-principal", "User:a", "--operation", "Fly", "--topic", "t"]);
    assert!(!ok && err.contains("operation \"Fly\""), "{err}");
    let (ok, _, err) = acl(&["delete"]);
    assert!(!ok && err.contains("name the resources"), "{err}");
    broker.stop();
}
