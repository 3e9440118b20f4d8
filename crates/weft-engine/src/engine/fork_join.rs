//! Forks, finishes and joins: children from a parent's block table, a
//! join's new text (re-prefill of the text after the common token prefix,
//! or a KV merge, in `merge`), and what a finished thread gives back.

use weft_kv::{BlockTable, KvError};
use weft_protocol::{AfterJoin, ChildEnd, ChildPrompt, ChildResult, Fork, JoinMode, Layout};

use super::merge::{self, MergeJoin};
use super::thread::{thread_seed, Status, ThreadKv};
use super::{Engine, NewThread};
use crate::request::FinishReason;
use crate::tree::Event;
use crate::EngineError;

impl Engine<'_> {
    /// Replaces a thread's whole context text, keeping the KV of the common
    /// token prefix. Returns the number of reused tokens. A merged thread's
    /// layout is dropped: its text is re-prefilled as one sequence.
    pub(super) fn retext(&mut self, id: usize, full: String) -> Result<usize, EngineError> {
        let tokens = self.tok.encode_prompt(&full, self.threads[id].no_bos)?;
        self.retext_tokens(id, full, tokens)
    }

    /// The token ids of a re-prefill join's `text`, built as the reference
    /// loops build them (ThreadWeaver's `single_turn_agent_loop.py` 278-305,
    /// Parallel-R1's `parallel_thinking_loop_v3.py` 369-394): the parent's
    /// ids up to the fork, each child's ids as it sampled them, and the text
    /// between them (headers, closings, what the join appends) encoded
    /// piece by piece. Re-encoding the whole text instead would change the
    /// ids wherever a child sampled a non-canonical split, and the parent
    /// would continue from ids the model never produced. Where the pieces
    /// are not found in order (a join that rewrites text, as APR's), the
    /// whole text is encoded, as APR's reference does.
    fn join_tokens(
        &self,
        id: usize,
        kids: &[usize],
        fork: &Fork,
        text: &str,
    ) -> Result<Vec<u32>, EngineError> {
        let parent = &self.threads[id];
        let whole = || self.tok.encode_prompt(text, parent.no_bos);
        let sequential = parent.segments.is_empty() && parent.pos_base == 0;
        if !sequential
            || fork.segment_end != parent.context.len()
            || !text.starts_with(parent.context.as_str())
        {
            return Ok(whole()?);
        }
        // The parent's ids must spell its text (BOS included) for them to
        // stand for it.
        let spelled = self.tok.decode(&parent.tokens)?;
        let expected = self
            .tok
            .decode(&self.tok.encode_prompt(&parent.context, parent.no_bos)?)?;
        if spelled != expected {
            return Ok(whole()?);
        }
        let mut out = parent.tokens.clone();
        let mut at = fork.segment_end;
        let gap = |out: &mut Vec<u32>, piece: &str| -> Result<(), EngineError> {
            if !piece.is_empty() {
                out.extend(self.tok.encode(piece, false)?);
            }
            Ok(())
        };
        for &k in kids {
            let kid = &self.threads[k];
            let own = kid.generated_text();
            if own.is_empty() {
                continue;
            }
            let Some(found) = text[at..].find(own).map(|p| p + at) else {
                return Ok(whole()?);
            };
            gap(&mut out, &text[at..found])?;
            let ids = &kid.tokens[kid.tokens.len().saturating_sub(kid.generated)..];
            // The sampled ids; when a stop string cut the last token's
            // text, its kept part is encoded.
            let mut used = ids.len();
            while used > 0
                && !self
                    .tok
                    .decode(&ids[..used])
                    .is_ok_and(|t| own.starts_with(&t))
            {
                used -= 1;
            }
            out.extend(&ids[..used]);
            let shown = self.tok.decode(&ids[..used])?;
            gap(&mut out, &own[shown.len()..])?;
            at = found + own.len();
        }
        gap(&mut out, &text[at..])?;
        // Whatever the pieces, the ids must spell the text.
        if self.tok.decode(&out)? != self.tok.decode(&whole()?)? {
            return Ok(whole()?);
        }
        Ok(out)
    }

    /// [`Engine::retext`] with the new text's token ids given.
    fn retext_tokens(
        &mut self,
        id: usize,
        full: String,
        tokens: Vec<u32>,
    ) -> Result<usize, EngineError> {
        self.register(id)?;
        let t = &mut self.threads[id];
        t.close_samples();
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
        t.output_start = full.len();
        t.set_context(full);
        t.history_start = tokens.len();
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

    pub(super) fn fork(&mut self, id: usize, fork: Fork) -> Result<(), EngineError> {
        let r = self.threads[id].request;
        let Some(protocol) = self.requests[r].protocol.clone() else {
            return Ok(());
        };
        self.report_prompt(r);
        let rules = protocol.rules();
        let stop = protocol.child_stop();
        self.register(id)?;
        let full = std::mem::take(&mut self.threads[id].context);
        let result = self.fork_children(id, &fork, &full, rules, stop);
        self.threads[id].context = full;
        let kids = result?;
        let merge = {
            let at_end = fork.segment_end >= self.threads[id].context.len();
            let in_layout = at_end
                && fork
                    .children
                    .iter()
                    .all(|c| matches!(c.prompt, ChildPrompt::Continue { .. }));
            in_layout && self.requests[r].kv_merge && rules.join_mode == JoinMode::KvMerge
        };
        let req_id = self.requests[r].id;
        let t = &mut self.threads[id];
        t.status = Status::Waiting;
        let children = kids.iter().map(|&k| self.threads[k].local_id).collect();
        let t = &mut self.threads[id];
        t.forks.push(kids);
        t.pending = Some(fork);
        t.merge_at = merge.then_some(t.tokens.len());
        self.events.push(Event::Forked {
            request: req_id,
            thread: t.local_id,
            depth: t.depth,
            children,
        });
        self.requests[r].rounds += 1;
        self.requests[r].stats.forks += 1;
        self.requests[r].penalty_on = true;
        Ok(())
    }

    /// Starts a fork's children: continuations share the parent's block
    /// table (and segments), fresh prompts start from the prefix cache.
    fn fork_children(
        &mut self,
        id: usize,
        fork: &Fork,
        full: &str,
        rules: weft_protocol::Rules,
        stop: weft_protocol::ChildStop,
    ) -> Result<Vec<usize>, EngineError> {
        let r = self.threads[id].request;
        let at_end = fork.segment_end >= full.len();
        let in_layout = at_end
            && fork
                .children
                .iter()
                .all(|c| matches!(c.prompt, ChildPrompt::Continue { .. }));
        let fork_index = self.threads[id].forks.len();
        let mut kids = Vec::new();
        for (i, spec) in fork.children.iter().enumerate() {
            let prompt_text = spec.prompt.full_text(full, fork.segment_end);
            let (tokens, no_bos, kv) = match (&spec.prompt, at_end) {
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
                    (tokens, parent.no_bos, kv)
                }
                (ChildPrompt::Continue { .. }, false) => {
                    let no_bos = self.threads[id].no_bos;
                    let tokens = self.tok.encode_prompt(&prompt_text, no_bos)?;
                    let table = BlockTable::from_prefix_cache(
                        &mut self.pool,
                        &tokens[..tokens.len().saturating_sub(1)],
                    )?;
                    (tokens, no_bos, ThreadKv::sequential(table))
                }
                (ChildPrompt::Fresh { .. }, _) => {
                    let tokens = self.tok.encode_prompt(&prompt_text, false)?;
                    let table = BlockTable::from_prefix_cache(
                        &mut self.pool,
                        &tokens[..tokens.len().saturating_sub(1)],
                    )?;
                    (tokens, false, ThreadKv::sequential(table))
                }
            };
            self.requests[r].stats.prefill_tokens_saved += kv.reused();
            let mut sampling = self.requests[r].sampling.clone();
            sampling.seed = thread_seed(self.threads[id].seed, fork_index, i);
            if let Some(t) = rules.child_temperature {
                sampling.temperature = t;
            }
            let kid = self.spawn(NewThread {
                request: r,
                parent: Some(id),
                label: spec.label.clone(),
                prompt_text,
                tokens,
                no_bos,
                kv,
                stop: stop.stop,
                keep_after: stop.keep_after,
                sampling,
                max_generated: self.requests[r].max_thread_tokens,
            });
            kids.push(kid);
        }
        Ok(kids)
    }

    pub(super) fn finish(&mut self, id: usize, end: ChildEnd) -> Result<(), EngineError> {
        let r = self.threads[id].request;
        let now = self.requests[r].now_ms();
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
        self.events.push(Event::ThreadFinished {
            request: self.requests[r].id,
            thread: t.local_id,
            depth: t.depth,
            generated_tokens: t.generated,
        });
        match parent {
            None => {
                let reason = match end {
                    ChildEnd::Eos | ChildEnd::Stop => FinishReason::Stop,
                    ChildEnd::Length => FinishReason::Length,
                };
                // Nothing of the request holds KV any more (a thread cut
                // short while its parent waited would otherwise leak).
                self.complete(r, reason);
                Ok(())
            }
            Some(p) => {
                let kids = self.threads[p].forks.last().cloned().unwrap_or_default();
                if kids
                    .iter()
                    .all(|&k| self.threads[k].status == Status::Finished)
                {
                    self.join(p, &kids)?;
                }
                Ok(())
            }
        }
    }

    pub(super) fn join(&mut self, id: usize, kids: &[usize]) -> Result<(), EngineError> {
        let r = self.threads[id].request;
        let Some(protocol) = self.requests[r].protocol.clone() else {
            return self.release_children(kids);
        };
        let results: Vec<ChildResult> = kids
            .iter()
            .map(|&k| protocol.child_result(self.threads[k].generated_text(), self.threads[k].end))
            .collect();
        let merge_at = self.threads[id].merge_at.take();
        // NPR's engine resets the shared penalty at every merge.
        self.requests[r].penalty_on = false;
        let Some(fork) = self.threads[id].pending.take() else {
            return self.release_children(kids);
        };
        let ctx = self.ctx(id);
        // What the thread's stream has shown of its generated text so far.
        let shown = {
            let t = &self.threads[id];
            t.context
                .get(t.prompt_len..t.emitted.max(t.prompt_len))
                .unwrap_or_default()
                .to_string()
        };
        let join = match protocol.join(&self.threads[id].context, &fork, &results, ctx) {
            Ok(j) => j,
            Err(e) => {
                self.note(id, format!("join failed: {e}"));
                self.release_children(kids)?;
                self.threads[id].status = Status::Runnable;
                return self.finish(id, ChildEnd::Stop);
            }
        };
        let merged = match (merge_at, &join.layout) {
            (Some(p), Layout::Merged { append, lead, .. }) => self.merge_join(&MergeJoin {
                thread: id,
                kids,
                fork: &fork,
                results: &results,
                text: &join.text,
                append,
                lead,
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
                // is computed again. For a protocol whose authors merge KV,
                // that is an approximation of their layout.
                if matches!(join.layout, Layout::Merged { .. }) {
                    self.requests[r].stats.approximate_join = true;
                }
                let tokens = self.join_tokens(id, kids, &fork, &join.text)?;
                self.release_children(kids)?;
                let reused = self.retext_tokens(id, join.text, tokens)?;
                // (Remote compute: what the server computed is in its own
                // figures, `prefill_tokens`.)
                if !self.is_remote() {
                    let t = &self.threads[id];
                    self.requests[r].stats.join_tokens_computed += t.tokens.len() - reused;
                }
                reused
            }
        };
        self.requests[r].stats.prefill_tokens_saved += reused;
        let req_id = self.requests[r].id;
        let t = &mut self.threads[id];
        t.status = Status::Runnable;
        let appended = t
            .generated_text()
            .strip_prefix(shown.as_str())
            .map(String::from);
        // A root that forked before writing anything shows its first text
        // here: that is its time to first token.
        let first_text = t.parent.is_none() && !t.generated_text().is_empty();
        self.events.push(Event::Joined {
            request: req_id,
            thread: t.local_id,
            depth: t.depth,
            children: kids.len(),
            reused_tokens: reused,
            appended,
        });
        if first_text && self.requests[r].stats.ttft_ms == 0.0 {
            let now = self.requests[r].now_ms();
            self.requests[r].stats.ttft_ms = now;
        }
        let t = &mut self.threads[id];
        match join.then {
            AfterJoin::Continue => {}
            AfterJoin::FinishAt(s) => {
                t.stop = Some(s);
                t.keep_after = 0;
                t.after_stop = None;
            }
            AfterJoin::Finish => {
                // The join ended the parent; if a token limit cut one of its
                // children, the answer was cut too: `length`, not `stop`.
                let cut = kids
                    .iter()
                    .any(|&k| self.threads[k].end == ChildEnd::Length);
                let end = if cut {
                    ChildEnd::Length
                } else {
                    ChildEnd::Stop
                };
                return self.finish(id, end);
            }
        }
        Ok(())
    }
}
