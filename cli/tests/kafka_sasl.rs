//! SASL over TLS on the Kafka listener (issue 16), shown with a client we
//! did not write: kcat (librdkafka 2.0.2, Debian's) against a real `spate
//! serve` with a PLAINTEXT listener, where the user is made (as an
//! operator makes the first users), and a SASL_SSL one. The certificate
//! comes from a throwaway CA made here.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::tls::{Ca, kcat, text};
use common::{Broker, data_dir, free_port_below_ephemeral};
use kafka_protocol::messages::alter_user_scram_credentials_request::ScramCredentialUpsertion;
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse, ApiKey, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

const REFUSED: &str = "Authentication failed during authentication due to invalid credentials with SASL mechanism";

/// The CA's certificate, and a broker keystore (chain and key in one PEM
/// file, KIP-651) it issued for the loopback names.
fn certificates(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    Ca::new("spate SASL test CA").write_broker_stores(dir, &["localhost", "127.0.0.1"])
}

/// AlterUserScramCredentials v0 on the plaintext listener, with the salted
/// password computed here as Kafka's clients do.
fn make_user(port: u16, user: &str, password: &str) {
    let salt = b"kafka-sasl-test-salt".to_vec();
    let mut sha256 = vec![0u8; 32];
    pbkdf2::pbkdf2_hmac::<sha2::Sha256>(password.as_bytes(), &salt, 4096, &mut sha256);
    let mut sha512 = vec![0u8; 64];
    pbkdf2::pbkdf2_hmac::<sha2::Sha512>(password.as_bytes(), &salt, 4096, &mut sha512);
    let upsert = |mechanism: i8, salted: Vec<u8>| {
        ScramCredentialUpsertion::default()
            .with_name(StrBytes::from_string(user.to_string()))
            .with_mechanism(mechanism)
            .with_iterations(4096)
            .with_salt(Bytes::from(salt.clone()))
            .with_salted_password(Bytes::from(salted))
    };
    let request =
        AlterUserScramCredentialsRequest::default().with_upsertions(vec![upsert(1, sha256), upsert(2, sha512)]);
    let api = ApiKey::AlterUserScramCredentials;
    let header =
        RequestHeader::default().with_request_api_key(api as i16).with_request_api_version(0).with_correlation_id(1);
    let mut body = BytesMut::new();
    header.encode(&mut body, api.request_header_version(0)).unwrap();
    request.encode(&mut body, 0).unwrap();
    let mut frame = BytesMut::new();
    frame.put_i32(body.len() as i32);
    frame.put_slice(&body);
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.write_all(&frame).unwrap();
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).unwrap();
    let mut answer = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut answer).unwrap();
    let mut answer = Bytes::from(answer);
    ResponseHeader::decode(&mut answer, api.response_header_version(0)).unwrap();
    let response = AlterUserScramCredentialsResponse::decode(&mut answer, 0).unwrap();
    assert_eq!(response.results.len(), 1);
    assert_eq!(response.results[0].error_code, 0, "{response:?}");
}

/// kcat's settings for SASL_SSL as `user` with `mechanism`.
fn sasl_ssl<'a>(ca: &'a str, mechanism: &'a str, password: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("security.protocol", "SASL_SSL"),
        ("ssl.ca.location", ca),
        ("sasl.mechanism", mechanism),
        ("sasl.username", "alice"),
        ("sasl.password", password),
    ]
}

/// Issue 16's first proof: a Kafka client authenticates with SCRAM over
/// TLS and produces and consumes; a wrong password is refused with Kafka's
/// words, and TLS alone (no SASL) gets nothing. kcat's librdkafka sends
/// its nonce twice in SCRAM's last message (fixed in librdkafka 2.6.1):
/// before Spate took that form, every SCRAM login here failed.
#[test]
fn kcat_authenticates_with_scram_and_plain_over_sasl_ssl() {
    let dir = data_dir("kafka-sasl-ssl");
    let (ca, keystore) = certificates(&dir.join("tls"));
    let (plain_port, sasl_port) = (free_port_below_ephemeral(), free_port_below_ephemeral());
    let listeners = format!("PLAINTEXT://127.0.0.1:{plain_port},SASL_SSL://127.0.0.1:{sasl_port}");
    let properties = dir.join("server.properties");
    std::fs::write(
        &properties,
        // Authentication alone: no ACLs here (a SASL listener would
        // otherwise close every resource to all but super users).
        format!(
            "listeners={listeners}\nssl.keystore.type=PEM\nssl.keystore.location={}\nallow.everyone.if.no.acl.found=true\n",
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
    make_user(plain_port, "alice", "alice-secret");
    let ca = ca.to_str().unwrap();

    let scram512 = sasl_ssl(ca, "SCRAM-SHA-512", "alice-secret");
    let produced = kcat(sasl_port, &scram512, &["-P", "-t", "secure", "-m", "10"], Some("one\ntwo\nthree\n"));
    assert!(produced.status.success(), "kcat -P over SASL_SSL: {}", text(&produced));
    let scram256 = sasl_ssl(ca, "SCRAM-SHA-256", "alice-secret");
    let consume = ["-C", "-t", "secure", "-o", "beginning", "-c", "3", "-e", "-m", "10"];
    let consumed = kcat(sasl_port, &scram256, &consume, None);
    assert!(consumed.status.success(), "kcat -C over SASL_SSL: {}", text(&consumed));
    assert_eq!(String::from_utf8_lossy(&consumed.stdout), "one\ntwo\nthree\n");
    let plain = kcat(sasl_port, &sasl_ssl(ca, "PLAIN", "alice-secret"), &["-L", "-m", "10"], None);
    assert!(plain.status.success(), "kcat -L with PLAIN over SASL_SSL: {}", text(&plain));

    let wrong = kcat(sasl_port, &sasl_ssl(ca, "SCRAM-SHA-512", "not-it"), &["-L", "-m", "3"], None);
    assert!(!wrong.status.success(), "a wrong password got metadata: {}", text(&wrong));
    assert!(text(&wrong).contains(&format!("{REFUSED} SCRAM-SHA-512")), "{}", text(&wrong));
    let tls_only = [("security.protocol", "SSL"), ("ssl.ca.location", ca)];
    let unauthenticated = kcat(sasl_port, &tls_only, &["-L", "-m", "3"], None);
    assert!(!unauthenticated.status.success(), "served without SASL: {}", text(&unauthenticated));
    broker.stop();
}

/// SASL on the native port (issue 16): the Rust client logs in with SCRAM
/// (both hashes) or PLAIN and is then its user for the ACLs, while a
/// client that does not log in stays `User:ANONYMOUS`; a wrong password
/// is refused with SaslAuthenticationFailed. Before, native connections
/// had no way to authenticate.
#[test]
fn the_native_client_authenticates_with_scram_and_plain_and_is_authorized_as_its_user() {
    use spate_client::scram::ScramMechanism;
    use spate_client::{
        Admin, Client, ClientConfig, ClientError, ErrorCode, Producer, ProducerConfig, ProducerRecord, SaslConfig,
        SaslMechanism,
    };
    let dir = data_dir("native-sasl");
    let (plain_port, sasl_port) = (free_port_below_ephemeral(), free_port_below_ephemeral());
    let listeners = format!("PLAINTEXT://127.0.0.1:{plain_port},SASL_PLAINTEXT://127.0.0.1:{sasl_port}");
    let properties = dir.join("server.properties");
    std::fs::create_dir_all(&dir).unwrap();
    // Open where no ACL says otherwise (so the user and the ACL can be
    // made as ANONYMOUS), alice a super user.
    std::fs::write(
        &properties,
        format!("listeners={listeners}\nallow.everyone.if.no.acl.found=true\nsuper.users=User:alice\n"),
    )
    .unwrap();
    let broker = Broker::start_with(
        &dir.join("data"),
        1,
        0,
        &["--config", properties.to_str().unwrap(), "--listeners", &listeners],
    );
    make_user(plain_port, "alice", "alice-secret");
    let kafka = format!("127.0.0.1:{plain_port}");
    let deny = ["acl", "create", "--deny-principal", "User:ANONYMOUS", "--operation", "All", "--topic", "payroll"];
    let (ok, _, err) = common::cli(&[&deny[..], &["--bootstrap-server", &kafka]].concat(), None);
    assert!(ok, "spate acl create: {err}");

    let config = |sasl: Option<(SaslMechanism, &str)>| ClientConfig {
        bootstrap: vec![broker.addr()],
        request_timeout_ms: 10_000,
        sasl: sasl.map(|(mechanism, password)| SaslConfig {
            mechanism,
            username: "alice".into(),
            password: password.into(),
        }),
        ..ClientConfig::default()
    };
    let runtime = common::runtime();
    runtime.block_on(async {
        // alice over SCRAM-SHA-512: a super user.
        let alice = Client::connect(config(Some((SaslMechanism::Scram(ScramMechanism::Sha512), "alice-secret"))))
            .await
            .unwrap();
        Admin::new(alice.clone()).create_topic("payroll", 1, 1, &[]).await.unwrap();
        let producer = Producer::new(alice.clone(), ProducerConfig::default()).unwrap();
        let delivery = producer.send(ProducerRecord::new("payroll", "salary")).await.unwrap();
        assert_eq!(delivery.await.unwrap().offset, 0, "alice produces");
        producer.close().await.unwrap();
        // The same from SCRAM-SHA-256 and PLAIN logins.
        for mechanism in [SaslMechanism::Scram(ScramMechanism::Sha256), SaslMechanism::Plain] {
            let client = Client::connect(config(Some((mechanism, "alice-secret")))).await.unwrap();
            let topics = Admin::new(client).describe_topics(Some(&["payroll".to_string()])).await;
            assert!(topics.is_ok(), "{mechanism:?}: {topics:?}");
        }
        // ANONYMOUS: denied by the ACL.
        let anonymous = Client::connect(config(None)).await.unwrap();
        let described = Admin::new(anonymous.clone()).describe_topics(Some(&["payroll".to_string()])).await;
        assert!(
            matches!(described, Err(ClientError::Server { code: ErrorCode::TopicAuthorizationFailed, .. })),
            "{described:?}"
        );
        let producer = Producer::new(anonymous, ProducerConfig::default()).unwrap();
        let refused = match producer.send(ProducerRecord::new("payroll", "x")).await {
            Ok(delivery) => delivery.await.map(|_| ()),
            Err(err) => Err(err),
        };
        assert!(refused.is_err(), "an anonymous produce went through");
        // A wrong password: refused, never served.
        let wrong = config(Some((SaslMechanism::Scram(ScramMechanism::Sha512), "not-it")));
        let refused = Client::connect(wrong).await;
        let text = format!("{refused:?}");
        assert!(text.contains("SaslAuthenticationFailed"), "{text}");
    });
    // The CLI's native commands: the same login from a Kafka client's
    // properties file, or refused as ANONYMOUS.
    let brokers = broker.addr();
    let alice = dir.join("alice.properties");
    std::fs::write(&alice, "security.protocol=SASL_PLAINTEXT\nsasl.mechanism=SCRAM-SHA-256\nsasl.username=alice\nsasl.password=alice-secret\n").unwrap();
    let alice = alice.to_str().unwrap();
    let produce = ["--brokers", &brokers, "produce", "payroll"];
    let (ok, _, err) = common::cli(&produce, Some(b"bonus\n"));
    assert!(!ok && err.contains("TopicAuthorizationFailed"), "an anonymous produce: {err}");
    let (ok, _, err) = common::cli(&[&produce[..], &["--command-config", alice]].concat(), Some(b"bonus\n"));
    assert!(ok, "alice's produce: {err}");
    let consume = ["--brokers", &brokers, "consume", "payroll", "--from-beginning", "--count", "2"];
    let (ok, out, err) = common::cli(&[&consume[..], &["--command-config", alice]].concat(), None);
    assert!(ok, "alice's consume: {err}");
    assert_eq!(out, "salary\nbonus\n");
    // This broker's native ports take no TLS: a TLS client is refused.
    let (ok, _, err) = common::cli(&[&consume[..], &["--security-protocol", "SSL"]].concat(), None);
    assert!(!ok && err.contains("TLS handshake failed"), "{err}");
    broker.stop();
}

/// A signing key for OAUTHBEARER tokens (ECDSA P-256, as an identity
/// provider's) and its JWKS entry, `kid` naming it.
fn jwt_key(kid: &str) -> (jsonwebtoken::EncodingKey, serde_json::Value) {
    use base64::Engine as _;
    let pair = rcgen::KeyPair::generate().unwrap();
    // The raw public key is the uncompressed point: 0x04, x, y.
    let point = pair.public_key_raw();
    assert_eq!((point.len(), point[0]), (65, 4));
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let jwk =
        serde_json::json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": b64(&point[1..33]), "y": b64(&point[33..])});
    (jsonwebtoken::EncodingKey::from_ec_der(&pair.serialize_der()), jwk)
}

/// A JWT for `sub`, expiring `expires_in_s` from now (negative: expired),
/// signed by `key` under key id `kid`.
fn token(key: &jsonwebtoken::EncodingKey, kid: &str, sub: &str, expires_in_s: i64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid.to_string());
    let claims =
        serde_json::json!({"sub": sub, "iss": "test-idp", "aud": "spate", "iat": now, "exp": now + expires_in_s});
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

/// confluent-kafka (librdkafka) producing 3 records with OAUTHBEARER and
/// `token` (compat/python/ck_oauthbearer.py): success, or its error text.
fn produce_with_token(port: u16, topic: &str, token: &str) -> Result<(), String> {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/compat/venv/bin/python");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../compat/python/ck_oauthbearer.py");
    let output = std::process::Command::new(python)
        .arg(script)
        .args(["--bootstrap", &format!("127.0.0.1:{port}"), "--topic", topic, "--token", token])
        .output()
        .expect("run ck_oauthbearer.py (compat/install.sh makes the venv)");
    if output.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&output.stderr).into_owned()) }
}

/// SASL OAUTHBEARER (issue 16, KIP-768's validation), shown with
/// librdkafka's OAUTHBEARER client: a token signed by a key of the
/// broker's JWKS logs in as the `User:` its `sub` names (alice, a super
/// user, produces; bob, with no ACL, is refused the topic); an expired
/// token, one signed by a key not in the JWKS, one for another audience
/// and one for another issuer are refused with Kafka's words.
#[test]
fn librdkafka_logs_in_with_an_oauthbearer_jwt_the_jwks_verifies() {
    let dir = data_dir("kafka-oauthbearer");
    let (key, jwk) = jwt_key("idp-key-1");
    let (stranger, _) = jwt_key("idp-key-1");
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, serde_json::json!({ "keys": [jwk] }).to_string()).unwrap();
    let (plain_port, sasl_port) = (free_port_below_ephemeral(), free_port_below_ephemeral());
    let listeners = format!("PLAINTEXT://127.0.0.1:{plain_port},SASL_PLAINTEXT://127.0.0.1:{sasl_port}");
    let properties = dir.join("server.properties");
    std::fs::write(
        &properties,
        format!(
            "listeners={listeners}\nsasl.enabled.mechanisms=OAUTHBEARER\n\
             sasl.oauthbearer.jwks.endpoint.url=file://{}\nsasl.oauthbearer.expected.audience=spate\n\
             sasl.oauthbearer.expected.issuer=test-idp\n\
             listener.name.sasl_plaintext.oauthbearer.sasl.server.callback.handler.class=\
             org.apache.kafka.common.security.oauthbearer.OAuthBearerValidatorCallbackHandler\n\
             allow.everyone.if.no.acl.found=false\nsuper.users=User:alice;User:ANONYMOUS\nnum.partitions=1\n",
            jwks.display()
        ),
    )
    .unwrap();
    let broker = Broker::start_with(
        &dir.join("data"),
        1,
        0,
        &["--config", properties.to_str().unwrap(), "--listeners", &listeners],
    );
    let (ok, _, err) =
        common::cli(&["--brokers", &broker.addr(), "topic", "create", "oauth", "--partitions", "1"], None);
    assert!(ok, "{err}");

    produce_with_token(sasl_port, "oauth", &token(&key, "idp-key-1", "alice", 600)).expect("alice produces");
    let bob = produce_with_token(sasl_port, "oauth", &token(&key, "idp-key-1", "bob", 600));
    assert!(bob.as_ref().is_err_and(|e| e.contains("TOPIC_AUTHORIZATION_FAILED")), "bob: {bob:?}");
    let refused = [
        ("expired", token(&key, "idp-key-1", "alice", -600)),
        ("signed by a key not in the JWKS", token(&stranger, "idp-key-1", "alice", 600)),
        ("a key id not in the JWKS", token(&key, "other-key", "alice", 600)),
    ];
    for (what, jwt) in refused {
        let result = produce_with_token(sasl_port, "oauth", &jwt);
        assert!(result.as_ref().is_err_and(|e| e.contains(REFUSED)), "{what}: {result:?}");
    }
    for (claim, value) in [("aud", "someone-else"), ("iss", "another-idp")] {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        let mut claims = serde_json::json!({"sub": "alice", "iss": "test-idp", "aud": "spate", "exp": now + 600});
        claims[claim] = serde_json::json!(value);
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("idp-key-1".into());
        let jwt = jsonwebtoken::encode(&header, &claims, &key).unwrap();
        let result = produce_with_token(sasl_port, "oauth", &jwt);
        assert!(result.as_ref().is_err_and(|e| e.contains(REFUSED)), "{claim}={value}: {result:?}");
    }
    broker.stop();
}
