//! NPR, Native Parallel Reasoner (bigai-nlco/Native-Parallel-Reasoner):
//! `<guideline><plan>1: ..</plan>..</guideline><step>\n1: ..\n</step>..`
//! `<takeaway>..</takeaway>`, KV-merge join.
//!
//! - Fork trigger `</guideline>`; one child per numbered `<plan>` of the
//!   last `<guideline>` block; child prompt = context + `\n<step>\n{label}`;
//!   child stop `</step>`.
//! - Join: KV merge with no re-prefill: prefix KV plus each child's KV;
//!   the continuation starts at the rightmost child end; the engine appends
//!   `<takeaway>\n`. Steps are masked from each other.
//! - A `</guideline>` with no `<guideline>` or no numbered plan is refused
//!   and the thread decodes on sequentially.
//!
//! Source check: the repository's code (`evals/prompts/npr.txt`, the
//! patched SGLang `scheduler.py`) is not in the searchable index (only its
//! README and site are), so the strings follow `PROTOCOLS.md`. A third-party
//! reimplementation of NPR's scheduler found in the index differs in one
//! place: its child suffix is `\n<step>\n{label}:` (with the colon, which the
//! model otherwise writes itself); it also caps plans at 5 and depth at 5
//! and parses plan labels with `<plan>\s*([0-9]+(?:\.[0-9]+)*)\s*:`, which
//! we use. [`STEP_HEADER_COLON`] switches the colon on.

use crate::protocol::{
    check_count, closed_result, concat_children, malformed, prefix, Action, AfterJoin, ChildEnd,
    ChildPrompt, ChildResult, ChildSpec, ChildStop, Fork, ForkContext, Join, JoinMode, Layout,
    Protocol, Rules, Scan,
};
use crate::tags::{count, numbered_labels};
use crate::ProtocolError;

pub const GUIDELINE_OPEN: &str = "<guideline>";
/// The fork trigger.
pub const GUIDELINE_CLOSE: &str = "</guideline>";
pub const PLAN_OPEN: &str = "<plan>";
pub const STEP_OPEN: &str = "<step>";
/// A child's stop string.
pub const STEP_CLOSE: &str = "</step>";
/// What the join appends after the merged steps.
pub const TAKEAWAY_OPEN: &str = "<takeaway>\n";
/// Whether the child suffix ends `{label}:` (third-party engine) instead of
/// `{label}` (`PROTOCOLS.md`).
pub const STEP_HEADER_COLON: bool = false;

/// NPR with its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Npr {
    /// Threads at depth < `max_depth` may fork (policy; unverified in the
    /// reference, 5 in the third-party engine).
    pub max_depth: u32,
    pub max_children: Option<usize>,
}

impl Default for Npr {
    fn default() -> Self {
        Self {
            max_depth: 5,
            max_children: None,
        }
    }
}

impl Protocol for Npr {
    fn name(&self) -> &'static str {
        "npr"
    }

    fn triggers(&self) -> &'static [&'static str] {
        &[GUIDELINE_CLOSE]
    }

    fn rules(&self) -> Rules {
        Rules {
            join_mode: JoinMode::KvMerge,
            max_depth: self.max_depth,
            fixed_children: None,
            max_children: self.max_children,
            max_fork_rounds: None,
            child_temperature: None,
        }
    }

    fn on_trigger(&self, text: &str, _trigger: &'static str, end: usize, ctx: ForkContext) -> Scan {
        let seq = Action::Sequential;
        let Some(segment) = text.get(..end) else {
            return malformed(end, "", "trigger end is not a char boundary", seq);
        };
        let Some(open) = segment.rfind(GUIDELINE_OPEN) else {
            return malformed(
                end,
                GUIDELINE_CLOSE,
                "`</guideline>` without `<guideline>`",
                seq,
            );
        };
        let block = &segment[open..];
        let labels = numbered_labels(block, PLAN_OPEN);
        if labels.is_empty() {
            return malformed(end, block, "a `<guideline>` with no numbered `<plan>`", seq);
        }
        if labels.len() != count(block, PLAN_OPEN) {
            return malformed(end, block, "a `<plan>` without a `{n}:` number", seq);
        }
        if let Some(r) = self.rules().check(ctx, labels.len(), end, seq.clone(), seq) {
            return Scan::Refuse(r);
        }
        let colon = if STEP_HEADER_COLON { ":" } else { "" };
        let children = labels
            .into_iter()
            .enumerate()
            .map(|(index, label)| ChildSpec {
                index,
                prompt: ChildPrompt::Continue {
                    suffix: format!("\n{STEP_OPEN}\n{label}{colon}"),
                },
                label,
            })
            .collect();
        Scan::Fork(Fork {
            segment_end: end,
            children,
        })
    }

    fn child_stop(&self) -> ChildStop {
        ChildStop {
            stop: Some(STEP_CLOSE),
        }
    }

    fn child_result(&self, generated: &str, end: ChildEnd) -> ChildResult {
        closed_result(generated, end, STEP_CLOSE, STEP_CLOSE)
    }

    fn join(
        &self,
        parent: &str,
        fork: &Fork,
        children: &[ChildResult],
        _ctx: ForkContext,
    ) -> Result<Join, ProtocolError> {
        check_count(fork, children)?;
        let segment = prefix(parent, fork.segment_end)?;
        Ok(Join {
            text: concat_children(segment, fork, children, TAKEAWAY_OPEN),
            layout: Layout::Merged {
                fork_at: fork.segment_end,
                append: TAKEAWAY_OPEN.to_string(),
            },
            then: AfterJoin::Continue,
        })
    }
}
