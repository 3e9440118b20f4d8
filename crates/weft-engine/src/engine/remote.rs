//! Threads that stream from remote OpenAI-compatible servers
//! (`weft_remote`): each runnable thread holds one streamed completion of
//! its whole context; the text that comes back goes through the same
//! `accept_text` and protocol scan as sampled tokens, so forks, joins,
//! limits, stats and events are the engine's own. A fork, finish or abort
//! drops the thread's stream (the server cancels it); a join's parent
//! streams anew with the joined text (re-prefill, cheap with the server's
//! prefix cache). A request's threads prefer the backend its first stream
//! ran on. A thread that forks before its server has seen its context (a
//! prompt that ends in a fork, a joined parent that forks again at once)
//! first sends that context alone (`max_tokens: 1`, a warm-up), and its
//! children stream once the server has computed it: children that arrive
//! together would each compute the shared prefix.

use std::collections::HashMap;

use tokio::sync::mpsc;
use weft_protocol::ChildEnd;
use weft_remote::{BackendId, CompletionRequest, Pool, RemoteError};

use super::thread::Status;
use super::{Compute, Engine};
use crate::request::{FinishReason, RequestId};
use crate::EngineError;

/// What a thread's stream task sends.
enum Raw {
    Started(BackendId),
    Chunk(weft_remote::Chunk),
    Done,
    Failed(RemoteError),
}

/// What a thread's stream reports to the engine, with the server's counts
/// already turned into per-segment figures.
pub(crate) enum RemoteEvent {
    Started(BackendId),
    /// A warm-up segment reached its backend (its text is not the thread's).
    Warmed(BackendId),
    /// The server's count of this segment's prompt, the first time it
    /// gives one, and the local count it replaces.
    Prompt {
        server: u64,
        local: usize,
    },
    /// The prompt tokens the server computed and took from its prefix
    /// cache, the first time it says.
    Cache {
        computed: u64,
        cached: u64,
    },
    /// New text. `ids`: the server's token ids for it (vLLM's and `weft
    /// serve`'s `return_token_ids`); `n_tokens`: how many tokens the server
    /// says it is (from the ids, or the rise of its running count); `None`
    /// where the server says neither (the local tokenizer counts).
    Piece {
        text: String,
        ids: Option<Vec<u32>>,
        n_tokens: Option<usize>,
    },
    End {
        finish: Option<String>,
    },
    Failed(RemoteError),
}

struct Segment {
    id: u64,
    task: tokio::task::JoinHandle<()>,
    /// The prompt's length by the local tokenizer, counted at the start.
    local_prompt: usize,
    prompt_reported: bool,
    cache_reported: bool,
    /// The server's running count of generated tokens.
    generated: u64,
    /// Tokens the server counted for chunks with no text yet (a held-back
    /// partial character): they go with the next text.
    pending_ids: Vec<u32>,
    pending_n: usize,
    /// The server's `finish_reason`, once it gives one.
    finish: Option<String>,
    /// A warm-up: only its counts are taken; while it runs, the thread's
    /// children wait.
    warm: bool,
}

type Tagged = (usize, u64, Raw);

/// Longest wait for stream events in one engine step.
const WAIT: std::time::Duration = std::time::Duration::from_millis(50);

pub(crate) struct RemoteCompute {
    rt: tokio::runtime::Runtime,
    pool: Pool,
    tx: mpsc::UnboundedSender<Tagged>,
    rx: mpsc::UnboundedReceiver<Tagged>,
    /// The live stream of each engine thread.
    segments: HashMap<usize, Segment>,
    next_segment: u64,
    /// The backend each request's first stream ran on.
    prefer: HashMap<RequestId, BackendId>,
}

impl RemoteCompute {
    pub(crate) fn new(pool: Pool) -> Result<Self, EngineError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| EngineError::Invalid(format!("cannot start the HTTP runtime: {e}")))?;
        let (tx, rx) = mpsc::unbounded_channel();
        Ok(RemoteCompute {
            rt,
            pool,
            tx,
            rx,
            segments: HashMap::new(),
            next_segment: 0,
            prefer: HashMap::new(),
        })
    }

    fn streaming(&self, thread: usize) -> bool {
        self.segments.contains_key(&thread)
    }

    /// Whether `thread`'s warm-up is still running.
    fn warming(&self, thread: usize) -> bool {
        self.segments.get(&thread).is_some_and(|s| s.warm)
    }

    /// Streams `req` for `thread`, whose prompt is `local_prompt` tokens by
    /// the local tokenizer.
    fn start(
        &mut self,
        thread: usize,
        req: CompletionRequest,
        local_prompt: usize,
        prefer: Option<BackendId>,
        warm: bool,
    ) {
        self.cancel(thread);
        let seg = self.next_segment;
        self.next_segment += 1;
        let (tx, pool) = (self.tx.clone(), self.pool.clone());
        let task = self.rt.spawn(async move {
            let send = |e| {
                let _ = tx.send((thread, seg, e));
            };
            let mut s = match pool.stream(&req, prefer).await {
                Ok(s) => s,
                Err(e) => return send(Raw::Failed(e)),
            };
            send(Raw::Started(s.backend()));
            while let Some(c) = s.next().await {
                match c {
                    Ok(c) => send(Raw::Chunk(c)),
                    Err(e) => return send(Raw::Failed(e)),
                }
            }
            send(Raw::Done);
        });
        self.segments.insert(
            thread,
            Segment {
                id: seg,
                task,
                local_prompt,
                prompt_reported: false,
                cache_reported: false,
                generated: 0,
                pending_ids: Vec::new(),
                pending_n: 0,
                finish: None,
                warm,
            },
        );
    }

    /// Drops `thread`'s stream (its connection closes: the server cancels).
    fn cancel(&mut self, thread: usize) {
        if let Some(s) = self.segments.remove(&thread) {
            s.task.abort();
        }
    }

    /// Lets the runtime run once, so that aborted tasks are dropped (and
    /// their connections closed) now, not at the next step: tasks of this
    /// single-threaded runtime only run inside `block_on`.
    fn flush(&mut self) {
        self.rt.block_on(tokio::task::yield_now());
    }

    /// Waits for the next events of live streams (at least one, when any is
    /// live), dropping those of streams cancelled since.
    fn wait(&mut self) -> Vec<(usize, RemoteEvent)> {
        if self.segments.is_empty() {
            return Vec::new();
        }
        let rx = &mut self.rx;
        let mut got = Vec::new();
        // At most WAIT, so that a caller with other work (a server taking
        // new requests) is not held up by slow streams.
        // (The timer is made inside the runtime: it needs its clock.)
        let first = self
            .rt
            .block_on(async { tokio::time::timeout(WAIT, rx.recv()).await });
        if let Ok(Some(first)) = first {
            got.push(first);
        }
        while let Ok(more) = self.rx.try_recv() {
            got.push(more);
        }
        let mut out = Vec::new();
        for (thread, seg, ev) in got {
            let Some(s) = self.segments.get_mut(&thread).filter(|s| s.id == seg) else {
                continue;
            };
            let warm = s.warm;
            match ev {
                Raw::Started(b) if warm => out.push((thread, RemoteEvent::Warmed(b))),
                Raw::Started(b) => out.push((thread, RemoteEvent::Started(b))),
                Raw::Chunk(c) => {
                    for e in s.take(c) {
                        // A warm-up's text is not the thread's.
                        if !(warm && matches!(e, RemoteEvent::Piece { .. })) {
                            out.push((thread, e));
                        }
                    }
                }
                Raw::Done | Raw::Failed(_) if warm => {
                    // Done either way: a failure shows on the children's
                    // own streams.
                    self.segments.remove(&thread);
                }
                Raw::Done => {
                    let finish = s.finish.take();
                    self.segments.remove(&thread);
                    out.push((thread, RemoteEvent::End { finish }));
                }
                Raw::Failed(e) => {
                    self.segments.remove(&thread);
                    out.push((thread, RemoteEvent::Failed(e)));
                }
            }
        }
        out
    }
}

impl Segment {
    /// The engine's events for one chunk of this segment's stream.
    fn take(&mut self, c: weft_remote::Chunk) -> Vec<RemoteEvent> {
        let mut out = Vec::new();
        if let Some(u) = c.usage {
            if !self.prompt_reported {
                self.prompt_reported = true;
                out.push(RemoteEvent::Prompt {
                    server: u.prompt_tokens,
                    local: self.local_prompt,
                });
            }
            if let (false, Some(cached)) = (self.cache_reported, u.cached_tokens) {
                self.cache_reported = true;
                out.push(RemoteEvent::Cache {
                    computed: u.prompt_tokens.saturating_sub(cached),
                    cached,
                });
            }
        }
        let counted = match (&c.token_ids, c.usage) {
            (Some(ids), _) => Some(ids.len()),
            (None, Some(u)) => Some(u.completion_tokens.saturating_sub(self.generated) as usize),
            (None, None) => None,
        };
        if let Some(u) = c.usage {
            self.generated = self.generated.max(u.completion_tokens);
        } else if let Some(ids) = &c.token_ids {
            self.generated += ids.len() as u64;
        }
        if let Some(ids) = c.token_ids {
            self.pending_ids.extend(ids);
        }
        self.pending_n += counted.unwrap_or(0);
        if !c.text.is_empty() {
            let ids = (!self.pending_ids.is_empty()).then(|| std::mem::take(&mut self.pending_ids));
            let n = std::mem::take(&mut self.pending_n);
            out.push(RemoteEvent::Piece {
                text: c.text,
                ids,
                n_tokens: counted.map(|_| n),
            });
        }
        if c.finish_reason.is_some() {
            self.finish = c.finish_reason;
        }
        out
    }
}

impl Engine<'_> {
    fn remote_mut(&mut self) -> &mut RemoteCompute {
        match &mut self.compute {
            Compute::Remote(r) => r,
            Compute::Native { .. } => unreachable!("remote step on a native engine"),
        }
    }

    /// One step of a remote engine: every runnable thread without a stream
    /// starts one; then whatever text has arrived is taken, as sampled
    /// tokens are.
    pub(super) fn step_remote(&mut self) -> Result<(), EngineError> {
        self.admit();
        self.enforce_context()?;
        let mut runnable: Vec<(u64, usize)> = self
            .threads
            .iter()
            .filter(|(_, t)| t.status == Status::Runnable)
            .map(|(id, t)| (t.seq, id))
            .collect();
        runnable.sort_unstable();
        for (_, id) in runnable {
            // The prompt is prefilled by the server, not here.
            let t = &mut self.threads[id];
            t.n_cached = t.tokens.len();
            if self.remote_mut().streaming(id) {
                continue;
            }
            // As before sampling natively: a trigger the context already
            // ends in (a prompt that asks for a fork, a joined parent's
            // text) acts before anything more is generated.
            if self.scan(id)?
                || !self
                    .threads
                    .get(id)
                    .is_some_and(|t| t.status == Status::Runnable)
            {
                self.warm_up(id);
                continue;
            }
            let parent = self.threads[id].parent;
            if parent.is_some_and(|p| self.remote_mut().warming(p)) {
                continue;
            }
            let t = &self.threads[id];
            let p = t.sampler.params();
            let r = t.request;
            // The protocol's penalty while a fork is open (NPR), else the
            // request's. Remote servers count the whole prompt (vLLM,
            // SGLang) or its last 64 tokens (llama-server), not a child's
            // own output as NPR's engine does: approximate, as the joins.
            let penalty = match self.requests[r].fork_penalty {
                Some(p) if self.requests[r].penalty_on => Some(p),
                _ => Some(p.repetition_penalty).filter(|&p| p != 1.0),
            };
            let req = CompletionRequest {
                model: String::new(),
                prompt: t.context.clone(),
                max_tokens: t.max_generated.saturating_sub(t.generated).max(1) as u32,
                temperature: Some(p.temperature),
                top_p: (p.top_p < 1.0).then_some(p.top_p),
                seed: (p.temperature > 0.0).then_some(t.seed),
                stop: Vec::new(),
                ignore_eos: self.requests[r].ignore_eos,
                repetition_penalty: penalty,
            };
            let n_prompt = t.tokens.len();
            let stats = &mut self.requests[r].stats;
            stats.remote_prompt_tokens += n_prompt;
            stats.remote_segments += 1;
            let rid = self.requests[r].id;
            let remote = self.remote_mut();
            let prefer = remote.prefer.get(&rid).copied();
            remote.start(id, req, n_prompt, prefer, false);
        }
        let events = self.remote_mut().wait();
        if events.is_empty() {
            // Nothing streams and nothing can: no request may hang.
            let stuck = !self
                .threads
                .iter()
                .any(|(_, t)| matches!(t.status, Status::Runnable | Status::Queued));
            if stuck {
                let all: Vec<usize> = self.requests.iter().map(|(r, _)| r).collect();
                for r in all {
                    self.complete(r, FinishReason::Error);
                }
            }
        }
        for (id, ev) in events {
            // The server's counts go to the request's stats even when the
            // thread ended with this batch's earlier events.
            let request = self
                .threads
                .get(id)
                .map(|t| t.request)
                .filter(|&r| self.requests.get(r).is_some());
            match (&ev, request) {
                (&RemoteEvent::Warmed(b), Some(r)) => {
                    let rid = self.requests[r].id;
                    self.remote_mut().prefer.entry(rid).or_insert(b);
                    continue;
                }
                (&RemoteEvent::Prompt { server, local }, Some(r)) => {
                    let first = self.threads[id].parent.is_none()
                        && !self.requests[r].prompt_reported
                        && self.requests[r].server_prompt_tokens.is_none();
                    let req = &mut self.requests[r];
                    if first {
                        // The request's own prompt, as the server counted it.
                        req.server_prompt_tokens = Some(server as usize);
                    }
                    let s = &mut req.stats;
                    s.remote_prompt_tokens =
                        (s.remote_prompt_tokens + server as usize).saturating_sub(local);
                    continue;
                }
                (&RemoteEvent::Cache { computed, cached }, Some(r)) => {
                    let root_first =
                        self.threads[id].parent.is_none() && !self.requests[r].prompt_reported;
                    let s = &mut self.requests[r].stats;
                    s.prefill_tokens += computed as usize;
                    s.prefill_tokens_saved += cached as usize;
                    s.remote_cache_segments += 1;
                    if root_first {
                        s.prompt_cached_tokens = cached as usize;
                    }
                    continue;
                }
                (
                    RemoteEvent::Prompt { .. } | RemoteEvent::Cache { .. } | RemoteEvent::Warmed(_),
                    None,
                ) => continue,
                _ => {}
            }
            let live = self
                .threads
                .get(id)
                .is_some_and(|t| t.status == Status::Runnable);
            if !live {
                self.remote_mut().cancel(id);
                continue;
            }
            let r = self.threads[id].request;
            match ev {
                RemoteEvent::Prompt { .. } | RemoteEvent::Cache { .. } | RemoteEvent::Warmed(_) => {
                }
                RemoteEvent::Started(b) => {
                    let rid = self.requests[r].id;
                    self.remote_mut().prefer.entry(rid).or_insert(b);
                }
                RemoteEvent::Piece {
                    text,
                    ids,
                    n_tokens,
                } => {
                    let is_root = self.threads[id].parent.is_none();
                    if is_root && self.requests[r].stats.ttft_ms == 0.0 {
                        self.requests[r].stats.ttft_ms = self.requests[r].now_ms();
                    }
                    // The server's ids where it sends them; else the local
                    // tokenizer's (the count still the server's, if given).
                    let ids = match ids {
                        Some(ids) => ids,
                        None => self.tok.encode(&text, false)?,
                    };
                    let n = n_tokens.unwrap_or(ids.len());
                    let t = &mut self.threads[id];
                    t.tokens.extend(&ids);
                    t.n_cached = t.tokens.len();
                    self.accept_text(id, text, ids, n, None)?;
                    if self
                        .threads
                        .get(id)
                        .is_some_and(|t| t.status == Status::Runnable)
                    {
                        self.scan(id)?;
                    }
                    if !self
                        .threads
                        .get(id)
                        .is_some_and(|t| t.status == Status::Runnable)
                    {
                        self.remote_mut().cancel(id);
                    }
                }
                RemoteEvent::End { finish } => {
                    if finish.as_deref() == Some("length") {
                        self.finish(id, ChildEnd::Length)?;
                        continue;
                    }
                    // End of sequence. A protocol may write text in its
                    // place and go on (Parallel-R1 closes an open
                    // `<Summary>`): the next step streams the new context.
                    let is_root = self.threads[id].parent.is_none();
                    let replace = self.requests[r]
                        .protocol
                        .as_ref()
                        .filter(|_| is_root && !self.requests[r].ignore_eos)
                        .and_then(|p| p.on_end_of_sequence(&self.threads[id].context));
                    match replace {
                        Some(text) => self.write_instead_of_eos(id, text)?,
                        None => self.finish(id, ChildEnd::Eos)?,
                    }
                }
                RemoteEvent::Failed(e) => {
                    self.note(id, e.to_string());
                    self.complete(r, FinishReason::Error);
                }
            }
        }
        self.drop_dead_streams();
        Ok(())
    }

    /// After thread `id` forked before any server saw its context: when its
    /// children continue that context, sends it alone first (`max_tokens:
    /// 1`) so that the server computes the shared prefix once; the children
    /// stream when it is done ([`RemoteCompute::warming`]).
    fn warm_up(&mut self, id: usize) {
        let Some(t) = self.threads.get(id) else {
            return;
        };
        if t.status != Status::Waiting {
            return;
        }
        let shares = t.forks.last().is_some_and(|kids| {
            kids.iter().any(|&k| {
                self.threads
                    .get(k)
                    .is_some_and(|c| c.context.starts_with(&t.context))
            })
        });
        if !shares {
            return;
        }
        let req = CompletionRequest::greedy(t.context.clone(), 1);
        let (r, n_prompt) = (t.request, t.tokens.len());
        let stats = &mut self.requests[r].stats;
        stats.remote_prompt_tokens += n_prompt;
        stats.remote_segments += 1;
        let rid = self.requests[r].id;
        let remote = self.remote_mut();
        let prefer = remote.prefer.get(&rid).copied();
        remote.start(id, req, n_prompt, prefer, true);
    }

    /// Drops the streams of threads that are no longer running (a request
    /// finished or aborted, a fork), closing their connections now. A
    /// warm-up runs on while its thread waits for its children.
    pub(super) fn drop_dead_streams(&mut self) {
        let Compute::Remote(remote) = &mut self.compute else {
            return;
        };
        let dead: Vec<usize> = remote
            .segments
            .keys()
            .copied()
            .filter(|&id| {
                let warm = remote.segments.get(&id).is_some_and(|s| s.warm);
                !self.threads.get(id).is_some_and(|t| {
                    t.status == Status::Runnable || (warm && t.status == Status::Waiting)
                })
            })
            .collect();
        for &id in &dead {
            remote.cancel(id);
        }
        if !dead.is_empty() {
            remote.flush();
        }
        let live: std::collections::HashSet<RequestId> =
            self.requests.iter().map(|(_, q)| q.id).collect();
        remote.prefer.retain(|rid, _| live.contains(rid));
    }
}
