//! The loop: admit threads, batch one step of every runnable thread of every
//! request into one forward pass, sample, watch the text for the protocol's
//! fork triggers, fork and join. KV-merge joins are in `merge`.

mod merge;

use std::sync::Arc;
use std::time::Instant;

use weft_kv::{BlockPool, BlockTable, KvError};
use weft_model::sampling::{Sampler, SamplingParams};
use weft_model::tokenizer::StreamDecoder;
use weft_model::{KvCache, KvSpan, Model, SeqStep, Tokenizer, Workspace};
use weft_protocol::{
    Action, AfterJoin, ChildEnd, ChildPrompt, ChildResult, Detector, Fork, ForkContext, JoinMode,
    Layout, Protocol, Scan,
};

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

    /// Runs `requests` to completion; `observe` sees the trees grow.
    pub fn run(
        &mut self,
        requests: Vec<Request>,
        observe: &mut dyn FnMut(Event),
    ) -> Result<Vec<Response>, EngineError> {
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

    /// Picks this step's threads and chunk sizes, growing their KV tables;
    /// preempts (drops the KV of) the newest other threads when blocks run out.
    fn schedule(&mut self) -> Result<Vec<(usize, usize)>, EngineError> {
        let mut batch = Vec::new();
        let mut budget = self.cfg.max_batch_tokens;
        let order: Vec<usize> = (0..self.threads.len())
            .filter(|&i| self.threads[i].status == Status::Runnable)
            .collect();
        for &id in &order {
            if budget == 0 {
                break;
            }
            let t = &self.threads[id];
            let pending = t.tokens.len() - t.n_cached;
            if pending == 0 {
                continue;
            }
            if self.threads[id].table.is_empty()
                && self.threads[id].n_cached == 0
                && self.threads[id].segments.is_empty()
            {
                // A preempted (or new) thread picks up whatever prefix of its
                // context other tables or the prefix cache still hold. (A
                // merged thread's own tokens do not start a sequence: it
                // recomputes them over its segments.)
                let t = &mut self.threads[id];
                let last = t.tokens.len() - 1;
                t.table = BlockTable::from_prefix_cache(&mut self.pool, &t.tokens[..last])?;
                t.n_cached = t.table.len();
                self.requests[t.request].stats.prefill_tokens_saved += t.n_cached;
            }
            let t = &self.threads[id];
            let mut chunk = (t.tokens.len() - t.n_cached)
                .min(self.cfg.prefill_chunk)
                .min(budget);
            loop {
                let t = &mut self.threads[id];
                match t.table.grow(&mut self.pool, chunk) {
                    Ok(copy) => {
                        if let Some(op) = copy {
                            self.kv.copy_block(op.src, op.dst, op.n_slots);
                        }
                        batch.push((id, chunk));
                        budget -= chunk;
                        break;
                    }
                    Err(KvError::OutOfBlocks { .. }) => {
                        // Only newer threads are preempted (so the oldest
                        // always progresses: no ping-pong), and only those
                        // whose KV frees a block nobody else holds.
                        let pool = &self.pool;
                        let victim = order.iter().rev().copied().find(|&v| {
                            v > id
                                && self.threads[v]
                                    .table
                                    .blocks()
                                    .iter()
                                    .any(|&b| pool.ref_count(b) == Some(1))
                        });
                        match victim {
                            Some(v) => self.preempt(v)?,
                            // Nothing left to take: prefill a smaller chunk.
                            None if chunk > 1 => chunk /= 2,
                            None => break,
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(batch)
    }

    /// Drops a thread's own KV (it is recomputed when the thread runs
    /// again); a merged thread keeps its segments.
    fn preempt(&mut self, id: usize) -> Result<(), EngineError> {
        self.register(id)?;
        let t = &mut self.threads[id];
        t.table.free(&mut self.pool)?;
        t.n_cached = 0;
        self.requests[t.request].stats.preemptions += 1;
        Ok(())
    }

    fn step(
        &mut self,
        batch: &[(usize, usize)],
        observe: &mut dyn FnMut(Event),
    ) -> Result<(), EngineError> {
        let spans: Vec<Vec<KvSpan>> = batch
            .iter()
            .map(|&(id, _)| merge::spans(&self.threads[id].segments))
            .collect();
        let steps: Vec<SeqStep> = batch
            .iter()
            .zip(&spans)
            .map(|(&(id, chunk), shared)| {
                let t = &self.threads[id];
                SeqStep {
                    tokens: &t.tokens[t.n_cached..t.n_cached + chunk],
                    pos_start: t.pos_base + t.n_cached,
                    kv_start: t.n_cached,
                    block_table: t.table.blocks(),
                    all_logits: false,
                    shared,
                }
            })
            .collect();
        let logits = self.model.forward(&mut self.kv, &steps, &mut self.ws)?;
        let mut per_request = vec![0usize; self.requests.len()];
        for &(id, _) in batch {
            per_request[self.threads[id].request] += 1;
        }
        for (r, n) in per_request.into_iter().enumerate() {
            let s = &mut self.requests[r].stats;
            s.max_batch_threads = s.max_batch_threads.max(n);
        }
        for (&(id, chunk), logits) in batch.iter().zip(logits) {
            let t = &mut self.threads[id];
            if t.generated == 0 && t.prompt_tokens > t.n_cached {
                self.requests[t.request].stats.prefill_tokens +=
                    chunk.min(t.prompt_tokens - t.n_cached);
            }
            t.n_cached += chunk;
            if t.n_cached == t.tokens.len() && t.status == Status::Runnable {
                self.advance(id, &logits, observe)?;
            }
        }
        Ok(())
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

    /// Replaces a thread's whole context text, keeping the KV of the common
    /// token prefix. Returns the number of reused tokens. A merged thread's
    /// layout is dropped: its text is re-prefilled as one sequence.
    fn retext(&mut self, id: usize, full: String) -> Result<usize, EngineError> {
        let tokens = self.tok.encode(&full, true)?;
        self.register(id)?;
        let t = &mut self.threads[id];
        t.in_layout = false;
        if !t.segments.is_empty() {
            merge::free_segments(&mut self.pool, &mut t.segments)?;
            t.table.free(&mut self.pool)?;
            t.pos_base = 0;
            t.n_cached = 0;
        }
        t.own_tok_start = 0;
        t.own_text_start = 0;
        let n = t.n_cached.min(t.table.len());
        // At least the last token is recomputed: its logits pick the next one.
        let common = t.tokens[..n]
            .iter()
            .zip(&tokens)
            .take_while(|(a, b)| a == b)
            .count()
            .min(tokens.len().saturating_sub(1));
        if common < t.table.len() {
            t.table.free(&mut self.pool)?;
            t.table = BlockTable::from_prefix_cache(&mut self.pool, &tokens[..common])?;
        }
        t.n_cached = t.table.len();
        t.set_context(full);
        t.tokens = tokens;
        Ok(t.n_cached)
    }

    /// Registers a sequential thread's computed full blocks in the prefix
    /// cache. A merged thread's blocks are not a sequence from position 0
    /// (nor is their KV a function of their tokens alone), so never.
    fn register(&mut self, id: usize) -> Result<(), EngineError> {
        let t = &mut self.threads[id];
        if t.segments.is_empty() && t.pos_base == 0 {
            let n = t.n_cached.min(t.table.len());
            t.table
                .register_full_blocks(&mut self.pool, &t.tokens[..n])?;
        }
        Ok(())
    }

    fn fork(&mut self, id: usize, fork: Fork, full: &str) -> Result<(), EngineError> {
        let r = self.threads[id].request;
        let rules = self.requests[r].protocol.rules();
        let stop = self.requests[r].protocol.child_stop().stop;
        self.register(id)?;
        let at_end = fork.segment_end >= full.len();
        let in_layout = at_end
            && fork
                .children
                .iter()
                .all(|c| matches!(c.prompt, ChildPrompt::Continue { .. }));
        let mut kids = Vec::new();
        for spec in &fork.children {
            let prompt_text = spec.prompt.full_text(full, fork.segment_end);
            let (tokens, kv) = match (&spec.prompt, at_end) {
                (ChildPrompt::Continue { suffix }, true) => {
                    let parent = &self.threads[id];
                    let mut tokens = parent.tokens.clone();
                    tokens.extend(self.tok.encode(suffix, false)?);
                    let segments = merge::fork_segments(&mut self.pool, &parent.segments)?;
                    let table = match parent.table.fork(&mut self.pool) {
                        Ok(t) => t,
                        Err(KvError::OutOfBlocks { .. }) => BlockTable::new(),
                        Err(e) => return Err(e.into()),
                    };
                    let kv = ThreadKv {
                        table,
                        segments,
                        pos_base: parent.pos_base,
                        own_tok_start: parent.tokens.len(),
                        own_text_start: full.len(),
                        in_layout,
                    };
                    (tokens, kv)
                }
                _ => {
                    let tokens = self.tok.encode(&prompt_text, true)?;
                    let table = BlockTable::from_prefix_cache(&mut self.pool, &tokens)?;
                    (tokens, ThreadKv::sequential(table))
                }
            };
            self.requests[r].stats.prefill_tokens_saved += kv.reused();
            let depth = self.threads[id].depth + 1;
            let kid = self.spawn(
                r,
                Some(id),
                depth,
                spec.label.clone(),
                prompt_text,
                tokens,
                kv,
                stop,
                rules.child_temperature,
            );
            kids.push(kid);
        }
        let merge = in_layout && self.cfg.kv_merge && rules.join_mode == JoinMode::KvMerge;
        let t = &mut self.threads[id];
        t.status = Status::Waiting;
        t.forks.push(kids);
        t.pending = Some(fork);
        t.merge_at = merge.then_some(t.tokens.len());
        self.requests[r].rounds += 1;
        self.requests[r].stats.forks += 1;
        Ok(())
    }

    fn finish(
        &mut self,
        id: usize,
        end: ChildEnd,
        observe: &mut dyn FnMut(Event),
    ) -> Result<(), EngineError> {
        let now = self.now_ms();
        let t = &mut self.threads[id];
        if t.status == Status::Finished {
            return Ok(());
        }
        t.status = Status::Finished;
        t.end = end;
        t.ended = now;
        if t.started == 0.0 {
            t.started = now;
        }
        let (r, parent) = (t.request, t.parent);
        self.register(id)?;
        // A child whose parent will merge KV keeps its KV until the join.
        if parent.is_none_or(|p| self.threads[p].merge_at.is_none()) {
            self.release_kv(id)?;
        }
        let t = &self.threads[id];
        observe(Event::ThreadFinished {
            request: r,
            thread: t.local_id,
            depth: t.depth,
            generated_tokens: t.generated,
        });
        match parent {
            None => {
                self.requests[r].done = true;
                // Nothing of the request holds KV any more (a thread cut
                // short while its parent waited would otherwise leak).
                for k in self.requests[r].threads.clone() {
                    self.release_kv(k)?;
                }
                Ok(())
            }
            Some(p) => {
                let kids = self.threads[p].forks.last().cloned().unwrap_or_default();
                if kids
                    .iter()
                    .all(|&k| self.threads[k].status == Status::Finished)
                {
                    self.join(p, &kids, observe)?;
                }
                Ok(())
            }
        }
    }

    fn join(
        &mut self,
        id: usize,
        kids: &[usize],
        observe: &mut dyn FnMut(Event),
    ) -> Result<(), EngineError> {
        let r = self.threads[id].request;
        let protocol = self.requests[r].protocol.clone();
        let results: Vec<ChildResult> = kids
            .iter()
            .map(|&k| protocol.child_result(self.threads[k].generated_text(), self.threads[k].end))
            .collect();
        let merge_at = self.threads[id].merge_at.take();
        let Some(fork) = self.threads[id].pending.take() else {
            return self.release_children(kids);
        };
        let full = self.threads[id].full_text();
        let ctx = self.ctx(id);
        let join = match protocol.join(&full, &fork, &results, ctx) {
            Ok(j) => j,
            Err(e) => {
                self.requests[r]
                    .stats
                    .refused_forks
                    .push(format!("join failed: {e}"));
                self.release_children(kids)?;
                self.threads[id].status = Status::Runnable;
                return self.finish(id, ChildEnd::Stop, observe);
            }
        };
        let merged = match (merge_at, &join.layout) {
            (Some(p), Layout::Merged { append, .. }) => {
                self.merge_join(id, kids, &fork, &results, &join.text, append, p)?
            }
            _ => None,
        };
        let reused = match merged {
            Some(reused) => {
                self.requests[r].stats.kv_merge_joins += 1;
                reused
            }
            None => {
                // Re-prefill: the joined text after the common token prefix
                // is computed again.
                self.release_children(kids)?;
                let reused = self.retext(id, join.text)?;
                let t = &self.threads[id];
                self.requests[r].stats.join_tokens_computed += t.tokens.len() - reused;
                reused
            }
        };
        self.requests[r].stats.prefill_tokens_saved += reused;
        let t = &mut self.threads[id];
        t.status = Status::Runnable;
        observe(Event::Joined {
            request: r,
            thread: t.local_id,
            depth: t.depth,
            children: kids.len(),
            reused_tokens: reused,
        });
        match join.then {
            AfterJoin::Continue => {}
            AfterJoin::FinishAt(s) => t.stop = Some(s),
            AfterJoin::Finish => return self.finish(id, ChildEnd::Stop, observe),
        }
        Ok(())
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
