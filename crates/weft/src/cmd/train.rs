//! `weft train`: train a Llama-architecture decoder from scratch on JSONL
//! documents, with checkpoints that a rerun of the same command resumes.

use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use weft_train::{train, DataPaths, ModelShape, RunOptions, TrainConfig};

#[derive(Args)]
pub struct TrainArgs {
    /// Model shape: a JSON file with HF Llama keys (hidden_size,
    /// intermediate_size, num_hidden_layers, num_attention_heads,
    /// max_position_embeddings, ...). vocab_size defaults to the tokenizer's.
    #[arg(long)]
    config: PathBuf,
    /// Data folder: train.jsonl, optional drills.jsonl (mixed into training)
    /// and val.jsonl, tokenizer.json (as `weft data countdown` writes). Lines need `text`; `prompt_chars`
    /// leading characters are left out of the loss.
    #[arg(long)]
    data: PathBuf,
    /// Output folder: the HF-style model, checkpoint/ and train_log.jsonl.
    /// If it holds a checkpoint, training resumes from it.
    #[arg(long)]
    out: PathBuf,
    /// Optimizer steps in the whole run.
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
    #[arg(long, default_value_t = 50)]
    warmup: usize,
    #[arg(long, default_value_t = 0.1)]
    weight_decay: f64,
    /// Global gradient-norm clip (0 disables).
    #[arg(long, default_value_t = 1.0)]
    clip: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Validation loss every this many steps (0: at the end only).
    #[arg(long, default_value_t = 200)]
    eval_every: usize,
    /// Packed validation rows.
    #[arg(long, default_value_t = 32)]
    eval_rows: usize,
    #[arg(long, default_value_t = 100)]
    checkpoint_every: usize,
    /// Log a line to train_log.jsonl every this many steps.
    #[arg(long, default_value_t = 10)]
    log_every: usize,
    /// Stop (after checkpointing) when this many minutes have passed; rerun to resume.
    #[arg(long)]
    max_minutes: Option<f64>,
    /// Fail instead of resuming when OUT already has a checkpoint.
    #[arg(long)]
    fresh: bool,
    /// Start from the weights of this trained model folder (same shape and
    /// tokenizer) instead of random ones, with a fresh optimizer and
    /// schedule: to continue a finished run on a new schedule. Its recorded
    /// cost (steps, tokens, CPU time) is counted in this run's totals.
    /// Ignored when OUT already holds a checkpoint (the run resumes).
    #[arg(long, value_name = "DIR")]
    init_from: Option<PathBuf>,
    /// A compute budget in CPU minutes for the whole run (earlier resumed
    /// calls and the --init-from model's training included). Training ends
    /// with a final validation and checkpoint before the next step would
    /// pass it (30 CPU-s are kept for that); the result is final.
    #[arg(long, value_name = "MIN")]
    max_cpu_minutes: Option<f64>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

pub fn run(args: TrainArgs) -> anyhow::Result<ExitCode> {
    let shape = ModelShape::load(&args.config)?;
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
    let data = DataPaths::from_dir(&args.data);
    for p in [&data.train, &data.tokenizer] {
        anyhow::ensure!(p.exists(), "{} does not exist", p.display());
    }
    let opts = RunOptions {
        max_wall: args.max_minutes.map(|m| Duration::from_secs_f64(m * 60.0)),
        progress: !args.quiet,
        fresh: args.fresh,
        log_every: args.log_every,
        stop_at_step: None,
        init_from: args.init_from.clone(),
        max_cpu_seconds: args.max_cpu_minutes.map(|m| m * 60.0),
    };
    let outcome = train(&args.out, &data, &shape, &cfg, &opts)
        .with_context(|| format!("training into {}", args.out.display()))?;
    let s = &outcome.state;
    if let Some(step) = outcome.resumed_from {
        eprintln!("resumed from step {step}");
    }
    if let Some(from) = &s.init_from {
        eprintln!(
            "started from {} ({} steps, {:.1} CPU-min; counted in the totals below)",
            from.path,
            from.steps,
            from.cpu_seconds / 60.0
        );
    }
    println!(
        "{} at step {}/{}: loss {}, val loss {}, {} tokens, {:.0} tok/s this run, {:.1} CPU-min total ({:.1} min wall)",
        if outcome.budget_spent {
            "CPU budget spent (final)"
        } else if outcome.finished {
            "finished"
        } else {
            "stopped (rerun the same command to resume)"
        },
        s.step,
        cfg.steps,
        s.last_loss.map(|l| format!("{l:.4}")).unwrap_or("-".into()),
        s.last_val_loss.map(|l| format!("{l:.4}")).unwrap_or("-".into()),
        s.tokens,
        outcome.tokens_per_second,
        s.cpu_seconds / 60.0,
        s.wall_seconds / 60.0,
    );
    println!("model: {}", args.out.display());
    Ok(ExitCode::SUCCESS)
}
