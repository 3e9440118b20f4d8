//! The loop: requests join at any time ([`Engine::add`]); every
//! [`Engine::step`] admits threads, batches one chunk of every runnable
//! thread of every request into one forward pass, samples, watches the text
//! for the protocol's fork triggers, forks and joins; [`Engine::abort`]
//! drops a whole tree. The scheduler and the forward step are in
//! `schedule`, forks, finishes and re-prefill joins in `fork_join`, KV-merge
//! joins in `merge`, the per-thread state in `thread`.

mod fork_join;
mod merge;
mod remote;
mod schedule;
mod thread;

use std::collections::HashMap;
use std::time::Instant;

use weft_kv::{BlockPool, BlockTable};
use weft_model::sampling::{Sampler, SamplingParams};
use weft_model::tokenizer::StreamDecoder;
use weft_model::{KvCache, Model, Tokenizer, Workspace};
use weft_protocol::{Action, ChildEnd, Detector, ForkContext, Scan};

pub use thread::thread_seed;
use thread::{RequestState, Status, Thread, ThreadKv};

use crate::config::EngineConfig;
use crate::request::{FinishReason, RequestId, RequestSpec};
use crate::slab::Slab;
use crate::tree::{Event, Response, ThreadRecord, TokenLogprobs};
use crate::validate::{validate, ValidRequest, ValidationError};
use crate::EngineError;

/// Runs thread trees for any number of requests on one model, for as long
/// as it lives. Single-threaded: the caller owns the loop (`weft run`
/// calls [`Engine::step`] directly; the server runs it on its own OS
/// thread behind a channel).
pub struct Engine<'m> {
    compute: Compute<'m>,
    /// The model's context length (tokens).
    max_context: usize,
    tok: &'m Tokenizer,
    cfg: EngineConfig,
    pool: BlockPool,
    threads: Slab<Thread>,
    requests: Slab<RequestState>,
    by_id: HashMap<RequestId, usize>,
    next_id: u64,
    next_seq: u64,
    /// Events not yet returned by `step` (an abort's `Finished`, too).
    events: Vec<Event>,
    /// Threads preempted while this step's batch is being applied (a
    /// join that made room): their logits were computed over the KV just
    /// dropped, so they are not applied; the thread recomputes.
    preempted_in_step: Vec<usize>,
}

/// Where tokens come from. (One per engine: the variants' sizes do not
/// matter.)
#[allow(clippy::large_enum_variant)]
pub(crate) enum Compute<'m> {
    /// This process's model over its own paged KV cache.
    Native {
        model: &'m Model,
        kv: KvCache,
        ws: Workspace,
    },
    /// OpenAI-compatible servers (`weft_remote`): each runnable thread
    /// streams from one of them; the block pool is bookkeeping only.
    Remote(remote::RemoteCompute),
}

/// A new thread: where it hangs in the tree and what it starts from.
struct NewThread {
    request: usize,
    parent: Option<usize>,
    label: String,
    prompt_text: String,
    tokens: Vec<u32>,
    no_bos: bool,
    kv: ThreadKv,
    stop: Option<&'static str>,
    keep_after: u32,
    sampling: SamplingParams,
    max_generated: usize,
}

impl<'m> Engine<'m> {
    /// An engine with the KV memory `cfg.kv_budget_mib` allows. Errors: a
    /// budget too small for one block.
    pub fn new(
        model: &'m Model,
        tok: &'m Tokenizer,
        cfg: EngineConfig,
    ) -> Result<Engine<'m>, EngineError> {
        let mut kv = KvCache::with_budget_mib(&model.config, cfg.block_size, cfg.kv_budget_mib);
        if cfg.reserve_kv {
            kv.reserve();
        }
        let pool = BlockPool::new(kv.n_blocks, cfg.block_size)?;
        Ok(Engine {
            max_context: model.config.max_context,
            compute: Compute::Native {
                model,
                kv,
                ws: Workspace::default(),
            },
            tok,
            cfg,
            pool,
            threads: Slab::default(),
            requests: Slab::default(),
            by_id: HashMap::new(),
            next_id: 0,
            next_seq: 0,
            events: Vec::new(),
            preempted_in_step: Vec::new(),
        })
    }

    /// An engine whose threads stream from remote OpenAI-compatible
    /// servers (`pool`) instead of a local model: the same requests, trees,
    /// protocols, limits, events and stats. `tok` must be the served
    /// model's tokenizer (it counts tokens and builds joined text);
    /// `max_context` is the served context length. Joins re-prefill (the
    /// servers' prefix caches make that cheap); KV-merge protocols run with
    /// `kv_merge` off, which their stats report as `approximate_join`.
    pub fn remote(
        tok: &'m Tokenizer,
        mut cfg: EngineConfig,
        pool: weft_remote::Pool,
        max_context: usize,
    ) -> Result<Engine<'m>, EngineError> {
        cfg.kv_merge = false;
        // Bookkeeping only (no table grows here): sized to one full
        // context, so validation's KV-capacity check is the context's.
        let pool_blocks =
            BlockPool::new(max_context.div_ceil(cfg.block_size).max(1), cfg.block_size)?;
        Ok(Engine {
            max_context,
            compute: Compute::Remote(remote::RemoteCompute::new(pool)?),
            tok,
            cfg,
            pool: pool_blocks,
            threads: Slab::default(),
            requests: Slab::default(),
            by_id: HashMap::new(),
            next_id: 0,
            next_seq: 0,
            events: Vec::new(),
            preempted_in_step: Vec::new(),
        })
    }

    /// Applies a copy-on-write of a block's first slots (native KV only:
    /// remote threads hold no KV here).
    pub(crate) fn copy_block(&mut self, op: weft_kv::CopyOp) {
        if let Compute::Native { kv, .. } = &mut self.compute {
            kv.copy_block(op.src, op.dst, op.n_slots);
        }
    }

    /// Whether threads stream from remote servers ([`Engine::remote`]).
    pub fn is_remote(&self) -> bool {
        matches!(self.compute, Compute::Remote(_))
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Free KV blocks (plus cached ones that may be evicted).
    pub fn kv_blocks_available(&self) -> usize {
        self.pool.n_available()
    }

    /// KV blocks in all.
    pub fn kv_blocks_total(&self) -> usize {
        self.pool.n_blocks()
    }

    /// Requests in flight.
    pub fn num_requests(&self) -> usize {
        self.requests.len()
    }

    /// Requests with a thread admitted (running), and requests whose root
    /// still waits for a slot (waiting).
    pub fn request_counts(&self) -> (usize, usize) {
        let waiting = self
            .requests
            .iter()
            .filter(|(_, r)| self.threads[r.root].status == Status::Queued)
            .count();
        (self.requests.len() - waiting, waiting)
    }

    /// Threads decoding now (runnable), and threads waiting for a slot.
    pub fn num_threads(&self) -> (usize, usize) {
        let count = |s: Status| self.threads.iter().filter(|(_, t)| t.status == s).count();
        (count(Status::Runnable), count(Status::Queued))
    }

    /// Checks every KV invariant: each block's reference count equals the
    /// tables and segments holding it (`weft_kv::BlockPool::audit`).
    pub fn audit(&self) -> Result<(), EngineError> {
        let tables = self.threads.iter().flat_map(|(_, t)| {
            std::iter::once(&t.table).chain(t.segments.iter().map(|s| &s.table))
        });
        Ok(self.pool.audit(tables)?)
    }

    /// Validates `spec` against this engine's model and limits without
    /// adding it (what a server does at the door).
    pub fn validate(&self, spec: RequestSpec) -> Result<ValidRequest, ValidationError> {
        let kv_tokens = self.pool.n_blocks() * self.cfg.block_size;
        validate(spec, self.tok, self.max_context, kv_tokens, &self.cfg)
    }

    /// Adds a request; it starts at the next [`Engine::step`]. Works at any
    /// time, also while other requests run. Errors: the spec breaks a rule
    /// ([`EngineError::Validation`]), or the KV pool is inconsistent.
    pub fn add(&mut self, spec: RequestSpec) -> Result<RequestId, EngineError> {
        let valid = self.validate(spec)?;
        self.add_valid(valid)
    }

    /// Adds a request that [`Engine::validate`] accepted.
    pub fn add_valid(&mut self, v: ValidRequest) -> Result<RequestId, EngineError> {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        let fork_penalty = v
            .protocol
            .as_ref()
            .and_then(|p| p.rules().child_repetition_penalty);
        // Multiverse's and NPR's engines stop every request, the root's
        // too, on the children's close tag (`Protocol::root_stop`).
        let root_stop = v.protocol.as_ref().map(|p| p.root_stop());
        let r = self.requests.insert(RequestState {
            id,
            protocol: v.protocol,
            root: usize::MAX,
            threads: Vec::new(),
            rounds: 0,
            generated: 0,
            stats: Default::default(),
            done: None,
            arrived: Instant::now(),
            sampling: v.sampling.clone(),
            stop: v.stop,
            stop_token_ids: v.stop_token_ids,
            ignore_eos: v.ignore_eos,
            logprobs: v.logprobs,
            max_thread_tokens: v.max_thread_tokens,
            max_children: v.max_children,
            max_depth: v.max_depth,
            max_total_tokens: v.max_total_tokens,
            kv_merge: v.kv_merge,
            fork_penalty,
            penalty_on: false,
            prompt_reported: false,
            server_prompt_tokens: None,
        });
        self.by_id.insert(id, r);
        // At least the last prompt token is computed: its logits pick the
        // first generated token (a prompt cached in full would never run).
        let cacheable = &v.tokens[..v.tokens.len() - 1];
        let table = match BlockTable::from_prefix_cache(&mut self.pool, cacheable) {
            Ok(t) => t,
            Err(e) => {
                self.requests.remove(r);
                self.by_id.remove(&id);
                return Err(e.into());
            }
        };
        let root = self.spawn(NewThread {
            request: r,
            parent: None,
            label: "root".into(),
            prompt_text: v.text,
            tokens: v.tokens,
            no_bos: v.no_bos,
            kv: ThreadKv::sequential(table),
            stop: root_stop.and_then(|s| s.stop),
            keep_after: root_stop.map_or(0, |s| s.keep_after),
            sampling: v.sampling,
            max_generated: v.max_tokens,
        });
        self.requests[r].root = root;
        self.requests[r].stats.prompt_cached_tokens = self.threads[root].n_cached;
        Ok(id)
    }

    /// Whether any request is in flight or any event is waiting.
    pub fn has_work(&self) -> bool {
        !self.requests.is_empty() || !self.events.is_empty()
    }

    /// Cancels request `id` and every thread of its tree, and gives their
    /// KV back at once. Its `Finished` event (reason `abort`) comes with the
    /// next [`Engine::step`]. Returns false when `id` is not in flight.
    pub fn abort(&mut self, id: RequestId) -> bool {
        let Some(&r) = self.by_id.get(&id) else {
            return false;
        };
        self.complete(r, FinishReason::Abort);
        self.reap();
        // Remote threads: their connections close now (the servers stop).
        self.drop_dead_streams();
        true
    }

    /// Advances every runnable thread of every request by one batch (one
    /// chunk of prompt or one decode token each) and returns what happened.
    /// A request's end comes as `Event::Finished`; the request is gone from
    /// the engine afterwards. Errors are the engine's own (a model error, an
    /// inconsistent KV pool), never a request's: a request that cannot go on
    /// finishes with reason `error`.
    pub fn step(&mut self) -> Result<Vec<Event>, EngineError> {
        if !self.requests.is_empty() {
            let result = self.step_inner();
            self.reap();
            result?;
        }
        Ok(std::mem::take(&mut self.events))
    }

    fn step_inner(&mut self) -> Result<(), EngineError> {
        if self.is_remote() {
            return self.step_remote();
        }
        self.admit();
        self.enforce_context()?;
        let batch = self.schedule()?;
        if !batch.is_empty() {
            return self.forward_batch(&batch);
        }
        // The next step of no thread fits, even with every newer thread's
        // own KV dropped (a merged thread's segments stay). First come,
        // first served across requests, as the scheduler preempts: in the
        // newest request with a runnable thread, end its oldest runnable
        // thread at its current length (a per-thread outcome, not a failed
        // run), which frees its KV, and its request's once that ends, for
        // the older requests.
        let victim = self
            .threads
            .iter()
            .filter(|(_, t)| t.status == Status::Runnable)
            .max_by_key(|(_, t)| (self.requests[t.request].id, std::cmp::Reverse(t.seq)))
            .map(|(id, _)| id);
        if let Some(id) = victim {
            let t = &self.threads[id];
            let msg = format!(
                "thread {} stopped at {} tokens: the KV cache ({} blocks of {} tokens) cannot hold more",
                t.local_id,
                t.tokens.len(),
                self.pool.n_blocks(),
                self.cfg.block_size
            );
            self.note(id, msg);
            return self.finish(id, ChildEnd::Length);
        }
        // Nothing can run and nothing will: no request may hang forever.
        let stuck: Vec<usize> = self.requests.iter().map(|(r, _)| r).collect();
        for r in stuck {
            self.requests[r]
                .stats
                .refused_forks
                .push("no thread of the request can run (engine limits)".into());
            self.complete(r, FinishReason::Error);
        }
        Ok(())
    }

    /// Records a note on thread `id` (engine index) for its request: in
    /// `stats.refused_forks`, and as an [`Event::Note`] for live trees.
    pub(crate) fn note(&mut self, id: usize, text: String) {
        let t = &self.threads[id];
        let (r, thread, depth) = (t.request, t.local_id, t.depth);
        self.events.push(Event::Note {
            request: self.requests[r].id,
            thread,
            depth,
            text: text.clone(),
        });
        self.requests[r].stats.refused_forks.push(text);
    }

    /// Runs `specs` to completion (a thin loop over `add` and `step` for
    /// batch users); `observe` sees every event, also those of requests
    /// added by others. Returns this call's responses, in order. Errors: a
    /// spec that fails validation (nothing is added then), or an engine
    /// error (this call's requests are aborted).
    pub fn run(
        &mut self,
        specs: Vec<RequestSpec>,
        observe: &mut dyn FnMut(&Event),
    ) -> Result<Vec<Response>, EngineError> {
        let valid = specs
            .into_iter()
            .map(|s| self.validate(s))
            .collect::<Result<Vec<_>, _>>()?;
        let mut ids = Vec::with_capacity(valid.len());
        for v in valid {
            ids.push(self.add_valid(v)?);
        }
        let mut out: HashMap<RequestId, Response> = HashMap::new();
        while out.len() < ids.len() {
            let events = match self.step() {
                Ok(e) => e,
                Err(e) => {
                    for &id in &ids {
                        self.abort(id);
                    }
                    self.events.clear();
                    return Err(e);
                }
            };
            for e in events {
                observe(&e);
                if let Event::Finished {
                    request, response, ..
                } = e
                {
                    if ids.contains(&request) {
                        out.insert(request, *response);
                    }
                }
            }
        }
        Ok(ids.iter().filter_map(|id| out.remove(id)).collect())
    }

    fn spawn(&mut self, n: NewThread) -> usize {
        let seq = self.next_seq;
        self.next_seq += 1;
        let ThreadKv {
            table,
            segments,
            pos_base,
            own_tok_start,
            own_text_start,
            in_layout,
        } = n.kv;
        let n_cached = table.len();
        let prompt_len_tokens = n.tokens.len();
        let output_start = if n.parent.is_some() {
            n.prompt_text.len()
        } else {
            0
        };
        let local_id = self.requests[n.request].threads.len();
        let depth = n.parent.map_or(0, |p| self.threads[p].depth + 1);
        let id = self.threads.insert(Thread {
            request: n.request,
            seq,
            local_id,
            parent: n.parent,
            depth,
            label: n.label,
            prompt_tokens: n.tokens.len(),
            // A prompt may end in a trigger (a prompt that asks for a fork,
            // trailing whitespace aside): that one fires. Triggers earlier in
            // a prompt (an example block, a child's copy of its parent's
            // trigger) are text, not instructions.
            detector: if n.parent.is_none() {
                Detector::for_prompt(n.prompt_text.trim_end().len())
            } else {
                Detector::for_prompt(n.prompt_text.len())
            },
            prompt_len: n.prompt_text.len(),
            emitted: n.prompt_text.len(),
            context: n.prompt_text,
            tokens: n.tokens,
            no_bos: n.no_bos,
            n_cached,
            table,
            segments,
            pos_base,
            own_tok_start,
            own_text_start,
            in_layout,
            status: Status::Queued,
            generated: 0,
            max_generated: n.max_generated,
            decoder: StreamDecoder::default(),
            stop: n.stop,
            keep_after: n.keep_after,
            after_stop: None,
            history_start: prompt_len_tokens,
            output_start,
            end: ChildEnd::Eos,
            seed: n.sampling.seed,
            sampler: Sampler::new(n.sampling),
            forks: Vec::new(),
            pending: None,
            merge_at: None,
            started: 0.0,
            ended: 0.0,
            samples: Vec::new(),
            past_samples: Vec::new(),
            samples_exact: true,
        });
        self.requests[n.request].threads.push(id);
        id
    }

    fn live(&self, request: Option<usize>) -> usize {
        self.threads
            .iter()
            .filter(|(_, t)| t.status == Status::Runnable && request.is_none_or(|r| t.request == r))
            .count()
    }

    fn admit(&mut self) {
        let mut queued: Vec<(u64, usize)> = self
            .threads
            .iter()
            .filter(|(_, t)| t.status == Status::Queued)
            .map(|(id, t)| (t.seq, id))
            .collect();
        queued.sort_unstable();
        for (_, id) in queued {
            let r = self.threads[id].request;
            if self.live(None) >= self.cfg.max_live_threads
                || self.live(Some(r)) >= self.cfg.max_live_threads_per_request
            {
                continue;
            }
            let now = self.requests[r].now_ms();
            let t = &mut self.threads[id];
            t.status = Status::Runnable;
            t.started = now;
            let parent = t.parent.map(|p| self.threads[p].local_id);
            let t = &self.threads[id];
            self.events.push(Event::ThreadStarted {
                request: self.requests[r].id,
                thread: t.local_id,
                parent,
                depth: t.depth,
                label: t.label.clone(),
            });
        }
    }

    /// Ends every runnable thread whose context has reached the model's
    /// (a child's prompt or a join's text can be longer than the root's).
    fn enforce_context(&mut self) -> Result<(), EngineError> {
        let max = self.max_context;
        let over: Vec<usize> = self
            .threads
            .iter()
            .filter(|(_, t)| t.status == Status::Runnable && t.next_position() > max)
            .map(|(id, _)| id)
            .collect();
        for id in over {
            let t = &self.threads[id];
            let msg = format!(
                "thread {} stopped at {} positions: the model's context is {max} tokens",
                t.local_id,
                t.next_position()
            );
            self.note(id, msg);
            self.finish(id, ChildEnd::Length)?;
        }
        Ok(())
    }

    fn ctx(&self, id: usize) -> ForkContext {
        let t = &self.threads[id];
        let req = &self.requests[t.request];
        let root = &self.threads[req.root];
        ForkContext {
            depth: t.depth,
            rounds: req.rounds,
            own_start: t.output_start,
            // `right_most_pos - init_input_len` in the KV-merge engines:
            // positions run on from the fork point in children and merged
            // parents, so this is the critical path past the prompt.
            position: t.next_position().saturating_sub(root.prompt_tokens),
            max_new_tokens: Some(root.max_generated),
        }
    }

    /// Writes `text` where the thread sampled end of sequence: its tokens
    /// are prefilled at the next step and decoding goes on, unless `text`
    /// completes the thread's own stop string (a `FinishAt` join), which
    /// ends it.
    fn write_instead_of_eos(&mut self, id: usize, text: &str) -> Result<(), EngineError> {
        let ids = self.tok.encode(text, false)?;
        let r = self.threads[id].request;
        let req_id = self.requests[r].id;
        self.requests[r].generated += ids.len();
        let t = &mut self.threads[id];
        t.tokens.extend(&ids);
        t.generated += ids.len();
        t.context.push_str(text);
        // Text held back for a possible stop string goes out with it.
        let shown = t.context[t.emitted.min(t.context.len())..].to_string();
        t.emitted = t.context.len();
        self.events.push(Event::Text {
            request: req_id,
            thread: t.local_id,
            depth: t.depth,
            text: shown,
            token_ids: ids,
            logprobs: None,
        });
        if t.stop.is_some_and(|s| t.context.ends_with(s)) {
            return self.finish(id, ChildEnd::Stop);
        }
        Ok(())
    }

    /// After a thread's context is fully computed: look for a trigger, else
    /// sample its next token.
    fn advance(&mut self, id: usize, logits: &[f32]) -> Result<(), EngineError> {
        if self.scan(id)? {
            return Ok(());
        }
        let r = self.threads[id].request;
        let is_root = self.threads[id].parent.is_none();
        let next = {
            // A protocol's penalty counts the thread's own output only (as
            // NPR's engine does); the request's, vLLM's way, the prompt too.
            let req = &self.requests[r];
            let t = &mut self.threads[id];
            let (penalty, history) = match req.fork_penalty {
                Some(p) if req.penalty_on => (p, &t.tokens[t.history_start.min(t.tokens.len())..]),
                _ => (t.sampler.params().repetition_penalty, &t.tokens[..]),
            };
            t.sampler.sample_penalized(logits, history, penalty)
        };
        let logprobs = match self.requests[r].logprobs {
            Some(k) if is_root => Some(self.token_logprobs(logits, next, k)),
            _ => None,
        };
        self.accept(id, next, logprobs)
    }

    /// Takes `next` as thread `id`'s next token, however it was chosen:
    /// end of sequence and stop ids, the text and its stop strings, the
    /// protocol's stops, and the thread's and request's token limits.
    /// `logprobs` is what the root reports for it.
    fn accept(
        &mut self,
        id: usize,
        next: u32,
        logprobs: Option<TokenLogprobs>,
    ) -> Result<(), EngineError> {
        let r = self.threads[id].request;
        let is_root = self.threads[id].parent.is_none();
        let req = &self.requests[r];
        // The token after a kept stop string is kept whatever it is, end of
        // sequence included (Multiverse's and NPR's engines: `check_finished`
        // returns on a pending stop before its end-of-sequence check).
        let keeping = self.threads[id].after_stop.is_some();
        if !keeping && self.tok.is_stop(next) && !req.ignore_eos {
            // A protocol may write text in place of end of sequence and go
            // on (Parallel-R1 closes an open `<Summary>`).
            let replace = req
                .protocol
                .as_ref()
                .filter(|_| is_root)
                .and_then(|p| p.on_end_of_sequence(&self.threads[id].context));
            if let Some(text) = replace {
                return self.write_instead_of_eos(id, text);
            }
            self.record_sample(id, next);
            return self.finish(id, ChildEnd::Eos);
        }
        if !keeping && is_root && req.stop_token_ids.contains(&next) {
            self.record_sample(id, next);
            return self.finish(id, ChildEnd::Eos);
        }
        if req.stats.ttft_ms == 0.0 && is_root {
            let now = req.now_ms();
            self.requests[r].stats.ttft_ms = now;
        }
        self.record_sample(id, next);
        let t = &mut self.threads[id];
        t.tokens.push(next);
        let piece = t.decoder.push(self.tok, next)?.unwrap_or_default();
        self.accept_text(id, piece, vec![next], 1, logprobs)
    }

    /// Records `next` as sampled by thread `id` at the end of its tokens
    /// (`EngineConfig::record_samples`).
    fn record_sample(&mut self, id: usize, next: u32) {
        let t = &mut self.threads[id];
        if self.cfg.record_samples && t.samples_exact {
            t.samples.push((t.tokens.len(), next));
        }
    }

    /// Appends `piece`, the text of `token_ids` (at least one token), to
    /// thread `id`'s context, then applies the stop strings, the protocol's
    /// stops and the token limits (what follows a token however it came:
    /// sampled here, or streamed by a remote server).
    fn accept_text(
        &mut self,
        id: usize,
        piece: String,
        token_ids: Vec<u32>,
        n_tokens: usize,
        logprobs: Option<TokenLogprobs>,
    ) -> Result<(), EngineError> {
        let r = self.threads[id].request;
        self.report_prompt(r);
        let is_root = self.threads[id].parent.is_none();
        let req_id = self.requests[r].id;
        let n = n_tokens.max(1);
        let t = &mut self.threads[id];
        t.generated += n;
        self.requests[r].generated += n;
        t.context.push_str(&piece);
        let stops = &self.requests[r].stop;
        if is_root && !stops.is_empty() {
            // Stop strings end the root's visible text; text that may be
            // the start of one is held back until it is known not to be.
            let visible = &t.context[t.emitted..];
            let hit = stops
                .iter()
                .filter_map(|s| visible.find(s.as_str()))
                .min()
                .map(|p| t.emitted + p);
            let upto = match hit {
                Some(pos) => pos,
                None => t.context.len() - held_back(visible, stops),
            };
            let text = t.context[t.emitted..upto].to_string();
            t.emitted = upto;
            self.events.push(Event::Text {
                request: req_id,
                thread: t.local_id,
                depth: t.depth,
                text,
                token_ids: token_ids.clone(),
                logprobs,
            });
            if let Some(pos) = hit {
                t.context.truncate(pos);
                return self.finish(id, ChildEnd::Stop);
            }
        } else {
            t.emitted = t.context.len();
            self.events.push(Event::Text {
                request: req_id,
                thread: t.local_id,
                depth: t.depth,
                text: piece.clone(),
                token_ids: token_ids.clone(),
                logprobs,
            });
        }
        let t = &mut self.threads[id];
        let at_limit = t.generated >= t.max_generated || t.next_position() >= self.max_context;
        if at_limit && t.keep_after > 0 {
            // Multiverse's and NPR's engines check the length before any
            // stop, and merge a child's `output_ids[:-1]` whatever ended it:
            // a child cut by its length loses its last sampled token, be it
            // the close tag or the token kept after it. (A root's output is
            // not trimmed at its length.)
            if t.parent.is_some() {
                let keep = t
                    .context
                    .len()
                    .saturating_sub(piece.len())
                    .max(t.prompt_len);
                if t.context.is_char_boundary(keep) {
                    t.context.truncate(keep);
                    t.tokens.pop();
                    if t.samples.last().is_some_and(|s| s.0 == t.tokens.len()) {
                        t.samples.pop();
                    }
                    t.generated -= 1;
                    t.emitted = t.emitted.min(t.context.len());
                }
            }
            return self.finish(id, ChildEnd::Length);
        }
        // The protocol's stop for a child (or a parent's `FinishAt`): kept
        // in the text, and with `keep_after`, so are the tokens after it.
        if let Some(left) = t.after_stop {
            if left <= 1 {
                return self.finish(id, ChildEnd::Stop);
            }
            t.after_stop = Some(left - 1);
        } else if let Some(stop) = t.stop {
            let mut from = t
                .context
                .len()
                .saturating_sub(piece.len() + stop.len())
                .max(t.prompt_len);
            while !t.context.is_char_boundary(from) {
                from -= 1;
            }
            if let Some(pos) = t.context[from..].find(stop).map(|p| p + from) {
                if t.keep_after > 0 {
                    t.after_stop = Some(t.keep_after);
                } else {
                    t.context.truncate(pos + stop.len());
                    t.emitted = t.emitted.min(t.context.len());
                    return self.finish(id, ChildEnd::Stop);
                }
            }
        }
        if at_limit {
            return self.finish(id, ChildEnd::Length);
        }
        if self.requests[r].generated >= self.requests[r].max_total_tokens {
            let live: Vec<usize> = self.requests[r]
                .threads
                .iter()
                .copied()
                .filter(|&c| matches!(self.threads[c].status, Status::Runnable | Status::Queued))
                .collect();
            for c in live {
                self.finish(c, ChildEnd::Length)?;
            }
        }
        Ok(())
    }

    /// Runs the protocol's detector over the thread's new text. Returns true
    /// when the thread forked or ended (no token is sampled then).
    fn scan(&mut self, id: usize) -> Result<bool, EngineError> {
        let r = self.threads[id].request;
        let Some(protocol) = self.requests[r].protocol.clone() else {
            return Ok(false);
        };
        let ctx = self.ctx(id);
        let t = &mut self.threads[id];
        let scan = t.detector.scan(protocol.as_ref(), &t.context, ctx);
        match scan {
            Scan::Continue => Ok(false),
            Scan::Refuse(refusal) => {
                self.note(id, refusal.reason.to_string());
                match refusal.action {
                    Action::Sequential => Ok(false),
                    Action::Rewrite {
                        truncate_to,
                        append,
                    } => {
                        let ctx = &self.threads[id].context;
                        let text = format!("{}{}", ctx.get(..truncate_to).unwrap_or(ctx), append);
                        self.retext(id, text)?;
                        Ok(true)
                    }
                    Action::Finish { truncate_to } => {
                        let t = &mut self.threads[id];
                        if t.context.is_char_boundary(truncate_to) {
                            t.context.truncate(truncate_to);
                        }
                        t.prompt_len = t.prompt_len.min(t.context.len());
                        t.emitted = t.emitted.min(t.context.len());
                        self.finish(id, ChildEnd::Stop)?;
                        Ok(true)
                    }
                }
            }
            Scan::Fork(fork) => {
                let depth = self.threads[id].depth;
                let req = &self.requests[r];
                if fork.children.len() > req.max_children || depth >= req.max_depth {
                    let msg = format!(
                        "engine limit: {} children at depth {depth} (max {} children, depth < {})",
                        fork.children.len(),
                        req.max_children,
                        req.max_depth
                    );
                    self.note(id, msg);
                    return Ok(false);
                }
                self.fork(id, fork)?;
                Ok(true)
            }
        }
    }

    /// Log-softmax of `logits` at `token` and its `k` best tokens.
    fn token_logprobs(&self, logits: &[f32], token: u32, k: usize) -> TokenLogprobs {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lse = max
            + logits
                .iter()
                .map(|&l| ((l - max) as f64).exp())
                .sum::<f64>()
                .ln() as f32;
        let text = |id: u32| self.tok.decode(&[id]).unwrap_or_default();
        let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
        if k > 0 {
            for (i, &l) in logits.iter().enumerate() {
                if best.len() < k || l > best[best.len() - 1].1 {
                    let at = best.partition_point(|&(_, b)| b >= l);
                    best.insert(at, (i as u32, l));
                    best.truncate(k);
                }
            }
        }
        TokenLogprobs {
            id: token,
            token: text(token),
            logprob: logits
                .get(token as usize)
                .map_or(f32::NEG_INFINITY, |l| l - lse),
            top: best
                .into_iter()
                .map(|(id, l)| (id, text(id), l - lse))
                .collect(),
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

    /// Ends request `r`: every thread stops, its KV goes back to the pool,
    /// held-back root text is flushed (unless a stop string cut it) and
    /// `Event::Finished` carries the response. The request leaves the
    /// engine at the end of the step (`reap`).
    fn complete(&mut self, r: usize, reason: FinishReason) {
        if self.requests[r].done.is_some() {
            return;
        }
        self.requests[r].done = Some(reason);
        let now = self.requests[r].now_ms();
        for k in self.requests[r].threads.clone() {
            let t = &mut self.threads[k];
            if t.status != Status::Finished {
                t.status = Status::Finished;
                t.ended = now;
                // What it computed stays in the prefix cache, as vLLM keeps
                // an aborted request's blocks: a client that retries, or a
                // front (`weft serve --backend`) that cancels a thread at
                // its fork and sends the children the same prefix, reuses
                // it.
                let _ = self.register(k);
            }
            // Only this request's tables: the pool cannot disagree with
            // them, and a request being dropped must not fail the engine.
            let _ = self.release_kv(k);
        }
        let req = &self.requests[r];
        let root = &self.threads[req.root];
        if root.emitted < root.context.len() {
            let text = root.context[root.emitted..].to_string();
            let (thread, depth, id) = (root.local_id, root.depth, req.id);
            self.threads[req.root].emitted = self.threads[req.root].context.len();
            self.events.push(Event::Text {
                request: id,
                thread,
                depth,
                text,
                token_ids: Vec::new(),
                logprobs: None,
            });
        }
        let response = self.response(r, reason);
        self.events.push(Event::Finished {
            request: self.requests[r].id,
            reason,
            response: Box::new(response),
        });
    }

    /// Sends the request's [`Event::Prompt`] once, before anything it
    /// computed shows (its first token or fork), when the root's cached
    /// prompt is known (remote compute: as far as its server has said).
    pub(super) fn report_prompt(&mut self, r: usize) {
        let req = &mut self.requests[r];
        if req.prompt_reported {
            return;
        }
        req.prompt_reported = true;
        let root = &self.threads[req.root];
        self.events.push(Event::Prompt {
            request: req.id,
            prompt_tokens: req.server_prompt_tokens.unwrap_or(root.prompt_tokens),
            cached_tokens: req.stats.prompt_cached_tokens,
        });
    }

    /// Drops finished requests and their threads.
    fn reap(&mut self) {
        let done: Vec<usize> = self
            .requests
            .iter()
            .filter(|(_, q)| q.done.is_some())
            .map(|(r, _)| r)
            .collect();
        for r in done {
            if let Some(req) = self.requests.remove(r) {
                self.by_id.remove(&req.id);
                for k in req.threads {
                    self.threads.remove(k);
                }
            }
        }
    }

    fn response(&self, r: usize, reason: FinishReason) -> Response {
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
                    sampled: t.sampled_segments(),
                }
            })
            .collect();
        let mut stats = req.stats.clone();
        stats.total_tokens = threads.iter().map(|t| t.generated_tokens).sum();
        stats.critical_path_tokens = self.critical_path(req.root);
        stats.parallelism = stats.total_tokens as f64 / stats.critical_path_tokens.max(1) as f64;
        stats.wall_ms = threads.iter().map(|t| t.end_ms).fold(0.0, f64::max);
        Response {
            id: req.id,
            text: self.threads[req.root].generated_text().to_string(),
            finish_reason: reason,
            prompt_tokens: req
                .server_prompt_tokens
                .unwrap_or(self.threads[req.root].prompt_tokens),
            threads,
            stats,
        }
    }
}

/// Bytes at the end of `text` that may be the start of one of `stops`.
fn held_back(text: &str, stops: &[String]) -> usize {
    stops
        .iter()
        .flat_map(|s| {
            (1..s.len())
                .rev()
                .filter(|&k| s.is_char_boundary(k))
                .find(|&k| text.ends_with(&s[..k]))
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_back_is_the_longest_stop_prefix_at_the_end() {
        let stops = vec!["</s>".to_string(), "END".to_string()];
        assert_eq!(held_back("hello <", &stops), 1);
        assert_eq!(held_back("hello </", &stops), 2);
        assert_eq!(held_back("hello </x", &stops), 0);
        assert_eq!(held_back("EN", &stops), 2);
        assert_eq!(held_back("", &stops), 0);
        // Multi-byte stop strings are cut on character boundaries only.
        let stops = vec!["ñé".to_string()];
        assert_eq!(held_back("añ", &stops), "ñ".len());
    }

    #[test]
    fn thread_seeds_differ_by_place_and_repeat() {
        assert_eq!(thread_seed(7, 0, 1), thread_seed(7, 0, 1));
        assert_ne!(thread_seed(7, 0, 1), thread_seed(7, 0, 2));
        assert_ne!(thread_seed(7, 0, 1), thread_seed(7, 1, 1));
        assert_ne!(thread_seed(7, 0, 1), thread_seed(8, 0, 1));
    }
}
