//! `weft`: the command-line front end. It parses flags and wires the library
//! crates together; all real work lives in the crates.

mod cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "weft", version, about = "Inference engine and research kit for adaptive parallel reasoning", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt with a local model (streamed to stdout).
    Run(cmd::run::RunArgs),
    /// Measure speed against a reference run side by side.
    Bench(cmd::bench::BenchArgs),
    /// Countdown tools: solve and verify problems.
    Countdown(cmd::countdown::CountdownArgs),
    /// Generate training data (reasoning traces) as JSONL.
    Data(cmd::data::DataArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => cmd::run::run(args),
        Command::Bench(args) => cmd::bench::run(args),
        Command::Countdown(args) => cmd::countdown::run(args),
        Command::Data(args) => cmd::data::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
