//! `weft-protocol`: the text conventions parallel-reasoning models use to say
//! "fork here", "this is child i" and "join", as data plus small parsers.
//!
//! The engine executes these protocols; the data tools (`weft-tasks`) use
//! the same functions to write training traces, so a parent's joined text
//! is built in exactly one place.
//!
//! # Main types
//! - [`Protocol`]: the one trait the engine drives. Per protocol it gives
//!   the trigger strings, what a trigger means ([`Scan`]: a [`Fork`] with
//!   its [`ChildSpec`]s, or a [`Refusal`] with a defined [`Action`]), each
//!   child's stop ([`ChildStop`]) and result ([`ChildResult`]), and the
//!   [`Join`]: the parent's new text plus its [`Layout`] (re-prefill of a
//!   suffix, or KV merge with children at the fork position) and what the
//!   parent does next ([`AfterJoin`]). Limits are data in [`Rules`].
//! - [`Detector`]: per-thread incremental detection; called after each new
//!   token's text, it looks only at the new bytes plus a bounded tail.
//! - [`by_name`]: `apr`, `multiverse`, `threadweaver`, `npr`, `parallel-r1`
//!   with the reference settings.
//!
//! One module per protocol, each with the strings it checked against the
//! method's public code and where that code differs from `PROTOCOLS.md`:
//! [`apr`] ([`apr::Apr`]; also the Countdown text functions
//! [`apr::root_prompt`], [`apr::parse_fork`], [`apr::child_result`],
//! [`apr::join`]), [`multiverse`], [`threadweaver`], [`npr`],
//! [`parallel_r1`]. Adding a protocol is a new file implementing
//! [`Protocol`] and a line in [`by_name`].
//!
//! # Example
//! ```
//! use weft_protocol::{by_name, ChildEnd, Detector, ForkContext, Scan};
//! let tw = by_name("threadweaver").unwrap();
//! let text = "<Parallel>\n<Outlines>\n<Outline>1: a</Outline>\n<Outline>2: b</Outline>\n</Outlines>";
//! let mut detector = Detector::for_prompt(0);
//! let Scan::Fork(fork) = detector.scan(tw.as_ref(), text, ForkContext::default()) else { panic!() };
//! let results: Vec<_> = [" x</Thread>", " y</Thread>"]
//!     .iter()
//!     .map(|g| tw.child_result(g, ChildEnd::Stop))
//!     .collect();
//! let join = tw.join(text, &fork, &results, ForkContext::default()).unwrap();
//! // The released checkpoints join with `\n` (ThreadWeaver's `no_conclusion`).
//! assert!(join.text.ends_with("\n<Thread>\n1: x</Thread><Thread>\n2: y</Thread>\n"));
//! ```
//!
//! # Architecture invariant
//! This crate knows nothing about tensors, tokens, the KV cache or HTTP: it
//! maps text to text and describes positions as rules over token counts the
//! engine owns. It never panics on any input text.

pub mod apr;
mod detect;
pub mod multiverse;
pub mod npr;
pub mod options;
pub mod parallel_r1;
mod protocol;
mod pyrepr;
mod tags;
pub mod threadweaver;

pub use detect::Detector;
pub use options::{with_options, OptionError};
pub use protocol::{
    Action, AfterJoin, ChildEnd, ChildPrompt, ChildResult, ChildSpec, ChildStop, Fork, ForkContext,
    Join, JoinMode, Layout, Protocol, Refusal, RefuseReason, Rules, Scan,
};
pub use pyrepr::{format_nums, format_str_list};
pub use tags::numbered_labels;

/// The protocol names [`by_name`] knows.
pub const NAMES: [&str; 5] = ["apr", "multiverse", "threadweaver", "npr", "parallel-r1"];

/// A protocol by its command-line name, with the reference's settings.
pub fn by_name(name: &str) -> Option<Box<dyn Protocol>> {
    Some(match name {
        "apr" => Box::new(apr::Apr::default()),
        "multiverse" => Box::new(multiverse::Multiverse::default()),
        "threadweaver" => Box::new(threadweaver::ThreadWeaver::default()),
        "npr" => Box::new(npr::Npr::default()),
        "parallel-r1" => Box::new(parallel_r1::ParallelR1::default()),
        _ => return None,
    })
}

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
    /// A join was given a parent text shorter than the fork's segment.
    #[error("the fork's segment ends at byte {segment_end} but the parent text has {len} bytes (or it is not a char boundary)")]
    SegmentOutOfRange { segment_end: usize, len: usize },
}
