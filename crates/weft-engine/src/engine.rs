//! The loop: admit threads, batch one step of every runnable thread of every
//! request into one forward pass, sample, watch the text for the protocol's
//! fork triggers, fork and join. The scheduler and the forward step are in
//! `schedule`, forks, finishes and re-prefill joins in `fork_join`, KV-merge
//! joins in `merge`.

mod fork_join;
mod merge;
mod schedule;

use std::sync::Arc;
use std::time::Instant;

use weft_kv::{BlockPool, BlockTable};
use weft_model::sampling::{Sampler, SamplingParams};
use weft_model::tokenizer::StreamDecoder;
use weft_model::{KvCache, Model, Tokenizer, Workspace};
use weft_protocol::{Action, ChildEnd, Detector, Fork, ForkContext, Protocol, Scan};

use merge::KvSegment;

use crate::config::EngineConfig;
use crate::tree::{Event, RequestStats, Response, ThreadRecord};
use crate::EngineError;

/// One request: a prompt and the protocol its model speaks.
pub struct Request {
    pub prompt: String,
    pub protocol: Arc<dyn Protocol>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// Waiting for a live-thread slot.
    Queued,
    Runnable,
    /// Waiting for its children.
    Waiting,
    Finished,
}

struct Thread {
    request: usize,
    /// Index within its request (the trace's id).
    local_id: usize,
    parent: Option<usize>,
    depth: u32,
    label: String,
    /// The thread's whole context text: prompt, then generated text (joins
    /// rewrite it).
    context: String,
    /// Bytes of `context` that are prompt (shrinks when a join rewrites
    /// part of the prompt, as an APR fork written in the prompt does).
    prompt_len: usize,
    prompt_tokens: usize,
    tokens: Vec<u32>,
    /// Tokens whose KV is in the cache.
    n_cached: usize,
    /// The thread's own KV: `tokens[i]` in slot `i`, at RoPE position
    /// `pos_base + i`.
    table: BlockTable,
    /// KV the thread sees in full before its own table (after a KV-merge
    /// join: the prefix and every child's KV, where they were written).
    /// Empty for a thread whose context is one sequential run.
    segments: Vec<KvSegment>,
    pos_base: usize,
    /// Where the thread's own, not yet merged, part starts: `tokens` index
    /// and byte offset in `context` (what a KV-merge join checks and adds).
    own_tok_start: usize,
    own_text_start: usize,
    /// Its KV still follows its parent's layout at the fork (a join that
    /// re-tokenized its text clears this, and the parent cannot merge it).
    in_layout: bool,
    status: Status,
    generated: usize,
    decoder: StreamDecoder,
    detector: Detector,
    /// Child stop string, or a parent's `FinishAt`.
    stop: Option<&'static str>,
    end: ChildEnd,
    sampler: Sampler,
    /// Children of each fork, in order.
    forks: Vec<Vec<usize>>,
    pending: Option<Fork>,
    /// Own tokens at the pending fork, when its join may merge KV.
    merge_at: Option<usize>,
    started: f64,
    ended: f64,
}

impl Thread {
    fn full_text(&self) -> String {
        self.context.clone()
    }

    /// What the thread generated (after joins: everything after the part of
    /// its prompt that is unchanged).
    fn generated_text(&self) -> &str {
        self.context.get(self.prompt_len..).unwrap_or_default()
    }

    /// Takes a join's new context text; the prompt part shrinks to what the
    /// join left unchanged.
    fn set_context(&mut self, full: String) {
        let same = self
            .context
            .bytes()
            .zip(full.bytes())
            .take_while(|(a, b)| a == b)
            .count();
        let mut keep = self.prompt_len.min(same);
        if keep < self.prompt_len {
            // The join rewrote part of the prompt: the generated text starts
            // at the rewritten line.
            keep = full.as_bytes()[..keep]
                .iter()
                .rposition(|&c| c == b'\n')
                .map_or(0, |i| i + 1);
        }
        self.prompt_len = keep;
        self.detector.resume_at(full.len());
        self.context = full;
        self.decoder = StreamDecoder::default();
    }
}

/// Where a new thread's KV comes from and how its positions run.
struct ThreadKv {
    table: BlockTable,
    segments: Vec<KvSegment>,
    pos_base: usize,
    own_tok_start: usize,
    own_text_start: usize,
    in_layout: bool,
}

impl ThreadKv {
    /// One sequential run from position 0 (roots, fresh prompts).
    fn sequential(table: BlockTable) -> ThreadKv {
        ThreadKv {
            table,
            segments: Vec::new(),
            pos_base: 0,
            own_tok_start: 0,
            own_text_start: 0,
            in_layout: false,
        }
    }

    /// Tokens whose KV the new thread finds computed.
    fn reused(&self) -> usize {
        self.table.len() + self.segments.iter().map(KvSegment::len).sum::<usize>()
    }
}

struct RequestState {
    protocol: Arc<dyn Protocol>,
    root: usize,
    threads: Vec<usize>,
    rounds: u32,
    generated: usize,
    stats: RequestStats,
    done: bool,
}

/// Runs thread trees for a batch of requests on one model.
pub struct Engine<'m> {
    model: &'m Model,
    tok: &'m Tokenizer,
    cfg: EngineConfig,
    kv: KvCache,
    pool: BlockPool,
    ws: Workspace,
    threads: Vec<Thread>,
    requests: Vec<RequestState>,
    clock: Instant,
}

impl<'m> Engine<'m> {
    pub fn new(
        model: &'m Model,
        tok: &'m Tokenizer,
        cfg: EngineConfig,
    ) -> Result<Engine<'m>, EngineError> {
        let kv = KvCache::with_budget_mib(&model.config, cfg.block_size, cfg.kv_budget_mib);
        let pool = BlockPool::new(kv.n_blocks, cfg.block_size)?;
        Ok(Engine {
            model,
            tok,
            cfg,
            kv,
            pool,
            ws: Workspace::default(),
            threads: Vec::new(),
            requests: Vec::new(),
            clock: Instant::now(),
        })
    }

    /// Free KV blocks (plus cached ones that may be evicted).
    pub fn kv_blocks_available(&self) -> usize {
        self.pool.n_available()
    }

    fn now_ms(&self) -> f64 {
        self.clock.elapsed().as_secs_f64() * 1e3
    }

    fn sampler(&self, seed_offset: u64, temperature: Option<f32>) -> Sampler {
        let mut p: SamplingParams = self.cfg.sampling.clone();
        p.seed = p.seed.wrapping_add(seed_offset);
        if let Some(t) = temperature {
            p.temperature = t;
        }
        Sampler::new(p)
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn(
        &mut self,
        request: usize,
        parent: Option<usize>,
        depth: u32,
        label: String,
        prompt_text: String,
        tokens: Vec<u32>,
        kv: ThreadKv,
        stop: Option<&'static str>,
        temperature: Option<f32>,
    ) -> usize {
        let id = self.threads.len();
        let ThreadKv {
            table,
            segments,
            pos_base,
            own_tok_start,
            own_text_start,
            in_layout,
        } = kv;
        let n_cached = table.len();
        let local_id = self.requests[request].threads.len();
        let sampler = self.sampler(id as u64, temperature);
        self.threads.push(Thread {
            request,
            local_id,
            parent,
            depth,
            label,
            prompt_tokens: tokens.len(),
            // The root's prompt may itself end in a trigger (a prompt that
            // asks for a fork); a child's prompt holds its parent's trigger.
            detector: if parent.is_none() {
                Detector::new(0)
            } else {
                Detector::for_prompt(prompt_text.len())
            },
            prompt_len: prompt_text.len(),
            context: prompt_text,
            tokens,
            n_cached,
            table,
            segments,
            pos_base,
            own_tok_start,
            own_text_start,
            in_layout,
            status: Status::Queued,
            generated: 0,
            decoder: StreamDecoder::default(),
            stop,
            end: ChildEnd::Eos,
            sampler,
            forks: Vec::new(),
            pending: None,
            merge_at: None,
            started: 0.0,
            ended: 0.0,
        });
        self.requests[request].threads.push(id);
        id
    }

    /// Runs `requests` to completion; `observe` sees the trees grow. The
    /// responses are this call's, in request order: an engine can be reused
    /// for batch after batch (what an earlier call left behind, even after an
    /// error, is given back first; the prefix cache stays warm).
    pub fn run(
        &mut self,
        requests: Vec<Request>,
        observe: &mut dyn FnMut(Event),
    ) -> Result<Vec<Response>, EngineError> {
        for id in 0..self.threads.len() {
            self.release_kv(id)?;
        }
        self.threads.clear();
        self.requests.clear();
        self.clock = Instant::now();
        for req in requests {
            let tokens = self.tok.encode(&req.prompt, true)?;
            if tokens.is_empty() {
                return Err(EngineError::Invalid("empty prompt".into()));
            }
            let r = self.requests.len();
            self.requests.push(RequestState {
                protocol: req.protocol,
                root: 0,
                threads: Vec::new(),
                rounds: 0,
                generated: 0,
                stats: RequestStats::default(),
                done: false,
            });
            let table = BlockTable::from_prefix_cache(&mut self.pool, &tokens)?;
            let root = self.spawn(
                r,
                None,
                0,
                "root".into(),
                req.prompt,
                tokens,
                ThreadKv::sequential(table),
                None,
                None,
            );
            self.requests[r].root = root;
        }
        while !self.requests.iter().all(|r| r.done) {
            self.admit(observe);
            let batch = self.schedule()?;
            if batch.is_empty() {
                // The next step of no thread fits, even with every other
                // thread's KV dropped: end the oldest runnable thread at its
                // current length (a per-thread outcome, not a failed run).
                if let Some(id) = self
                    .threads
                    .iter()
                    .position(|t| t.status == Status::Runnable)
                {
                    let r = self.threads[id].request;
                    let msg = format!(
                        "thread {} stopped at {} tokens: the KV cache ({} blocks of {} tokens) cannot hold more",
                        self.threads[id].local_id,
                        self.threads[id].tokens.len(),
                        self.pool.n_blocks(),
                        self.cfg.block_size
                    );
                    self.requests[r].stats.refused_forks.push(msg);
                    self.finish(id, ChildEnd::Length, observe)?;
                    continue;
                }
                let waiting: Vec<String> = self
                    .threads
                    .iter()
                    .filter(|t| t.status == Status::Runnable)
                    .map(|t| format!("{} tokens ({} cached)", t.tokens.len(), t.n_cached))
                    .collect();
                return Err(EngineError::Invalid(format!(
                    "the KV cache ({} blocks of {} tokens, {} available) cannot hold the next step of any thread: {}; raise the KV budget",
                    self.pool.n_blocks(),
                    self.cfg.block_size,
                    self.pool.n_available(),
                    waiting.join(", ")
                )));
            }
            self.step(&batch, observe)?;
        }
        Ok((0..self.requests.len()).map(|r| self.response(r)).collect())
    }

    fn live(&self, request: Option<usize>) -> usize {
        self.threads
            .iter()
            .filter(|t| t.status == Status::Runnable && request.is_none_or(|r| t.request == r))
            .count()
    }

    fn admit(&mut self, observe: &mut dyn FnMut(Event)) {
        for id in 0..self.threads.len() {
            if self.threads[id].status != Status::Queued {
                continue;
            }
            let r = self.threads[id].request;
            if self.live(None) >= self.cfg.max_live_threads
                || self.live(Some(r)) >= self.cfg.max_live_threads_per_request
            {
                continue;
            }
            let now = self.now_ms();
            let t = &mut self.threads[id];
            t.status = Status::Runnable;
            t.started = now;
            let parent = t.parent.map(|p| self.threads[p].local_id);
            let t = &self.threads[id];
            observe(Event::ThreadStarted {
                request: r,
                thread: t.local_id,
                parent,
                depth: t.depth,
                label: &t.label,
            });
        }
    }

    fn ctx(&self, id: usize) -> ForkContext {
        ForkContext {
            depth: self.threads[id].depth,
            rounds: self.requests[self.threads[id].request].rounds,
        }
    }

    /// After a thread's context is fully computed: look for a trigger, else
    /// sample its next token.
    fn advance(
        &mut self,
        id: usize,
        logits: &[f32],
        observe: &mut dyn FnMut(Event),
    ) -> Result<(), EngineError> {
        if self.scan(id, observe)? {
            return Ok(());
        }
        let r = self.threads[id].request;
        let next = self.threads[id].sampler.sample(logits);
        if self.tok.is_stop(next) {
            return self.finish(id, ChildEnd::Eos, observe);
        }
        let t = &mut self.threads[id];
        t.tokens.push(next);
        t.generated += 1;
        self.requests[r].generated += 1;
        if let Some(piece) = t.decoder.push(self.tok, next)? {
            t.context.push_str(&piece);
            observe(Event::Text {
                request: r,
                thread: t.local_id,
                depth: t.depth,
                piece: &piece,
            });
            if let Some(stop) = t.stop {
                let mut from = t
                    .context
                    .len()
                    .saturating_sub(piece.len() + stop.len())
                    .max(t.prompt_len);
                while !t.context.is_char_boundary(from) {
                    from -= 1;
                }
                if let Some(pos) = t.context[from..].find(stop).map(|p| p + from) {
                    t.context.truncate(pos + stop.len());
                    return self.finish(id, ChildEnd::Stop, observe);
                }
            }
        }
        let t = &self.threads[id];
        if t.generated >= self.cfg.max_tokens_per_thread {
            return self.finish(id, ChildEnd::Length, observe);
        }
        if self.requests[r].generated >= self.cfg.max_tokens_per_request {
            let live: Vec<usize> = self.requests[r]
                .threads
                .iter()
                .copied()
                .filter(|&c| matches!(self.threads[c].status, Status::Runnable | Status::Queued))
                .collect();
            for c in live {
                self.finish(c, ChildEnd::Length, observe)?;
            }
        }
        Ok(())
    }

    /// Runs the protocol's detector over the thread's new text. Returns true
    /// when the thread forked or ended (no token is sampled then).
    fn scan(&mut self, id: usize, observe: &mut dyn FnMut(Event)) -> Result<bool, EngineError> {
        let r = self.threads[id].request;
        let protocol = self.requests[r].protocol.clone();
        let ctx = self.ctx(id);
        let full = self.threads[id].full_text();
        let scan = self.threads[id]
            .detector
            .scan(protocol.as_ref(), &full, ctx);
        match scan {
            Scan::Continue => Ok(false),
            Scan::Refuse(refusal) => {
                self.requests[r]
                    .stats
                    .refused_forks
                    .push(format!("{:?}", refusal.reason));
                match refusal.action {
                    Action::Sequential => Ok(false),
                    Action::Rewrite {
                        truncate_to,
                        append,
                    } => {
                        let text =
                            format!("{}{}", full.get(..truncate_to).unwrap_or(&full), append);
                        self.retext(id, text)?;
                        Ok(true)
                    }
                    Action::Finish { truncate_to } => {
                        let text = full.get(..truncate_to).unwrap_or(&full).to_string();
                        let t = &mut self.threads[id];
                        t.prompt_len = t.prompt_len.min(text.len());
                        t.context = text;
                        self.finish(id, ChildEnd::Stop, observe)?;
                        Ok(true)
                    }
                }
            }
            Scan::Fork(fork) => {
                let depth = self.threads[id].depth;
                if fork.children.len() > self.cfg.max_children_per_fork
                    || depth >= self.cfg.max_depth
                {
                    self.requests[r].stats.refused_forks.push(format!(
                        "engine limit: {} children at depth {depth} (max {} children, depth < {})",
                        fork.children.len(),
                        self.cfg.max_children_per_fork,
                        self.cfg.max_depth
                    ));
                    return Ok(false);
                }
                self.fork(id, fork, &full)?;
                Ok(true)
            }
        }
    }

    fn critical_path(&self, id: usize) -> usize {
        let t = &self.threads[id];
        t.generated
            + t.forks
                .iter()
                .map(|kids| {
                    kids.iter()
                        .map(|&k| self.critical_path(k))
                        .max()
                        .unwrap_or(0)
                })
                .sum::<usize>()
    }

    fn response(&self, r: usize) -> Response {
        let req = &self.requests[r];
        let threads: Vec<ThreadRecord> = req
            .threads
            .iter()
            .map(|&id| {
                let t = &self.threads[id];
                ThreadRecord {
                    id: t.local_id,
                    parent: t.parent.map(|p| self.threads[p].local_id),
                    text: t.generated_text().to_string(),
                    prompt_tokens: t.prompt_tokens,
                    generated_tokens: t.generated,
                    start_ms: t.started,
                    end_ms: t.ended,
                    tokens: t.tokens.clone(),
                }
            })
            .collect();
        let mut stats = req.stats.clone();
        stats.total_tokens = threads.iter().map(|t| t.generated_tokens).sum();
        stats.critical_path_tokens = self.critical_path(req.root);
        stats.parallelism = stats.total_tokens as f64 / stats.critical_path_tokens.max(1) as f64;
        stats.wall_ms = threads.iter().map(|t| t.end_ms).fold(0.0, f64::max);
        Response {
            text: self.threads[req.root].generated_text().to_string(),
            threads,
            stats,
        }
    }
}
