//! The CLI's Kafka-protocol commands (`spate user`, `spate acl`) with a
//! Kafka client's security settings (issue 16), against a real `spate
//! serve` with a PLAINTEXT loopback listener (where the operator makes the
//! first users, as ANONYMOUS, a super user here) and a SASL_SSL one whose
//! certificate a throwaway CA made here issued.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{Broker, SPATE, cli, data_dir, free_port_below_ephemeral};

/// A CA's certificate and a broker keystore (chain and key, KIP-651) it
/// issued for the loopback names.
fn certificates(dir: &Path, ca_name: &str) -> (PathBuf, PathBuf) {
    certificates_with_clients(dir, ca_name, &[])
}

/// As `certificates`, the broker's certificate for `names` only.
fn certificates_for(dir: &Path, names: &[&str]) -> (PathBuf, PathBuf) {
    make_certificates(dir, "spate CLI test CA", names, &[])
}

/// As `certificates`, and for each client name a certificate and key
/// (`NAME.crt`, `NAME.key` in `dir`) for mutual TLS.
fn certificates_with_clients(dir: &Path, ca_name: &str, clients: &[&str]) -> (PathBuf, PathBuf) {
    make_certificates(dir, ca_name, &["localhost", "127.0.0.1"], clients)
}

fn make_certificates(dir: &Path, ca_name: &str, names: &[&str], clients: &[&str]) -> (PathBuf, PathBuf) {
    let ca = common::tls::Ca::new(ca_name);
    let stores = ca.write_broker_stores(dir, names);
    for client in clients {
        let (cert, key) = ca.issue_for(client, &[], true);
        std::fs::write(dir.join(format!("{client}.crt")), cert).unwrap();
        std::fs::write(dir.join(format!("{client}.key")), key).unwrap();
    }
    stores
}

struct Secured {
    broker: Broker,
    dir: common::TestDir,
    /// host:port of each listener.
    plain: String,
    sasl_ssl: String,
    ca: PathBuf,
}

fn start(name: &str) -> Secured {
    start_named(name, &["localhost", "127.0.0.1"])
}

/// A broker whose certificate names `names` only.
fn start_named(name: &str, names: &[&str]) -> Secured {
    let dir = data_dir(name);
    let (ca, keystore) = certificates_for(&dir.join("tls"), names);
    let (plain_port, sasl_port) = (free_port_below_ephemeral(), free_port_below_ephemeral());
    let listeners = format!("PLAINTEXT://127.0.0.1:{plain_port},SASL_SSL://127.0.0.1:{sasl_port}");
    let properties = dir.join("server.properties");
    std::fs::write(
        &properties,
        format!(
            "listeners={listeners}\nssl.keystore.type=PEM\nssl.keystore.location={}\n\
             super.users=User:ANONYMOUS;User:alice;User:bob\n",
            keystore.display()
        ),
    )
    .unwrap();
    let broker = Broker::start_with(
        &dir.join("data"),
        1,
        0,
        &["--config", properties.to_str().unwrap(), "--listeners", &listeners],
    );
    Secured { broker, plain: format!("127.0.0.1:{plain_port}"), sasl_ssl: format!("127.0.0.1:{sasl_port}"), ca, dir }
}

/// A Kafka client's properties file for SASL_SSL as `user`.
fn command_config(secured: &Secured, file: &str, mechanism: &str, user: &str, password: &str) -> String {
    let path = secured.dir.join(file);
    std::fs::write(
        &path,
        format!(
            "# as for kafka-configs --command-config\nsecurity.protocol=SASL_SSL\nsasl.mechanism={mechanism}\n\
             sasl.username={user}\nsasl.password={password}\nssl.ca.location={}\n",
            secured.ca.display()
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

/// `spate` with `args`, and the environment variable `env` set.
fn cli_with_env(args: &[&str], env: (&str, &str)) -> (bool, String, String) {
    let output = Command::new(SPATE)
        .args(args)
        .env(env.0, env.1)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Issue 16's CLI proof: users made with `spate user create` on the
/// plaintext listener log in over SASL_SSL with SCRAM (both hashes) and
/// PLAIN, with the settings from `--command-config` or flags (the password
/// from the environment), and list users and ACLs; `spate user delete`
/// ends a user's logins. Before the CLI took security settings, it could
/// only speak plaintext, and no command here but the first could run.
#[test]
fn users_made_by_the_cli_log_in_over_sasl_ssl_and_deleted_users_cannot() {
    let secured = start("cli-sasl-ssl");
    let (ok, out, err) =
        cli(&["user", "create", "alice", "--password", "alice-secret", "--bootstrap-server", &secured.plain], None);
    assert!(ok, "user create: {err}");
    assert!(out.contains("alice  SCRAM-SHA-256  8192") && out.contains("alice  SCRAM-SHA-512  8192"), "{out}");
    // The password from stdin, one mechanism, other iterations.
    let (ok, _, err) = cli(
        &[
            "user",
            "create",
            "bob",
            "--mechanism",
            "SCRAM-SHA-256",
            "--iterations",
            "4096",
            "--bootstrap-server",
            &secured.plain,
        ],
        Some(b"bob-secret\n"),
    );
    assert!(ok, "user create from stdin: {err}");

    let alice512 = command_config(&secured, "alice512.properties", "SCRAM-SHA-512", "alice", "alice-secret");
    let (ok, out, err) =
        cli(&["user", "list", "--bootstrap-server", &secured.sasl_ssl, "--command-config", &alice512], None);
    assert!(ok, "user list over SASL_SSL: {err}");
    assert_eq!(
        out,
        "USER   MECHANISM      ITERATIONS\n\
         alice  SCRAM-SHA-256  8192\n\
         alice  SCRAM-SHA-512  8192\n\
         bob    SCRAM-SHA-256  4096\n"
    );
    assert!(!out.contains("secret") && !err.contains("secret"));
    let (ok, out, err) =
        cli(&["acl", "list", "--bootstrap-server", &secured.sasl_ssl, "--command-config", &alice512], None);
    assert!(ok, "acl list over SASL_SSL: {err}");
    assert!(out.starts_with("RESOURCE-TYPE"), "{out}");

    // Flags over the file: another mechanism, the password from the
    // environment; and PLAIN, all from flags.
    let ca = secured.ca.to_str().unwrap();
    let sasl_ssl = ["--bootstrap-server", &secured.sasl_ssl, "--security-protocol", "SASL_SSL"];
    let scram256 = [&sasl_ssl[..], &["--ssl-ca-location", ca, "--sasl-mechanism", "SCRAM-SHA-256"]].concat();
    let by_env = [&["user", "list", "bob"][..], &scram256, &["--sasl-username", "bob"]].concat();
    let (ok, out, err) = cli_with_env(&by_env, ("SPATE_SASL_PASSWORD", "bob-secret"));
    assert!(ok, "SCRAM-SHA-256 with the password from SPATE_SASL_PASSWORD: {err}");
    assert_eq!(out, "USER  MECHANISM      ITERATIONS\nbob   SCRAM-SHA-256  4096\n");
    let plain = [
        &["user", "list"][..],
        &sasl_ssl,
        &["--ssl-ca-location", ca, "--sasl-mechanism", "PLAIN", "--sasl-username", "alice", "--sasl-password"],
        &["alice-secret"],
    ]
    .concat();
    let (ok, _, err) = cli(&plain, None);
    assert!(ok, "PLAIN over SASL_SSL: {err}");

    let (ok, out, err) = cli(&["user", "delete", "alice", "--bootstrap-server", &secured.plain], None);
    assert!(ok, "user delete: {err}");
    assert!(out.contains("alice  SCRAM-SHA-256  DELETED") && out.contains("alice  SCRAM-SHA-512  DELETED"), "{out}");
    let (ok, _, err) =
        cli(&["user", "list", "--bootstrap-server", &secured.sasl_ssl, "--command-config", &alice512], None);
    assert!(!ok, "a deleted user logged in");
    assert!(err.contains("SASL SCRAM-SHA-512 login as \"alice\""), "{err}");
    assert!(err.contains("Authentication failed during authentication due to invalid credentials"), "{err}");
    let (ok, _, err) = cli(&["user", "delete", "alice", "--bootstrap-server", &secured.plain], None);
    assert!(!ok && err.contains("ResourceNotFound"), "deleting a deleted user: {err}");
    secured.broker.stop();
    let _ = std::fs::remove_dir_all(&secured.dir);
}

/// Each way a login fails says why: a wrong password gets the broker's
/// words, a broker whose certificate no trusted CA signed is refused
/// before any credential is sent (naming the host and the trust used), a
/// client that speaks plaintext to a TLS listener is told to use TLS, and
/// a mechanism the listener does not enable is named with those it does.
#[test]
fn wrong_passwords_untrusted_brokers_and_wrong_protocols_fail_clearly() {
    let secured = start("cli-sasl-refusals");
    let (ok, _, err) =
        cli(&["user", "create", "alice", "--password", "alice-secret", "--bootstrap-server", &secured.plain], None);
    assert!(ok, "user create: {err}");

    let wrong = command_config(&secured, "wrong.properties", "SCRAM-SHA-256", "alice", "not-it");
    let (ok, _, err) =
        cli(&["user", "list", "--bootstrap-server", &secured.sasl_ssl, "--command-config", &wrong], None);
    assert!(!ok, "a wrong password logged in");
    assert!(
        err.contains(
            "the broker refused it: SaslAuthenticationFailed: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-256"
        ),
        "{err}"
    );

    // Another CA, which did not sign the broker's certificate.
    let (other_ca, _) = certificates(&secured.dir.join("other"), "some other CA");
    let right = command_config(&secured, "right.properties", "SCRAM-SHA-512", "alice", "alice-secret");
    let other = other_ca.to_str().unwrap();
    let args = ["user", "list", "--bootstrap-server", &secured.sasl_ssl, "--command-config", &right];
    let (ok, _, err) = cli(&[&args[..], &["--ssl-ca-location", other]].concat(), None);
    assert!(!ok, "a broker no trusted CA signed was accepted");
    assert!(err.contains(&format!("TLS handshake with {}", secured.sasl_ssl)), "{err}");
    assert!(err.contains(&format!("ssl.ca.location {other}")) && err.contains("UnknownIssuer"), "{err}");
    // No CA given: the built-in public roots do not know a private CA.
    let mut settings = std::fs::read_to_string(&right).unwrap();
    settings = settings.lines().filter(|l| !l.starts_with("ssl.ca.location")).collect::<Vec<_>>().join("\n");
    let public_only = secured.dir.join("public.properties");
    std::fs::write(&public_only, settings).unwrap();
    let public_args = ["user", "list", "--bootstrap-server", &secured.sasl_ssl, "--command-config"];
    let (ok, _, err) = cli(&[&public_args[..], &[public_only.to_str().unwrap()]].concat(), None);
    assert!(!ok && err.contains("the built-in public roots") && err.contains("UnknownIssuer"), "{err}");

    let (ok, _, err) = cli(&["user", "list", "--bootstrap-server", &secured.sasl_ssl], None);
    assert!(!ok && err.contains("does the listener need SSL or SASL_SSL?"), "plaintext to TLS: {err}");
    let (ok, _, err) = cli(
        &[
            "user",
            "list",
            "--bootstrap-server",
            &secured.plain,
            "--security-protocol",
            "SASL_PLAINTEXT",
            "--sasl-username",
            "alice",
            "--sasl-password",
            "alice-secret",
        ],
        None,
    );
    assert!(!ok && err.contains("the listener does not take SASL"), "SASL to a PLAINTEXT listener: {err}");
    secured.broker.stop();
    let _ = std::fs::remove_dir_all(&secured.dir);
}

/// Mutual TLS: on an SSL listener that requires client certificates, the
/// CLI presents the one its settings name (`ssl.certificate.location`,
/// `ssl.key.location`) and is served as that certificate's principal; a
/// client without one is refused with the broker's TLS alert, and naming
/// only half of the pair is a settings error.
#[test]
fn a_client_certificate_from_the_settings_passes_mutual_tls() {
    let dir = data_dir("cli-mutual-tls");
    let tls = dir.join("tls");
    let (ca, keystore) = certificates_with_clients(&tls, "spate mTLS test CA", &["alice"]);
    let ssl_port = free_port_below_ephemeral();
    let listeners = format!("SSL://127.0.0.1:{ssl_port}");
    let properties = dir.join("server.properties");
    std::fs::write(
        &properties,
        format!(
            "listeners={listeners}\nssl.keystore.type=PEM\nssl.keystore.location={}\n\
             ssl.truststore.type=PEM\nssl.truststore.location={}\nssl.client.auth=required\n\
             super.users=User:CN=alice\n",
            keystore.display(),
            ca.display()
        ),
    )
    .unwrap();
    let broker = Broker::start_with(
        &dir.join("data"),
        1,
        0,
        &["--config", properties.to_str().unwrap(), "--listeners", &listeners],
    );
    let bootstrap = format!("127.0.0.1:{ssl_port}");
    let base = ["acl", "list", "--bootstrap-server", &bootstrap, "--security-protocol", "SSL", "--ssl-ca-location"];
    let base = [&base[..], &[ca.to_str().unwrap()]].concat();
    let (cert, key) = (tls.join("alice.crt"), tls.join("alice.key"));
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let with_pair = [&base[..], &["--ssl-certificate-location", cert, "--ssl-key-location", key]].concat();
    let (ok, out, err) = cli(&with_pair, None);
    assert!(ok, "acl list with alice's certificate: {err}");
    assert!(out.starts_with("RESOURCE-TYPE"), "{out}");

    let (ok, _, err) = cli(&base, None);
    assert!(!ok, "served without a client certificate");
    assert!(err.contains("did not answer over TLS") && err.contains("CertificateRequired"), "{err}");
    let (ok, _, err) = cli(&[&base[..], &["--ssl-certificate-location", cert]].concat(), None);
    assert!(!ok && err.contains("needs both ssl.certificate.location and ssl.key.location"), "{err}");
    broker.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The broker's host name is verified: a certificate from the trusted CA
/// but for another name is refused, and the error says which name was
/// expected.
#[test]
fn a_certificate_for_another_host_is_refused() {
    let secured = start_named("cli-host-name", &["broker.example"]);
    let ca = secured.ca.to_str().unwrap();
    let args = ["user", "list", "--bootstrap-server", &secured.sasl_ssl, "--security-protocol", "SSL"];
    let (ok, _, err) = cli(&[&args[..], &["--ssl-ca-location", ca]].concat(), None);
    assert!(!ok, "a certificate for broker.example was accepted for 127.0.0.1");
    assert!(err.contains("for \"127.0.0.1\"") && err.contains("certificate not valid for name \"127.0.0.1\""), "{err}");
    secured.broker.stop();
    let _ = std::fs::remove_dir_all(&secured.dir);
}
