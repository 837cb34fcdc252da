//! SCRAM credentials through Kafka's AlterUserScramCredentials and
//! DescribeUserScramCredentials on an in-process broker's Kafka port (as
//! `kafka-configs --entity-type users` sends them), kept in the metadata
//! log across a restart; the SASL requests on a listener without SASL;
//! and the SASL exchange on a SASL_PLAINTEXT listener, with a SCRAM client
//! written here from RFC 5802.

mod common;

use common::kafka::KafkaConn;
use common::*;
use kafka_protocol::ResponseError as K;
use kafka_protocol::messages::alter_user_scram_credentials_request::{
    ScramCredentialDeletion, ScramCredentialUpsertion,
};
use kafka_protocol::messages::describe_user_scram_credentials_request::UserName;
use kafka_protocol::messages::describe_user_scram_credentials_response::DescribeUserScramCredentialsResult;
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, ApiKey, ApiVersionsRequest, DescribeUserScramCredentialsRequest, MetadataRequest,
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
};
use kafka_protocol::protocol::StrBytes;

const SHA256: i8 = 1;
const SHA512: i8 = 2;

fn s(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_string())
}

/// What Kafka's client sends: the salted password, computed client-side.
fn upsert(user: &str, mechanism: i8, iterations: i32, password: &str) -> ScramCredentialUpsertion {
    let salt = b"client-made-salt".to_vec();
    let mut salted = vec![0u8; if mechanism == SHA512 { 64 } else { 32 }];
    if mechanism == SHA512 {
        pbkdf2::pbkdf2_hmac::<sha2::Sha512>(password.as_bytes(), &salt, iterations.max(1) as u32, &mut salted);
    } else {
        pbkdf2::pbkdf2_hmac::<sha2::Sha256>(password.as_bytes(), &salt, iterations.max(1) as u32, &mut salted);
    }
    ScramCredentialUpsertion::default()
        .with_name(s(user))
        .with_mechanism(mechanism)
        .with_iterations(iterations)
        .with_salt(salt.into())
        .with_salted_password(salted.into())
}

fn delete(user: &str, mechanism: i8) -> ScramCredentialDeletion {
    ScramCredentialDeletion::default().with_name(s(user)).with_mechanism(mechanism)
}

/// (user, error code, message) per result, in the response's order.
fn alter(
    conn: &mut KafkaConn,
    upsertions: Vec<ScramCredentialUpsertion>,
    deletions: Vec<ScramCredentialDeletion>,
) -> Vec<(String, i16, String)> {
    let request = AlterUserScramCredentialsRequest::default().with_upsertions(upsertions).with_deletions(deletions);
    let response = conn.call(0, &request);
    response
        .results
        .iter()
        .map(|r| {
            (r.user.to_string(), r.error_code, r.error_message.as_ref().map(|m| m.to_string()).unwrap_or_default())
        })
        .collect()
}

fn describe(conn: &mut KafkaConn, users: Option<&[&str]>) -> Vec<DescribeUserScramCredentialsResult> {
    let users = users.map(|users| users.iter().map(|u| UserName::default().with_name(s(u))).collect());
    let response = conn.call(0, &DescribeUserScramCredentialsRequest::default().with_users(users));
    assert_eq!(response.error_code, 0);
    response.results
}

/// (mechanism, iterations) of each described credential.
fn infos(result: &DescribeUserScramCredentialsResult) -> Vec<(i8, i32)> {
    result.credential_infos.iter().map(|c| (c.mechanism, c.iterations)).collect()
}

/// Before these APIs were served, `kafka-configs --alter --entity-type
/// users --add-config 'SCRAM-SHA-256=[...]'` had its connection closed
/// and no user could be made for SASL/SCRAM.
#[test]
fn scram_credentials_are_altered_described_and_kept_across_a_restart() {
    let dir = data_dir("scram_credentials");
    let broker = start(&dir, 2);
    let mut conn = KafkaConn::to(&broker);
    let results = alter(&mut conn, vec![upsert("alice", SHA256, 8192, "a"), upsert("bob", SHA512, 4096, "b")], vec![]);
    assert_eq!(results, vec![("alice".into(), 0, String::new()), ("bob".into(), 0, String::new())]);
    let all = describe(&mut conn, None);
    assert_eq!(all.iter().map(|r| r.user.to_string()).collect::<Vec<_>>(), ["alice", "bob"]);
    assert_eq!(infos(&all[0]), [(SHA256, 8192)]);
    assert_eq!(infos(&all[1]), [(SHA512, 4096)]);
    // An empty list is every user too, as in Kafka.
    assert_eq!(describe(&mut conn, Some(&[])).len(), 2);

    // A second mechanism for alice (with the first again, as
    // kafka-configs sends both in one request), then the first deleted.
    let both = vec![upsert("alice", SHA256, 8192, "a"), upsert("alice", SHA512, 16384, "a")];
    assert_eq!(alter(&mut conn, both, vec![]), vec![("alice".into(), 0, String::new())]);
    assert_eq!(infos(&describe(&mut conn, Some(&["alice"]))[0]), [(SHA256, 8192), (SHA512, 16384)]);
    assert_eq!(alter(&mut conn, vec![], vec![delete("alice", SHA256)])[0].1, 0);
    stop(broker);

    let broker = start(&dir, 2);
    let mut conn = KafkaConn::to(&broker);
    let kept = describe(&mut conn, Some(&["alice", "bob"]));
    assert_eq!(infos(&kept[0]), [(SHA512, 16384)], "from the metadata log after a restart");
    assert_eq!(infos(&kept[1]), [(SHA512, 4096)]);
    stop(broker);
}

/// Kafka's answers for each refused alteration and description, each
/// user on its own (a refused user does not stop the others).
#[test]
fn scram_alterations_are_refused_with_kafkas_codes() {
    let dir = data_dir("scram_refusals");
    let broker = start(&dir, 1);
    let mut conn = KafkaConn::to(&broker);
    let results = alter(
        &mut conn,
        vec![
            upsert("few", SHA256, 4095, "x"),
            upsert("many", SHA256, 16385, "x"),
            upsert("unknown", 0, 8192, "x"),
            upsert("twice", SHA256, 8192, "x"),
            upsert("both", SHA256, 8192, "x"),
            upsert("both", SHA512, 8192, "x"),
            upsert("half", SHA256, 8192, "x"),
            upsert("half", SHA512, 1, "x"),
            upsert("", SHA256, 8192, "x"),
            upsert("fine", SHA256, 8192, "x"),
        ],
        vec![delete("twice", SHA256), delete("nobody", SHA256)],
    );
    let code = |user: &str| results.iter().find(|r| r.0 == user).map(|r| (r.1, r.2.as_str()));
    assert_eq!(
        code("twice"),
        Some((K::DuplicateResource.code(), "A user credential cannot be altered twice in the same request"))
    );
    assert_eq!(
        code("nobody"),
        Some((K::ResourceNotFound.code(), "Attempt to delete a user credential that does not exist"))
    );
    assert_eq!(code("few"), Some((K::UnacceptableCredential.code(), "Too few iterations")));
    assert_eq!(code("many"), Some((K::UnacceptableCredential.code(), "Too many iterations")));
    assert_eq!(code("unknown"), Some((K::UnsupportedSaslMechanism.code(), "Unknown SCRAM mechanism")));
    assert_eq!(code(""), Some((K::UnacceptableCredential.code(), "Username must not be empty")));
    assert_eq!(code("fine"), Some((0, "")));
    assert_eq!(code("both"), Some((0, "")), "two mechanisms of one user");
    assert_eq!(code("half"), Some((K::UnacceptableCredential.code(), "Too few iterations")));
    assert_eq!(results.len(), 9, "one result per user");

    let described = describe(&mut conn, Some(&["half"]));
    assert_eq!(described[0].error_code, K::ResourceNotFound.code(), "a refused user keeps none of its changes");
    let described = describe(&mut conn, Some(&["fine", "few", "fine"]));
    let by_user = |user: &str| described.iter().find(|r| r.user.as_str() == user).map(|r| r.error_code);
    assert_eq!(by_user("fine"), Some(K::DuplicateResource.code()));
    assert_eq!(by_user("few"), Some(K::ResourceNotFound.code()));
    assert_eq!(described.len(), 2);
    stop(broker);
}

/// On a listener without SASL, Kafka answers both SASL requests with
/// ILLEGAL_SASL_STATE and serves the connection on; ApiVersions lists
/// what SASL clients look for (librdkafka needs SaslHandshake's range to
/// hold v0, or falls back to bare tokens).
#[test]
fn sasl_requests_on_a_plaintext_listener_are_illegal_and_harmless() {
    let dir = data_dir("sasl_plaintext");
    let broker = start(&dir, 1);
    let mut conn = KafkaConn::to(&broker);
    let handshake = conn.call(1, &SaslHandshakeRequest::default().with_mechanism(s("PLAIN")));
    assert_eq!(handshake.error_code, K::IllegalSaslState.code());
    let auth = conn.call(2, &SaslAuthenticateRequest::default().with_auth_bytes(b"\0alice\0pw".to_vec().into()));
    assert_eq!(auth.error_code, K::IllegalSaslState.code());
    let versions = conn.call(3, &ApiVersionsRequest::default());
    let range = |api: ApiKey| {
        versions.api_keys.iter().find(|k| k.api_key == api as i16).map(|k| (k.min_version, k.max_version))
    };
    assert_eq!(range(ApiKey::SaslHandshake), Some((0, 1)));
    assert_eq!(range(ApiKey::SaslAuthenticate), Some((0, 2)));
    assert_eq!(range(ApiKey::AlterUserScramCredentials), Some((0, 0)));
    assert_eq!(range(ApiKey::DescribeUserScramCredentials), Some((0, 0)));
    stop(broker);
}

/// A broker with a plaintext listener (for the admin) and a SASL one.
fn start_sasl(name: &str) -> (spate_net::BrokerHandle, std::net::SocketAddr, std::net::SocketAddr) {
    start_sasl_with(name, |config| config)
}

fn start_sasl_with(
    name: &str,
    tune: impl FnOnce(spate_net::BrokerConfig) -> spate_net::BrokerConfig,
) -> (spate_net::BrokerHandle, std::net::SocketAddr, std::net::SocketAddr) {
    let dir = data_dir(name);
    let config = tune(spate_net::BrokerConfig {
        listeners: "PLAINTEXT://127.0.0.1:0,SASL_PLAINTEXT://127.0.0.1:0".into(),
        // Authentication alone: no ACLs here (a SASL listener would
        // otherwise close every resource to all but super users).
        allow_everyone_if_no_acl_found: Some(true),
        ..config(&dir, 2)
    });
    let broker = spate_net::start(config).expect("broker starts");
    let addrs = broker.kafka_addrs();
    let addr =
        |listener: &str| addrs.iter().find(|(name, _)| name == listener).map(|(_, addr)| *addr).expect("listener");
    let (plain, sasl) = (addr("PLAINTEXT"), addr("SASL_PLAINTEXT"));
    (broker, plain, sasl)
}

fn hmac(mechanism: i8, key: &[u8], data: &[u8]) -> Vec<u8> {
    use hmac::Mac;
    if mechanism == SHA512 {
        let mut mac = hmac::Hmac::<sha2::Sha512>::new_from_slice(key).expect("any key");
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    } else {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key");
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    }
}

fn digest(mechanism: i8, data: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    if mechanism == SHA512 { sha2::Sha512::digest(data).to_vec() } else { sha2::Sha256::digest(data).to_vec() }
}

fn authenticate(conn: &mut KafkaConn, version: i16, token: &[u8]) -> Option<SaslAuthenticateResponse> {
    conn.try_call(version, &SaslAuthenticateRequest::default().with_auth_bytes(token.to_vec().into()))
}

/// A SCRAM client as RFC 5802 describes it: handshake, client-first,
/// client-final; returns the last answer (None: the broker closed).
fn scram_login(conn: &mut KafkaConn, mechanism: i8, user: &str, password: &str) -> Option<SaslAuthenticateResponse> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let name = if mechanism == SHA512 { "SCRAM-SHA-512" } else { "SCRAM-SHA-256" };
    let handshake = conn.call(1, &SaslHandshakeRequest::default().with_mechanism(s(name)));
    assert_eq!(handshake.error_code, 0);
    let client_first_bare = format!("n={user},r=fyko+d2lbbFgONRv9qkxdawL");
    let first = authenticate(conn, 2, format!("n,,{client_first_bare}").as_bytes())?;
    assert_eq!(first.error_code, 0, "{:?}", first.error_message);
    let server_first = String::from_utf8(first.auth_bytes.to_vec()).expect("utf-8");
    let fields: Vec<&str> = server_first.split(',').collect();
    let nonce = fields[0].strip_prefix("r=").expect("nonce");
    assert!(nonce.starts_with("fyko+d2lbbFgONRv9qkxdawL") && nonce.len() > 24, "the server's nonce follows ours");
    let salt = b64.decode(fields[1].strip_prefix("s=").expect("salt")).expect("base64");
    let iterations: u32 = fields[2].strip_prefix("i=").expect("iterations").parse().expect("a number");
    let mut salted = vec![0u8; if mechanism == SHA512 { 64 } else { 32 }];
    if mechanism == SHA512 {
        pbkdf2::pbkdf2_hmac::<sha2::Sha512>(password.as_bytes(), &salt, iterations, &mut salted);
    } else {
        pbkdf2::pbkdf2_hmac::<sha2::Sha256>(password.as_bytes(), &salt, iterations, &mut salted);
    }
    let client_key = hmac(mechanism, &salted, b"Client Key");
    let stored_key = digest(mechanism, &client_key);
    let without_proof = format!("c=biws,r={nonce}");
    let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
    let signature = hmac(mechanism, &stored_key, auth_message.as_bytes());
    let proof: Vec<u8> = client_key.iter().zip(&signature).map(|(k, s)| k ^ s).collect();
    let last = authenticate(conn, 2, format!("{without_proof},p={}", b64.encode(proof)).as_bytes())?;
    if last.error_code == 0 {
        let server_key = hmac(mechanism, &salted, b"Server Key");
        let expected = format!("v={}", b64.encode(hmac(mechanism, &server_key, auth_message.as_bytes())));
        assert_eq!(last.auth_bytes.as_ref(), expected.as_bytes(), "the server proves it knows the credential");
    }
    Some(last)
}

/// A request other than the SASL ones before authentication: closed.
fn metadata_refused(conn: &mut KafkaConn) -> bool {
    conn.try_call(12, &MetadataRequest::default().with_topics(Some(vec![]))).is_none()
}

/// On a SASL_PLAINTEXT listener a client gets nothing but ApiVersions and
/// the exchange until it authenticates, with SCRAM-SHA-256, SCRAM-SHA-512
/// or PLAIN against the credentials made through the plaintext listener;
/// a wrong password gets Kafka's error and text, then a closed connection.
#[test]
fn sasl_scram_and_plain_authenticate_on_a_sasl_listener() {
    let (broker, plain, sasl) = start_sasl("sasl_listener");
    let mut admin = KafkaConn::connect(plain);
    let users = vec![upsert("alice", SHA256, 4096, "alice-secret"), upsert("alice", SHA512, 4096, "alice-secret")];
    assert_eq!(alter(&mut admin, users, vec![])[0].1, 0);

    let mut conn = KafkaConn::connect(sasl);
    assert!(metadata_refused(&mut conn), "a request before authentication closes the connection");

    for mechanism in [SHA256, SHA512] {
        let mut conn = KafkaConn::connect(sasl);
        assert_eq!(conn.call(3, &ApiVersionsRequest::default()).error_code, 0, "ApiVersions before SASL");
        let done = scram_login(&mut conn, mechanism, "alice", "alice-secret").expect("an answer");
        assert_eq!((done.error_code, done.session_lifetime_ms), (0, 0));
        let metadata = conn.call(12, &MetadataRequest::default().with_topics(Some(vec![])));
        assert!(!metadata.brokers.is_empty(), "served once authenticated");
        let again = conn.call(1, &SaslHandshakeRequest::default().with_mechanism(s("PLAIN")));
        assert_eq!(again.error_code, K::IllegalSaslState.code(), "no second handshake");

        let mut conn = KafkaConn::connect(sasl);
        let refused = scram_login(&mut conn, mechanism, "alice", "wrong").expect("an answer before the close");
        assert_eq!(refused.error_code, K::SaslAuthenticationFailed.code());
        let name = if mechanism == SHA512 { "SCRAM-SHA-512" } else { "SCRAM-SHA-256" };
        assert_eq!(
            refused.error_message.as_deref(),
            Some(
                format!(
                    "Authentication failed during authentication due to invalid credentials with SASL mechanism {name}"
                )
                .as_str()
            )
        );
        assert!(metadata_refused(&mut conn), "closed after a failure");
    }

    let mut conn = KafkaConn::connect(sasl);
    assert_eq!(conn.call(1, &SaslHandshakeRequest::default().with_mechanism(s("PLAIN"))).error_code, 0);
    assert_eq!(authenticate(&mut conn, 0, b"\0alice\0alice-secret").expect("answer").error_code, 0);
    assert!(!metadata_refused(&mut conn), "PLAIN authenticated");
    let mut conn = KafkaConn::connect(sasl);
    assert_eq!(conn.call(1, &SaslHandshakeRequest::default().with_mechanism(s("PLAIN"))).error_code, 0);
    let refused = authenticate(&mut conn, 1, b"\0alice\0nope").expect("answer");
    assert_eq!(refused.error_code, K::SaslAuthenticationFailed.code());
    stop(broker);
}

/// What a client gets wrong before any password: a mechanism not offered
/// (told the list, then closed), tokens before a handshake, and Kafka
/// 0.10's SaslHandshake v0 followed by a bare token (closed, not read as
/// a request).
#[test]
fn sasl_handshake_refusals_close_the_connection() {
    let (broker, _plain, sasl) = start_sasl("sasl_refusals");
    let mut conn = KafkaConn::connect(sasl);
    let handshake = conn.call(1, &SaslHandshakeRequest::default().with_mechanism(s("GSSAPI")));
    assert_eq!(handshake.error_code, K::UnsupportedSaslMechanism.code());
    let offered: Vec<String> = handshake.mechanisms.iter().map(|m| m.to_string()).collect();
    assert_eq!(offered, ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"]);
    assert!(metadata_refused(&mut conn));

    let mut conn = KafkaConn::connect(sasl);
    let early = authenticate(&mut conn, 2, b"\0alice\0x").expect("an answer");
    assert_eq!(early.error_code, K::IllegalSaslState.code());
    assert!(metadata_refused(&mut conn));

    let mut conn = KafkaConn::connect(sasl);
    assert_eq!(conn.call(0, &SaslHandshakeRequest::default().with_mechanism(s("PLAIN"))).error_code, 0);
    // Kafka 0.10's next frame: the bare PLAIN token after its size.
    use std::io::Write;
    let token = b"\0alice\0alice-secret";
    let mut frame = (token.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(token);
    conn.stream().write_all(&frame).expect("write");
    assert!(metadata_refused(&mut conn), "closed, not read as a request");
    stop(broker);
}

/// Credentials are cluster metadata: made through one broker, they let a
/// client log in on every other, once each has applied the record from
/// the metadata log (no broker keeps its own users).
#[test]
fn a_user_made_on_one_broker_logs_in_on_the_others() {
    let quorum: Vec<String> = (1..=3).map(|node| format!("{node}@127.0.0.1:{}", free_port())).collect();
    let quorum = quorum.join(",");
    let configs: Vec<spate_net::BrokerConfig> = (1..=3)
        .map(|node| spate_net::BrokerConfig {
            node_id: node,
            controller_quorum: quorum.clone(),
            listeners: "PLAINTEXT://127.0.0.1:0,SASL_PLAINTEXT://127.0.0.1:0".into(),
            allow_everyone_if_no_acl_found: Some(true),
            ..config(&data_dir(&format!("scram_cluster-{node}")), 1)
        })
        .collect();
    let starting: Vec<_> = configs
        .into_iter()
        .map(|config| std::thread::spawn(move || spate_net::start(config).expect("broker starts")))
        .collect();
    let brokers: Vec<spate_net::BrokerHandle> = starting.into_iter().map(|t| t.join().expect("started")).collect();
    let addr = |broker: &spate_net::BrokerHandle, listener: &str| {
        broker.kafka_addrs().into_iter().find(|(name, _)| name == listener).map(|(_, addr)| addr).expect("listener")
    };
    let mut admin = KafkaConn::connect(addr(&brokers[0], "PLAINTEXT"));
    assert_eq!(alter(&mut admin, vec![upsert("carol", SHA512, 4096, "carol-secret")], vec![])[0].1, 0);
    for broker in &brokers[1..] {
        let sasl = addr(broker, "SASL_PLAINTEXT");
        await_condition("the credential on every broker", || {
            let mut conn = KafkaConn::connect(sasl);
            scram_login(&mut conn, SHA512, "carol", "carol-secret").is_some_and(|done| done.error_code == 0)
        });
    }
    for broker in brokers {
        stop(broker);
    }
}

/// Before SASL succeeds a client may send only a handshake's worth of
/// bytes per request (Kafka's sasl.server.max.receive.size, 512 KiB):
/// a larger frame closes the connection before its body is read, so
/// clients that never log in cannot fill the shard's byte budget. The
/// same size is fine once authenticated. (Before the bound, the broker
/// read and buffered the whole 1 MiB frame and then closed.)
#[test]
fn an_unauthenticated_client_cannot_send_large_frames() {
    use std::io::{Read, Write};
    let (broker, plain, sasl) = start_sasl("sasl_frame_cap");
    let mut admin = KafkaConn::connect(plain);
    assert_eq!(alter(&mut admin, vec![upsert("alice", SHA256, 4096, "alice-secret")], vec![])[0].1, 0);

    let mut conn = KafkaConn::connect(sasl);
    let size = 1i32 << 20;
    conn.stream().write_all(&size.to_be_bytes()).expect("write a size");
    // The broker closes on the size alone: a read sees the end, not a wait.
    conn.stream().set_read_timeout(Some(std::time::Duration::from_secs(10))).expect("timeout");
    let mut byte = [0u8; 1];
    assert!(matches!(conn.stream().read(&mut byte), Ok(0)), "the connection stays open after a 1 MiB size");

    // Authenticated, a 1 MiB request is an ordinary one.
    let mut conn = KafkaConn::connect(sasl);
    assert_eq!(scram_login(&mut conn, SHA256, "alice", "alice-secret").expect("answer").error_code, 0);
    let big_topic = "t".repeat(200);
    let topics: Vec<_> = (0..4000)
        .map(|i| {
            kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                .with_name(Some(common::kafka::name(&format!("{big_topic}-{i}"))))
        })
        .collect();
    let request = MetadataRequest::default().with_topics(Some(topics)).with_allow_auto_topic_creation(false);
    let answer = conn.call(12, &request);
    assert_eq!(answer.topics.len(), 4000);
    stop(broker);
}

/// A batch under a producer id given to another principal is refused
/// (issue 14's last item): the id's tag binds it to the principal that got
/// it from InitProducerId, so mallory, authenticated and allowed to write,
/// cannot send batches as alice's idempotent producer (which would make
/// alice's own next batches look like duplicates, acknowledged and never
/// stored). Alice's own batches go in. Before the binding, mallory's batch
/// was appended as alice's sequence 0.
#[test]
fn a_producer_id_is_refused_to_any_principal_but_its_own() {
    use kafka_protocol::messages::InitProducerIdRequest;
    let (broker, plain, sasl) = start_sasl("sasl_producer_ids");
    let mut admin = KafkaConn::connect(plain);
    let users = vec![upsert("alice", SHA256, 4096, "alice-secret"), upsert("mallory", SHA256, 4096, "mallory-secret")];
    assert!(alter(&mut admin, users, vec![]).iter().all(|(_, code, _)| *code == 0));
    assert_eq!(admin.create_topic("ids", 1, 1), 0);

    let login = |user: &str, password: &str| {
        let mut conn = KafkaConn::connect(sasl);
        assert_eq!(scram_login(&mut conn, SHA256, user, password).expect("answer").error_code, 0);
        conn
    };
    let mut alice = login("alice", "alice-secret");
    let mut mallory = login("mallory", "mallory-secret");
    let init = alice
        .call(4, &InitProducerIdRequest::default().with_transactional_id(None).with_transaction_timeout_ms(60_000));
    assert_eq!(init.error_code, 0);
    let id = init.producer_id.0;
    let batch = |sequence: i32, value: &str| {
        let mut builder = spate_format::batch::BatchBuilder::new(1_700_000_000_000).producer(id, 0, sequence);
        builder.push(1_700_000_000_000, None, Some(value.as_bytes()), &[]);
        builder.build().to_vec()
    };
    let (refused, _) = mallory.produce("ids", 0, batch(0, "mallory"));
    assert_eq!(refused, K::ClusterAuthorizationFailed.code(), "mallory wrote under alice's producer id");
    // Nor can an unauthenticated client on the plaintext listener.
    assert_eq!(admin.produce("ids", 0, batch(0, "anonymous")).0, K::ClusterAuthorizationFailed.code());
    assert_eq!(alice.produce("ids", 0, batch(0, "alice-0")), (0, 0), "alice's first batch is the log's first");
    assert_eq!(alice.produce("ids", 0, batch(1, "alice-1")), (0, 1));
    stop(broker);
}

/// KIP-368: with connections.max.reauth.ms a login lasts that long and
/// the client is told so; logging in again on the same connection (as the
/// same user) extends it; a connection past its login serves nothing but
/// a re-authentication (closed); a re-authentication as another user is
/// refused and closes the connection. Before, a login lasted as long as
/// its connection and a second handshake was always refused.
#[test]
fn with_connections_max_reauth_ms_a_login_expires_unless_the_client_logs_in_again() {
    let lifetime_ms = 1_500;
    let (broker, plain, sasl) = start_sasl_with("sasl_reauth", |config| spate_net::BrokerConfig {
        connections_max_reauth_ms: lifetime_ms,
        ..config
    });
    let mut admin = KafkaConn::connect(plain);
    let users = vec![upsert("alice", SHA256, 4096, "alice-secret"), upsert("bob", SHA256, 4096, "bob-secret")];
    assert_eq!(alter(&mut admin, users, vec![])[0].1, 0);
    let served = |conn: &mut KafkaConn| !metadata_refused(conn);

    let mut lapsing = KafkaConn::connect(sasl);
    let login = scram_login(&mut lapsing, SHA256, "alice", "alice-secret").expect("an answer");
    assert_eq!((login.error_code, login.session_lifetime_ms), (0, lifetime_ms as i64));
    assert!(served(&mut lapsing));
    let mut renewing = KafkaConn::connect(sasl);
    assert_eq!(scram_login(&mut renewing, SHA256, "alice", "alice-secret").expect("an answer").error_code, 0);

    std::thread::sleep(std::time::Duration::from_millis(900));
    let again = scram_login(&mut renewing, SHA256, "alice", "alice-secret").expect("re-authenticated");
    assert_eq!((again.error_code, again.session_lifetime_ms), (0, lifetime_ms as i64));
    std::thread::sleep(std::time::Duration::from_millis(900));
    // 1.8 s after the first logins: the renewed one is 0.9 s old.
    assert!(served(&mut renewing), "a renewed login is served");
    assert!(!served(&mut lapsing), "an expired login is closed at its next request");

    let mut switching = KafkaConn::connect(sasl);
    assert_eq!(scram_login(&mut switching, SHA256, "alice", "alice-secret").expect("an answer").error_code, 0);
    let refused = scram_login(&mut switching, SHA256, "bob", "bob-secret").expect("an answer before the close");
    assert_eq!(refused.error_code, K::SaslAuthenticationFailed.code());
    assert!(refused.error_message.unwrap_or_default().contains("Cannot change principals"));
    assert!(!served(&mut switching), "closed after a refused re-authentication");
    stop(broker);
}
