//! APR (Learning Adaptive Parallel Reasoning) on Countdown: plain text, no
//! special tokens. Formats follow Parallel-Reasoning/APR `src/data/search.py`
//! (training traces) and `src/eval/parallel_infernce_utils.py` (inference).
//!
//! - Fork trigger: the parent's text ends with a `<Calling Sub Searches>` ..
//!   `<End Calling Sub Searches>` block; [`parse_fork`] reads it.
//! - Child prompt: [`ChildSpec::prompt`], built from the parent's earlier
//!   `Moving to Node` / `Current State` and `Generated Node` lines.
//! - Child result: [`child_result`], the clean path after the second-to-last
//!   `Goal Reached`, or `None`.
//! - Join: [`join`] replaces the fork block with a `<Sub Searches>` block.
//! - Nesting: children do not fork in the reference (depth 1).

use crate::{format_nums, format_str_list, ProtocolError};
use std::collections::HashMap;

mod protocol;
pub use protocol::{Apr, GUARD_REINSERT};

/// Opens a fork block (the parent's segment ends after the matching close).
pub const FORK_OPEN: &str = "<Calling Sub Searches>\n";
/// Closes a fork block; the parent stops (end of sequence) after this line.
pub const FORK_CLOSE: &str = "<End Calling Sub Searches>";
/// Opens the join block the engine writes in place of the fork block.
pub const JOIN_OPEN: &str = "<Sub Searches>\n";
/// Closes the join block; the parent decodes on after it.
pub const JOIN_CLOSE: &str = "<End Sub Searches>\n";
/// Stop string for a parent's decode: a parent that writes this itself is
/// hallucinating a join (the reference stops generation there).
pub const HALLUCINATED_JOIN: &str = "<Sub Searches>";
/// The success marker of the Countdown search traces.
pub const GOAL_REACHED: &str = "Goal Reached";

/// Optional conditioning prefix on the root prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conditioning {
    /// `Sub Call Budget: {k} `: how many children the parent may call.
    /// Not repeated on child prompts (as in the reference).
    SubCallBudget(u64),
    /// `Token Budget: {n} `: repeated on every child prompt (as in the reference).
    TokenBudget(u64),
}

impl Conditioning {
    /// The prefix text, including its trailing space.
    pub fn prefix(&self) -> String {
        match self {
            Conditioning::SubCallBudget(k) => format!("Sub Call Budget: {k} "),
            Conditioning::TokenBudget(n) => format!("Token Budget: {n} "),
        }
    }
}

/// `Current State: {target}:{nums}, Operations: {ops}` (no newline).
pub fn state_line<S: AsRef<str>>(target: u64, nums: &[u64], operations: &[S]) -> String {
    format!(
        "Current State: {target}:{}, Operations: {}",
        format_nums(nums),
        format_str_list(operations)
    )
}

/// The APR root prompt: `Moving to Node #0\nCurrent State: {target}:{nums},
/// Operations: []`, optionally prefixed (no trailing newline, as the
/// reference's inference prompt).
pub fn root_prompt(target: u64, nums: &[u64], conditioning: Option<Conditioning>) -> String {
    let empty: [&str; 0] = [];
    let mut out = conditioning.map(|c| c.prefix()).unwrap_or_default();
    out.push_str("Moving to Node #0\n");
    out.push_str(&state_line(target, nums, &empty));
    out
}

/// The SoS+ (sequential baseline) prompt: no `Moving to Node` line, optional
/// `Token Budget: {n} ` prefix.
pub fn sosp_prompt(target: u64, nums: &[u64], token_budget: Option<u64>) -> String {
    let empty: [&str; 0] = [];
    let mut out = token_budget
        .map(|n| Conditioning::TokenBudget(n).prefix())
        .unwrap_or_default();
    out.push_str(&state_line(target, nums, &empty));
    out
}

/// One child the parent asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildSpec {
    /// Position in the fork block (`<Start Sub Search {index} ...>`).
    pub index: usize,
    /// `at level {level}` (1 in the reference: children do not nest).
    pub level: u32,
    /// Node id without `#`, e.g. `0,1,1`.
    pub node_id: String,
    pub target: u64,
    /// The numbers left at that node.
    pub nums: Vec<u64>,
    /// Operations from the root to that node, e.g. `["25-17=8", "8-7=1"]`.
    pub operations: Vec<String>,
}

impl ChildSpec {
    /// The child's prompt: `Moving to Node #{id}\nCurrent State: ...` (no
    /// trailing newline). With token-budget conditioning the budget prefix is
    /// repeated here; a sub-call budget is not (as in the reference).
    pub fn prompt(&self, conditioning: Option<Conditioning>) -> String {
        let mut out = match conditioning {
            Some(c @ Conditioning::TokenBudget(_)) => c.prefix(),
            _ => String::new(),
        };
        out.push_str("Moving to Node #");
        out.push_str(&self.node_id);
        out.push('\n');
        out.push_str(&state_line(self.target, &self.nums, &self.operations));
        out
    }
}

/// True when the text ends (up to trailing whitespace) with a fork block.
pub fn ends_with_fork(text: &str) -> bool {
    text.trim_end().ends_with(FORK_CLOSE) && text.contains(FORK_OPEN)
}

/// Reads the fork block at the end of `parent_text` and builds each child's
/// spec from the node states the parent wrote earlier.
pub fn parse_fork(parent_text: &str) -> Result<Vec<ChildSpec>, ProtocolError> {
    let starts = fork_starts(parent_text)?;
    let nodes = known_nodes(parent_text)?;
    starts
        .into_iter()
        .map(|start| {
            let state =
                nodes
                    .get(start.node_id.as_str())
                    .ok_or_else(|| ProtocolError::UnknownNode {
                        node: start.node_id.clone(),
                    })?;
            Ok(ChildSpec {
                index: start.index,
                level: start.level,
                node_id: start.node_id,
                target: state.target,
                nums: state.nums.clone(),
                operations: state.operations.clone(),
            })
        })
        .collect()
}

/// A child's result: the text after the second-to-last `Goal Reached` (the
/// clean path from the child's start node), or `None` when the child did not
/// write `Goal Reached` at least twice. Mirrors the reference's
/// `get_search_result`: `text[idx:].strip()[13:]`.
pub fn child_result(child_text: &str) -> Option<&str> {
    let mut positions = child_text.match_indices(GOAL_REACHED).map(|(i, _)| i);
    let mut last_two = (None, None);
    for p in positions.by_ref() {
        last_two = (last_two.1, Some(p));
    }
    let start = last_two.0?;
    let tail = child_text[start..].trim();
    // Skip `Goal Reached` and the character after it (13 characters).
    let skip = tail
        .char_indices()
        .nth(GOAL_REACHED.len() + 1)
        .map_or(tail.len(), |(i, _)| i);
    Some(&tail[skip..])
}

/// The parent's text after its children finished: everything from the last
/// `<Calling Sub Searches>` on is replaced by a `<Sub Searches>` block with one
/// entry per child, in fork order (`results[i]` is child i's
/// [`child_result`]). The parent decodes on from the returned text.
pub fn join(parent_text: &str, results: &[Option<&str>]) -> Result<String, ProtocolError> {
    let starts = fork_starts(parent_text)?;
    if starts.len() != results.len() {
        return Err(ProtocolError::ChildCount {
            expected: starts.len(),
            got: results.len(),
        });
    }
    let cut = parent_text.rfind(FORK_OPEN).ok_or(ProtocolError::NoFork {
        expected: FORK_OPEN,
    })?;
    let mut out = String::with_capacity(cut + 256);
    out.push_str(&parent_text[..cut]);
    out.push_str(JOIN_OPEN);
    for (start, result) in starts.iter().zip(results) {
        let (index, level, node) = (start.index, start.level, &start.node_id);
        match result {
            Some(path) => {
                out.push_str(&format!(
                    "<Goal Reached in Sub Search {index} at level {level} at Node #{node}>\n"
                ));
                out.push_str(path);
                out.push('\n');
            }
            None => out.push_str(&format!(
                "<No Solution in Sub Search {index} at level {level} at Node #{node}>\n"
            )),
        }
    }
    out.push_str(JOIN_CLOSE);
    Ok(out)
}

struct ForkStart {
    index: usize,
    level: u32,
    node_id: String,
}

/// The `<Start Sub Search {i} at level {l}> Moving to Node #{id}` lines of the
/// last fork block.
fn fork_starts(text: &str) -> Result<Vec<ForkStart>, ProtocolError> {
    if !ends_with_fork(text) {
        return Err(ProtocolError::NoFork {
            expected: FORK_CLOSE,
        });
    }
    let open = text.rfind(FORK_OPEN).unwrap_or(0) + FORK_OPEN.len();
    let close = text.rfind(FORK_CLOSE).unwrap_or(text.len()).max(open);
    let mut starts = Vec::new();
    for line in text[open..close].lines().filter(|l| !l.trim().is_empty()) {
        let malformed = |reason| ProtocolError::Malformed {
            line: line.to_string(),
            reason,
        };
        let rest = line
            .strip_prefix("<Start Sub Search ")
            .ok_or_else(|| malformed("expected `<Start Sub Search {i} at level {l}> ...`"))?;
        let (index, rest) = rest
            .split_once(" at level ")
            .ok_or_else(|| malformed("missing ` at level `"))?;
        let (level, rest) = rest
            .split_once("> Moving to Node #")
            .ok_or_else(|| malformed("missing `> Moving to Node #`"))?;
        starts.push(ForkStart {
            index: index
                .parse()
                .map_err(|_| malformed("sub search index is not a number"))?,
            level: level
                .parse()
                .map_err(|_| malformed("level is not a number"))?,
            node_id: rest.trim().to_string(),
        });
    }
    if starts.is_empty() {
        return Err(ProtocolError::Malformed {
            line: text[open..close].to_string(),
            reason: "a fork block with no `<Start Sub Search` line",
        });
    }
    Ok(starts)
}

#[derive(Debug, Clone)]
struct NodeState {
    target: u64,
    nums: Vec<u64>,
    operations: Vec<String>,
}

/// Every node whose state the text gives: `Moving to Node #id` followed by a
/// `Current State` line, then `Generated Node #id: ...` lines (whose
/// operations extend their parent's). First statement of a node wins.
fn known_nodes(text: &str) -> Result<HashMap<&str, NodeState>, ProtocolError> {
    let lines: Vec<&str> = text.split('\n').collect();
    let mut nodes: HashMap<&str, NodeState> = HashMap::new();
    for pair in lines.windows(2) {
        let (Some((_, id)), true) = (
            pair[0].split_once("Moving to Node #"),
            pair[1].contains("Current State:"),
        ) else {
            continue;
        };
        let state = parse_state_line(pair[1])?;
        nodes.entry(id.trim()).or_insert(state);
    }
    for line in &lines {
        let Some((_, rest)) = line.split_once("Generated Node #") else {
            continue;
        };
        let malformed = |reason| ProtocolError::Malformed {
            line: line.to_string(),
            reason,
        };
        let (id, rest) = rest
            .split_once(':')
            .ok_or_else(|| malformed("missing `:` after the node id"))?;
        if nodes.contains_key(id) {
            continue;
        }
        let (state, op) = rest
            .split_once("Operation:")
            .ok_or_else(|| malformed("missing `Operation:`"))?;
        let (target, nums) = parse_target_nums(state.trim())
            .ok_or_else(|| malformed("expected `{target}:[{nums}]` after the node id"))?;
        let parent_id = id.rsplit_once(',').map_or("", |(p, _)| p);
        let parent = nodes
            .get(parent_id)
            .ok_or_else(|| ProtocolError::UnknownNode {
                node: parent_id.to_string(),
            })?;
        let mut operations = parent.operations.clone();
        operations.push(op.trim().to_string());
        nodes.insert(
            id,
            NodeState {
                target,
                nums,
                operations,
            },
        );
    }
    Ok(nodes)
}

fn parse_state_line(line: &str) -> Result<NodeState, ProtocolError> {
    let malformed = |reason| ProtocolError::Malformed {
        line: line.to_string(),
        reason,
    };
    let (_, rest) = line
        .split_once("Current State:")
        .ok_or_else(|| malformed("missing `Current State:`"))?;
    let (state, ops) = rest
        .split_once(", Operations:")
        .ok_or_else(|| malformed("missing `, Operations:`"))?;
    let (target, nums) =
        parse_target_nums(state.trim()).ok_or_else(|| malformed("expected `{target}:[{nums}]`"))?;
    let operations = parse_str_list(ops.trim())
        .ok_or_else(|| malformed("operations are not a list of strings"))?;
    Ok(NodeState {
        target,
        nums,
        operations,
    })
}

/// The state a child starts from, read from its prompt
/// ([`ChildSpec::prompt`]: `... Current State: {target}:[{nums}], Operations:
/// ...`), its numbers sorted (the same numbers in another order are the same
/// state). `None` when the prompt holds no state line.
pub fn prompt_state(prompt: &str) -> Option<(u64, Vec<u64>)> {
    let at = prompt.rfind("Current State: ")? + "Current State: ".len();
    let state = prompt[at..].split(", Operations:").next()?;
    let (target, mut nums) = parse_target_nums(state.trim())?;
    nums.sort_unstable();
    Some((target, nums))
}

/// How many children start from the same state as an earlier sibling (a
/// child of the same parent), given each child's parent and prompt: the
/// repeated sub-searches of a fork. A prompt with no readable state never
/// counts as a repeat.
pub fn duplicate_children<'a>(children: impl IntoIterator<Item = (usize, &'a str)>) -> usize {
    let mut seen = std::collections::HashSet::new();
    children
        .into_iter()
        .filter_map(|(parent, prompt)| prompt_state(prompt).map(|s| (parent, s)))
        .filter(|key| !seen.insert(key.clone()))
        .count()
}

/// Byte ranges of `text` (an APR thread's whole context: prompt and
/// generated text) where the search repeats itself: an `Exploring
/// Operation: ...` line (with the `Generated Node #...` line after it) whose
/// resulting numbers, as a multiset, were already reached from the same node
/// (`Moving to Node #id`), and a `<Start Sub Search ...> Moving to Node #id`
/// line (in a `<Calling Sub Searches>` block) whose node's state this
/// thread has called before. Every repeated child [`duplicate_children`]
/// counts has such a call line in its parent; APR's symbolic search
/// (`src/data/search.py`) never explores an operation twice at one node.
///
/// The answer path is not search, and nothing in it counts: what a thread
/// writes after its own `... equal: Goal Reached` line (the path from its
/// first node to the goal, written out again), and a join's echo of a
/// child's answer (`<Goal Reached in Sub Search ...>` up to the next `<`
/// line). Text after `<Sub Searches>` before a `Moving to Node #` line
/// belongs to no node, and nothing in it counts either.
pub fn repeated_search_spans(text: &str) -> Vec<std::ops::Range<usize>> {
    search_lines(text)
        .into_iter()
        .filter(|l| l.repeated)
        .map(|l| l.span)
        .collect()
}

/// One search step of an APR thread, as [`search_lines`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchLine {
    /// Byte range in the text: an `Exploring Operation: ...` line (with the
    /// `Generated Node #...` line right after it, if any), or one
    /// `<Start Sub Search ...> Moving to Node #id` line.
    pub span: std::ops::Range<usize>,
    /// The part of `span` the line chooses; the rest follows from it or
    /// is the same in every line of its kind: the operation of an
    /// exploration (`24-15=9` in `Exploring Operation: 24-15=9, Resulting
    /// Numbers: ...`), the node of a call with the line's end (`0,2\n` in
    /// `... Moving to Node #0,2\n`: where the id stops is chosen too).
    pub choice: std::ops::Range<usize>,
    /// The choice it is one of: lines with the same `group` are the
    /// alternatives taken at one node (its exploration lines, whenever the
    /// thread is at it) or in one `<Calling Sub Searches>` block (its call
    /// lines). Numbered from 0 in order of first appearance.
    pub group: usize,
    /// It repeats the search (see [`repeated_search_spans`]).
    pub repeated: bool,
    /// It cannot be followed: an exploration whose resulting numbers do not
    /// parse, or a call of a node the text never generated (the engine
    /// refuses to fork it), or one [`search_lines_checked`]'s check
    /// rejects. A line can be both this and `repeated`.
    pub invalid: bool,
}

/// Every search step of an APR thread's context: each exploration line at a
/// known node and each sub-search call line in a `<Calling Sub Searches>`
/// block, in order, grouped by the choice they belong to and marked where
/// they repeat the search ([`repeated_search_spans`] is those) or cannot be
/// followed (unreadable resulting numbers, a call of a node whose state the
/// text never generated). Exploration lines outside any node, and the
/// answer path ([`repeated_search_spans`]), are not here.
pub fn search_lines(text: &str) -> Vec<SearchLine> {
    search_lines_checked(text, &|_, _| true)
}

/// [`search_lines`], with each exploration under a readable `Current
/// State: T:[..]` line also invalid where `legal(nums, rest)` is false:
/// `nums` the state's numbers in order, `rest` the line's text after
/// `Exploring Operation: ` (`weft_tasks::verifier::legal_exploration`
/// checks the arithmetic and the state's books).
pub fn search_lines_checked(text: &str, legal: &dyn Fn(&[u64], &str) -> bool) -> Vec<SearchLine> {
    use std::collections::{HashMap, HashSet};
    let mut reached: HashMap<&str, HashSet<Vec<u64>>> = HashMap::new();
    let mut node_state: HashMap<&str, Vec<u64>> = HashMap::new();
    let mut node_group: HashMap<&str, usize> = HashMap::new();
    let mut called: HashSet<Vec<u64>> = HashSet::new();
    let mut groups = 0;
    // The group of the `<Calling Sub Searches>` block the thread is in.
    let mut calling: Option<usize> = None;
    let mut node: Option<&str> = None;
    // The numbers of the latest `Current State` line at this node.
    let mut state: Option<Vec<u64>> = None;
    let mut out: Vec<SearchLine> = Vec::new();
    // The exploring line just pushed, to extend over its `Generated Node`
    // line.
    let mut extend: Option<usize> = None;
    let mut pos = 0;
    // In the answer path: after the thread's own `... equal: Goal Reached`
    // to its end, or in a join's echo of a child's answer
    // (`<Goal Reached in Sub Search ...>` to the next `<` line).
    let mut answer = false;
    for line in text.split_inclusive('\n') {
        let span = pos..pos + line.len();
        pos = span.end;
        let l = line.trim_end_matches('\n');
        let follows = extend.take();
        if l.starts_with('<') {
            answer = l.starts_with("<Goal Reached in Sub Search ");
        } else if l.ends_with(" equal: Goal Reached") {
            answer = true;
        }
        if answer {
            // The path to the goal written out again: not search.
            continue;
        }
        if let Some(id) = l.strip_prefix("Moving to Node #") {
            node = Some(id.trim());
            state = None;
        } else if l.starts_with("<Sub Searches>") {
            node = None;
            state = None;
        } else if let Some(rest) = l.strip_prefix("Current State: ") {
            state = rest
                .split(", Operations:")
                .next()
                .and_then(|s| parse_target_nums(s.trim()))
                .map(|(_, nums)| nums);
        } else if let Some(rest) = l.strip_prefix("Exploring Operation: ") {
            if let Some(at) = node {
                let split = rest.split_once(", Resulting Numbers: ");
                let from = span.start + "Exploring Operation: ".len();
                let choice = from..from + split.map_or(rest.len(), |(op, _)| op.len());
                let group = *node_group.entry(at).or_insert_with(|| {
                    groups += 1;
                    groups - 1
                });
                let (repeated, invalid) = match split.and_then(|(_, n)| parse_nums(n.trim())) {
                    Some(mut nums) => {
                        nums.sort_unstable();
                        let repeated = !reached.entry(at).or_default().insert(nums);
                        (repeated, state.as_ref().is_some_and(|s| !legal(s, rest)))
                    }
                    None => (false, true),
                };
                out.push(SearchLine {
                    span,
                    choice,
                    group,
                    repeated,
                    invalid,
                });
                extend = Some(out.len() - 1);
            }
        } else if let Some(rest) = l.strip_prefix("Generated Node #") {
            if let Some(i) = follows {
                out[i].span.end = span.end;
            }
            // `0,1,1: 63:[62, 1] Operation: 8-7=1`
            if let Some((id, state)) = rest.split_once(": ") {
                let state = state.split(" Operation: ").next().unwrap_or("");
                if let Some((_, mut nums)) = parse_target_nums(state.trim()) {
                    nums.sort_unstable();
                    node_state.insert(id.trim(), nums);
                }
            }
        } else if l.starts_with("<Calling Sub Searches>") {
            calling = Some(groups);
            groups += 1;
        } else if l.starts_with("<End Calling Sub Searches>") {
            calling = None;
        } else if let Some((group, (_, id))) = calling.zip(
            l.strip_prefix("<Start Sub Search ")
                .and_then(|r| r.split_once("> Moving to Node #")),
        ) {
            let (repeated, invalid) = match node_state.get(id.trim()) {
                Some(state) => (!called.insert(state.clone()), false),
                None => (false, true),
            };
            let from = span.start + l.len() - id.len();
            out.push(SearchLine {
                choice: from..span.end,
                span,
                group,
                repeated,
                invalid,
            });
        }
    }
    out
}

/// Zero-sum weights of [`search_lines`]: -1 for a line that repeats the
/// search or cannot be followed, and `d / (k - d)` for each of the `k - d`
/// other lines of a group of `k` in which `d` are such, so that every group's weights add up to 0
/// (a group with no repeat gets 0 everywhere; one that is all repeats, -1
/// everywhere). Multiplied by a penalty and added to the advantage of a
/// line's tokens, it moves probability from the repeated choice to its
/// alternatives without changing how much the thread explores or forks:
/// the tokens every alternative shares (`Exploring Operation:`, `<Start Sub
/// Search`) gain about as much as they lose.
pub fn zero_sum_weights(lines: &[SearchLine]) -> Vec<f32> {
    let groups = lines.iter().map(|l| l.group + 1).max().unwrap_or(0);
    let (mut k, mut d) = (vec![0usize; groups], vec![0usize; groups]);
    for l in lines {
        k[l.group] += 1;
        d[l.group] += (l.repeated || l.invalid) as usize;
    }
    lines
        .iter()
        .map(|l| {
            let (k, d) = (k[l.group], d[l.group]);
            if l.repeated || l.invalid {
                -1.0
            } else if d == 0 {
                0.0
            } else {
                d as f32 / (k - d) as f32
            }
        })
        .collect()
}

/// Byte ranges of the lines of an APR thread's context that break the
/// trace grammar the symbolic search writes (PROTOCOLS.md, APR): a line of
/// no known form, or one out of place. Each range covers its line and
/// its `\n`. The forms:
///
/// - `Moving to Node #0,1` (the root prompt's may carry a conditioning
///   prefix, `Sub Call Budget: 3 `);
/// - `Current State: 24:[4, 9], Operations: ['15-9=6']`, only as the
///   text's first line or right after `Moving to Node` or `<End Sub
///   Searches>`;
/// - `Exploring Operation: 15-9=6, Resulting Numbers: [4, 6]`, only after
///   a `Current State` line (explorations are judged further by
///   [`search_lines_checked`]);
/// - `Generated Node #0,1: 24:[4, 6] Operation: 15-9=6`, only right after
///   an exploration;
/// - `6,24 unequal: No Solution` and `24,24 equal: Goal Reached`, with
///   `equal` exactly when the two numbers are;
/// - `No solution found.`, after which the thread writes nothing more
///   but the engine's join markers;
/// - `<Calling Sub Searches>`, `<Start Sub Search 0 at level 1> Moving to
///   Node #0,1` (only inside such a block), `<End Calling Sub Searches>`;
/// - the engine's join text: `<Sub Searches>`, `<Goal Reached in Sub
///   Search ...>`, `<No Solution in Sub Search ...>`, `<End Sub Searches>`.
///
/// A last line without its `\n` is not judged: the thread may have been
/// cut there. Operations must read `a+b=c` with `+ - * /`; whether they
/// are right is not this function's business.
pub fn malformed_lines(text: &str) -> Vec<std::ops::Range<usize>> {
    fn node_id(s: &str) -> bool {
        !s.is_empty()
            && s.split(',')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    }
    fn int(s: &str) -> bool {
        !s.is_empty() && s.len() < 20 && s.bytes().all(|b| b.is_ascii_digit())
    }
    fn operation(s: &str) -> bool {
        let Some((lhs, c)) = s.split_once('=') else {
            return false;
        };
        let Some(at) = lhs.find(['+', '-', '*', '/']) else {
            return false;
        };
        int(&lhs[..at]) && int(&lhs[at + 1..]) && int(c)
    }
    fn state(s: &str) -> bool {
        parse_target_nums(s).is_some_and(|(_, n)| !n.is_empty())
    }
    fn marker(l: &str, prefix: &str) -> bool {
        l.strip_prefix(prefix).is_some_and(|r| r.ends_with('>'))
    }
    let mut out = Vec::new();
    let mut pos = 0;
    // What the previous line was, as far as the next one cares.
    let mut prev_moving = true; // the text's first line may be a state
    let mut prev_exploring = false;
    let mut at_state = false;
    let mut calling = false;
    let mut done = false;
    for line in text.split_inclusive('\n') {
        let span = pos..pos + line.len();
        pos = span.end;
        let Some(l) = line.strip_suffix('\n') else {
            break;
        };
        let engine = ["<Sub Searches>", "<End Sub Searches>"].contains(&l)
            || marker(l, "<Goal Reached in Sub Search ")
            || marker(l, "<No Solution in Sub Search ");
        let unprefixed = ["Sub Call Budget: ", "Token Budget: "]
            .iter()
            .find_map(|p| {
                let (n, rest) = l.strip_prefix(p)?.split_once(' ')?;
                int(n).then_some(rest)
            })
            .unwrap_or(l);
        let (mut moving, mut exploring) = (false, false);
        let ok = if engine {
            done = false;
            // The search may go on at its next node right after a join.
            moving = l == "<End Sub Searches>";
            true
        } else if done {
            false
        } else if let Some(id) = unprefixed.strip_prefix("Moving to Node #") {
            moving = true;
            at_state = false;
            node_id(id)
        } else if let Some(rest) = l.strip_prefix("Current State: ") {
            let ok = prev_moving
                && rest.split_once(", Operations: ").is_some_and(|(s, ops)| {
                    state(s) && parse_str_list(ops).is_some_and(|o| o.iter().all(|o| operation(o)))
                });
            at_state = ok;
            ok
        } else if let Some(rest) = l.strip_prefix("Exploring Operation: ") {
            exploring = true;
            at_state
                && rest
                    .split_once(", Resulting Numbers: ")
                    .is_some_and(|(op, n)| {
                        operation(op) && parse_nums(n).is_some_and(|n| !n.is_empty())
                    })
        } else if let Some(rest) = l.strip_prefix("Generated Node #") {
            prev_exploring
                && rest.split_once(": ").is_some_and(|(id, r)| {
                    node_id(id)
                        && r.split_once(" Operation: ")
                            .is_some_and(|(s, op)| state(s) && operation(op))
                })
        } else if l == "No solution found." {
            done = true;
            true
        } else if l == "<Calling Sub Searches>" {
            let ok = !calling;
            calling = true;
            ok
        } else if l == "<End Calling Sub Searches>" {
            let ok = calling;
            calling = false;
            ok
        } else if let Some(rest) = l.strip_prefix("<Start Sub Search ") {
            calling
                && rest
                    .split_once("> Moving to Node #")
                    .is_some_and(|(head, id)| {
                        node_id(id)
                            && head
                                .split_once(" at level ")
                                .is_some_and(|(i, lvl)| int(i) && int(lvl))
                    })
        } else if let Some((nums, verdict)) = l.split_once(' ') {
            match (nums.split_once(','), verdict) {
                (Some((x, t)), "equal: Goal Reached" | "unequal: No Solution")
                    if int(x) && int(t) =>
                {
                    (x.parse::<u64>().ok() == t.parse().ok()) == (verdict == "equal: Goal Reached")
                }
                _ => false,
            }
        } else {
            false
        };
        if !ok {
            out.push(span);
        }
        prev_moving = moving;
        prev_exploring = exploring;
    }
    out
}

/// `63:[62, 7, 8]` -> (63, [62, 7, 8]).
pub fn parse_target_nums(s: &str) -> Option<(u64, Vec<u64>)> {
    let (target, nums) = s.split_once(':')?;
    Some((target.trim().parse().ok()?, parse_nums(nums.trim())?))
}

/// `[62, 7, 8]` -> [62, 7, 8]; `[]` -> [].
pub fn parse_nums(s: &str) -> Option<Vec<u64>> {
    let inner = s.strip_prefix('[')?.strip_suffix(']')?;
    if inner.trim().is_empty() {
        return Some(Vec::new());
    }
    inner.split(',').map(|n| n.trim().parse().ok()).collect()
}

/// `['25-17=8', '8-7=1']` -> ["25-17=8", "8-7=1"] (quotes `'` or `"`, no escapes).
pub fn parse_str_list(s: &str) -> Option<Vec<String>> {
    let mut rest = s.strip_prefix('[')?.strip_suffix(']')?.trim();
    let mut out = Vec::new();
    while !rest.is_empty() {
        let quote = rest.chars().next()?;
        if quote != '\'' && quote != '"' {
            return None;
        }
        let end = rest[1..].find(quote)? + 1;
        out.push(rest[1..end].to_string());
        rest = rest[end + 1..].trim_start();
        rest = match rest.strip_prefix(',') {
            Some(r) => r.trim_start(),
            None if rest.is_empty() => rest,
            None => return None,
        };
    }
    Some(out)
}

#[cfg(test)]
mod tests;
