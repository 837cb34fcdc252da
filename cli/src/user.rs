//! `spate user create|delete|list`: SCRAM users through a broker's Kafka
//! listener (AlterUserScramCredentials, DescribeUserScramCredentials), as
//! `kafka-configs --entity-type users` makes them: the client salts the
//! password (PBKDF2 with a random salt) and the broker keeps only the keys
//! derived from it, in the metadata log. Never prints a secret.

use std::io::BufRead;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use kafka_protocol::messages::alter_user_scram_credentials_request::{
    ScramCredentialDeletion, ScramCredentialUpsertion,
};
use kafka_protocol::messages::describe_user_scram_credentials_request::UserName;
use kafka_protocol::messages::describe_user_scram_credentials_response::DescribeUserScramCredentialsResult;
use kafka_protocol::messages::{AlterUserScramCredentialsRequest, DescribeUserScramCredentialsRequest};
use kafka_protocol::protocol::StrBytes;
use spate_replication::ScramMechanism;
use spate_replication::limits::{SCRAM_ITERATIONS_MAX, SCRAM_ITERATIONS_MIN};

use crate::kafka_admin::{Connection, KafkaAdmin, error_name};
use crate::kafka_security::SecurityArgs;
use crate::limits::USER_SALT_BYTES;
use crate::output::{Table, print};
use crate::scram::{random_bytes, salted_password};

#[derive(Subcommand, Debug)]
pub(crate) enum UserCommand {
    /// Create a SCRAM user, or set a new password for one. The password
    /// comes from --password, SPATE_USER_PASSWORD or one line of stdin.
    Create(CreateArgs),
    /// Delete a user's SCRAM credentials (all, or the mechanisms given).
    Delete(DeleteArgs),
    /// List SCRAM users: mechanisms and iterations, never secrets.
    List(ListArgs),
}

#[derive(Args, Debug)]
pub(crate) struct CreateArgs {
    #[command(flatten)]
    connection: Connection,
    /// The user's name (its principal is User:NAME).
    name: String,
    /// SCRAM-SHA-256 or SCRAM-SHA-512 (repeatable; default both).
    #[arg(long = "mechanism")]
    mechanisms: Vec<String>,
    /// PBKDF2 iterations (Kafka's bounds: 4096 to 16384).
    #[arg(long, default_value_t = 8192)]
    iterations: u32,
    /// The password (better from SPATE_USER_PASSWORD or stdin than the
    /// command line, where other users of the machine can read it).
    #[arg(long, env = "SPATE_USER_PASSWORD", hide_env_values = true)]
    password: Option<String>,
}

#[derive(Args, Debug)]
pub(crate) struct DeleteArgs {
    #[command(flatten)]
    connection: Connection,
    /// The user's name.
    name: String,
    /// SCRAM-SHA-256 or SCRAM-SHA-512 (repeatable; default every one the
    /// user has).
    #[arg(long = "mechanism")]
    mechanisms: Vec<String>,
}

#[derive(Args, Debug)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    connection: Connection,
    /// Only these users (default every one).
    names: Vec<String>,
}

pub(crate) fn run(command: UserCommand, security: &SecurityArgs) -> anyhow::Result<()> {
    match command {
        UserCommand::Create(mut args) => {
            args.connection.security = security.clone();
            create(args)
        }
        UserCommand::Delete(mut args) => {
            args.connection.security = security.clone();
            delete(&args)
        }
        UserCommand::List(mut args) => {
            args.connection.security = security.clone();
            list(&args)
        }
    }
}

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_string())
}

/// The mechanisms named, each once, in Kafka's order; none named is both.
fn mechanisms(names: &[String]) -> anyhow::Result<Vec<ScramMechanism>> {
    if names.is_empty() {
        return Ok(ScramMechanism::ALL.to_vec());
    }
    let mut out = Vec::new();
    for name in names {
        let mechanism = ScramMechanism::parse(&name.trim().to_ascii_uppercase())
            .with_context(|| format!("--mechanism {name:?}: SCRAM-SHA-256 or SCRAM-SHA-512"))?;
        if !out.contains(&mechanism) {
            out.push(mechanism);
        }
    }
    out.sort_by_key(|m| m.kafka_type());
    Ok(out)
}

/// The password from the flag or environment, else the first line of
/// stdin (no prompt: scripts pipe it in).
fn password(given: Option<String>) -> anyhow::Result<String> {
    let password = match given {
        Some(password) => password,
        None => {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).context("reading the password from stdin")?;
            line.trim_end_matches(['\n', '\r']).to_string()
        }
    };
    if password.is_empty() {
        bail!("no password: give --password, SPATE_USER_PASSWORD or a line on stdin");
    }
    Ok(password)
}

fn create(args: CreateArgs) -> anyhow::Result<()> {
    let mechanisms = mechanisms(&args.mechanisms)?;
    if !(SCRAM_ITERATIONS_MIN..=SCRAM_ITERATIONS_MAX).contains(&args.iterations) {
        bail!("--iterations {}: Kafka takes {SCRAM_ITERATIONS_MIN} to {SCRAM_ITERATIONS_MAX}", args.iterations);
    }
    if args.name.is_empty() {
        bail!("the user name must not be empty");
    }
    let password = password(args.password)?;
    let mut upsertions = Vec::new();
    for mechanism in &mechanisms {
        // A salt per credential, as Kafka's tools make.
        let salt = random_bytes(USER_SALT_BYTES)?;
        let salted = salted_password(*mechanism, password.as_bytes(), &salt, args.iterations);
        upsertions.push(
            ScramCredentialUpsertion::default()
                .with_name(text(&args.name))
                .with_mechanism(mechanism.kafka_type())
                .with_iterations(i32::try_from(args.iterations).context("iterations")?)
                .with_salt(salt.into())
                .with_salted_password(salted.into()),
        );
    }
    let mut admin = KafkaAdmin::connect(&args.connection)?;
    let response = admin.call(&AlterUserScramCredentialsRequest::default().with_upsertions(upsertions))?;
    check_alteration(&args.name, &response.results, "created")?;
    let mut table = Table::new(&["USER", "MECHANISM", "ITERATIONS", "STATUS"]);
    for mechanism in &mechanisms {
        table.row(vec![args.name.clone(), mechanism.name().into(), args.iterations.to_string(), "OK".into()]);
    }
    print(&table.render())?;
    Ok(())
}

/// The broker's answer for the one user altered (a refused user keeps
/// none of its changes).
fn check_alteration(
    user: &str,
    results: &[kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult],
    done: &str,
) -> anyhow::Result<()> {
    let Some(result) = results.iter().find(|r| r.user.as_str() == user) else {
        bail!("the broker did not answer for user {user:?}");
    };
    if result.error_code != 0 {
        let message = result.error_message.as_deref().unwrap_or("");
        bail!("user {user:?} not {done}: {}: {message}", error_name(result.error_code));
    }
    Ok(())
}

fn describe(admin: &mut KafkaAdmin, names: &[String]) -> anyhow::Result<Vec<DescribeUserScramCredentialsResult>> {
    // No list is every user (an empty one too, in Kafka).
    let users = (!names.is_empty()).then(|| names.iter().map(|n| UserName::default().with_name(text(n))).collect());
    let response = admin.call(&DescribeUserScramCredentialsRequest::default().with_users(users))?;
    if response.error_code != 0 {
        let message = response.error_message.as_deref().unwrap_or("");
        bail!("listing users failed: {}: {message}", error_name(response.error_code));
    }
    Ok(response.results)
}

fn mechanism_name(kafka_type: i8) -> String {
    ScramMechanism::from_kafka_type(kafka_type).map_or_else(|| format!("mechanism {kafka_type}"), |m| m.name().into())
}

fn delete(args: &DeleteArgs) -> anyhow::Result<()> {
    let mut admin = KafkaAdmin::connect(&args.connection)?;
    let mechanisms: Vec<i8> = if args.mechanisms.is_empty() {
        // Every mechanism the user has: deleting one it lacks is refused.
        let described = describe(&mut admin, std::slice::from_ref(&args.name))?;
        let Some(result) = described.iter().find(|r| r.user.as_str() == args.name) else {
            bail!("the broker did not answer for user {:?}", args.name);
        };
        if result.error_code != 0 {
            let message = result.error_message.as_deref().unwrap_or("");
            bail!("user {:?}: {}: {message}", args.name, error_name(result.error_code));
        }
        result.credential_infos.iter().map(|c| c.mechanism).collect()
    } else {
        mechanisms(&args.mechanisms)?.into_iter().map(ScramMechanism::kafka_type).collect()
    };
    let deletions = mechanisms
        .iter()
        .map(|m| ScramCredentialDeletion::default().with_name(text(&args.name)).with_mechanism(*m))
        .collect();
    let response = admin.call(&AlterUserScramCredentialsRequest::default().with_deletions(deletions))?;
    check_alteration(&args.name, &response.results, "deleted")?;
    let mut table = Table::new(&["USER", "MECHANISM", "STATUS"]);
    for mechanism in mechanisms {
        table.row(vec![args.name.clone(), mechanism_name(mechanism), "DELETED".into()]);
    }
    print(&table.render())?;
    Ok(())
}

fn list(args: &ListArgs) -> anyhow::Result<()> {
    let mut admin = KafkaAdmin::connect(&args.connection)?;
    let results = describe(&mut admin, &args.names)?;
    let mut rows = Vec::new();
    let mut missing = Vec::new();
    for result in &results {
        if result.error_code != 0 {
            let message = result.error_message.as_deref().unwrap_or("");
            missing.push(format!("{:?}: {}: {message}", result.user.as_str(), error_name(result.error_code)));
            continue;
        }
        for info in &result.credential_infos {
            rows.push(vec![result.user.to_string(), mechanism_name(info.mechanism), info.iterations.to_string()]);
        }
    }
    rows.sort();
    let mut table = Table::new(&["USER", "MECHANISM", "ITERATIONS"]);
    for row in rows {
        table.row(row);
    }
    print(&table.render())?;
    if !missing.is_empty() {
        bail!("{}", missing.join("; "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mechanisms_default_to_both_and_are_named_as_kafka_names_them() {
        assert_eq!(mechanisms(&[]).expect("default"), ScramMechanism::ALL);
        let named = mechanisms(&["scram-sha-512".into(), "SCRAM-SHA-256".into(), "SCRAM-SHA-512".into()]);
        assert_eq!(named.expect("valid"), [ScramMechanism::Sha256, ScramMechanism::Sha512]);
        assert!(mechanisms(&["PLAIN".into()]).is_err(), "PLAIN has no stored credential");
    }
}
