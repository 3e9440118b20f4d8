//! Multiverse (Infini-AI-Lab/Multiverse): `<Parallel><Goal><Outline>..`
//! `</Goal><Path>..</Path>..<Conclusion>..</Conclusion></Parallel>`, special
//! tokens, nesting allowed (path ids like `1.1`), KV-merge join.
//!
//! - Fork trigger `</Goal>`; one child per `<Outline>`, child prompt =
//!   context + `<Path>{label}:` with the outline's own number as label;
//!   child stop `</Path>`.
//! - Valid only with `<Goal>` first in its `<Parallel>` block, every
//!   `<Outline>` closed and numbered, at least one outline; otherwise the
//!   trigger is refused and the thread decodes on sequentially.
//! - Join: KV merge. Paths start at the fork position, are masked from each
//!   other; `<Conclusion>` starts after the longest path and sees all.
//!
//! Source check: the files `PROTOCOLS.md` names (`data/prompt/step3-prompt.txt`,
//! `data/parse.py`, `train/utils.py`) are not in the searchable index; the
//! index holds the repository's data scripts (`data/afterwards.py` strips
//! exactly the tags above) and the engine README (a SGLang fork). So the
//! strings follow `PROTOCOLS.md`, unverified against code. The reference
//! engine has no nesting guard; the depth limit here is policy. A path that
//! ends without `</Path>` (end of sequence, length) is closed with `</Path>`
//! at its own positions (defined here; the reference behaviour is unknown).

use crate::protocol::{
    closed_result, malformed, Action, AfterJoin, ChildEnd, ChildResult, ChildStop, Fork,
    ForkContext, Join, JoinMode, Protocol, Rules, Scan,
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
pub const CONCLUSION_OPEN: &str = "<Conclusion>";

/// Multiverse with its nesting limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Multiverse {
    /// Threads at depth < `max_depth` may fork. The reference has no limit
    /// (a known pain point); 4 keeps runaway nesting bounded.
    pub max_depth: u32,
    pub max_children: Option<usize>,
}

impl Default for Multiverse {
    fn default() -> Self {
        Self {
            max_depth: 4,
            max_children: None,
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
        Rules::nested(JoinMode::KvMerge, self.max_depth, self.max_children)
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
        fork_per_label(end, labels, |label| format!("{PATH_OPEN}{label}:"))
    }

    fn child_stop(&self) -> ChildStop {
        ChildStop {
            stop: Some(PATH_CLOSE),
        }
    }

    fn child_result(&self, generated: &str, end: ChildEnd) -> ChildResult {
        closed_result(generated, end, PATH_CLOSE, PATH_CLOSE)
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
            true,
            AfterJoin::Continue,
        )
    }
}
