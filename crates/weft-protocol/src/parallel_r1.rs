//! Parallel-R1 (zhengkid/Parallel-R1):
//! `<Parallel><Path>..</Path><Path>..</Path></Parallel>\n<Summary>..</Summary>`,
//! a fixed number of paths, re-prefill join.
//!
//! Checked against `verl/parallel_thinking_generation_v3/parallel_thinking_loop_v3.py`
//! (`ParallelThinkingAgentLoopV3`). Findings where the code says more than,
//! or differs from, `PROTOCOLS.md`:
//! - Fork trigger: the main decode stops on the `<Parallel>` token (kept).
//!   `num_paths` children (2 in the reference configs), each prompt =
//!   context + `<Path>`, sampled at temperature 1.0 with its own seed; child
//!   stop `</Path>` or end of sequence. A path that ends on end of sequence
//!   has it replaced by `</Path>`; one cut by `max_path_response_length`
//!   gets `</Path>` appended.
//! - Join: the paths in order (each `<Path>..</Path>`), then
//!   `</Parallel>`, `\n`, `<Summary>`; the summary is decoded with stop
//!   `</Summary>` and the main decode resumes (the same as decoding on).
//! - The cap (`max_iterations_for_parallel_thinking`, 4) ends the request
//!   right after the 4th block's summary: that join says
//!   [`AfterJoin::FinishAt`]`("</Summary>")`. A further `<Parallel>` finishes
//!   the thread without it.
//! - End of sequence inside an open `<Summary>` is replaced by `</Summary>`
//!   and the main decode resumes (`parallel_thinking_loop_v3.py` 400-416);
//!   elsewhere it ends the request.
//! - Training lays the paths out at shared positions (each path starts at
//!   the position after `<Parallel>`, `</Parallel>` at base + longest + 1,
//!   cross-path masks), but the rollout re-prefills the joined tokens with
//!   sequential positions; we follow the rollout.
//! - Paths are decoded with stops `</Path>` and end of sequence only: a
//!   `<Parallel>` inside a path is ordinary text (depth 1).

use crate::protocol::{
    closed_result, malformed, Action, AfterJoin, ChildEnd, ChildResult, ChildStop, Fork,
    ForkContext, Join, JoinMode, Protocol, Rules, Scan,
};
use crate::tags::{concat_join, fork_per_label, segment};
use crate::ProtocolError;

/// The fork trigger.
pub const BLOCK_OPEN: &str = "<Parallel>";
pub const PATH_OPEN: &str = "<Path>";
/// A child's stop string.
pub const PATH_CLOSE: &str = "</Path>";
/// What the join appends after the paths.
pub const JOIN_APPEND: &str = "</Parallel>\n<Summary>";
pub const SUMMARY_CLOSE: &str = "</Summary>";

/// Parallel-R1 with the reference's rollout settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParallelR1 {
    /// `num_paths` (reference: 2).
    pub num_paths: usize,
    /// `max_iterations_for_parallel_thinking` (reference: 4).
    pub max_blocks: u32,
}

impl Default for ParallelR1 {
    fn default() -> Self {
        Self {
            num_paths: 2,
            max_blocks: 4,
        }
    }
}

impl Protocol for ParallelR1 {
    fn name(&self) -> &'static str {
        "parallel-r1"
    }

    fn triggers(&self) -> &'static [&'static str] {
        &[BLOCK_OPEN]
    }

    fn rules(&self) -> Rules {
        Rules {
            join_mode: JoinMode::Reprefill,
            max_depth: 1,
            fixed_children: Some(self.num_paths),
            max_children: Some(self.num_paths),
            max_fork_rounds: Some(self.max_blocks),
            child_temperature: Some(1.0),
            child_repetition_penalty: None,
            fork_budget_margin: None,
        }
    }

    fn on_trigger(&self, text: &str, _trigger: &'static str, end: usize, ctx: ForkContext) -> Scan {
        if let Err(refusal) = segment(text, end) {
            return refusal;
        }
        let finish = Action::Finish {
            truncate_to: end.saturating_sub(BLOCK_OPEN.len()),
        };
        let seq = Action::Sequential;
        // The reference decodes a summary in a call of its own that stops
        // only on `</Summary>` or end of sequence: `<Parallel>` there is text.
        if let Some(open) = text[..end].rfind(JOIN_APPEND) {
            if !text[open..end].contains(SUMMARY_CLOSE) {
                return malformed(end, BLOCK_OPEN, "`<Parallel>` inside a summary", seq);
            }
        }
        if let Some(r) = self.rules().check(ctx, self.num_paths, end, seq, finish) {
            return Scan::Refuse(r);
        }
        if self.num_paths == 0 {
            return malformed(end, BLOCK_OPEN, "num_paths is 0", Action::Sequential);
        }
        let labels = (1..=self.num_paths).map(|i| i.to_string()).collect();
        fork_per_label(end, labels, |_| PATH_OPEN.to_string())
    }

    fn child_stop(&self) -> ChildStop {
        ChildStop {
            stop: Some(PATH_CLOSE),
            keep_after: 0,
        }
    }

    fn child_result(&self, generated: &str, end: ChildEnd) -> ChildResult {
        closed_result(generated, end, PATH_CLOSE, PATH_CLOSE)
    }

    fn on_end_of_sequence(&self, text: &str) -> Option<&'static str> {
        // Only in the summary a join opened (the reference's summary call
        // is its own loop state; a `<Summary>` elsewhere is text).
        let open = text.rfind(JOIN_APPEND)?;
        (!text[open..].contains(SUMMARY_CLOSE)).then_some(SUMMARY_CLOSE)
    }

    fn join(
        &self,
        parent: &str,
        fork: &Fork,
        children: &[ChildResult],
        ctx: ForkContext,
    ) -> Result<Join, ProtocolError> {
        let then = if ctx.rounds >= self.max_blocks {
            AfterJoin::FinishAt(SUMMARY_CLOSE)
        } else {
            AfterJoin::Continue
        };
        concat_join(parent, fork, children, JOIN_APPEND, None, then)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_of_sequence_inside_an_open_summary_closes_it() {
        let p = ParallelR1::default();
        let open = "<Parallel><Path>a</Path><Path>b</Path></Parallel>\n<Summary> so";
        assert_eq!(p.on_end_of_sequence(open), Some(SUMMARY_CLOSE));
        let closed = format!("{open}</Summary> then");
        assert_eq!(p.on_end_of_sequence(&closed), None);
        assert_eq!(p.on_end_of_sequence("no summary"), None);
        // A `<Summary>` the join did not open (in a prompt) is text.
        assert_eq!(p.on_end_of_sequence("Put it after <Summary>. OK"), None);
    }
}
