//! The training loop: packed batches, AdamW steps, validation, checkpoints
//! that a later run resumes from exactly, and the model's export.
//!
//! A run writes two folders: the model folder `OUT` (only what
//! `transformers` loads, plus `weft_train.json` and the data's `task.json`;
//! see [`crate::export`]) and the training folder (`OUT.train` by default:
//! checkpoint, token cache, log; see [`crate::checkpoint`]). The model is
//! exported at every checkpoint, marked unfinished until the run ends as
//! planned.
//!
//! A call ends when every step is trained, or earlier, with a checkpoint,
//! when it is stopped (`RunOptions::max_wall`, `stop_at_step`), interrupted
//! (`RunOptions::stop`, which `weft train` sets on Ctrl-C), or out of its
//! CPU budget. Calling again with the same settings resumes; `--steps` and
//! the settings in [`crate::config::FREE_ON_RESUME`] may change.

use crate::checkpoint::{
    load_checkpoint, load_init, save_checkpoint, truncate_log, Layout, Resumed, State,
};
use crate::config::{ModelShape, SettingChange, TrainConfig};
use crate::data::{
    load_cache, load_documents, load_tokenizer, pack, save_cache, Document, Packed, Specials,
};
use crate::error::{Result, TrainError};
use crate::export::{export_model, ExportMeta};
use crate::model::{Batch, LlamaParams};
use crate::optim::AdamW;
use crate::progress::{Progress, ProgressMode, StepReport};
use crate::record::{Status, TrainRecord};
use candle_core::Device;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::export::load_model;

/// Where the data is.
#[derive(Debug, Clone)]
pub struct DataPaths {
    pub train: PathBuf,
    /// Extra training documents mixed in (e.g. `drills.jsonl`).
    pub extra: Vec<PathBuf>,
    pub val: Option<PathBuf>,
    pub tokenizer: PathBuf,
    /// The task's rules (`task.json`), copied unchanged into the model.
    pub task: Option<PathBuf>,
    /// The data's `summary.json`, whose `kind` (the trace format) the
    /// model's `weft_train.json` records as `trace_kind`.
    pub summary: Option<PathBuf>,
    /// The data folder, as recorded in `weft_train.json`.
    pub dir: Option<PathBuf>,
}

impl DataPaths {
    /// `DIR/train.jsonl`, `DIR/drills.jsonl` and `DIR/val.jsonl` (if
    /// present), `DIR/tokenizer.json`, `DIR/task.json` and
    /// `DIR/summary.json` (if present).
    pub fn from_dir(dir: &Path) -> DataPaths {
        let present = |name: &str| {
            let p = dir.join(name);
            p.exists().then_some(p)
        };
        DataPaths {
            train: dir.join("train.jsonl"),
            extra: present("drills.jsonl").into_iter().collect(),
            val: present("val.jsonl"),
            tokenizer: dir.join("tokenizer.json"),
            task: present("task.json"),
            summary: present("summary.json"),
            dir: Some(dir.to_path_buf()),
        }
    }

    /// The `kind` the data's `summary.json` records, if any.
    pub fn trace_kind(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.summary.as_ref()?).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["kind"].as_str().map(String::from)
    }
}

/// Where an `--init-from` run's starting weights came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitFrom {
    /// The model folder the weights were read from.
    pub path: String,
    /// That model's optimizer steps, tokens and cost, from its record.
    pub steps: usize,
    pub tokens: u64,
    pub cpu_seconds: f64,
    pub wall_seconds: f64,
}

/// How a `train` call ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub state: State,
    /// Why it ended; `status.is_final()` when the run ended as planned.
    pub status: Status,
    pub finished: bool,
    pub resumed_from: Option<usize>,
    /// Settings a resume changed (all of them accepted ones).
    pub changes: Vec<SettingChange>,
    /// Training tokens per second in this call (non-padding tokens).
    pub tokens_per_second: f64,
    /// Training stopped early because the CPU budget was spent.
    pub budget_spent: bool,
    /// Stopped by [`RunOptions::stop`].
    pub interrupted: bool,
    /// Where the model and the training state are.
    pub layout: Layout,
    /// Whether this call wrote a checkpoint (a call that trained no step of
    /// a fresh run writes nothing).
    pub saved: bool,
}

/// Options for one call of [`train`]: none of them changes the weights a
/// run trains.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stop (with a checkpoint) after this much wall time.
    pub max_wall: Option<Duration>,
    /// How progress is shown on stderr.
    pub progress: ProgressMode,
    /// Refuse to resume; fail if a checkpoint exists.
    pub fresh: bool,
    /// Log a line every this many steps (0: every checkpoint only).
    pub log_every: usize,
    /// Stop (with a checkpoint) once this step is done, as an interrupted
    /// run would; a later call resumes.
    pub stop_at_step: Option<usize>,
    /// Start a new run (fresh optimizer and schedule) from the weights of
    /// this trained model folder instead of random ones. Ignored when there
    /// is already a checkpoint (the run resumes).
    pub init_from: Option<PathBuf>,
    /// A compute budget: the run's total CPU seconds (earlier calls and the
    /// `init_from` model's training included). Training ends, with a final
    /// validation and checkpoint, before the next step would take the total
    /// past `max_cpu_seconds - CPU_RESERVE_SECONDS`; a rerun stops at once.
    pub max_cpu_seconds: Option<f64>,
    /// Checkpoint, token cache and log go here (default: `OUT.train`).
    pub train_dir: Option<PathBuf>,
    /// Set from elsewhere (a signal handler) to stop at the next step
    /// boundary with a checkpoint.
    pub stop: Option<Arc<AtomicBool>>,
}

/// CPU seconds kept back under `max_cpu_seconds` for the last validation and
/// checkpoint.
pub const CPU_RESERVE_SECONDS: f64 = 30.0;

/// CPU seconds this process has used (all threads), from
/// `CLOCK_PROCESS_CPUTIME_ID`: nanosecond resolution and monotonic, unlike
/// the tick counts in `/proc/self/stat`, whose process total can step back
/// when a thread exits (a budget check then let a rerun squeeze in a step).
/// 0 where the clock is unavailable.
pub fn process_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

struct Rows {
    docs: Vec<Document>,
    len: usize,
    seed: u64,
    pad: u32,
    epoch: u64,
    row: usize,
    packed: Packed,
}

impl Rows {
    fn new(docs: Vec<Document>, len: usize, seed: u64, pad: u32, epoch: u64, row: usize) -> Rows {
        let packed = pack(&docs, len, Some(epoch_seed(seed, epoch)), pad);
        Rows {
            docs,
            len,
            seed,
            pad,
            epoch,
            row,
            packed,
        }
    }

    fn next_batch(&mut self, n: usize) -> Batch {
        let mut parts = Vec::new();
        let mut need = n;
        while need > 0 {
            if self.row >= self.packed.rows() {
                self.epoch += 1;
                self.row = 0;
                self.packed = pack(
                    &self.docs,
                    self.len,
                    Some(epoch_seed(self.seed, self.epoch)),
                    self.pad,
                );
            }
            let take = need.min(self.packed.rows() - self.row);
            parts.push(self.packed.batch(self.row, take));
            self.row += take;
            need -= take;
        }
        let mut b = parts.remove(0);
        for p in parts {
            b.rows += p.rows;
            b.input.extend(p.input);
            b.target.extend(p.target);
            b.weight.extend(p.weight);
            b.position.extend(p.position);
            b.segment.extend(p.segment);
            b.real_tokens += p.real_tokens;
        }
        b
    }
}

fn epoch_seed(seed: u64, epoch: u64) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ epoch.wrapping_add(1)
}

/// Trains (or resumes) the model in `out`.
pub fn train(
    out: &Path,
    data: &DataPaths,
    shape: &ModelShape,
    cfg: &TrainConfig,
    opts: &RunOptions,
) -> Result<Outcome> {
    crate::alloc::retain_freed_memory();
    cfg.validate()?;
    let started = Instant::now();
    let cpu_at_start = process_cpu_seconds();
    let device = Device::Cpu;
    let tok = load_tokenizer(&data.tokenizer)?;
    let specials = Specials::from_tokenizer(&tok, &data.tokenizer)?;
    let mut shape = shape.clone();
    if shape.vocab_size == 0 {
        shape.vocab_size = tok.get_vocab_size(true);
    }
    if shape.vocab_size < tok.get_vocab_size(true) {
        return Err(TrainError::BadShape(format!(
            "vocab_size {} is smaller than the tokenizer's {}",
            shape.vocab_size,
            tok.get_vocab_size(true)
        )));
    }
    shape.validate()?;
    if cfg.seq_len > shape.max_position_embeddings {
        return Err(TrainError::BadConfig(format!(
            "seq_len {} exceeds max_position_embeddings {}",
            cfg.seq_len, shape.max_position_embeddings
        )));
    }
    let mut train_bytes = 0;
    for p in std::iter::once(&data.train).chain(&data.extra) {
        train_bytes += std::fs::metadata(p)
            .map_err(|e| TrainError::io(p, e))?
            .len();
    }

    let layout = Layout::new(out, opts.train_dir.as_deref())?;
    let mut notes = Vec::new();
    if layout.adopt_old_layout()? {
        notes.push(format!(
            "moved the checkpoint, token cache and log from {} into {}",
            layout.model.display(),
            layout.train_dir.display()
        ));
    }
    let ckpt = layout.checkpoint();
    let resumed = if ckpt.join("state.json").exists() {
        if opts.fresh {
            return Err(TrainError::Checkpoint {
                path: ckpt,
                reason: "a checkpoint exists; resume without --fresh or use another output folder"
                    .into(),
            });
        }
        Some(load_checkpoint(&ckpt, &shape, cfg, train_bytes, &device)?)
    } else {
        if layout.model.join("model.safetensors").exists() {
            return Err(TrainError::Checkpoint {
                path: layout.model.clone(),
                reason: format!(
                    "it holds a model (model.safetensors) but {} has no checkpoint to resume; train into another --out, or remove that model first",
                    layout.train_dir.display()
                ),
            });
        }
        None
    };
    std::fs::create_dir_all(&layout.train_dir).map_err(|e| TrainError::io(&layout.train_dir, e))?;
    // One run at a time per output: a second `weft train` into the same
    // folder would interleave checkpoints, logs and exports. The lock is
    // the OS's (released when this process ends, however it ends).
    let lock_path = layout.train_dir.join("lock");
    let _lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| TrainError::io(&lock_path, e))?;
    match _lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(TrainError::Checkpoint {
                path: layout.train_dir.clone(),
                reason: "another `weft train` is using this folder (its lock is held); wait for it, or train into another --out".into(),
            })
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(TrainError::io(&lock_path, e)),
    }

    let tok_bytes = std::fs::metadata(&data.tokenizer)
        .map(|m| m.len())
        .unwrap_or(0);
    let cache_key = train_bytes ^ tok_bytes.rotate_left(40);
    let cache = layout.cache();
    let docs = match load_cache(&cache, cache_key) {
        Some(docs) => docs,
        None => {
            let mut docs = load_documents(&data.train, &tok, specials)?;
            for extra in &data.extra {
                docs.extend(load_documents(extra, &tok, specials)?);
            }
            save_cache(&cache, cache_key, &docs)?;
            docs
        }
    };
    let documents = docs.len();
    let val_docs = match &data.val {
        Some(p) => Some(load_documents(p, &tok, specials)?),
        None => None,
    };
    let val = val_docs.map(|d| {
        let mut v = pack(&d, cfg.seq_len, None, specials.pad);
        let keep = cfg.eval_rows.min(v.rows());
        v.input.truncate(keep);
        v.target.truncate(keep);
        v.weight.truncate(keep);
        v.position.truncate(keep);
        v.segment.truncate(keep);
        v.real.truncate(keep);
        v
    });

    let (params, mut opt, mut state, resumed_from, changes) = match resumed {
        Some(Resumed {
            params,
            opt,
            state,
            changes,
        }) => {
            let s = state.step;
            notes.push(format!(
                "resumed from step {s} of {} ({}){}",
                cfg.steps,
                ckpt.display(),
                if s == cfg.steps {
                    ": nothing left to train"
                } else {
                    ""
                }
            ));
            for c in &changes {
                notes.push(format!("  {c}"));
            }
            let anchor = state.cosine_anchor.filter(|a| a.step == s);
            match anchor {
                Some(a) if changes.iter().any(|c| c.name == "--steps") => {
                    notes.push(if a.progress >= 1.0 {
                        format!(
                            "  the schedule had ended: it trains on at --min-lr {} up to step {}",
                            cfg.min_lr, cfg.steps
                        )
                    } else {
                        format!(
                            "  the learning rate goes on from {:.3e} at step {} down to --min-lr {} at step {}",
                            cfg.lr_with(a.step, Some(a)),
                            a.step,
                            cfg.min_lr,
                            cfg.steps
                        )
                    })
                }
                _ => {}
            }
            let dropped = truncate_log(&layout.log(), s)?;
            if dropped > 0 {
                notes.push(format!(
                    "dropped {dropped} log line{} written after step {s}'s checkpoint",
                    if dropped == 1 { "" } else { "s" }
                ));
            }
            (params, opt, state, Some(s), changes)
        }
        None => {
            let (params, init_from) = match &opts.init_from {
                Some(dir) => {
                    let (p, from) = load_init(dir, &shape, &data.tokenizer, &device)?;
                    (p, Some(from))
                }
                None => (LlamaParams::init(&shape, cfg.seed, &device)?, None),
            };
            // A fresh run's log starts empty (an earlier run's checkpoint
            // is gone, so its log lines describe nothing that remains).
            let _ = std::fs::remove_file(layout.log());
            notes.push(format!(
                "training {} parameters on {documents} documents: {} steps of {} x {} tokens{}",
                shape.parameters(),
                cfg.steps,
                cfg.batch_rows,
                cfg.seq_len,
                match &init_from {
                    Some(f) => format!(", starting from {}", f.path),
                    None => String::new(),
                }
            ));
            let opt = AdamW::new(
                &params.vars,
                cfg.beta1,
                cfg.beta2,
                cfg.eps,
                cfg.weight_decay,
            )?;
            let state = State {
                step: 0,
                epoch: 0,
                row: 0,
                tokens: init_from.as_ref().map_or(0, |f| f.tokens),
                cpu_seconds: init_from.as_ref().map_or(0.0, |f| f.cpu_seconds),
                wall_seconds: init_from.as_ref().map_or(0.0, |f| f.wall_seconds),
                shape: shape.clone(),
                config: cfg.clone(),
                train_bytes,
                last_loss: None,
                last_val_loss: None,
                init_from,
                last_step_cpu: 0.0,
                cosine_anchor: None,
            };
            (params, opt, state, None, Vec::new())
        }
    };
    let base_cpu = state.cpu_seconds;
    let base_wall = state.wall_seconds;
    let mut rows = Rows::new(
        docs,
        cfg.seq_len,
        cfg.seed,
        specials.pad,
        state.epoch,
        state.row,
    );
    if let Some(v) = &val {
        if v.rows() == 0 {
            tracing::warn!("validation set packs to no rows");
        }
    }

    let mut progress = Progress::new(opts.progress, state.step, cfg.steps);
    for n in &notes {
        progress.note(n);
    }
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(layout.log())
        .map_err(|e| TrainError::io(&layout.log(), e))?;
    let log_path = layout.log();
    let mut write_log = |line: serde_json::Value| -> Result<()> {
        writeln!(log, "{line}").map_err(|e| TrainError::io(&log_path, e))
    };
    let run = RunInfo {
        layout: &layout,
        data,
        specials,
    };

    let tokens_at_start = state.tokens;
    let mut window_tokens = 0u64;
    let mut window_start = Instant::now();
    let mut window_loss = 0f64;
    let mut window_steps = 0usize;
    let mut budget_spent = false;
    let mut interrupted = false;
    let mut stopped = false;
    // The CPU the last step took (saved with checkpoints, so a rerun after a
    // budget stop stops again at once instead of squeezing in a step).
    let mut last_step_cpu = state.last_step_cpu;
    while state.step < cfg.steps {
        if opts.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst)) {
            interrupted = true;
            progress.note(&format!(
                "interrupted: writing a checkpoint at step {}",
                state.step
            ));
            break;
        }
        let out_of_time = opts
            .max_wall
            .is_some_and(|limit| started.elapsed() >= limit);
        if out_of_time || opts.stop_at_step.is_some_and(|s| state.step >= s) {
            stopped = true;
            break;
        }
        let cpu_before = base_cpu + process_cpu_seconds() - cpu_at_start;
        if let Some(limit) = opts.max_cpu_seconds {
            if cpu_before + last_step_cpu > limit - CPU_RESERVE_SECONDS {
                budget_spent = true;
                break;
            }
        }
        let batch = rows.next_batch(cfg.batch_rows);
        let lr = state.lr();
        let Some((loss, _)) = params.loss(&batch)? else {
            state.step += 1;
            continue;
        };
        let loss_value = loss.to_scalar::<f32>()?;
        if !loss_value.is_finite() {
            return Err(TrainError::Diverged {
                step: state.step,
                loss: loss_value,
            });
        }
        let grads = loss.backward()?;
        let norm = AdamW::grad_norm(&params.vars, &grads)?;
        let scale = if cfg.grad_clip > 0.0 && norm > cfg.grad_clip {
            cfg.grad_clip / norm
        } else {
            1.0
        };
        opt.step(&params.vars, &grads, lr, scale)?;
        drop(grads);
        last_step_cpu = base_cpu + process_cpu_seconds() - cpu_at_start - cpu_before;
        state.last_step_cpu = last_step_cpu;
        state.step += 1;
        state.epoch = rows.epoch;
        state.row = rows.row;
        let n = batch.real_tokens as u64;
        state.tokens += n;
        state.last_loss = Some(loss_value);
        window_tokens += n;
        window_loss += loss_value as f64;
        window_steps += 1;
        let tps = window_tokens as f64 / window_start.elapsed().as_secs_f64().max(1e-9);

        let log_now = opts.log_every > 0 && state.step % opts.log_every == 0;
        if log_now || state.step == cfg.steps {
            write_log(serde_json::json!({
                "step": state.step, "loss": window_loss / window_steps as f64, "lr": lr,
                "grad_norm": norm, "tokens": state.tokens, "tokens_per_s": tps,
                "cpu_s": base_cpu + process_cpu_seconds() - cpu_at_start,
            }))?;
            window_tokens = 0;
            window_loss = 0.0;
            window_steps = 0;
            window_start = Instant::now();
        }
        let eval_now = cfg.eval_every > 0 && state.step % cfg.eval_every == 0;
        if let Some(v) = val.as_ref().filter(|_| eval_now || state.step == cfg.steps) {
            if let Some(v) = validation_loss(&params, v, cfg.batch_rows)? {
                state.last_val_loss = Some(v);
                write_log(serde_json::json!({"step": state.step, "val_loss": v}))?;
                progress.note(&format!(
                    "step {}/{}: validation loss {v:.4}",
                    state.step, cfg.steps
                ));
            }
        }
        progress.step(&StepReport {
            step: state.step,
            loss: loss_value,
            lr,
            tokens_per_second: tps,
            val_loss: state.last_val_loss,
        });
        if state.step % cfg.checkpoint_every == 0 && state.step < cfg.steps {
            state.cpu_seconds = base_cpu + process_cpu_seconds() - cpu_at_start;
            state.wall_seconds = base_wall + started.elapsed().as_secs_f64();
            run.save(&params, &opt, &state, Status::Training)?;
        }
    }
    // A final validation, unless this call trained nothing (a rerun).
    if budget_spent && state.step > resumed_from.unwrap_or(0) {
        if let Some(v) = &val {
            if let Some(v) = validation_loss(&params, v, cfg.batch_rows)? {
                state.last_val_loss = Some(v);
                write_log(serde_json::json!({"step": state.step, "val_loss": v}))?;
            }
        }
        write_log(
            serde_json::json!({"step": state.step, "cpu_budget_spent": true,
            "cpu_s": base_cpu + process_cpu_seconds() - cpu_at_start}),
        )?;
    }
    let status = if interrupted {
        Status::Interrupted
    } else if budget_spent {
        Status::CpuBudgetSpent
    } else if stopped {
        Status::Stopped
    } else {
        Status::Finished
    };
    state.cpu_seconds = base_cpu + process_cpu_seconds() - cpu_at_start;
    state.wall_seconds = base_wall + started.elapsed().as_secs_f64();
    // A fresh run that trained nothing leaves nothing behind to resume.
    let saved = resumed_from.is_some() || state.step > 0;
    if saved {
        run.save(&params, &opt, &state, status)?;
    }
    progress.finish();
    let tokens_per_second =
        (state.tokens - tokens_at_start) as f64 / started.elapsed().as_secs_f64().max(1e-9);
    Ok(Outcome {
        finished: status == Status::Finished,
        state,
        status,
        resumed_from,
        changes,
        tokens_per_second,
        budget_spent,
        interrupted,
        layout,
        saved,
    })
}

/// What a save needs besides the model and its state.
struct RunInfo<'a> {
    layout: &'a Layout,
    data: &'a DataPaths,
    specials: Specials,
}

impl RunInfo<'_> {
    /// A checkpoint, then the model folder with its record.
    fn save(&self, params: &LlamaParams, opt: &AdamW, state: &State, status: Status) -> Result<()> {
        save_checkpoint(self.layout, params, opt, state)?;
        let record = TrainRecord {
            finished: status.is_final(),
            status,
            step: state.step,
            steps: state.config.steps,
            trace_kind: self.data.trace_kind(),
            task_json: self.data.task.is_some(),
            data: self
                .data
                .dir
                .as_ref()
                .unwrap_or(&self.data.train)
                .display()
                .to_string(),
            train_dir: self.layout.train_dir.display().to_string(),
            tokens: state.tokens,
            cpu_seconds: state.cpu_seconds,
            wall_seconds: state.wall_seconds,
            last_loss: state.last_loss,
            last_val_loss: state.last_val_loss,
            init_from: state.init_from.clone(),
            config: Some(state.config.clone()),
            cosine_anchor: state.cosine_anchor,
            weft_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        export_model(
            &self.layout.model,
            params,
            &ExportMeta {
                tokenizer: &self.data.tokenizer,
                specials: self.specials,
                task: self.data.task.as_deref(),
                record: &record,
            },
        )
    }
}

/// Mean loss over the validation rows (no gradients kept).
pub fn validation_loss(
    params: &LlamaParams,
    val: &Packed,
    batch_rows: usize,
) -> Result<Option<f32>> {
    let mut sum = 0f64;
    let mut n = 0usize;
    let mut start = 0;
    while start < val.rows() {
        let take = batch_rows.min(val.rows() - start);
        let batch = val.batch(start, take);
        if let Some((loss, k)) = params.loss(&batch)? {
            sum += loss.detach().to_scalar::<f32>()? as f64 * k as f64;
            n += k;
        }
        start += take;
    }
    Ok((n > 0).then(|| (sum / n as f64) as f32))
}

#[cfg(test)]
mod tests {
    use super::process_cpu_seconds;

    /// The CPU clock never steps back, also while threads that used CPU
    /// exit (what the budget check and a rerun after it rely on).
    #[test]
    fn process_cpu_time_is_monotonic_across_thread_exits() {
        let mut last = process_cpu_seconds();
        assert!(last > 0.0);
        for round in 0..20 {
            let workers: Vec<_> = (0..3)
                .map(|k| {
                    std::thread::spawn(move || {
                        let mut x = 0u64;
                        for i in 0..200_000u64 {
                            x = x.wrapping_mul(6364136223846793005).wrapping_add(i ^ k);
                        }
                        std::hint::black_box(x)
                    })
                })
                .collect();
            for w in workers {
                w.join().unwrap();
                let now = process_cpu_seconds();
                assert!(now >= last, "round {round}: {now} < {last}");
                last = now;
            }
        }
    }
}
