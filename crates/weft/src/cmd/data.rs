//! `weft data`: training data for Countdown (traces as JSONL) and the trace
//! tokenizer.

use crate::cmd::countdown::RulesArgs;
use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;
use weft_tasks::export::{write_split, Condition, SummaryBuilder, TraceConfig, TraceKind};
use weft_tasks::tokenizer::{NumberMode, TraceTokenizer};
use weft_tasks::{generate_splits, GeneratorConfig, Heuristic, Problem, Solver};

#[derive(Args)]
pub struct DataArgs {
    #[command(subcommand)]
    command: DataCommand,
}

#[derive(Subcommand)]
enum DataCommand {
    /// Generate Countdown problems and their search traces as JSONL.
    ///
    /// Writes DIR/train.jsonl and DIR/val.jsonl (one training sequence per
    /// line), DIR/val_problems.jsonl, DIR/tokenizer.json and DIR/summary.json.
    Countdown(CountdownDataArgs),
    /// Write the trace tokenizer as a Hugging Face tokenizer.json.
    Tokenizer {
        #[arg(long)]
        out: PathBuf,
        /// `whole`: numbers 0-999 are one token each; `digits`: one token per digit.
        #[arg(long, default_value = "whole")]
        numbers: NumberMode,
    },
}

#[derive(Args)]
struct CountdownDataArgs {
    /// `apr` (parent calls and children) or `sosp` (sequential baseline).
    #[arg(long)]
    kind: TraceKind,
    /// Training problems.
    #[arg(long)]
    n: usize,
    /// Validation problems (deduplicated against training).
    #[arg(long, default_value_t = 1000)]
    val: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Numbers per problem (2-6).
    #[arg(long, default_value_t = 4)]
    count: usize,
    #[arg(long, default_value_t = 1)]
    num_min: u64,
    #[arg(long, default_value_t = 99)]
    num_max: u64,
    #[arg(long, default_value_t = 10)]
    target_min: u64,
    #[arg(long, default_value_t = 100)]
    target_max: u64,
    #[command(flatten)]
    rules: RulesArgs,
    /// Smallest beam drawn per problem.
    #[arg(long, default_value_t = 1)]
    min_beam: usize,
    /// Largest beam drawn per problem (default: 6 for APR, 5 for SoS+).
    #[arg(long)]
    max_beam: Option<usize>,
    /// APR: largest sub-call beam drawn per problem.
    #[arg(long, default_value_t = 10)]
    max_sub_beam: usize,
    /// Chance of forking (APR, default 0.9) or of an inline sub search (SoS+, default 0.5).
    #[arg(long)]
    promising: Option<f64>,
    #[arg(long, default_value = "mult")]
    heuristic: Heuristic,
    /// Conditioning prefix: `sub-calls` (APR) or `tokens` (SoS+).
    #[arg(long, value_parser = ["sub-calls", "tokens"])]
    condition: Option<String>,
    /// Token budgets are rounded up to a multiple of this.
    #[arg(long, default_value_t = 512)]
    budget_bucket: u64,
    /// Tokenizer used for the statistics and written to DIR/tokenizer.json.
    #[arg(long, default_value = "whole")]
    numbers: NumberMode,
    /// Also write DIR/drills.jsonl: this many documents of arithmetic facts
    /// (`a op b=c` lines, legal under the rules), which `weft train` mixes
    /// into the training data.
    #[arg(long, default_value_t = 0)]
    drills: usize,
    /// Facts per drill document.
    #[arg(long, default_value_t = 32)]
    drill_lines: usize,
    /// Also write this many state drill documents into DIR/drills.jsonl:
    /// random states and some of their successors, written as the traces
    /// write them (the numbers left after a step, and the node line).
    #[arg(long, default_value_t = 0)]
    state_drills: usize,
    /// Nodes per state drill document.
    #[arg(long, default_value_t = 6)]
    state_drill_nodes: usize,
}

pub fn run(args: DataArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        DataCommand::Tokenizer { out, numbers } => {
            let tokenizer = TraceTokenizer::new(numbers);
            tokenizer
                .save(&out)
                .with_context(|| format!("writing {}", out.display()))?;
            println!(
                "wrote {} ({} tokens, numbers: {numbers:?})",
                out.display(),
                tokenizer.vocab_size()
            );
            Ok(ExitCode::SUCCESS)
        }
        DataCommand::Countdown(args) => countdown(args),
    }
}

fn countdown(args: CountdownDataArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let generator = GeneratorConfig {
        count: args.count,
        num_min: args.num_min,
        num_max: args.num_max,
        target_min: args.target_min,
        target_max: args.target_max,
        rules: args.rules.rules(),
        ..GeneratorConfig::default()
    };
    let reference = TraceConfig::reference(args.kind);
    let traces = TraceConfig {
        min_beam: args.min_beam,
        max_beam: args.max_beam.unwrap_or(reference.max_beam),
        max_sub_call_beam: args.max_sub_beam,
        promising_threshold: args.promising.unwrap_or(reference.promising_threshold),
        heuristic: args.heuristic,
        rules: args.rules.rules(),
        condition: match args.condition.as_deref() {
            Some("sub-calls") => Some(Condition::SubCalls),
            Some("tokens") => Some(Condition::Tokens),
            _ => None,
        },
        budget_bucket: args.budget_bucket,
        ..reference
    };
    traces.validate()?;
    generator.validate()?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let tokenizer = TraceTokenizer::new(args.numbers);
    tokenizer.save(&args.out.join("tokenizer.json"))?;

    eprintln!("drawing {} + {} problems...", args.n, args.val);
    let splits = generate_splits(&generator, args.seed, args.n, args.val)?;
    let problems_done = started.elapsed();
    write_problems(
        &args.out.join("val_problems.jsonl"),
        &splits.validation,
        &generator,
    )?;

    if args.drills > 0 || args.state_drills > 0 {
        write_drills(&args, &generator)?;
    }

    let total = (splits.train.len() + splits.validation.len()) as u64;
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{elapsed_precise}] {wide_bar} {pos}/{len} problems ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut summaries = Vec::new();
    let mut offset = 0u64;
    for (stream, (name, problems)) in [("train", &splits.train), ("val", &splits.validation)]
        .into_iter()
        .enumerate()
    {
        bar.set_message(name);
        let path = args.out.join(format!("{name}.jsonl"));
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let mut summary = SummaryBuilder::default();
        let base = offset;
        write_split(
            problems,
            name,
            stream as u64,
            args.seed,
            &traces,
            &tokenizer,
            &mut out,
            &mut summary,
            &|done| bar.set_position(base + done as u64),
        )?;
        out.flush()
            .with_context(|| format!("writing {}", path.display()))?;
        offset += problems.len() as u64;
        summaries.push((name, summary.finish()));
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed();

    let threads = rayon::current_num_threads();
    println!(
        "wrote {} in {:.1} s ({:.1} s drawing problems; {} threads; {:.0} problems/s overall)",
        args.out.display(),
        elapsed.as_secs_f64(),
        problems_done.as_secs_f64(),
        threads,
        total as f64 / elapsed.as_secs_f64()
    );
    for (name, summary) in &summaries {
        println!("--- {name} ({:?}) ---", args.kind);
        print!("{summary}");
    }
    let record = serde_json::json!({
        "kind": args.kind,
        "seed": args.seed,
        "generator": generator,
        "traces": traces,
        "tokenizer_numbers": args.numbers,
        "seconds": elapsed.as_secs_f64(),
        "threads": threads,
        "splits": summaries.iter().map(|(n, s)| (n.to_string(), s)).collect::<std::collections::BTreeMap<_, _>>(),
    });
    std::fs::write(
        args.out.join("summary.json"),
        serde_json::to_string_pretty(&record)?,
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Arithmetic then state drill documents, one JSON object (`text`) per line.
fn write_drills(args: &CountdownDataArgs, generator: &GeneratorConfig) -> anyhow::Result<()> {
    let path = args.out.join("drills.jsonl");
    let cfg = weft_tasks::drills::DrillConfig {
        num_min: args.num_min,
        num_max: args.num_max,
        cap: generator
            .rules
            .max_intermediate
            .unwrap_or(args.num_max.max(args.target_max)),
        lines: args.drill_lines,
        target_min: args.target_min,
        target_max: args.target_max,
    };
    let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::new(file);
    let mut rng = weft_tasks::PyRandom::new(weft_tasks::generator::derive_seed(args.seed, 7, 0));
    for i in 0..args.drills {
        let text = weft_tasks::drills::drill_text(&cfg, &generator.rules, &mut rng);
        let line =
            serde_json::json!({"id": format!("drill-{i:06}"), "kind": "drill", "text": text});
        writeln!(out, "{line}")?;
    }
    let state_cfg = weft_tasks::drills::DrillConfig {
        lines: args.state_drill_nodes,
        ..cfg
    };
    for i in 0..args.state_drills {
        let text = weft_tasks::drills::state_drill_text(&state_cfg, &generator.rules, &mut rng);
        let line = serde_json::json!({"id": format!("state-drill-{i:06}"), "kind": "state-drill", "text": text});
        writeln!(out, "{line}")?;
    }
    out.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "wrote {} arithmetic and {} state drill documents to {}",
        args.drills,
        args.state_drills,
        path.display()
    );
    Ok(())
}

/// Validation problems with one reference solution each, for evaluation.
fn write_problems(
    path: &Path,
    problems: &[Problem],
    generator: &GeneratorConfig,
) -> anyhow::Result<()> {
    let solver = Solver::new(generator.rules);
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::new(file);
    for (i, p) in problems.iter().enumerate() {
        let solution: Vec<String> = solver
            .solve_one(p)
            .unwrap_or_default()
            .iter()
            .map(|s| s.to_string())
            .collect();
        let line = serde_json::json!({
            "id": format!("val-{i:06}"),
            "problem": p.to_string(),
            "nums": p.nums,
            "target": p.target,
            "solution": solution,
        });
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    Ok(())
}
