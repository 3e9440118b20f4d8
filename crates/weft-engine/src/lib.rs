//! `weft-engine`: requests as trees of reasoning threads that fork and join
//! over a shared paged KV cache, all decoded in one batch.
//!
//! - [`Engine`]: owns the KV memory (`weft_model::KvCache`) and its block
//!   bookkeeping (`weft_kv::BlockPool`); [`Engine::run`] takes [`Request`]s
//!   and returns one [`Response`] each: final text, thread tree, stats.
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
//! - [`EngineConfig`] holds the limits. A limit changes what runs (refused
//!   fork, queued thread, preempted KV, token-limited thread); it never
//!   aborts.
//!
//! Architecture invariant: the engine knows no protocol syntax (only the
//! `Protocol` trait) and no HTTP.

mod config;
mod engine;
mod tree;

pub use config::EngineConfig;
pub use engine::{Engine, Request};
pub use tree::{Event, RequestStats, Response, ThreadRecord};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] weft_model::ModelError),
    #[error("KV cache: {0}")]
    Kv(#[from] weft_kv::KvError),
    #[error("{0}")]
    Invalid(String),
}
