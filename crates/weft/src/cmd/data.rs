//! `weft data`: training data for Countdown (traces as JSONL) and the trace
//! tokenizer.

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
use weft_tasks::{generate_splits, CountdownTask, GeneratorConfig, Problem, Solver};

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
    /// line), DIR/train_problems.jsonl and DIR/val_problems.jsonl (the
    /// problems alone), DIR/tokenizer.json and DIR/summary.json.
    Countdown(Box<CountdownDataArgs>),
    /// Write the trace tokenizer as a Hugging Face tokenizer.json.
    Tokenizer {
        /// The tokenizer.json to write.
        #[arg(long)]
        out: PathBuf,
        /// `whole`: numbers 0-999 are one token each; `digits`: one token per digit.
        #[arg(long, default_value = "whole",
              value_parser = clap::builder::TypedValueParser::map(
                  clap::builder::PossibleValuesParser::new(["whole", "digits"]),
                  |s| s.parse::<NumberMode>().expect("a listed value")))]
        numbers: NumberMode,
    },
}

/// Every setting may come from `--task FILE` (a `task.json`, as every data
/// folder gets one); a flag given here overrides the file's key of the same
/// name. Unset everywhere, a setting takes the default shown.
#[derive(Args)]
struct CountdownDataArgs {
    /// A task file (`task.json`): all the settings below in one JSON object,
    /// keys named as the flags with `_` for `-` (e.g. `{"kind": "apr",
    /// "n": 20000, "count": 3, "num_max": 50, "max_intermediate": 100}`).
    /// The resolved settings are written to DIR/task.json.
    #[arg(long, value_name = "FILE")]
    task: Option<PathBuf>,
    /// Output directory (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Which traces: `apr` (parent calls and children) or `sosp` (the
    /// sequential SoS+ baseline). Required here or in the task file.
    #[arg(long, value_parser = ["apr", "sosp"])]
    kind: Option<String>,
    /// Training problems. Required here or in the task file.
    #[arg(long)]
    n: Option<usize>,
    /// Validation problems (deduplicated against training) [default: 1000].
    #[arg(long)]
    val: Option<usize>,
    /// Seed of the problem draws and traces (the same seed gives the same
    /// folder) [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    /// Numbers per problem, 2-6 [default: 4].
    #[arg(long)]
    count: Option<usize>,
    /// Smallest number [default: 1].
    #[arg(long)]
    num_min: Option<u64>,
    /// Largest number [default: 99].
    #[arg(long)]
    num_max: Option<u64>,
    /// Smallest target [default: 10].
    #[arg(long)]
    target_min: Option<u64>,
    /// Largest target [default: 100].
    #[arg(long)]
    target_max: Option<u64>,
    /// Forbid steps whose result exceeds this [default: no cap, as APR].
    #[arg(long)]
    max_intermediate: Option<u64>,
    /// Smallest beam drawn per problem [default: 1].
    #[arg(long)]
    min_beam: Option<usize>,
    /// Largest beam drawn per problem [default: 6 for APR, 5 for SoS+].
    #[arg(long)]
    max_beam: Option<usize>,
    /// APR: largest sub-call beam drawn per problem [default: 10].
    #[arg(long)]
    max_sub_beam: Option<usize>,
    /// Chance of forking (APR) or of an inline sub search (SoS+)
    /// [default: 0.9 for APR, 0.5 for SoS+].
    #[arg(long)]
    promising: Option<f64>,
    /// How the search ranks nodes: `mult` (distance to the target's
    /// factors, as APR's data) or `sum` (mean distance to the target)
    /// [default: mult].
    #[arg(long, value_parser = ["mult", "sum"])]
    heuristic: Option<String>,
    /// Conditioning prefix: `sub-calls` (APR) or `tokens` (SoS+) [default: none].
    #[arg(long, value_parser = ["sub-calls", "tokens"])]
    condition: Option<String>,
    /// Token budgets are rounded up to a multiple of this [default: 512].
    #[arg(long)]
    budget_bucket: Option<u64>,
    /// Tokenizer written to DIR/tokenizer.json: `whole` (numbers 0-999 are
    /// one token each) or `digits` (one token per digit) [default: whole].
    #[arg(long, value_parser = ["whole", "digits"])]
    numbers: Option<String>,
    /// Also write DIR/drills.jsonl: this many documents of arithmetic facts
    /// (`a op b=c` lines, legal under the rules), which `weft train` mixes
    /// into the training data [default: 0].
    #[arg(long)]
    drills: Option<usize>,
    /// Facts per drill document [default: 32].
    #[arg(long)]
    drill_lines: Option<usize>,
    /// Also write this many state drill documents into DIR/drills.jsonl:
    /// random states and some of their successors, written as the traces
    /// write them (the numbers left after a step, and the node line)
    /// [default: 0].
    #[arg(long)]
    state_drills: Option<usize>,
    /// Nodes per state drill document [default: 6].
    #[arg(long)]
    state_drill_nodes: Option<usize>,
}

impl CountdownDataArgs {
    /// The task file's settings with this command line's flags over them.
    fn task(&self) -> anyhow::Result<CountdownTask> {
        let mut t = match &self.task {
            Some(path) => CountdownTask::load(path).map_err(anyhow::Error::msg)?,
            None => CountdownTask::default(),
        };
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = self.$field { t.$field = v; } )* };
        }
        set!(
            val,
            seed,
            count,
            num_min,
            num_max,
            target_min,
            target_max,
            min_beam,
            max_sub_beam,
            budget_bucket,
            drills,
            drill_lines,
            state_drills,
            state_drill_nodes
        );
        macro_rules! set_opt {
            ($($field:ident),*) => { $( if self.$field.is_some() { t.$field = self.$field; } )* };
        }
        set_opt!(n, max_intermediate, max_beam, promising);
        if let Some(k) = &self.kind {
            t.kind = Some(k.parse().map_err(anyhow::Error::msg)?);
        }
        if let Some(h) = &self.heuristic {
            t.heuristic = h.parse().map_err(anyhow::Error::msg)?;
        }
        if let Some(c) = &self.condition {
            t.condition = Some(c.clone());
        }
        if let Some(n) = &self.numbers {
            t.numbers = n.parse().map_err(anyhow::Error::msg)?;
        }
        anyhow::ensure!(
            t.kind.is_some(),
            "which traces? give --kind apr|sosp (or \"kind\" in the task file)"
        );
        anyhow::ensure!(
            t.n.is_some(),
            "how many training problems? give --n N (or \"n\" in the task file)"
        );
        if let Some(c) = &t.condition {
            anyhow::ensure!(
                c == "sub-calls" || c == "tokens",
                "condition {c:?} in the task file: expected \"sub-calls\" or \"tokens\""
            );
        }
        Ok(t)
    }
}

pub fn run(args: DataArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        DataCommand::Tokenizer { out, numbers } => {
            let tokenizer = TraceTokenizer::new(numbers);
            tokenizer
                .save(&out)
                .with_context(|| format!("writing {}", out.display()))?;
            println!(
                "wrote {} ({} tokens, numbers: {})",
                out.display(),
                tokenizer.vocab_size(),
                serde_json::to_value(numbers)?.as_str().unwrap_or("?")
            );
            Ok(ExitCode::SUCCESS)
        }
        DataCommand::Countdown(args) => countdown(*args),
    }
}

fn countdown(args: CountdownDataArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut task = args.task()?;
    let kind = task.kind.unwrap_or(TraceKind::Apr);
    let n = task.n.unwrap_or(0);
    let generator = task.generator();
    let reference = TraceConfig::reference(kind);
    let traces = TraceConfig {
        min_beam: task.min_beam,
        max_beam: task.max_beam.unwrap_or(reference.max_beam),
        max_sub_call_beam: task.max_sub_beam,
        promising_threshold: task.promising.unwrap_or(reference.promising_threshold),
        heuristic: task.heuristic,
        rules: task.rules(),
        condition: match task.condition.as_deref() {
            Some("sub-calls") => Some(Condition::SubCalls),
            Some("tokens") => Some(Condition::Tokens),
            _ => None,
        },
        budget_bucket: task.budget_bucket,
        ..reference
    };
    traces.validate()?;
    generator.validate()?;
    // Write what was used, defaults resolved.
    task.max_beam = Some(traces.max_beam);
    task.promising = Some(traces.promising_threshold);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let tokenizer = TraceTokenizer::new(task.numbers);
    tokenizer.save(&args.out.join("tokenizer.json"))?;
    let task_path = args.out.join("task.json");
    task.save(&task_path)
        .with_context(|| format!("writing {}", task_path.display()))?;

    eprintln!("drawing {n} + {} problems...", task.val);
    let splits = generate_splits(&generator, task.seed, n, task.val)?;
    let problems_done = started.elapsed();
    write_problems(
        &args.out.join("val_problems.jsonl"),
        "val",
        &splits.validation,
        &generator,
    )?;
    // The training problems alone, for `weft train rl --problems`.
    write_problems(
        &args.out.join("train_problems.jsonl"),
        "train",
        &splits.train,
        &generator,
    )?;

    let drills_path = args.out.join("drills.jsonl");
    if task.drills > 0 || task.state_drills > 0 {
        write_drills(&args.out, &task, &generator)?;
    } else if drills_path.exists() {
        // A drills file from an earlier run would be mixed into training.
        std::fs::remove_file(&drills_path)
            .with_context(|| format!("removing the stale {}", drills_path.display()))?;
        eprintln!(
            "removed {} (left by an earlier run; this task has no drills)",
            drills_path.display()
        );
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
            task.seed,
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
        "wrote {} in {:.1} s ({:.1} s drawing problems; {} {}; {:.0} problems/s overall)",
        args.out.display(),
        elapsed.as_secs_f64(),
        problems_done.as_secs_f64(),
        threads,
        if threads == 1 { "thread" } else { "threads" },
        total as f64 / elapsed.as_secs_f64()
    );
    for (name, summary) in &summaries {
        println!(
            "--- {name} ({}) ---",
            serde_json::to_value(kind)?.as_str().unwrap_or("?")
        );
        print!("{summary}");
    }
    let record = serde_json::json!({
        "kind": kind,
        "seed": task.seed,
        "task": task,
        "generator": generator,
        "traces": traces,
        "tokenizer_numbers": task.numbers,
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
fn write_drills(
    out_dir: &Path,
    task: &CountdownTask,
    generator: &GeneratorConfig,
) -> anyhow::Result<()> {
    let path = out_dir.join("drills.jsonl");
    let cfg = weft_tasks::drills::DrillConfig {
        num_min: task.num_min,
        num_max: task.num_max,
        cap: generator
            .rules
            .max_intermediate
            .unwrap_or(task.num_max.max(task.target_max)),
        lines: task.drill_lines,
        target_min: task.target_min,
        target_max: task.target_max,
    };
    let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::new(file);
    let mut rng = weft_tasks::PyRandom::new(weft_tasks::generator::derive_seed(task.seed, 7, 0));
    for i in 0..task.drills {
        let text = weft_tasks::drills::drill_text(&cfg, &generator.rules, &mut rng);
        let line =
            serde_json::json!({"id": format!("drill-{i:06}"), "kind": "drill", "text": text});
        writeln!(out, "{line}")?;
    }
    let state_cfg = weft_tasks::drills::DrillConfig {
        lines: task.state_drill_nodes,
        ..cfg
    };
    for i in 0..task.state_drills {
        let text = weft_tasks::drills::state_drill_text(&state_cfg, &generator.rules, &mut rng);
        let line = serde_json::json!({"id": format!("state-drill-{i:06}"), "kind": "state-drill", "text": text});
        writeln!(out, "{line}")?;
    }
    out.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "wrote {} arithmetic and {} state drill documents to {}",
        task.drills,
        task.state_drills,
        path.display()
    );
    Ok(())
}

/// Validation problems with one reference solution each, for evaluation.
/// Writes `problems` as JSONL, ids `{split}-000000` on.
fn write_problems(
    path: &Path,
    split: &str,
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
            "id": format!("{split}-{i:06}"),
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
