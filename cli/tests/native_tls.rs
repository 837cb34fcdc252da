//! TLS on the native ports (issue 16): with `native.security.protocol=SSL`
//! the `spate` CLI (through spate-client) talks to every native port of a
//! three-broker cluster over TLS, shard ports included, while the brokers'
//! own connections (replication, over the same ports) stay plaintext and
//! are served because each proves it is a broker. A client without TLS,
//! or one trusting another CA, is refused with a clear error.
#![allow(clippy::unwrap_used)]

mod common;

use common::cluster::Cluster;
use common::tls::Ca;
use common::{cli, data_dir, free_port_below_ephemeral};

#[test]
fn native_clients_connect_over_tls_while_brokers_replicate_in_plaintext() {
    clients_over_tls("native-tls", false);
}

/// With a truststore the brokers link over TLS too (replication fetches
/// and markers, each broker checking the other's certificate), and the
/// native ports take no plaintext connection at all: the cluster still
/// replicates, so its links are TLS.
#[test]
fn with_a_truststore_brokers_replicate_over_tls_and_no_plaintext_is_served() {
    clients_over_tls("native-tls-peers", true);
}

fn clients_over_tls(name: &str, truststore: bool) {
    let dir = data_dir(name);
    let ca = Ca::new("spate native TLS CA");
    let (ca_file, keystore) = ca.write_broker_stores(&dir.join("tls"), &["localhost", "127.0.0.1"]);
    let properties = dir.join("server.properties");
    let mut settings =
        format!("ssl.keystore.type=PEM\nssl.keystore.location={}\nnative.security.protocol=SSL\n", keystore.display());
    if truststore {
        settings.push_str(&format!("ssl.truststore.type=PEM\nssl.truststore.location={}\n", ca_file.display()));
    }
    std::fs::write(&properties, settings).unwrap();
    let properties = properties.to_str().unwrap().to_string();
    let quorums = || {
        let ports: Vec<u16> = (0..3).map(|_| free_port_below_ephemeral()).collect();
        let quorum: Vec<String> =
            ports.iter().enumerate().map(|(i, port)| format!("{}@127.0.0.1:{port}", i + 1)).collect();
        vec![quorum.join(","); 3]
    };
    let cluster = Cluster::start_with(name, quorums, |_| vec!["--config".to_string(), properties.clone()]);
    let brokers = cluster.bootstrap().join(",");
    let ca_file = ca_file.to_str().unwrap();
    let tls = ["--brokers", &brokers, "--security-protocol", "SSL", "--ssl-ca-location", ca_file];
    let run = |args: &[&str], input: Option<&[u8]>| cli(&[&tls[..], args].concat(), input);

    let (ok, _, err) = run(&["topic", "create", "orders", "--partitions", "2", "--replicas", "3"], None);
    assert!(ok, "topic create over TLS: {err}");
    let lines: String = (0..200).map(|i| format!("order-{i}\n")).collect();
    let (ok, _, err) = run(&["produce", "orders", "--acks", "all"], Some(lines.as_bytes()));
    assert!(ok, "produce over TLS: {err}");
    let (ok, out, err) = run(&["consume", "orders", "--from-beginning", "--count", "200"], None);
    assert!(ok, "consume over TLS: {err}");
    let mut got: Vec<&str> = out.lines().collect();
    got.sort_unstable();
    let mut want: Vec<String> = (0..200).map(|i| format!("order-{i}")).collect();
    want.sort_unstable();
    assert_eq!(got, want);
    // Every replica took part: the followers fetched over plaintext.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (ok, out, err) = run(&["topic", "describe", "orders"], None);
        assert!(ok, "describe over TLS: {err}");
        let under_replicated = out.lines().find(|line| line.starts_with("UNDER-REPLICATED"));
        if under_replicated.and_then(|line| line.split_whitespace().last()) == Some("0") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "replicas never all in sync:\n{out}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    let (ok, _, err) = cli(&["--brokers", &brokers, "topic", "list"], None);
    assert!(!ok && err.contains("over TLS only"), "a plaintext client: {err}");
    let other = Ca::new("another CA");
    let other_file = dir.join("other-ca.pem");
    std::fs::write(&other_file, &other.pem).unwrap();
    let untrusting =
        ["--brokers", &brokers, "--security-protocol", "SSL", "--ssl-ca-location", other_file.to_str().unwrap()];
    let (ok, _, err) = cli(&[&untrusting[..], &["topic", "list"]].concat(), None);
    assert!(!ok && err.contains("TLS handshake failed"), "a client trusting another CA: {err}");
}
