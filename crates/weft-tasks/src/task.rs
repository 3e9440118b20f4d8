//! `task.json`: one file that holds a Countdown task's rules, its problem
//! distribution and how its traces are written, so they travel with the
//! data and the models trained on it.
//!
//! - `weft data countdown --task task.json` takes every setting from the
//!   file (command-line flags override single keys) and writes the
//!   resolved settings to `DIR/task.json`;
//! - `weft train` copies the data folder's `task.json` into the model
//!   folder;
//! - `weft eval`, `solve` and `demo` read the model's `task.json`: its rules
//!   check the answers, its `kind` picks the protocol, and problems outside
//!   its distribution are named.
//!
//! Every key is optional; a missing key takes the default of `weft data
//! countdown`'s flag of the same name (`-` becomes `_`). Unknown keys are
//! refused, so a typo cannot silently fall back to a default.

use crate::export::TraceKind;
use crate::tokenizer::NumberMode;
use crate::{GeneratorConfig, Heuristic, Problem, Rules};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A Countdown task (see the module docs). Field names are `weft data
/// countdown`'s flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CountdownTask {
    /// `apr` (parent calls and children) or `sosp` (the sequential
    /// baseline); `None` in files written before this key existed.
    pub kind: Option<TraceKind>,
    /// Training problems.
    pub n: Option<usize>,
    /// Validation problems.
    pub val: usize,
    pub seed: u64,
    /// Numbers per problem (2-6).
    pub count: usize,
    pub num_min: u64,
    pub num_max: u64,
    pub target_min: u64,
    pub target_max: u64,
    /// No step may produce a number above this (`None`: no cap, as APR).
    pub max_intermediate: Option<u64>,
    pub min_beam: usize,
    /// Default: 6 for APR, 5 for SoS+.
    pub max_beam: Option<usize>,
    pub max_sub_beam: usize,
    /// Default: 0.9 for APR, 0.5 for SoS+.
    pub promising: Option<f64>,
    pub heuristic: Heuristic,
    /// `sub-calls` (APR) or `tokens` (SoS+) conditioning prefix.
    pub condition: Option<String>,
    pub budget_bucket: u64,
    pub numbers: NumberMode,
    pub drills: usize,
    pub drill_lines: usize,
    pub state_drills: usize,
    pub state_drill_nodes: usize,
}

impl Default for CountdownTask {
    fn default() -> Self {
        let g = GeneratorConfig::default();
        CountdownTask {
            kind: None,
            n: None,
            val: 1000,
            seed: 0,
            count: g.count,
            num_min: g.num_min,
            num_max: g.num_max,
            target_min: g.target_min,
            target_max: g.target_max,
            max_intermediate: g.rules.max_intermediate,
            min_beam: 1,
            max_beam: None,
            max_sub_beam: 10,
            promising: None,
            heuristic: Heuristic::Mult,
            condition: None,
            budget_bucket: 512,
            numbers: NumberMode::Whole,
            drills: 0,
            drill_lines: 32,
            state_drills: 0,
            state_drill_nodes: 6,
        }
    }
}

/// Why a problem is outside a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutsideTask(pub String);

impl std::fmt::Display for OutsideTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl CountdownTask {
    /// Reads a task file. Errors name the file and, for a bad key, the key
    /// (serde's message, e.g. ``unknown field `num_maxx` ``).
    pub fn load(path: &Path) -> std::result::Result<CountdownTask, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The task of a data or model folder (`DIR/task.json`); `Ok(None)`
    /// when the folder has none.
    pub fn of_dir(dir: &Path) -> std::result::Result<Option<CountdownTask>, String> {
        let path = dir.join("task.json");
        if !path.exists() {
            return Ok(None);
        }
        Self::load(&path).map(Some)
    }

    /// Writes the task as pretty JSON (every key, resolved).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(path, text + "\n")
    }

    pub fn rules(&self) -> Rules {
        Rules {
            max_intermediate: self.max_intermediate,
        }
    }

    /// The problem distribution.
    pub fn generator(&self) -> GeneratorConfig {
        GeneratorConfig {
            count: self.count,
            num_min: self.num_min,
            num_max: self.num_max,
            target_min: self.target_min,
            target_max: self.target_max,
            rules: self.rules(),
            ..GeneratorConfig::default()
        }
    }

    /// One line for people: "3 numbers in 1..50, target 10..100, no
    /// intermediate result above 100".
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} numbers in {}..{}, target {}..{}",
            self.count, self.num_min, self.num_max, self.target_min, self.target_max
        );
        if let Some(cap) = self.max_intermediate {
            s += &format!(", no intermediate result above {cap}");
        }
        s
    }

    /// `Err` with every way `problem` lies outside the task's distribution
    /// (its count of numbers, their range, the target's range).
    pub fn check(&self, problem: &Problem) -> std::result::Result<(), OutsideTask> {
        let mut why = Vec::new();
        if problem.nums.len() != self.count {
            why.push(format!(
                "it has {} numbers, the task {}",
                problem.nums.len(),
                self.count
            ));
        }
        let out: Vec<String> = problem
            .nums
            .iter()
            .filter(|n| !(self.num_min..=self.num_max).contains(n))
            .map(|n| n.to_string())
            .collect();
        if !out.is_empty() {
            why.push(format!(
                "{} outside {}..{}",
                out.join(", "),
                self.num_min,
                self.num_max
            ));
        }
        if !(self.target_min..=self.target_max).contains(&problem.target) {
            why.push(format!(
                "target {} outside {}..{}",
                problem.target, self.target_min, self.target_max
            ));
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(OutsideTask(why.join("; ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_task_files_read_and_unknown_keys_are_refused() {
        // The shipped models' file, written before `kind` existed.
        let old = r#"{"count": 3, "num_min": 1, "num_max": 50, "target_min": 10, "target_max": 100, "max_intermediate": 100, "min_beam": 8, "max_beam": 10, "max_sub_beam": 10, "heuristic": "mult", "seed": 1}"#;
        let t: CountdownTask = serde_json::from_str(old).unwrap();
        assert_eq!((t.count, t.num_max, t.max_intermediate), (3, 50, Some(100)));
        assert_eq!(t.kind, None);
        assert_eq!(t.drill_lines, 32, "missing keys take the flags' defaults");
        let e = serde_json::from_str::<CountdownTask>(r#"{"num_maxx": 5}"#).unwrap_err();
        assert!(e.to_string().contains("num_maxx"), "{e}");
        // Round trip.
        let again: CountdownTask =
            serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!(again, t);
    }

    #[test]
    fn problems_outside_the_task_are_named() {
        let t = CountdownTask {
            count: 3,
            num_max: 50,
            max_intermediate: Some(100),
            ..CountdownTask::default()
        };
        assert!(t.check(&"9 3 4 -> 24".parse().unwrap()).is_ok());
        let e = t.check(&"9 3 4 7 -> 24".parse().unwrap()).unwrap_err();
        assert!(e.0.contains("4 numbers, the task 3"), "{e}");
        let e = t.check(&"99 3 4 -> 500".parse().unwrap()).unwrap_err();
        assert!(
            e.0.contains("99 outside 1..50") && e.0.contains("target 500 outside 10..100"),
            "{e}"
        );
        assert_eq!(
            t.describe(),
            "3 numbers in 1..50, target 10..100, no intermediate result above 100"
        );
    }
}
