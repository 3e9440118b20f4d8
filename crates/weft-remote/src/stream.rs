//! A started completion: chunks as they arrive, each read within the idle
//! timeout. Dropping the stream closes its connection, which vLLM, SGLang,
//! llama-server and `weft serve` all take as the client cancelling.

use std::collections::VecDeque;
use std::pin::Pin;

use futures_util::{Stream, StreamExt};

use crate::completion::{parse_chunk, Chunk};
use crate::pool::{BackendId, Lease, Pool};
use crate::sse::SseParser;
use crate::RemoteError;

pub(crate) type Body = Pin<Box<dyn Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

/// What `Pool::open` hands over: the body after its first events.
pub(crate) struct Opened {
    pub(crate) url: String,
    pub(crate) body: Body,
    pub(crate) parser: SseParser,
    pub(crate) first: Vec<String>,
}

/// One streamed completion in progress. Holds its backend's concurrency
/// slot until dropped.
pub struct CompletionStream {
    pool: Pool,
    backend: BackendId,
    url: String,
    body: Body,
    parser: SseParser,
    /// Event data read but not yet returned.
    pending: VecDeque<String>,
    /// `[DONE]` seen, or the stream failed: nothing more is read.
    done: bool,
    /// A `finish_reason` was seen (a close after it is a normal end).
    finished: bool,
    _lease: Lease,
}

impl std::fmt::Debug for CompletionStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompletionStream")
            .field("url", &self.url)
            .field("backend", &self.backend)
            .field("done", &self.done)
            .finish()
    }
}

impl CompletionStream {
    pub(crate) fn new(pool: Pool, backend: BackendId, lease: Lease, o: Opened) -> Self {
        CompletionStream {
            pool,
            backend,
            url: o.url,
            body: o.body,
            parser: o.parser,
            pending: o.first.into(),
            done: false,
            finished: false,
            _lease: lease,
        }
    }

    /// The backend this request runs on (pass it as `prefer` for the
    /// request's other threads).
    pub fn backend(&self) -> BackendId {
        self.backend
    }

    /// The next chunk; `None` after the stream's normal end (`[DONE]`, or
    /// the connection closed after a `finish_reason`).
    ///
    /// Errors: no data within the idle timeout ([`RemoteError::Timeout`]),
    /// the connection lost or closed before the end
    /// ([`RemoteError::Stream`]), an error event ([`RemoteError::Server`]),
    /// an event that is not JSON ([`RemoteError::Protocol`]). The first
    /// three also take the backend out. After an error, `None`.
    pub async fn next(&mut self) -> Option<Result<Chunk, RemoteError>> {
        loop {
            if let Some(data) = self.pending.pop_front() {
                match parse_chunk(&self.url, &data) {
                    Ok(None) => {
                        self.done = true;
                        self.pending.clear();
                        return None;
                    }
                    Ok(Some(c)) => {
                        self.finished |= c.finish_reason.is_some();
                        return Some(Ok(c));
                    }
                    Err(e) => return Some(Err(self.fail(e))),
                }
            }
            if self.done {
                return None;
            }
            let idle = self.pool.inner.cfg.timeouts.idle;
            match tokio::time::timeout(idle, self.body.next()).await {
                Err(_) => {
                    let e = RemoteError::Timeout {
                        url: self.url.clone(),
                        phase: "idle",
                        after: idle,
                    };
                    return Some(Err(self.fail(e)));
                }
                Ok(Some(Ok(bytes))) => self.pending.extend(self.parser.feed(&bytes)),
                Ok(Some(Err(e))) => {
                    let e = RemoteError::stream(&self.url, e);
                    return Some(Err(self.fail(e)));
                }
                Ok(None) => {
                    self.pending.extend(self.parser.finish());
                    if self.pending.is_empty() {
                        self.done = true;
                        if self.finished {
                            return None;
                        }
                        let e = RemoteError::Stream {
                            url: self.url.clone(),
                            message: "the connection closed before the completion ended".into(),
                        };
                        return Some(Err(self.fail(e)));
                    }
                }
            }
        }
    }

    fn fail(&mut self, e: RemoteError) -> RemoteError {
        self.done = true;
        self.pending.clear();
        if e.is_backend_fault() {
            self.pool.mark_down(self.backend, &e);
        }
        e
    }
}
