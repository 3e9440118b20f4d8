//! Training data: every problem's traces as training sequences (JSONL), with
//! the statistics a dataset card needs.
//!
//! One [`Record`] per sequence. SoS+ gives one `parent` sequence per problem.
//! APR gives each parent call (`main_call k`) as a `parent` sequence and each
//! child (`sub_call f.c`) as a `child` sequence, as the reference trains on
//! all of them. `prompt_chars` says how much of `text` the engine supplies
//! (root or child prompt, or everything up to the last join), so training can
//! leave it out of the loss.
//!
//! Per-problem search parameters are drawn as the reference's scripts draw
//! them (`generate_apr.py`, `generate_sosp.py`), from a random stream of the
//! problem's own, so output does not depend on the thread count.

mod stats;

pub use stats::{Percentiles, Summary, SummaryBuilder};

use crate::countdown::{Problem, Rules};
use crate::error::{Result, TaskError};
use crate::generator::derive_seed;
use crate::pyrandom::PyRandom;
use crate::search::apr::{apr, AprParams};
use crate::search::sosp::{sosp, SospParams};
use crate::search::Heuristic;
use crate::tokenizer::TraceTokenizer;
use serde::{Deserialize, Serialize};
use weft_protocol::apr::{self as protocol, Conditioning};

/// Which traces to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TraceKind {
    /// Adaptive parallel reasoning: parent calls and children.
    Apr,
    /// The sequential SoS+ baseline.
    Sosp,
}

impl std::str::FromStr for TraceKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "apr" => Ok(TraceKind::Apr),
            "sosp" => Ok(TraceKind::Sosp),
            _ => Err(format!("unknown trace kind {s:?} (expected apr or sosp)")),
        }
    }
}

/// Optional conditioning prefix on the root prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// APR: `Sub Call Budget: {k} `, k = the problem's number of children.
    SubCalls,
    /// SoS+: `Token Budget: {n} `, n = the trace's tokens rounded up to
    /// a multiple of `budget_bucket`.
    Tokens,
}

/// How traces are drawn for each problem.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TraceConfig {
    pub kind: TraceKind,
    /// Beam drawn uniformly in [min_beam, max_beam] (APR: 1..=6, SoS+: 1..=5).
    pub min_beam: usize,
    pub max_beam: usize,
    /// APR: sub-call beam drawn in [beam, max_sub_call_beam] (10), or equal
    /// to it when the beam is not below it.
    pub max_sub_call_beam: usize,
    /// APR 0.9, SoS+ 0.5.
    pub promising_threshold: f64,
    pub heuristic: Heuristic,
    pub rules: Rules,
    pub condition: Option<Condition>,
    /// Rounding of token budgets.
    pub budget_bucket: u64,
}

impl TraceConfig {
    /// The reference's settings for `kind`.
    pub fn reference(kind: TraceKind) -> Self {
        let (max_beam, promising_threshold) = match kind {
            TraceKind::Apr => (6, 0.9),
            TraceKind::Sosp => (5, 0.5),
        };
        TraceConfig {
            kind,
            min_beam: 1,
            max_beam,
            max_sub_call_beam: 10,
            promising_threshold,
            heuristic: Heuristic::Mult,
            rules: Rules::default(),
            condition: None,
            budget_bucket: 512,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TaskError::BadConfig(m));
        if self.min_beam == 0 || self.min_beam > self.max_beam {
            return bad(format!(
                "beam range [{}, {}] must be non-empty and start at 1 or more",
                self.min_beam, self.max_beam
            ));
        }
        if self.max_sub_call_beam == 0 {
            return bad("the sub-call beam must be at least 1".into());
        }
        if self.budget_bucket == 0 {
            return bad("the budget bucket must be at least 1".into());
        }
        match (self.kind, self.condition) {
            (TraceKind::Apr, Some(Condition::Tokens)) => bad(
                "token budgets are implemented for SoS+ only; use sub-call budgets for APR".into(),
            ),
            (TraceKind::Sosp, Some(Condition::SubCalls)) => {
                bad("SoS+ has no sub calls; use a token budget".into())
            }
            _ => Ok(()),
        }
    }
}

/// `parent` or `child`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Parent,
    Child,
}

/// One training sequence (one JSONL line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// `train-000017`, unique per problem.
    pub id: String,
    /// The problem as `weft countdown solve` reads it: `17 62 25 7 -> 63`.
    pub problem: String,
    pub nums: Vec<u64>,
    pub target: u64,
    pub kind: TraceKind,
    pub role: Role,
    /// `main_call k` or `sub_call f.c` (the reference's names).
    pub call: String,
    /// Leading characters of `text` that the engine supplies (ASCII, so
    /// bytes and characters agree).
    pub prompt_chars: usize,
    /// Whether this sequence reaches the goal.
    pub solved: bool,
    pub text: String,
}

/// All sequences of one problem, with what the summary needs.
#[derive(Debug, Clone)]
pub struct ProblemTraces {
    pub records: Vec<Record>,
    pub solved: bool,
    pub forks: usize,
    pub children: usize,
}

const TRACE_STREAM: u64 = 1000;

/// Draws the search parameters and writes the traces of problem `index` of
/// `split` (deterministic in seed, split and index).
pub fn problem_traces(
    problem: &Problem,
    id: &str,
    seed: u64,
    split_stream: u64,
    index: u64,
    config: &TraceConfig,
    tokenizer: &TraceTokenizer,
) -> Result<ProblemTraces> {
    let mut rng = PyRandom::new(derive_seed(seed, TRACE_STREAM + split_stream, index));
    let beam = rng.randint(config.min_beam as u64, config.max_beam as u64) as usize;
    let record = |role, call: String, prompt_chars, solved, text| Record {
        id: id.to_string(),
        problem: problem.to_string(),
        nums: problem.nums.clone(),
        target: problem.target,
        kind: config.kind,
        role,
        call,
        prompt_chars,
        solved,
        text,
    };
    match config.kind {
        TraceKind::Sosp => {
            let params = SospParams {
                beam_size: beam,
                promising_threshold: config.promising_threshold,
                heuristic: config.heuristic,
                threshold: None,
                rules: config.rules,
            };
            let trace = sosp(problem, &params, &mut rng)?;
            let budget = match config.condition {
                Some(Condition::Tokens) => {
                    let tokens = tokenizer.count(&trace.text) as u64 + 2;
                    Some(tokens.div_ceil(config.budget_bucket) * config.budget_bucket)
                }
                _ => None,
            };
            let prompt = protocol::sosp_prompt(problem.target, &problem.nums, budget);
            let prefix =
                prompt.len() - protocol::sosp_prompt(problem.target, &problem.nums, None).len();
            let text = format!("{}{}", &prompt[..prefix], trace.text);
            let solved = trace.solution.is_some();
            Ok(ProblemTraces {
                records: vec![record(
                    Role::Parent,
                    "main_call 0".into(),
                    prompt.len(),
                    solved,
                    text,
                )],
                solved,
                forks: 0,
                children: 0,
            })
        }
        TraceKind::Apr => {
            let max_sub = config.max_sub_call_beam as u64;
            let sub_beam = if max_sub > beam as u64 {
                rng.randint(beam as u64, max_sub) as usize
            } else {
                config.max_sub_call_beam
            };
            let params = AprParams {
                beam_size: beam,
                sub_call_beam_size: sub_beam,
                promising_threshold: config.promising_threshold,
                heuristic: config.heuristic,
                rules: config.rules,
            };
            let trace = apr(problem, &params, &mut rng)?;
            let children = trace.children().count();
            let conditioning = match config.condition {
                Some(Condition::SubCalls) => Some(Conditioning::SubCallBudget(children as u64)),
                _ => None,
            };
            let root = protocol::root_prompt(problem.target, &problem.nums, conditioning);
            let prefix = conditioning.map(|c| c.prefix()).unwrap_or_default();
            let solved = trace.solution.is_some();
            let mut records = Vec::with_capacity(trace.main_calls.len() + children);
            let last = trace.main_calls.len() - 1;
            for (k, call) in trace.main_calls.iter().enumerate() {
                let text = format!("{prefix}{call}");
                let prompt_chars = match text.rfind(protocol::JOIN_CLOSE) {
                    Some(at) if k > 0 => at + protocol::JOIN_CLOSE.len(),
                    _ => root.len(),
                };
                let call_solved = k == last && solved;
                records.push(record(
                    Role::Parent,
                    format!("main_call {k}"),
                    prompt_chars,
                    call_solved,
                    text,
                ));
            }
            for (f, fork) in trace.forks.iter().enumerate() {
                let specs = protocol::parse_fork(&trace.main_calls[f])?;
                for (c, (child, spec)) in fork.children.iter().zip(&specs).enumerate() {
                    let prompt_chars = spec.prompt(None).len();
                    records.push(record(
                        Role::Child,
                        format!("sub_call {f}.{c}"),
                        prompt_chars,
                        child.solved,
                        child.text.clone(),
                    ));
                }
            }
            Ok(ProblemTraces {
                records,
                solved,
                forks: trace.forks.len(),
                children,
            })
        }
    }
}

#[cfg(test)]
mod tests;

pub use stats::ProblemStats;

/// Writes the traces of `problems` as JSONL to `out`, in order, computing
/// them in parallel in chunks; `progress` gets the count done after each
/// chunk. `split` names the ids (`train-000017`); `split_stream` separates
/// the random streams of different splits.
#[allow(clippy::too_many_arguments)]
pub fn write_split(
    problems: &[Problem],
    split: &str,
    split_stream: u64,
    seed: u64,
    config: &TraceConfig,
    tokenizer: &TraceTokenizer,
    out: &mut dyn std::io::Write,
    summary: &mut SummaryBuilder,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<()> {
    use rayon::prelude::*;
    config.validate()?;
    const CHUNK: usize = 2048;
    let width = problems.len().max(1).to_string().len().max(6);
    for (c, chunk) in problems.chunks(CHUNK).enumerate() {
        let done: Vec<Result<(String, ProblemStats)>> = chunk
            .par_iter()
            .enumerate()
            .map(|(i, problem)| {
                let index = c * CHUNK + i;
                let id = format!("{split}-{index:0width$}");
                let traces = problem_traces(
                    problem,
                    &id,
                    seed,
                    split_stream,
                    index as u64,
                    config,
                    tokenizer,
                )?;
                let mut lines = String::new();
                for record in &traces.records {
                    let line = serde_json::to_string(record)
                        .map_err(|e| TaskError::Io(std::io::Error::other(e)))?;
                    lines.push_str(&line);
                    lines.push('\n');
                }
                Ok((lines, ProblemStats::of(&traces, tokenizer)))
            })
            .collect();
        for item in done {
            let (lines, stats) = item?;
            out.write_all(lines.as_bytes())?;
            summary.add(&stats);
        }
        progress(c * CHUNK + chunk.len());
    }
    Ok(())
}
