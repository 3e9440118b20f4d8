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
    closed_result, malformed, Action, AfterJoin, ChildEnd, ChildResult, ChildStop, Fork,
    ForkContext, Join, JoinMode, Protocol, Rules, Scan,
};
use crate::tags::{concat_join, count, fork_per_label, last_open, numbered_labels, segment};
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
        Rules::nested(JoinMode::KvMerge, self.max_depth, self.max_children)
    }

    fn on_trigger(&self, text: &str, _trigger: &'static str, end: usize, ctx: ForkContext) -> Scan {
        let seq = Action::Sequential;
        let segment = match segment(text, end) {
            Ok(s) => s,
            Err(refusal) => return refusal,
        };
        let open = match last_open(
            segment,
            GUIDELINE_OPEN,
            GUIDELINE_CLOSE,
            "`</guideline>` without `<guideline>`",
        ) {
            Ok(at) => at,
            Err(refusal) => return refusal,
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
        fork_per_label(end, labels, |label| {
            format!("\n{STEP_OPEN}\n{label}{colon}")
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
        concat_join(
            parent,
            fork,
            children,
            TAKEAWAY_OPEN,
            true,
            AfterJoin::Continue,
        )
    }
}
