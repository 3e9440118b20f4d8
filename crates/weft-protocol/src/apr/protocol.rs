//! APR behind the [`Protocol`] trait: the engine-facing side of the
//! functions in [`crate::apr`].
//!
//! Checked against Parallel-Reasoning/APR `src/eval/parallel_infernce_utils.py`
//! (`decode_trace`, `is_calling_subsearch`, `_get_subsearch_info`,
//! `get_main_trace_after_sub_search`, `call_search`). Findings where the code
//! says more than, or differs from, `PROTOCOLS.md`:
//! - Fork trigger: the reference decodes the parent to end of sequence and
//!   forks when the last line holds `<End Calling Sub Searches>`. We fork as
//!   soon as that string is written; the join replaces the block from
//!   `<Calling Sub Searches>` on, so the joined text is the same.
//! - Guard: the parent decodes with stop string `<Sub Searches>` (not kept in
//!   the text); when it matches, the reference appends `<Calling Sub
//!   Searches>` (no newline) and decodes on. Children are decoded by the
//!   same function, so the guard holds for them too.
//! - Conditioning (from `tinyrl/rollout/apr_utils.py:404-421`, the RL
//!   rollout, not `parallel_infernce_utils.py`): the children's prefix is
//!   the raw text before `Moving to Node` on the root's first line:
//!   repeated when it starts with `Token Budget: `, dropped for `Sub Call
//!   Budget: `, any other prefix raises in the reference (here: a malformed
//!   fork, the thread finishes). `src/eval/eval_apr.py:349` calls
//!   `call_search(..., budget=None)`, so evaluation children get no prefix;
//!   evaluation roots only use `Sub Call Budget:`, which is dropped anyway,
//!   so the two agree there.
//! - A fork block that does not parse raises in the reference and the whole
//!   solve returns no solution; here the thread finishes at the block.
//! - Join: the reference writes `Sub Search {i}` with i the enumeration
//!   index and always `at level 1`; [`crate::apr::join`] writes the index
//!   and level the fork block gave. They agree on every reference trace
//!   (indices are 0.. and the level is 1).
//! - Nesting: children are decoded without recursion; a child's own fork
//!   block is followed by end of sequence and ends it (depth 1).

use super::{child_result, join, parse_fork, FORK_CLOSE, FORK_OPEN, HALLUCINATED_JOIN};
use crate::protocol::{
    check_count, malformed, prefix, Action, AfterJoin, ChildEnd, ChildPrompt, ChildResult,
    ChildSpec, ChildStop, Fork, ForkContext, Join, JoinMode, Layout, Protocol, Refusal,
    RefuseReason, Rules, Scan,
};
use crate::ProtocolError;

/// What the reference's guard re-inserts after a hallucinated join.
pub const GUARD_REINSERT: &str = "<Calling Sub Searches>";

/// APR with its limits. `Apr::default()` is the reference (children do not
/// fork, no cap on fork rounds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Apr {
    /// Threads at depth < `max_depth` may fork (reference: 1).
    pub max_depth: u32,
    /// Optional cap on forks per request (not in the reference).
    pub max_fork_rounds: Option<u32>,
}

impl Default for Apr {
    fn default() -> Self {
        Self {
            max_depth: 1,
            max_fork_rounds: None,
        }
    }
}

/// The children's conditioning prefix, read from the root's first line as
/// the reference's `call_search` does.
fn child_prefix(text: &str) -> Result<&str, &'static str> {
    let first = text.split('\n').next().unwrap_or("");
    let condition = first.split("Moving to Node").next().unwrap_or("");
    if condition.starts_with("Sub Call Budget: ") {
        Ok("")
    } else if condition.starts_with("Token Budget: ") || condition.is_empty() {
        Ok(condition)
    } else {
        Err("unknown conditioning prefix before `Moving to Node` on the first line")
    }
}

impl Protocol for Apr {
    fn name(&self) -> &'static str {
        "apr"
    }

    fn triggers(&self) -> &'static [&'static str] {
        &[FORK_CLOSE, HALLUCINATED_JOIN]
    }

    fn rules(&self) -> Rules {
        Rules {
            join_mode: JoinMode::Reprefill,
            max_depth: self.max_depth,
            fixed_children: None,
            max_children: None,
            max_fork_rounds: self.max_fork_rounds,
            child_temperature: None,
            child_repetition_penalty: None,
            fork_budget_margin: None,
        }
    }

    fn on_trigger(&self, text: &str, trigger: &'static str, end: usize, ctx: ForkContext) -> Scan {
        let finish = Action::Finish { truncate_to: end };
        if trigger == HALLUCINATED_JOIN {
            return Scan::Refuse(Refusal {
                at: end,
                reason: RefuseReason::HallucinatedJoin,
                action: Action::Rewrite {
                    truncate_to: end.saturating_sub(HALLUCINATED_JOIN.len()),
                    append: GUARD_REINSERT.to_string(),
                },
            });
        }
        let Some(segment) = text.get(..end) else {
            return malformed(end, "", "trigger end is not a char boundary", finish);
        };
        let specs = match parse_fork(segment) {
            Ok(specs) => specs,
            Err(e) => {
                return Scan::Refuse(Refusal {
                    at: end,
                    reason: RefuseReason::Malformed(e),
                    action: finish,
                })
            }
        };
        if let Some(refusal) =
            self.rules()
                .check(ctx, specs.len(), end, finish.clone(), finish.clone())
        {
            return Scan::Refuse(refusal);
        }
        let condition = match child_prefix(segment) {
            Ok(c) => c,
            Err(reason) => {
                let line = segment.split('\n').next().unwrap_or("");
                return malformed(end, line, reason, finish);
            }
        };
        let children = specs
            .iter()
            .enumerate()
            .map(|(index, spec)| ChildSpec {
                index,
                label: spec.node_id.clone(),
                prompt: ChildPrompt::Fresh {
                    prompt: format!("{condition}{}", spec.prompt(None)),
                },
            })
            .collect();
        Scan::Fork(Fork {
            segment_end: end,
            children,
        })
    }

    fn child_stop(&self) -> ChildStop {
        ChildStop {
            stop: None,
            keep_after: 0,
        }
    }

    fn child_result(&self, generated: &str, end: ChildEnd) -> ChildResult {
        ChildResult {
            text: child_result(generated).map(str::to_string),
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
        check_count(fork, children)?;
        let segment = prefix(parent, fork.segment_end)?;
        let results: Vec<Option<&str>> = children.iter().map(|c| c.text.as_deref()).collect();
        let text = join(segment, &results)?;
        let kept_prefix = segment.rfind(FORK_OPEN).unwrap_or(0);
        Ok(Join {
            text,
            layout: Layout::Sequential { kept_prefix },
            then: AfterJoin::Continue,
        })
    }
}
