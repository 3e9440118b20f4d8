//! Limits and budgets: policy, never crashes.

/// What the engine may do. A limit that is reached changes what runs (a fork
/// is refused, a thread waits or ends at its token budget); it never aborts.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Children one fork may start; a larger fork is refused and the parent
    /// decodes on sequentially.
    pub max_children_per_fork: usize,
    /// Threads at this depth (root = 0) may not fork.
    pub max_depth: u32,
    /// Threads of one request decoding at once; more wait in the queue.
    pub max_live_threads_per_request: usize,
    /// Threads decoding at once, all requests together (vLLM's `max_num_seqs`).
    pub max_live_threads: usize,
    /// Generated tokens per thread (a request's `max_tokens` and
    /// `max_thread_tokens` default to it).
    pub max_tokens_per_thread: usize,
    /// Generated tokens per request, all threads together.
    pub max_tokens_per_request: usize,
    /// KV cache size.
    pub kv_budget_mib: usize,
    /// Token slots per KV block.
    pub block_size: usize,
    /// Most prompt tokens of one thread per step.
    pub prefill_chunk: usize,
    /// Most tokens in one forward step, all threads together.
    pub max_batch_tokens: usize,
    /// Join KV-merge protocols (Multiverse, NPR) by merging KV: children
    /// start at the fork position, the parent continues over the prefix
    /// and every child's KV, nothing is recomputed. `false` re-prefills
    /// every join (for a model not trained with the merged layout).
    pub kv_merge: bool,
    /// Make the whole KV budget resident when the engine starts (every page
    /// written once), as vLLM reserves its KV memory up front: memory use
    /// is flat from the first request on, and a budget the machine cannot
    /// hold fails at start rather than under load. `false`: pages become
    /// resident as slots are first written (the cache is allocated zeroed).
    pub reserve_kv: bool,
    /// Keep every sampled token with the context it was sampled in
    /// (`ThreadRecord::sampled`), for RL. Off by default: it holds a copy
    /// of a thread's tokens per rewritten context.
    pub record_samples: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_children_per_fork: 16,
            max_depth: 6,
            max_live_threads_per_request: 64,
            max_live_threads: 256,
            max_tokens_per_thread: 1024,
            max_tokens_per_request: 16_384,
            kv_budget_mib: 512,
            block_size: 16,
            prefill_chunk: 256,
            max_batch_tokens: 512,
            kv_merge: true,
            reserve_kv: false,
            record_samples: false,
        }
    }
}
