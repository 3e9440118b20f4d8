//! The training folder, apart from the model: checkpoints that a later run
//! resumes from exactly, the token cache and the log.
//!
//! `TRAIN_DIR` (default: `OUT.train`, beside the model folder `OUT`):
//! - `checkpoint/`: `model.safetensors`, `optimizer.safetensors`,
//!   `state.json` (written to `checkpoint.tmp/` and renamed, so a kill
//!   never leaves half a checkpoint);
//! - `tokens.cache`: the tokenized training documents, so a resume does not
//!   tokenize again;
//! - `train_log.jsonl`: one line per logged step and per validation; on
//!   resume, lines after the checkpoint's step are dropped, so the log never
//!   holds a step twice.
//!
//! Runs from before this layout kept all three inside `OUT`; a resume moves
//! them into `TRAIN_DIR` first.

use crate::config::{CosineAnchor, ModelShape, SettingChange, TrainConfig, FREE_ON_RESUME};
use crate::error::{Result, TrainError};
use crate::export::{save_tensors, write_atomic, write_json};
use crate::model::LlamaParams;
use crate::optim::AdamW;
use crate::record::TrainRecord;
use crate::trainer::InitFrom;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
    /// Where the cosine continues from after a resume changed `--steps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cosine_anchor: Option<CosineAnchor>,
}

impl State {
    /// The learning rate of the step after `self.step`.
    pub fn lr(&self) -> f64 {
        self.config.lr_with(self.step, self.cosine_anchor)
    }
}

/// Where a run's files go.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The model folder (`--out`).
    pub model: PathBuf,
    /// Checkpoint, token cache and log (`--train-dir`).
    pub train_dir: PathBuf,
}

impl Layout {
    /// The layout for model folder `out` (created if missing), with the
    /// training folder `train_dir`, or `OUT.train` beside `out`.
    pub fn new(out: &Path, train_dir: Option<&Path>) -> Result<Layout> {
        std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
        let train_dir = match train_dir {
            Some(d) => d.to_path_buf(),
            None => default_train_dir(out)?,
        };
        Ok(Layout {
            model: out.to_path_buf(),
            train_dir,
        })
    }

    pub fn checkpoint(&self) -> PathBuf {
        self.train_dir.join("checkpoint")
    }
    pub fn cache(&self) -> PathBuf {
        self.train_dir.join("tokens.cache")
    }
    pub fn log(&self) -> PathBuf {
        self.train_dir.join("train_log.jsonl")
    }

    /// Moves a checkpoint, cache and log that an older weft left inside
    /// the model folder into the training folder. Returns whether it moved
    /// anything.
    pub fn adopt_old_layout(&self) -> Result<bool> {
        let old = self.model.join("checkpoint");
        if !old.join("state.json").exists() {
            return Ok(false);
        }
        if self.checkpoint().join("state.json").exists() {
            return Err(TrainError::Checkpoint {
                path: old,
                reason: format!(
                    "there is also a checkpoint in {}; remove the one that should not be resumed",
                    self.checkpoint().display()
                ),
            });
        }
        std::fs::create_dir_all(&self.train_dir).map_err(|e| TrainError::io(&self.train_dir, e))?;
        let _ = std::fs::remove_dir_all(self.checkpoint());
        for (from, to) in [
            (old.clone(), self.checkpoint()),
            (self.model.join("tokens.cache"), self.cache()),
            (self.model.join("train_log.jsonl"), self.log()),
        ] {
            if from.exists() {
                std::fs::rename(&from, &to).map_err(|e| TrainError::io(&to, e))?;
            }
        }
        for leftover in ["checkpoint.old", "checkpoint.tmp"] {
            let _ = std::fs::remove_dir_all(self.model.join(leftover));
        }
        Ok(true)
    }
}

/// `OUT.train` beside `out` (`runs/apr` -> `runs/apr.train`).
fn default_train_dir(out: &Path) -> Result<PathBuf> {
    let named = match out.file_name() {
        Some(_) => out.to_path_buf(),
        // ".", "..", a path ending in "..": name it by where it points.
        None => std::fs::canonicalize(out).map_err(|e| TrainError::io(out, e))?,
    };
    let name = named.file_name().ok_or_else(|| {
        TrainError::BadConfig(format!(
            "{} has no folder name to put OUT.train beside it; pass --train-dir",
            out.display()
        ))
    })?;
    let mut dir_name = name.to_os_string();
    dir_name.push(".train");
    Ok(named.with_file_name(dir_name))
}

/// Saves params, optimizer and state into `layout.checkpoint()`.
pub(crate) fn save_checkpoint(
    layout: &Layout,
    params: &LlamaParams,
    opt: &AdamW,
    state: &State,
) -> Result<()> {
    let dir = &layout.train_dir;
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let tmp = dir.join("checkpoint.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    save_tensors(&params.tensors(), &tmp.join("model.safetensors"))?;
    save_tensors(&opt.state(), &tmp.join("optimizer.safetensors"))?;
    let mut st = serde_json::to_value(state).map_err(|e| TrainError::BadConfig(e.to_string()))?;
    st["optimizer_t"] = serde_json::json!(opt.t);
    write_json(&tmp.join("state.json"), &st)?;
    let dest = layout.checkpoint();
    let old = dir.join("checkpoint.old");
    let _ = std::fs::remove_dir_all(&old);
    if dest.exists() {
        std::fs::rename(&dest, &old).map_err(|e| TrainError::io(&dest, e))?;
    }
    std::fs::rename(&tmp, &dest).map_err(|e| TrainError::io(&dest, e))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// A checkpoint read back, and what the settings given now change.
pub(crate) struct Resumed {
    pub params: LlamaParams,
    pub opt: AdamW,
    pub state: State,
    /// Settings that differ and that a resume accepts (see
    /// [`FREE_ON_RESUME`] and `--steps`).
    pub changes: Vec<SettingChange>,
}

/// Reads the checkpoint in `dir` and checks it against the shape,
/// settings and data given now. Settings in [`FREE_ON_RESUME`] and `--steps`
/// may differ; a changed `--steps` re-anchors the cosine at the
/// checkpoint's step (see [`CosineAnchor`]). Anything else that differs is
/// refused, flag by flag.
pub(crate) fn load_checkpoint(
    dir: &Path,
    shape: &ModelShape,
    cfg: &TrainConfig,
    train_bytes: u64,
    device: &Device,
) -> Result<Resumed> {
    let bad = |reason: String| TrainError::Checkpoint {
        path: dir.to_path_buf(),
        reason,
    };
    let state_path = dir.join("state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| TrainError::io(&state_path, e))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let mut state: State = serde_json::from_value(value.clone()).map_err(|e| bad(e.to_string()))?;
    let shape_changes = state.shape.changes(shape);
    if !shape_changes.is_empty() {
        return Err(TrainError::ShapeDiffers {
            path: dir.to_path_buf(),
            changes: shape_changes,
        });
    }
    let changes = state.config.changes(cfg);
    let fixed: Vec<SettingChange> = changes
        .iter()
        .filter(|c| c.name != "--steps" && !FREE_ON_RESUME.contains(&c.name))
        .cloned()
        .collect();
    if !fixed.is_empty() {
        return Err(TrainError::SettingsDiffer {
            path: dir.to_path_buf(),
            changes: fixed,
        });
    }
    if cfg.steps < state.step {
        return Err(bad(format!(
            "--steps {} is below the {} steps it has already trained",
            cfg.steps, state.step
        )));
    }
    if state.train_bytes != train_bytes {
        return Err(bad(format!(
            "the training data changed ({} bytes then, {train_bytes} now)",
            state.train_bytes
        )));
    }
    if cfg.steps != state.config.steps && state.step >= cfg.warmup_steps {
        // The cosine goes on from where it stands now to min_lr at the new
        // end (before the end of the warm-up nothing of the cosine has been
        // trained, so the new one simply spans the new total).
        state.cosine_anchor = Some(CosineAnchor {
            step: state.step,
            progress: state
                .config
                .cosine_progress(state.step, state.cosine_anchor),
        });
    }
    state.config = cfg.clone();
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
    Ok(Resumed {
        params,
        opt,
        state,
        changes,
    })
}

/// Drops the lines of the log at `path` that are about steps after `step`
/// (written after the checkpoint a run resumes from). Returns how many.
pub(crate) fn truncate_log(path: &Path, step: usize) -> Result<usize> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(TrainError::io(path, e)),
    };
    let mut kept = String::with_capacity(text.len());
    let mut dropped = 0;
    for line in text.lines() {
        let after = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v["step"].as_u64())
            .is_some_and(|s| s as usize > step);
        if after {
            dropped += 1;
        } else {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    if dropped > 0 {
        write_atomic(path, kept.as_bytes())?;
    }
    Ok(dropped)
}

/// The weights of the trained model folder `dir` (`model.safetensors`, the
/// shape checked against `shape`), and what its record (or, for folders
/// from before records, its checkpoint) says it cost.
pub(crate) fn load_init(
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
    let old_state = dir.join("checkpoint").join("state.json");
    if let Some(r) = TrainRecord::load(dir)? {
        (steps, tokens, cpu_seconds, wall_seconds) =
            (r.step, r.tokens, r.cpu_seconds, r.wall_seconds);
        if !r.finished {
            tracing::warn!(
                "{}: its run is unfinished ({:?} at step {} of {})",
                dir.display(),
                r.status,
                r.step,
                r.steps
            );
        }
    } else if let Ok(text) = std::fs::read_to_string(&old_state) {
        let st: State =
            serde_json::from_str(&text).map_err(|e| bad(format!("checkpoint/state.json: {e}")))?;
        (steps, tokens, cpu_seconds, wall_seconds) =
            (st.step, st.tokens, st.cpu_seconds, st.wall_seconds);
    } else {
        tracing::warn!(
            "{} has no weft_train.json: its training cost is not counted",
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
