//! The scheduler: which threads run this step and with how many tokens,
//! growing their block tables and preempting newer threads when blocks run
//! out; then one forward pass for the whole batch.

use weft_kv::{BlockTable, KvError};
use weft_model::{KvSpan, SeqStep};

use super::thread::Status;
use super::{merge, Engine};
use crate::EngineError;

impl Engine<'_> {
    /// Picks this step's threads and chunk sizes, growing their KV tables;
    /// preempts (drops the KV of) the newest other threads when blocks run out.
    pub(super) fn schedule(&mut self) -> Result<Vec<(usize, usize)>, EngineError> {
        let mut batch = Vec::new();
        let mut budget = self.cfg.max_batch_tokens;
        // Oldest first: they are served first and never preempted by newer.
        let mut aged: Vec<(u64, usize)> = self
            .threads
            .iter()
            .filter(|(_, t)| t.status == Status::Runnable)
            .map(|(id, t)| (t.seq, id))
            .collect();
        aged.sort_unstable();
        let order: Vec<usize> = aged.into_iter().map(|(_, id)| id).collect();
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
                let last = t.tokens.len().saturating_sub(1);
                t.table = BlockTable::from_prefix_cache(&mut self.pool, &t.tokens[..last])?;
                t.n_cached = t.table.len();
                let stats = &mut self.requests[t.request].stats;
                stats.prefill_tokens_saved += t.n_cached;
                if t.parent.is_none() && t.generated == 0 {
                    stats.prompt_cached_tokens = t.n_cached.min(t.prompt_tokens);
                }
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
                            self.copy_block(op);
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
                        let seq = self.threads[id].seq;
                        let victim = order.iter().rev().copied().find(|&v| {
                            self.threads[v].seq > seq
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

    /// Preempts the newest runnable thread that is newer than thread `id`
    /// and holds a block nobody else holds (the scheduler's victim rule);
    /// `false` when there is none.
    pub(super) fn preempt_newer_than(&mut self, id: usize) -> Result<bool, EngineError> {
        let seq = self.threads[id].seq;
        let pool = &self.pool;
        let victim = self
            .threads
            .iter()
            .filter(|(_, t)| {
                t.status == Status::Runnable
                    && t.seq > seq
                    && t.table
                        .blocks()
                        .iter()
                        .any(|&b| pool.ref_count(b) == Some(1))
            })
            .max_by_key(|(_, t)| t.seq)
            .map(|(v, _)| v);
        match victim {
            Some(v) => {
                self.preempt(v)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Drops a thread's own KV (it is recomputed when the thread runs
    /// again); a merged thread keeps its segments.
    pub(super) fn preempt(&mut self, id: usize) -> Result<(), EngineError> {
        self.register(id)?;
        let t = &mut self.threads[id];
        t.table.free(&mut self.pool)?;
        t.n_cached = 0;
        self.requests[t.request].stats.preemptions += 1;
        self.preempted_in_step.push(id);
        Ok(())
    }

    /// One forward pass over `batch` (thread, tokens to compute), then each
    /// thread whose context is complete samples or forks.
    pub(super) fn forward_batch(&mut self, batch: &[(usize, usize)]) -> Result<(), EngineError> {
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
        let super::Compute::Native { model, kv, ws } = &mut self.compute else {
            return Err(EngineError::Invalid(
                "a forward pass on a remote backend".into(),
            ));
        };
        let logits = model.forward(kv, &steps, ws)?;
        let mut per_request: std::collections::HashMap<usize, usize> = Default::default();
        for &(id, _) in batch {
            *per_request.entry(self.threads[id].request).or_default() += 1;
        }
        for (r, n) in per_request {
            let s = &mut self.requests[r].stats;
            s.max_batch_threads = s.max_batch_threads.max(n);
        }
        self.preempted_in_step.clear();
        for (&(id, chunk), logits) in batch.iter().zip(logits) {
            // A thread of a request that ended earlier in this step (its
            // root finished, a token limit) has no KV any more; nor has one
            // preempted by a join earlier in this step (it recomputes).
            if self.requests[self.threads[id].request].done.is_some()
                || self.preempted_in_step.contains(&id)
            {
                continue;
            }
            let t = &mut self.threads[id];
            if t.generated == 0 && t.prompt_tokens > t.n_cached {
                self.requests[t.request].stats.prefill_tokens +=
                    chunk.min(t.prompt_tokens - t.n_cached);
            }
            t.n_cached += chunk;
            if t.n_cached == t.tokens.len() && t.status == Status::Runnable {
                self.advance(id, &logits)?;
            }
        }
        Ok(())
    }
}
