//! Arithmetic drills: lines of `a op b=c` facts in the traces' own notation,
//! mixed into training data so a small model learns the arithmetic that the
//! search traces only exercise sparsely.
//!
//! Operands are drawn half the time from the problem number range and half
//! from `[1, cap]`, so both first-level steps (two given numbers) and later
//! ones (an intermediate result and a number) are covered. Only steps legal
//! under the rules appear (`-` larger minus smaller, `/` exact, result within
//! the cap), written as the traces write them.

use crate::countdown::Rules;
use crate::pyrandom::PyRandom;

/// What drills to draw.
#[derive(Debug, Clone, Copy)]
pub struct DrillConfig {
    pub num_min: u64,
    pub num_max: u64,
    /// Largest operand and result (the rules' cap, or the number range).
    pub cap: u64,
    /// Facts per drill document.
    pub lines: usize,
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
}
