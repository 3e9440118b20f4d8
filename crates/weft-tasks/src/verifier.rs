//! Checks a model's answer to a Countdown problem.
//!
//! [`verify`] finds the final path in either form:
//! - the APR / SoS+ convention: the last `{v},{target} equal: Goal Reached`
//!   line; the path is the `Operations` list of the last `Current State` line
//!   before it plus the last `Exploring Operation` after that state (as the
//!   reference's `parse_trajectory` reads it);
//! - a plain answer: the last `<answer>...</answer>` if any, otherwise the
//!   block of equation lines that ends the text, e.g. `(25-17)*... = 63` or
//!   `25-17=8` / `8-7=1` / `62+1=63`, one step per line.
//!
//! It then replays the path on the problem's numbers: each step must be right
//! arithmetic, legal (larger minus smaller, exact division, within the cap)
//! and use numbers still available; at the end exactly the target must be
//! left. The [`Verdict`] says which check failed.
//!
//! [`arithmetic_stats`] counts the `a op b = c` lines of a trace and how many
//! are right (a learning signal that does not need a solved problem).

use crate::countdown::{OpKind, Problem, Rules, Step};
use serde::{Deserialize, Serialize};
use weft_protocol::apr::parse_str_list;

mod equation;

/// Which form the answer was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerForm {
    /// The APR / SoS+ `Goal Reached` convention.
    GoalReached,
    /// A plain equation (or lines of equations).
    Equation,
}

/// Why an answer is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Failure {
    /// Neither a `Goal Reached` claim nor an equation was found.
    NoAnswer,
    /// The answer is there but could not be read.
    Unparsable { detail: String },
    /// `a op b` is not `c`.
    WrongArithmetic { step: String },
    /// Right arithmetic but against the rules (smaller minus larger, inexact
    /// division, division by zero, over the intermediate cap).
    IllegalStep { step: String },
    /// A step uses a number that is not (or no longer) available.
    NumberUnavailable {
        step: String,
        number: u64,
        available: Vec<u64>,
    },
    /// The path ends with more than one number left.
    NumbersLeft { remaining: Vec<u64> },
    /// The path ends on a number other than the target.
    WrongResult { value: u64, target: u64 },
}

impl std::fmt::Display for Failure {
    /// The failure in words, for people (`weft solve`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |v: &[u64]| {
            v.iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        };
        match self {
            Failure::NoAnswer => {
                f.write_str("the model wrote no answer (no `Goal Reached` and no equation)")
            }
            Failure::Unparsable { detail } => write!(f, "the answer cannot be read: {detail}"),
            Failure::WrongArithmetic { step } => write!(f, "wrong arithmetic in `{step}`"),
            Failure::IllegalStep { step } => write!(f, "`{step}` breaks the rules"),
            Failure::NumberUnavailable {
                step,
                number,
                available,
            } => write!(
                f,
                "`{step}` uses {number}, which is not available (left: {})",
                list(available)
            ),
            Failure::NumbersLeft { remaining } => {
                write!(f, "the path ends with numbers left: {}", list(remaining))
            }
            Failure::WrongResult { value, target } => {
                write!(f, "the path ends on {value}, not the target {target}")
            }
        }
    }
}

/// The verifier's answer: serialisable, so evaluation runs can log it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub correct: bool,
    pub form: Option<AnswerForm>,
    /// The path as read (steps a model wrote, right or wrong).
    pub steps: Vec<String>,
    pub failure: Option<Failure>,
}

impl Verdict {
    fn fail(form: Option<AnswerForm>, steps: Vec<String>, failure: Failure) -> Verdict {
        Verdict {
            correct: false,
            form,
            steps,
            failure: Some(failure),
        }
    }
}

/// Verifies `output` against `problem` under APR's rules.
pub fn verify(problem: &Problem, output: &str) -> Verdict {
    verify_with(problem, output, &Rules::default())
}

/// Verifies `output` against `problem` under `rules`.
pub fn verify_with(problem: &Problem, output: &str, rules: &Rules) -> Verdict {
    if let Some(claim) = goal_claim(output) {
        let form = Some(AnswerForm::GoalReached);
        let ops = match goal_path(&output[..claim]) {
            Ok(ops) => ops,
            Err(detail) => return Verdict::fail(form, Vec::new(), Failure::Unparsable { detail }),
        };
        let mut replay = Replay::new(problem, rules, form);
        for op in &ops {
            replay.steps.push(op.clone());
            let Some(step) = parse_step(op) else {
                return replay.fail(Failure::Unparsable {
                    detail: format!("{op:?} is not `a op b=c`"),
                });
            };
            if let Err(f) = replay.apply(&step, op) {
                return replay.fail(f);
            }
        }
        return replay.finish();
    }
    match equation::final_equations(output) {
        None => Verdict::fail(None, Vec::new(), Failure::NoAnswer),
        Some(lines) => {
            let form = Some(AnswerForm::Equation);
            let mut replay = Replay::new(problem, rules, form);
            for line in lines {
                replay.steps.push(line.to_string());
                let parsed = match equation::parse_line(line) {
                    Ok(parsed) => parsed,
                    Err(detail) => return replay.fail(Failure::Unparsable { detail }),
                };
                if let Err(f) = replay.apply_equation(&parsed, line) {
                    return replay.fail(f);
                }
            }
            replay.finish()
        }
    }
}

/// Byte offset of the last `{v},{t} equal: Goal Reached` line's start.
fn goal_claim(text: &str) -> Option<usize> {
    let at = text.rfind(" equal: Goal Reached")?;
    Some(text[..at].rfind('\n').map_or(0, |i| i + 1))
}

/// The operations list of the last `Current State` before the claim plus the
/// last `Exploring Operation` after that state.
fn goal_path(before_claim: &str) -> Result<Vec<String>, String> {
    let state_at = before_claim
        .rfind("Current State:")
        .ok_or("a `Goal Reached` claim with no `Current State` line before it")?;
    let state_line = before_claim[state_at..].lines().next().unwrap_or("");
    let (_, ops) = state_line
        .split_once("Operations:")
        .ok_or("the `Current State` line has no `Operations:`")?;
    let mut path =
        parse_str_list(ops.trim()).ok_or("the `Operations` list is not a list of strings")?;
    let after_state = &before_claim[state_at..];
    let explore_at = after_state
        .rfind("Exploring Operation:")
        .ok_or("no `Exploring Operation` line leads to the goal")?;
    let explore_line = after_state[explore_at + "Exploring Operation:".len()..]
        .lines()
        .next()
        .unwrap_or("");
    let op = explore_line
        .split_once(", Resulting Numbers")
        .map_or(explore_line, |(op, _)| op);
    path.push(op.trim().to_string());
    Ok(path)
}

/// `25-17=8` (spaces allowed) -> Step.
pub fn parse_step(text: &str) -> Option<Step> {
    let (lhs, rhs) = text.split_once('=')?;
    let result = rhs.trim().parse().ok()?;
    let lhs = lhs.trim();
    let at = lhs
        .char_indices()
        .skip(1)
        .find(|&(_, c)| OpKind::from_symbol(c).is_some())?
        .0;
    let op = OpKind::from_symbol(lhs[at..].chars().next()?)?;
    Some(Step {
        a: lhs[..at].trim().parse().ok()?,
        op,
        b: lhs[at + 1..].trim().parse().ok()?,
        result,
    })
}

struct Replay<'a> {
    problem: &'a Problem,
    rules: &'a Rules,
    form: Option<AnswerForm>,
    available: Vec<u64>,
    steps: Vec<String>,
}

impl<'a> Replay<'a> {
    fn new(problem: &'a Problem, rules: &'a Rules, form: Option<AnswerForm>) -> Self {
        Replay {
            problem,
            rules,
            form,
            available: problem.nums.clone(),
            steps: Vec::new(),
        }
    }

    fn fail(self, failure: Failure) -> Verdict {
        Verdict::fail(self.form, self.steps, failure)
    }

    fn take(&mut self, number: u64, shown: &str) -> Result<(), Failure> {
        match self.available.iter().position(|&n| n == number) {
            Some(i) => {
                self.available.remove(i);
                Ok(())
            }
            None => Err(Failure::NumberUnavailable {
                step: shown.to_string(),
                number,
                available: self.available.clone(),
            }),
        }
    }

    fn check(&self, step: &Step, shown: &str) -> Result<(), Failure> {
        let shown = shown.to_string();
        if self.rules.check(step) {
            Ok(())
        } else if step.op.apply(step.a, step.b) == Some(step.result) {
            // Right arithmetic, but over the intermediate cap.
            Err(Failure::IllegalStep { step: shown })
        } else if matches!(step.op, OpKind::Sub) && step.a < step.b
            || matches!(step.op, OpKind::Div) && (step.b == 0 || !step.a.is_multiple_of(step.b))
        {
            Err(Failure::IllegalStep { step: shown })
        } else {
            Err(Failure::WrongArithmetic { step: shown })
        }
    }

    fn apply(&mut self, step: &Step, shown: &str) -> Result<(), Failure> {
        self.check(step, shown)?;
        self.take(step.a, shown)?;
        self.take(step.b, shown)?;
        self.available.push(step.result);
        Ok(())
    }

    fn apply_equation(&mut self, eq: &equation::Equation, shown: &str) -> Result<(), Failure> {
        for leaf in eq.expr.leaves() {
            self.take(leaf, shown)?;
        }
        let value = eq
            .expr
            .eval(self.rules)
            .map_err(|step| Failure::IllegalStep {
                step: format!("{step} in {shown}"),
            })?;
        if let Some(stated) = eq.stated {
            if stated != value {
                return Err(Failure::WrongArithmetic {
                    step: shown.to_string(),
                });
            }
        }
        self.available.push(value);
        Ok(())
    }

    fn finish(self) -> Verdict {
        let target = self.problem.target;
        match self.available.as_slice() {
            [v] if *v == target => Verdict {
                correct: true,
                form: self.form,
                steps: self.steps,
                failure: None,
            },
            [v] => {
                let value = *v;
                self.fail(Failure::WrongResult { value, target })
            }
            _ => {
                let remaining = self.available.clone();
                self.fail(Failure::NumbersLeft { remaining })
            }
        }
    }
}

/// How many `a op b = c` lines a text has and how many are right.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArithmeticStats {
    /// Lines with at least one `a op b = c` outside `[...]` lists.
    pub lines: usize,
    /// Of those, lines where every such equation is right arithmetic.
    pub correct: usize,
}

impl ArithmeticStats {
    /// Share of arithmetic lines that are right (None with no such line).
    pub fn share_correct(&self) -> Option<f64> {
        (self.lines > 0).then(|| self.correct as f64 / self.lines as f64)
    }
}

/// Counts the arithmetic lines of `text` (see [`ArithmeticStats`]).
pub fn arithmetic_stats(text: &str) -> ArithmeticStats {
    let mut stats = ArithmeticStats::default();
    for line in text.lines() {
        let found = equation::line_equations(line);
        if !found.is_empty() {
            stats.lines += 1;
            let right =
                |s: &Option<Step>| s.is_some_and(|s| s.op.apply(s.a, s.b) == Some(s.result));
            if found.iter().all(right) {
                stats.correct += 1;
            }
        }
    }
    stats
}

/// How many search steps a text writes after a state, and how many keep
/// the state's books: `Exploring Operation: a op b=c, Resulting Numbers: L`
/// under the latest `Current State: T:[..]` line counts as right when `a`
/// and `b` are numbers of that state and `L` is the state without them, in
/// order, with `c` last (the arithmetic itself is [`arithmetic_stats`]'s
/// business).
pub fn state_stats(text: &str) -> ArithmeticStats {
    let list = parse_list;
    let mut stats = ArithmeticStats::default();
    let mut state: Option<Vec<u64>> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("Current State: ") {
            state = rest
                .split_once(':')
                .and_then(|(_, after)| after.split_once(", Operations"))
                .and_then(|(nums, _)| list(nums));
            continue;
        }
        let Some(rest) = line.strip_prefix("Exploring Operation: ") else {
            continue;
        };
        let Some(nums) = &state else { continue };
        stats.lines += 1;
        let right = keeps_the_books(nums, rest);
        if right {
            stats.correct += 1;
        }
    }
    stats
}

/// `rest` (an `Exploring Operation: ` line's text after that phrase) keeps
/// the books of the state `nums` ([`state_stats`]'s rule: `a` and `b` are
/// numbers of the state and the resulting numbers are the state without
/// them, in order, with `c` last).
fn keeps_the_books(nums: &[u64], rest: &str) -> bool {
    let Some((op, after)) = rest.split_once(", Resulting Numbers: ") else {
        return false;
    };
    let (Some(step), Some(got)) = (parse_step(op), parse_list(after)) else {
        return false;
    };
    // With repeated numbers, any choice of the operands' positions is a
    // step the search can take (it expands every pair of positions).
    let n = nums.len();
    (0..n).any(|i| {
        (0..n).any(|j| {
            i != j
                && nums[i] == step.a
                && nums[j] == step.b
                && crate::countdown::successor(nums, i.min(j), i.max(j), step.result) == got
        })
    })
}

/// `[1, 2]` -> [1, 2]; `[]` -> [].
fn parse_list(s: &str) -> Option<Vec<u64>> {
    let inner = s.trim().strip_prefix('[')?.strip_suffix(']')?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(|x| x.parse().ok())
        .collect()
}

/// Whether an exploration is a move the search could make from the state
/// `nums` (the numbers of the latest `Current State: T:[..]` line, in
/// order): `rest`, the text after `Exploring Operation: `, is `a op b=c,
/// Resulting Numbers: L` with right arithmetic ([`arithmetic_stats`]'s
/// rule) that keeps the state's books ([`state_stats`]'s rule).
pub fn legal_exploration(nums: &[u64], rest: &str) -> bool {
    let arithmetic = rest
        .split_once(", Resulting Numbers: ")
        .and_then(|(op, _)| parse_step(op))
        .is_some_and(|s| s.op.apply(s.a, s.b) == Some(s.result));
    arithmetic && keeps_the_books(nums, rest)
}

#[cfg(test)]
mod tests;
