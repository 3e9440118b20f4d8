//! Seeded problem generator and deduplicated train/validation splits.
//!
//! Defaults are APR's distribution: 4 numbers uniform in [1, 99], target
//! uniform in [10, 100], solvable instances only. As in the reference
//! (`CountDown.generate`), the target is drawn first and numbers are redrawn
//! until the problem is solvable.
//!
//! Each candidate problem has its own random stream, derived from
//! (seed, split, index), so generation runs in parallel and still gives the
//! same problems for the same seed on any number of threads.

use crate::countdown::{Problem, Rules, MAX_NUMBERS};
use crate::error::{Result, TaskError};
use crate::pyrandom::PyRandom;
use crate::solver::Solver;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// What problems to draw.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GeneratorConfig {
    /// How many numbers per problem (2 to 6).
    pub count: usize,
    pub num_min: u64,
    pub num_max: u64,
    pub target_min: u64,
    pub target_max: u64,
    pub rules: Rules,
    /// Redraws of the numbers for one target before giving up.
    pub max_attempts: u32,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            count: 4,
            num_min: 1,
            num_max: 99,
            target_min: 10,
            target_max: 100,
            rules: Rules::default(),
            max_attempts: 10_000,
        }
    }
}

/// Largest number or target the generator accepts (keeps every product of
/// six numbers far from u64 overflow in practice and the traces readable).
pub const MAX_VALUE: u64 = 1_000_000;

impl GeneratorConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TaskError::BadConfig(m));
        if !(2..=MAX_NUMBERS).contains(&self.count) {
            return bad(format!(
                "the count of numbers must be 2 to {MAX_NUMBERS}, not {}",
                self.count
            ));
        }
        if self.num_min > self.num_max || self.target_min > self.target_max {
            return bad(format!(
                "empty range: numbers [{}, {}], target [{}, {}]",
                self.num_min, self.num_max, self.target_min, self.target_max
            ));
        }
        if self.num_max > MAX_VALUE || self.target_max > MAX_VALUE {
            return bad(format!("numbers and targets must be at most {MAX_VALUE}"));
        }
        if self.target_min < 2 {
            return bad(
                "the target must be at least 2 (the factor heuristic needs a factor)".into(),
            );
        }
        if self.max_attempts == 0 {
            return bad("max_attempts must be positive".into());
        }
        Ok(())
    }

    /// Draws one solvable problem from `rng`: the target, then numbers until
    /// solvable. `None` when `max_attempts` draws found none.
    pub fn draw(&self, rng: &mut PyRandom) -> Option<Problem> {
        let solver = Solver::new(self.rules);
        let target = rng.randint(self.target_min, self.target_max);
        for _ in 0..self.max_attempts {
            let nums = (0..self.count)
                .map(|_| rng.randint(self.num_min, self.num_max))
                .collect();
            let problem = Problem { nums, target };
            if solver.is_solvable(&problem) {
                return Some(problem);
            }
        }
        None
    }
}

/// A 64-bit seed for item `index` of stream `stream` (SplitMix64 mixing).
pub fn derive_seed(seed: u64, stream: u64, index: u64) -> u64 {
    let mut z = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(stream.wrapping_mul(0xD1B5_4A32_D192_ED03))
        .wrapping_add(index)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Train and validation problems, deduplicated by (sorted numbers, target)
/// within each split and across them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Splits {
    pub train: Vec<Problem>,
    pub validation: Vec<Problem>,
}

const TRAIN_STREAM: u64 = 0;
const VALIDATION_STREAM: u64 = 1;

/// Draws `n_train` then `n_validation` distinct problems.
pub fn generate_splits(
    config: &GeneratorConfig,
    seed: u64,
    n_train: usize,
    n_validation: usize,
) -> Result<Splits> {
    config.validate()?;
    let mut seen = HashSet::new();
    let train = draw_distinct(config, seed, TRAIN_STREAM, n_train, &mut seen)?;
    let validation = draw_distinct(config, seed, VALIDATION_STREAM, n_validation, &mut seen)?;
    Ok(Splits { train, validation })
}

fn draw_distinct(
    config: &GeneratorConfig,
    seed: u64,
    stream: u64,
    wanted: usize,
    seen: &mut HashSet<(Vec<u64>, u64)>,
) -> Result<Vec<Problem>> {
    let mut out = Vec::with_capacity(wanted);
    let budget = (wanted as u64).saturating_mul(20).saturating_add(10_000);
    let mut next: u64 = 0;
    while out.len() < wanted {
        if next >= budget {
            return Err(TaskError::TooFewProblems {
                wanted,
                found: out.len(),
                attempts: next,
            });
        }
        let batch = ((wanted - out.len()) as u64 + 64).min(budget - next);
        let drawn: Vec<Option<Problem>> = (next..next + batch)
            .into_par_iter()
            .map(|i| config.draw(&mut PyRandom::new(derive_seed(seed, stream, i))))
            .collect();
        next += batch;
        for problem in drawn.into_iter().flatten() {
            if out.len() < wanted && seen.insert(problem.key()) {
                out.push(problem);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_problems_all_solvable_and_in_range() {
        let config = GeneratorConfig::default();
        let a = generate_splits(&config, 7, 300, 50).unwrap();
        let b = generate_splits(&config, 7, 300, 50).unwrap();
        assert_eq!(a.train, b.train);
        assert_eq!(a.validation, b.validation);
        let c = generate_splits(&config, 8, 300, 50).unwrap();
        assert_ne!(a.train, c.train);
        let solver = Solver::default();
        for p in a.train.iter().chain(&a.validation) {
            assert_eq!(p.nums.len(), 4);
            assert!(p.nums.iter().all(|n| (1..=99).contains(n)));
            assert!((10..=100).contains(&p.target));
            assert!(solver.is_solvable(p), "{p}");
        }
    }

    #[test]
    fn splits_are_deduplicated_within_and_across() {
        // A tiny space forces many duplicate draws.
        let config = GeneratorConfig {
            count: 3,
            num_min: 1,
            num_max: 6,
            target_min: 10,
            target_max: 14,
            ..GeneratorConfig::default()
        };
        let splits = generate_splits(&config, 1, 60, 20).unwrap();
        let mut keys = HashSet::new();
        for p in splits.train.iter().chain(&splits.validation) {
            assert!(keys.insert(p.key()), "duplicate {p}");
        }
        assert_eq!(keys.len(), 80);
    }

    #[test]
    fn too_small_a_space_is_an_error_not_a_hang() {
        let config = GeneratorConfig {
            count: 2,
            num_min: 1,
            num_max: 3,
            target_min: 2,
            target_max: 3,
            max_attempts: 50,
            ..GeneratorConfig::default()
        };
        let err = generate_splits(&config, 0, 100, 0).unwrap_err();
        assert!(matches!(err, TaskError::TooFewProblems { .. }), "{err}");
    }

    #[test]
    fn bad_settings_are_rejected() {
        for config in [
            GeneratorConfig {
                count: 7,
                ..Default::default()
            },
            GeneratorConfig {
                num_min: 5,
                num_max: 4,
                ..Default::default()
            },
            GeneratorConfig {
                target_min: 0,
                ..Default::default()
            },
            GeneratorConfig {
                num_max: MAX_VALUE + 1,
                ..Default::default()
            },
        ] {
            assert!(generate_splits(&config, 0, 1, 0).is_err());
        }
    }

    #[test]
    fn the_cap_holds_for_every_generated_solution() {
        let config = GeneratorConfig {
            rules: Rules {
                max_intermediate: Some(100),
            },
            ..GeneratorConfig::default()
        };
        let splits = generate_splits(&config, 3, 100, 0).unwrap();
        let solver = Solver::new(config.rules);
        for p in &splits.train {
            let steps = solver.solve_one(p).unwrap();
            assert!(steps.iter().all(|s| s.result <= 100));
        }
    }
}
