//! SCRAM credentials through Kafka's AlterUserScramCredentials and
//! DescribeUserScramCredentials on an in-process broker's Kafka port (as
//! `kafka-configs --entity-type users` sends them), kept in the metadata
//! log across a restart; and the SASL requests on a listener without SASL.

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
    AlterUserScramCredentialsRequest, ApiKey, ApiVersionsRequest, DescribeUserScramCredentialsRequest,
    SaslAuthenticateRequest, SaslHandshakeRequest,
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
