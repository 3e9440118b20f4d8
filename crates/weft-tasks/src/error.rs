//! The one error type of this crate.

use weft_protocol::ProtocolError;

/// Everything that can go wrong in the Countdown kit. Bad input from a user or
/// a model's output always ends up here, never in a panic.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// A problem string such as `"17 62 25 7 -> 63"` could not be read.
    #[error("malformed problem {input:?}: {reason} (expected e.g. \"17 62 25 7 -> 63\")")]
    BadProblem { input: String, reason: String },
    /// A generator or search setting is out of range.
    #[error("invalid setting: {0}")]
    BadConfig(String),
    /// The generator could not find enough distinct solvable problems.
    #[error(
        "found only {found} of {wanted} distinct solvable problems after {attempts} draws; widen the number or target ranges"
    )]
    TooFewProblems {
        wanted: usize,
        found: usize,
        attempts: u64,
    },
    /// Protocol text could not be read (APR fork/join).
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// Building or saving the tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = TaskError> = std::result::Result<T, E>;
