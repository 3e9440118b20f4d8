//! `weft-train`: trains small Llama-architecture decoders from scratch, on the
//! CPU with candle's autograd (CUDA behind the `cuda` feature).
//!
//! - [`config`]: the model shape (a JSON file with HF key names) and the
//!   optimisation settings, with the warm-up + cosine schedule.
//! - [`data`]: JSONL documents with a prompt part left out of the loss,
//!   packed into rows with a block-diagonal causal mask.
//! - [`model`]: the decoder under Hugging Face parameter names, its forward
//!   pass and masked cross-entropy.
//! - [`kernels`]: fused attention/norm/activation/loss ops with hand-written
//!   backward passes, plugged into candle's autograd.
//! - [`optim`]: AdamW with saveable moments and gradient clipping.
//! - [`trainer`]: the loop, validation, checkpoint/resume, starting from a
//!   trained model (`init_from`), a CPU-time budget, and the HF-style
//!   export (`config.json` + `model.safetensors` + `tokenizer.json`) that
//!   `weft-model` and `transformers` load.

pub mod bench;
pub mod config;
pub mod data;
pub mod error;
pub mod kernels;
pub mod model;
pub mod optim;
pub mod trainer;

pub use config::{ModelShape, TrainConfig};
pub use error::{Result, TrainError};
pub use trainer::{train, DataPaths, InitFrom, Outcome, RunOptions, State, CPU_RESERVE_SECONDS};
