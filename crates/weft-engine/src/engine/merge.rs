//! KV-merge joins (Multiverse, NPR): the children's KV stays where they
//! wrote it and the parent continues over the prefix plus every child.
//!
//! Layout, as the authors' engines build it (Multiverse-Engine and NPR's
//! SGLang, `scheduler.py`; `shared/reference/protocols-verified.md` §2.3):
//! the fork is at position p; child i's tokens sit at p .. p + L_i (its
//! prompt suffix, generated tokens and the token kept after its close tag)
//! and see the prefix and themselves only (each child is an ordinary
//! sequence forked from the parent's table). The suffix's lead
//! (`Layout::Merged::lead`, the `\n` before `<Path>`/`<step>`) holds the
//! same KV in every child and is kept once, child 0's: children 1.. are
//! merged from just after it. After the join the parent continues at
//! p + max L_i and sees the prefix and every child. The parent's KV is then
//! a list of [`KvSegment`]s (slot ranges of other tables, seen in full)
//! plus a fresh own table whose slot 0 sits at RoPE position p + max L_i.
//! Nothing is recomputed: the join computes only tokens that never had KV
//! (a child's last sampled tokens, from the ids it sampled, and the text
//! the join appends).
//!
//! The merge is exact only where text and KV agree. When they do not (a
//! child's result is not its generated text, a child's KV was dropped, the
//! joined text is not prefix + children + append), the join falls back to a
//! re-prefill of the joined text: defined, counted, never a crash.

use weft_kv::{BlockPool, BlockTable, KvError};
use weft_model::{KvSpan, SeqStep};
use weft_protocol::{ChildResult, Fork};

use super::Engine;
use crate::EngineError;

/// Slots `start..end` of a table whose KV another thread sees in full. The
/// segment holds its own references to the table's blocks.
#[derive(Debug)]
pub(super) struct KvSegment {
    pub table: BlockTable,
    pub start: usize,
    pub end: usize,
}

impl KvSegment {
    pub fn len(&self) -> usize {
        self.end.saturating_sub(self.start)
    }
}

/// The forward pass's view of a thread's segments.
pub(super) fn spans(segments: &[KvSegment]) -> Vec<KvSpan<'_>> {
    segments
        .iter()
        .map(|s| KvSpan {
            block_table: s.table.blocks(),
            start: s.start,
            end: s.end,
        })
        .collect()
}

/// A child's copy of its parent's segments (block references, no KV bytes).
pub(super) fn fork_segments(
    pool: &mut BlockPool,
    segments: &[KvSegment],
) -> Result<Vec<KvSegment>, KvError> {
    let mut out = Vec::with_capacity(segments.len());
    for s in segments {
        match s.table.fork(pool) {
            Ok(table) => out.push(KvSegment {
                table,
                start: s.start,
                end: s.end,
            }),
            Err(e) => {
                free_segments(pool, &mut out)?;
                return Err(e);
            }
        }
    }
    Ok(out)
}

pub(super) fn free_segments(
    pool: &mut BlockPool,
    segments: &mut Vec<KvSegment>,
) -> Result<(), KvError> {
    for mut s in segments.drain(..) {
        s.table.free(pool)?;
    }
    Ok(())
}

/// A join that may merge KV.
pub(super) struct MergeJoin<'a> {
    /// The parent.
    pub thread: usize,
    pub kids: &'a [usize],
    pub fork: &'a Fork,
    pub results: &'a [ChildResult],
    /// The joined text: the parent's, each child's, then `append`.
    pub text: &'a str,
    pub append: &'a str,
    /// Text every child's suffix begins with, kept once (child 0's); see
    /// `Layout::Merged`.
    pub lead: &'a str,
    /// The parent's own token count at the fork.
    pub fork_tokens: usize,
}

/// What a child adds to the merged KV: its tokens still to compute.
struct ChildTail {
    thread: usize,
    rest: Vec<u32>,
}

impl Engine<'_> {
    /// Gives back all KV a thread holds (its table and its segments).
    pub(super) fn release_kv(&mut self, id: usize) -> Result<(), EngineError> {
        let t = &mut self.threads[id];
        t.table.free(&mut self.pool)?;
        free_segments(&mut self.pool, &mut t.segments)?;
        Ok(())
    }

    pub(super) fn release_children(&mut self, kids: &[usize]) -> Result<(), EngineError> {
        for &k in kids {
            self.release_kv(k)?;
        }
        Ok(())
    }

    /// Joins the children into the parent by merging their KV. Returns the
    /// tokens whose KV the parent now sees without recomputing them, or
    /// `None` when the merge cannot be exact (the caller then re-prefills,
    /// after giving back the children's KV).
    pub(super) fn merge_join(&mut self, m: &MergeJoin) -> Result<Option<usize>, EngineError> {
        let Some((tails, lead_tokens)) = self.merge_plan(m)? else {
            return Ok(None);
        };
        let MergeJoin {
            thread: id,
            kids,
            text,
            append,
            fork_tokens: p,
            ..
        } = *m;
        let append_tokens = self.tok.encode(append, false)?;
        if append_tokens.is_empty() {
            return Ok(None);
        }
        // Room for every child's closing tokens: newer threads are
        // preempted for it, as the scheduler preempts for a step (a
        // re-prefill here would change the layout, and so the text, with
        // the memory pressure); only when nothing newer holds a block the
        // join falls back.
        for tail in &tails {
            loop {
                let kid = &mut self.threads[tail.thread];
                match kid.table.grow(&mut self.pool, tail.rest.len()) {
                    Ok(Some(op)) => self.copy_block(op),
                    Ok(None) => {}
                    Err(KvError::OutOfBlocks { .. }) => {
                        if self.preempt_newer_than(id)? {
                            continue;
                        }
                        return Ok(None);
                    }
                    Err(e) => return Err(e.into()),
                }
                break;
            }
            let kid = &mut self.threads[tail.thread];
            let n = kid.n_cached;
            kid.tokens.truncate(n);
            kid.tokens.extend(&tail.rest);
        }
        let closing: Vec<&ChildTail> = tails.iter().filter(|t| !t.rest.is_empty()).collect();
        if !closing.is_empty() {
            let spans: Vec<Vec<KvSpan>> = closing
                .iter()
                .map(|t| spans(&self.threads[t.thread].segments))
                .collect();
            let steps: Vec<SeqStep> = closing
                .iter()
                .zip(&spans)
                .map(|(tail, shared)| {
                    let kid = &self.threads[tail.thread];
                    SeqStep {
                        tokens: &kid.tokens[kid.n_cached..],
                        pos_start: kid.pos_base + kid.n_cached,
                        kv_start: kid.n_cached,
                        block_table: kid.table.blocks(),
                        all_logits: false,
                        shared,
                    }
                })
                .collect();
            let super::Compute::Native { model, kv, ws } = &mut self.compute else {
                return Err(EngineError::Invalid(
                    "a KV-merge join on a remote backend".into(),
                ));
            };
            model.forward(kv, &steps, ws)?;
        }

        // The parent's new layout: its segments, its own prefix, then each
        // child's part past the fork point.
        let parent = &mut self.threads[id];
        let inherited = parent.segments.len();
        let fork_pos = parent.pos_base + p;
        let mut segments = std::mem::take(&mut parent.segments);
        segments.push(KvSegment {
            table: std::mem::take(&mut parent.table),
            start: 0,
            end: p,
        });
        let mut longest = 0;
        for (i, &k) in kids.iter().enumerate() {
            let kid = &mut self.threads[k];
            kid.n_cached = kid.tokens.len();
            // Positions the child's part spans past the fork point.
            longest = longest.max((kid.pos_base + kid.n_cached).saturating_sub(fork_pos));
            let mut own = kid.segments.split_off(inherited);
            own.push(KvSegment {
                table: std::mem::take(&mut kid.table),
                start: 0,
                end: kid.n_cached,
            });
            // The first slots of a child's first own segment are the
            // parent's prefix (a forked table): already in `segments`. The
            // lead's tokens, identical in every child, are kept once.
            own[0].start = if i == 0 { p } else { p + lead_tokens };
            free_segments(&mut self.pool, &mut kid.segments)?;
            for mut s in own {
                if s.len() == 0 {
                    s.table.free(&mut self.pool)?;
                } else {
                    segments.push(s);
                }
            }
        }
        let computed: usize =
            tails.iter().map(|t| t.rest.len()).sum::<usize>() + append_tokens.len();
        let parent = &mut self.threads[id];
        // Over merged segments at shifted positions the context is no
        // plain sequence: later samples cannot be replayed as one.
        parent.close_samples();
        parent.samples_exact = false;
        let reused = segments.iter().map(KvSegment::len).sum();
        parent.segments = segments;
        parent.pos_base = fork_pos + longest;
        parent.history_start = append_tokens.len();
        parent.tokens = append_tokens;
        parent.n_cached = 0;
        parent.own_tok_start = 0;
        parent.own_text_start = text.len() - append.len();
        parent.output_start = text.len();
        parent.set_context(text.to_string());
        let r = parent.request;
        self.requests[r].stats.join_tokens_computed += computed;
        Ok(Some(reused))
    }

    /// Checks that the merged KV will hold exactly `text`, and returns each
    /// child's tokens still to compute and the lead's token count; `None`
    /// when it would not.
    #[allow(clippy::type_complexity)]
    fn merge_plan(&self, m: &MergeJoin) -> Result<Option<(Vec<ChildTail>, usize)>, EngineError> {
        let MergeJoin {
            thread: id,
            kids,
            fork,
            results,
            text,
            append,
            lead,
            fork_tokens: p,
        } = *m;
        let lead_ids = if lead.is_empty() {
            Vec::new()
        } else {
            self.tok.encode(lead, false)?
        };
        let parent = &self.threads[id];
        if append.is_empty()
            || kids.len() != results.len()
            || parent.tokens.len() != p
            || parent.n_cached != p
            || parent.table.len() != p
            || fork.segment_end != parent.context.len()
        {
            return Ok(None);
        }
        let mut expect = parent.context.clone();
        let mut tails = Vec::with_capacity(kids.len());
        for (i, (&k, result)) in kids.iter().zip(results).enumerate() {
            let kid = &self.threads[k];
            // Every child's KV must begin with the lead's tokens, so that
            // keeping child 0's copy keeps the same KV at the same places.
            if kid.tokens.get(p..p + lead_ids.len()) != Some(&lead_ids[..])
                || !kid
                    .context
                    .get(fork.segment_end..)
                    .is_some_and(|c| c.starts_with(lead))
            {
                return Ok(None);
            }
            let skip = if i == 0 { 0 } else { lead.len() };
            let own_first_end = kid
                .segments
                .get(parent.segments.len())
                .map_or(kid.table.len(), |s| s.end);
            let intact = kid.in_layout
                && kid.segments.len() >= parent.segments.len()
                && own_first_end >= p
                && kid.table.len() == kid.n_cached
                && kid.own_tok_start <= kid.n_cached
                && result.text.as_deref() == Some(kid.generated_text());
            let (Some(piece), Some(tail)) = (
                kid.context.get(fork.segment_end + skip..),
                kid.context.get(kid.own_text_start..),
            ) else {
                return Ok(None);
            };
            if !intact {
                return Ok(None);
            }
            expect.push_str(piece);
            expect.push_str(&result.close);
            // What the child's own tokens hold, and what is still missing
            // (its last sampled token, text a stop string cut, the close).
            let Ok(done) = self
                .tok
                .decode(&kid.tokens[kid.own_tok_start..kid.n_cached])
            else {
                return Ok(None);
            };
            let target = format!("{tail}{}", result.close);
            let Some(rest) = target.strip_prefix(done.as_str()) else {
                return Ok(None);
            };
            let sampled = &kid.tokens[kid.n_cached..];
            let rest = if rest.is_empty() {
                Vec::new()
            } else if !sampled.is_empty() && self.tok.decode(sampled).is_ok_and(|t| t == rest) {
                // The tokens the child sampled (its last one, and the token
                // kept after a stop): the ids as sampled, not re-encoded.
                sampled.to_vec()
            } else {
                self.tok.encode(rest, false)?
            };
            tails.push(ChildTail { thread: k, rest });
        }
        expect.push_str(append);
        Ok((expect == text).then_some((tails, lead_ids.len())))
    }
}
