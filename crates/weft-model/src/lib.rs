//! `weft-model`: Llama-family language models on the CPU.
//!
//! - [`Model`]: weights and configuration of a `llama`, `qwen2` or `qwen3`
//!   decoder, loaded from a GGUF file ([`gguf`]) or a Hugging Face folder
//!   (`config.json` + safetensors).
//! - [`Model::forward`]: one step over a batch of sequences ([`SeqStep`]),
//!   each at its own position, each reading its KV through its own block table
//!   in a shared [`KvCache`]. The engine batches threads through this call.
//! - [`kernels`]: the AVX2 quantized matmuls (picked at run time) that make it fast.
//! - [`Tokenizer`], [`chat`] templates, [`sampling`], and a one-sequence
//!   [`session::Session`] that returns logits (for parity tests; generation
//!   itself runs in `weft-engine`).
//!
//! ```no_run
//! use weft_model::{Model, LoadOptions, Tokenizer, session::Session};
//! let path = std::path::Path::new("model.gguf");
//! let model = Model::load(path, &LoadOptions::default())?;
//! let tok = Tokenizer::load(path)?;
//! let prompt = tok.encode("Hello", true)?;
//! let mut session = Session::new(&model, prompt.len());
//! let logits = session.feed(&prompt, false)?; // vocab_size values
//! # Ok::<(), weft_model::ModelError>(())
//! ```

pub mod chat;
pub mod config;
pub mod error;
pub mod forward;
pub mod gguf;
pub mod kernels;
pub mod kv_cache;
pub mod model;
mod prefix_attention;
mod reference;
pub mod sampling;
pub mod session;
pub mod tokenizer;
pub mod weights;

pub use config::{Arch, ModelConfig};
pub use error::{ModelError, Result};
pub use forward::{KvSpan, SeqStep, Workspace};
pub use kv_cache::KvCache;
pub use model::{LoadOptions, Model};
pub use tokenizer::Tokenizer;

impl Tokenizer {
    /// The tokenizer of a model path: GGUF metadata, or the folder's `tokenizer.json`.
    pub fn load(path: &std::path::Path) -> Result<Tokenizer> {
        if path.is_dir() {
            Tokenizer::from_hf_dir(path)
        } else {
            Tokenizer::from_gguf(&gguf::GgufFile::open(path)?)
        }
    }
}
