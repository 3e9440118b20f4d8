//! One thread of reasoning and one request, as the engine holds them.

use std::sync::Arc;
use std::time::Instant;

use weft_kv::BlockTable;
use weft_model::sampling::{Sampler, SamplingParams};
use weft_model::tokenizer::StreamDecoder;
use weft_protocol::{ChildEnd, Detector, Fork, Protocol};

use super::merge::KvSegment;
use crate::request::{FinishReason, RequestId};
use crate::tree::RequestStats;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    /// Waiting for a live-thread slot.
    Queued,
    Runnable,
    /// Waiting for its children.
    Waiting,
    Finished,
}

pub(super) struct Thread {
    /// The request's slot in the engine.
    pub request: usize,
    /// Creation order: older threads are scheduled first and never
    /// preempted by newer ones.
    pub seq: u64,
    /// Index within its request (the trace's id).
    pub local_id: usize,
    pub parent: Option<usize>,
    pub depth: u32,
    pub label: String,
    /// The thread's whole context text: prompt, then generated text (joins
    /// rewrite it).
    pub context: String,
    /// Bytes of `context` that are prompt (shrinks when a join rewrites
    /// part of the prompt, as an APR fork written in the prompt does).
    pub prompt_len: usize,
    /// Bytes of `context` already reported in `Event::Text` (the root holds
    /// back text that may begin a stop string).
    pub emitted: usize,
    pub prompt_tokens: usize,
    /// Re-tokenizing `context` never adds a BOS (a chat-rendered or token
    /// prompt, and every continuation of one).
    pub no_bos: bool,
    pub tokens: Vec<u32>,
    /// Tokens whose KV is in the cache.
    pub n_cached: usize,
    /// The thread's own KV: `tokens[i]` in slot `i`, at RoPE position
    /// `pos_base + i`.
    pub table: BlockTable,
    /// KV the thread sees in full before its own table (after a KV-merge
    /// join: the prefix and every child's KV, where they were written).
    /// Empty for a thread whose context is one sequential run.
    pub segments: Vec<KvSegment>,
    pub pos_base: usize,
    /// Where the thread's own, not yet merged, part starts: `tokens` index
    /// and byte offset in `context` (what a KV-merge join checks and adds).
    pub own_tok_start: usize,
    pub own_text_start: usize,
    /// Its KV still follows its parent's layout at the fork (a join that
    /// re-tokenized its text clears this, and the parent cannot merge it).
    pub in_layout: bool,
    pub status: Status,
    pub generated: usize,
    /// Tokens this thread may generate.
    pub max_generated: usize,
    pub decoder: StreamDecoder,
    pub detector: Detector,
    /// Child stop string, or a parent's `FinishAt`.
    pub stop: Option<&'static str>,
    /// Tokens to sample and keep after the stop string
    /// (`ChildStop::keep_after`).
    pub keep_after: u32,
    /// Set once the stop string is written with `keep_after` > 0: tokens
    /// still to sample before the thread ends.
    pub after_stop: Option<u32>,
    /// Where the tokens a repetition penalty counts begin in `tokens`: the
    /// thread's own output since it started or last joined (SGLang counts a
    /// request's output tokens; a fork's child and a merged parent are new
    /// requests there).
    pub history_start: usize,
    /// Where the thread's own output begins in `context` (what the
    /// reference engines count as a request's output): after a child's
    /// prompt, after a parent's last join; 0 for a root that has not
    /// joined (`ForkContext::own_start`).
    pub output_start: usize,
    pub end: ChildEnd,
    /// The seed of this thread's sampler (children derive theirs from it).
    pub seed: u64,
    pub sampler: Sampler,
    /// Children of each fork, in order.
    pub forks: Vec<Vec<usize>>,
    pub pending: Option<Fork>,
    /// Own tokens at the pending fork, when its join may merge KV.
    pub merge_at: Option<usize>,
    pub started: f64,
    pub ended: f64,
    /// With `EngineConfig::record_samples`: positions in `tokens` and ids
    /// of the tokens sampled in the current context, the earlier contexts'
    /// in `past_samples`; `samples_exact` turns false once the thread's
    /// context is no plain sequence (a KV-merge join).
    pub samples: Vec<(usize, u32)>,
    pub past_samples: Vec<crate::tree::SampledSegment>,
    pub samples_exact: bool,
}

impl Thread {
    /// Closes the current sampled segment (its context is about to be
    /// rewritten).
    pub fn close_samples(&mut self) {
        if !self.samples.is_empty() {
            self.past_samples.push(crate::tree::SampledSegment {
                tokens: self.tokens.clone(),
                sampled: std::mem::take(&mut self.samples),
            });
        }
    }

    /// Every sampled segment, the current one last.
    pub fn sampled_segments(&self) -> Vec<crate::tree::SampledSegment> {
        let mut out = self.past_samples.clone();
        if !self.samples.is_empty() {
            out.push(crate::tree::SampledSegment {
                tokens: self.tokens.clone(),
                sampled: self.samples.clone(),
            });
        }
        out
    }

    /// What the thread generated (after joins: everything after the part of
    /// its prompt that is unchanged).
    pub fn generated_text(&self) -> &str {
        self.context.get(self.prompt_len..).unwrap_or_default()
    }

    /// RoPE position the next token to sample would take.
    pub fn next_position(&self) -> usize {
        self.pos_base + self.tokens.len()
    }

    /// Takes a join's new context text; the prompt part shrinks to what the
    /// join left unchanged.
    pub fn set_context(&mut self, full: String) {
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
        self.emitted = full.len();
        self.context = full;
        self.decoder = StreamDecoder::default();
    }
}

/// Where a new thread's KV comes from and how its positions run.
pub(super) struct ThreadKv {
    pub table: BlockTable,
    pub segments: Vec<KvSegment>,
    pub pos_base: usize,
    pub own_tok_start: usize,
    pub own_text_start: usize,
    pub in_layout: bool,
}

impl ThreadKv {
    /// One sequential run from position 0 (roots, fresh prompts).
    pub fn sequential(table: BlockTable) -> ThreadKv {
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
    pub fn reused(&self) -> usize {
        self.table.len() + self.segments.iter().map(KvSegment::len).sum::<usize>()
    }
}

/// A request in flight: its tree, its settings, its limits.
pub(super) struct RequestState {
    pub id: RequestId,
    /// `None`: a plain request (one thread, no triggers).
    pub protocol: Option<Arc<dyn Protocol>>,
    pub root: usize,
    pub threads: Vec<usize>,
    pub rounds: u32,
    pub generated: usize,
    pub stats: RequestStats,
    /// Set when the request ended; the engine drops it at the end of the step.
    pub done: Option<FinishReason>,
    pub arrived: Instant,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    pub logprobs: Option<usize>,
    pub max_thread_tokens: usize,
    pub max_children: usize,
    pub max_depth: u32,
    pub max_total_tokens: usize,
    /// Joins may merge KV (`RequestSpec::kv_merge` and the engine's).
    pub kv_merge: bool,
    /// The protocol's repetition penalty while a fork is open
    /// (`Rules::child_repetition_penalty`).
    pub fork_penalty: Option<f32>,
    /// NPR's engine sets the penalty on the request's shared sampling
    /// parameters at a fork and resets it at a merge, for every thread of
    /// the tree: on between the two.
    pub penalty_on: bool,
    /// `Event::Prompt` went out.
    pub prompt_reported: bool,
    /// Remote compute: the root's prompt as its server counted it.
    pub server_prompt_tokens: Option<usize>,
}

impl RequestState {
    pub fn now_ms(&self) -> f64 {
        self.arrived.elapsed().as_secs_f64() * 1e3
    }
}

/// The seed of a child thread: a deterministic mix (splitmix64) of its
/// parent's seed, which fork of the parent it came from, and its index in
/// that fork. The root's seed is the request's.
pub fn thread_seed(parent_seed: u64, fork: usize, child: usize) -> u64 {
    let mix = |mut z: u64| {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    mix(parent_seed ^ mix(((fork as u64) << 32) ^ child as u64 ^ 0x5EED))
}
