//! `weft-rl`: reinforcement learning that rewards correct and parallel
//! reasoning. GRPO (Shao et al. 2024) on the engine's own rollouts: the
//! policy forks for real (APR) while it samples, every thread's sampled
//! tokens are trained on with its rollout's group-relative advantage, and
//! the tokens the engine wrote (prompts, joined results) are masked out.
//!
//! - [`reward`]: the reward terms (correctness, ThreadWeaver's parallelism
//!   term, format, critical-path length).
//! - [`advantage`]: group-mean advantages, standard-deviation normalization
//!   behind a flag.
//! - [`rollout`]: G sampled rollouts per problem through the engine, with
//!   the verifier's verdict and the tree's shape.
//! - [`update`]: sampled segments to training rows, and AdamW steps on the
//!   clipped policy loss with an optional KL term to the initial model.
//! - [`run`]: the loop, its checkpoints (a rerun continues exactly), the
//!   CPU budget, the log and the exported model folder.

pub mod advantage;
pub mod reward;
pub mod rollout;
pub mod run;
pub mod update;

pub use advantage::group_advantages;
pub use reward::{reward, Reward, RewardConfig, RolloutScore};
pub use rollout::{roll_out, Mode, Rollout, RolloutConfig};
pub use run::{run, RlConfig, RlEvent, RlOutcome, RunOptions, StepReport};
pub use update::{update, Sequence, UpdateConfig, UpdateStats};

/// What can stop an RL run.
#[derive(Debug, thiserror::Error)]
pub enum RlError {
    #[error(transparent)]
    Train(#[from] weft_train::TrainError),
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("engine: {0}")]
    Engine(#[from] weft_engine::EngineError),
    #[error("model: {0}")]
    Model(#[from] weft_model::ModelError),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("{0}")]
    BadConfig(String),
    #[error("the loss is not finite ({0}): the update diverged")]
    Diverged(f32),
}

impl RlError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> RlError {
        RlError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
