//! `weft-protocol`: the text conventions that parallel-reasoning models use to
//! say "fork here", "this is child i" and "join", as pure string functions.
//!
//! The engine executes these protocols; the data tools (`weft-tasks`) use the
//! same functions to write training traces, so a parent's joined text is built
//! in exactly one place.
//!
//! Modules, one per protocol (see `shared/PROTOCOLS.md`):
//! - [`apr`]: APR (Learning Adaptive Parallel Reasoning, Countdown). Main
//!   items: [`apr::root_prompt`], [`apr::parse_fork`] (fork trigger and
//!   [`apr::ChildSpec`]s), [`apr::child_result`], [`apr::join`].
//!
//! Architecture invariant: this crate knows nothing about tensors, tokens or
//! the engine; it maps text to text. Each protocol gets its own module so that
//! adding one is a new file.

pub mod apr;
mod pyrepr;

pub use pyrepr::{format_nums, format_str_list};

/// What can go wrong when reading protocol text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The text does not end with a fork block, so there is nothing to fork.
    #[error("no fork block: the text does not end with `{expected}`")]
    NoFork { expected: &'static str },
    /// A fork names a node whose state the parent never wrote.
    #[error("fork names node #{node} but the parent text never states it")]
    UnknownNode { node: String },
    /// A line that should follow the protocol's format does not.
    #[error("malformed protocol line {line:?}: {reason}")]
    Malformed { line: String, reason: &'static str },
    /// A join was given a different number of child results than the fork has children.
    #[error("the fork has {expected} children but {got} results were given")]
    ChildCount { expected: usize, got: usize },
}
