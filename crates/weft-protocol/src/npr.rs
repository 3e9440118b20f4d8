//! NPR, Native Parallel Reasoner (bigai-nlco/Native-Parallel-Reasoner):
//! `<guideline>\n<plan>\n1: ..</plan>..</guideline>\n<step>\n1: ..\n</step>\n..`
//! `<takeaway>\n..</takeaway>`, KV-merge join.
//!
//! Follows the authors' engine, the SGLang that NPR vendors under
//! `npr-rl/verl/workers/rollout/sglang_rollout/sglang/` (`managers/
//! schedule_batch.py` = NPR/sb, `managers/scheduler.py` = NPR/sch, commit
//! `e148ad5d`; see `shared/reference/protocols-verified.md` §4); its
//! evaluation runs the same engine (`evals/evaluate.py:591-729`):
//! - Fork trigger `</guideline>` (NPR/sb 709-741); labels by
//!   `<plan>\s*([0-9]+(?:\.[0-9]+)*)\s*:` over the text from the last
//!   `<guideline>` (NPR/sb 729-735); plans without a number are skipped.
//! - No numbered plan, more than 5, or no `<guideline>` in the thread's
//!   own output: the thread ends at the trigger (`FINISH_MATCHED_TOKEN`,
//!   NPR/sb 723-739). The engine reads only the request's generated
//!   tokens; weft reads a root's prompt too (`ForkContext::own_start` is 0
//!   until its first join), so a prompt can force a fork.
//! - Child prompt = context + `\n<step>\n{label}:` (NPR/sb 1623-1624).
//! - Child stop `</step>`, then one more sampled token (normally `\n`) is
//!   kept in text and KV (NPR/sb 743-754, NPR/sch 1462-1464); a child that
//!   ends on end of sequence or its length gets nothing appended.
//! - Children sample with repetition penalty 1.02 on their own tokens; the
//!   engine sets it at the fork and resets it at the merge (NPR/sb 1614,
//!   NPR/sch 1475, 1613).
//! - Join: KV merge as Multiverse's: the leading `\n` kept once (child
//!   0's), children 1.. merged from `<step>` (NPR/sb 1620, NPR/sch
//!   1445-1472, 1574-1610), then `<takeaway>\n` (NPR/sch 1471, 1609) at p +
//!   the longest child, its kept token included.
//! - The root stops on `</step>` too, keeping one more token, as
//!   Multiverse's: the stop ids `[</guideline>, </step>]`
//!   (`sglang_rollout.py:869-875`, `evaluate.py:714-722`) are every
//!   request's ([`Protocol::root_stop`]). The engine also ends a thread
//!   that writes `</guideline>` while its own output holds `</step>`
//!   (NPR/sb 723-739); with `</step>` a stop for every thread, that can
//!   only be the token kept after `</step>`, with which weft ends the
//!   thread anyway.
//! - Nesting: `len(parent_start_path_idx_stack) > 5` refuses (NPR/sb
//!   1586-1593): threads at depths 0..5 fork, `max_depth` 6; a refused fork
//!   decodes on.
//! - Token budget: a fork is refused (the thread decodes on) when fewer
//!   than 1024 tokens of the request's budget remain (NPR/sb 1586-1593, as
//!   the verification notes report it). NPR's engine is Multiverse-Engine's
//!   with other tags, and weft applies that engine's comparison with 1024
//!   for 30: `right_most_pos - init_input_len >= max_new_tokens - 1024`
//!   ([`ForkContext::position`], option `fork_budget_margin`); NPR's own
//!   lines were not available to check the boundary token. Not modelled,
//!   for the same reason: the `parallel_degree`-scaled check and the
//!   length finish at `max_new_tokens - 128` in `check_finished` (NPR/sb
//!   687-697).
use crate::protocol::{
    malformed, Action, AfterJoin, ChildEnd, ChildResult, ChildStop, Fork, ForkContext, Join,
    JoinMode, Protocol, Rules, Scan,
};
use crate::tags::{concat_join, fork_per_label, numbered_labels, segment};
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
/// The text every child's prompt begins with, kept once at the merge.
pub const LEAD: &str = "\n";
/// Plans one guideline may have; more end the thread.
pub const MAX_PLANS: usize = 5;
/// The authors' engine lets threads at depths 0..5 fork.
pub const MAX_DEPTH: u32 = 6;
/// The children's repetition penalty.
pub const CHILD_REPETITION_PENALTY: f32 = 1.02;
/// No fork when fewer than this many tokens of the request's budget remain
/// (NPR/sb 1586-1593).
pub const FORK_BUDGET_MARGIN: usize = 1024;

/// NPR with its limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Npr {
    /// Threads at depth < `max_depth` may fork ([`MAX_DEPTH`]).
    pub max_depth: u32,
    /// More plans than this end the thread ([`MAX_PLANS`]).
    pub max_children: Option<usize>,
    /// The children's repetition penalty ([`CHILD_REPETITION_PENALTY`]).
    pub repetition_penalty: f32,
    /// No fork within this many tokens of the request's budget
    /// ([`FORK_BUDGET_MARGIN`]; `None`: no such guard).
    pub fork_budget_margin: Option<usize>,
}

impl Default for Npr {
    fn default() -> Self {
        Self {
            max_depth: MAX_DEPTH,
            max_children: Some(MAX_PLANS),
            repetition_penalty: CHILD_REPETITION_PENALTY,
            fork_budget_margin: Some(FORK_BUDGET_MARGIN),
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
            child_repetition_penalty: Some(self.repetition_penalty),
            fork_budget_margin: self.fork_budget_margin,
            ..Rules::nested(JoinMode::KvMerge, self.max_depth, self.max_children)
        }
    }

    fn on_trigger(&self, text: &str, _trigger: &'static str, end: usize, ctx: ForkContext) -> Scan {
        let finish = Action::Finish { truncate_to: end };
        let segment = match segment(text, end) {
            Ok(s) => s,
            Err(refusal) => return refusal,
        };
        // Only the thread's own output counts, as the engine reads the
        // request's `output_ids` (NPR/sb 723-739): a child's `</guideline>`
        // does not reopen the root's guideline in its prefix.
        let own = ctx.own_start.min(end);
        let Some(open) = segment
            .get(own..)
            .and_then(|s| s.rfind(GUIDELINE_OPEN))
            .map(|at| at + own)
        else {
            return malformed(end, segment, "`</guideline>` without `<guideline>`", finish);
        };
        let block = &segment[open..];
        let labels = numbered_labels(block, PLAN_OPEN);
        if labels.is_empty() {
            return malformed(
                end,
                block,
                "a `<guideline>` with no numbered `<plan>`",
                finish,
            );
        }
        // The plan count first: the engine decides it in `check_finished`,
        // before its depth guard (NPR/sb 723-739, then 1586-1593).
        if let Some(max) = self.max_children.filter(|&m| labels.len() > m) {
            return Scan::Refuse(crate::Refusal {
                at: end,
                reason: crate::RefuseReason::TooManyChildren {
                    got: labels.len(),
                    max,
                },
                action: finish,
            });
        }
        if let Some(r) = self
            .rules()
            .check(ctx, labels.len(), end, Action::Sequential, finish)
        {
            return Scan::Refuse(r);
        }
        fork_per_label(end, labels, |label| format!("{LEAD}{STEP_OPEN}\n{label}:"))
    }

    fn child_stop(&self) -> ChildStop {
        ChildStop {
            stop: Some(STEP_CLOSE),
            keep_after: 1,
        }
    }

    fn root_stop(&self) -> ChildStop {
        self.child_stop()
    }

    fn child_result(&self, generated: &str, end: ChildEnd) -> ChildResult {
        // Nothing is appended, whatever the end (as Multiverse).
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
            TAKEAWAY_OPEN,
            Some(LEAD),
            AfterJoin::Continue,
        )
    }
}
