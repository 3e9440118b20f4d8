//! Errors of `weft-train`. Each names the file or setting at fault.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The cause is part of the message, not a `source()`, so an error
    /// chain printed in full (`{:#}`) says it once.
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: bad config: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("bad model shape: {0}")]
    BadShape(String),
    #[error("bad training settings: {0}")]
    BadConfig(String),
    #[error("{path}:{line}: {reason}")]
    Data {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{path}: tokenizer: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    #[error("{path}: checkpoint: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    /// A resume with settings that change what training computes.
    #[error("{path}: cannot resume: it was trained with other settings:\n{}\nrerun with the checkpoint's values, train into another --out, or start a new schedule from this model with --init-from", changes.iter().map(|c| format!("  {c}")).collect::<Vec<_>>().join("\n"))]
    SettingsDiffer {
        path: PathBuf,
        changes: Vec<crate::config::SettingChange>,
    },
    /// A resume with another model shape.
    #[error("{path}: cannot resume: it was trained with another model shape:\n{}\nuse the same --config, or another --out", changes.iter().map(|c| format!("  {c}")).collect::<Vec<_>>().join("\n"))]
    ShapeDiffers {
        path: PathBuf,
        changes: Vec<crate::config::SettingChange>,
    },
    #[error("training diverged at step {step}: loss is {loss}")]
    Diverged { step: usize, loss: f32 },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl TrainError {
    pub fn io(path: &Path, cause: std::io::Error) -> TrainError {
        TrainError::Io {
            path: path.to_path_buf(),
            cause,
        }
    }
}

pub type Result<T> = std::result::Result<T, TrainError>;
