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
/// replicates, so its links are TLS. The controller listener is SSL too
/// (`listener.security.protocol.map` CONTROLLER:SSL): the voters form
/// their quorum over mutual TLS, and a plaintext peer is cut off.
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
        settings.push_str(
            "listener.security.protocol.map=CONTROLLER:SSL,PLAINTEXT:PLAINTEXT,SSL:SSL,\
             SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL\n",
        );
    }
    std::fs::write(&properties, settings).unwrap();
    let properties = properties.to_str().unwrap().to_string();
    let controller_ports = std::sync::Mutex::new(Vec::new());
    let quorums = || {
        let ports: Vec<u16> = (0..3).map(|_| free_port_below_ephemeral()).collect();
        *controller_ports.lock().unwrap() = ports.clone();
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
    if truststore {
        // The quorum formed (the cluster served all of the above) over
        // mutual TLS; a peer speaking plaintext Raft is cut off at once.
        let port = controller_ports.lock().unwrap()[0];
        assert!(controller_port_closes_plaintext(port), "the controller port read a plaintext frame");
    }
    let other = Ca::new("another CA");
    let other_file = dir.join("other-ca.pem");
    std::fs::write(&other_file, &other.pem).unwrap();
    let untrusting =
        ["--brokers", &brokers, "--security-protocol", "SSL", "--ssl-ca-location", other_file.to_str().unwrap()];
    let (ok, _, err) = cli(&[&untrusting[..], &["topic", "list"]].concat(), None);
    assert!(!ok && err.contains("TLS handshake failed"), "a client trusting another CA: {err}");
}

/// Whether the controller port at `port` closes a connection that sends a
/// well-formed plaintext frame (kind 2, a JSON control message) instead of
/// a TLS handshake; a plaintext port would read it and wait for more.
fn controller_port_closes_plaintext(port: u16) -> bool {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let body = br#"{"Heartbeat":{}}"#;
    let mut frame = ((body.len() + 1) as u32).to_be_bytes().to_vec();
    frame.push(2);
    frame.extend_from_slice(body);
    stream.write_all(&frame).unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf) {
            // Closed (a TLS alert may come first).
            Ok(0) => return true,
            Ok(_) => continue,
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}
