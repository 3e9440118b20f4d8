//! `weft-train`: trains small Llama-architecture decoders from scratch, on the
//! CPU with candle's autograd (CUDA behind the `cuda` feature).
//!
//! - [`shape`]: the model shape, from a short shape file or a Hugging Face
//!   `config.json` (keys it cannot honour are refused by name).
//! - [`config`]: the optimisation settings, the warm-up + cosine schedule
//!   (and how it goes on when a resume changes `--steps`), and which
//!   settings a resume may change.
//! - [`data`]: JSONL documents with a prompt part left out of the loss,
//!   packed into rows with a block-diagonal causal mask.
//! - [`model`]: the decoder under Hugging Face parameter names, its forward
//!   pass and masked cross-entropy.
//! - [`kernels`]: fused attention/norm/activation/loss ops with hand-written
//!   backward passes, plugged into candle's autograd.
//! - [`optim`]: AdamW with saveable moments and gradient clipping.
//! - [`trainer`]: the loop, validation, stopping (time, CPU budget, an
//!   interrupt flag) and resuming, starting from a trained model
//!   (`init_from`).
//! - [`checkpoint`]: the training folder (`OUT.train`): checkpoints, token
//!   cache, log.
//! - [`export`]: the model folder: only what `weft-model` and
//!   `transformers` load, plus [`record`]'s `weft_train.json` (which run
//!   wrote it, finished or not, on which trace format) and the data's
//!   `task.json`.
//! - [`progress`]: a bar on a terminal, plain lines in a log.
//! - [`alloc`]: glibc settings that keep freed training buffers in the
//!   process (the page faults otherwise cost about a sixth of a step).

pub mod alloc;
pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod error;
pub mod export;
pub mod kernels;
pub mod model;
pub mod optim;
pub mod progress;
pub mod record;
pub mod shape;
pub mod trainer;

pub use checkpoint::{Layout, State};
pub use config::{ModelShape, SettingChange, TrainConfig};
pub use error::{Result, TrainError};
pub use progress::ProgressMode;
pub use record::{Status, TrainRecord, RECORD_FILE};
pub use trainer::{train, DataPaths, InitFrom, Outcome, RunOptions, CPU_RESERVE_SECONDS};
