//! `weft train rl`: GRPO of a trained Countdown model on its own forked
//! rollouts (`weft_rl`). Flags become `weft_rl` settings; Ctrl-C and
//! SIGTERM stop after the current step with a checkpoint.

use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;
use weft_rl::{Mode, RewardConfig, RlConfig, RlEvent, RolloutConfig, RunOptions, UpdateConfig};

#[derive(Args, Debug)]
#[command(after_long_help = AFTER_HELP)]
pub struct RlArgs {
    /// The trained model folder to start from (`weft train`'s output, or
    /// models/countdown-apr or models/countdown-sosp). Its task.json says
    /// how it reasons (APR forks, SoS+ does not) and the rules its answers
    /// are checked by. A resume must give the same folder.
    #[arg(long, value_name = "DIR")]
    init_from: PathBuf,
    /// Problems to train on: `{"nums": [..], "target": N}` lines (`weft
    /// data countdown` writes train_problems.jsonl). Never the held-out set.
    #[arg(long, value_name = "FILE")]
    problems: PathBuf,
    /// The model folder to write (exported at every checkpoint). Its
    /// training folder OUT.rl holds the checkpoint and rl_log.jsonl; a rerun
    /// of the same command resumes from it.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Steps: each rolls out --problems-per-step problems --group times and
    /// updates on them. May change on resume.
    #[arg(long, default_value_t = 200)]
    steps: usize,
    /// Problems per step.
    #[arg(long, default_value_t = 16)]
    problems_per_step: usize,
    /// Rollouts per problem (GRPO's G): advantages compare them.
    #[arg(long, default_value_t = 8)]
    group: usize,
    /// Sampling temperature of rollouts.
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Most tokens one thread generates in a rollout.
    #[arg(long, default_value_t = 512)]
    budget: usize,
    /// AdamW learning rate (constant after --warmup).
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// Steps of linear learning-rate warm-up.
    #[arg(long, default_value_t = 0)]
    warmup: usize,
    /// AdamW's decoupled weight decay.
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// PPO clip range of the probability ratio.
    #[arg(long, default_value_t = 0.2)]
    clip_eps: f32,
    /// Weight of a KL penalty to the initial model (0: none; costs one more
    /// forward pass per update).
    #[arg(long, default_value_t = 0.0)]
    kl_coef: f32,
    /// Passes over each step's rollouts.
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Optimizer steps per pass. With more than one step in all, ratios are
    /// taken against the rollout policy (PPO); with one they are 1.
    #[arg(long, default_value_t = 1)]
    minibatches: usize,
    /// Global gradient-norm clip (0: none).
    #[arg(long, default_value_t = 1.0)]
    grad_clip: f64,
    /// Tokens per packed training row (a longer thread is cut).
    #[arg(long, default_value_t = 2048)]
    seq_len: usize,
    /// Rows per forward pass (gradients accumulate across them).
    #[arg(long, default_value_t = 4)]
    micro_rows: usize,
    /// Divide advantages by their group's standard deviation (off: the
    /// group mean only, as ThreadWeaver's P-GRPO).
    #[arg(long)]
    std_norm: bool,
    /// Reward of a correct answer.
    #[arg(long, default_value_t = 1.0)]
    reward_correct: f32,
    /// ThreadWeaver's parallelism term, for a correct answer: this times
    /// min(eta - 1, --parallel-cap), eta = total tokens / critical path.
    #[arg(long, default_value_t = 0.5)]
    reward_parallel: f32,
    /// The cap on eta - 1 in the parallelism term (ThreadWeaver: 0.2).
    #[arg(long, default_value_t = 0.2)]
    parallel_cap: f32,
    /// Reward of an answer the verifier can read, right or wrong.
    #[arg(long, default_value_t = 0.0)]
    reward_format: f32,
    /// Penalty per --budget tokens of critical path.
    #[arg(long, default_value_t = 0.0)]
    length_penalty: f32,
    /// Penalty times the share of a rollout's children that start from
    /// the same state as a sibling (repeated sub-searches).
    #[arg(long, default_value_t = 0.0)]
    duplicate_penalty: f32,
    /// Subtracted from the advantage of each sampled token in a line that
    /// repeats the search: an exploration reaching numbers already reached
    /// from its node, or a sub-search called twice for one state
    /// (token-level credit, unlike --duplicate-penalty).
    #[arg(long, default_value_t = 0.0)]
    repeated_search_penalty: f32,
    /// Seed of the problem order and the rollouts.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// A compute budget in CPU minutes for the whole RL run (earlier
    /// resumed calls included; the --init-from model's own training is not
    /// counted); the run ends with a checkpoint before a step would pass
    /// it.
    #[arg(long, value_name = "MIN")]
    max_cpu_minutes: Option<f64>,
    /// Checkpoint (and export the model) every this many steps. May change
    /// on resume.
    #[arg(long, default_value_t = 5)]
    checkpoint_every: usize,
    /// Worker threads (default: one per core). May change on resume.
    #[arg(long, short = 't')]
    threads: Option<usize>,
    /// No progress bar (a line per step still goes to OUT.rl/rl_log.jsonl).
    #[arg(long)]
    quiet: bool,
}

const AFTER_HELP: &str = "\
Each step: --problems-per-step problems, each rolled out --group times by the
engine with real forks, sampled at --temperature; the verifier scores them;
advantages are rewards minus their group's mean; the policy loss is PPO's
clipped surrogate over every token any thread sampled (prompts and the text
the engine wrote at joins are masked out).

Resuming: rerun the same command. Only --steps, --max-cpu-minutes,
--checkpoint-every, --threads and --quiet may differ; any other change is
refused, setting by setting.";

pub fn run(a: RlArgs) -> anyhow::Result<ExitCode> {
    if let Some(t) = a.threads {
        super::train::use_threads(t)?;
    }
    let task = weft_tasks::CountdownTask::of_dir(&a.init_from).map_err(anyhow::Error::msg)?;
    let mode = match task.as_ref().and_then(|t| t.kind) {
        Some(weft_tasks::export::TraceKind::Sosp) => Mode::Sequential,
        _ => Mode::Apr,
    };
    let problems = super::countdown_run::read_problems(&a.problems)?;
    // Training on the evaluation set would make its figures meaningless.
    let heldout: std::collections::HashSet<(Vec<u64>, u64)> =
        super::solve::heldout()?.iter().map(|p| p.key()).collect();
    let overlap = problems
        .iter()
        .filter(|p| heldout.contains(&p.key()))
        .count();
    anyhow::ensure!(
        overlap == 0,
        "{} holds {overlap} of the 500 held-out problems (models/heldout.jsonl), the set the \
         models are evaluated on: train on training problems, e.g. DATA/train_problems.jsonl \
         from `weft data countdown`",
        a.problems.display()
    );
    let cfg = RlConfig {
        rollout: RolloutConfig {
            mode,
            budget: a.budget,
            temperature: a.temperature,
            group: a.group,
        },
        reward: RewardConfig {
            correct: a.reward_correct,
            parallel: a.reward_parallel,
            parallel_cap: a.parallel_cap,
            format: a.reward_format,
            length_penalty: a.length_penalty,
            length_scale: a.budget,
            duplicate_penalty: a.duplicate_penalty,
            repeated_search_penalty: a.repeated_search_penalty,
        },
        update: UpdateConfig {
            lr: a.lr,
            clip_eps: a.clip_eps,
            kl_coef: a.kl_coef,
            epochs: a.epochs,
            minibatches: a.minibatches,
            grad_clip: a.grad_clip,
            seq_len: a.seq_len,
            micro_rows: a.micro_rows,
            temperature: a.temperature,
        },
        std_norm: a.std_norm,
        problems_per_step: a.problems_per_step,
        steps: a.steps,
        warmup_steps: a.warmup,
        weight_decay: a.weight_decay,
        seed: a.seed,
    };
    let (stop, _signal) = super::train::stop_on_signals()?;
    let opts = RunOptions {
        max_cpu_seconds: a.max_cpu_minutes.map(|m| m * 60.0),
        stop: Some(stop),
        checkpoint_every: a.checkpoint_every,
        threads: a.threads,
        stop_at_step: None,
    };
    let bar = (!a.quiet).then(|| {
        let b = indicatif::ProgressBar::new(a.steps as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:24} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let started = Instant::now();
    let mut on_event = |e: RlEvent<'_>| {
        let r = match e {
            RlEvent::Step(r) => r,
            RlEvent::Note(n) => {
                match &bar {
                    Some(b) if !b.is_hidden() => b.println(n),
                    _ => eprintln!("{n}"),
                }
                return;
            }
        };
        let msg = format!(
            "reward {:.3}  acc {:.1}%  children {:.2}  dup {:.1}%  repeat {:.1}%  critical path {:.0}  rollout {:.0} tok/s  update {:.0} tok/s",
            r.reward,
            100.0 * r.accuracy,
            r.children,
            100.0 * r.duplicate_fraction,
            100.0 * r.repeated_token_fraction,
            r.critical_path,
            r.rollout_tokens_per_second,
            r.update_tokens_per_second
        );
        match &bar {
            Some(b) if b.is_hidden() => eprintln!("step {}/{}: {msg}", r.step, r.steps),
            Some(b) => {
                b.set_position(r.step as u64);
                b.set_message(msg);
            }
            None => {}
        }
    };
    let outcome = weft_rl::run(&a.init_from, &problems, &a.out, &cfg, &opts, &mut on_event)
        .with_context(|| format!("RL into {}", a.out.display()))?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    eprintln!(
        "{}: step {}/{} in {:.1} CPU-min total ({:.1} min this call)",
        outcome.status,
        outcome.step,
        outcome.steps,
        outcome.cpu_seconds / 60.0,
        started.elapsed().as_secs_f64() / 60.0
    );
    println!("model: {}", outcome.model_dir.display());
    Ok(match outcome.status {
        "interrupted" => ExitCode::from(130),
        _ => ExitCode::SUCCESS,
    })
}
