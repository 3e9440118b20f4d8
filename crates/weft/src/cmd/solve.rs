//! `weft solve` and `weft demo`: a Countdown problem solved by the shipped
//! APR model, its thread tree streamed live, then the answer, the verifier's
//! verdict and the latency beside the sequential (SoS+) model's.

use super::countdown_run::{models_dir, parse_problem, Mode, Outcome, Solver};
use super::threads::TreePrinter;
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use weft_tasks::Problem;

#[derive(Args)]
#[command(
    after_help = "The shipped model knows Countdown with 3 numbers in 1..50, targets \
10..100 and no intermediate result above 100 (models/countdown-apr/task.json); it says so for \
a problem outside that.\n\nExit status: 0 the answer is verified, 1 it is not (or the model \
could not run: an error says so), 2 bad usage or a problem that does not parse."
)]
pub struct SolveArgs {
    /// The problem: numbers, `->`, target. E.g. "9 3 4 -> 24".
    problem: String,
    #[command(flatten)]
    opts: SolveOpts,
}

#[derive(Args)]
#[command(
    after_help = "Exit status: 0 the answer is verified, 1 it is not (or the model \
could not run: an error says so), 2 bad usage."
)]
pub struct DemoArgs {
    /// Which of the 500 held-out problems to show (0-based; default: one at
    /// random).
    #[arg(long)]
    pick: Option<usize>,
    #[command(flatten)]
    opts: SolveOpts,
}

#[derive(Args, Clone)]
pub struct SolveOpts {
    /// The APR model folder (default: the committed models/countdown-apr).
    #[arg(long)]
    model: Option<PathBuf>,
    /// The sequential SoS+ model to compare with (default:
    /// models/countdown-sosp; skipped if absent).
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Do not run the sequential model.
    #[arg(long)]
    no_baseline: bool,
    /// Most tokens each APR thread may generate. The default is the
    /// shipped APR model's best budget in models/MODEL.md's evaluation.
    #[arg(long, default_value_t = 512)]
    budget: usize,
    /// Most tokens the sequential model may generate. The default is the
    /// shipped SoS+ model's best budget in models/MODEL.md's evaluation.
    #[arg(long, default_value_t = 1024)]
    baseline_budget: usize,
    /// Do not stream the thread tree.
    #[arg(long)]
    quiet: bool,
}

/// The shipped models' 500 held-out problems (`models/heldout.jsonl`: the
/// evaluation set of models/MODEL.md, whose numbers never occur in training),
/// one `{"nums": [..], "target": N}` per line.
const HELDOUT: &str = include_str!("../../../../models/heldout.jsonl");

pub(super) fn heldout() -> anyhow::Result<Vec<Problem>> {
    HELDOUT
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("bad held-out line: {l}")))
        .collect()
}

pub fn solve(args: SolveArgs) -> anyhow::Result<ExitCode> {
    let problem = match parse_problem(&args.problem) {
        Ok(p) => p,
        Err(e) => {
            // Bad input is a usage error (2), as clap's own.
            eprintln!("error: {e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    run(&problem, &args.opts)
}

pub fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let problems = heldout()?;
    let k = match args.pick {
        Some(k) if k >= problems.len() => {
            eprintln!(
                "error: --pick {k}: there are {} held-out problems (0..={})",
                problems.len(),
                problems.len() - 1
            );
            return Ok(ExitCode::from(2));
        }
        Some(k) => k,
        None => {
            use std::hash::{BuildHasher, Hasher};
            let h = std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish();
            h as usize % problems.len()
        }
    };
    let problem = &problems[k];
    if args.opts.model.is_none() {
        eprintln!(
            "weft demo: Countdown {problem}: reach the target with + - * / (each number once)\n\
             held-out problem {k} of {} (numbers never seen in training; `--pick {k}` shows it again). \
             The shipped APR model solves 73.4% of them (models/MODEL.md).",
            problems.len()
        );
    } else {
        eprintln!(
            "weft demo: Countdown {problem}: reach the target with + - * / (each number once)\n\
             held-out problem {k} of {} of the shipped models' evaluation set (`--pick {k}` shows it again).",
            problems.len()
        );
    }
    run(problem, &args.opts)
}

fn describe(o: &Outcome) -> String {
    if o.correct {
        format!("{}  (verified)", o.verdict.steps.join(", "))
    } else {
        let why = o
            .verdict
            .failure
            .as_ref()
            .map(|f| f.to_string())
            .unwrap_or_default();
        format!("no verified answer: {why}")
    }
}

/// Refuses a model trained on the other kind of traces than `mode` runs
/// (task.json `kind`), and warns about a model from an unfinished run, as
/// `weft eval` does.
fn check_model(s: &Solver, dir: &std::path::Path, mode: Mode, flag: &str) -> anyhow::Result<()> {
    if let Some(kind) = s.task.as_ref().and_then(|t| t.kind) {
        anyhow::ensure!(
            Mode::of_kind(kind) == mode,
            "{flag} {}: that model was trained on {} traces (task.json), but {flag} runs as {}",
            dir.display(),
            serde_json::to_value(kind)?.as_str().unwrap_or("?"),
            match mode {
                Mode::Apr => "APR (forking)",
                Mode::Sequential => "the sequential SoS+ baseline",
            }
        );
    }
    if let Some(r) = weft_train::TrainRecord::load(dir)?.filter(|r| !r.finished) {
        eprintln!(
            "warning: {} is from an unfinished run (step {} of {})",
            dir.display(),
            r.step,
            r.steps
        );
    }
    Ok(())
}

/// Exit status of `solve` and `demo`: 0 the model's answer is verified, 1 it
/// is not (2 is a usage error, as clap exits).
pub const EXIT_NOT_SOLVED: u8 = 1;

/// Says what the model was trained on and, for a problem outside that,
/// says so and what the exact solver finds.
fn state_task(problem: &Problem, solver: &Solver, dir: &std::path::Path) {
    let Some(task) = &solver.task else {
        eprintln!(
            "note: {} has no task.json, so what it was trained on is unknown",
            dir.display()
        );
        return;
    };
    eprintln!(
        "model: {} (trained on Countdown with {})",
        dir.display(),
        task.describe()
    );
    if let Err(why) = task.check(problem) {
        let exact = weft_tasks::Solver::new(task.rules())
            .solve_one(problem)
            .map(|steps| {
                steps
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            });
        eprintln!(
            "note: {problem} is outside the model's task ({why}), so expect it to fail.\n      \
             the exact solver (same rules): {}",
            exact.unwrap_or_else(|| "no solution".into())
        );
    }
}

fn run(problem: &Problem, opts: &SolveOpts) -> anyhow::Result<ExitCode> {
    let dir = opts
        .model
        .clone()
        .unwrap_or_else(|| models_dir().join("countdown-apr"));
    if opts.model.is_some() {
        anyhow::ensure!(
            dir.join("config.json").exists(),
            "{} is not a model folder (it has no config.json)",
            dir.display()
        );
    } else {
        anyhow::ensure!(
            dir.join("config.json").exists(),
            "no model at {} (pass --model DIR, or run from the repository root)",
            dir.display()
        );
    }
    let apr = Solver::load(&dir)?;
    check_model(&apr, &dir, Mode::Apr, "--model")?;
    state_task(problem, &apr, &dir);
    let mut printer = TreePrinter::default();
    let quiet = opts.quiet;
    let outcome = apr
        .solve(
            std::slice::from_ref(problem),
            Mode::Apr,
            opts.budget,
            1,
            &mut |e| {
                if !quiet {
                    printer.event(e)
                }
            },
            &mut |_| {},
        )?
        .remove(0);
    println!("problem:  {problem}");
    println!("answer:   {}", describe(&outcome));
    if !outcome.correct {
        // Is there an answer to find? The exact solver, under the same rules.
        let exact = weft_tasks::Solver::new(apr.rules).solve_one(problem);
        println!(
            "exact:    {}",
            match exact {
                Some(steps) => steps
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                None => "no solution exists under the model's rules".into(),
            }
        );
    }
    let threads = outcome.children + 1;
    println!(
        "APR:      {:.0} ms, {threads} thread{}, {} tokens ({} on the critical path)",
        outcome.latency_ms,
        if threads == 1 { "" } else { "s" },
        outcome.total_tokens,
        outcome.critical_path_tokens
    );
    for note in &outcome.notes {
        println!("          {note}");
    }
    let baseline = opts
        .baseline
        .clone()
        .unwrap_or_else(|| models_dir().join("countdown-sosp"));
    if !opts.no_baseline && baseline.join("config.json").exists() {
        let seq = Solver::load(&baseline)?;
        check_model(&seq, &baseline, Mode::Sequential, "--baseline")?;
        let s = seq
            .solve(
                std::slice::from_ref(problem),
                Mode::Sequential,
                opts.baseline_budget,
                1,
                &mut |_| {},
                &mut |_| {},
            )?
            .remove(0);
        println!(
            "SoS+:     {:.0} ms, 1 thread, {} tokens: {}",
            s.latency_ms,
            s.total_tokens,
            if s.correct { "verified" } else { "not solved" }
        );
    }
    Ok(if outcome.correct {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_NOT_SOLVED)
    })
}
