//! Forks, finishes and joins: children from a parent's block table, a
//! join's new text (re-prefill of the text after the common token prefix,
//! or a KV merge, in `merge`), and what a finished thread gives back.

use weft_kv::{BlockTable, KvError};
use weft_protocol::{AfterJoin, ChildEnd, ChildPrompt, ChildResult, Fork, JoinMode, Layout};

use super::merge::{self, MergeJoin};
use super::{Engine, Status, ThreadKv};
use crate::tree::Event;
use crate::EngineError;

impl Engine<'_> {
    /// Replaces a thread's whole context text, keeping the KV of the common
    /// token prefix. Returns the number of reused tokens. A merged thread's
    /// layout is dropped: its text is re-prefilled as one sequence.
    pub(super) fn retext(&mut self, id: usize, full: String) -> Result<usize, EngineError> {
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
    pub(super) fn register(&mut self, id: usize) -> Result<(), EngineError> {
        let t = &mut self.threads[id];
        if t.segments.is_empty() && t.pos_base == 0 {
            let n = t.n_cached.min(t.table.len());
            t.table
                .register_full_blocks(&mut self.pool, &t.tokens[..n])?;
        }
        Ok(())
    }

    pub(super) fn fork(&mut self, id: usize, fork: Fork, full: &str) -> Result<(), EngineError> {
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

    pub(super) fn finish(
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

    pub(super) fn join(
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
            (Some(p), Layout::Merged { append, .. }) => self.merge_join(&MergeJoin {
                thread: id,
                kids,
                fork: &fork,
                results: &results,
                text: &join.text,
                append,
                fork_tokens: p,
            })?,
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
}
