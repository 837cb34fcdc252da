//! `spate-bench engine` measures the storage engine's append throughput and
//! latency under each durability policy, next to a raw O_DIRECT write of the
//! same bytes through the same glommio file API, in the same run, and
//! reports each figure also as a ratio to the raw one. The broker harness
//! is `spate bench` (also here as `spate-bench broker`).

use clap::{Parser, Subcommand};
use spate_bench::{engine, harness};

#[derive(Debug, Parser)]
#[command(name = "spate-bench", about = "Spate benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Engine append throughput and latency per durability policy, against
    /// a raw O_DIRECT write of the same bytes.
    Engine(engine::EngineArgs),
    /// The broker harness (the same as `spate bench`).
    #[command(subcommand)]
    Broker(harness::BenchCommand),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Engine(args) => engine::run(args).map_err(|err| err.to_string()),
        Command::Broker(command) => harness::run(command).map_err(|err| format!("{err:#}")),
    };
    if let Err(err) = result {
        eprintln!("spate-bench: {err}");
        std::process::exit(1);
    }
}
