//! The symbolic searches that write training traces, ported from
//! Parallel-Reasoning/APR `src/data/search.py`: [`sosp`] (SoS+, sequential,
//! with inline sub searches) and [`apr`] (parent calls with forks to
//! children). Given the same [`PyRandom`] seed and parameters they write the
//! reference's text byte for byte, including its quirks (see each module).
//!
//! Shared pieces here: the [`Heuristic`]s, the node arena, Python's `heapq`
//! order, and the clean-path writer (`get_path_to_target`).

pub mod apr;
pub mod sosp;

use crate::countdown::{successor, Rules, Step};
use crate::pyrandom::PyRandom;
use serde::{Deserialize, Serialize};
use std::fmt::Write;

/// How the search ranks nodes (lower is better).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Heuristic {
    /// Mean distance of the numbers to the target (`sum_heuristic`).
    Sum,
    /// Sum of each number's distance to its nearest factor of the target
    /// (`mult_heuristic`, the one APR's data uses).
    Mult,
}

impl std::str::FromStr for Heuristic {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sum" => Ok(Heuristic::Sum),
            "mult" => Ok(Heuristic::Mult),
            _ => Err(format!("unknown heuristic {s:?} (expected sum or mult)")),
        }
    }
}

/// A heuristic bound to one target (the factor list is computed once).
pub(crate) struct Scorer {
    heuristic: Heuristic,
    target: u64,
    factors: Vec<u64>,
}

impl Scorer {
    pub(crate) fn new(heuristic: Heuristic, target: u64) -> Self {
        // The reference takes factors in [2, target]; for a target below 2 it
        // would crash, we fall back to the target itself.
        let mut factors: Vec<u64> = match heuristic {
            Heuristic::Mult => (2..=target.min(1 << 20))
                .filter(|&f| target.is_multiple_of(f))
                .collect(),
            Heuristic::Sum => Vec::new(),
        };
        if factors.is_empty() || target > 1 << 20 {
            factors.push(target);
        }
        Scorer {
            heuristic,
            target,
            factors,
        }
    }

    pub(crate) fn score(&self, nums: &[u64]) -> f64 {
        match self.heuristic {
            Heuristic::Sum => {
                let total: u64 = nums.iter().map(|&n| n.abs_diff(self.target)).sum();
                if nums.len() == 1 {
                    total as f64
                } else {
                    total as f64 / nums.len() as f64
                }
            }
            Heuristic::Mult => nums
                .iter()
                .map(|&n| {
                    self.factors
                        .iter()
                        .map(|&f| n.abs_diff(f))
                        .min()
                        .unwrap_or(0) as f64
                })
                .sum(),
        }
    }
}

/// One search node. `id` is the trace's node id (`0,1,1`), set when the node
/// survives pruning (as the reference sets `node.idx`).
pub(crate) struct Node {
    pub nums: Vec<u64>,
    /// Operations from the root to this node.
    pub ops: Vec<Step>,
    pub score: f64,
    pub parent: Option<usize>,
    pub id: String,
}

/// All nodes of one problem's search (parent and children share it: the
/// reference deep-copies a node before a sub search, we just never mutate).
pub(crate) struct Tree {
    pub nodes: Vec<Node>,
    pub target: u64,
    pub rules: Rules,
    pub scorer: Scorer,
}

impl Tree {
    pub(crate) fn new(nums: &[u64], target: u64, heuristic: Heuristic, rules: Rules) -> Self {
        let scorer = Scorer::new(heuristic, target);
        let root = Node {
            nums: nums.to_vec(),
            ops: Vec::new(),
            score: scorer.score(nums),
            parent: None,
            id: "0".to_string(),
        };
        Tree {
            nodes: vec![root],
            target,
            rules,
            scorer,
        }
    }

    /// Every successor of `parent`, in the reference's order, as
    /// (score, node index).
    pub(crate) fn expand(&mut self, parent: usize) -> Vec<(f64, usize)> {
        let nums = self.nodes[parent].nums.clone();
        let mut steps = Vec::with_capacity(4);
        let mut out = Vec::new();
        for i in 0..nums.len() {
            for j in i + 1..nums.len() {
                steps.clear();
                self.rules.combine(nums[i], nums[j], &mut steps);
                for &step in &steps {
                    let new_nums = successor(&nums, i, j, step.result);
                    let score = self.scorer.score(&new_nums);
                    let mut ops = self.nodes[parent].ops.clone();
                    ops.push(step);
                    self.nodes.push(Node {
                        nums: new_nums,
                        ops,
                        score,
                        parent: Some(parent),
                        id: String::new(),
                    });
                    out.push((score, self.nodes.len() - 1));
                }
            }
        }
        out
    }

    pub(crate) fn is_goal(&self, node: usize) -> bool {
        let nums = &self.nodes[node].nums;
        nums.len() == 1 && nums[0] == self.target
    }

    pub(crate) fn last_step(&self, node: usize) -> Step {
        // Only called on generated nodes, which always have a step.
        *self.nodes[node]
            .ops
            .last()
            .expect("generated node has a step")
    }

    /// `Current State: {target}:{nums}, Operations: {ops}\n`
    pub(crate) fn write_state(&self, out: &mut String, target: u64, node: usize) {
        let n = &self.nodes[node];
        let _ = write!(out, "Current State: {target}:");
        write_nums(out, &n.nums);
        out.push_str(", Operations: [");
        for (k, step) in n.ops.iter().enumerate() {
            if k > 0 {
                out.push_str(", ");
            }
            let _ = write!(out, "'{step}'");
        }
        out.push_str("]\n");
    }

    /// `Exploring Operation: {op}, Resulting Numbers: {nums}\n`
    pub(crate) fn write_exploring(&self, out: &mut String, node: usize) {
        let _ = write!(
            out,
            "Exploring Operation: {}, Resulting Numbers: ",
            self.last_step(node)
        );
        write_nums(out, &self.nodes[node].nums);
        out.push('\n');
    }

    /// `Generated Node #{id}: {target}:{nums} Operation: {op}\n`
    pub(crate) fn write_generated(&self, out: &mut String, target: u64, node: usize) {
        let n = &self.nodes[node];
        let _ = write!(out, "Generated Node #{}: {target}:", n.id);
        write_nums(out, &n.nums);
        let _ = writeln!(out, " Operation: {}", self.last_step(node));
    }

    /// The reference's `get_path_to_target(goal, start)`: the clean path from
    /// `start` to `goal`, ending with the `Goal Reached` line.
    pub(crate) fn write_path(&self, out: &mut String, goal: usize, start: usize) {
        let goal_value = self.nodes[goal].nums[0];
        let mut chain = vec![goal];
        let mut at = goal;
        while at != start {
            match self.nodes[at].parent {
                Some(p) => {
                    chain.push(p);
                    at = p;
                }
                None => break,
            }
        }
        chain.reverse();
        let _ = writeln!(out, "Moving to Node #{}", self.nodes[start].id);
        for pair in chain.windows(2) {
            let (node, next) = (pair[0], pair[1]);
            self.write_state(out, goal_value, node);
            self.write_exploring(out, next);
            if self.is_goal(next) {
                let _ = writeln!(out, "{goal_value},{goal_value} equal: Goal Reached");
                return;
            }
            self.write_generated(out, goal_value, next);
            let _ = writeln!(out, "Moving to Node #{}", self.nodes[next].id);
        }
    }

    /// Keeps the best `beam` successors (stable sort by score, as Python's
    /// `sort` on (score, node) tuples), or those within `threshold`.
    pub(crate) fn prune(generated: &mut Vec<(f64, usize)>, beam: usize, threshold: Option<f64>) {
        match threshold {
            None => {
                stable_sort_by_score(generated);
                generated.truncate(beam);
            }
            Some(t) => generated.retain(|&(s, _)| s <= t),
        }
    }

    /// Shuffles the kept successors, names them and writes their lines.
    /// Returns `Err(goal)` when one reaches the target (its path is then
    /// still to be written by the caller) or `Ok(nodes to explore)`.
    pub(crate) fn explore(
        &mut self,
        out: &mut String,
        rng: &mut PyRandom,
        parent: usize,
        mut kept: Vec<(f64, usize)>,
    ) -> Result<Vec<usize>, usize> {
        rng.shuffle(&mut kept);
        let target = self.target;
        let mut explore = Vec::new();
        for (_, node) in kept {
            self.nodes[node].id = format!("{},{}", self.nodes[parent].id, explore.len());
            self.write_exploring(out, node);
            if self.is_goal(node) {
                let _ = writeln!(out, "{target},{target} equal: Goal Reached");
                return Err(node);
            } else if self.nodes[node].nums.len() == 1 {
                let _ = writeln!(
                    out,
                    "{},{target} unequal: No Solution",
                    self.nodes[node].nums[0]
                );
            } else {
                self.write_generated(out, target, node);
                explore.push(node);
            }
        }
        explore.sort_by(|&a, &b| {
            self.nodes[a]
                .score
                .partial_cmp(&self.nodes[b].score)
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        Ok(explore)
    }
}

fn stable_sort_by_score(items: &mut [(f64, usize)]) {
    items.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
}

pub(crate) fn write_nums(out: &mut String, nums: &[u64]) {
    out.push('[');
    for (k, n) in nums.iter().enumerate() {
        if k > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{n}");
    }
    out.push(']');
}

/// Python's `heapq` on (score, node) tuples: the same sift algorithm, and
/// "less" is strictly-smaller score (equal scores compare as not less, as
/// the reference's nodes do), so ties land exactly where Python puts them.
#[derive(Default)]
pub(crate) struct PyHeap {
    items: Vec<(f64, usize)>,
}

impl PyHeap {
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub(crate) fn peek(&self) -> Option<usize> {
        self.items.first().map(|&(_, n)| n)
    }

    pub(crate) fn push(&mut self, item: (f64, usize)) {
        self.items.push(item);
        let last = self.items.len() - 1;
        self.sift_down(0, last);
    }

    pub(crate) fn pop(&mut self) -> Option<(f64, usize)> {
        let last = self.items.pop()?;
        if self.items.is_empty() {
            return Some(last);
        }
        let top = std::mem::replace(&mut self.items[0], last);
        self.sift_up(0);
        Some(top)
    }

    fn sift_down(&mut self, start: usize, mut pos: usize) {
        let new = self.items[pos];
        while pos > start {
            let parent = (pos - 1) >> 1;
            if new.0 < self.items[parent].0 {
                self.items[pos] = self.items[parent];
                pos = parent;
                continue;
            }
            break;
        }
        self.items[pos] = new;
    }

    fn sift_up(&mut self, mut pos: usize) {
        let end = self.items.len();
        let start = pos;
        let new = self.items[pos];
        let mut child = 2 * pos + 1;
        while child < end {
            let right = child + 1;
            // heapq: take the right child unless the left is strictly smaller
            // (scores are never NaN).
            if right < end && self.items[right].0 <= self.items[child].0 {
                child = right;
            }
            self.items[pos] = self.items[child];
            pos = child;
            child = 2 * pos + 1;
        }
        self.items[pos] = new;
        self.sift_down(start, pos);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heap_breaks_ties_like_heapq() {
        // CPython: heappush (score, node) for scores [3,1,1,2,1,3], where
        // nodes compare by score only; the pops give 1, 2, 4, 3, 0, 5.
        let mut heap = PyHeap::default();
        for (i, s) in [3.0, 1.0, 1.0, 2.0, 1.0, 3.0].into_iter().enumerate() {
            heap.push((s, i));
        }
        let order: Vec<usize> = std::iter::from_fn(|| heap.pop().map(|(_, i)| i)).collect();
        assert_eq!(order, [1, 2, 4, 3, 0, 5]);
    }

    #[test]
    fn heuristics_match_the_reference() {
        // mult_heuristic([62, 1], 63): factors of 63 are 3, 7, 9, 21, 63.
        assert_eq!(Scorer::new(Heuristic::Mult, 63).score(&[62, 1]), 3.0);
        assert_eq!(Scorer::new(Heuristic::Mult, 63).score(&[8, 69]), 7.0);
        // sum_heuristic([8, 69], 63) = (55 + 6) / 2
        assert_eq!(Scorer::new(Heuristic::Sum, 63).score(&[8, 69]), 30.5);
        assert_eq!(Scorer::new(Heuristic::Sum, 63).score(&[61]), 2.0);
    }
}
