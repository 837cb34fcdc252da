//! TLS on the Kafka listener (issue 16), shown with a client we did not
//! write: kcat (librdkafka, OpenSSL) against a real `spate serve` whose
//! security settings come from a Kafka `server.properties`. Certificates
//! are made here, per test, by a throwaway CA.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::tls::{Ca, kcat, text};
use common::{Broker, data_dir, free_port_below_ephemeral};

struct Files {
    dir: PathBuf,
    /// The test's directory, when `start` made it: it outlives the broker
    /// returned beside it (removed once the test passes).
    _root: Option<common::TestDir>,
}

impl Files {
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// A broker with a PLAINTEXT and an SSL listener, its keystore (chain and
/// key in one PEM file, KIP-651) issued by `ca`.
fn start(name: &str, ca: &Ca, client_auth: &str) -> (Broker, Files, u16, u16) {
    let dir = data_dir(name);
    let files = Files { dir: dir.join("tls"), _root: None };
    std::fs::create_dir_all(&files.dir).unwrap();
    let (cert, key) = ca.issue("broker-1", false);
    let keystore = files.write("broker.pem", &format!("{cert}{key}"));
    let truststore = files.write("ca.pem", &ca.pem);
    let (plain_port, ssl_port) = (free_port_below_ephemeral(), free_port_below_ephemeral());
    let listeners = format!("PLAINTEXT://127.0.0.1:{plain_port},SSL://127.0.0.1:{ssl_port}");
    let properties = files.write(
        "server.properties",
        &format!(
            "listeners={listeners}\nssl.keystore.type=PEM\nssl.keystore.location={}\n\
             ssl.truststore.type=PEM\nssl.truststore.location={}\nssl.client.auth={client_auth}\n",
            keystore.display(),
            truststore.display()
        ),
    );
    let config = properties.to_str().unwrap().to_string();
    let broker = Broker::start_with(&dir.join("data"), 1, 0, &["--config", &config, "--listeners", &listeners]);
    (broker, Files { _root: Some(dir), ..files }, plain_port, ssl_port)
}

fn ssl(ca: &str) -> Vec<(&str, &str)> {
    vec![("security.protocol", "SSL"), ("ssl.ca.location", ca)]
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn kcat_produces_and_consumes_over_ssl_and_metadata_names_the_ssl_listener() {
    let ca = Ca::new("spate test CA");
    let (_broker, files, plain_port, ssl_port) = start("tls-kcat", &ca, "none");
    let ca_file = files.dir.join("ca.pem");
    let settings = ssl(path(&ca_file));

    // A client of the SSL listener is told the brokers' SSL addresses
    // (never the plaintext one, whose security it may not speak).
    let listed = kcat(ssl_port, &settings, &["-L", "-m", "10"], None);
    assert!(listed.status.success(), "kcat -L over SSL: {}", text(&listed));
    assert!(text(&listed).contains(&format!("127.0.0.1:{ssl_port}")), "{}", text(&listed));
    assert!(!text(&listed).contains(&format!("127.0.0.1:{plain_port}")), "{}", text(&listed));

    let produced = kcat(ssl_port, &settings, &["-P", "-t", "secure", "-m", "10"], Some("one\ntwo\nthree\n"));
    assert!(produced.status.success(), "kcat -P over SSL: {}", text(&produced));
    let consumed =
        kcat(ssl_port, &settings, &["-C", "-t", "secure", "-o", "beginning", "-c", "3", "-e", "-m", "10"], None);
    assert!(consumed.status.success(), "kcat -C over SSL: {}", text(&consumed));
    assert_eq!(String::from_utf8_lossy(&consumed.stdout), "one\ntwo\nthree\n");
    // The same log, read in plaintext on the other listener.
    let plain = kcat(plain_port, &[], &["-C", "-t", "secure", "-o", "beginning", "-c", "3", "-e", "-m", "10"], None);
    assert_eq!(String::from_utf8_lossy(&plain.stdout), "one\ntwo\nthree\n", "{}", text(&plain));
}

#[test]
fn a_plaintext_client_and_a_client_trusting_another_ca_are_refused() {
    let ca = Ca::new("spate test CA");
    let (_broker, files, _, ssl_port) = start("tls-refused", &ca, "none");
    // Plaintext bytes on the TLS port: no Kafka answer, the client fails.
    let plaintext = kcat(ssl_port, &[("socket.timeout.ms", "3000")], &["-L", "-m", "3"], None);
    assert!(!plaintext.status.success(), "a plaintext client got metadata from the SSL listener");
    // A client that trusts another CA does not accept the broker.
    let other = Ca::new("another CA");
    let other_file = files.write("other-ca.pem", &other.pem);
    let untrusting = kcat(ssl_port, &ssl(path(&other_file)), &["-L", "-m", "3"], None);
    assert!(!untrusting.status.success());
    assert!(text(&untrusting).contains("certificate verify failed"), "{}", text(&untrusting));
}

#[test]
fn client_certificates_are_required_when_asked_and_one_from_an_unknown_ca_is_refused() {
    let ca = Ca::new("spate test CA");
    let (_broker, files, _, ssl_port) = start("tls-mutual", &ca, "required");
    let ca_file = files.dir.join("ca.pem");
    let ca_file = path(&ca_file);
    let with_certificate = |name: &str, issuer: &Ca| {
        let (cert, key) = issuer.issue(name, true);
        let cert = files.write(&format!("{name}.crt"), &cert);
        let key = files.write(&format!("{name}.key"), &key);
        let mut settings = ssl(ca_file);
        settings.push(("ssl.certificate.location", Box::leak(cert.display().to_string().into_boxed_str())));
        settings.push(("ssl.key.location", Box::leak(key.display().to_string().into_boxed_str())));
        kcat(ssl_port, &settings, &["-L", "-m", "5"], None)
    };
    let without = kcat(ssl_port, &ssl(ca_file), &["-L", "-m", "3"], None);
    assert!(!without.status.success(), "no client certificate, yet served: {}", text(&without));
    let stranger = with_certificate("mallory", &Ca::new("another CA"));
    assert!(!stranger.status.success(), "a certificate from an unknown CA was accepted: {}", text(&stranger));
    let alice = with_certificate("alice", &ca);
    assert!(alice.status.success(), "alice's certificate was refused: {}", text(&alice));
}

#[test]
fn sighup_reloads_the_certificate_for_new_connections() {
    let old_ca = Ca::new("old CA");
    let (broker, files, _, ssl_port) = start("tls-reload", &old_ca, "none");
    let old_file = files.dir.join("ca.pem");
    assert!(kcat(ssl_port, &ssl(path(&old_file)), &["-L", "-m", "5"], None).status.success());
    // The certificate is renewed by another CA, in place, and the broker
    // told so: new connections get the new one, without a restart.
    let new_ca = Ca::new("new CA");
    let (cert, key) = new_ca.issue("broker-1", false);
    files.write("broker.pem", &format!("{cert}{key}"));
    let new_file = files.write("new-ca.pem", &new_ca.pem);
    let hup = Command::new("kill").arg("-HUP").arg(broker.child.id().to_string()).status().unwrap();
    assert!(hup.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let renewed = kcat(ssl_port, &ssl(path(&new_file)), &["-L", "-m", "3"], None);
        if renewed.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "the new certificate was never served: {}", text(&renewed));
        std::thread::sleep(Duration::from_millis(200));
    }
    let stale = kcat(ssl_port, &ssl(path(&old_file)), &["-L", "-m", "3"], None);
    assert!(!stale.status.success(), "the old certificate is still served after SIGHUP");
}

/// A broker serving an expired certificate is refused by clients (they
/// check the dates), as an unknown one is.
#[test]
fn an_expired_broker_certificate_is_refused() {
    let ca = Ca::new("spate test CA");
    let (broker, files, _, ssl_port) = start("tls-expired", &ca, "none");
    // The running broker's certificate, replaced by an expired one.
    let (cert, key) = ca.issue_expired("broker-1");
    files.write("broker.pem", &format!("{cert}{key}"));
    let ca_file = files.dir.join("ca.pem");
    let hup = Command::new("kill").arg("-HUP").arg(broker.child.id().to_string()).status().unwrap();
    assert!(hup.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed = kcat(ssl_port, &ssl(path(&ca_file)), &["-L", "-m", "3"], None);
        let said = text(&listed);
        // Refused for the certificate: done. (kcat may also give up on a
        // busy machine before the handshake ends: that says nothing, so
        // it is tried again.)
        if !listed.status.success() && (said.contains("certificate verify failed") || said.contains("expired")) {
            break;
        }
        assert!(Instant::now() < deadline, "the expired certificate was never refused: {said}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A GET of /metrics with Python's urllib (OpenSSL), `https` with the CA
/// or plain `http`: the status, or the error.
fn scrape(url: &str, ca: Option<&Path>) -> String {
    let script = "import ssl, sys, urllib.request\n\
                  ctx = ssl.create_default_context(cafile=sys.argv[2]) if len(sys.argv) > 2 else None\n\
                  try:\n    r = urllib.request.urlopen(sys.argv[1], context=ctx, timeout=10)\n    \
                  body = r.read().decode()\n    print(r.status, 'spate_connections' in body)\n\
                  except Exception as e:\n    print('error', type(e).__name__)\n";
    let mut command = Command::new("python3");
    command.args(["-c", script, url]);
    if let Some(ca) = ca {
        command.arg(ca);
    }
    let output = command.output().expect("python3");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[test]
fn metrics_served_over_tls_with_the_brokers_keystore() {
    use std::io::BufRead;
    let ca = Ca::new("spate metrics CA");
    let dir = data_dir("tls-metrics");
    let files = Files { dir: dir.join("tls"), _root: None };
    std::fs::create_dir_all(&files.dir).unwrap();
    let (cert, key) = ca.issue("broker-1", false);
    let keystore = files.write("broker.pem", &format!("{cert}{key}"));
    let ca_file = files.write("ca.pem", &ca.pem);
    let (ssl_port, metrics_port) = (free_port_below_ephemeral(), free_port_below_ephemeral());
    let config = files.write(
        "spate.toml",
        &format!(
            "listeners = \"SSL://127.0.0.1:{ssl_port}\"\nssl_keystore_type = \"PEM\"\n\
             ssl_keystore_location = \"{}\"\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\nmetrics_tls = true\n",
            keystore.display()
        ),
    );
    let mut child = Command::new(common::SPATE)
        .args(["serve", "--no-pin", "--log-level", "warn", "--shards", "1", "--config", path(&config)])
        .arg("--port")
        .arg(free_port_below_ephemeral().to_string())
        .arg("--data-dir")
        .arg(dir.join("data"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn spate serve");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.contains("listening on"), "{line}");

    let https = format!("https://127.0.0.1:{metrics_port}/metrics");
    assert_eq!(scrape(&https, Some(&ca_file)), "200 True", "a scrape over TLS, the broker's certificate trusted");
    assert!(scrape(&https, None).starts_with("error"), "a certificate no CA of the system's signed");
    let http = format!("http://127.0.0.1:{metrics_port}/metrics");
    assert!(scrape(&http, None).starts_with("error"), "plain HTTP is not served");
    let _ = child.kill();
    let _ = child.wait();
}
