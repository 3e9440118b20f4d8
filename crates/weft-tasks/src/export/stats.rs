//! Dataset statistics: trace lengths in tokens, share solved, forks and
//! children per problem.

use super::{ProblemTraces, Role};
use crate::tokenizer::TraceTokenizer;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Mean and nearest-rank percentiles of a distribution.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: usize,
    pub mean: f64,
    pub p50: u32,
    pub p90: u32,
    pub p99: u32,
    pub max: u32,
}

impl Percentiles {
    /// None for an empty sample.
    pub fn of(mut values: Vec<u32>) -> Option<Percentiles> {
        if values.is_empty() {
            return None;
        }
        values.sort_unstable();
        let rank = |p: f64| {
            let i = ((p * values.len() as f64).ceil() as usize).clamp(1, values.len());
            values[i - 1]
        };
        let sum: u64 = values.iter().map(|&v| v as u64).sum();
        Some(Percentiles {
            count: values.len(),
            mean: sum as f64 / values.len() as f64,
            p50: rank(0.5),
            p90: rank(0.9),
            p99: rank(0.99),
            max: values[values.len() - 1],
        })
    }
}

impl fmt::Display for Percentiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "mean {:.1}, p50 {}, p90 {}, p99 {}, max {} (n={})",
            self.mean, self.p50, self.p90, self.p99, self.max, self.count
        )
    }
}

/// What one problem adds to the summary (computed in parallel).
#[derive(Debug, Clone, Default)]
pub struct ProblemStats {
    pub solved: bool,
    pub forks: u32,
    pub children: u32,
    /// Tokens per sequence, with `<s>` and `</s>`.
    pub parent_tokens: Vec<u32>,
    pub child_tokens: Vec<u32>,
}

impl ProblemStats {
    pub fn of(traces: &ProblemTraces, tokenizer: &TraceTokenizer) -> Self {
        let mut stats = ProblemStats {
            solved: traces.solved,
            forks: traces.forks as u32,
            children: traces.children as u32,
            ..Default::default()
        };
        for r in &traces.records {
            let n = tokenizer.count(&r.text) as u32 + 2;
            match r.role {
                Role::Parent => stats.parent_tokens.push(n),
                Role::Child => stats.child_tokens.push(n),
            }
        }
        stats
    }
}

/// Collects [`ProblemStats`] into a [`Summary`].
#[derive(Debug, Default)]
pub struct SummaryBuilder {
    problems: usize,
    solved: usize,
    forks: Vec<u32>,
    children: Vec<u32>,
    parent_tokens: Vec<u32>,
    child_tokens: Vec<u32>,
    longest: Vec<u32>,
    total: Vec<u32>,
}

impl SummaryBuilder {
    pub fn add(&mut self, s: &ProblemStats) {
        self.problems += 1;
        self.solved += s.solved as usize;
        self.forks.push(s.forks);
        self.children.push(s.children);
        self.parent_tokens.extend(&s.parent_tokens);
        self.child_tokens.extend(&s.child_tokens);
        let all = s.parent_tokens.iter().chain(&s.child_tokens);
        self.longest.push(all.clone().copied().max().unwrap_or(0));
        self.total.push(all.sum());
    }

    pub fn finish(self) -> Summary {
        let with_fork = self.forks.iter().filter(|&&f| f > 0).count();
        let share = |n: usize| {
            if self.problems == 0 {
                0.0
            } else {
                n as f64 / self.problems as f64
            }
        };
        Summary {
            problems: self.problems,
            solved_share: share(self.solved),
            share_with_fork: share(with_fork),
            parent_sequences: self.parent_tokens.len(),
            child_sequences: self.child_tokens.len(),
            forks_per_problem: Percentiles::of(self.forks),
            children_per_problem: Percentiles::of(self.children),
            tokens_per_parent_sequence: Percentiles::of(self.parent_tokens),
            tokens_per_child_sequence: Percentiles::of(self.child_tokens),
            tokens_longest_sequence_per_problem: Percentiles::of(self.longest),
            tokens_all_sequences_per_problem: Percentiles::of(self.total),
        }
    }
}

/// The dataset's statistics (printed at the end of an export and saved as
/// `summary.json`). Token counts include `<s>` and `</s>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub problems: usize,
    pub solved_share: f64,
    pub share_with_fork: f64,
    pub parent_sequences: usize,
    pub child_sequences: usize,
    pub forks_per_problem: Option<Percentiles>,
    pub children_per_problem: Option<Percentiles>,
    pub tokens_per_parent_sequence: Option<Percentiles>,
    pub tokens_per_child_sequence: Option<Percentiles>,
    pub tokens_longest_sequence_per_problem: Option<Percentiles>,
    pub tokens_all_sequences_per_problem: Option<Percentiles>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "problems: {}", self.problems)?;
        writeln!(f, "solved: {:.2}%", 100.0 * self.solved_share)?;
        writeln!(
            f,
            "sequences: {} parent, {} child",
            self.parent_sequences, self.child_sequences
        )?;
        let rows = [
            ("problems with a fork", None),
            ("forks per problem", self.forks_per_problem),
            ("children per problem", self.children_per_problem),
            (
                "tokens per parent sequence",
                self.tokens_per_parent_sequence,
            ),
            ("tokens per child sequence", self.tokens_per_child_sequence),
            (
                "tokens, longest sequence per problem",
                self.tokens_longest_sequence_per_problem,
            ),
            (
                "tokens, all sequences per problem",
                self.tokens_all_sequences_per_problem,
            ),
        ];
        for (name, value) in rows {
            match (name, value) {
                ("problems with a fork", _) => {
                    writeln!(f, "{name}: {:.2}%", 100.0 * self.share_with_fork)?
                }
                (_, Some(p)) => writeln!(f, "{name}: {p}")?,
                (_, None) => writeln!(f, "{name}: none")?,
            }
        }
        Ok(())
    }
}
