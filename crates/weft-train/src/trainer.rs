//! The training loop: packed batches, AdamW steps, validation, checkpoints
//! that a later run resumes from exactly, and the final HF-style export.
//!
//! Output folder layout:
//! - `config.json`, `model.safetensors`, `tokenizer.json`: the model (written
//!   at the end, and at every checkpoint so a half-trained model is usable);
//! - `checkpoint/`: `model.safetensors`, `optimizer.safetensors`, `state.json`
//!   (written to `checkpoint.tmp/` and renamed, so a kill never leaves half a
//!   checkpoint);
//! - `train_log.jsonl`: one line per logged step and per validation.

use crate::config::{ModelShape, TrainConfig};
use crate::data::{
    load_cache, load_documents, load_tokenizer, pack, save_cache, Document, Packed, Specials,
};
use crate::error::{Result, TrainError};
use crate::model::{Batch, LlamaParams};
use crate::optim::AdamW;
use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where the data is.
#[derive(Debug, Clone)]
pub struct DataPaths {
    pub train: PathBuf,
    /// Extra training documents mixed in (e.g. `drills.jsonl`).
    pub extra: Vec<PathBuf>,
    pub val: Option<PathBuf>,
    pub tokenizer: PathBuf,
}

impl DataPaths {
    /// `DIR/train.jsonl`, `DIR/drills.jsonl` and `DIR/val.jsonl` (if
    /// present), `DIR/tokenizer.json`.
    pub fn from_dir(dir: &Path) -> DataPaths {
        let val = dir.join("val.jsonl");
        let drills = dir.join("drills.jsonl");
        DataPaths {
            train: dir.join("train.jsonl"),
            extra: drills.exists().then_some(drills).into_iter().collect(),
            val: val.exists().then_some(val),
            tokenizer: dir.join("tokenizer.json"),
        }
    }
}

/// What is saved with each checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub step: usize,
    pub epoch: u64,
    /// Next row of the current epoch's packing.
    pub row: usize,
    /// Non-padding tokens trained on so far.
    pub tokens: u64,
    /// CPU seconds of this process and earlier runs.
    pub cpu_seconds: f64,
    pub wall_seconds: f64,
    pub shape: ModelShape,
    pub config: TrainConfig,
    /// Size in bytes of the training file, to catch a resume on other data.
    pub train_bytes: u64,
    pub last_loss: Option<f32>,
    pub last_val_loss: Option<f32>,
    /// The trained model this run started from (`--init-from`), if any. The
    /// counters above (`tokens`, `cpu_seconds`, `wall_seconds`) include that
    /// model's own training, so they give the total cost of the result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<InitFrom>,
    /// CPU seconds the last optimizer step took (for the CPU budget).
    #[serde(default)]
    pub last_step_cpu: f64,
}

/// Where an `--init-from` run's starting weights came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitFrom {
    /// The model folder the weights were read from.
    pub path: String,
    /// That model's optimizer steps, tokens and cost, from its checkpoint.
    pub steps: usize,
    pub tokens: u64,
    pub cpu_seconds: f64,
    pub wall_seconds: f64,
}

/// How a `train` call ended.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub state: State,
    pub finished: bool,
    pub resumed_from: Option<usize>,
    /// Training tokens per second in this call (non-padding tokens).
    pub tokens_per_second: f64,
    /// Training stopped early because the CPU budget was spent.
    pub budget_spent: bool,
}

/// Options for one call of [`train`].
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stop (with a checkpoint) after this much wall time.
    pub max_wall: Option<Duration>,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// Refuse to resume; fail if a checkpoint exists.
    pub fresh: bool,
    /// Log a line every this many steps (0: every checkpoint only).
    pub log_every: usize,
    /// Stop (with a checkpoint) once this step is done, as an interrupted
    /// run would; a later call resumes.
    pub stop_at_step: Option<usize>,
    /// Start a new run (fresh optimizer and schedule) from the weights of
    /// this trained model folder instead of random ones. Ignored when `out`
    /// already holds a checkpoint (the run resumes).
    pub init_from: Option<PathBuf>,
    /// A compute budget: the run's total CPU seconds (earlier calls and the
    /// `init_from` model's training included). Training ends, with a final
    /// validation and checkpoint, before the next step would take the total
    /// past `max_cpu_seconds - CPU_RESERVE_SECONDS`; a rerun stops at once.
    pub max_cpu_seconds: Option<f64>,
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

    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    let ckpt = out.join("checkpoint");
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
        None
    };

    let tok_bytes = std::fs::metadata(&data.tokenizer)
        .map(|m| m.len())
        .unwrap_or(0);
    let cache_key = train_bytes ^ tok_bytes.rotate_left(40);
    let cache = out.join("tokens.cache");
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

    let (params, mut opt, mut state, resumed_from) = match resumed {
        Some((params, opt, state)) => {
            let s = state.step;
            (params, opt, state, Some(s))
        }
        None => {
            let (params, init_from) = match &opts.init_from {
                Some(dir) => {
                    let (p, from) = load_init(dir, &shape, &data.tokenizer, &device)?;
                    (p, Some(from))
                }
                None => (LlamaParams::init(&shape, cfg.seed, &device)?, None),
            };
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
            };
            (params, opt, state, None)
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

    let bar = if opts.progress {
        ProgressBar::with_draw_target(Some(cfg.steps as u64), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps [{elapsed_precise} < {eta_precise}] {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(state.step as u64);
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out.join("train_log.jsonl"))
        .map_err(|e| TrainError::io(out, e))?;

    let tokens_at_start = state.tokens;
    let mut window_tokens = 0u64;
    let mut window_start = Instant::now();
    let mut window_loss = 0f64;
    let mut window_steps = 0usize;
    let mut finished = true;
    let mut budget_spent = false;
    // The CPU the last step took (saved with checkpoints, so a rerun after a
    // budget stop stops again at once instead of squeezing in a step).
    let mut last_step_cpu = state.last_step_cpu;
    while state.step < cfg.steps {
        let out_of_time = opts
            .max_wall
            .is_some_and(|limit| started.elapsed() >= limit);
        if out_of_time || opts.stop_at_step.is_some_and(|s| state.step >= s) {
            finished = false;
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
        let lr = cfg.lr_at(state.step);
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
        bar.set_position(state.step as u64);
        bar.set_message(format!(
            "loss {loss_value:.3} | {:.1}k tok/s | lr {lr:.2e}{}",
            tps / 1000.0,
            state
                .last_val_loss
                .map(|v| format!(" | val {v:.3}"))
                .unwrap_or_default()
        ));

        let log_now = opts.log_every > 0 && state.step % opts.log_every == 0;
        if log_now || state.step == cfg.steps {
            let line = serde_json::json!({
                "step": state.step, "loss": window_loss / window_steps as f64, "lr": lr,
                "grad_norm": norm, "tokens": state.tokens, "tokens_per_s": tps,
                "cpu_s": base_cpu + process_cpu_seconds() - cpu_at_start,
            });
            writeln!(log, "{line}").map_err(|e| TrainError::io(out, e))?;
            window_tokens = 0;
            window_loss = 0.0;
            window_steps = 0;
            window_start = Instant::now();
        }
        let eval_now = cfg.eval_every > 0 && state.step % cfg.eval_every == 0;
        if (eval_now || state.step == cfg.steps) && val.is_some() {
            let v = validation_loss(
                &params,
                val.as_ref().unwrap_or_else(|| unreachable!()),
                cfg.batch_rows,
            )?;
            if let Some(v) = v {
                state.last_val_loss = Some(v);
                let line = serde_json::json!({"step": state.step, "val_loss": v});
                writeln!(log, "{line}").map_err(|e| TrainError::io(out, e))?;
            }
        }
        if state.step % cfg.checkpoint_every == 0 || state.step == cfg.steps {
            state.cpu_seconds = base_cpu + process_cpu_seconds() - cpu_at_start;
            state.wall_seconds = base_wall + started.elapsed().as_secs_f64();
            save_checkpoint(out, &params, &opt, &state, &data.tokenizer, specials)?;
        }
    }
    // A final validation, unless this call trained nothing (a rerun).
    if budget_spent && state.step > resumed_from.unwrap_or(0) {
        if let Some(v) = &val {
            if let Some(v) = validation_loss(&params, v, cfg.batch_rows)? {
                state.last_val_loss = Some(v);
                let line = serde_json::json!({"step": state.step, "val_loss": v});
                writeln!(log, "{line}").map_err(|e| TrainError::io(out, e))?;
            }
        }
        let line = serde_json::json!({"step": state.step, "cpu_budget_spent": true,
            "cpu_s": base_cpu + process_cpu_seconds() - cpu_at_start});
        writeln!(log, "{line}").map_err(|e| TrainError::io(out, e))?;
    }
    state.cpu_seconds = base_cpu + process_cpu_seconds() - cpu_at_start;
    state.wall_seconds = base_wall + started.elapsed().as_secs_f64();
    save_checkpoint(out, &params, &opt, &state, &data.tokenizer, specials)?;
    bar.finish_and_clear();
    let tokens_per_second =
        (state.tokens - tokens_at_start) as f64 / started.elapsed().as_secs_f64().max(1e-9);
    Ok(Outcome {
        state,
        finished,
        resumed_from,
        tokens_per_second,
        budget_spent,
    })
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

fn save_tensors(map: &BTreeMap<String, Tensor>, path: &Path) -> Result<()> {
    let map: std::collections::HashMap<&str, Tensor> =
        map.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    candle_core::safetensors::save(&map, path).map_err(|e| TrainError::Checkpoint {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Writes the HF-style model (`config.json`, `model.safetensors`,
/// `tokenizer.json`) into `dir`.
pub fn export_model(
    dir: &Path,
    params: &LlamaParams,
    tokenizer: &Path,
    specials: Specials,
    bos: Option<u32>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let config = params
        .shape
        .hf_config(bos, Some(specials.eos), Some(specials.pad));
    let text =
        serde_json::to_string_pretty(&config).map_err(|e| TrainError::BadConfig(e.to_string()))?;
    write_atomic(&dir.join("config.json"), text.as_bytes())?;
    let tmp = dir.join("model.safetensors.tmp");
    save_tensors(&params.tensors(), &tmp)?;
    std::fs::rename(&tmp, dir.join("model.safetensors")).map_err(|e| TrainError::io(dir, e))?;
    // What `transformers` and `weft-model` read for BOS/EOS handling: the
    // training data always starts with BOS, so inference must add it too.
    let tok = load_tokenizer(tokenizer)?;
    let name = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i));
    let tok_config = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": name(bos),
        "eos_token": name(Some(specials.eos)),
        "pad_token": name(Some(specials.pad)),
        "unk_token": tok.token_to_id("<unk>").and(Some("<unk>")),
        "add_bos_token": bos.is_some(),
        "add_eos_token": false,
        "model_max_length": params.shape.max_position_embeddings,
    });
    let text = serde_json::to_string_pretty(&tok_config)
        .map_err(|e| TrainError::BadConfig(e.to_string()))?;
    write_atomic(&dir.join("tokenizer_config.json"), text.as_bytes())?;
    let tok_bytes = std::fs::read(tokenizer).map_err(|e| TrainError::io(tokenizer, e))?;
    let dest = dir.join("tokenizer.json");
    if std::fs::read(&dest).ok().as_deref() != Some(tok_bytes.as_slice()) {
        write_atomic(&dest, &tok_bytes)?;
    }
    Ok(())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| TrainError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}

fn save_checkpoint(
    out: &Path,
    params: &LlamaParams,
    opt: &AdamW,
    state: &State,
    tokenizer: &Path,
    specials: Specials,
) -> Result<()> {
    let tmp = out.join("checkpoint.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    save_tensors(&params.tensors(), &tmp.join("model.safetensors"))?;
    save_tensors(&opt.state(), &tmp.join("optimizer.safetensors"))?;
    let mut st = serde_json::to_value(state).map_err(|e| TrainError::BadConfig(e.to_string()))?;
    st["optimizer_t"] = serde_json::json!(opt.t);
    std::fs::write(
        tmp.join("state.json"),
        serde_json::to_string_pretty(&st).map_err(|e| TrainError::BadConfig(e.to_string()))?,
    )
    .map_err(|e| TrainError::io(&tmp, e))?;
    let dest = out.join("checkpoint");
    let old = out.join("checkpoint.old");
    let _ = std::fs::remove_dir_all(&old);
    if dest.exists() {
        std::fs::rename(&dest, &old).map_err(|e| TrainError::io(&dest, e))?;
    }
    std::fs::rename(&tmp, &dest).map_err(|e| TrainError::io(&dest, e))?;
    let _ = std::fs::remove_dir_all(&old);
    let bos = load_tokenizer(tokenizer)
        .ok()
        .and_then(|t| t.token_to_id("<s>"));
    export_model(out, params, tokenizer, specials, bos)
}

/// The weights of the trained model folder `dir` (`model.safetensors`, the
/// shape checked against `shape`), and what its checkpoint says it cost.
fn load_init(
    dir: &Path,
    shape: &ModelShape,
    tokenizer: &Path,
    device: &Device,
) -> Result<(LlamaParams, InitFrom)> {
    let bad = |reason: String| TrainError::Checkpoint {
        path: dir.to_path_buf(),
        reason,
    };
    // Token ids must mean the same thing in both runs.
    let ours = std::fs::read(tokenizer).map_err(|e| TrainError::io(tokenizer, e))?;
    let theirs_path = dir.join("tokenizer.json");
    let theirs = std::fs::read(&theirs_path).map_err(|e| TrainError::io(&theirs_path, e))?;
    if ours != theirs {
        return Err(bad(format!(
            "its tokenizer.json differs from the data's {}; --init-from needs the same tokenizer",
            tokenizer.display()
        )));
    }
    let weights = dir.join("model.safetensors");
    let tensors = candle_core::safetensors::load(&weights, device)
        .map_err(|e| bad(format!("model.safetensors: {e}")))?
        .into_iter()
        .collect();
    let params = LlamaParams::from_tensors(shape, tensors, device)?;
    let (mut steps, mut tokens, mut cpu_seconds, mut wall_seconds) = (0, 0, 0.0, 0.0);
    if let Ok(text) = std::fs::read_to_string(dir.join("checkpoint").join("state.json")) {
        let st: State =
            serde_json::from_str(&text).map_err(|e| bad(format!("checkpoint/state.json: {e}")))?;
        (steps, tokens, cpu_seconds, wall_seconds) =
            (st.step, st.tokens, st.cpu_seconds, st.wall_seconds);
    } else {
        tracing::warn!(
            "{} has no checkpoint/state.json: its training cost is not counted",
            dir.display()
        );
    }
    let from = InitFrom {
        path: dir.display().to_string(),
        steps,
        tokens,
        cpu_seconds,
        wall_seconds,
    };
    Ok((params, from))
}

fn load_checkpoint(
    dir: &Path,
    shape: &ModelShape,
    cfg: &TrainConfig,
    train_bytes: u64,
    device: &Device,
) -> Result<(LlamaParams, AdamW, State)> {
    let bad = |reason: String| TrainError::Checkpoint {
        path: dir.to_path_buf(),
        reason,
    };
    let text =
        std::fs::read_to_string(dir.join("state.json")).map_err(|e| TrainError::io(dir, e))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let state: State = serde_json::from_value(value.clone()).map_err(|e| bad(e.to_string()))?;
    if &state.shape != shape {
        return Err(bad(format!(
            "it was trained with another model shape ({:?}); use the same config or another output folder",
            state.shape
        )));
    }
    if &state.config != cfg {
        return Err(bad(format!(
            "it was trained with other settings ({:?}); resume with the same flags",
            state.config
        )));
    }
    if state.train_bytes != train_bytes {
        return Err(bad(format!(
            "the training file changed ({} bytes then, {train_bytes} now)",
            state.train_bytes
        )));
    }
    let load = |name: &str| -> Result<BTreeMap<String, Tensor>> {
        let p = dir.join(name);
        Ok(candle_core::safetensors::load(&p, device)
            .map_err(|e| bad(format!("{name}: {e}")))?
            .into_iter()
            .collect())
    };
    let params = LlamaParams::from_tensors(shape, load("model.safetensors")?, device)?;
    let mut opt = AdamW::new(
        &params.vars,
        cfg.beta1,
        cfg.beta2,
        cfg.eps,
        cfg.weight_decay,
    )?;
    opt.load_state(load("optimizer.safetensors")?)?;
    opt.t = value["optimizer_t"].as_u64().unwrap_or(state.step as u64) as usize;
    Ok((params, opt, state))
}

/// Loads a model folder written by [`export_model`] for further use in Rust
/// (tests, evaluation of the loss).
pub fn load_model(dir: &Path, device: &Device) -> Result<LlamaParams> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| TrainError::io(&cfg_path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| TrainError::Config {
        path: cfg_path.clone(),
        reason: e.to_string(),
    })?;
    let get = |k: &str| v[k].as_u64().map(|x| x as usize);
    let missing = |k: &str| TrainError::Config {
        path: cfg_path.clone(),
        reason: format!("missing {k}"),
    };
    let shape = ModelShape {
        vocab_size: get("vocab_size").ok_or_else(|| missing("vocab_size"))?,
        hidden_size: get("hidden_size").ok_or_else(|| missing("hidden_size"))?,
        intermediate_size: get("intermediate_size").ok_or_else(|| missing("intermediate_size"))?,
        num_hidden_layers: get("num_hidden_layers").ok_or_else(|| missing("num_hidden_layers"))?,
        num_attention_heads: get("num_attention_heads")
            .ok_or_else(|| missing("num_attention_heads"))?,
        num_key_value_heads: get("num_key_value_heads"),
        max_position_embeddings: get("max_position_embeddings")
            .ok_or_else(|| missing("max_position_embeddings"))?,
        rope_theta: v["rope_theta"].as_f64().unwrap_or(10_000.0),
        rms_norm_eps: v["rms_norm_eps"].as_f64().unwrap_or(1e-5),
        tie_word_embeddings: v["tie_word_embeddings"].as_bool().unwrap_or(false),
    };
    let p = dir.join("model.safetensors");
    let tensors =
        candle_core::safetensors::load(&p, device).map_err(|e| TrainError::Checkpoint {
            path: p.clone(),
            reason: e.to_string(),
        })?;
    LlamaParams::from_tensors(&shape, tensors.into_iter().collect(), device)
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
