//! `weft-remote`: streams completions from remote OpenAI-compatible engines
//! (vLLM, SGLang, llama-server, `weft serve`), for running thread trees on
//! servers weft does not own.
//!
//! - [`Pool`]: the backends. Every thread of one request is sent to the
//!   backend its first request ran on (`prefer`), so that server's prefix
//!   cache holds the shared text; new requests go to the backend with the
//!   least outstanding work; a backend that fails is taken out and probed
//!   again after a back-off; each backend runs at most `max_concurrency`
//!   requests at once.
//! - [`Pool::stream`] sends one `POST /v1/completions` with `stream: true`
//!   and returns a [`CompletionStream`] once the first event has arrived.
//!   Failures before that are retried with back-off on another backend;
//!   after it, never (the caller has seen text).
//! - Time limits ([`Timeouts`]): connect, first byte, idle between reads.
//! - Dropping a [`CompletionStream`] closes its connection: the server
//!   aborts the request (a tree that is cancelled drops every stream).
//! - Token counts come from the servers' `usage`, with the prompt tokens
//!   they took from their cache where they say so ([`Usage`]).
//!
//! Invariant: no tree logic and no protocol syntax here; this crate moves
//! text over HTTP.

mod completion;
mod pool;
mod sse;
mod stream;

pub use completion::{parse_chunk, Chunk, CompletionRequest, Usage};
pub use pool::{BackendId, BackendStatus, Pool, PoolConfig, Timeouts};
pub use sse::SseParser;
pub use stream::CompletionStream;

use std::time::Duration;

/// What a remote request can fail with. Every message names the URL.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RemoteError {
    #[error("backend URL {url:?}: {message}")]
    BadUrl { url: String, message: String },
    #[error("no backend can take the request: {}", if errors.is_empty() { "all are down".to_string() } else { errors.join("; ") })]
    NoBackend { errors: Vec<String> },
    #[error("{url}: cannot connect: {message}")]
    Connect { url: String, message: String },
    #[error("{url}: HTTP {status}: the server refused the API key ({body}): give its key as the pool's `api_key` (`--backend-api-key`, or WEFT_BACKEND_API_KEY)")]
    Unauthorized {
        url: String,
        status: u16,
        body: String,
    },
    #[error("{url}: HTTP {status}: {body}")]
    Http {
        url: String,
        status: u16,
        body: String,
    },
    #[error("{url}: no {phase} within {after:?}")]
    Timeout {
        url: String,
        phase: &'static str,
        after: Duration,
    },
    #[error("{url}: stream broken: {message}")]
    Stream { url: String, message: String },
    #[error("{url}: the server reported an error: {message}")]
    Server { url: String, message: String },
    #[error("{url}: unexpected answer: {message}")]
    Protocol { url: String, message: String },
}

impl RemoteError {
    /// An HTTP error answer: 401 and 403 as [`RemoteError::Unauthorized`]
    /// (a configuration error, never retried), others as
    /// [`RemoteError::Http`].
    pub(crate) fn http(url: &str, status: u16, body: String) -> Self {
        match status {
            401 | 403 => RemoteError::Unauthorized {
                url: url.to_string(),
                status,
                body,
            },
            _ => RemoteError::Http {
                url: url.to_string(),
                status,
                body,
            },
        }
    }

    pub(crate) fn connect(url: &str, e: reqwest::Error) -> Self {
        RemoteError::Connect {
            url: url.to_string(),
            message: error_chain(&e),
        }
    }

    pub(crate) fn stream(url: &str, e: reqwest::Error) -> Self {
        RemoteError::Stream {
            url: url.to_string(),
            message: error_chain(&e),
        }
    }

    /// Whether the backend is at fault (unreachable, overloaded, failing,
    /// stalled), so another backend may succeed: a reason to retry before
    /// the first byte, and to take the backend out. A 4xx other than 429
    /// is the request's fault.
    pub fn is_backend_fault(&self) -> bool {
        match self {
            RemoteError::Connect { .. }
            | RemoteError::Timeout { .. }
            | RemoteError::Stream { .. }
            | RemoteError::Server { .. } => true,
            RemoteError::Http { status, .. } => *status >= 500 || *status == 429,
            RemoteError::BadUrl { .. }
            | RemoteError::NoBackend { .. }
            | RemoteError::Unauthorized { .. }
            | RemoteError::Protocol { .. } => false,
        }
    }
}

/// `e` and its sources, joined (reqwest's own message hides the cause).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
