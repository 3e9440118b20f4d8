//! APR traces: a parent search that forks children and joins their results.
//! Port of `_parallel_search` / `apr` in the reference's `search.py`.
//!
//! At the root level, after an expansion that leaves more than one node to
//! explore, a coin (`promising_threshold`) decides whether to fork: each such
//! node becomes a child search (beam `sub_call_beam_size`, no further
//! forking). The parent's call then ends with the `<Calling Sub Searches>`
//! block; the next parent call is the same text up to that block, the join
//! built by [`weft_protocol::apr::join`] from the children's texts, and
//! whatever the parent writes after it.
//!
//! Reference quirk kept on purpose: the reference reuses the loop variable
//! `idx` inside the fork, so after a fork that found nothing the
//! "Moving to Node" line for the next node of the same round is chosen from
//! the wrong position (or left out).

use super::sosp::validate_common;
use super::{Heuristic, PyHeap, Tree};
use crate::countdown::{Problem, Rules, Step};
use crate::error::Result;
use crate::pyrandom::PyRandom;
use serde::{Deserialize, Serialize};
use std::fmt::Write;
use weft_protocol::apr as protocol;

/// Parameters of one APR search (the reference's arguments).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AprParams {
    /// Beam of the parent search.
    pub beam_size: usize,
    /// Beam of each child search.
    pub sub_call_beam_size: usize,
    /// Chance of forking after a root-level expansion with 2+ nodes to explore.
    pub promising_threshold: f64,
    pub heuristic: Heuristic,
    pub rules: Rules,
}

impl Default for AprParams {
    fn default() -> Self {
        AprParams {
            beam_size: 3,
            sub_call_beam_size: 3,
            promising_threshold: 0.9,
            heuristic: Heuristic::Mult,
            rules: Rules::default(),
        }
    }
}

impl AprParams {
    pub fn validate(&self) -> Result<()> {
        validate_common(self.beam_size, self.promising_threshold)?;
        validate_common(self.sub_call_beam_size, self.promising_threshold)
    }
}

/// One child search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChildTrace {
    /// The node the child starts from (`0,1,1`).
    pub node_id: String,
    /// The child's whole sequence, starting with its `Moving to Node` line.
    pub text: String,
    pub solved: bool,
}

/// One fork: the children a parent call asked for, in fork order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fork {
    pub children: Vec<ChildTrace>,
}

/// A finished APR trace: parent calls `main_calls[0..]` (every call but the
/// last ends with a fork block; call k+1 starts with call k's join) and the
/// children of each fork (`forks[k]` belongs to `main_calls[k]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AprTrace {
    pub main_calls: Vec<String>,
    pub forks: Vec<Fork>,
    /// The path from the root to the target, if found.
    pub solution: Option<Vec<Step>>,
}

impl AprTrace {
    pub fn children(&self) -> impl Iterator<Item = &ChildTrace> {
        self.forks.iter().flat_map(|f| &f.children)
    }
}

/// Runs the APR search on `problem`, drawing randomness from `rng` exactly as
/// the reference does.
pub fn apr(problem: &Problem, params: &AprParams, rng: &mut PyRandom) -> Result<AprTrace> {
    params.validate()?;
    let mut tree = Tree::new(
        &problem.nums,
        problem.target,
        params.heuristic,
        params.rules,
    );
    let mut search = Search {
        tree: &mut tree,
        params,
        rng,
    };
    let (calls, goal) = search.run(0, params.beam_size, 0)?;
    Ok(AprTrace {
        main_calls: calls.main_calls,
        forks: calls.forks,
        solution: goal.map(|g| tree.nodes[g].ops.clone()),
    })
}

struct Calls {
    main_calls: Vec<String>,
    forks: Vec<Fork>,
}

struct Search<'a> {
    tree: &'a mut Tree,
    params: &'a AprParams,
    rng: &'a mut PyRandom,
}

impl Search<'_> {
    fn run(&mut self, start: usize, beam: usize, level: u32) -> Result<(Calls, Option<usize>)> {
        let target = self.tree.target;
        let mut calls = Calls {
            main_calls: vec![String::with_capacity(2048)],
            forks: Vec::new(),
        };
        let _ = writeln!(
            last(&mut calls.main_calls),
            "Moving to Node #{}",
            self.tree.nodes[start].id
        );
        let mut open = PyHeap::default();
        open.push((self.tree.scorer.score(&self.tree.nodes[start].nums), start));
        while !open.is_empty() {
            let take = beam.min(open.len());
            let current: Vec<usize> = (0..take)
                .filter_map(|_| open.pop())
                .map(|(_, n)| n)
                .collect();
            for (k, &node) in current.iter().enumerate() {
                // The reference's `idx`, which a fork overwrites.
                let mut idx = k;
                self.tree
                    .write_state(last(&mut calls.main_calls), target, node);
                let mut kept = self.tree.expand(node);
                super::Tree::prune(&mut kept, beam, None);
                let explore =
                    match self
                        .tree
                        .explore(last(&mut calls.main_calls), self.rng, node, kept)
                    {
                        Ok(explore) => explore,
                        Err(goal) => {
                            self.tree
                                .write_path(last(&mut calls.main_calls), goal, start);
                            return Ok((calls, Some(goal)));
                        }
                    };
                let fork = level == 0
                    && explore.len() > 1
                    && self.rng.random() < self.params.promising_threshold;
                if fork {
                    idx = explore.len() - 1;
                    if let Some(goal) = self.fork(&mut calls, &explore, level, start)? {
                        return Ok((calls, Some(goal)));
                    }
                } else {
                    for &child in &explore {
                        open.push((self.tree.nodes[child].score, child));
                    }
                }
                if idx + 1 < current.len() {
                    let _ = writeln!(
                        last(&mut calls.main_calls),
                        "Moving to Node #{}",
                        self.tree.nodes[current[idx + 1]].id
                    );
                }
            }
            if let Some(next) = open.peek() {
                let _ = writeln!(
                    last(&mut calls.main_calls),
                    "Moving to Node #{}",
                    self.tree.nodes[next].id
                );
            }
        }
        last(&mut calls.main_calls).push_str("No solution found.\n");
        Ok((calls, None))
    }

    /// Runs one child per node, closes the current parent call with the fork
    /// block and opens the next one with the join. Returns the goal when a
    /// child found one (the parent then ends with the clean path).
    fn fork(
        &mut self,
        calls: &mut Calls,
        explore: &[usize],
        level: u32,
        start: usize,
    ) -> Result<Option<usize>> {
        let sub_beam = self.params.sub_call_beam_size;
        let mut children = Vec::with_capacity(explore.len());
        let mut goals = Vec::with_capacity(explore.len());
        for &node in explore {
            let (child, goal) = self.run(node, sub_beam, level + 1)?;
            children.push(ChildTrace {
                node_id: self.tree.nodes[node].id.clone(),
                text: child.main_calls.concat(),
                solved: goal.is_some(),
            });
            goals.push(goal);
        }
        let parent = last(&mut calls.main_calls);
        parent.push_str(protocol::FORK_OPEN);
        for (i, &node) in explore.iter().enumerate() {
            let _ = writeln!(
                parent,
                "<Start Sub Search {i} at level {}> Moving to Node #{}",
                level + 1,
                self.tree.nodes[node].id
            );
        }
        parent.push_str(protocol::FORK_CLOSE);
        parent.push('\n');
        let results: Vec<Option<&str>> = children
            .iter()
            .map(|c| protocol::child_result(&c.text))
            .collect();
        let joined = protocol::join(parent, &results)?;
        calls.main_calls.push(joined);
        calls.forks.push(Fork { children });
        let target = self.tree.target;
        if let Some(goal) = goals.into_iter().flatten().next() {
            let parent = last(&mut calls.main_calls);
            let _ = writeln!(parent, "{target},{target} equal: Goal Reached");
            self.tree.write_path(parent, goal, start);
            return Ok(Some(goal));
        }
        Ok(None)
    }
}

fn last(calls: &mut [String]) -> &mut String {
    // `main_calls` always holds at least the call being written.
    calls.last_mut().expect("at least one main call")
}
