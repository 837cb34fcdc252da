//! Kafka's AlterUserScramCredentials and DescribeUserScramCredentials
//! (KIP-554): SCRAM credentials kept in the metadata log.
//!
//! An upsertion carries the salt and the salted password, which Kafka's
//! clients compute (`kafka-configs --add-config 'SCRAM-SHA-256=[...]'`);
//! the broker derives StoredKey and ServerKey from it and drops it, so
//! only those reach the controller and the log. Each user's alteration
//! goes through the controller on the admin shard, one user at a time.
//! Kafka's rules: a user and mechanism named twice in one request is
//! DUPLICATE_RESOURCE (for the whole user), an unknown mechanism UNSUPPORTED_SASL_MECHANISM,
//! iterations outside 4096..=16384 UNACCEPTABLE_CREDENTIAL, deleting or
//! describing what does not exist RESOURCE_NOT_FOUND. A description lists
//! mechanisms and iterations, never salts or keys.

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use futures::channel::oneshot;
use kafka_protocol::ResponseError as K;
use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use kafka_protocol::messages::describe_user_scram_credentials_response::{
    CredentialInfo, DescribeUserScramCredentialsResult,
};
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse, DescribeUserScramCredentialsRequest,
    DescribeUserScramCredentialsResponse,
};
use kafka_protocol::protocol::StrBytes;
use spate_replication::acl::AclOperation;
use spate_replication::limits::{SCRAM_ITERATIONS_MAX, SCRAM_ITERATIONS_MIN};
use spate_replication::{ControllerError, ScramCredential, ScramMechanism};

use super::{Ctx, decode, respond};
use crate::admin::{ADMIN_SHARD, AdminOp, ScramAlteration};
use crate::limits::{SCRAM_ALTERATIONS_PER_REQUEST_MAX, SCRAM_USERS_PER_DESCRIBE_MAX};
use crate::security::sasl::scram_keys;
use crate::shard::ShardOp;
use crate::wire::{Reply, Response};

/// How long an alteration waits for the controller (the request has no
/// timeout of its own).
const ALTER_TIMEOUT_MS: u64 = 30_000;

/// Kafka's answer for one user.
type UserError = (i16, String);

fn unsupported() -> UserError {
    (K::UnsupportedSaslMechanism.code(), "Unknown SCRAM mechanism".into())
}

/// One upsertion checked, its keys derived: the salted password goes no
/// further than this function.
fn upsertion(
    mechanism: i8,
    iterations: i32,
    salt: &[u8],
    salted_password: &[u8],
) -> Result<(ScramMechanism, ScramCredential), UserError> {
    let mechanism = ScramMechanism::from_kafka_type(mechanism).ok_or_else(unsupported)?;
    let unacceptable = |text: String| (K::UnacceptableCredential.code(), text);
    // Kafka's words for its bounds; the controller checks them again.
    if iterations < SCRAM_ITERATIONS_MIN as i32 {
        return Err(unacceptable("Too few iterations".into()));
    }
    if iterations > SCRAM_ITERATIONS_MAX as i32 {
        return Err(unacceptable("Too many iterations".into()));
    }
    if salted_password.len() != mechanism.hash_bytes() {
        return Err(unacceptable(format!(
            "a {} salted password is {} bytes, not {}",
            mechanism.name(),
            mechanism.hash_bytes(),
            salted_password.len()
        )));
    }
    let (stored_key, server_key) = scram_keys(mechanism, salted_password);
    let credential = ScramCredential { salt: salt.to_vec(), iterations: iterations as u32, stored_key, server_key };
    spate_replication::controller::check_scram_credential(mechanism, &credential).map_err(unacceptable)?;
    Ok((mechanism, credential))
}

fn controller_error(err: &ControllerError) -> UserError {
    let code = match err {
        ControllerError::UnacceptableCredential(_) => K::UnacceptableCredential,
        ControllerError::ResourceNotFound(_) => K::ResourceNotFound,
        ControllerError::InvalidRequest(_) => K::InvalidRequest,
        ControllerError::NotController => K::NotController,
        ControllerError::Shutdown => K::NotController,
        _ => K::UnknownServerError,
    };
    let text = match err {
        ControllerError::UnacceptableCredential(text) | ControllerError::ResourceNotFound(text) => text.clone(),
        other => other.to_string(),
    };
    (code.code(), text)
}

pub(crate) fn alter(ctx: Ctx, body: Bytes) -> Reply {
    let request: AlterUserScramCredentialsRequest = match decode(&ctx, body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    if request.deletions.len() + request.upsertions.len() > SCRAM_ALTERATIONS_PER_REQUEST_MAX {
        return Reply::Now(Response::Close(None));
    }
    // One result per user, in order of first appearance; all of a
    // user's changes go together. A (user, mechanism) pair named twice
    // refuses the user (Kafka's rule; kafka-configs sends both mechanisms
    // of a user in one request).
    let mut order: Vec<String> = Vec::new();
    let mut per_user: HashMap<String, Result<ScramAlteration, UserError>> = HashMap::new();
    let mut pairs: HashSet<(String, i8)> = HashSet::new();
    let mut duplicated: HashSet<String> = HashSet::new();
    let deletions = request.deletions.iter().map(|d| (&d.name, d.mechanism, None));
    let upsertions = request.upsertions.iter().map(|u| (&u.name, u.mechanism, Some(u)));
    for (name, mechanism, upsert) in deletions.chain(upsertions) {
        let user = name.to_string();
        if !pairs.insert((user.clone(), mechanism)) {
            duplicated.insert(user.clone());
        }
        let entry = per_user.entry(user.clone()).or_insert_with(|| {
            order.push(user.clone());
            Ok(ScramAlteration { user: user.clone(), upsertions: vec![], deletions: vec![] })
        });
        let Ok(alteration) = entry else { continue };
        let change = match upsert {
            None => {
                ScramMechanism::from_kafka_type(mechanism).ok_or_else(unsupported).map(|m| alteration.deletions.push(m))
            }
            Some(u) => upsertion(u.mechanism, u.iterations, &u.salt, &u.salted_password)
                .map(|pair| alteration.upsertions.push(pair)),
        };
        if let Err(error) = change {
            *entry = Err(error);
        }
    }
    // Kafka: credentials are the cluster's, altered with Alter on it.
    let allowed = ctx.allowed_on_cluster(AclOperation::Alter);
    let mut results: Vec<(String, Option<UserError>)> = Vec::with_capacity(order.len());
    let mut send = Vec::new();
    for user in order {
        let error = if !allowed {
            Some((K::ClusterAuthorizationFailed.code(), "Alter on the cluster is denied".into()))
        } else if duplicated.contains(&user) {
            Some((K::DuplicateResource.code(), "A user credential cannot be altered twice in the same request".into()))
        } else if user.is_empty() {
            Some((K::UnacceptableCredential.code(), "Username must not be empty".into()))
        } else {
            match per_user.remove(&user) {
                Some(Ok(alteration)) => {
                    send.push(alteration);
                    None
                }
                Some(Err(error)) => Some(error),
                None => Some((K::UnknownServerError.code(), "lost".into())),
            }
        };
        results.push((user, error));
    }
    let (reply, wait) = oneshot::channel();
    let sent = send.len();
    if sent > 0 {
        ctx.shard.submit(ADMIN_SHARD, ShardOp::Admin(AdminOp::AlterScramCredentials { users: send, reply }));
    } else {
        let _ = reply.send(Vec::new());
    }
    Reply::Later(Box::pin(async move {
        let timeout = std::time::Duration::from_millis(ALTER_TIMEOUT_MS);
        let answers: Vec<Option<UserError>> = futures::select! {
            answers = futures::FutureExt::fuse(wait) => match answers {
                Ok(answers) => answers.iter().map(|a| a.as_ref().err().map(controller_error)).collect(),
                Err(_) => vec![Some((K::NotController.code(), "the admin shard stopped".into())); sent],
            },
            () = futures::FutureExt::fuse(crate::deadline::Deadline::after(timeout)) => {
                vec![Some((K::RequestTimedOut.code(), "not finished in time; it may still complete".into())); sent]
            }
        };
        let mut answers = answers.into_iter();
        let results = results
            .into_iter()
            .map(|(user, error)| {
                let error = match error {
                    Some(error) => Some(error),
                    None => answers.next().unwrap_or(Some((K::UnknownServerError.code(), "no answer".into()))),
                };
                let (code, message) = error.map_or((0, None), |(code, text)| (code, Some(StrBytes::from_string(text))));
                AlterUserScramCredentialsResult::default()
                    .with_user(StrBytes::from_string(user))
                    .with_error_code(code)
                    .with_error_message(message)
            })
            .collect();
        respond(&ctx, &AlterUserScramCredentialsResponse::default().with_results(results))
    }))
}

pub(crate) fn describe(ctx: Ctx, body: Bytes) -> Reply {
    let request: DescribeUserScramCredentialsRequest = match decode(&ctx, body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    if !ctx.allowed_on_cluster(AclOperation::Describe) {
        let denied =
            DescribeUserScramCredentialsResponse::default().with_error_code(K::ClusterAuthorizationFailed.code());
        return Reply::Now(respond(&ctx, &denied));
    }
    let catalog = ctx.shard.shared.catalog.load();
    let credentials = &catalog.scram_credentials;
    let info = |by_mechanism: &BTreeMap<ScramMechanism, ScramCredential>| -> Vec<CredentialInfo> {
        by_mechanism
            .iter()
            .map(|(m, c)| CredentialInfo::default().with_mechanism(m.kafka_type()).with_iterations(c.iterations as i32))
            .collect()
    };
    let result =
        |user: &str| DescribeUserScramCredentialsResult::default().with_user(StrBytes::from_string(user.into()));
    let results: Vec<DescribeUserScramCredentialsResult> = match &request.users {
        // Null or empty: every user with a credential.
        None => credentials.iter().map(|(user, by)| result(user).with_credential_infos(info(by))).collect(),
        Some(users) if users.is_empty() => {
            credentials.iter().map(|(user, by)| result(user).with_credential_infos(info(by))).collect()
        }
        Some(users) => {
            if users.len() > SCRAM_USERS_PER_DESCRIBE_MAX {
                return Reply::Now(Response::Close(None));
            }
            let mut count: BTreeMap<&str, usize> = BTreeMap::new();
            for user in users {
                *count.entry(user.name.as_str()).or_insert(0) += 1;
            }
            let mut answered = HashSet::new();
            users
                .iter()
                .map(|u| u.name.as_str())
                .filter(|user| answered.insert(*user))
                .map(|user| {
                    let error = |code: K, text: String| {
                        result(user).with_error_code(code.code()).with_error_message(Some(StrBytes::from_string(text)))
                    };
                    if count[user] > 1 {
                        return error(
                            K::DuplicateResource,
                            format!(
                                "Cannot describe SCRAM credentials for the same user twice in a single request: {user}"
                            ),
                        );
                    }
                    match credentials.get(user) {
                        Some(by) => result(user).with_credential_infos(info(by)),
                        None => error(
                            K::ResourceNotFound,
                            format!("Attempt to describe a user credential that does not exist: {user}"),
                        ),
                    }
                })
                .collect()
        }
    };
    Reply::Now(respond(&ctx, &DescribeUserScramCredentialsResponse::default().with_results(results)))
}
