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
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    temperature: f32,
    /// Most tokens one thread generates in a rollout.
    #[arg(long, default_value_t = 512)]
    budget: usize,
    /// AdamW learning rate (constant after --warmup).
    #[arg(long, default_value_t = 1e-4, allow_negative_numbers = true)]
    lr: f64,
    /// Steps of linear learning-rate warm-up.
    #[arg(long, default_value_t = 0)]
    warmup: usize,
    /// AdamW's decoupled weight decay.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    weight_decay: f64,
    /// PPO clip range of the probability ratio.
    #[arg(long, default_value_t = 0.2, allow_negative_numbers = true)]
    clip_eps: f32,
    /// Weight of a KL penalty to the initial model (0: none; costs one more
    /// forward pass per update).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    kl_coef: f32,
    /// Passes over each step's rollouts.
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Optimizer steps per pass. With more than one step in all, ratios are
    /// taken against the rollout policy (PPO); with one they are 1.
    #[arg(long, default_value_t = 1)]
    minibatches: usize,
    /// Global gradient-norm clip (0: none).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    grad_clip: f64,
    /// Tokens per packed training row (a longer thread is cut).
    #[arg(long, default_value_t = 2048)]
    seq_len: usize,
    /// Rows per forward pass (gradients accumulate across them).
    #[arg(long, default_value_t = 4)]
    micro_rows: usize,
    /// Keep the token embeddings (and an untied output head) fixed; only
    /// the layers learn. With tied embeddings a penalty on some tokens
    /// otherwise also changes how every context reads them.
    #[arg(long)]
    freeze_embeddings: bool,
    /// Divide advantages by their group's standard deviation (off: the
    /// group mean only, as ThreadWeaver's P-GRPO).
    #[arg(long)]
    std_norm: bool,
    /// Reward of a correct answer.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    reward_correct: f32,
    /// ThreadWeaver's parallelism term, for a correct answer: this times
    /// min(eta - 1, --parallel-cap), eta = total tokens / critical path.
    #[arg(long, default_value_t = 0.5, allow_negative_numbers = true)]
    reward_parallel: f32,
    /// The cap on eta - 1 in the parallelism term (ThreadWeaver: 0.2).
    #[arg(long, default_value_t = 0.2, allow_negative_numbers = true)]
    parallel_cap: f32,
    /// Reward of an answer the verifier can read, right or wrong.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    reward_format: f32,
    /// Subtracted from the reward per --budget tokens of critical path.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    length_penalty: f32,
    /// Subtracted from the reward: this times the share of a rollout's
    /// children that start from the same state as a sibling (repeated
    /// sub-searches; APR only, SoS+ never forks). It weighs every token of
    /// the rollout alike.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    duplicate_penalty: f32,
    /// Subtracted from the advantage of just the sampled tokens in lines
    /// that repeat the search: an exploration reaching numbers already
    /// reached from its node, or a sub-search called again for a state
    /// (token-level credit: unlike --duplicate-penalty, the rest of the
    /// rollout is untouched; APR and SoS+ alike).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    repeated_search_penalty: f32,
    /// Make --repeated-search-penalty zero-sum: the lines of the same
    /// choice that do not repeat (the other explorations at that node, the
    /// other calls of that block) gain what the repeated ones lose, shared
    /// among them, so only which alternative is written moves, not how
    /// much the thread explores or forks. Lines that cannot be followed
    /// (an exploration with wrong arithmetic or numbers the state does not
    /// hold, a call of a node never generated) count as repeats here, and
    /// so does, with APR, every line that breaks the trace grammar the
    /// search writes (a state line with no state, a goal after `No
    /// solution found.`: `weft_protocol::apr::malformed_lines`).
    #[arg(long)]
    repeated_search_zero_sum: bool,
    /// Put --repeated-search-penalty only on the tokens that make each
    /// line's choice (the operation explored, the node called), not on
    /// `Exploring Operation:`, `<Start Sub Search ...>` and the text that
    /// follows from the choice.
    #[arg(long)]
    repeated_search_choice_only: bool,
    /// Seed of the problem order and the rollouts.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// A compute budget in CPU minutes for the whole RL run (earlier
    /// resumed calls included; the --init-from model's own training is not
    /// counted); the run ends with a checkpoint before a step would pass
    /// it.
    #[arg(long, value_name = "MIN", value_parser = positive_minutes, allow_negative_numbers = true)]
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

Progress (a bar, or a line per step without a terminal): mean reward, share
of correct rollouts (acc), children per rollout, share of children that repeat
a sibling's state (dup), share of sampled tokens in lines that repeat the
search (repeat), critical path in tokens, and rollout and update tokens/s.
OUT.rl/rl_log.jsonl gets the same and more, one JSON line per step:
step, steps, reward, accuracy, children, duplicate_fraction,
repeated_token_fraction, critical_path, parallelism (total tokens / critical
path), rollout_tokens_per_second, update_tokens_per_second, loss, grad_norm
(before clipping), lr, trained_rollouts (those with a nonzero advantage, or
with repeated-search tokens), cpu_seconds (the whole run's).

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
    // Problems outside what the model was trained on are allowed (a
    // curriculum may want them), but said.
    if let Some(task) = &task {
        let outside: Vec<_> = problems
            .iter()
            .filter_map(|p| task.check(p).err().map(|why| (p, why)))
            .collect();
        if let Some((first, why)) = outside.first() {
            eprintln!(
                "note: {} of {} problems are outside the model's task ({}), e.g. {first}: {why}",
                outside.len(),
                problems.len(),
                task.describe(),
            );
        }
    }
    if problems.len() < a.problems_per_step {
        eprintln!(
            "note: {} holds {} problems, fewer than --problems-per-step {}: each step repeats some",
            a.problems.display(),
            problems.len(),
            a.problems_per_step
        );
    }
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
            repeated_search_zero_sum: a.repeated_search_zero_sum,
            repeated_search_choice_only: a.repeated_search_choice_only,
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
            freeze_embeddings: a.freeze_embeddings,
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
    if outcome.model_dir.join("model.safetensors").exists() {
        println!("model: {}", outcome.model_dir.display());
    } else {
        eprintln!("no model written: no step ran");
    }
    Ok(match outcome.status {
        "interrupted" => ExitCode::from(130),
        _ => ExitCode::SUCCESS,
    })
}

/// `--max-cpu-minutes`: a finite number of minutes > 0.
fn positive_minutes(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v > 0.0 && v.is_finite() {
        Ok(v)
    } else {
        Err(format!("must be a finite number of minutes > 0, got {s}"))
    }
}
