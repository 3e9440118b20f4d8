//! `weft countdown`: solve, verify and trace single Countdown problems.
//!
//! Exit codes: 0 success (solved / answer correct), 1 no solution / answer
//! wrong, 2 malformed input.

use anyhow::Context;
use clap::{Args, Subcommand};
use std::io::Read;
use std::process::ExitCode;
use weft_tasks::search::{apr::apr, sosp::sosp};
use weft_tasks::{
    verify_with, AprParams, Heuristic, Problem, PyRandom, Rules, Solver, SospParams, TaskError,
};

#[derive(Args)]
pub struct CountdownArgs {
    #[command(subcommand)]
    command: CountdownCommand,
}

#[derive(Subcommand)]
enum CountdownCommand {
    /// Print one solution as equations, one per line (exit 1 and `no solution` if none).
    Solve {
        /// The problem, e.g. "17 62 25 7 -> 63".
        problem: String,
        /// Print every solution instead, one per line (steps separated by `, `).
        #[arg(long)]
        all: bool,
        /// With --all, stop after this many.
        #[arg(long, default_value_t = 10_000)]
        limit: usize,
        #[command(flatten)]
        rules: RulesArgs,
    },
    /// Check a model's answer (a "Goal Reached" trace or an equation) and print the verdict as JSON.
    Verify {
        /// The problem, e.g. "17 62 25 7 -> 63".
        problem: String,
        /// File holding the model's output (`-` or absent: standard input).
        #[arg(long)]
        output: Option<String>,
        #[command(flatten)]
        rules: RulesArgs,
    },
    /// Print the reference search trace (SoS+ or APR) for one problem.
    Trace {
        /// The problem, e.g. "17 62 25 7 -> 63".
        problem: String,
        /// Which trace: `apr` (parent calls and children) or `sosp` (the
        /// sequential SoS+ baseline).
        #[arg(long, default_value = "apr", value_parser = ["apr", "sosp"])]
        kind: String,
        /// Seed of the Python-compatible random stream (the reference's `random.seed`).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Nodes kept per search level (the beam width).
        #[arg(long, default_value_t = 3)]
        beam: usize,
        /// APR: beam of each child search (default: the beam).
        #[arg(long)]
        sub_beam: Option<usize>,
        /// Chance of forking (APR, default 0.9) or of an inline sub search (SoS+, default 0.5).
        #[arg(long)]
        promising: Option<f64>,
        /// How the search ranks nodes: `mult` (distance to the target's
        /// factors, as APR's data) or `sum` (mean distance to the target).
        #[arg(long, default_value = "mult",
              value_parser = clap::builder::TypedValueParser::map(
                  clap::builder::PossibleValuesParser::new(["mult", "sum"]),
                  |s| s.parse::<Heuristic>().expect("a listed value")))]
        heuristic: Heuristic,
        #[command(flatten)]
        rules: RulesArgs,
    },
}

#[derive(Args, Clone, Copy)]
pub struct RulesArgs {
    /// Forbid steps whose result exceeds this.
    #[arg(long)]
    pub max_intermediate: Option<u64>,
}

impl RulesArgs {
    pub fn rules(&self) -> Rules {
        Rules {
            max_intermediate: self.max_intermediate,
        }
    }
}

const EXIT_NO: u8 = 1;
const EXIT_BAD_INPUT: u8 = 2;

fn parse_problem(text: &str) -> Result<Problem, ExitCode> {
    text.parse::<Problem>().map_err(|err: TaskError| {
        eprintln!("error: {err}");
        ExitCode::from(EXIT_BAD_INPUT)
    })
}

pub fn run(args: CountdownArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        CountdownCommand::Solve {
            problem,
            all,
            limit,
            rules,
        } => {
            let problem = match parse_problem(&problem) {
                Ok(p) => p,
                Err(code) => return Ok(code),
            };
            let solver = Solver::new(rules.rules());
            if all {
                let solutions = solver.solve_all(&problem, limit);
                if solutions.is_empty() {
                    println!("no solution");
                    return Ok(ExitCode::from(EXIT_NO));
                }
                for steps in solutions {
                    let shown: Vec<String> = steps.iter().map(|s| s.to_string()).collect();
                    println!("{}", shown.join(", "));
                }
                return Ok(ExitCode::SUCCESS);
            }
            match solver.solve_one(&problem) {
                Some(steps) => {
                    for step in steps {
                        println!("{step}");
                    }
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    println!("no solution");
                    Ok(ExitCode::from(EXIT_NO))
                }
            }
        }
        CountdownCommand::Verify {
            problem,
            output,
            rules,
        } => {
            let problem = match parse_problem(&problem) {
                Ok(p) => p,
                Err(code) => return Ok(code),
            };
            let text = match output.as_deref() {
                None | Some("-") => {
                    let mut s = String::new();
                    std::io::stdin()
                        .read_to_string(&mut s)
                        .context("reading the answer from standard input")?;
                    s
                }
                Some(path) => std::fs::read_to_string(path)
                    .with_context(|| format!("reading the answer from {path}"))?,
            };
            let verdict = verify_with(&problem, &text, &rules.rules());
            println!("{}", serde_json::to_string(&verdict)?);
            Ok(if verdict.correct {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_NO)
            })
        }
        CountdownCommand::Trace {
            problem,
            kind,
            seed,
            beam,
            sub_beam,
            promising,
            heuristic,
            rules,
        } => {
            let problem = match parse_problem(&problem) {
                Ok(p) => p,
                Err(code) => return Ok(code),
            };
            let mut rng = PyRandom::new(seed);
            let solved = if kind == "sosp" {
                let params = SospParams {
                    beam_size: beam,
                    promising_threshold: promising.unwrap_or(0.5),
                    heuristic,
                    threshold: None,
                    rules: rules.rules(),
                };
                let trace = sosp(&problem, &params, &mut rng)?;
                print!("{}", trace.text);
                trace.solution.is_some()
            } else {
                let params = AprParams {
                    beam_size: beam,
                    sub_call_beam_size: sub_beam.unwrap_or(beam),
                    promising_threshold: promising.unwrap_or(0.9),
                    heuristic,
                    rules: rules.rules(),
                };
                let trace = apr(&problem, &params, &mut rng)?;
                // The layout of shared/reference/countdown/apr_trace_example.txt.
                for (k, call) in trace.main_calls.iter().enumerate() {
                    println!("===== main_call {k} =====");
                    print!("{call}");
                    println!();
                }
                for (f, fork) in trace.forks.iter().enumerate() {
                    for (c, child) in fork.children.iter().enumerate() {
                        println!("===== sub_call {f}.{c} =====");
                        print!("{}", child.text);
                        println!();
                    }
                }
                trace.solution.is_some()
            };
            Ok(if solved {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_NO)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: CountdownArgs,
    }

    fn exit(argv: &[&str]) -> ExitCode {
        let argv = std::iter::once("countdown").chain(argv.iter().copied());
        run(Cli::try_parse_from(argv).unwrap().args).unwrap()
    }

    #[test]
    fn solve_exit_codes() {
        assert_eq!(exit(&["solve", "17 62 25 7 -> 63"]), ExitCode::SUCCESS);
        assert_eq!(exit(&["solve", "1 1 -> 5"]), ExitCode::from(EXIT_NO));
        assert_eq!(
            exit(&["solve", "17 62 x -> 63"]),
            ExitCode::from(EXIT_BAD_INPUT)
        );
        assert_eq!(
            exit(&["solve", "17 62 25 7"]),
            ExitCode::from(EXIT_BAD_INPUT)
        );
        assert_eq!(exit(&["solve", "--all", "1 2 3 -> 6"]), ExitCode::SUCCESS);
        let capped = ["solve", "--max-intermediate", "50", "60 70 10 -> 420"];
        assert_eq!(exit(&capped), ExitCode::from(EXIT_NO));
    }

    #[test]
    fn verify_and_trace_exit_codes() {
        let dir = std::env::temp_dir().join(format!("weft-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.txt");
        std::fs::write(&good, "62+(25-17-7) = 63\n").unwrap();
        let bad = dir.join("bad.txt");
        std::fs::write(&bad, "62+25 = 87\n").unwrap();
        let problem = "17 62 25 7 -> 63";
        let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
        assert_eq!(
            exit(&["verify", problem, "--output", &path(&good)]),
            ExitCode::SUCCESS
        );
        assert_eq!(
            exit(&["verify", problem, "--output", &path(&bad)]),
            ExitCode::from(EXIT_NO)
        );
        assert_eq!(
            exit(&["verify", "nonsense", "--output", &path(&good)]),
            ExitCode::from(EXIT_BAD_INPUT)
        );
        std::fs::remove_dir_all(&dir).unwrap();
        let trace = [
            "trace",
            problem,
            "--seed",
            "37",
            "--beam",
            "2",
            "--sub-beam",
            "2",
        ];
        assert_eq!(exit(&trace), ExitCode::SUCCESS);
        assert_eq!(
            exit(&["trace", "1 1 -> 5", "--kind", "sosp"]),
            ExitCode::from(EXIT_NO)
        );
    }
}
