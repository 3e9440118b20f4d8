//! Drills mixed into training data so a small model learns what the search
//! traces only exercise sparsely, in the traces' own notation:
//!
//! - arithmetic drills: lines of `a op b=c` facts;
//! - state drills ([`state_drill_text`]): a node's state, then several of
//!   its successors, each written as the traces write them (the numbers left
//!   after a step, in order, with the result last, and the node line that
//!   repeats them), so the model practises the state bookkeeping where the
//!   traces' errors are.
//!
//! Operands are drawn half the time from the problem number range and half
//! from `[1, cap]`, so both first-level steps (two given numbers) and later
//! ones (an intermediate result and a number) are covered. Only steps legal
//! under the rules appear (`-` larger minus smaller, `/` exact, result within
//! the cap), written as the traces write them.

use crate::countdown::{successor, Rules, Step};
use crate::pyrandom::PyRandom;
use crate::search::write_nums;
use std::fmt::Write as _;

/// What drills to draw.
#[derive(Debug, Clone, Copy)]
pub struct DrillConfig {
    pub num_min: u64,
    pub num_max: u64,
    /// Largest operand and result (the rules' cap, or the number range).
    pub cap: u64,
    /// Facts per drill document (arithmetic) or nodes per document (state).
    pub lines: usize,
    /// Target range of the task (state drills).
    pub target_min: u64,
    pub target_max: u64,
}

/// A random legal step on `a`, `b` (in the traces' operand order) with its
/// result within `cap`.
fn legal_step(a: u64, b: u64, cap: u64, rules: &Rules, rng: &mut PyRandom) -> Option<Step> {
    let (steps, n) = rules.combine_array(a, b);
    let ok: Vec<Step> = steps[..n]
        .iter()
        .copied()
        .filter(|s| s.result <= cap)
        .collect();
    (!ok.is_empty()).then(|| ok[rng.randbelow(ok.len() as u64) as usize])
}

/// One state drill document: `cfg.lines` nodes. Each starts from four
/// numbers in the problem range, takes 0 to 2 random legal steps to reach a
/// state (its `Operations` list holds them), and writes 2 to 5 of that
/// state's successors, exactly as a search trace does:
///
/// ```text
/// Moving to Node #0,3
/// Current State: 27:[6, 7, 3], Operations: ['4*... ']
/// Exploring Operation: 7-3=4, Resulting Numbers: [6, 4]
/// Generated Node #0,3,0: 27:[6, 4] Operation: 7-3=4
/// Exploring Operation: 6*4=24, Resulting Numbers: [24]
/// 24,27 unequal: No Solution
/// ```
pub fn state_drill_text(cfg: &DrillConfig, rules: &Rules, rng: &mut PyRandom) -> String {
    let cap = cfg.cap.max(cfg.num_max);
    let mut out = String::new();
    let mut written = 0;
    let mut attempts = 0;
    while written < cfg.lines && attempts < cfg.lines * 100 {
        attempts += 1;
        let target = rng.randint(cfg.target_min, cfg.target_max);
        let mut nums: Vec<u64> = (0..4)
            .map(|_| rng.randint(cfg.num_min, cfg.num_max))
            .collect();
        let mut ops: Vec<Step> = Vec::new();
        let mut id = "0".to_string();
        let depth = rng.randbelow(3) as usize;
        for _ in 0..depth {
            let i = rng.randbelow(nums.len() as u64) as usize;
            let j = (i + 1 + rng.randbelow(nums.len() as u64 - 1) as usize) % nums.len();
            let (i, j) = (i.min(j), i.max(j));
            let Some(step) = legal_step(nums[i], nums[j], cap, rules, rng) else {
                continue;
            };
            nums = successor(&nums, i, j, step.result);
            ops.push(step);
            let _ = write!(id, ",{}", rng.randbelow(10));
        }
        let _ = writeln!(out, "Moving to Node #{id}");
        let _ = write!(out, "Current State: {target}:");
        write_nums(&mut out, &nums);
        out.push_str(", Operations: [");
        for (k, step) in ops.iter().enumerate() {
            if k > 0 {
                out.push_str(", ");
            }
            let _ = write!(out, "'{step}'");
        }
        out.push_str("]\n");
        let mut child = 0;
        for _ in 0..2 + rng.randbelow(4) {
            let i = rng.randbelow(nums.len() as u64) as usize;
            let j = (i + 1 + rng.randbelow(nums.len() as u64 - 1) as usize) % nums.len();
            let (i, j) = (i.min(j), i.max(j));
            let Some(step) = legal_step(nums[i], nums[j], cap, rules, rng) else {
                continue;
            };
            let next = successor(&nums, i, j, step.result);
            let _ = write!(out, "Exploring Operation: {step}, Resulting Numbers: ");
            write_nums(&mut out, &next);
            out.push('\n');
            if next.len() == 1 {
                let v = next[0];
                if v == target {
                    let _ = writeln!(out, "{v},{target} equal: Goal Reached");
                } else {
                    let _ = writeln!(out, "{v},{target} unequal: No Solution");
                }
            } else {
                let _ = write!(out, "Generated Node #{id},{child}: {target}:");
                write_nums(&mut out, &next);
                let _ = writeln!(out, " Operation: {step}");
                child += 1;
            }
        }
        written += 1;
    }
    out
}

/// One drill document: `lines` facts, one per line.
pub fn drill_text(cfg: &DrillConfig, rules: &Rules, rng: &mut PyRandom) -> String {
    let mut out = String::new();
    let cap = cfg.cap.max(cfg.num_max);
    let draw = |rng: &mut PyRandom| {
        if rng.random() < 0.5 {
            rng.randint(cfg.num_min, cfg.num_max)
        } else {
            rng.randint(1, cap)
        }
    };
    let mut written = 0;
    let mut attempts = 0;
    while written < cfg.lines && attempts < cfg.lines * 100 {
        attempts += 1;
        let (a, b) = (draw(rng), draw(rng));
        let (steps, n) = rules.combine_array(a, b);
        if n == 0 {
            continue;
        }
        let step = steps[rng.randbelow(n as u64) as usize];
        if step.result > cap {
            continue;
        }
        out.push_str(&step.to_string());
        out.push('\n');
        written += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verifier::parse_step;

    #[test]
    fn every_drill_line_is_a_legal_correct_step() {
        let rules = Rules {
            max_intermediate: Some(100),
        };
        let cfg = DrillConfig {
            num_min: 1,
            num_max: 15,
            cap: 100,
            lines: 500,
            target_min: 10,
            target_max: 100,
        };
        let text = drill_text(&cfg, &rules, &mut PyRandom::new(3));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 500);
        let mut ops = std::collections::HashSet::new();
        for l in lines {
            let step = parse_step(l).unwrap_or_else(|| panic!("unparsable {l:?}"));
            assert!(rules.check(&step), "{l}");
            ops.insert(step.op);
        }
        assert_eq!(ops.len(), 4, "all four operations appear");
    }

    #[test]
    fn state_drills_write_correct_successors_in_trace_notation() {
        let rules = Rules {
            max_intermediate: Some(100),
        };
        let cfg = DrillConfig {
            num_min: 1,
            num_max: 15,
            cap: 100,
            lines: 200,
            target_min: 10,
            target_max: 100,
        };
        let text = state_drill_text(&cfg, &rules, &mut PyRandom::new(5));
        let mut state: Vec<u64> = Vec::new();
        let (mut states, mut explored) = (0, 0);
        let nums = |s: &str| -> Vec<u64> {
            let inner = s.trim().trim_start_matches('[').trim_end_matches(']');
            inner
                .split(", ")
                .filter(|x| !x.is_empty())
                .map(|x| x.parse().unwrap())
                .collect()
        };
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("Current State: ") {
                let (_, after) = rest.split_once(':').unwrap();
                let (list, _) = after.split_once(", Operations: ").unwrap();
                state = nums(list);
                states += 1;
            } else if let Some(rest) = line.strip_prefix("Exploring Operation: ") {
                let (op, list) = rest.split_once(", Resulting Numbers: ").unwrap();
                let step = parse_step(op).unwrap_or_else(|| panic!("unparsable {op:?}"));
                assert!(rules.check(&step), "{line}");
                // The numbers left: the state without the two operands, in
                // order, then the result.
                let mut want = state.clone();
                for x in [step.a, step.b] {
                    let at = want.iter().position(|&v| v == x).expect("operand in state");
                    want.remove(at);
                }
                want.push(step.result);
                let mut got = nums(list);
                let last = got.pop().unwrap();
                assert_eq!(last, step.result, "{line}");
                let mut rest = want[..want.len() - 1].to_vec();
                rest.sort();
                got.sort();
                assert_eq!(got, rest, "{line} from {state:?}");
                explored += 1;
            }
        }
        assert_eq!(states, 200);
        assert!(explored >= 400, "{explored} explorations");
    }
}
