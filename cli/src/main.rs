//! `spate`: the broker (`serve`) and the tools around it (`topic`,
//! `produce`, `consume`, `cluster`, `group`, `acl`, `user`), in the manner of rpk
//! and kcat, and `connect`, a Kafka Connect worker.
//!
//! Every failure ends as one `error: ...` line on stderr and exit code 1
//! (clap's usage errors exit with 2); a closed stdout (`| head`) ends the
//! command quietly with exit code 0.

mod acl;
mod cluster;
mod connect;
mod consume;
mod consume_group;
mod fatal;
mod group;
mod kafka_admin;
mod kafka_security;
mod limits;
mod output;
mod parse;
mod produce;
mod scram;
mod serve;
mod topic;
mod txn;
mod user;

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use spate_client::{Client, ClientConfig};

#[derive(Parser, Debug)]
#[command(name = "spate", version, about = "Spate: a Kafka-class event streaming platform")]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Options every client verb takes.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct GlobalArgs {
    /// Brokers to bootstrap from, as host:port, comma-separated: any one
    /// that answers is enough, the rest of the cluster comes from it.
    #[arg(
        long,
        visible_alias = "bootstrap",
        global = true,
        env = "SPATE_BROKERS",
        default_value = "localhost:9400",
        value_delimiter = ','
    )]
    brokers: Vec<String>,
    /// How long to wait for a broker to answer a request.
    #[arg(long, global = true, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: u64,
    /// How to connect and log in (TLS, SASL), for the native commands and
    /// the Kafka-protocol ones (acl, user, txn) alike.
    #[command(flatten)]
    security: kafka_security::SecurityArgs,
}

impl GlobalArgs {
    pub(crate) fn client_config(&self) -> anyhow::Result<ClientConfig> {
        let security = self.security.resolve()?;
        // SSL and SASL_SSL: brokers whose native ports take TLS
        // (native_security_protocol = SSL).
        let tls = match security.protocol.uses_tls() {
            true => Some(spate_client::ClientTls(security.tls_config()?)),
            false => None,
        };
        Ok(ClientConfig {
            bootstrap: self
                .brokers
                .iter()
                .map(|broker| broker.trim())
                .filter(|broker| !broker.is_empty())
                .map(str::to_string)
                .collect(),
            client_id: "spate-cli".to_string(),
            request_timeout_ms: self.timeout_ms,
            sasl: security.sasl,
            tls,
            ..ClientConfig::default()
        })
    }

    pub(crate) async fn connect(&self) -> anyhow::Result<Client> {
        Client::connect(self.client_config()?).await.context("cannot reach the cluster")
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a broker. (Boxed: its many settings make it the largest
    /// command by far.)
    Serve(Box<serve::ServeArgs>),
    /// Create, list, describe and delete topics.
    #[command(subcommand)]
    Topic(topic::TopicCommand),
    /// Produce records from stdin or a file, one per line.
    Produce(produce::ProduceArgs),
    /// Consume records and print them, one per line.
    Consume(consume::ConsumeArgs),
    /// Describe the cluster.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// List, describe, reset and delete consumer groups.
    #[command(subcommand)]
    Group(group::GroupCommand),
    /// Create, delete and list Kafka ACLs (through a broker's Kafka
    /// listener, as kafka-acls does).
    #[command(subcommand)]
    Acl(acl::AclCommand),
    /// Create, delete and list SCRAM users (through a broker's Kafka
    /// listener, as kafka-configs --entity-type users does).
    #[command(subcommand)]
    User(user::UserCommand),
    /// List, describe and abort transactions (through the brokers' Kafka
    /// listeners, as kafka-transactions does).
    #[command(subcommand)]
    Txn(txn::TxnCommand),
    /// Run a Kafka Connect worker (standalone) and manage its connectors
    /// through its REST API.
    #[command(subcommand)]
    Connect(connect::ConnectCommand),
    /// Benchmark a broker it starts itself, against the machine's limits.
    #[command(subcommand)]
    Bench(spate_bench::harness::BenchCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        // serve runs its own threads and runtimes; it must not start inside tokio.
        Command::Serve(args) => serve::run(*args),
        // bench starts brokers and its own load-generator runtime.
        Command::Bench(command) => spate_bench::harness::run(command),
        // acl speaks the Kafka protocol over a blocking socket.
        Command::Acl(command) => acl::run(command, &cli.global.security),
        Command::User(command) => user::run(command, &cli.global.security),
        Command::Txn(command) => txn::run(command, &cli.global.security),
        // connect runs its own runtime and task threads, or blocking HTTP.
        Command::Connect(command) => connect::run(command),
        command => run_client_command(&cli.global, command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if output::is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            // If stderr is gone too there is no one left to tell.
            let _ = writeln!(std::io::stderr(), "error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_client_command(global: &GlobalArgs, command: Command) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting tokio")?;
    runtime.block_on(async {
        match command {
            Command::Serve(_)
            | Command::Bench(_)
            | Command::Acl(_)
            | Command::User(_)
            | Command::Txn(_)
            | Command::Connect(_) => {
                anyhow::bail!("serve, bench, acl, user, txn and connect do not run inside the client runtime")
            }
            Command::Topic(command) => topic::run(global, command).await,
            Command::Produce(args) => produce::run(global, args).await,
            Command::Consume(args) => consume::run(global, args).await,
            Command::Cluster(command) => cluster::run(global, command).await,
            Command::Group(command) => group::run(global, command).await,
        }
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn brokers_split_on_commas_and_timeout_must_be_positive() {
        let cli = Cli::try_parse_from(["spate", "--brokers", "a:1,b:2", "cluster", "info"]).expect("valid");
        assert_eq!(cli.global.client_config().expect("valid").bootstrap, vec!["a:1", "b:2"]);
        let alias = Cli::try_parse_from(["spate", "--bootstrap", " a:1, b:2,,", "cluster", "status"]).expect("valid");
        assert_eq!(alias.global.client_config().expect("valid").bootstrap, vec!["a:1", "b:2"]);
        assert!(Cli::try_parse_from(["spate", "--timeout-ms", "0", "cluster", "info"]).is_err());
        let after =
            Cli::try_parse_from(["spate", "topic", "list", "--timeout-ms", "5"]).expect("global flags go anywhere");
        assert_eq!(after.global.timeout_ms, 5);
    }
}
