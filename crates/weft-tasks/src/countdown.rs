//! The Countdown game itself: a [`Problem`] (numbers and a target), the four
//! operations as [`Step`]s, and the [`Rules`] that say which steps are legal.
//!
//! Rules (APR's): `+`, `*`, `-` as larger minus smaller, `/` only when exact;
//! each step replaces two numbers by its result; a problem is solved when the
//! one number left is the target.

use crate::error::{Result, TaskError};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The most numbers a problem may have (the solver is exhaustive).
pub const MAX_NUMBERS: usize = 6;

/// One of the four operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OpKind {
    Add,
    Mul,
    Sub,
    Div,
}

impl OpKind {
    pub fn symbol(self) -> char {
        match self {
            OpKind::Add => '+',
            OpKind::Mul => '*',
            OpKind::Sub => '-',
            OpKind::Div => '/',
        }
    }

    pub fn from_symbol(c: char) -> Option<OpKind> {
        Some(match c {
            '+' => OpKind::Add,
            '*' => OpKind::Mul,
            '-' => OpKind::Sub,
            '/' => OpKind::Div,
            _ => return None,
        })
    }

    /// `a op b` as plain arithmetic (no Countdown rules): `None` on overflow,
    /// a negative difference, division by zero or an inexact quotient.
    pub fn apply(self, a: u64, b: u64) -> Option<u64> {
        match self {
            OpKind::Add => a.checked_add(b),
            OpKind::Mul => a.checked_mul(b),
            OpKind::Sub => a.checked_sub(b),
            OpKind::Div => (b != 0 && a.is_multiple_of(b)).then(|| a / b),
        }
    }
}

/// One operation with its operands and result, printed as the traces do:
/// `25-17=8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Step {
    pub a: u64,
    pub op: OpKind,
    pub b: u64,
    pub result: u64,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}{}={}",
            self.a,
            self.op.symbol(),
            self.b,
            self.result
        )
    }
}

/// Extra limits on top of APR's rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rules {
    /// Forbid any step whose result exceeds this (None: no cap, as APR).
    /// Useful to keep every number in a trace within a number-token vocabulary.
    pub max_intermediate: Option<u64>,
}

impl Rules {
    fn allows(&self, result: u64) -> bool {
        self.max_intermediate.is_none_or(|cap| result <= cap)
    }

    /// The legal steps on the pair (a, b), in the reference's order
    /// (`combine_nums`): a+b, a*b, then larger-minus-smaller and, when exact,
    /// larger/smaller. Steps that overflow u64 are left out.
    pub fn combine(&self, a: u64, b: u64, out: &mut Vec<Step>) {
        let (steps, n) = self.combine_array(a, b);
        out.extend_from_slice(&steps[..n]);
    }

    /// [`Rules::combine`] without allocating: the steps and how many there are.
    pub fn combine_array(&self, a: u64, b: u64) -> ([Step; 4], usize) {
        let (hi, lo) = if a <= b { (b, a) } else { (a, b) };
        let candidates = [
            (a, OpKind::Add, b),
            (a, OpKind::Mul, b),
            (hi, OpKind::Sub, lo),
            (hi, OpKind::Div, lo),
        ];
        let blank = Step {
            a: 0,
            op: OpKind::Add,
            b: 0,
            result: 0,
        };
        let mut out = [blank; 4];
        let mut n = 0;
        for (x, op, y) in candidates {
            if let Some(result) = op.apply(x, y) {
                if self.allows(result) {
                    out[n] = Step {
                        a: x,
                        op,
                        b: y,
                        result,
                    };
                    n += 1;
                }
            }
        }
        (out, n)
    }

    /// Whether `step` is legal under these rules with correct arithmetic
    /// (`-` must be larger minus smaller, `/` exact and not by zero).
    pub fn check(&self, step: &Step) -> bool {
        step.op.apply(step.a, step.b) == Some(step.result) && self.allows(step.result)
    }
}

/// A Countdown problem: reach `target` from `nums`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Problem {
    pub nums: Vec<u64>,
    pub target: u64,
}

impl Problem {
    /// Deduplication key: (sorted numbers, target).
    pub fn key(&self) -> (Vec<u64>, u64) {
        let mut nums = self.nums.clone();
        nums.sort_unstable();
        (nums, self.target)
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, n) in self.nums.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{n}")?;
        }
        write!(f, " -> {}", self.target)
    }
}

impl FromStr for Problem {
    type Err = TaskError;

    /// Reads `"17 62 25 7 -> 63"` (commas and brackets around the numbers are
    /// accepted too: `"[17, 62, 25, 7] -> 63"`).
    fn from_str(input: &str) -> Result<Problem> {
        let bad = |reason: &str| TaskError::BadProblem {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let (left, right) = input
            .split_once("->")
            .ok_or_else(|| bad("missing `->` between the numbers and the target"))?;
        let target = right
            .trim()
            .parse::<u64>()
            .map_err(|_| bad("the target is not a non-negative integer"))?;
        let left = left.trim();
        let left = left
            .strip_prefix('[')
            .and_then(|l| l.strip_suffix(']'))
            .unwrap_or(left);
        let nums = left
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<u64>())
            .collect::<std::result::Result<Vec<u64>, _>>()
            .map_err(|_| bad("the numbers must be non-negative integers"))?;
        if nums.len() < 2 || nums.len() > MAX_NUMBERS {
            return Err(bad(&format!(
                "give between 2 and {MAX_NUMBERS} numbers, not {}",
                nums.len()
            )));
        }
        Ok(Problem { nums, target })
    }
}

/// `nums` without positions i and j, then `value` appended: the reference's
/// successor order.
pub(crate) fn successor(nums: &[u64], i: usize, j: usize, value: u64) -> Vec<u64> {
    let mut out = Vec::with_capacity(nums.len() - 1);
    out.extend(
        nums.iter()
            .enumerate()
            .filter(|&(k, _)| k != i && k != j)
            .map(|(_, &n)| n),
    );
    out.push(value);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combine_follows_the_reference_order() {
        let mut out = Vec::new();
        Rules::default().combine(92, 2, &mut out);
        let shown: Vec<String> = out.iter().map(|s| s.to_string()).collect();
        assert_eq!(shown, ["92+2=94", "92*2=184", "92-2=90", "92/2=46"]);
        out.clear();
        Rules::default().combine(8, 69, &mut out);
        let shown: Vec<String> = out.iter().map(|s| s.to_string()).collect();
        assert_eq!(shown, ["8+69=77", "8*69=552", "69-8=61"]);
        out.clear();
        Rules::default().combine(0, 0, &mut out);
        assert_eq!(out.len(), 3, "no division by zero");
        out.clear();
        Rules {
            max_intermediate: Some(100),
        }
        .combine(8, 69, &mut out);
        assert_eq!(out.len(), 2, "8*69 is over the cap");
    }

    #[test]
    fn problems_parse_and_print() {
        let p: Problem = "17 62 25 7 -> 63".parse().unwrap();
        assert_eq!(p.nums, [17, 62, 25, 7]);
        assert_eq!(p.target, 63);
        assert_eq!(p.to_string(), "17 62 25 7 -> 63");
        let q: Problem = "[17, 62, 25, 7] ->63".parse().unwrap();
        assert_eq!(p, q);
        for bad in [
            "",
            "17 62 25 7",
            "17 62 x 7 -> 63",
            "17 -> 63",
            "1 2 3 4 5 6 7 -> 8",
            "1 2 -> -3",
            "1 2 -> 99999999999999999999999",
        ] {
            let err = bad.parse::<Problem>().unwrap_err();
            assert!(matches!(err, TaskError::BadProblem { .. }), "{bad}");
        }
    }
}
