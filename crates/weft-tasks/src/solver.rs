//! Exact solver: exhaustive search over every pair and operation, in the
//! reference's order (so the first solution found is the one APR's
//! `CountDown.search` would give).

use crate::countdown::{Problem, Rules, Step, MAX_NUMBERS};

/// Exhaustive Countdown solver under given [`Rules`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Solver {
    pub rules: Rules,
}

impl Solver {
    pub fn new(rules: Rules) -> Self {
        Solver { rules }
    }

    /// Whether some sequence of steps reaches the target.
    pub fn is_solvable(&self, problem: &Problem) -> bool {
        self.solve_one(problem).is_some()
    }

    /// One solution (the first in the reference's search order), as steps.
    pub fn solve_one(&self, problem: &Problem) -> Option<Vec<Step>> {
        let mut path = Vec::new();
        let mut found = None;
        self.walk(&problem.nums, problem.target, &mut path, &mut |p| {
            found = Some(p.to_vec());
            false
        });
        found
    }

    /// Every solution (distinct step sequences; reorderings of independent
    /// steps count separately), up to `limit` of them.
    pub fn solve_all(&self, problem: &Problem, limit: usize) -> Vec<Vec<Step>> {
        let mut all = Vec::new();
        let mut path = Vec::new();
        if limit > 0 {
            self.walk(&problem.nums, problem.target, &mut path, &mut |p| {
                all.push(p.to_vec());
                all.len() < limit
            });
        }
        all
    }

    /// Depth-first walk over a fixed-size number array (no allocation per
    /// node); `on_solution` returns whether to keep going. Returns false once
    /// stopped.
    fn walk(
        &self,
        nums: &[u64],
        target: u64,
        path: &mut Vec<Step>,
        on_solution: &mut dyn FnMut(&[Step]) -> bool,
    ) -> bool {
        let mut array = [0u64; MAX_NUMBERS];
        let len = nums.len().min(MAX_NUMBERS);
        array[..len].copy_from_slice(&nums[..len]);
        self.walk_array(&array, len, target, path, on_solution)
    }

    fn walk_array(
        &self,
        nums: &[u64; MAX_NUMBERS],
        len: usize,
        target: u64,
        path: &mut Vec<Step>,
        on_solution: &mut dyn FnMut(&[Step]) -> bool,
    ) -> bool {
        if len <= 1 {
            return if len == 1 && nums[0] == target {
                on_solution(path)
            } else {
                true
            };
        }
        for i in 0..len {
            for j in i + 1..len {
                // The other numbers in order, then the result (the reference's order).
                let mut next = [0u64; MAX_NUMBERS];
                let mut k = 0;
                for (m, &n) in nums[..len].iter().enumerate() {
                    if m != i && m != j {
                        next[k] = n;
                        k += 1;
                    }
                }
                let (steps, count) = self.rules.combine_array(nums[i], nums[j]);
                for step in &steps[..count] {
                    next[k] = step.result;
                    path.push(*step);
                    let go_on = self.walk_array(&next, len - 1, target, path, on_solution);
                    path.pop();
                    if !go_on {
                        return false;
                    }
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Problem {
        s.parse().unwrap()
    }

    #[test]
    fn finds_a_valid_solution() {
        let solver = Solver::default();
        let problem = p("17 62 25 7 -> 63");
        let steps = solver.solve_one(&problem).unwrap();
        assert_eq!(steps.len(), 3);
        assert!(steps.iter().all(|s| solver.rules.check(s)));
        assert_eq!(steps.last().unwrap().result, 63);
    }

    #[test]
    fn reports_unsolvable_problems() {
        let solver = Solver::default();
        assert!(!solver.is_solvable(&p("1 1 -> 5")));
        assert!(solver.solve_all(&p("1 1 -> 5"), 100).is_empty());
        assert!(solver.is_solvable(&p("2 3 -> 6")));
    }

    #[test]
    fn lists_all_solutions() {
        let solver = Solver::default();
        // 2 and 3 reach 6 only as 2*3; 1 2 3 -> 6 has several paths.
        assert_eq!(solver.solve_all(&p("2 3 -> 6"), 100).len(), 1);
        let all = solver.solve_all(&p("1 2 3 -> 6"), 1000);
        assert!(all.len() > 3, "{}", all.len());
        assert_eq!(solver.solve_all(&p("1 2 3 -> 6"), 2).len(), 2);
        for sol in &all {
            assert_eq!(sol.last().unwrap().result, 6);
        }
    }

    #[test]
    fn the_cap_removes_solutions_through_big_numbers() {
        let capped = Solver::new(Rules {
            max_intermediate: Some(50),
        });
        // The target itself is over the cap, so no path may end there.
        assert!(Solver::default().is_solvable(&p("60 70 10 -> 420")));
        assert!(!capped.is_solvable(&p("60 70 10 -> 420")));
    }
}
