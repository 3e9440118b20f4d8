//! `weft-tasks`: the Countdown kit, weft's research testbed (the APR paper's
//! task): reach a target from a few numbers with `+ - * /`.
//!
//! Main types, by job:
//! - The game: [`Problem`], [`Step`], [`Rules`] ([`countdown`]).
//! - Problems: [`GeneratorConfig`] and [`generate_splits`] (seeded, APR's
//!   distribution by default, deduplicated train/validation).
//! - Answers: [`Solver`] (exact: exists / one / all) and [`verify`], which
//!   reads a model's output (APR/SoS+ "Goal Reached" traces or a plain
//!   equation) and returns a [`Verdict`] with the reason for any failure.
//! - Traces: [`search::sosp`] (sequential SoS+) and [`search::apr`] (parent
//!   calls, forks, children, joins); byte-identical to Parallel-Reasoning/APR
//!   `src/data/search.py` for the same [`PyRandom`] seed.
//! - Datasets: [`export`] turns traces into training sequences (JSONL) with
//!   statistics; [`tokenizer`] builds the compact trace tokenizer.
//! - The task itself: [`CountdownTask`] (`task.json`), the rules and
//!   distribution that travel with data folders and trained models.
//!
//! Architecture invariant: nothing here knows about the engine or tensors.
//! The APR join text comes from `weft_protocol::apr`, the one place that
//! builds it for both the data and the engine.

pub mod countdown;
pub mod drills;
pub mod error;
pub mod export;
pub mod generator;
pub mod pyrandom;
pub mod search;
pub mod solver;
pub mod task;
pub mod tokenizer;
pub mod verifier;

pub use countdown::{OpKind, Problem, Rules, Step};
pub use error::{Result, TaskError};
pub use generator::{generate_splits, GeneratorConfig, Splits};
pub use pyrandom::PyRandom;
pub use search::apr::{AprParams, AprTrace};
pub use search::sosp::{SospParams, SospTrace};
pub use search::Heuristic;
pub use solver::Solver;
pub use task::CountdownTask;
pub use verifier::{
    arithmetic_stats, state_stats, verify, verify_with, ArithmeticStats, Failure, Verdict,
};
