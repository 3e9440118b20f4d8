//! `weft train`: train a Llama-architecture decoder from scratch on JSONL
//! documents, with checkpoints that a rerun of the same command resumes.
//! Flags become `weft_train` settings; Ctrl-C and SIGTERM set its stop flag.

use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use weft_train::{train, DataPaths, ModelShape, ProgressMode, RunOptions, Status, TrainConfig};

#[derive(Args)]
#[command(
    after_long_help = AFTER_HELP,
    subcommand_negates_reqs = true,
    args_conflicts_with_subcommands = true
)]
pub struct TrainArgs {
    #[command(subcommand)]
    sub: Option<TrainSub>,
    /// Model shape: a Hugging Face Llama config.json (a trained model's
    /// own, or one transformers wrote) or a short file with just the shape
    /// keys (hidden_size, intermediate_size, num_hidden_layers,
    /// num_attention_heads, max_position_embeddings; optional
    /// num_key_value_heads, rope_theta, rms_norm_eps, tie_word_embeddings,
    /// vocab_size, which defaults to the tokenizer's). Keys that are not
    /// about the shape are ignored; shape keys weft cannot train (another
    /// model_type, rope_scaling, biases, ...) are refused by name. Example:
    /// examples/countdown-model.json.
    #[arg(long, required = true)]
    config: Option<PathBuf>,
    /// Data folder: train.jsonl, optional drills.jsonl (mixed into training)
    /// and val.jsonl, tokenizer.json (as `weft data countdown` writes). Lines need `text`; `prompt_chars`
    /// leading characters are left out of the loss. Its task.json, if any,
    /// is copied into the model folder.
    #[arg(long, required = true)]
    data: Option<PathBuf>,
    /// Model folder: only the Hugging Face model (config.json,
    /// generation_config.json, model.safetensors, tokenizer files) and
    /// weft_train.json (the run: "finished", "status", steps, trace_kind).
    /// Exported at every checkpoint; "finished" is false until the run ends.
    #[arg(long, required = true)]
    out: Option<PathBuf>,
    /// Training folder: checkpoint/, tokens.cache and train_log.jsonl
    /// (default: OUT.train, beside OUT). If it holds a checkpoint, training
    /// resumes from it.
    #[arg(long, value_name = "DIR")]
    train_dir: Option<PathBuf>,
    /// Optimizer steps in the whole run. May change on resume: the cosine
    /// then goes on from where it stands to --min-lr at the new total (see
    /// below).
    #[arg(long, default_value_t = 1000)]
    steps: usize,
    /// Packed rows per step.
    #[arg(long, default_value_t = 8)]
    batch_rows: usize,
    /// Tokens per packed row.
    #[arg(long, default_value_t = 512)]
    seq_len: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    /// Final learning rate of the cosine.
    #[arg(long, default_value_t = 3e-4)]
    min_lr: f64,
    /// Steps of linear warm-up from 0 to --lr (then the cosine to
    /// --min-lr). Should be well below --steps.
    #[arg(long, default_value_t = 50)]
    warmup: usize,
    /// AdamW's decoupled weight decay (matrices only; norms are not decayed).
    #[arg(long, default_value_t = 0.1)]
    weight_decay: f64,
    /// Global gradient-norm clip (0 disables).
    #[arg(long, default_value_t = 1.0)]
    clip: f64,
    /// Seed of the initial weights and the order of the data.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Validation loss every this many steps (0: at the end only). May
    /// change on resume.
    #[arg(long, default_value_t = 200)]
    eval_every: usize,
    /// Packed validation rows. May change on resume.
    #[arg(long, default_value_t = 32)]
    eval_rows: usize,
    /// Checkpoint (and export the model) every this many steps. May change
    /// on resume.
    #[arg(long, default_value_t = 100)]
    checkpoint_every: usize,
    /// Log a line to train_log.jsonl every this many steps.
    #[arg(long, default_value_t = 10)]
    log_every: usize,
    /// When stderr is not a terminal: a progress line (step, loss, lr,
    /// tok/s, elapsed, ETA) at most this often, in seconds (0: every step).
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    progress_every: f64,
    /// Worker threads (default: $RAYON_NUM_THREADS, else one per core).
    /// Results do not depend on it, so it may change on resume.
    #[arg(long, short = 't')]
    threads: Option<usize>,
    /// Stop (after checkpointing) when this many minutes have passed; rerun to resume.
    #[arg(long)]
    max_minutes: Option<f64>,
    /// Fail instead of resuming when there is already a checkpoint.
    #[arg(long)]
    fresh: bool,
    /// Start from the weights of this trained model folder (same shape and
    /// tokenizer) instead of random ones, with a fresh optimizer and
    /// schedule: to continue a finished run on a new schedule. Its recorded
    /// cost (steps, tokens, CPU time) is counted in this run's totals.
    /// Ignored when there is already a checkpoint (the run resumes).
    #[arg(long, value_name = "DIR")]
    init_from: Option<PathBuf>,
    /// A compute budget in CPU minutes for the whole run (earlier resumed
    /// calls and the --init-from model's training included). Training ends
    /// with a final validation and checkpoint before the next step would
    /// pass it (30 CPU-s are kept for that); the result is final.
    #[arg(long, value_name = "MIN")]
    max_cpu_minutes: Option<f64>,
    /// No progress bar or progress lines (what happened is still said).
    #[arg(long)]
    quiet: bool,
}

const AFTER_HELP: &str = "\
Resuming: rerun the same command. --steps, --eval-every, --eval-rows,
--checkpoint-every, --log-every, --progress-every, --threads, --max-minutes,
--max-cpu-minutes and --quiet may differ from the first run; any other
setting that differs is refused, flag by flag (`--lr 0.003 (checkpoint) vs
0.001 (now)`), since it would change the weights.

Changing --steps on resume: the warm-up is unchanged; from the checkpoint's
step the cosine goes on from its current point down to --min-lr at the new
total. The learning rate is continuous (no jump that could upset the
optimizer's moments), and the run is as exact as any resume: the same
checkpoint extended the same way gives the same weights. A finished run
extended trains on at --min-lr; for a new warm-up and peak, use --init-from.

Ctrl-C (or SIGTERM) stops at the end of the current step, writes a
checkpoint, marks the model unfinished (weft_train.json \"finished\": false)
and exits with status 130 (143 for SIGTERM); a second Ctrl-C quits at once,
keeping the last checkpoint. Rerun the same command to resume.";

/// Exit status after an interrupt, as a shell reports a process killed by
/// SIGINT.
const INTERRUPTED: u8 = 130;

#[derive(clap::Subcommand)]
enum TrainSub {
    /// Reinforcement learning (GRPO) of a trained Countdown model on its
    /// own forked rollouts: rewards for correct and parallel reasoning.
    Rl(super::train_rl::RlArgs),
}

pub fn run(args: TrainArgs) -> anyhow::Result<ExitCode> {
    if let Some(TrainSub::Rl(a)) = args.sub {
        return super::train_rl::run(a);
    }
    let (Some(config), Some(data_dir), Some(out)) = (&args.config, &args.data, &args.out) else {
        anyhow::bail!("--config, --data and --out are required (see `weft train --help`)");
    };
    if args.warmup >= args.steps {
        eprintln!(
            "warning: --warmup {} is not below --steps {}: the learning rate never reaches --lr \
             and never decays",
            args.warmup, args.steps
        );
    }
    if let Some(t) = args.threads {
        use_threads(t)?;
    }
    let shape = ModelShape::load(config)?;
    let cfg = TrainConfig {
        steps: args.steps,
        batch_rows: args.batch_rows,
        seq_len: args.seq_len,
        lr: args.lr,
        min_lr: args.min_lr,
        warmup_steps: args.warmup,
        weight_decay: args.weight_decay,
        grad_clip: args.clip,
        seed: args.seed,
        eval_every: args.eval_every,
        eval_rows: args.eval_rows,
        checkpoint_every: args.checkpoint_every,
        ..TrainConfig::default()
    };
    if let (Ok(o), Ok(d)) = (out.canonicalize(), data_dir.canonicalize()) {
        anyhow::ensure!(
            o != d,
            "--out {} is the data folder: the model would be mixed into the data; give another --out",
            out.display()
        );
    }
    let data = DataPaths::from_dir(data_dir);
    for p in [&data.train, &data.tokenizer] {
        anyhow::ensure!(p.exists(), "{} does not exist", p.display());
    }
    anyhow::ensure!(
        args.progress_every >= 0.0 && args.progress_every.is_finite(),
        "--progress-every must be 0 or more seconds"
    );
    let (stop, signal) = stop_on_signals()?;
    let opts = RunOptions {
        max_wall: args.max_minutes.map(|m| Duration::from_secs_f64(m * 60.0)),
        progress: ProgressMode::for_stderr(
            args.quiet,
            Duration::from_secs_f64(args.progress_every),
        ),
        fresh: args.fresh,
        log_every: args.log_every,
        stop_at_step: None,
        init_from: args.init_from.clone(),
        max_cpu_seconds: args.max_cpu_minutes.map(|m| m * 60.0),
        train_dir: args.train_dir.clone(),
        stop: Some(stop),
    };
    let outcome = train(out, &data, &shape, &cfg, &opts)
        .with_context(|| format!("training into {}", out.display()))?;
    let s = &outcome.state;
    if let Some(from) = &s.init_from {
        eprintln!(
            "started from {} ({} steps, {:.1} CPU-min; counted in the totals below)",
            from.path,
            from.steps,
            from.cpu_seconds / 60.0
        );
    }
    let what = match outcome.status {
        Status::CpuBudgetSpent => "CPU budget spent (final)",
        Status::Finished => "finished",
        Status::Interrupted => "interrupted",
        Status::Stopped | Status::Training => "stopped (rerun the same command to resume)",
    };
    println!(
        "{what} at step {}/{}: loss {}, val loss {}, {} tokens, {:.0} tok/s this run, {:.1} CPU-min total ({:.1} min wall)",
        s.step,
        cfg.steps,
        s.last_loss.map(|l| format!("{l:.4}")).unwrap_or("-".into()),
        s.last_val_loss.map(|l| format!("{l:.4}")).unwrap_or("-".into()),
        s.tokens,
        outcome.tokens_per_second,
        s.cpu_seconds / 60.0,
        s.wall_seconds / 60.0,
    );
    println!("model: {}", out.display());
    if !outcome.interrupted {
        return Ok(ExitCode::SUCCESS);
    }
    if outcome.saved {
        eprintln!(
            "error: interrupted at step {}/{}: checkpoint written to {}; the model in {} is unfinished (weft_train.json: \"finished\": false)",
            s.step,
            cfg.steps,
            outcome.layout.checkpoint().display(),
            out.display()
        );
    } else {
        eprintln!("error: interrupted before the first step; nothing was written");
    }
    eprintln!("resume with the same command:\n  {}", this_command());
    let sig = signal.load(Ordering::SeqCst);
    Ok(ExitCode::from(if sig > 0 {
        128u8.saturating_add(sig as u8)
    } else {
        INTERRUPTED
    }))
}

/// Runs training on `threads` worker threads: rayon's pool, and the task
/// count candle gives its matrix products (it reads RAYON_NUM_THREADS).
pub(super) fn use_threads(threads: usize) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    anyhow::ensure!(
        (1..=4 * cores).contains(&threads),
        "--threads must be between 1 and {} (4 x the {cores} cores here), got {threads}",
        4 * cores
    );
    // Nothing else runs yet: no thread reads the environment concurrently.
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .context("setting up --threads")
}

/// A flag that SIGINT (Ctrl-C) and SIGTERM set, so training stops at the
/// next step boundary with a checkpoint, and the signal's number. A second
/// signal quits at once (the last checkpoint stays).
pub(super) fn stop_on_signals() -> anyhow::Result<(Arc<AtomicBool>, Arc<AtomicI32>)> {
    use tokio::signal::unix::{signal, SignalKind};
    let stop = Arc::new(AtomicBool::new(false));
    let which = Arc::new(AtomicI32::new(0));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal handler")?;
    // Registered here, before training starts, so no signal is missed.
    let (mut int, mut term) = {
        let _guard = rt.enter();
        (
            signal(SignalKind::interrupt()).context("handling SIGINT")?,
            signal(SignalKind::terminate()).context("handling SIGTERM")?,
        )
    };
    let (flag, sig) = (stop.clone(), which.clone());
    std::thread::Builder::new()
        .name("weft-train-signals".into())
        .spawn(move || {
            rt.block_on(async move {
                let mut first = true;
                loop {
                    let (n, name) = tokio::select! {
                        _ = int.recv() => (libc::SIGINT, "Ctrl-C"),
                        _ = term.recv() => (libc::SIGTERM, "SIGTERM"),
                    };
                    if first {
                        first = false;
                        sig.store(n, Ordering::SeqCst);
                        flag.store(true, Ordering::SeqCst);
                        eprintln!(
                            "\n{name}: stopping after this step to write a checkpoint ({name} again quits at once)"
                        );
                    } else {
                        eprintln!("\n{name} again: quitting without a new checkpoint");
                        std::process::exit(128 + n);
                    }
                }
            })
        })
        .context("starting the signal handler")?;
    Ok((stop, which))
}

/// The command line of this process, quoted for a POSIX shell.
fn this_command() -> String {
    std::env::args_os()
        .map(|a| shell_quote(&a.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn arguments_are_quoted_for_the_shell() {
        assert_eq!(shell_quote("--steps"), "--steps");
        assert_eq!(shell_quote("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
