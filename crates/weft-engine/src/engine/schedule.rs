//! The scheduler: which threads run this step and with how many tokens,
//! growing their block tables and preempting newer threads when blocks run
//! out; then one forward pass for the whole batch.

use weft_kv::{BlockTable, KvError};
use weft_model::{KvSpan, SeqStep};

use super::{merge, Engine, Status};
use crate::tree::Event;
use crate::EngineError;

impl Engine<'_> {
    /// Picks this step's threads and chunk sizes, growing their KV tables;
    /// preempts (drops the KV of) the newest other threads when blocks run out.
    pub(super) fn schedule(&mut self) -> Result<Vec<(usize, usize)>, EngineError> {
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
    pub(super) fn preempt(&mut self, id: usize) -> Result<(), EngineError> {
        self.register(id)?;
        let t = &mut self.threads[id];
        t.table.free(&mut self.pool)?;
        t.n_cached = 0;
        self.requests[t.request].stats.preemptions += 1;
        Ok(())
    }

    pub(super) fn step(
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
}
