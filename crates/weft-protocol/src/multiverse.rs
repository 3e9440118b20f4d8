//! Multiverse (Infini-AI-Lab/Multiverse): `<Parallel>\n<Goal>\n<Outline>\n1:`
//! `..</Outline>..</Goal>\n<Path>\n1:..</Path>\n..<Conclusion>\n..`, special
//! tokens, nesting allowed (path ids like `1.1`), KV-merge join.
//!
//! Follows the authors' engine, Multiverse-Engine's SGLang fork
//! (`managers/schedule_batch.py` = MVE/sb, `managers/scheduler.py` = MVE/sch,
//! commit `6828f07`; see `shared/reference/protocols-verified.md` §2):
//! - Fork trigger `</Goal>` (MVE/sb 697-708); labels by
//!   `<Outline>\s*([0-9]+(?:\.[0-9]+)*)\s*:` over the text from the last
//!   `<Goal>` (MVE/sb 1560-1570). weft is stricter than the engine: a
//!   `<Goal>` not first in its `<Parallel>` block, unbalanced or unnumbered
//!   outlines, or none, are refused and the thread decodes on.
//! - Child prompt = context + `\n<Path>\n{label}:` (MVE/sb 1584-1585,
//!   `encode(f"\n<Path>\n{e}")` with `e = "1:"`).
//! - Child stop `</Path>`, then one more sampled token (normally `\n`) is
//!   kept in text and KV (MVE/sb 709-715, MVE/sch 1562-1565:
//!   `output_ids[:-1]` of `</Path>`, t1, t2). A child that ends on end of
//!   sequence or its length gets nothing appended (MVE/sb 720-730).
//! - Join: KV merge. The leading `\n` of the child prompt is kept once,
//!   child 0's; children 1.. are merged from their `<Path>` on (MVE/sb 1581,
//!   MVE/sch 1536-1577); `<Conclusion>\n` is appended (MVE/sch 1435, 1577)
//!   at p + the longest child, its kept token included.
//! - The root stops on `</Path>` too: the engine's stop list
//!   (`stop_token_ids=[</Goal>, </Path>]`, `example/example.py:36`) is every
//!   request's, and `check_finished` (MVE/sb 697-715) ends any request two
//!   tokens after `</Path>`; a root is no one's child (not in `p2c_map`),
//!   so it finishes there, reason `stop`, and SGLang's detokenizer trims
//!   the last token (`trim_matched_stop`: `output[:-1]` for a matched
//!   token id): the root keeps `</Path>` and one token
//!   ([`Protocol::root_stop`]). The token kept after `</Path>` is whatever
//!   was sampled, end of sequence included (the stop check returns before
//!   the end-of-sequence check, MVE/sb 697-715).
//! - Nesting: the engine refuses a fork when the stack of open paths is
//!   longer than 5 (`len(parent_start_path_idx_stack) > 5`, MVE/sb
//!   1540-1547), so threads at depths 0..5 fork: `max_depth` 6; a refused
//!   fork decodes on, as there.
//! - Token budget: no fork when `right_most_pos - init_input_len >=
//!   max_new_tokens - 30` (MVE/sb `filter_batch`, 1540-1547): the position
//!   of the token after `</Goal>` past the root's prompt against the
//!   request's `max_tokens` ([`ForkContext::position`],
//!   [`Rules::fork_budget_margin`], option `fork_budget_margin`, 30); the
//!   thread decodes on, as there.
//! - Not reproduced: a child whose token after `</Path>` is `</Goal>`
//!   re-arms the engine's trigger and forks again from its parent's goal
//!   block (MVE/sb 697-708); weft ends it with that token kept.
//! - Positions follow the engine, which places paths one position later
//!   (and `<Conclusion>` two) than the training layout (`train/utils.py`
//!   182-253); see the verification notes.
use crate::protocol::{
    malformed, Action, AfterJoin, ChildEnd, ChildResult, ChildStop, Fork, ForkContext, Join,
    JoinMode, Protocol, Rules, Scan,
};
use crate::tags::{concat_join, count, fork_per_label, last_open, numbered_labels, segment};
use crate::ProtocolError;

pub const BLOCK_OPEN: &str = "<Parallel>";
pub const GOAL_OPEN: &str = "<Goal>";
/// The fork trigger.
pub const GOAL_CLOSE: &str = "</Goal>";
pub const OUTLINE_OPEN: &str = "<Outline>";
pub const OUTLINE_CLOSE: &str = "</Outline>";
pub const PATH_OPEN: &str = "<Path>";
/// A child's stop string.
pub const PATH_CLOSE: &str = "</Path>";
/// What the join appends after the merged paths.
pub const CONCLUSION_OPEN: &str = "<Conclusion>\n";
/// The text every child's prompt begins with, kept once at the merge.
pub const LEAD: &str = "\n";
/// The authors' engine lets threads at depths 0..5 fork.
pub const MAX_DEPTH: u32 = 6;
/// No fork within this many tokens of the request's budget (MVE/sb
/// `max_new_tokens - 30`).
pub const FORK_BUDGET_MARGIN: usize = 30;

/// Multiverse with its nesting limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Multiverse {
    /// Threads at depth < `max_depth` may fork ([`MAX_DEPTH`], as the
    /// authors' engine).
    pub max_depth: u32,
    pub max_children: Option<usize>,
    /// No fork within this many tokens of the request's budget
    /// ([`FORK_BUDGET_MARGIN`]; `None`: no such guard).
    pub fork_budget_margin: Option<usize>,
}

impl Default for Multiverse {
    fn default() -> Self {
        Self {
            max_depth: MAX_DEPTH,
            max_children: None,
            fork_budget_margin: Some(FORK_BUDGET_MARGIN),
        }
    }
}

impl Protocol for Multiverse {
    fn name(&self) -> &'static str {
        "multiverse"
    }

    fn triggers(&self) -> &'static [&'static str] {
        &[GOAL_CLOSE]
    }

    fn rules(&self) -> Rules {
        Rules {
            fork_budget_margin: self.fork_budget_margin,
            ..Rules::nested(JoinMode::KvMerge, self.max_depth, self.max_children)
        }
    }

    fn on_trigger(&self, text: &str, _trigger: &'static str, end: usize, ctx: ForkContext) -> Scan {
        let seq = Action::Sequential;
        let segment = match segment(text, end) {
            Ok(s) => s,
            Err(refusal) => return refusal,
        };
        let goal = match last_open(segment, GOAL_OPEN, GOAL_CLOSE, "`</Goal>` without `<Goal>`") {
            Ok(at) => at,
            Err(refusal) => return refusal,
        };
        if !segment[..goal].trim_end().ends_with(BLOCK_OPEN) {
            let line = segment[..goal].rsplit('\n').next().unwrap_or("");
            return malformed(
                end,
                line,
                "`<Goal>` is not first in a `<Parallel>` block",
                seq,
            );
        }
        let block = &segment[goal + GOAL_OPEN.len()..end - GOAL_CLOSE.len()];
        let opens = count(block, OUTLINE_OPEN);
        if opens == 0 {
            return malformed(end, block, "a `<Goal>` with no `<Outline>`", seq);
        }
        if opens != count(block, OUTLINE_CLOSE) {
            return malformed(end, block, "unbalanced `<Outline>` tags", seq);
        }
        let labels = numbered_labels(block, OUTLINE_OPEN);
        if labels.len() != opens {
            return malformed(end, block, "an `<Outline>` without a `{n}:` number", seq);
        }
        if let Some(r) = self.rules().check(ctx, labels.len(), end, seq.clone(), seq) {
            return Scan::Refuse(r);
        }
        fork_per_label(end, labels, |label| format!("{LEAD}{PATH_OPEN}\n{label}:"))
    }

    fn child_stop(&self) -> ChildStop {
        ChildStop {
            stop: Some(PATH_CLOSE),
            keep_after: 1,
        }
    }

    fn root_stop(&self) -> ChildStop {
        self.child_stop()
    }

    fn child_result(&self, generated: &str, end: ChildEnd) -> ChildResult {
        // Nothing is appended, whatever the end (the engine merges what the
        // child wrote: `</Path>` and the kept token, or its text up to end
        // of sequence or the length limit).
        ChildResult {
            text: Some(generated.to_string()),
            close: String::new(),
            end,
        }
    }

    fn join(
        &self,
        parent: &str,
        fork: &Fork,
        children: &[ChildResult],
        _ctx: ForkContext,
    ) -> Result<Join, ProtocolError> {
        concat_join(
            parent,
            fork,
            children,
            CONCLUSION_OPEN,
            Some(LEAD),
            AfterJoin::Continue,
        )
    }
}
