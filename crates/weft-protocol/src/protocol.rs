//! The one trait the engine drives ([`Protocol`]) and the data it exchanges
//! with it: what a fork asks for ([`Fork`], [`ChildSpec`]), how a child
//! stops ([`ChildStop`]), what a join produces ([`Join`], [`Layout`]) and
//! the defined outcome of text that breaks the protocol ([`Refusal`]).
//!
//! Every function here maps text to text. Offsets are byte offsets into the
//! thread's whole context text (prompt + generated), always on `char`
//! boundaries.

use crate::ProtocolError;

/// One parallel-reasoning convention: a small parser plus data. Object safe,
/// so the engine can hold a `Box<dyn Protocol>` chosen at run time
/// ([`crate::by_name`]). Implementations never panic, whatever the text.
pub trait Protocol: Send + Sync + std::fmt::Debug {
    /// The name users pass on the command line (`apr`, `multiverse`, ...).
    fn name(&self) -> &'static str;

    /// The strings whose appearance in a thread's text makes the protocol
    /// act: fork triggers and guards. [`crate::Detector`] looks for them in
    /// the newly generated text plus a tail shorter than the longest one.
    fn triggers(&self) -> &'static [&'static str];

    /// Nesting, fixed child counts, caps and join mode, as data.
    fn rules(&self) -> Rules;

    /// Called when `trigger` (one of [`Protocol::triggers`]) ends at byte
    /// `end` of `text`. Reads back as far as its block needs (once per
    /// trigger, not once per token) and decides what happens.
    fn on_trigger(&self, text: &str, trigger: &'static str, end: usize, ctx: ForkContext) -> Scan;

    /// When a child is finished (besides end of sequence and token limits).
    fn child_stop(&self) -> ChildStop;

    /// When the request's root is finished by the protocol (besides end of
    /// sequence, the request's stop strings and token limits). The default
    /// is never. Multiverse's and NPR's engines put the children's close
    /// tag in every request's stop list, the root's included: a root that
    /// writes `</Path>` / `</step>` keeps one more sampled token and ends
    /// (the request's output is `output_ids[:-1]`: SGLang's detokenizer
    /// trims the token sampled after the kept one).
    fn root_stop(&self) -> ChildStop {
        ChildStop {
            stop: None,
            keep_after: 0,
        }
    }

    /// The part of a child's output the join uses. `generated` is what the
    /// child decoded after its prompt, including the stop string when it
    /// stopped on one, never the end-of-sequence token.
    fn child_result(&self, generated: &str, end: ChildEnd) -> ChildResult;

    /// The request's root sampled end of sequence with this `text`:
    /// `Some(s)` means the reference writes `s` in its place and decoding
    /// goes on (Parallel-R1 inside the `<Summary>` a join opened); `None`
    /// (the default): it ends. Children always end on end of sequence.
    fn on_end_of_sequence(&self, text: &str) -> Option<&'static str> {
        let _ = text;
        None
    }

    /// The parent's context after its children finished. `parent` is the
    /// parent's text up to at least `fork.segment_end`; `children[i]` is
    /// child i's [`Protocol::child_result`]. A count that differs from the
    /// fork's is [`ProtocolError::ChildCount`].
    fn join(
        &self,
        parent: &str,
        fork: &Fork,
        children: &[ChildResult],
        ctx: ForkContext,
    ) -> Result<Join, ProtocolError>;
}

/// Where the thread that hit a trigger stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ForkContext {
    /// 0 for the request's root thread, parent depth + 1 for a child.
    pub depth: u32,
    /// Forks the request has executed (all threads together): at a
    /// trigger, those before it; at a join, including the fork being
    /// joined (the engine counts a fork when it starts its children).
    pub rounds: u32,
    /// Byte offset where the thread's own output begins: what the
    /// reference engines count as a request's `output_ids` (a child's text
    /// after its prompt; a parent's after its last join). 0 for a root
    /// that has not joined, so a prompt can force a fork.
    pub own_start: usize,
    /// Positions past the request's prompt that the token after the
    /// trigger takes: the RoPE position of the thread's next token minus
    /// the root's prompt tokens, what Multiverse's and NPR's engines
    /// compute as `right_most_pos - init_input_len` when they decide a
    /// fork (a child's and a merged parent's positions run on from the
    /// fork point, so this is the length of the critical path so far;
    /// after a re-prefill join, `kv_merge` off, the joined text's
    /// positions run on sequentially and every child's tokens count).
    pub position: usize,
    /// The request's token budget (its `max_tokens`, the engines'
    /// `max_new_tokens`); `None`: no budget, and no budget guard.
    pub max_new_tokens: Option<usize>,
}

/// What a scan of new text found.
#[derive(Debug, Clone, PartialEq)]
pub enum Scan {
    /// Nothing to do: keep decoding.
    Continue,
    /// The parent's segment ends here; start these children.
    Fork(Fork),
    /// A trigger was seen but must not fork (malformed block, a limit, a
    /// hallucinated join): the engine applies `refusal.action`.
    Refuse(Refusal),
}

/// A fork the parent asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fork {
    /// Byte offset where the parent's segment ends (just after the
    /// trigger). Text the parent generated past it is dropped.
    pub segment_end: usize,
    pub children: Vec<ChildSpec>,
}

/// One child of a fork.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildSpec {
    /// Position in the fork, 0-based; joins keep this order.
    pub index: usize,
    /// The protocol's name for the child: an outline number (`1`, `1.2`)
    /// or an APR node id (`0,1,1`).
    pub label: String,
    pub prompt: ChildPrompt,
}

/// What a child sees before it decodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChildPrompt {
    /// The parent's context up to [`Fork::segment_end`], then `suffix`: the
    /// child shares the parent's KV prefix (fork = block-table copy).
    Continue { suffix: String },
    /// A new sequence with this prompt (APR sub-searches): nothing shared.
    Fresh { prompt: String },
}

impl ChildPrompt {
    /// The child's whole prompt text, given the parent's text.
    pub fn full_text(&self, parent: &str, segment_end: usize) -> String {
        match self {
            ChildPrompt::Continue { suffix } => {
                let prefix = parent.get(..segment_end).unwrap_or(parent);
                format!("{prefix}{suffix}")
            }
            ChildPrompt::Fresh { prompt } => prompt.clone(),
        }
    }
}

/// When a child is finished. End of sequence always finishes a child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildStop {
    /// Stop string, kept in the child's text; `None`: end of sequence only.
    pub stop: Option<&'static str>,
    /// Tokens the child samples after the stop string and keeps (0: it
    /// ends on the stop), whatever they are, end of sequence included.
    /// Multiverse's and NPR's engines keep one, normally `\n`, in text and
    /// KV (`schedule_batch.py` `output_ids[:-1]`); with a kept token
    /// nothing after the stop string is cut. A child whose token limit
    /// falls on the stop string or a kept token loses that token, as its
    /// last token at any limit (those engines check the length first).
    pub keep_after: u32,
}

/// How a child's decoding ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildEnd {
    /// It wrote [`ChildStop::stop`].
    Stop,
    /// It emitted end of sequence.
    Eos,
    /// A token limit cut it.
    Length,
}

/// What the join takes from one child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildResult {
    /// The result text (`None`: APR's "no solution").
    pub text: Option<String>,
    /// Text the engine appends to the child's own sequence to close it
    /// (e.g. `</Path>` when it hit end of sequence first); KV-merge
    /// protocols prefill it at the child's own positions.
    pub close: String,
    pub end: ChildEnd,
}

/// How the parent's KV follows a join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinMode {
    /// Text splice: tokenize [`Join::text`], reuse the KV of the common
    /// token prefix, prefill only the rest; positions are sequential.
    Reprefill,
    /// The children's KV stays in place (see [`Layout::Merged`]); only
    /// [`Layout::Merged::append`] is new. Exact only for models trained so.
    KvMerge,
}

/// The parent's context after a join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Join {
    /// The parent's whole context text after the join. For KV-merge this
    /// is the children's text in fork order (the order their KV is held),
    /// then the appended text: the trace view, and the text to re-prefill
    /// from if the engine cannot merge.
    pub text: String,
    pub layout: Layout,
    /// What the parent does next.
    pub then: AfterJoin,
}

/// Positions and visibility after a join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// Re-prefill: `text[..kept_prefix]` is the parent's text unchanged
    /// (its KV is reused); the rest is prefilled at sequential positions.
    Sequential { kept_prefix: usize },
    /// KV merge. With p the position of the first token after
    /// `text[..fork_at]` and L_i the token count of child i (its prompt
    /// suffix, generated text and [`ChildResult::close`]): child i's tokens
    /// sit at p .. p + L_i and attend to the prefix and themselves only
    /// (children are masked from each other); `append` starts at
    /// p + max_i L_i and attends to the prefix and every child.
    ///
    /// `lead` is text every child's prompt suffix begins with (Multiverse's
    /// and NPR's `\n` before `<Path>`/`<step>`): its tokens hold the same
    /// KV in every child, and the merge keeps them once, child 0's, as the
    /// reference engines do (children 1.. are merged from just after it;
    /// `MVE/sch` 1536-1577). [`Join::text`] holds it once too.
    Merged {
        fork_at: usize,
        append: String,
        lead: String,
    },
}

/// What the parent does after a join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterJoin {
    /// Decode on from the joined text.
    Continue,
    /// The request ends with the joined text (a reference cap was reached,
    /// or a child hit end of sequence where the reference then stops).
    Finish,
    /// Decode on until this stop string (kept) or end of sequence, then end.
    FinishAt(&'static str),
}

/// A trigger that did not fork, and what the engine does instead.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// Byte offset just after the trigger.
    pub at: usize,
    pub reason: RefuseReason,
    pub action: Action,
}

/// Why a trigger did not fork.
#[derive(Debug, Clone, PartialEq)]
pub enum RefuseReason {
    /// The block around the trigger does not parse.
    Malformed(ProtocolError),
    /// The thread is at `depth`, and only threads below `max` may fork.
    DepthLimit { depth: u32, max: u32 },
    /// The request already forked `rounds` times, the cap is `max`.
    RoundLimit { rounds: u32, max: u32 },
    /// More children than the protocol allows.
    TooManyChildren { got: usize, max: usize },
    /// Too little of the request's token budget is left: the thread is at
    /// `position` past the prompt, and forks need `position <
    /// max_new_tokens - margin` ([`Rules::fork_budget_margin`]).
    TokenBudget {
        position: usize,
        max_new_tokens: usize,
        margin: usize,
    },
    /// The thread wrote the join marker the engine writes (APR
    /// `<Sub Searches>`): it is inventing its children's results.
    HallucinatedJoin,
}

/// The defined outcome of a refused trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Keep the text and decode on as ordinary sequential text.
    Sequential,
    /// Cut the text to `truncate_to` bytes, append `append`, decode on.
    Rewrite { truncate_to: usize, append: String },
    /// Cut the text to `truncate_to` bytes and end the thread there.
    Finish { truncate_to: usize },
}

/// Nesting, child counts and caps of a protocol, as data.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rules {
    pub join_mode: JoinMode,
    /// Threads at depth < `max_depth` may fork (1: only the root).
    pub max_depth: u32,
    /// A fork always has exactly this many children (Parallel-R1).
    pub fixed_children: Option<usize>,
    /// A fork may have at most this many children.
    pub max_children: Option<usize>,
    /// Forks per request (all threads together).
    pub max_fork_rounds: Option<u32>,
    /// Children sample at this temperature, whatever the request's.
    pub child_temperature: Option<f32>,
    /// Children sample with this repetition penalty on their own tokens
    /// (NPR's engine sets 1.02 at a fork and resets it at the merge).
    pub child_repetition_penalty: Option<f32>,
    /// No fork once the thread's [`ForkContext::position`] is at least the
    /// request's budget minus this many tokens (Multiverse-Engine:
    /// `right_most_pos - init_input_len >= max_new_tokens - 30`; NPR's
    /// engine the same with 1024). `None`: no such guard.
    pub fork_budget_margin: Option<usize>,
}

impl Rules {
    /// The rules of a protocol whose threads may nest below `max_depth`,
    /// with no fixed child count, no cap on fork rounds and children that
    /// sample like their parent (Multiverse, NPR).
    pub fn nested(join_mode: JoinMode, max_depth: u32, max_children: Option<usize>) -> Rules {
        Rules {
            join_mode,
            max_depth,
            fixed_children: None,
            max_children,
            max_fork_rounds: None,
            child_temperature: None,
            child_repetition_penalty: None,
            fork_budget_margin: None,
        }
    }

    /// The refusal for a fork of `children` children at `ctx`, if a rule
    /// forbids it: `on_depth` past the depth limit or the token budget
    /// guard, `on_cap` past a cap.
    pub fn check(
        &self,
        ctx: ForkContext,
        children: usize,
        at: usize,
        on_depth: Action,
        on_cap: Action,
    ) -> Option<Refusal> {
        let (reason, action) = if ctx.depth >= self.max_depth {
            let reason = RefuseReason::DepthLimit {
                depth: ctx.depth,
                max: self.max_depth,
            };
            (reason, on_depth)
        } else if let Some(reason) = self.budget_refusal(ctx) {
            (reason, on_depth)
        } else if let Some(max) = self.max_fork_rounds.filter(|&m| ctx.rounds >= m) {
            let reason = RefuseReason::RoundLimit {
                rounds: ctx.rounds,
                max,
            };
            (reason, on_cap)
        } else if let Some(max) = self.max_children.filter(|&m| children > m) {
            (RefuseReason::TooManyChildren { got: children, max }, on_cap)
        } else {
            return None;
        };
        Some(Refusal { at, reason, action })
    }

    /// [`RefuseReason::TokenBudget`] when [`Rules::fork_budget_margin`]
    /// forbids a fork at `ctx`: `position >= max_new_tokens - margin`, the
    /// engines' comparison in Python integers (a budget smaller than the
    /// margin forbids every fork).
    pub fn budget_refusal(&self, ctx: ForkContext) -> Option<RefuseReason> {
        let margin = self.fork_budget_margin?;
        let max_new_tokens = ctx.max_new_tokens?;
        (ctx.position.saturating_add(margin) >= max_new_tokens).then_some(
            RefuseReason::TokenBudget {
                position: ctx.position,
                max_new_tokens,
                margin,
            },
        )
    }
}

/// `Scan::Refuse` for a malformed block.
pub(crate) fn malformed(at: usize, line: &str, reason: &'static str, action: Action) -> Scan {
    Scan::Refuse(Refusal {
        at,
        reason: RefuseReason::Malformed(ProtocolError::Malformed {
            line: line.chars().take(200).collect(),
            reason,
        }),
        action,
    })
}

/// The child count check every join starts with.
pub(crate) fn check_count(fork: &Fork, children: &[ChildResult]) -> Result<(), ProtocolError> {
    if fork.children.len() == children.len() {
        Ok(())
    } else {
        Err(ProtocolError::ChildCount {
            expected: fork.children.len(),
            got: children.len(),
        })
    }
}

/// `parent[..end]`, or an error when `end` is past the text or not on a
/// `char` boundary.
pub(crate) fn prefix(parent: &str, end: usize) -> Result<&str, ProtocolError> {
    parent.get(..end).ok_or(ProtocolError::SegmentOutOfRange {
        segment_end: end,
        len: parent.len(),
    })
}

/// A child's result for the tag protocols: its text as generated, closed
/// with `stop` when it ended without writing it.
pub(crate) fn closed_result(
    generated: &str,
    end: ChildEnd,
    stop: &str,
    close: &str,
) -> ChildResult {
    ChildResult {
        text: Some(generated.to_string()),
        close: if generated.ends_with(stop) {
            String::new()
        } else {
            close.to_string()
        },
        end,
    }
}

/// Parent prefix, then each child's prompt suffix, text and close in fork
/// order, then `append`: the text view of a KV-merge join, and the
/// re-prefill join of protocols that concatenate their children. `lead`
/// (see [`Layout::Merged`]) is kept once: children after the first drop it
/// from their suffix.
pub(crate) fn concat_children(
    segment: &str,
    fork: &Fork,
    children: &[ChildResult],
    append: &str,
    lead: &str,
) -> String {
    let mut out = String::from(segment);
    for (i, (spec, child)) in fork.children.iter().zip(children).enumerate() {
        if let ChildPrompt::Continue { suffix } = &spec.prompt {
            let suffix = match suffix.strip_prefix(lead) {
                Some(rest) if i > 0 => rest,
                _ => suffix,
            };
            out.push_str(suffix);
        }
        out.push_str(child.text.as_deref().unwrap_or(""));
        out.push_str(&child.close);
    }
    out.push_str(append);
    out
}

impl std::fmt::Display for RefuseReason {
    /// The reason in words, for people (the live tree, summaries, traces).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RefuseReason::Malformed(e) => write!(f, "refused fork: {e}"),
            RefuseReason::DepthLimit { depth, max } => write!(
                f,
                "refused fork: the thread is at depth {depth}, and only threads below depth {max} may fork"
            ),
            RefuseReason::RoundLimit { rounds, max } => write!(
                f,
                "refused fork: the request already forked {rounds} times (at most {max})"
            ),
            RefuseReason::TooManyChildren { got, max } => {
                write!(f, "refused fork: {got} children (at most {max})")
            }
            RefuseReason::TokenBudget {
                position,
                max_new_tokens,
                margin,
            } => write!(
                f,
                "refused fork: {position} of the request's {max_new_tokens} new tokens are used, \
                 and forks need {margin} left"
            ),
            RefuseReason::HallucinatedJoin => f.write_str(
                "refused: the thread wrote the join marker itself, inventing its children's results",
            ),
        }
    }
}
