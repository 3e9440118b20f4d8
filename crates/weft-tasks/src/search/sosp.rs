//! SoS+ (stream of search with inline sub searches): one sequential trace.
//! Port of `_search` / `sosp` in the reference's `search.py`.
//!
//! After each expansion a coin (`promising_threshold`) decides whether to
//! "double down": search each surviving child to the end, inline, between
//! `Start Sub Search at level {l}: Moving to Node #{id}` and
//! `Exit Sub Search at level {l}`; otherwise the children go to the open set.
//! Sub searches may nest.

use super::{Heuristic, PyHeap, Tree};
use crate::countdown::{Problem, Rules, Step};
use crate::error::{Result, TaskError};
use crate::pyrandom::PyRandom;
use serde::{Deserialize, Serialize};
use std::fmt::Write;

/// Parameters of one SoS+ search (the reference's arguments).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SospParams {
    /// Nodes taken from the open set per round, and children kept per node.
    pub beam_size: usize,
    /// Chance of doubling down into inline sub searches after an expansion.
    pub promising_threshold: f64,
    pub heuristic: Heuristic,
    /// DFS-like pruning: keep children scoring at most this (None: keep the
    /// best `beam_size`, as APR's data does).
    pub threshold: Option<f64>,
    pub rules: Rules,
}

impl Default for SospParams {
    fn default() -> Self {
        SospParams {
            beam_size: 3,
            promising_threshold: 0.5,
            heuristic: Heuristic::Mult,
            threshold: None,
            rules: Rules::default(),
        }
    }
}

impl SospParams {
    pub fn validate(&self) -> Result<()> {
        validate_common(self.beam_size, self.promising_threshold)
    }
}

pub(crate) fn validate_common(beam: usize, promising: f64) -> Result<()> {
    if beam == 0 {
        return Err(TaskError::BadConfig(
            "the beam size must be at least 1".into(),
        ));
    }
    if !(0.0..=1.0).contains(&promising) {
        return Err(TaskError::BadConfig(format!(
            "the promising threshold must be in [0, 1], not {promising}"
        )));
    }
    Ok(())
}

/// A finished SoS+ trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SospTrace {
    /// The whole sequence, starting with the root `Current State` line.
    pub text: String,
    /// The path the search found, if it reached the target.
    pub solution: Option<Vec<Step>>,
}

/// Runs SoS+ on `problem`, drawing randomness from `rng` exactly as the
/// reference does.
pub fn sosp(problem: &Problem, params: &SospParams, rng: &mut PyRandom) -> Result<SospTrace> {
    params.validate()?;
    let mut tree = Tree::new(
        &problem.nums,
        problem.target,
        params.heuristic,
        params.rules,
    );
    let mut text = String::with_capacity(2048);
    let goal = search(&mut tree, params, rng, 0, 0, &mut text);
    Ok(SospTrace {
        text,
        solution: goal.map(|g| tree.nodes[g].ops.clone()),
    })
}

fn search(
    tree: &mut Tree,
    params: &SospParams,
    rng: &mut PyRandom,
    start: usize,
    level: u32,
    out: &mut String,
) -> Option<usize> {
    let target = tree.target;
    let mut open = PyHeap::default();
    open.push((tree.scorer.score(&tree.nodes[start].nums), start));
    while !open.is_empty() {
        let take = params.beam_size.min(open.len());
        let current: Vec<usize> = (0..take)
            .filter_map(|_| open.pop())
            .map(|(_, n)| n)
            .collect();
        for (k, &node) in current.iter().enumerate() {
            tree.write_state(out, target, node);
            let mut kept = tree.expand(node);
            Tree::prune(&mut kept, params.beam_size, params.threshold);
            let explore = match tree.explore(out, rng, node, kept) {
                Ok(explore) => explore,
                Err(goal) => {
                    tree.write_path(out, goal, 0);
                    return Some(goal);
                }
            };
            let double_down = rng.random() < params.promising_threshold;
            for child in explore {
                if double_down {
                    let _ = writeln!(
                        out,
                        "Start Sub Search at level {}: Moving to Node #{}",
                        level + 1,
                        tree.nodes[child].id
                    );
                    let found = search(tree, params, rng, child, level + 1, out);
                    let _ = writeln!(out, "Exit Sub Search at level {}", level + 1);
                    if found.is_some() {
                        return found;
                    }
                    out.push_str("No solution found in sub search\n");
                } else {
                    open.push((tree.nodes[child].score, child));
                }
            }
            if k + 1 < current.len() {
                let _ = writeln!(out, "Moving to Node #{}", tree.nodes[current[k + 1]].id);
            }
        }
        if let Some(next) = open.peek() {
            let _ = writeln!(out, "Moving to Node #{}", tree.nodes[next].id);
        }
    }
    out.push_str("No solution found.\n");
    None
}
