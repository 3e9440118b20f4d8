//! Rollouts on the engine: each problem G times, sampled, with real forks
//! (APR) or one thread (SoS+), every token the policy sampled kept with the
//! context it was sampled in (`EngineConfig::record_samples`).

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use weft_engine::{Engine, EngineConfig, EngineError, RequestSpec, SampledSegment, Sampling};
use weft_model::{Model, Tokenizer};
use weft_protocol::apr::{
    duplicate_children, malformed_lines, root_prompt, search_lines_checked, sosp_prompt,
    zero_sum_weights, Apr, SearchLine,
};
use weft_tasks::{verify_with, Problem, Rules};

use crate::reward::RolloutScore;

/// How the model reasons: `apr` forks sub-searches that the engine runs as
/// child threads; `sequential` is the SoS+ baseline in one thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Apr,
    Sequential,
}

/// The rollouts of one step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RolloutConfig {
    pub mode: Mode,
    /// Most tokens one thread may generate.
    pub budget: usize,
    /// Sampling temperature (> 0; no top-k or top-p: the policy gradient is
    /// of the distribution sampled from).
    pub temperature: f32,
    /// Rollouts per problem (GRPO's G).
    pub group: usize,
}

/// One rollout, scored.
#[derive(Debug, Clone)]
pub struct Rollout {
    /// Index of its problem in the step's problems.
    pub problem: usize,
    pub score: RolloutScore,
    pub children: usize,
    /// Children that start from the same state as an earlier sibling.
    pub duplicate_children: usize,
    pub latency_ms: f64,
    /// What every thread sampled, in its contexts.
    pub segments: Vec<SampledSegment>,
    /// Per segment, the positions (in its `tokens`) of sampled tokens in a
    /// line that repeats the search ([`repeated_positions`]).
    pub repeated: Vec<Vec<usize>>,
    /// Per segment, the sampled tokens in search lines of a choice where
    /// something repeats ([`search_line_weights`]).
    pub search_weights: Vec<Vec<TokenWeight>>,
}

/// The root prompt of `p`, as the training data starts it.
pub fn prompt(p: &Problem, mode: Mode) -> String {
    match mode {
        Mode::Apr => root_prompt(p.target, &p.nums, None),
        Mode::Sequential => sosp_prompt(p.target, &p.nums, None),
    }
}

/// The engine settings of rollouts (and of evaluation at `budget`): a
/// thread's budget, room for wide forks, samples recorded.
pub fn engine_config(budget: usize) -> EngineConfig {
    EngineConfig {
        max_tokens_per_thread: budget,
        max_tokens_per_request: budget * 64,
        max_children_per_fork: 64,
        kv_budget_mib: 512,
        record_samples: true,
        ..EngineConfig::default()
    }
}

/// APR's protocol; for the sequential model one that never forks (a fork
/// it writes is refused and decodes on as text).
pub fn protocol(mode: Mode) -> Arc<dyn weft_protocol::Protocol> {
    match mode {
        Mode::Apr => Arc::new(Apr::default()),
        Mode::Sequential => Arc::new(Apr {
            max_depth: 0,
            max_fork_rounds: None,
        }),
    }
}

/// A sampler seed for rollout `k` of problem `i` in the step seeded `seed`
/// (SplitMix64 of the three).
pub fn rollout_seed(seed: u64, i: usize, k: usize) -> u64 {
    let mut z = seed
        .wrapping_add((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add((k as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Runs `cfg.group` sampled rollouts of every problem, all in one engine
/// (continuous batching across problems and their threads), and scores
/// them with the verifier under `rules`. Rollouts come grouped by problem,
/// in order.
pub fn roll_out(
    model: &Model,
    tok: &Tokenizer,
    rules: &Rules,
    problems: &[Problem],
    cfg: &RolloutConfig,
    seed: u64,
) -> Result<Vec<Rollout>, EngineError> {
    let mut engine = Engine::new(model, tok, engine_config(cfg.budget))?;
    let protocol = protocol(cfg.mode);
    let mut specs = Vec::with_capacity(problems.len() * cfg.group);
    let prompts: Vec<String> = problems.iter().map(|p| prompt(p, cfg.mode)).collect();
    for (i, prompt) in prompts.iter().enumerate() {
        for k in 0..cfg.group {
            let mut spec = RequestSpec::text(prompt.clone()).with_protocol(protocol.clone());
            spec.sampling = Sampling {
                temperature: cfg.temperature,
                seed: rollout_seed(seed, i, k),
                ..Sampling::default()
            };
            specs.push(spec);
        }
    }
    let responses = engine.run(specs, &mut |_| {})?;
    let mut out = Vec::with_capacity(responses.len());
    let mut pieces = HashMap::new();
    for (n, r) in responses.into_iter().enumerate() {
        let i = n / cfg.group.max(1);
        let verdict = verify_with(&problems[i], &format!("{}{}", prompts[i], r.text), rules);
        let well_formed = verdict.form.is_some()
            && !matches!(
                verdict.failure,
                Some(weft_tasks::Failure::Unparsable { .. } | weft_tasks::Failure::NoAnswer)
            );
        let child_prompts: Vec<(usize, String)> = r
            .threads
            .iter()
            .filter_map(|t| {
                let parent = t.parent?;
                let head = &t.tokens[..t.prompt_tokens.min(t.tokens.len())];
                Some((parent, tok.decode(head).unwrap_or_default()))
            })
            .collect();
        let duplicates = duplicate_children(child_prompts.iter().map(|(p, s)| (*p, s.as_str())));
        let children = r.threads.len().saturating_sub(1);
        let segments: Vec<SampledSegment> = r.threads.into_iter().flat_map(|t| t.sampled).collect();
        let search_weights: Vec<Vec<TokenWeight>> = segments
            .iter()
            .map(|s| search_line_weights(tok, &mut pieces, s, cfg.mode))
            .collect();
        let repeated = search_weights.iter().map(|w| negative(w)).collect();
        out.push(Rollout {
            problem: i,
            score: RolloutScore {
                correct: verdict.correct,
                well_formed,
                total_tokens: r.stats.total_tokens,
                critical_path_tokens: r.stats.critical_path_tokens,
                children,
                duplicate_children: duplicates,
            },
            children,
            duplicate_children: duplicates,
            latency_ms: r.stats.wall_ms,
            segments,
            repeated,
            search_weights,
        });
    }
    Ok(out)
}

/// The positions in `seg.tokens` of the sampled tokens whose text overlaps
/// a line that repeats the search ([`weft_protocol::apr::repeated_search_spans`] of the
/// segment's whole context): the negative ones of [`search_line_weights`].
pub fn repeated_positions(
    tok: &Tokenizer,
    pieces: &mut HashMap<u32, String>,
    seg: &SampledSegment,
) -> Vec<usize> {
    negative(&search_line_weights(tok, pieces, seg, Mode::Apr))
}

fn negative(weights: &[TokenWeight]) -> Vec<usize> {
    weights
        .iter()
        .filter(|w| w.repeated)
        .map(|w| w.pos)
        .collect()
}

/// A sampled token's share of the token-level search term.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenWeight {
    /// Its position in the segment's `tokens`.
    pub pos: usize,
    /// The zero-sum weight of its line ([`zero_sum_weights`]): -1 where
    /// the line repeats the search or cannot be followed, `d / (k - d)` in
    /// the other lines of its choice.
    pub weight: f32,
    /// Its line repeats the search ([`SearchLine::repeated`]).
    pub repeated: bool,
    /// It overlaps the part of its line that makes the choice
    /// ([`SearchLine::choice`]).
    pub choice: bool,
}

/// Each sampled token whose text overlaps a search line with a nonzero
/// zero-sum weight
/// ([`weft_protocol::apr::search_lines_checked`] with
/// [`weft_tasks::verifier::legal_exploration`], and [`zero_sum_weights`], of the segment's whole
/// context: -1 where the line repeats the search or cannot be followed,
/// `d / (k - d)` in the other lines of its choice), or a line that breaks
/// APR's trace grammar ([`weft_protocol::apr::malformed_lines`], in
/// `Mode::Apr` only: -1, as an invalid line of a choice of its own). A
/// token over two lines takes the lower
/// weight. Token texts come from decoding each token alone, special
/// tokens as nothing (the `<s>` before every prompt would otherwise hide
/// its first `Moving to Node` line); `pieces` keeps them. Where they do
/// not add up to the decoded context (a tokenizer whose pieces depend on
/// their neighbours) nothing is weighted.
pub fn search_line_weights(
    tok: &Tokenizer,
    pieces: &mut HashMap<u32, String>,
    seg: &SampledSegment,
    mode: Mode,
) -> Vec<TokenWeight> {
    let decode = |ids: &[u32]| tok.inner().decode(ids, true).ok();
    let mut text = String::new();
    let mut start = Vec::with_capacity(seg.tokens.len() + 1);
    for &id in &seg.tokens {
        start.push(text.len());
        let piece = pieces
            .entry(id)
            .or_insert_with(|| decode(&[id]).unwrap_or_default());
        text.push_str(piece);
    }
    start.push(text.len());
    let mut lines = search_lines_checked(&text, &weft_tasks::verifier::legal_exploration);
    // A line that breaks APR's trace grammar is a choice of its own, all
    // wrong: -1 on all of it. (SoS+ writes another grammar.)
    let groups = lines.iter().map(|l| l.group + 1).max().unwrap_or(0);
    let malformed = match mode {
        Mode::Apr => malformed_lines(&text),
        Mode::Sequential => Vec::new(),
    };
    lines.extend(
        malformed
            .into_iter()
            .enumerate()
            .map(|(i, span)| SearchLine {
                choice: span.clone(),
                span,
                group: groups + i,
                repeated: false,
                invalid: true,
            }),
    );
    let weights = zero_sum_weights(&lines);
    let weighted: Vec<(&SearchLine, f32)> = lines
        .iter()
        .zip(weights)
        .filter(|(_, w)| *w != 0.0)
        .collect();
    if weighted.is_empty() || decode(&seg.tokens).as_deref() != Some(text.as_str()) {
        return Vec::new();
    }
    seg.sampled
        .iter()
        .filter_map(|&(pos, _)| {
            let (a, b) = (*start.get(pos)?, *start.get(pos + 1)?);
            let over = |r: &std::ops::Range<usize>| a < r.end && b > r.start;
            let (line, weight) = weighted
                .iter()
                .filter(|(l, _)| over(&l.span))
                .min_by(|x, y| x.1.total_cmp(&y.1))?;
            Some(TokenWeight {
                pos,
                weight: *weight,
                repeated: line.repeated,
                // An invalid line may go wrong anywhere: all of it counts.
                choice: over(&line.choice) || line.invalid,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_differ_by_problem_and_sample() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..50 {
            for k in 0..8 {
                assert!(seen.insert(rollout_seed(7, i, k)));
            }
        }
        assert_eq!(rollout_seed(7, 3, 2), rollout_seed(7, 3, 2));
        assert_ne!(rollout_seed(7, 3, 2), rollout_seed(8, 3, 2));
    }
}
