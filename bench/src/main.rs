//! Spate benchmarks. `spate-bench engine` measures the storage engine's
//! append throughput and latency under each durability policy, next to a
//! raw O_DIRECT write of the same bytes through the same glommio file API,
//! in the same run, and reports each figure also as a ratio to the raw one.

mod engine;
mod report;

use clap::{Parser, Subcommand};

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
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Engine(args) => engine::run(args),
    };
    if let Err(err) = result {
        eprintln!("spate-bench: {err}");
        std::process::exit(1);
    }
}
