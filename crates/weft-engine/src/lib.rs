//! `weft-engine`: requests as trees of reasoning threads that fork and join
//! over a shared paged KV cache, all decoded in one batch, for as long as
//! the process runs.
//!
//! - [`Engine`]: owns the KV memory (`weft_model::KvCache`) and its block
//!   bookkeeping (`weft_kv::BlockPool`). [`Engine::add`] takes a
//!   [`RequestSpec`] at any time (prompt as text, token ids or chat
//!   messages; a protocol or none; its own sampling, stops and limits),
//!   checked once by [`validate`]; [`Engine::step`] advances every runnable
//!   thread of every request by one batch and returns [`Event`]s (thread
//!   started, text with token ids, fork, join, finished with a
//!   [`FinishReason`] and the [`Response`]); [`Engine::abort`] drops a
//!   request's whole tree and frees its KV at once. [`Engine::run`] is the
//!   thin loop for batch users. A plain request is a tree of one thread:
//!   there is no other decode path.
//! - Each step gathers one chunk of every runnable thread of every request
//!   (prompt chunks and single decode tokens alike) into one
//!   `Model::forward` call; each thread reads its KV through its own block
//!   table.
//! - The request's protocol (`weft_protocol::Protocol`) watches each
//!   thread's new text. A fork copies the parent's block table (ref-counted,
//!   copy-on-write of the partial last block). A join either re-prefills
//!   only the text after the common token prefix, or, for protocols whose
//!   layout is a KV merge (Multiverse, NPR), keeps every child's KV where
//!   it was written: the parent continues at the fork position plus the
//!   longest child, over its prefix and all children's KV
//!   (`SeqStep::shared`), computing only the text the join appends.
//! - [`EngineConfig`] holds the limits; a request's own limits can only
//!   tighten them. A limit changes what runs (refused fork, queued thread,
//!   preempted KV, token-limited thread); it never aborts.
//!
//! ```no_run
//! use weft_engine::{Engine, EngineConfig, Event, RequestSpec};
//! # fn demo(model: &weft_model::Model, tok: &weft_model::Tokenizer) -> Result<(), weft_engine::EngineError> {
//! let mut engine = Engine::new(model, tok, EngineConfig::default())?;
//! let mut spec = RequestSpec::text("Once upon a time");
//! spec.max_tokens = Some(32);
//! let id = engine.add(spec)?;
//! while engine.has_work() {
//!     for event in engine.step()? {
//!         match event {
//!             Event::Text { text, .. } => print!("{text}"),
//!             Event::Finished { reason, .. } => println!("\n[{reason}]"),
//!             _ => {}
//!         }
//!     }
//! }
//! # let _ = id; Ok(()) }
//! ```
//!
//! - [`Engine::remote`]: the same engine with every thread streamed from
//!   remote OpenAI-compatible servers (`weft_remote::Pool`) instead of a
//!   local model; joins re-prefill.
//!
//! Architecture invariant: the engine knows no protocol syntax (only the
//! `Protocol` trait) and no HTTP of its own (remote compute goes through
//! `weft_remote`).

mod config;
mod engine;
mod request;
mod slab;
mod tree;
mod validate;

pub use config::EngineConfig;
pub use engine::{thread_seed, Engine};
pub use request::{
    FinishReason, Prompt, ProtocolChoice, RequestId, RequestLimits, RequestSpec, Sampling,
};
pub use tree::{Event, RequestStats, Response, SampledSegment, ThreadRecord, TokenLogprobs};
pub use validate::{validate, ValidRequest, ValidationError, MAX_LOGPROBS};

/// What the engine can fail with. A request's own problems are
/// [`EngineError::Validation`] at `add`, or a `FinishReason::Error` later;
/// the other variants are the engine's.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] weft_model::ModelError),
    #[error("KV cache: {0}")]
    Kv(#[from] weft_kv::KvError),
    #[error(transparent)]
    Validation(#[from] ValidationError),
    #[error("{0}")]
    Invalid(String),
}
