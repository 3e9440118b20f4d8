//! `weft_train.json`: what a model folder says about the run that wrote it.
//!
//! Written into the model folder with every export. While a run goes on,
//! or after it was interrupted or stopped, `finished` is false, so a
//! half-trained model is never mistaken for a finished one; `finished`
//! turns true only after the final export, as the last file written.
//!
//! Folders without the file (trained before it existed, or not by weft)
//! load as before; [`TrainRecord::load`] then answers `None`.

use crate::config::{CosineAnchor, TrainConfig};
use crate::error::{Result, TrainError};
use crate::trainer::InitFrom;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The file's name in a model folder.
pub const RECORD_FILE: &str = "weft_train.json";

/// Why the run that wrote a model stopped where it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// A periodic checkpoint of a run that is (or was, if it was killed)
    /// still going.
    Training,
    /// Stopped by `--max-minutes` (or a library caller's stop step); the
    /// same command resumes it.
    Stopped,
    /// Stopped by Ctrl-C (SIGINT) or SIGTERM; the same command resumes it.
    Interrupted,
    /// Every step of the schedule was trained.
    Finished,
    /// Ended by `--max-cpu-minutes`, as planned: the result is final.
    CpuBudgetSpent,
}

impl Status {
    /// Whether the run ended as planned (all steps, or its CPU budget).
    pub fn is_final(self) -> bool {
        matches!(self, Status::Finished | Status::CpuBudgetSpent)
    }
}

/// The contents of `weft_train.json`. Only `finished` and `status` are
/// required to read one, so a record written by hand for an older model
/// (`{"finished": true, "status": "finished", "trace_kind": "apr"}`) loads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainRecord {
    /// True only when the run ended as planned (`status` `finished` or
    /// `cpu_budget_spent`); false for a model written mid-run.
    pub finished: bool,
    pub status: Status,
    /// Optimizer steps trained, and the steps the schedule plans.
    #[serde(default)]
    pub step: usize,
    #[serde(default)]
    pub steps: usize,
    /// The trace format of the training data: the `kind` key of the data
    /// folder's `summary.json` (`weft data countdown` writes `apr` or
    /// `sosp`); absent when the data folder does not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_kind: Option<String>,
    /// Whether the data folder's `task.json` was copied, unchanged, into
    /// the model folder.
    #[serde(default)]
    pub task_json: bool,
    /// The data folder, and the folder with the checkpoint, token cache and
    /// `train_log.jsonl`, as given to `weft train`.
    #[serde(default)]
    pub data: String,
    #[serde(default)]
    pub train_dir: String,
    /// Non-padding tokens trained on, CPU and wall seconds, the
    /// `--init-from` model's included.
    #[serde(default)]
    pub tokens: u64,
    #[serde(default)]
    pub cpu_seconds: f64,
    #[serde(default)]
    pub wall_seconds: f64,
    #[serde(default)]
    pub last_loss: Option<f32>,
    #[serde(default)]
    pub last_val_loss: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<InitFrom>,
    /// The settings of the run, and where its cosine was re-anchored when
    /// a resume changed `--steps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<TrainConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cosine_anchor: Option<CosineAnchor>,
    /// The weft version that wrote the file.
    #[serde(default)]
    pub weft_version: String,
}

impl TrainRecord {
    /// The record of the model folder `dir`; `None` when it has none.
    pub fn load(dir: &Path) -> Result<Option<TrainRecord>> {
        let path = dir.join(RECORD_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(TrainError::io(&path, e)),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| TrainError::Config {
                path,
                reason: e.to_string(),
            })
    }
}
