//! Rewards of one rollout, as pluggable terms added together:
//! - **correctness**: `correct` when the verifier accepts the answer;
//! - **parallelism** (ThreadWeaver's P-GRPO): `parallel * min(eta - 1,
//!   parallel_cap)` where `eta` = total tokens / critical-path tokens, only
//!   for a correct answer (ThreadWeaver, Lian et al. 2025: `1[correct] +
//!   0.5 * min(eta - 1, 0.2)`);
//! - **format**: `format` when the output holds an answer the verifier can
//!   read (a `Goal Reached` path or equations), right or wrong;
//! - **length**: `-length_penalty * critical-path tokens / length_scale`,
//!   what a user waits for;
//! - **duplicates**: `-duplicate_penalty * (children that start from the
//!   same state as a sibling) / children`: a repeated sub-search adds
//!   tokens (and so raises `eta`) without adding search.
//!
//! One term is not a reward of the whole rollout but of single tokens:
//! `repeated_search_penalty` is subtracted from the advantage of every
//! sampled token in a line that repeats the search
//! (`weft_protocol::apr::repeated_search_spans`: an exploration that reaches
//! numbers already reached from its node, a sub-search called twice for one
//! state). Credit goes to the text that made the repeat, not to the whole
//! rollout, so it is learned from far fewer samples than the duplicates
//! term; it also applies in groups that all scored alike. With
//! `repeated_search_zero_sum` the lines of the same choice that do not
//! repeat (the other explorations at that node, the other calls of that
//! block) gain what the repeated ones lose, so the term only moves
//! probability between alternatives.

use serde::{Deserialize, Serialize};

/// The weights of the reward terms. A weight of 0 turns its term off.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RewardConfig {
    pub correct: f32,
    pub parallel: f32,
    pub parallel_cap: f32,
    pub format: f32,
    pub length_penalty: f32,
    /// Critical-path tokens that cost `length_penalty` (the token budget of
    /// one thread is a natural scale).
    pub length_scale: usize,
    #[serde(default)]
    pub duplicate_penalty: f32,
    /// Subtracted from the advantage of each sampled token that repeats
    /// the search (see the module doc); 0 turns it off.
    #[serde(default)]
    pub repeated_search_penalty: f32,
    /// The other lines of each choice with a repeat gain what its repeated
    /// lines lose (`weft_protocol::apr::zero_sum_weights`), so the
    /// token-level term adds up to 0 over every choice; lines that cannot
    /// be followed count as repeats, and with APR so do lines that break
    /// the trace grammar (`weft_protocol::apr::malformed_lines`).
    #[serde(default)]
    pub repeated_search_zero_sum: bool,
    /// The token-level term lands only on the tokens that make a line's
    /// choice (`weft_protocol::apr::SearchLine::choice`: the operation, the
    /// node called), not on the text every line of its kind shares.
    #[serde(default)]
    pub repeated_search_choice_only: bool,
}

impl Default for RewardConfig {
    /// ThreadWeaver's P-GRPO reward: correctness plus its parallelism term.
    fn default() -> Self {
        RewardConfig {
            correct: 1.0,
            parallel: 0.5,
            parallel_cap: 0.2,
            format: 0.0,
            length_penalty: 0.0,
            length_scale: 512,
            duplicate_penalty: 0.0,
            repeated_search_penalty: 0.0,
            repeated_search_zero_sum: false,
            repeated_search_choice_only: false,
        }
    }
}

/// What the reward reads from one rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RolloutScore {
    pub correct: bool,
    /// The verifier found an answer it could read.
    pub well_formed: bool,
    /// Tokens every thread generated.
    pub total_tokens: usize,
    /// The longest chain of generated tokens (`RequestStats`).
    pub critical_path_tokens: usize,
    pub children: usize,
    /// Children that start from the same state as an earlier sibling.
    pub duplicate_children: usize,
}

/// One rollout's reward, term by term; `total` is their sum.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Reward {
    pub total: f32,
    pub correct: f32,
    pub parallel: f32,
    pub format: f32,
    pub length: f32,
    #[serde(default)]
    pub duplicates: f32,
}

/// `eta`: total tokens / critical-path tokens (1 for one thread; 1 when
/// nothing was generated).
pub fn parallelism(s: &RolloutScore) -> f32 {
    if s.critical_path_tokens == 0 {
        return 1.0;
    }
    s.total_tokens as f32 / s.critical_path_tokens as f32
}

/// The reward of one rollout under `cfg`.
pub fn reward(cfg: &RewardConfig, s: &RolloutScore) -> Reward {
    let correct = if s.correct { cfg.correct } else { 0.0 };
    let parallel = if s.correct {
        cfg.parallel * (parallelism(s) - 1.0).clamp(0.0, cfg.parallel_cap)
    } else {
        0.0
    };
    let format = if s.well_formed { cfg.format } else { 0.0 };
    let length =
        -cfg.length_penalty * s.critical_path_tokens as f32 / cfg.length_scale.max(1) as f32;
    let duplicates = if s.children > 0 {
        -cfg.duplicate_penalty * s.duplicate_children as f32 / s.children as f32
    } else {
        0.0
    };
    Reward {
        total: correct + parallel + format + length + duplicates,
        correct,
        parallel,
        format,
        length,
        duplicates,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(correct: bool, total: usize, critical: usize) -> RolloutScore {
        RolloutScore {
            correct,
            well_formed: true,
            total_tokens: total,
            critical_path_tokens: critical,
            children: 0,
            duplicate_children: 0,
        }
    }

    #[test]
    fn threadweaver_reward() {
        let cfg = RewardConfig::default();
        // One thread: eta = 1, no parallel bonus.
        assert_eq!(reward(&cfg, &score(true, 300, 300)).total, 1.0);
        // eta = 1.1: 0.5 * 0.1.
        let r = reward(&cfg, &score(true, 330, 300));
        assert!(
            (r.parallel - 0.05).abs() < 1e-6 && (r.total - 1.05).abs() < 1e-6,
            "{r:?}"
        );
        // eta = 3: capped at 0.2, so 0.1.
        assert!((reward(&cfg, &score(true, 900, 300)).total - 1.1).abs() < 1e-6);
        // Wrong: no term at all, however parallel.
        assert_eq!(reward(&cfg, &score(false, 900, 300)), Reward::default());
        // Nothing generated.
        assert_eq!(reward(&cfg, &score(true, 0, 0)).parallel, 0.0);
    }

    #[test]
    fn format_and_length_terms() {
        let cfg = RewardConfig {
            format: 0.1,
            length_penalty: 0.2,
            length_scale: 400,
            ..RewardConfig::default()
        };
        let mut s = score(false, 800, 200);
        let r = reward(&cfg, &s);
        assert!(
            (r.format - 0.1).abs() < 1e-6 && (r.length + 0.1).abs() < 1e-6,
            "{r:?}"
        );
        assert!((r.total - 0.0).abs() < 1e-6);
        s.well_formed = false;
        assert!((reward(&cfg, &s).total + 0.1).abs() < 1e-6);
    }

    #[test]
    fn duplicate_term() {
        let cfg = RewardConfig {
            duplicate_penalty: 0.5,
            ..RewardConfig::default()
        };
        let mut s = score(true, 300, 300);
        s.children = 6;
        s.duplicate_children = 3;
        let r = reward(&cfg, &s);
        assert!(
            (r.duplicates + 0.25).abs() < 1e-6 && (r.total - 0.75).abs() < 1e-6,
            "{r:?}"
        );
        // Off by default; no children, no term.
        assert_eq!(reward(&RewardConfig::default(), &s).duplicates, 0.0);
        s.children = 0;
        assert_eq!(reward(&cfg, &s).duplicates, 0.0);
    }
}
