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
    /// Generate text from a prompt with a local model, or remote servers
    /// with --backend (streamed to stdout).
    Run(cmd::run::RunArgs),
    /// Serve a local model through the OpenAI API (completions, chat).
    Serve(cmd::serve::ServeArgs),
    /// Measure speed against a reference run side by side.
    Bench(cmd::bench::BenchArgs),
    /// Countdown tools: solve and verify problems.
    Countdown(cmd::countdown::CountdownArgs),
    /// Generate training data (reasoning traces) as JSONL.
    Data(cmd::data::DataArgs),
    /// Evaluate trained Countdown models (accuracy, tokens, latency) and plot them.
    Eval(cmd::eval::EvalArgs),
    /// Solve a Countdown problem with the shipped APR model: "9 3 4 -> 24".
    Solve(cmd::solve::SolveArgs),
    /// Watch the shipped APR model solve a Countdown problem, forking live.
    Demo(cmd::solve::DemoArgs),
    /// Train a small Llama decoder from scratch (checkpointed; rerun to resume).
    Train(cmd::train::TrainArgs),
}

fn main() -> ExitCode {
    // Warnings read like the rest of the output: no clock, no module path,
    // and no colour codes unless stderr is a terminal.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .with_target(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => cmd::run::run(args),
        Command::Serve(args) => cmd::serve::run(args),
        Command::Bench(args) => cmd::bench::run(args),
        Command::Countdown(args) => cmd::countdown::run(args),
        Command::Data(args) => cmd::data::run(args),
        Command::Train(args) => cmd::train::run(args),
        Command::Eval(args) => cmd::eval::run(args),
        Command::Solve(args) => cmd::solve::solve(args),
        Command::Demo(args) => cmd::solve::demo(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
