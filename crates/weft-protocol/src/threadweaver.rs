//! ThreadWeaver (facebookresearch/threadweaver): inside `<think>`,
//! `<Parallel><Outlines><Outline>1: ..</Outline>..</Outlines>`
//! `<Thread>\n1: ..</Thread>..</Parallel>`, re-prefill join.
//!
//! Checked against `threadweaver_rl/.../single_turn_agent_loop.py`
//! (`ParallelBranchingController`). Findings where the code says more than,
//! or differs from, `PROTOCOLS.md`:
//! - Fork trigger `</Outlines>`; labels are
//!   `re.findall(r"<Outline>\s*([0-9]+(?:\.[0-9]+)*)\s*:")` over the text
//!   from the last `<Outlines>` on, de-duplicated in order. No labels (or no
//!   `<Outlines>`): no fork, the thread decodes on sequentially.
//! - Child prompt = context + `\n<Thread>\n{label}:`; child stop `</Thread>`
//!   (kept) or end of sequence. A child that did not stop on `</Thread>`
//!   gets `\n</Thread>` appended.
//! - Join: the first child's text is preceded by `\n<Thread>\n{label}:`,
//!   the others by `<Thread>\n{label}:` (no newline between threads). The
//!   join then appends `\n` (`no_conclusion`, the released checkpoints'
//!   setting and the default here) or `\n<Conclusion>\n`,
//!   not `</Parallel>`: the model writes the conclusion and `</Parallel>`
//!   itself. If any child hit end of sequence or its length limit, the join
//!   closes with `\n<Conclusion>\n</Conclusion>\n</Parallel>` (or
//!   `\n</Parallel>`) and the request ends.
//! - The cap is 32 controller *iterations* (a sequential step or a parallel
//!   step each count one), so at most 16 fork rounds, and the request ends
//!   right after the 16th join. `PROTOCOLS.md` says 32 fork rounds.
//! - Threads are decoded with stop `</Thread>` only: a `</Outlines>` inside
//!   a thread is ordinary text (depth 1, no nesting).

use crate::protocol::{
    check_count, closed_result, malformed, prefix, Action, AfterJoin, ChildEnd, ChildResult,
    ChildStop, Fork, ForkContext, Join, JoinMode, Layout, Protocol, Rules, Scan,
};
use crate::tags::{dedup, fork_per_label, last_open, numbered_labels, segment};
use crate::ProtocolError;

pub const OUTLINES_OPEN: &str = "<Outlines>";
/// The fork trigger.
pub const OUTLINES_CLOSE: &str = "</Outlines>";
pub const OUTLINE_OPEN: &str = "<Outline>";
pub const THREAD_OPEN: &str = "<Thread>";
/// A child's stop string.
pub const THREAD_CLOSE: &str = "</Thread>";
/// Appended to a child that did not stop on [`THREAD_CLOSE`].
pub const THREAD_FORCED_CLOSE: &str = "\n</Thread>";
/// The reference's 32 controller iterations allow 16 fork rounds.
pub const MAX_FORK_ROUNDS: u32 = 16;

/// ThreadWeaver with the reference's options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadWeaver {
    /// The reference's `no_conclusion` option: the join appends `\n`
    /// instead of `\n<Conclusion>\n`. On by default, as every published
    /// RL launch sets it (`threadweaver_rl/README.md:67,72`,
    /// `train_par.slurm:65`, `multinode_run.slurm:133`) and the SFT
    /// evaluation joins (`threadweaver_sft/src/simple_eval.py:647-661`);
    /// the config's own default is false (`rollout.yaml:219`).
    pub no_conclusion: bool,
    pub max_fork_rounds: u32,
}

impl Default for ThreadWeaver {
    fn default() -> Self {
        Self {
            no_conclusion: true,
            max_fork_rounds: MAX_FORK_ROUNDS,
        }
    }
}

impl Protocol for ThreadWeaver {
    fn name(&self) -> &'static str {
        "threadweaver"
    }

    fn triggers(&self) -> &'static [&'static str] {
        &[OUTLINES_CLOSE]
    }

    fn rules(&self) -> Rules {
        Rules {
            join_mode: JoinMode::Reprefill,
            max_depth: 1,
            fixed_children: None,
            max_children: None,
            max_fork_rounds: Some(self.max_fork_rounds),
            child_temperature: None,
            child_repetition_penalty: None,
            fork_budget_margin: None,
        }
    }

    fn on_trigger(&self, text: &str, _trigger: &'static str, end: usize, ctx: ForkContext) -> Scan {
        let seq = Action::Sequential;
        let finish = Action::Finish { truncate_to: end };
        let segment = match segment(text, end) {
            Ok(s) => s,
            Err(refusal) => return refusal,
        };
        let open = match last_open(
            segment,
            OUTLINES_OPEN,
            OUTLINES_CLOSE,
            "`</Outlines>` without `<Outlines>`",
        ) {
            Ok(at) => at,
            Err(refusal) => return refusal,
        };
        let labels = dedup(numbered_labels(&segment[open..], OUTLINE_OPEN));
        if labels.is_empty() {
            return malformed(end, &segment[open..], "no numbered `<Outline>`", seq);
        }
        if let Some(r) = self.rules().check(ctx, labels.len(), end, seq, finish) {
            return Scan::Refuse(r);
        }
        fork_per_label(end, labels, |label| format!("\n{THREAD_OPEN}\n{label}:"))
    }

    fn child_stop(&self) -> ChildStop {
        ChildStop {
            stop: Some(THREAD_CLOSE),
            keep_after: 0,
        }
    }

    fn child_result(&self, generated: &str, end: ChildEnd) -> ChildResult {
        let mut result = closed_result(generated, end, THREAD_CLOSE, THREAD_FORCED_CLOSE);
        // The reference closes every child that did not stop on the tag,
        // even one whose text happens to end with it.
        if end != ChildEnd::Stop {
            result.close = THREAD_FORCED_CLOSE.to_string();
        }
        result
    }

    fn join(
        &self,
        parent: &str,
        fork: &Fork,
        children: &[ChildResult],
        ctx: ForkContext,
    ) -> Result<Join, ProtocolError> {
        check_count(fork, children)?;
        let segment = prefix(parent, fork.segment_end)?;
        let mut text = String::from(segment);
        for (i, (spec, child)) in fork.children.iter().zip(children).enumerate() {
            if i == 0 {
                text.push('\n');
            }
            text.push_str(THREAD_OPEN);
            text.push('\n');
            text.push_str(&spec.label);
            text.push(':');
            text.push_str(child.text.as_deref().unwrap_or(""));
            text.push_str(&child.close);
        }
        let ended = children.iter().any(|c| c.end != ChildEnd::Stop);
        let (append, then) = match (ended, self.no_conclusion) {
            (true, false) => (
                "\n<Conclusion>\n</Conclusion>\n</Parallel>",
                AfterJoin::Finish,
            ),
            (true, true) => ("\n</Parallel>", AfterJoin::Finish),
            (false, no_conclusion) => {
                let then = if ctx.rounds >= self.max_fork_rounds {
                    AfterJoin::Finish
                } else {
                    AfterJoin::Continue
                };
                (
                    if no_conclusion {
                        "\n"
                    } else {
                        "\n<Conclusion>\n"
                    },
                    then,
                )
            }
        };
        text.push_str(append);
        Ok(Join {
            text,
            layout: Layout::Sequential {
                kept_prefix: fork.segment_end,
            },
            then,
        })
    }
}
