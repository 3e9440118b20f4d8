//! `weft eval`: accuracy, tokens and latency of trained Countdown models,
//! run through the engine with real forks; JSON reports and plots.

use super::countdown_run::{read_problems, Mode, Outcome, Solver};
use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Args)]
pub struct EvalArgs {
    #[command(subcommand)]
    command: EvalCommand,
}

#[derive(Subcommand)]
enum EvalCommand {
    /// Solve held-out Countdown problems with a trained model and report
    /// accuracy (by the verifier), tokens, latency and children per problem.
    Countdown(Box<CountdownEval>),
    /// Plot accuracy against latency and against the context budget from
    /// one or more `eval countdown` reports (SVG).
    Plot {
        /// Reports written by `weft eval countdown --json`.
        #[arg(required = true)]
        reports: Vec<PathBuf>,
        /// The SVG to write (its folder is created if missing).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args)]
struct CountdownEval {
    /// Model folder (config.json, model.safetensors, tokenizer.json, task.json).
    #[arg(long)]
    model: PathBuf,
    /// A problems file: {"nums": [..], "target": N} per line (e.g. a data
    /// folder's val_problems.jsonl; not train.jsonl).
    #[arg(long)]
    problems: PathBuf,
    /// apr: the model forks sub-searches, run as child threads;
    /// sequential: one thread (SoS+). Default: what the model was trained
    /// on (`kind` in its task.json), else apr.
    #[arg(long, value_enum)]
    protocol: Option<Mode>,
    /// Run with --protocol even if the model was trained on the other
    /// kind of traces.
    #[arg(long)]
    force: bool,
    /// Put this many problems' full traces (every thread's prompt and text)
    /// in the report, per budget.
    #[arg(long, default_value_t = 0, value_name = "N")]
    samples: usize,
    /// Context budgets to evaluate at, comma-separated (e.g. 256,512,1024):
    /// most tokens each thread may generate.
    #[arg(long, value_delimiter = ',', default_value = "2048",
          value_parser = clap::value_parser!(u64).range(1..))]
    budgets: Vec<u64>,
    /// Only the first N problems.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,
    /// Problems run at once (1 gives each problem the machine to itself,
    /// so latency is that problem's alone).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Write the report (with every problem's outcome) here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// A short name for plots (default: the model folder's name).
    #[arg(long)]
    label: Option<String>,
    /// Also draw accuracy against latency and against the budget (SVG).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Earlier reports (e.g. the other model's) to draw beside this one.
    #[arg(long = "with", requires = "plot")]
    with_reports: Vec<PathBuf>,
    /// Forward-pass worker threads (default: all cores). Small models
    /// decode faster on one: their steps are too small to split.
    #[arg(long)]
    threads: Option<usize>,
    /// Verify under APR's rules (no cap on intermediate results) instead of
    /// the rules in the model's task.json (for problems from another
    /// distribution).
    #[arg(long)]
    no_cap: bool,
    /// Run the problems on remote OpenAI-compatible servers serving this
    /// model (with --backend, e.g. `weft serve --model
    /// models/countdown-apr` or vLLM) instead of in this process: the same
    /// protocol, trees and verifier; joins re-prefill. --model still names
    /// the model folder (tokenizer, config, task.json).
    #[command(flatten)]
    remote: super::RemoteArgs,
}

/// Mean and percentiles of one quantity.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Dist {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
}

impl Dist {
    fn of(mut v: Vec<f64>) -> Dist {
        if v.is_empty() {
            return Dist {
                mean: 0.0,
                p50: 0.0,
                p90: 0.0,
            };
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Dist {
            mean: v.iter().sum::<f64>() / v.len() as f64,
            p50: at(0.5),
            p90: at(0.9),
        }
    }
}

/// Results at one budget.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BudgetReport {
    pub budget: usize,
    pub problems: usize,
    pub accuracy: f64,
    pub total_tokens: Dist,
    pub critical_path_tokens: Dist,
    pub latency_ms: Dist,
    pub children: Dist,
    /// Share of children that start from the same state as an earlier
    /// sibling (`weft_protocol::apr::duplicate_children`): repeated
    /// sub-searches. `None` when no problem forked.
    #[serde(default)]
    pub duplicate_children: Option<f64>,
    pub arithmetic_lines: usize,
    pub arithmetic_correct: usize,
    pub arithmetic_share: Option<f64>,
    /// Share of search steps whose numbers left are right (see
    /// `weft_tasks::state_stats`).
    #[serde(default)]
    pub state_share: Option<f64>,
    pub wall_s: f64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outcomes: Vec<serde_json::Value>,
    /// `--samples N`: the first N problems' outcomes with every thread's
    /// prompt and text.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub label: String,
    pub model: String,
    pub protocol: String,
    pub problems_file: String,
    pub concurrency: usize,
    /// The model's task.json (its rules and distribution), if it has one.
    #[serde(default)]
    pub task: Option<weft_tasks::CountdownTask>,
    /// The rules the answers were verified under.
    #[serde(default)]
    pub rules: weft_tasks::Rules,
    /// Problems outside the task's distribution.
    #[serde(default)]
    pub outside_task: usize,
    /// Set when the model is from an unfinished training run
    /// (`weft_train.json`): "step 109 of 300 (interrupted)".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unfinished: Option<String>,
    pub budgets: Vec<BudgetReport>,
}

pub fn run(args: EvalArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        EvalCommand::Countdown(a) => countdown(*a),
        EvalCommand::Plot { reports, out } => {
            let reports = reports
                .iter()
                .map(|p| -> anyhow::Result<Report> {
                    let text = std::fs::read_to_string(p)
                        .with_context(|| format!("reading {}", p.display()))?;
                    serde_json::from_str(&text)
                        .with_context(|| format!("{} is not an eval report", p.display()))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            plot(&reports, &out)?;
            println!("wrote {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The report of one budget; `samples` outcomes keep their full traces.
pub fn summarize(budget: usize, outcomes: &[Outcome], wall_s: f64, samples: usize) -> BudgetReport {
    let n = outcomes.len().max(1) as f64;
    let f = |g: &dyn Fn(&Outcome) -> f64| Dist::of(outcomes.iter().map(g).collect());
    let lines: usize = outcomes.iter().map(|o| o.arithmetic_lines).sum();
    let correct: usize = outcomes.iter().map(|o| o.arithmetic_correct).sum();
    let state_lines: usize = outcomes.iter().map(|o| o.state_lines).sum();
    let state_correct: usize = outcomes.iter().map(|o| o.state_correct).sum();
    BudgetReport {
        budget,
        problems: outcomes.len(),
        accuracy: outcomes.iter().filter(|o| o.correct).count() as f64 / n,
        total_tokens: f(&|o| o.total_tokens as f64),
        critical_path_tokens: f(&|o| o.critical_path_tokens as f64),
        latency_ms: f(&|o| o.latency_ms),
        children: f(&|o| o.children as f64),
        duplicate_children: {
            let kids: usize = outcomes.iter().map(|o| o.children).sum();
            let dups: usize = outcomes.iter().map(|o| o.duplicate_children).sum();
            (kids > 0).then(|| dups as f64 / kids as f64)
        },
        arithmetic_lines: lines,
        arithmetic_correct: correct,
        arithmetic_share: (lines > 0).then(|| correct as f64 / lines as f64),
        state_share: (state_lines > 0).then(|| state_correct as f64 / state_lines as f64),
        wall_s,
        outcomes: outcomes
            .iter()
            .map(|o| {
                let brief = Outcome {
                    trace: Vec::new(),
                    ..o.clone()
                };
                serde_json::to_value(brief).unwrap_or_default()
            })
            .collect(),
        samples: outcomes
            .iter()
            .take(samples)
            .map(|o| serde_json::to_value(o).unwrap_or_default())
            .collect(),
    }
}

fn countdown(a: CountdownEval) -> anyhow::Result<ExitCode> {
    let mut problems = read_problems(&a.problems)?;
    if let Some(n) = a.limit {
        problems.truncate(n as usize);
    }
    anyhow::ensure!(!a.budgets.is_empty(), "--budgets needs at least one value");
    let mut solver = if !a.remote.is_remote() {
        Solver::load_with(&a.model, a.threads)?
    } else {
        Solver::load_remote(&a.model, &a.remote)?
    };
    let record = weft_train::TrainRecord::load(&a.model)?;
    if let Some(r) = record.as_ref().filter(|r| !r.finished) {
        eprintln!(
            "warning: {} is from an unfinished run: step {} of {} (status {} in {}); \
             rerun the same `weft train` command to finish it",
            a.model.display(),
            r.step,
            r.steps,
            serde_json::to_value(r.status)?,
            weft_train::RECORD_FILE
        );
    }
    // The trace kind from task.json, else from the training record.
    let trained_on = solver.task.as_ref().and_then(|t| t.kind).or_else(|| {
        record
            .as_ref()
            .and_then(|r| r.trace_kind.as_deref())
            .and_then(|k| k.parse().ok())
    });
    let protocol = match (a.protocol, trained_on) {
        (Some(p), Some(kind)) if p != Mode::of_kind(kind) && !a.force => anyhow::bail!(
            "{} was trained on {} traces (task.json), which run as --protocol {}; \
             --protocol {} would score it on a format it never saw. \
             Pass --force to run it anyway.",
            a.model.display(),
            serde_json::to_value(kind)?.as_str().unwrap_or("?"),
            mode_name(Mode::of_kind(kind)),
            mode_name(p)
        ),
        (Some(p), _) => p,
        (None, Some(kind)) => Mode::of_kind(kind),
        (None, None) => {
            eprintln!(
                "note: {} records no trace kind (task.json `kind`); running --protocol apr",
                a.model.display()
            );
            Mode::Apr
        }
    };
    if a.no_cap {
        solver.rules = weft_tasks::Rules::default();
    }
    let outside = match &solver.task {
        Some(task) => {
            let out: Vec<(String, String)> = problems
                .iter()
                .filter_map(|p| task.check(p).err().map(|e| (p.to_string(), e.0)))
                .collect();
            if let Some((p, why)) = out.first() {
                eprintln!(
                    "warning: {} of {} problems are outside the model's task ({}); e.g. {p}: {why}",
                    out.len(),
                    problems.len(),
                    task.describe()
                );
            }
            out.len()
        }
        None => {
            eprintln!(
                "warning: {} has no task.json, so its task is unknown: answers are verified \
                 under APR's rules (no cap on intermediate results)",
                a.model.display()
            );
            0
        }
    };
    let label = a.label.clone().unwrap_or_else(|| {
        a.model
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    });
    let mut report = Report {
        label: label.clone(),
        model: a.model.display().to_string(),
        protocol: mode_name(protocol).to_string(),
        problems_file: a.problems.display().to_string(),
        concurrency: a.concurrency,
        task: solver.task.clone(),
        rules: solver.rules,
        outside_task: outside,
        unfinished: record.as_ref().filter(|r| !r.finished).map(|r| {
            format!(
                "step {} of {} ({})",
                r.step,
                r.steps,
                serde_json::to_value(r.status)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default()
            )
        }),
        budgets: Vec::new(),
    };
    // The label column fits the label.
    let w = label.chars().count().max(10);
    println!(
        "{:<w$} {:>6} {:>7} {:>9} {:>9} {:>9} {:>9} {:>8} {:>6} {:>7} {:>7}",
        "model",
        "budget",
        "acc",
        "tok mean",
        "crit p50",
        "lat p50",
        "lat p90",
        "children",
        "dup",
        "arith",
        "states"
    );
    let max_context = solver.max_context();
    if let Some(b) = a.budgets.iter().find(|&&b| b as usize >= max_context) {
        eprintln!(
            "warning: budget {b} is not below the model's context ({max_context} tokens): \
             threads stop at the context first"
        );
    }
    for budget in a.budgets.iter().map(|&b| b as usize) {
        let bar = ProgressBar::with_draw_target(
            Some(problems.len() as u64),
            ProgressDrawTarget::stderr(),
        );
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} {wide_bar} {pos}/{len} problems [{elapsed_precise} < {eta_precise}]",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(format!("{label} budget {budget}"));
        let started = std::time::Instant::now();
        let outcomes = solver.solve(
            &problems,
            protocol,
            budget,
            a.concurrency,
            &mut |_| {},
            &mut |done| bar.set_position(done as u64),
        )?;
        bar.finish_and_clear();
        let r = summarize(
            budget,
            &outcomes,
            started.elapsed().as_secs_f64(),
            a.samples,
        );
        println!(
            "{:<w$} {:>6} {:>6.1}% {:>9.0} {:>9.0} {:>7.0}ms {:>7.0}ms {:>8.1} {:>5.1}% {:>6.1}% {:>6.1}%",
            label,
            budget,
            100.0 * r.accuracy,
            r.total_tokens.mean,
            r.critical_path_tokens.p50,
            r.latency_ms.p50,
            r.latency_ms.p90,
            r.children.mean,
            100.0 * r.duplicate_children.unwrap_or(0.0),
            100.0 * r.arithmetic_share.unwrap_or(0.0),
            100.0 * r.state_share.unwrap_or(0.0)
        );
        report.budgets.push(r);
    }
    if let Some(path) = &a.json {
        write_json(path, &report)?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &a.plot {
        let mut all = vec![report];
        all.extend(read_reports(&a.with_reports)?);
        plot(&all, path)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Apr => "apr",
        Mode::Sequential => "sequential",
    }
}

fn read_reports(paths: &[PathBuf]) -> anyhow::Result<Vec<Report>> {
    paths
        .iter()
        .map(|p| -> anyhow::Result<Report> {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not an eval report", p.display()))
        })
        .collect()
}

fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_string_pretty(value)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// Two panels: accuracy vs median latency (ms, as the table), and accuracy
/// vs budget; one line per report, one point per budget, each point
/// labelled with its budget. The latency line joins the points in order of
/// latency, so it never doubles back.
pub fn plot(reports: &[Report], out: &Path) -> anyhow::Result<()> {
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    plot_svg(reports, out).with_context(|| format!("writing {}", out.display()))
}

fn plot_svg(reports: &[Report], out: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(out, (1100, 460)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(550);
    let colors = [RED, BLUE, GREEN, MAGENTA, CYAN, BLACK];
    let max_lat = reports
        .iter()
        .flat_map(|r| r.budgets.iter().map(|b| b.latency_ms.p50))
        .fold(1.0, f64::max);
    let max_budget = reports
        .iter()
        .flat_map(|r| r.budgets.iter().map(|b| b.budget as f64))
        .fold(1.0, f64::max);
    let panels: [(
        &DrawingArea<SVGBackend, plotters::coord::Shift>,
        &str,
        f64,
        bool,
    ); 2] = [
        (
            &left,
            "median latency per problem (ms)",
            max_lat * 1.15,
            true,
        ),
        (
            &right,
            "context budget (tokens per thread)",
            max_budget * 1.1,
            false,
        ),
    ];
    for (area, xlabel, xmax, latency) in panels {
        let mut chart = ChartBuilder::on(area)
            .caption(
                if latency {
                    "accuracy vs latency"
                } else {
                    "accuracy vs context budget"
                },
                ("sans-serif", 20),
            )
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..xmax, 0f64..100f64)?;
        chart
            .configure_mesh()
            .x_desc(xlabel)
            .y_desc("accuracy (%)")
            .draw()?;
        for (i, r) in reports.iter().enumerate() {
            let color = colors[i % colors.len()];
            let mut pts: Vec<(f64, f64, usize)> = r
                .budgets
                .iter()
                .map(|b| {
                    let x = if latency {
                        b.latency_ms.p50
                    } else {
                        b.budget as f64
                    };
                    (x, 100.0 * b.accuracy, b.budget)
                })
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            let line: Vec<(f64, f64)> = pts.iter().map(|&(x, y, _)| (x, y)).collect();
            chart
                .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))?
                .label(match &r.unfinished {
                    Some(u) => format!("{} ({}; unfinished: {u})", r.label, r.protocol),
                    None => format!("{} ({})", r.label, r.protocol),
                })
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            chart.draw_series(line.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
            if latency {
                chart.draw_series(pts.iter().map(|&(x, y, budget)| {
                    Text::new(
                        format!("{budget}"),
                        (x, y + 2.5),
                        ("sans-serif", 12).into_font().color(&color),
                    )
                }))?;
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
